"""Train the verifier's image classifier on a prepared real dataset and write it with its model card.

Splits (stratified by label, and grouped by the manifest's ``source_sha256`` so that copies of one
source file never sit on both sides):

- ``train``: fits the weights;
- ``calibration``: a slice of the training data that fits the softmax temperature only;
- ``test``: held out from both, or a separate folder (``test_data``); the card's figures come from it.

The loop itself is :func:`clinisynth.evaluation.classifier.fit`, shared with the downstream-utility
evaluation, so that "the same classifier" means the same code.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from clinisynth.evaluation.classifier import (
    CARD_JSON_NAME,
    CARD_MD_NAME,
    DEFAULT_ARCH,
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
from clinisynth.evaluation.metrics import ImageRecord, grouped_stratified_split, open_images, read_image_set

LOSS_CURVE_NAME = "loss_curve.png"


@dataclass(frozen=True)
class TrainClassifierResult:
    """Where the classifier went and its held-out figures (the card as a dict)."""

    out: Path
    card: dict[str, Any]


def _load_arrays(records: Sequence[ImageRecord], labels: Sequence[str], image_size: int, desc: str, progress: bool):
    from tqdm.auto import tqdm

    arrays = []
    for start in tqdm(range(0, len(records), 256), desc=desc, unit="batch", disable=not progress):
        arrays.append(stack_grey(open_images(records[start:start + 256]), image_size=image_size))
    targets = np.array([labels.index(record.label) for record in records], dtype=np.int64)
    return np.concatenate(arrays), targets


def classification_figures(probs: np.ndarray, targets: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, balanced accuracy, per-class recall, confusion matrix (rows: true, columns: predicted), ECE."""
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix

    predicted = probs.argmax(axis=1)
    matrix = confusion_matrix(targets, predicted, labels=list(range(len(labels))))
    recall = {label: float(matrix[i, i] / matrix[i].sum()) if matrix[i].sum() else None for i, label in enumerate(labels)}
    return {
        "n": int(len(targets)),
        "accuracy": float((predicted == targets).mean()),
        "balanced_accuracy": float(balanced_accuracy_score(targets, predicted)),
        "recall_per_class": recall,
        "confusion_matrix": matrix.tolist(),
        "ece": expected_calibration_error(probs, targets),
    }


