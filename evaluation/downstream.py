"""Downstream utility: does adding synthetic images help a classifier trained on scarce real data?

Three regimes, the same classifier (:func:`clinisynth.evaluation.classifier.fit`) and the same
held-out real test images:

- ``real_only``: a scarce fraction of the real training images;
- ``real_plus_synthetic``: that fraction plus every synthetic image;
- ``synthetic_then_real``: trained on the synthetic images, then fine-tuned on the scarce real ones.

Each regime runs once per seed (the seed picks the scarce subset, the weights and the batches);
accuracy, balanced accuracy and AUROC are reported as mean, standard deviation and a 95 % Student-t
confidence interval over the seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from clinisynth.evaluation.classifier import (
    DEFAULT_ARCH,
    Classifier,
    ClassifierConfig,
    build_model,
    fit,
)
from clinisynth.evaluation.metrics import not_computable, ok

REGIMES = ("real_only", "real_plus_synthetic", "synthetic_then_real")


@dataclass(frozen=True)
class DownstreamSettings:
    """How the downstream classifiers are trained.

    Args:
        real_fraction: share of the real training images kept (per class, at least one image each).
        seeds: one run per seed; at least 2 for a confidence interval.
        arch: timm architecture.
        image_size: input side in pixels.
        epochs: epochs of every training run (pre-training included).
        finetune_epochs: epochs of the real fine-tuning after synthetic pre-training.
        finetune_lr_factor: fine-tuning learning rate = ``lr * finetune_lr_factor``.
        batch_size, lr: optimiser settings.
        device: torch device.
    """

    real_fraction: float = 0.1
    seeds: tuple[int, ...] = (0, 1, 2)
    arch: str = DEFAULT_ARCH
    image_size: int = 64
    epochs: int = 6
    finetune_epochs: int = 4
    finetune_lr_factor: float = 0.3
    batch_size: int = 64
    lr: float = 1e-3
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not 0.0 < self.real_fraction <= 1.0:
            raise ValueError(f"real_fraction must be in (0, 1], got {self.real_fraction}")
        if not self.seeds:
            raise ValueError("give at least one seed")


def scarce_subset(labels: np.ndarray, *, fraction: float, seed: int) -> np.ndarray:
    """Indices of about ``fraction`` of each class (at least one per class), chosen by ``seed``."""
    rng = np.random.default_rng(seed)
    chosen = []
    for value in np.unique(labels):
        members = np.flatnonzero(labels == value)
        count = max(1, int(round(len(members) * fraction)))
        chosen.extend(rng.choice(members, size=count, replace=False).tolist())
    return np.array(sorted(chosen), dtype=np.int64)


def confidence_interval(values: Sequence[float], *, level: float = 0.95,
                        bounds: tuple[float, float] | None = (0.0, 1.0)) -> dict[str, Any]:
    """Mean, sample standard deviation and Student-t interval of ``values`` (interval needs 2+ values).

    Args:
        values: one figure per seed (``None`` entries are dropped).
        level: confidence level.
        bounds: the interval is clipped to these (the figures' range); ``None`` leaves it as computed.
    """
    from scipy import stats

    values = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if len(values) == 0:
        return not_computable("no run produced this figure")
    mean = float(values.mean())
    if len(values) < 2:
        return ok(mean, std=None, ci_low=None, ci_high=None, n=1,
                  ci_reason="a confidence interval needs at least 2 seeds")
    std = float(values.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, df=len(values) - 1) * std / math.sqrt(len(values)))
    low, high = mean - half, mean + half
    if bounds is not None:  # accuracy and AUROC live in [0, 1]; with few seeds the t-interval can overshoot
        low, high = max(bounds[0], low), min(bounds[1], high)
    return ok(mean, std=std, ci_low=low, ci_high=high, n=len(values), level=level, clipped_to=bounds)


def classification_scores(probs: np.ndarray, targets: np.ndarray, n_classes: int) -> dict[str, Any]:
    """Accuracy, balanced accuracy, AUROC (binary, or macro one-vs-rest) and the confusion matrix."""
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix, roc_auc_score

    predicted = probs.argmax(axis=1)
    present = np.unique(targets)
    if len(present) < 2:
        auroc, auroc_reason = None, f"the test set holds only class {present.tolist()}"
    elif n_classes == 2:
        auroc, auroc_reason = float(roc_auc_score(targets, probs[:, 1])), None
    elif len(present) < n_classes:
        auroc, auroc_reason = None, f"the test set lacks classes {sorted(set(range(n_classes)) - set(present.tolist()))}"
    else:
        auroc, auroc_reason = float(roc_auc_score(targets, probs, multi_class="ovr", average="macro")), None
    return {
        "accuracy": float((predicted == targets).mean()),
        "balanced_accuracy": float(balanced_accuracy_score(targets, predicted)),
        "auroc": auroc,
        "auroc_reason": auroc_reason,
        "confusion_matrix": confusion_matrix(targets, predicted, labels=list(range(n_classes))).tolist(),
    }


def downstream_utility(
    *,
    real_train: np.ndarray,
    real_train_labels: np.ndarray,
    real_test: np.ndarray,
    real_test_labels: np.ndarray,
    synthetic: np.ndarray,
    synthetic_labels: np.ndarray,
    labels: Sequence[str],
    settings: DownstreamSettings = DownstreamSettings(),
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train the three regimes per seed and score them on the real test images.

    Args:
        real_train, real_test, synthetic: ``(N, S, S)`` uint8 grey images at ``settings.image_size``.
        real_train_labels, real_test_labels, synthetic_labels: integer classes in ``labels`` order.
        labels: class names.
        settings: training settings.
        log: called with one line per finished run.

    Returns:
        ``{"settings": ..., "regimes": {regime: {"accuracy": ci, "balanced_accuracy": ci, "auroc": ci,
        "runs": [per-seed scores]}}}``.
    """
    labels = list(labels)
    config = ClassifierConfig(arch=settings.arch, labels=tuple(labels), image_size=settings.image_size)
    if len(synthetic) == 0:
        raise ValueError("downstream utility needs synthetic images")
    runs: dict[str, list[dict[str, Any]]] = {regime: [] for regime in REGIMES}
    for seed in settings.seeds:
        subset = scarce_subset(real_train_labels, fraction=settings.real_fraction, seed=seed)
        scarce_x, scarce_y = real_train[subset], real_train_labels[subset]

        def train(x: np.ndarray, y: np.ndarray, *, model=None, epochs: int, lr: float):
            import torch

            if model is None:
                torch.manual_seed(seed)
                model = build_model(settings.arch, num_classes=len(labels), in_chans=config.in_chans)
            fit(model, x, y, config=config, epochs=epochs, batch_size=settings.batch_size, lr=lr, seed=seed,
                device=settings.device)
            return model

        def score(model) -> dict[str, Any]:
            probs = Classifier(model=model, config=config, device=settings.device).predict_proba(real_test)
            return classification_scores(probs, real_test_labels, len(labels))

        models = {
            "real_only": train(scarce_x, scarce_y, epochs=settings.epochs, lr=settings.lr),
            "real_plus_synthetic": train(np.concatenate([scarce_x, synthetic]), np.concatenate([scarce_y, synthetic_labels]),
                                         epochs=settings.epochs, lr=settings.lr),
        }
        pretrained = train(synthetic, synthetic_labels, epochs=settings.epochs, lr=settings.lr)
        models["synthetic_then_real"] = train(scarce_x, scarce_y, model=pretrained, epochs=settings.finetune_epochs,
                                              lr=settings.lr * settings.finetune_lr_factor)
        for regime, model in models.items():
            result = {"seed": seed, "n_real": int(len(subset)), **score(model)}
            runs[regime].append(result)
            if log is not None:
                log(f"downstream seed {seed} {regime}: balanced accuracy {result['balanced_accuracy']:.3f}")
    regimes = {}
    for regime, results in runs.items():
        regimes[regime] = {
            "accuracy": confidence_interval([r["accuracy"] for r in results]),
            "balanced_accuracy": confidence_interval([r["balanced_accuracy"] for r in results]),
            "auroc": confidence_interval([r["auroc"] for r in results]),
            "runs": results,
        }
    return {
        "settings": {**settings.__dict__, "seeds": list(settings.seeds)},
        "n_real_train_pool": int(len(real_train)),
        "n_real_test": int(len(real_test)),
        "n_synthetic": int(len(synthetic)),
        "labels": labels,
        "regimes": regimes,
    }
