"""The verifier's classifier: training on a prepared manifest, calibration, saving / loading, shipped models."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("timm")

from clinisynth.evaluation.classifier import (  # noqa: E402
    Classifier,
    ClassifierConfig,
    ClassifierError,
    build_model,
    expected_calibration_error,
    fit,
    fit_temperature,
    softmax,
    stack_grey,
)
from clinisynth.evaluation.metrics import ImageRecord, read_image_set  # noqa: E402
from clinisynth.evaluation.metrics import grouped_stratified_split  # noqa: E402
from clinisynth.training.classifier import train_classifier  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models" / "classifiers"


def smooth_field(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random grey image in [40, 200] (passes the sanity checks: not blank, not noise)."""
    coarse = rng.random((size // 8 + 1, size // 8 + 1))
    field = np.kron(coarse, np.ones((8, 8)))[:size, :size]
    kernel = np.ones(5) / 5
    field = np.apply_along_axis(lambda row: np.convolve(row, kernel, mode="same"), 0, field)
    field = np.apply_along_axis(lambda row: np.convolve(row, kernel, mode="same"), 1, field)
    return 40 + 100 * field


def toy_image(label: str, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """'normal': a smooth field; 'pneumonia': the same kind of field with a bright disc (the 'finding')."""
    image = smooth_field(rng, size)
    if label == "pneumonia":
        cy, cx = rng.integers(size // 4, 3 * size // 4, size=2)
        yy, xx = np.mgrid[:size, :size]
        image = np.where((yy - cy) ** 2 + (xx - cx) ** 2 <= (size // 6) ** 2, 235.0, image)
    return image.clip(0, 255).astype(np.uint8)


def write_prepared(directory: Path, counts: dict[str, int], *, seed: int, size: int = 32) -> Path:
    """A folder in the layout of `clinisynth prepare`: DIR/<label>/<id>.png + manifest.csv."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    rows = []
    for label, count in counts.items():
        (directory / label).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            relative = f"{label}/{label}_{index:04d}.png"
            Image.fromarray(toy_image(label, rng, size)).save(directory / relative)
            rows.append({"path": relative, "text": "", "modality": "chest_xray", "label": label,
                         "source_sha256": f"{label}{index}", "width": size, "height": size})
    with (directory / "manifest.csv").open("w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return directory


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("classifier")
    data = write_prepared(root / "data", {"normal": 90, "pneumonia": 60}, seed=0)
    result = train_classifier(data, root / "model", arch="test_resnet", image_size=32, epochs=4, batch_size=32,
                              lr=3e-3, seed=0, threads=1, name="toy", modality="chest_xray",
                              attribution="procedurally generated test images", progress=False)
    return data, result


def test_training_writes_loadable_classifier_and_card(trained):
    data, result = trained
    for name in ("model.safetensors", "classifier_config.json", "card.json", "README.md", "loss_curve.png"):
        assert (result.out / name).is_file(), name
    card = json.loads((result.out / "card.json").read_text())
    test = card["metrics"]["test"]
    # The disc is easy to see: a training loop that works separates the classes on held-out images.
    assert test["balanced_accuracy"] >= 0.9, test
    assert test["n"] == sum(sum(row) for row in test["confusion_matrix"])
    assert card["labels"] == ["normal", "pneumonia"]
    assert card["data"]["attribution"] == "procedurally generated test images"
    assert "balanced accuracy" in (result.out / "README.md").read_text()
    losses = card["training"]["epoch_losses"]
    assert losses[-1] < losses[0]


def test_loaded_classifier_matches_in_memory_probabilities(trained):
    data, result = trained
    records = read_image_set(data)[:12]
    from clinisynth.evaluation.metrics import open_images

    images = open_images(records)
    loaded = Classifier.load(result.out)
    probs = loaded.predict_proba(images)
    assert probs.shape == (12, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert loaded.config.temperature == pytest.approx(result.card["temperature"])
    features = loaded.features(images)
    assert features.shape[0] == 12 and features.shape[1] == loaded.model.num_features
    # Calibrated probabilities are the temperature-scaled softmax of the logits.
    np.testing.assert_allclose(probs, softmax(loaded.logits(images) / loaded.config.temperature), atol=1e-6)


def test_split_keeps_groups_together_and_every_label():
    records = [ImageRecord(path=Path(f"/x/{i}.png"), label="a" if i % 3 else "b", group=f"g{i // 2}") for i in range(60)]
    kept, held = grouped_stratified_split(records, fraction=0.2, seed=1)
    assert sorted(kept + held) == list(range(60))
    kept_groups = {records[i].group for i in kept}
    assert not kept_groups & {records[i].group for i in held}
    assert {records[i].label for i in held} == {"a", "b"}


def test_temperature_scaling_recovers_the_true_temperature():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=4.0, size=(4000, 3))
    true_t = 2.5
    probs = softmax(logits / true_t)
    labels = np.array([rng.choice(3, p=p) for p in probs])
    assert fit_temperature(logits, labels) == pytest.approx(true_t, rel=0.1)
    # Calibrated probabilities are better calibrated than the raw ones.
    assert expected_calibration_error(probs, labels) < expected_calibration_error(softmax(logits), labels)


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(ClassifierError, match="at least 2 distinct labels"):
        ClassifierConfig(arch="test_resnet", labels=("a",), image_size=32)
    with pytest.raises(ClassifierError, match="unknown timm architecture"):
        build_model("no_such_net", num_classes=2)
    with pytest.raises(ClassifierError, match="pretrained directory .* does not exist"):
        build_model("test_resnet", num_classes=2, pretrained=str(tmp_path / "missing"))
    with pytest.raises(ClassifierError, match="has no classifier_config.json"):
        Classifier.load(tmp_path)
    config = ClassifierConfig(arch="test_resnet", labels=("a", "b"), image_size=32)
    model = build_model("test_resnet", num_classes=2)
    with pytest.raises(ClassifierError, match="uint8 images"):
        fit(model, np.zeros((4, 16, 16), np.uint8), np.zeros(4), config=config, epochs=1)
    with pytest.raises(ClassifierError, match="labels must be in 0..1"):
        fit(model, np.zeros((4, 32, 32), np.uint8), np.array([0, 1, 2, 0]), config=config, epochs=1)
    with pytest.raises(ClassifierError, match="NaN"):
        stack_grey([np.full((32, 32), np.nan)], image_size=32)


def test_one_label_dataset_is_refused(tmp_path):
    data = write_prepared(tmp_path / "data", {"normal": 12}, seed=0)
    with pytest.raises(ClassifierError, match="at least 2"):
        train_classifier(data, tmp_path / "out", arch="test_resnet", image_size=32, epochs=1, progress=False)


@pytest.mark.parametrize("name", ["chest_xray", "brain_mri"])
def test_shipped_classifier_has_card_and_meets_its_target(name):
    directory = SHIPPED / name
    if not directory.is_dir():
        pytest.skip(f"{directory} not shipped in this checkout")
    card = json.loads((directory / "card.json").read_text())
    target = {"chest_xray": 0.95, "brain_mri": 0.88}[name]
    assert card["metrics"]["test"]["balanced_accuracy"] >= target
    assert "CC" in card["data"]["attribution"]
    assert (directory / "model.safetensors").stat().st_size < 5 * 2**20


def test_shipped_brain_classifier_on_held_out_validation_images(shared_data):
    directory = SHIPPED / "brain_mri"
    if not directory.is_dir():
        pytest.skip(f"{directory} not shipped in this checkout")
    from PIL import Image

    classifier = Classifier.load(directory)
    folder_to_label = {"glioma": "glioma", "meningioma": "meningioma", "pituitary": "pituitary_adenoma", "notumor": "normal"}
    images, truth = [], []
    for folder, label in folder_to_label.items():
        for path in sorted((shared_data / "brain_mri" / "validation" / folder).iterdir())[:25]:
            with Image.open(path) as image:
                images.append(image.convert("L"))
            truth.append(classifier.labels.index(label))
    predicted = classifier.predict_proba(images).argmax(axis=1)
    recalls = [np.mean(predicted[np.array(truth) == c] == c) for c in range(len(classifier.labels))]
    assert np.mean(recalls) >= 0.75, recalls
