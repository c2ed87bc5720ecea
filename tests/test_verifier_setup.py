"""The run's verifier built from settings: shipped classifiers, threshold overrides, memorisation data."""

from __future__ import annotations

import json

import pytest
from _training_helpers import make_dataset

from clinisynth.generation.profiles import GENERATOR_RECORD, ModelProfile
from clinisynth.models import CLASSIFIERS_DIR
from clinisynth.settings import Settings
from clinisynth.verifier_setup import VerifierSetupError, build_run_verifier, classifier_dirs, thresholds


def profile(name: str, generator: str = "unused") -> ModelProfile:
    return ModelProfile(name=name, text_encoder="unused", generator=generator, resolution=64, default_steps=10,
                        default_guidance=3.0, description="test", max_length=64)


def test_the_shipped_classifiers_are_found_per_modality(tmp_path):
    found = classifier_dirs(Settings(cache_dir=tmp_path))
    assert found == {modality: CLASSIFIERS_DIR / modality for modality in ("brain_mri", "breast_ultrasound", "chest_xray")}


def test_a_missing_classifiers_dir_is_a_clear_error(tmp_path):
    with pytest.raises(VerifierSetupError, match="CLINISYNTH_CLASSIFIERS_DIR"):
        classifier_dirs(Settings(cache_dir=tmp_path, classifiers_dir=tmp_path / "nope"))


def test_threshold_overrides_merge_and_unknown_fields_are_refused(tmp_path):
    merged = thresholds(Settings(cache_dir=tmp_path, verifier_thresholds={"chest_xray": {"min_label_probability": 0.7},
                                                                         "oct": {"min_clip_score": 30}}))
    assert merged["chest_xray"].min_label_probability == 0.7
    assert merged["chest_xray"].max_memorisation_similarity == 0.985  # the default survives
    assert merged["oct"].min_clip_score == 30
    with pytest.raises(VerifierSetupError, match="unknown field"):
        thresholds(Settings(cache_dir=tmp_path, verifier_thresholds={"oct": {"min_probability": 0.7}}))


def test_tiny_profile_names_why_it_has_no_classifier(tmp_path):
    verifier = build_run_verifier(settings=Settings(cache_dir=tmp_path), profile=profile("tiny"))
    assert verifier.classifiers == {}
    assert "tiny profile" in verifier.unavailable["classifier"]
    assert "memorisation_data" in verifier.unavailable["memorisation"]
    assert "no CLIP model" in verifier.unavailable["clip_score"]


@pytest.mark.slow
def test_a_trained_generator_gets_classifiers_and_a_memorisation_index_of_its_training_data(tmp_path):
    dataset = make_dataset(tmp_path / "data", per_label=4)
    generator = tmp_path / "generator"
    generator.mkdir()
    (generator / GENERATOR_RECORD).write_text(json.dumps({"data": {"dataset": str(dataset)}}))
    verifier = build_run_verifier(settings=Settings(cache_dir=tmp_path / "cache"), profile=profile("demo", str(generator)))
    assert set(verifier.classifiers) == {"chest_xray", "brain_mri", "breast_ultrasound"}
    assert len(verifier.memorisation["chest_xray"]) == 8
    described = verifier.describe()
    assert described["memorisation"] == {"chest_xray": 8} and "memorisation" not in described["unavailable"]


def test_memorisation_data_from_the_environment(tmp_path, monkeypatch):
    dataset = make_dataset(tmp_path / "data", per_label=3)
    monkeypatch.setenv("CLINISYNTH_MEMORISATION_DATA", json.dumps({"chest_xray": str(dataset)}))
    verifier = build_run_verifier(settings=Settings(cache_dir=tmp_path / "cache"), profile=profile("tiny"))
    assert len(verifier.memorisation["chest_xray"]) == 6


def test_a_generator_whose_training_data_is_elsewhere_says_where_it_was(tmp_path):
    generator = tmp_path / "generator"
    generator.mkdir()
    missing = tmp_path / "prepared-on-another-machine"
    (generator / GENERATOR_RECORD).write_text(json.dumps({"data": {"dataset": str(missing),
                                                                   "prepared_with": {"size": 64, "mode": "L"}}}))
    verifier = build_run_verifier(settings=Settings(cache_dir=tmp_path / "cache", classifiers_dir=tmp_path),
                                  profile=profile("demo", str(generator)))
    reason = verifier.unavailable["memorisation"]
    assert str(missing) in reason and "--size 64 --mode L" in reason and "memorisation_data" in reason
    assert verifier.memorisation == {}


