"""The scorers the verifier and the report share: memorisation / duplicates, CLIP score, feature networks, metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clinisynth.evaluation.memorisation import (
    MemorisationError,
    MemorisationIndex,
    ThumbnailEmbedder,
    build_or_load_index,
    max_similarity,
)
from clinisynth.evaluation.metrics import (
    classifier_agreement,
    diversity_by_prompt,
    frechet_distance,
    frechet_per_class,
    inception_score,
    mean_pairwise_ms_ssim,
    memorisation_rate,
    ms_ssim_scales,
)


def smooth(seed: int, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.random((size // 8, size // 8))
    image = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC))
    return image


# --- memorisation and duplicates ----------------------------------------------------------------


def test_thumbnail_similarity_finds_copies_not_other_images():
    embed = ThumbnailEmbedder()
    original = smooth(0)
    brighter = np.clip(original.astype(int) + 20, 0, 255).astype(np.uint8)  # re-contrasted copy
    other = smooth(1)
    vectors = embed([original, brighter, other, np.full((64, 64), 7, np.uint8)])
    assert vectors @ vectors[0] == pytest.approx([1.0, vectors[1] @ vectors[0], vectors[2] @ vectors[0], 0.0], abs=1e-5)
    assert vectors[1] @ vectors[0] > 0.99
    assert vectors[2] @ vectors[0] < 0.9
    assert np.linalg.norm(vectors[3]) == 0.0  # a flat image matches nothing


def test_index_nearest_and_cache_reuse(tmp_path, monkeypatch):
    paths = []
    for seed in range(6):
        path = tmp_path / "train" / f"{seed}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(smooth(seed)).save(path)
        paths.append(path)
    index = build_or_load_index(paths, cache_dir=tmp_path / "cache")
    assert len(index) == 6
    query = ThumbnailEmbedder()([np.clip(smooth(3).astype(int) + 5, 0, 255).astype(np.uint8), smooth(99)])
    nearest = index.nearest(query)
    assert nearest[0].key == str(paths[3]) and nearest[0].similarity > 0.99
    assert nearest[1].similarity < 0.95

    # Built once per dataset: a second call loads the cached index instead of embedding again.
    def refuse(*args, **kwargs):
        raise AssertionError("index was rebuilt although it is cached")

    monkeypatch.setattr(MemorisationIndex, "build", classmethod(refuse))
    again = build_or_load_index(paths, cache_dir=tmp_path / "cache")
    assert again.keys == index.keys
    # A changed dataset has another fingerprint and is built anew.
    Image.fromarray(smooth(50)).save(paths[0])
    monkeypatch.undo()
    rebuilt = build_or_load_index(paths, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").iterdir())) == 2 and len(rebuilt) == 6


def test_index_refuses_mismatched_queries_and_empty_sets(tmp_path):
    index = MemorisationIndex.from_embeddings(np.eye(4, dtype=np.float32), keys=list("abcd"), embedder_name="x")
    with pytest.raises(MemorisationError, match="3 dims but the index"):
        index.search(np.ones((1, 3)))
    with pytest.raises(MemorisationError, match="zero images"):
        build_or_load_index([], cache_dir=tmp_path)


def test_max_similarity_against_accepted():
    accepted = np.array([[1.0, 0.0], [0.6, 0.8]])
    assert max_similarity(np.array([0.6, 0.8]), accepted) == pytest.approx((1.0, 1))
    assert max_similarity(np.array([0.0, 1.0]), None) == (0.0, None)


def test_memorisation_threshold_separates_copies_on_real_chest_xrays(shared_data):
    """A re-encoded, slightly noisy copy of a training radiograph is flagged; other patients are not."""
    folder = shared_data / "chest_xray" / "train" / "NORMAL"
    paths = sorted(folder.iterdir())[:200]
    index = MemorisationIndex.build(paths)
    from clinisynth.agents.verifier import DEFAULT_THRESHOLDS

    limit = DEFAULT_THRESHOLDS["chest_xray"].max_memorisation_similarity
    with Image.open(paths[10]) as image:
        copy = np.asarray(image.convert("L")).astype(float)
    copy = np.clip(copy + np.random.default_rng(0).normal(0, 4, copy.shape), 0, 255).astype(np.uint8)
    unseen = [Image.open(p).convert("L") for p in sorted(folder.iterdir())[200:260]]
    nearest = index.nearest(ThumbnailEmbedder()([copy, *unseen]))
    assert nearest[0].key == str(paths[10]) and nearest[0].similarity >= limit
    assert max(n.similarity for n in nearest[1:]) < limit


# --- CLIP score -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory) -> Path:
    open_clip = pytest.importorskip("open_clip")
    import torch

    config = {"embed_dim": 16,
              "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
              "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    torch.manual_seed(0)
    model = open_clip.CLIP(**config)
    directory = tmp_path_factory.mktemp("tiny_clip")
    (directory / "open_clip_config.json").write_text(json.dumps({"model_cfg": config, "preprocess_cfg": {}}))
    torch.save(model.state_dict(), directory / "open_clip_pytorch_model.bin")
    return directory


def test_clip_score_is_the_clipped_cosine_times_100(tiny_clip_dir):
    from clinisynth.evaluation.clip_score import ClipScorer

    scorer = ClipScorer.from_pretrained(tiny_clip_dir)
    images = [Image.fromarray(smooth(seed, 48)) for seed in range(3)]
    texts = ["right lower lobe consolidation", "normal chest radiograph", "right lower lobe consolidation"]
    scores = scorer.score(images, texts)
    cosine = np.sum(scorer.embed_images(images) * scorer.embed_texts(texts), axis=1)
    np.testing.assert_allclose(scores, 100 * np.maximum(cosine, 0), atol=1e-4)
    assert scores.shape == (3,) and np.all((scores >= 0) & (scores <= 100))
    assert scorer.score(images[:1], "x")[0] == pytest.approx(scorer.score(images[:1], "x")[0])  # deterministic


def test_clip_unavailable_is_an_error_with_the_reason(tmp_path, tiny_clip_dir):
    from clinisynth.evaluation.clip_score import BIOMEDCLIP_ID, ClipScorer, ClipUnavailable

    with pytest.raises(ClipUnavailable, match="does not exist"):
        ClipScorer.from_pretrained(tmp_path / "missing")
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "open_clip_config.json").write_text((tiny_clip_dir / "open_clip_config.json").read_text())
    with pytest.raises(ClipUnavailable, match="no weights"):
        ClipScorer.from_pretrained(no_weights)
    with pytest.raises(ClipUnavailable, match="BiomedCLIP"):  # offline: not in the local hub cache
        ClipScorer.from_pretrained(BIOMEDCLIP_ID)


# --- feature networks -----------------------------------------------------------------------------


def test_inception_without_weights_names_the_file(tmp_path):
    from clinisynth.evaluation.features import FeatureNetworkUnavailable, InceptionFeatures

    with pytest.raises(FeatureNetworkUnavailable, match="weights-inception-2015-12-05"):
        InceptionFeatures(tmp_path / "nope.pth")


def test_inception_loads_a_local_weights_file(tmp_path, monkeypatch):
    """The loading path with a weights file of the right layout (random values: no download here)."""
    pytest.importorskip("torch_fidelity")
    import torch
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from clinisynth.evaluation.features import InceptionFeatures

    with monkeypatch.context() as patch:
        patch.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        patch.setattr(torch, "load", lambda *a, **k: {})
        random_network = FeatureExtractorInceptionV3("x", ["2048"], feature_extractor_weights_path="unused")
    weights = tmp_path / "weights.pth"
    torch.save(random_network.state_dict(), weights)
    network = InceptionFeatures(weights)
    images = [Image.fromarray(smooth(seed, 40)) for seed in range(2)]
    assert network(images).shape == (2, 2048)
    probs = network.class_probabilities(images)
    assert probs.shape == (2, 1008) and np.allclose(probs.sum(axis=1), 1.0)
    with pytest.raises(ValueError, match="one size"):
        network([images[0], Image.fromarray(smooth(3, 48))])


# --- dataset metrics --------------------------------------------------------------------------------


def test_frechet_distance_matches_the_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shifted = a + np.array([1.0, 2.0, 0.0])
    assert frechet_distance(a, shifted) == pytest.approx(5.0, rel=1e-6)  # same covariance: ||mu diff||^2
    wide = rng.normal(scale=2.0, size=(4000, 3))
    # N(0, I) vs N(0, 4I) in 3 dims: 3 * (1 + 4 - 2 * 2) = 3.
    assert frechet_distance(a, wide) == pytest.approx(3.0, rel=0.1)
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(a[:1], a)


def test_frechet_per_class_reports_small_classes_as_not_computable():
    rng = np.random.default_rng(0)
    synth = rng.normal(size=(25, 4))
    real = rng.normal(size=(40, 4))
    result = frechet_per_class(synth, ["a"] * 20 + ["b"] * 5, real, ["a"] * 20 + ["b"] * 20)
    assert result["overall"]["status"] == "ok" and result["per_class"]["a"]["status"] == "ok"
    assert result["per_class"]["b"]["status"] == "not_computable"
    assert "at least 10" in result["per_class"]["b"]["reason"]


def test_inception_score_extremes():
    confident_uniform = np.eye(4)[np.arange(40) % 4]
    assert inception_score(confident_uniform, splits=1)["value"] == pytest.approx(4.0, rel=1e-6)
    assert inception_score(confident_uniform, splits=4)["splits"] == 4
    assert inception_score(np.tile([1.0, 0, 0, 0], (40, 1)))["value"] == pytest.approx(1.0)
    assert inception_score(np.eye(4)[:3])["status"] == "not_computable"


def test_ms_ssim_diversity():
    pytest.importorskip("torchmetrics")
    assert ms_ssim_scales(64) == 3 and ms_ssim_scales(256) == 5 and ms_ssim_scales(8) == 0
    same = [Image.fromarray(smooth(0))] * 4
    different = [Image.fromarray(smooth(seed)) for seed in range(4)]
    identical = mean_pairwise_ms_ssim(same)
    assert identical["value"] == pytest.approx(1.0, abs=1e-4) and identical["scales"] == 3
    assert mean_pairwise_ms_ssim(different)["value"] < 0.9
    mixed = mean_pairwise_ms_ssim([Image.fromarray(smooth(0)), Image.fromarray(smooth(1, 32))])
    assert mixed["status"] == "not_computable" and "size" in mixed["reason"]
    result = diversity_by_prompt({"p1": different, "p2": different[:3]})
    assert result["per_prompt"]["p2"]["status"] == "not_computable" and "at least 4" in result["per_prompt"]["p2"]["reason"]
    assert result["mean_ms_ssim"]["value"] == pytest.approx(result["per_prompt"]["p1"]["value"])


def test_classifier_agreement_and_memorisation_rate():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]])
    result = classifier_agreement(probs, ["normal", "pneumonia", "pneumonia", "effusion"], ["normal", "pneumonia"])
    assert result["value"] == pytest.approx(2 / 3)
    assert result["confusion_matrix"] == [[1, 0], [1, 1]]
    assert result["unknown_labels"] == {"effusion": 1}
    assert classifier_agreement(probs[:1], ["effusion"], ["normal", "pneumonia"])["status"] == "not_computable"
    rate = memorisation_rate([0.5, 0.99, 0.97, 1.0], threshold=0.985)
    assert rate["value"] == 0.5 and rate["max_similarity"] == 1.0
