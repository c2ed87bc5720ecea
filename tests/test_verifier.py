"""The verifier's decision logic and the refinement mapping of issue 6."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from clinisynth.agents.verifier import (
    ModalityThresholds,
    Verdict,
    Verifier,
    best_of,
    build_verifier,
    refinement_for,
    thumbnail_data_uri,
)
from clinisynth.evaluation.memorisation import MemorisationIndex, ThumbnailEmbedder


def smooth(seed: int, size: int = 64) -> Image.Image:
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray((rng.random((8, 8)) * 200 + 30).astype(np.uint8))
    return coarse.resize((size, size), Image.Resampling.BICUBIC)


class FixedClassifier:
    """Stands in for a trained classifier: returns the probabilities it was given (decision logic only)."""

    name = "fixed"

    def __init__(self, labels, probabilities) -> None:
        self.labels = tuple(labels)
        self.probabilities = np.asarray(probabilities, dtype=float)
        self.calls = 0

    def predict_proba(self, images):
        self.calls += 1
        return np.tile(self.probabilities, (len(images), 1))


class FixedClip:
    name = "fixed-clip"

    def __init__(self, value: float) -> None:
        self.value = value

    def score(self, images, texts):
        return np.full(len(images), self.value)


@pytest.fixture()
def training_index():
    embedder = ThumbnailEmbedder()
    images = [smooth(seed) for seed in range(100, 110)]
    return MemorisationIndex.from_embeddings(embedder(images), keys=[f"train/{i}.png" for i in range(10)],
                                             embedder_name=embedder.name)


def make_verifier(training_index, *, probabilities=(0.1, 0.9), clip=None, **kwargs) -> Verifier:
    return Verifier(
        {"chest_xray": ModalityThresholds(min_label_probability=0.6, min_clip_score=20.0)},
        classifiers={"chest_xray": FixedClassifier(["normal", "pneumonia"], probabilities)},
        clip_scorer=clip,
        memorisation={"chest_xray": training_index},
        unavailable={"clip_score": "BiomedCLIP weights not found"} if clip is None else None,
        **kwargs,
    )


def test_accepts_when_every_available_signal_passes(training_index):
    verdict = make_verifier(training_index).verify(smooth(1), plan_label="pneumonia", modality="chest_xray",
                                                   prompt="right lower lobe pneumonia")
    assert verdict.accepted and verdict.failure is None and verdict.reasons == []
    assert verdict.scores["classifier"]["label_probability"] == pytest.approx(0.9)
    assert verdict.scores["memorisation"]["similarity"] < 0.9
    # Unavailable signals are reported and skipped, never faked.
    assert verdict.scores["clip_score"] == "unavailable"
    assert any("BiomedCLIP weights not found" in note for note in verdict.notes)
    assert verdict.embedding is not None and verdict.embedding.shape == (1024,)


def test_weak_finding_names_the_confused_class(training_index):
    verdict = make_verifier(training_index, probabilities=(0.7, 0.3)).verify(
        smooth(1), plan_label="pneumonia", modality="chest_xray")
    assert not verdict.accepted and verdict.failure == "finding"
    assert verdict.confused_label == "normal"
    assert "p=0.300" in verdict.reasons[0]


def test_low_clip_score_is_a_finding_failure(training_index):
    verifier = make_verifier(training_index, clip=FixedClip(12.0))
    verdict = verifier.verify(smooth(1), plan_label="pneumonia", modality="chest_xray", prompt="pneumonia")
    assert verdict.failure == "finding" and verdict.scores["clip_score"]["value"] == 12.0
    passing = make_verifier(training_index, clip=FixedClip(31.0)).verify(
        smooth(1), plan_label="pneumonia", modality="chest_xray", prompt="pneumonia")
    assert passing.accepted
    no_prompt = make_verifier(training_index, clip=FixedClip(31.0)).verify(
        smooth(1), plan_label="pneumonia", modality="chest_xray")
    assert no_prompt.scores["clip_score"] == "unavailable" and any("no prompt" in n for n in no_prompt.notes)


def test_broken_image_is_quality_and_skips_the_model_signals(training_index):
    verifier = make_verifier(training_index)
    verdict = verifier.verify(Image.new("L", (64, 64), 128), plan_label="pneumonia", modality="chest_xray")
    assert verdict.failure == "quality" and "constant" in verdict.reasons[0]
    assert verdict.scores["classifier"] == "skipped"
    assert verifier.classifiers["chest_xray"].calls == 0
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8))
    assert verifier.verify(noise, plan_label="pneumonia", modality="chest_xray").failure == "quality"


def test_memorised_and_duplicate(training_index):
    verifier = make_verifier(training_index)
    copy = verifier.verify(smooth(104), plan_label="pneumonia", modality="chest_xray")
    assert copy.failure == "memorised" and copy.scores["memorisation"]["nearest"] == "train/4.png"
    first = verifier.verify(smooth(7), plan_label="pneumonia", modality="chest_xray")
    assert first.accepted
    again = verifier.verify(smooth(7), plan_label="pneumonia", modality="chest_xray",
                            accepted_embeddings=[verifier.embed(smooth(8)), first.embedding])
    assert again.failure == "duplicate" and again.scores["duplicate"]["accepted_index"] == 1
    # Several failures: the verdict lists all, its main failure follows the priority order.
    weak_copy = make_verifier(training_index, probabilities=(0.9, 0.1)).verify(
        smooth(104), plan_label="pneumonia", modality="chest_xray")
    assert weak_copy.failures == ("finding", "memorised") and weak_copy.failure == "finding"


def test_unknown_label_or_modality_makes_the_classifier_unavailable(training_index):
    verifier = make_verifier(training_index)
    verdict = verifier.verify(smooth(1), plan_label="pleural_effusion", modality="chest_xray")
    assert verdict.accepted and verdict.scores["classifier"] == "unavailable"
    assert any("no class 'pleural_effusion'" in note for note in verdict.notes)
    other = verifier.verify(smooth(1), plan_label="glioma", modality="brain_mri")
    assert other.scores["classifier"] == "unavailable" and other.scores["memorisation"] == "unavailable"
    assert other.scores["thresholds"] == "default"


def test_thresholds_are_per_modality(training_index):
    strict = Verifier({"chest_xray": ModalityThresholds(min_label_probability=0.95)},
                      classifiers={"chest_xray": FixedClassifier(["normal", "pneumonia"], (0.1, 0.9))})
    assert strict.verify(smooth(1), plan_label="pneumonia", modality="chest_xray").failure == "finding"
    with pytest.raises(ValueError, match="min_label_probability"):
        ModalityThresholds(min_label_probability=1.5)


def test_refinement_mapping(training_index):
    weak = make_verifier(training_index, probabilities=(0.7, 0.3)).verify(
        smooth(1), plan_label="pneumonia", modality="chest_xray")
    step = refinement_for(weak, steps=20, guidance=7.5, negative_prompt="blurry", confused_label=None,
                          prompt="chest radiograph with pneumonia")
    assert step.new_seed and step.steps == 20 and step.guidance == 9.0
    assert step.negative_prompt == "blurry, normal" and step.emphasis == "pneumonia"
    assert step.prompt == "pneumonia, chest radiograph with pneumonia"
    capped = refinement_for(weak, steps=20, guidance=29.5, negative_prompt="normal", confused_label="normal")
    assert capped.guidance == 30.0 and capped.negative_prompt == "normal"

    broken = make_verifier(training_index).verify(Image.new("L", (64, 64), 0), plan_label="pneumonia", modality="chest_xray")
    quality = refinement_for(broken, steps=20, guidance=7.5, negative_prompt="", confused_label=None)
    assert quality.steps == 30 and quality.guidance == 7.5 and quality.new_seed

    copy = make_verifier(training_index).verify(smooth(104), plan_label="pneumonia", modality="chest_xray")
    reseed = refinement_for(copy, steps=20, guidance=7.5, negative_prompt="x", confused_label="normal")
    assert (reseed.steps, reseed.guidance, reseed.negative_prompt, reseed.action) == (20, 7.5, "x", "new seed")

    # The refine node gets the verdict back from JSON graph state.
    import json

    restored = Verdict.from_dict(json.loads(json.dumps(weak.to_dict())))
    assert restored.failures == weak.failures and restored.confused_label == "normal"
    assert refinement_for(restored, steps=20, guidance=7.5, negative_prompt="", confused_label=None).guidance == 9.0

    accepted = make_verifier(training_index).verify(smooth(1), plan_label="pneumonia", modality="chest_xray")
    with pytest.raises(ValueError, match="accepted"):
        refinement_for(accepted, steps=20, guidance=7.5, negative_prompt="", confused_label=None)


def test_best_of_prefers_the_most_confident_accepted():
    def verdict(accepted, probability):
        return Verdict(accepted=accepted, scores={"classifier": {"label_probability": probability}}, reasons=[],
                       failure=None if accepted else "finding")

    assert best_of([verdict(True, 0.7), verdict(False, 0.99), verdict(True, 0.8)]) == 2
    assert best_of([verdict(False, 0.9)]) is None


def test_build_verifier_records_missing_clip(tmp_path):
    verifier = build_verifier(clip_model=str(tmp_path / "no_clip"))
    assert "does not exist" in verifier.unavailable["clip_score"]
    verdict = verifier.verify(smooth(1), plan_label="pneumonia", modality="chest_xray", prompt="p")
    assert verdict.accepted and verdict.scores["clip_score"] == "unavailable"


def test_thumbnail_for_the_trace():
    uri = thumbnail_data_uri(smooth(1, 256), size=32)
    assert uri.startswith("data:image/png;base64,")
    import base64
    import io

    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as image:
        assert max(image.size) == 32
