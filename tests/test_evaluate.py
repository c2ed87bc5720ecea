"""``clinisynth evaluate``: the report on a synthetic set against a real one, and its bad inputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("timm")

from clinisynth.evaluation.downstream import DownstreamSettings, confidence_interval, scarce_subset  # noqa: E402
from clinisynth.evaluation.metrics import DatasetError, read_image_set  # noqa: E402
from clinisynth.evaluation.report import evaluate_dataset  # noqa: E402

SIZE = 32
PROMPTS = {"normal": "normal chest radiograph", "pneumonia": "right lower lobe pneumonia"}


def toy(label: str, rng: np.random.Generator) -> np.ndarray:
    coarse = Image.fromarray((rng.random((5, 5)) * 120 + 50).astype(np.uint8))
    image = np.asarray(coarse.resize((SIZE, SIZE), Image.Resampling.BICUBIC)).astype(float)
    if label == "pneumonia":
        cy, cx = rng.integers(10, 22, size=2)
        yy, xx = np.mgrid[:SIZE, :SIZE]
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= 25] = 235
    return image.clip(0, 255).astype(np.uint8)


def write_real(directory: Path, per_class: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    rows = []
    for label in PROMPTS:
        (directory / label).mkdir(parents=True)
        for index in range(per_class):
            relative = f"{label}/{index:04d}.png"
            Image.fromarray(toy(label, rng)).save(directory / relative)
            rows.append({"path": relative, "text": "", "modality": "chest_xray", "label": label,
                         "source_sha256": f"{label}-{index}", "width": SIZE, "height": SIZE})
    with (directory / "manifest.csv").open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return directory


def write_synthetic(directory: Path, per_class: int, seed: int, *, copy_of: Path | None = None) -> Path:
    """Ordered-storage layout: OUT/<modality>/<label>/<label>_000001.png + metadata.jsonl."""
    rng = np.random.default_rng(seed)
    lines = []
    for label, prompt in PROMPTS.items():
        folder = directory / "chest_xray" / label
        folder.mkdir(parents=True)
        for index in range(1, per_class + 1):
            name = f"chest_xray/{label}/{label}_{index:06d}.png"
            if copy_of is not None and label == "normal" and index == 1:
                Image.open(copy_of).save(directory / name)  # a memorised training image
            else:
                Image.fromarray(toy(label, rng)).save(directory / name)
            lines.append(json.dumps({"file_name": name, "prompt": prompt, "label": label, "seed": index}))
    (directory / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return directory


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from clinisynth.training.classifier import train_classifier

    root = tmp_path_factory.mktemp("evaluate")
    real = write_real(root / "real", 40, seed=0)
    synth = write_synthetic(root / "synth", 12, seed=1, copy_of=real / "normal" / "0003.png")
    classifier = train_classifier(real, root / "classifier", arch="test_resnet", image_size=SIZE, epochs=3,
                                  batch_size=32, seed=0, threads=1, progress=False).out
    return root, real, synth, classifier


def test_report_has_every_metric_or_its_reason(setup):
    root, real, synth, classifier_dir = setup
    out = root / "report"
    settings = DownstreamSettings(real_fraction=0.5, seeds=(0, 1), arch="test_resnet", image_size=SIZE, epochs=1,
                                  finetune_epochs=1, batch_size=32)
    report = evaluate_dataset(synth, real, out, classifier_dir=classifier_dir, inception_weights=root / "missing.pth",
                              cache_dir=root / "cache", downstream_settings=settings, test_fraction=0.25)
    metrics = report["metrics"]
    for name in ("report.json", "report.md", "per_class_metrics.png", "samples_normal.png", "samples_pneumonia.png",
                 "confusion_classifier.png", "confusion_downstream_real_only.png"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "report.json").read_text())
    assert saved["synthetic"]["n"] == 24 and saved["synthetic"]["per_class"] == {"normal": 12, "pneumonia": 12}

    # No Inception weights: not computable, with the file it needs; never a number.
    assert metrics["fid"]["status"] == "not_computable" and "weights-inception" in metrics["fid"]["reason"]
    assert metrics["inception_score"]["status"] == "not_computable"
    assert metrics["clip_score"]["status"] == "not_computable" and "--clip-model" in metrics["clip_score"]["reason"]

    fd = metrics["fd_classifier"]
    assert fd["overall"]["status"] == "ok" and fd["overall"]["value"] >= 0
    assert set(fd["per_class"]) == {"normal", "pneumonia"} and fd["per_class"]["normal"]["n_synthetic"] == 12

    # Agreement is what the classifier says about the synthetic images.
    from clinisynth.evaluation.classifier import Classifier
    from clinisynth.evaluation.metrics import open_images

    records = read_image_set(synth)
    loaded = Classifier.load(classifier_dir)
    predicted = loaded.predict_proba(open_images(records)).argmax(axis=1)
    expected = np.mean([loaded.labels[p] == r.label for p, r in zip(predicted, records)])
    assert metrics["classifier_agreement"]["value"] == pytest.approx(expected)

    diversity = metrics["diversity"]
    assert diversity["grouped_by"] == "prompt" and len(diversity["per_prompt"]) == 2
    assert all(entry["status"] == "ok" and entry["scales"] == 2 for entry in diversity["per_prompt"].values())

    memorisation = metrics["memorisation"]
    assert memorisation["value"] == pytest.approx(1 / 24)
    assert memorisation["closest"][0]["training_image"].endswith("normal/0003.png")
    assert memorisation["closest"][0]["similarity"] > 0.999

    downstream = metrics["downstream"]
    assert downstream["status"] == "ok" and set(downstream["regimes"]) == {"real_only", "real_plus_synthetic",
                                                                          "synthetic_then_real"}
    for entry in downstream["regimes"].values():
        figure = entry["balanced_accuracy"]
        assert figure["status"] == "ok" and figure["n"] == 2 and figure["ci_low"] <= figure["value"] <= figure["ci_high"]
        assert len(entry["runs"]) == 2
    markdown = (out / "report.md").read_text()
    assert "not computable" in markdown and "synthetic_then_real" in markdown


def test_bad_inputs(tmp_path):
    real = write_real(tmp_path / "real", 6, seed=0)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="holds no images"):
        evaluate_dataset(empty, real, tmp_path / "out", downstream=False)
    with pytest.raises(DatasetError, match="does not exist"):
        evaluate_dataset(tmp_path / "nowhere", real, tmp_path / "out", downstream=False)
    other = tmp_path / "other" / "effusion"
    other.mkdir(parents=True)
    Image.fromarray(toy("normal", np.random.default_rng(0))).save(other / "a.png")
    with pytest.raises(DatasetError, match=r"synthetic labels \['effusion'\] have no real images"):
        evaluate_dataset(tmp_path / "other", real, tmp_path / "out", downstream=False)


def test_too_few_images_and_mixed_sizes_are_reported_not_faked(tmp_path):
    real = write_real(tmp_path / "real", 6, seed=0)
    synth = tmp_path / "synth" / "normal"
    synth.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for index, size in enumerate((32, 32, 48)):
        Image.fromarray(toy("normal", rng)).resize((size, size)).save(synth / f"{index}.png")
    report = evaluate_dataset(tmp_path / "synth", real, tmp_path / "out", cache_dir=tmp_path / "cache", downstream=False)
    metrics = report["metrics"]
    assert report["synthetic"]["sizes"] == {"32x32": 2, "48x48": 1}
    assert metrics["fd_classifier"]["status"] == "not_computable" and "--classifier" in metrics["fd_classifier"]["reason"]
    assert metrics["diversity"]["grouped_by"].startswith("label")
    assert "at least 4" in metrics["diversity"]["per_prompt"]["label:normal"]["reason"]
    assert metrics["downstream"]["reason"] == "skipped (--no-downstream)"
    assert metrics["memorisation"]["status"] == "ok"


def test_cli_reports_bad_folders_as_one_line(tmp_path):
    import typer
    from typer.testing import CliRunner

    from clinisynth.cli.evaluate import evaluate

    app = typer.Typer()
    app.command()(evaluate)
    app.command("other")(lambda: None)  # two commands: typer keeps 'evaluate' as a sub-command name
    real = write_real(tmp_path / "real", 4, seed=0)
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(app, ["evaluate", str(empty), "--real", str(real), "--no-downstream",
                                      "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 2
    assert "holds no images" in result.output


def test_downstream_helpers():
    labels = np.array([0] * 50 + [1] * 10)
    subset = scarce_subset(labels, fraction=0.1, seed=0)
    assert (labels[subset] == 0).sum() == 5 and (labels[subset] == 1).sum() == 1
    assert not np.array_equal(subset, scarce_subset(labels, fraction=0.1, seed=1))
    interval = confidence_interval([0.8, 0.9, 0.85])
    assert interval["value"] == pytest.approx(0.85) and interval["ci_low"] < 0.85 < interval["ci_high"]
    # t(0.975, 2) = 4.303: half width = 4.303 * 0.05 / sqrt(3)
    assert interval["ci_high"] - 0.85 == pytest.approx(4.303 * 0.05 / 3 ** 0.5, rel=1e-3)
    single = confidence_interval([0.8])
    assert single["ci_low"] is None and "at least 2" in single["ci_reason"]