def _shipped_generator(tmp_path, *, per_label=4):
    """A generator folder that ships the compact index of a dataset, the dataset then deleted (another machine)."""
    import shutil

    from clinisynth.evaluation.memorisation import SHIPPED_INDEX_DIR, write_shipped_indexes
    from clinisynth.training.data import read_manifest

    dataset = make_dataset(tmp_path / "data", per_label=per_label)
    generator = tmp_path / "generator"
    generator.mkdir()
    (generator / GENERATOR_RECORD).write_text(json.dumps({"data": {"dataset": str(dataset)}}))
    counts = write_shipped_indexes(read_manifest(dataset), dataset_dir=dataset, directory=generator / SHIPPED_INDEX_DIR)
    copy = tmp_path / "a_training_image.png"
    shutil.copy(dataset / "pneumonia" / "pneumonia_000.png", copy)
    shutil.rmtree(dataset)
    return generator, counts, copy


def test_the_shipped_index_gives_the_memorisation_signal_where_the_training_data_is_absent(tmp_path):
    from PIL import Image

    generator, counts, copy = _shipped_generator(tmp_path)
    assert counts == {"chest_xray": 8}
    messages = []
    verifier = build_run_verifier(settings=Settings(cache_dir=tmp_path / "cache", classifiers_dir=tmp_path),
                                  profile=profile("demo", str(generator)),
                                  on_progress=lambda node, data: messages.append(data["message"]))
    assert "memorisation" not in verifier.unavailable and len(verifier.memorisation["chest_xray"]) == 8
    assert messages == ["memorisation index of chest_xray (8 images, shipped)"]
    # A copy of a training image is caught through the shipped index, and named by its dataset-relative key.
    with Image.open(copy) as image:
        nearest = verifier.memorisation["chest_xray"].nearest(verifier.embedder([image.convert("L")]))[0]
    assert nearest.key == "pneumonia/pneumonia_000.png" and nearest.similarity > 0.99


def test_an_adapters_shipped_index_joins_the_run(tmp_path):
    from types import SimpleNamespace

    adapter, counts, _ = _shipped_generator(tmp_path, per_label=2)
    verifier = build_run_verifier(settings=Settings(cache_dir=tmp_path / "cache"), profile=profile("tiny"),
                                  adapters=[SimpleNamespace(path=adapter)])
    assert len(verifier.memorisation["chest_xray"]) == counts["chest_xray"] == 4


def test_the_compact_index_keeps_similarities_within_a_hundredth(tmp_path):
    import numpy as np

    from clinisynth.evaluation.memorisation import MemorisationIndex, compact_index

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(300, 1024)).astype("float32")
    exact = MemorisationIndex.from_embeddings(vectors, keys=[str(i) for i in range(300)], embedder_name="test")
    compact = compact_index(exact)
    queries = vectors[:50] + 0.1 * rng.normal(size=(50, 1024)).astype("float32")
    exact_sim, exact_keys = exact.search(queries)
    compact_sim, compact_keys = compact.search(queries)
    assert compact_keys == exact_keys
    assert float(np.abs(exact_sim - compact_sim).max()) < 0.01
    compact.save(tmp_path / "index")
    assert (tmp_path / "index" / "index.faiss").stat().st_size < 1024 * 300 * 4 / 3  # 8 bits, not 32, per value


def test_the_shipped_demo_generator_carries_the_index_of_its_training_split():
    from clinisynth.evaluation.memorisation import load_shipped_indexes
    from clinisynth.models import DEMO_GENERATOR_DIR

    record = json.loads((DEMO_GENERATOR_DIR / GENERATOR_RECORD).read_text())
    indexes = load_shipped_indexes(DEMO_GENERATOR_DIR)
    assert set(indexes) == {"chest_xray", "brain_mri"}
    assert sum(len(index) for index in indexes.values()) == record["data"]["train_images"]
    assert all(index.embedder_name == "thumbnail-32" for index in indexes.values())