def _plot_losses(step_losses: list[float], epoch_losses: list[float], steps_per_epoch: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot(np.arange(1, len(step_losses) + 1), step_losses, alpha=0.35, label="step")
    axis.plot(np.arange(1, len(epoch_losses) + 1) * steps_per_epoch, epoch_losses, marker="o", label="epoch mean")
    axis.set_xlabel("optimiser step")
    axis.set_ylabel("cross-entropy (class-weighted)")
    axis.set_title("classifier training loss")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _card_markdown(card: dict[str, Any]) -> str:
    test = card["metrics"]["test"]
    labels = card["labels"]
    header = "| true \\ predicted | " + " | ".join(labels) + " |"
    rule = "|---" * (len(labels) + 1) + "|"
    rows = [f"| {label} | " + " | ".join(str(v) for v in row) + " |" for label, row in zip(labels, test["confusion_matrix"])]
    recall = ", ".join(f"{k} {v:.3f}" for k, v in test["recall_per_class"].items() if v is not None)
    training = card["training"]
    return "\n".join([
        f"# Classifier card: {card['name']}",
        "",
        f"Image classifier used by the clinisynth verifier and evaluation report. Modality: {card.get('modality') or 'n/a'}.",
        "",
        "## Model",
        f"- architecture: timm `{card['arch']}` ({card['parameters']:,} parameters), grey input "
        f"{card['image_size']}x{card['image_size']}, weights stored as float16",
        f"- initialisation: {card['initialisation']}",
        f"- labels (output order): {', '.join(labels)}",
        f"- calibration: temperature scaling, T = {card['temperature']:.3f} (fitted on the calibration split)",
        "",
        "## Data",
        f"- training data: `{card['data']['train_dir']}` ({card['data']['n_train']} train, "
        f"{card['data']['n_calibration']} calibration images)",
        f"- held-out test: {card['data']['test_source']} ({test['n']} images)",
        f"- class counts (train): {json.dumps(card['data']['train_counts'])}",
        f"- source and license: {card['data']['attribution'] or 'not given'}",
        "",
        "## Held-out test figures",
        f"- accuracy {test['accuracy']:.4f}, balanced accuracy {test['balanced_accuracy']:.4f}",
        f"- recall per class: {recall}",
        f"- expected calibration error: {card['metrics']['test_ece_uncalibrated']:.4f} before, {test['ece']:.4f} after "
        "temperature scaling",
        "",
        header,
        rule,
        *rows,
        "",
        "## Training",
        f"- {training['epochs']} epochs, batch {training['batch_size']}, AdamW lr {training['lr']} one-cycle, "
        f"weight decay {training['weight_decay']}, class-balanced loss, affine + intensity augmentation (no flips), "
        f"seed {training['seed']}",
        f"- wall time {training['seconds']:.0f} s on {training['device']} ({training['threads']} thread{'s' if training['threads'] != 1 else ''})",
        f"- loss curve: `{LOSS_CURVE_NAME}`",
        "",
        "## Limits",
        "- Small, low-resolution model for verification and evaluation of synthetic images; not a diagnostic device.",
        "- Figures are on a held-out split of the same public dataset; expect lower accuracy on other hospitals' images.",
        "",
    ])


def train_classifier(
    data: Path,
    out: Path,
    *,
    test_data: Path | None = None,
    arch: str = DEFAULT_ARCH,
    pretrained: str | None = None,
    image_size: int = 64,
    epochs: int = 12,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    test_fraction: float = 0.15,
    calibration_fraction: float = 0.1,
    seed: int = 0,
    device: str = "cpu",
    threads: int | None = None,
    name: str | None = None,
    modality: str | None = None,
    attribution: str | None = None,
    progress: bool = True,
) -> TrainClassifierResult:
    """Train, calibrate, test and save a classifier; the directory then loads with ``Classifier.load``.

    Args:
        data: a prepared dataset folder (``manifest.csv`` with ``path,label``), or a ``<label>/`` image folder.
        out: output directory (weights, config, ``card.json``, ``README.md``, ``loss_curve.png``).
        test_data: a separate held-out folder of the same labels; when ``None``, ``test_fraction`` of ``data``.
        arch: timm architecture.
        pretrained: timm weights by hub id or local directory; ``None`` trains from scratch.
        image_size: input side in pixels.
        epochs, batch_size, lr, weight_decay: training settings.
        test_fraction: held-out share of ``data`` when there is no ``test_data``.
        calibration_fraction: share of the training data kept aside to fit the temperature.
        seed: seeds splits, weights and augmentation.
        device: torch device.
        threads: torch CPU threads (``None``: torch's default).
        name: the classifier's name in its card (default: the output folder's name).
        modality: written to the config and card (e.g. ``chest_xray``).
        attribution: data source and license text for the card (CC BY data must be attributed).
        progress: show progress bars.

    Raises:
        ClassifierError / DatasetError: unusable data or settings.
    """
    import torch
    from tqdm.auto import tqdm

    if threads is not None:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    records = read_image_set(data)
    if test_data is not None:
        test_records = read_image_set(test_data)
        train_pool = records
        test_source = f"separate folder `{test_data}`"
    else:
        kept, held = grouped_stratified_split(records, fraction=test_fraction, seed=seed)
        train_pool, test_records = [records[i] for i in kept], [records[i] for i in held]
        test_source = f"{test_fraction:.0%} of `{data}` (grouped by source file, stratified by label)"
    labels = sorted({record.label for record in train_pool})
    if len(labels) < 2:
        raise ClassifierError(f"training data {data} has {len(labels)} label(s) {labels}; a classifier needs at least 2")
    unknown = sorted({record.label for record in test_records} - set(labels))
    if unknown:
        raise ClassifierError(f"test labels {unknown} do not occur in the training data (labels: {labels})")
    kept, calibration = grouped_stratified_split(train_pool, fraction=calibration_fraction, seed=seed + 1)
    train_records = [train_pool[i] for i in kept]
    calibration_records = [train_pool[i] for i in calibration]

    config = ClassifierConfig(arch=arch, labels=tuple(labels), image_size=image_size, modality=modality)
    train_x, train_y = _load_arrays(train_records, labels, image_size, "load train", progress)
    calib_x, calib_y = _load_arrays(calibration_records, labels, image_size, "load calibration", progress)
    test_x, test_y = _load_arrays(test_records, labels, image_size, "load test", progress)

    model = build_model(arch, num_classes=len(labels), in_chans=config.in_chans, pretrained=pretrained)
    bar = tqdm(total=None, desc="train", unit="step", disable=not progress)

    def on_step(step: int, total: int, loss: float) -> None:
        bar.total = total
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}")

    result = fit(model, train_x, train_y, config=config, epochs=epochs, batch_size=batch_size, lr=lr,
                 weight_decay=weight_decay, seed=seed, device=device, on_step=on_step)
    bar.close()

    classifier = Classifier(model=model, config=config, device=device)
    temperature = fit_temperature(classifier.logits(calib_x), calib_y)
    config = ClassifierConfig(**{**config.to_dict(), "labels": tuple(labels), "temperature": temperature})
    classifier = Classifier(model=model, config=config, device=device)
    test_logits = classifier.logits(test_x)
    test_figures = classification_figures(softmax(test_logits / temperature), test_y, labels)
    calibration_figures = classification_figures(softmax(classifier.logits(calib_x) / temperature), calib_y, labels)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    classifier.save(out)
    steps_per_epoch = max(1, len(result.step_losses) // epochs)
    _plot_losses(result.step_losses, result.epoch_losses, steps_per_epoch, out / LOSS_CURVE_NAME)
    card = {
        "name": name or out.name,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "arch": arch,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "image_size": image_size,
        "initialisation": f"pretrained {pretrained}" if pretrained else "from scratch (random weights)",
        "modality": modality,
        "labels": labels,
        "temperature": temperature,
        "data": {
            "train_dir": str(data),
            "test_source": test_source,
            "n_train": len(train_records),
            "n_calibration": len(calibration_records),
            "train_counts": {label: int((train_y == i).sum()) for i, label in enumerate(labels)},
            "attribution": attribution,
        },
        "metrics": {
            "test": test_figures,
            "test_ece_uncalibrated": expected_calibration_error(softmax(test_logits), test_y),
            "calibration_split": calibration_figures,
        },
        "training": {
            "epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay, "seed": seed,
            "device": device, "threads": torch.get_num_threads(), "seconds": time.perf_counter() - started,
            "epoch_losses": result.epoch_losses,
        },
    }
    (out / CARD_JSON_NAME).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    (out / CARD_MD_NAME).write_text(_card_markdown(card), encoding="utf-8")
    return TrainClassifierResult(out=out, card=card)
