"""The shipped demo generator (``clinisynth/models/demo-generator``): it loads offline through the demo profile,
draws the two classes it was trained on, the shipped chest X-ray classifier agrees with what was asked, and its
images are not copies of its training images."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clinisynth.generation.pipeline import Generator
from clinisynth.generation.profiles import GENERATOR_RECORD, resolve_profile
from clinisynth.models import CLASSIFIERS_DIR, DEMO_GENERATOR_DIR

pytestmark = pytest.mark.slow

REQUESTS = {"pneumonia": "right lower lobe pneumonia, PA chest radiograph",
            "normal": "normal chest radiograph"}
SEEDS = list(range(100, 112))


@pytest.fixture(scope="module")
def demo(cache_dir):
    profile = resolve_profile("demo", cache_dir=cache_dir)
    assert profile.generator == str(DEMO_GENERATOR_DIR), "the demo profile must load the shipped generator"
    return Generator.from_profile(profile, device="cpu"), profile


@pytest.fixture(scope="module")
def drawn(demo, planner):
    """12 images per class, prompted exactly as a run prompts them (the planner's prompt and negative prompt)."""
    generator, profile = demo
    images = {}
    for label, request in REQUESTS.items():
        plan = planner.plan_for_generation(request)
        assert plan.label == label
        images[label] = [g.image for g in generator.generate(
            prompt=plan.prompt, negative_prompt=plan.negative_prompt, seeds=SEEDS, steps=profile.default_steps,
            guidance=profile.default_guidance, batch_size=len(SEEDS))]
    return images


def test_the_shipped_generator_says_what_it_was_trained_on():
    record = json.loads((DEMO_GENERATOR_DIR / GENERATOR_RECORD).read_text())
    assert record["modality"] == "chest_xray" and record["labels"] == ["normal", "pneumonia"]
    assert record["resolution"] == 64 and record["caption_variants"] > 1
    assert "CC BY 4.0" in record["data"]["attribution"] and "Kermany" in record["data"]["attribution"]
    card = (DEMO_GENERATOR_DIR / "README.md").read_text()
    assert "Kermany" in card and "NOT for" in card
    for picture in ("samples.png", "loss_curve.png"):
        assert (DEMO_GENERATOR_DIR / picture).stat().st_size > 1000


def test_demo_images_pass_sanity_and_the_classifier_agrees_with_the_request(drawn):
    from clinisynth.evaluation.classifier import load_classifier
    from clinisynth.evaluation.sanity import check_image

    classifier = load_classifier(CLASSIFIERS_DIR / "chest_xray")
    agreement = {}
    for label, images in drawn.items():
        assert all(image.size == (64, 64) for image in images)
        assert all(check_image(image).ok for image in images), label
        probabilities = classifier.predict_proba(images)[:, classifier.labels.index(label)]
        agreement[label] = float((probabilities >= 0.5).mean())
    # The classifier's own held-out balanced accuracy is 0.907; most images must read as the class asked for.
    assert agreement["pneumonia"] >= 0.75 and agreement["normal"] >= 0.6, agreement
    # The two classes are drawn differently, not one image for every prompt.
    mean_difference = np.abs(np.mean([np.asarray(i, float) for i in drawn["pneumonia"]], 0)
                             - np.mean([np.asarray(i, float) for i in drawn["normal"]], 0)).mean()
    assert mean_difference > 2.0


def test_demo_images_are_not_copies_of_the_training_images(drawn, shared_data):
    from PIL import Image

    from clinisynth.evaluation.memorisation import DEFAULT_MEMORISATION_THRESHOLD, ThumbnailEmbedder

    embed = ThumbnailEmbedder()
    sources = sorted((shared_data / "chest_xray" / "train").rglob("*.jpeg"))
    assert len(sources) > 5000
    training = np.concatenate([embed([Image.open(p) for p in sources[i:i + 512]]) for i in range(0, len(sources), 512)])
    generated = embed([image for images in drawn.values() for image in images])
    nearest = (generated @ training.T).max(axis=1)
    assert nearest.max() < DEFAULT_MEMORISATION_THRESHOLD, nearest.max()
    assert nearest.min() > 0.5  # they do look like chest radiographs: a real one is always fairly close


def test_a_demo_run_stores_verified_images(tmp_path, cache_dir):
    from clinisynth.api import generate
    from clinisynth.settings import Settings

    out = tmp_path / "out"
    result = generate(REQUESTS["pneumonia"], out=out, n=2, seed=7, profile="demo",
                      settings=Settings(cache_dir=cache_dir))
    assert result.status == "complete" and len(result.stored) == 2
    assert all(name.startswith("chest_xray/pneumonia/pneumonia_") for name in result.stored)
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [row["file_name"] for row in rows] == result.stored
    for row in rows:
        assert row["scores"]["classifier_label_probability"] >= 0.5
        assert str(DEMO_GENERATOR_DIR) in json.dumps(row)
