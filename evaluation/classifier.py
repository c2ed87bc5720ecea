"""An image classifier (a timm model on grey images) with temperature-calibrated probabilities.

One implementation serves the verifier (is this the class that was asked for?), the evaluation
report (classifier agreement, Frechet distance in its feature space, downstream utility) and
``clinisynth train classifier``. A saved classifier is a directory::

    classifier_config.json   architecture, labels, input size, normalisation, temperature
    model.safetensors        weights (loaded strictly: a missing or unexpected key is an error)
    card.json, README.md     the model card written by training (data, license, held-out metrics)

torch and timm are imported inside the functions that use them.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from clinisynth.evaluation.images import grey_image

CONFIG_NAME = "classifier_config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_JSON_NAME = "card.json"
CARD_MD_NAME = "README.md"
#: Default architecture: 0.57 M parameters, trains from scratch in minutes on two CPU cores.
DEFAULT_ARCH = "mobilenetv3_small_050"


class ClassifierError(ValueError):
    """A classifier cannot be built, loaded or used; the message says what and how to fix it."""


@dataclass(frozen=True)
class ClassifierConfig:
    """Everything needed to rebuild a classifier and feed it images.

    Args:
        arch: timm model name (``timm.list_models()``).
        labels: class labels in output order.
        image_size: images are resized to ``image_size`` x ``image_size`` grey.
        in_chans: input channels (1: grey).
        mean, std: intensity normalisation of [0, 1] pixels.
        temperature: logits are divided by this before the softmax (1.0: uncalibrated).
        modality: the modality the classifier was trained on, e.g. ``chest_xray`` (informative).
        model_kwargs: extra keyword arguments of ``timm.create_model``.
    """

    arch: str
    labels: tuple[str, ...]
    image_size: int
    in_chans: int = 1
    mean: float = 0.5
    std: float = 0.25
    temperature: float = 1.0
    modality: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise ClassifierError(f"a classifier needs at least 2 distinct labels, got {list(self.labels)}")
        if not isinstance(self.image_size, int) or self.image_size < 16:
            raise ClassifierError(f"image_size must be an int of at least 16 pixels, got {self.image_size!r}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ClassifierError(f"temperature must be a positive finite number, got {self.temperature!r}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["labels"] = list(self.labels)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ClassifierConfig":
        known = {"arch", "labels", "image_size", "in_chans", "mean", "std", "temperature", "modality", "model_kwargs"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ClassifierError(f"unknown classifier config key(s) {unknown}; known: {sorted(known)}")
        return cls(**{**data, "labels": tuple(data["labels"])})


def build_model(arch: str, *, num_classes: int, in_chans: int = 1, pretrained: str | None = None,
                model_kwargs: dict[str, Any] | None = None):
    """A timm model, from scratch or from pretrained weights.

    Args:
        arch: timm model name.
        num_classes: size of the new classification head.
        in_chans: input channels; timm adapts a pretrained RGB stem to 1 channel by summing its weights.
        pretrained: ``None`` for random initialisation; a local directory holding ``model.safetensors``
            or ``pytorch_model.bin`` (timm / Hugging Face layout); or a hub id such as
            ``timm/mobilenetv3_small_050.lamb_in1k`` (must be in the local cache when offline).
        model_kwargs: extra keyword arguments of ``timm.create_model``.

    Raises:
        ClassifierError: unknown architecture or pretrained weights that cannot be found.
    """
    import timm

    kwargs = dict(model_kwargs or {})
    if not timm.is_model(arch):
        raise ClassifierError(f"unknown timm architecture {arch!r}; pick one from timm.list_models(), e.g. {DEFAULT_ARCH!r}")
    if pretrained is None:
        return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)
    location = Path(pretrained).expanduser()
    if location.is_dir():
        weights = next((location / name for name in ("model.safetensors", "pytorch_model.bin") if (location / name).is_file()), None)
        if weights is None:
            raise ClassifierError(f"pretrained directory {location} has no model.safetensors or pytorch_model.bin")
        return timm.create_model(arch, pretrained=True, num_classes=num_classes, in_chans=in_chans,
                                 pretrained_cfg_overlay={"file": str(weights)}, **kwargs)
    if location.is_absolute() or str(pretrained).startswith((".", "~")):
        raise ClassifierError(f"pretrained directory {location} does not exist")
    try:
        return timm.create_model(f"hf-hub:{pretrained}", pretrained=True, num_classes=num_classes, in_chans=in_chans,
                                 **kwargs)
    except (OSError, RuntimeError, ValueError) as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ClassifierError(
            f"cannot load pretrained weights {pretrained!r} from the Hugging Face hub or its local cache [{detail}]; "
            "download them while online (`hf download <id>`), pass a local directory, or train from scratch "
            "(no pretrained weights)"
        ) from error


def grey_array(image, *, image_size: int) -> np.ndarray:
    """One image (PIL image or numpy array) as an ``(image_size, image_size)`` uint8 grey array.

    Colour becomes luma (:func:`clinisynth.evaluation.images.grey`, as PIL's ``L``); floats are read as [0, 1]; the image is resized
    with bilinear filtering (non-square images are stretched, so feed square images).
    """
    from PIL import Image

    if isinstance(image, np.ndarray):
        array = image
        if np.issubdtype(array.dtype, np.floating):
            if not np.isfinite(array).all():
                raise ClassifierError("image contains NaN or infinite values; run the sanity check first")
        elif array.dtype != np.uint8:
            raise ClassifierError(f"integer images must be uint8, got {array.dtype}; scale them to 0..255 first")
    elif not isinstance(image, Image.Image):
        raise ClassifierError(f"expected a PIL image or a numpy array, got {type(image).__name__}")
    image = grey_image(image)
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def stack_grey(images: Sequence, *, image_size: int) -> np.ndarray:
    """Images as an ``(N, image_size, image_size)`` uint8 array (an array of that shape passes through)."""
    if isinstance(images, np.ndarray) and images.ndim == 3 and images.dtype == np.uint8 \
            and images.shape[1:] == (image_size, image_size):
        return images
    if len(images) == 0:
        raise ClassifierError("no images given")
    return np.stack([grey_array(image, image_size=image_size) for image in images])


def _normalise(batch_uint8, *, mean: float, std: float, in_chans: int):
    """uint8 (N, H, W) tensor -> float (N, C, H, W)."""
    batch = (batch_uint8.float() / 255.0 - mean) / std
    return batch.unsqueeze(1).expand(-1, in_chans, -1, -1)


class Classifier:
    """A loaded classifier. Build it with :meth:`load` (or from a trained model in training code).

    Args:
        model: the timm model (put in eval mode here).
        config: its :class:`ClassifierConfig`.
        device: torch device string.
        card: the model card dict, when one was saved with it.
    """

    def __init__(self, *, model, config: ClassifierConfig, device: str = "cpu", card: dict | None = None) -> None:
        self.model = model.to(device).eval()
        self.config = config
        self.device = device
        self.card = card or {}

    @property
    def labels(self) -> tuple[str, ...]:
        return self.config.labels

    @property
    def name(self) -> str:
        return self.card.get("name") or f"{self.config.arch}:{'/'.join(self.labels)}"

    @classmethod
    def load(cls, path: Path | str, *, device: str = "cpu") -> "Classifier":
        """Load a classifier directory written by :meth:`save`.

        Raises:
            ClassifierError: the directory, its config or its weights are missing or do not match.
        """
        from safetensors.torch import load_file

        path = Path(path).expanduser()
        config_path, weights_path = path / CONFIG_NAME, path / WEIGHTS_NAME
        for required in (config_path, weights_path):
            if not required.is_file():
                raise ClassifierError(
                    f"classifier directory {path} has no {required.name}; train one with "
                    "`clinisynth train classifier DATA --out DIR` or point at a directory that holds one"
                )
        config = ClassifierConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
        model = build_model(config.arch, num_classes=len(config.labels), in_chans=config.in_chans,
                            model_kwargs=config.model_kwargs)
        state = {key: value.float() if value.is_floating_point() else value for key, value in load_file(str(weights_path)).items()}
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ClassifierError(
                f"weights in {weights_path} do not match {config.arch}: missing {result.missing_keys[:5]}, "
                f"unexpected {result.unexpected_keys[:5]}"
            )
        card_path = path / CARD_JSON_NAME
        card = json.loads(card_path.read_text(encoding="utf-8")) if card_path.is_file() else None
        return cls(model=model, config=config, device=device, card=card)

    def save(self, path: Path | str, *, half: bool = True) -> None:
        """Write config and weights to ``path`` (created). ``half`` stores float weights as float16 (half the size)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {
            key: (value.detach().cpu().half() if half and value.is_floating_point() else value.detach().cpu()).contiguous()
            for key, value in self.model.state_dict().items()
        }
        save_file(state, str(path / WEIGHTS_NAME))
        (path / CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n", encoding="utf-8")

    def _batches(self, images, batch_size: int):
        import torch

        array = stack_grey(images, image_size=self.config.image_size)
        for start in range(0, len(array), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(array[start:start + batch_size])).to(self.device)
            yield _normalise(batch, mean=self.config.mean, std=self.config.std, in_chans=self.config.in_chans)

    def logits(self, images, *, batch_size: int = 128) -> np.ndarray:
        """Raw logits, shape ``(N, n_classes)``."""
        import torch

        outputs = []
        with torch.inference_mode():
            for batch in self._batches(images, batch_size):
                outputs.append(self.model(batch).float().cpu().numpy())
        return np.concatenate(outputs)

    def predict_proba(self, images, *, batch_size: int = 128) -> np.ndarray:
        """Temperature-calibrated class probabilities, shape ``(N, n_classes)`` in :attr:`labels` order."""
        return softmax(self.logits(images, batch_size=batch_size) / self.config.temperature)

    def features(self, images, *, batch_size: int = 128) -> np.ndarray:
        """Penultimate-layer features (timm ``pre_logits``), shape ``(N, D)``: a feature space for Frechet distance."""
        import torch

        outputs = []
        with torch.inference_mode():
            for batch in self._batches(images, batch_size):
                pooled = self.model.forward_head(self.model.forward_features(batch), pre_logits=True)
                outputs.append(pooled.flatten(1).float().cpu().numpy())
        return np.concatenate(outputs)


def load_classifier(path: Path | str, *, device: str = "cpu") -> Classifier:
    """Shorthand for :meth:`Classifier.load`."""
    return Classifier.load(path, device=device)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature scaling (Guo et al. 2017): the T > 0 minimising the NLL of ``softmax(logits / T)``.

    Args:
        logits: ``(N, C)`` logits of a held-out calibration set (not the training set).
        labels: ``(N,)`` integer classes.
    """
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if len(logits) == 0:
        raise ClassifierError("temperature scaling needs at least one calibration image")

    def nll(log_t: float) -> float:
        scaled = logits / math.exp(log_t)
        scaled = scaled - scaled.max(axis=1, keepdims=True)
        log_probs = scaled - np.log(np.exp(scaled).sum(axis=1, keepdims=True))
        return float(-log_probs[np.arange(len(labels)), labels].mean())

    result = minimize_scalar(nll, bounds=(math.log(0.05), math.log(20.0)), method="bounded")
    return float(math.exp(result.x))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, *, n_bins: int = 15) -> float:
    """ECE: the confidence-weighted gap between confidence and accuracy over equal-width bins."""
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ece = 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(ece)


def _augment(batch, generator):
    """Small random affine (rotate +-10 deg, scale 0.9-1.1, shift +-6%) and contrast / brightness jitter.

    No flips: left and right matter in radiology (laterality).
    """
    import torch
    import torch.nn.functional as F

    n = batch.shape[0]
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(10)
    scale = 1.0 + (torch.rand(n, generator=generator) * 2 - 1) * 0.1
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * 0.12
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(batch), list(batch.shape), align_corners=False)
    moved = F.grid_sample(batch, grid, mode="bilinear", padding_mode="border", align_corners=False)
    contrast = 1.0 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * 0.1
    brightness = (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * 0.05
    mean = moved.mean(dim=(2, 3), keepdim=True)
    return ((moved - mean) * contrast.to(batch) + mean + brightness.to(batch)).clamp(0.0, 1.0)


def recalibrate_batchnorm(model, images: np.ndarray, *, config: ClassifierConfig, batch_size: int = 64,
                          max_images: int = 4096, device: str = "cpu") -> None:
    """Re-estimate BatchNorm running statistics on un-augmented training images, then set eval mode.

    The running averages collected during training lag behind the weights (and saw augmented images);
    after short runs they can make eval-mode predictions collapse onto one class. One pass with
    cumulative averaging (``momentum=None``) fixes that at the cost of a forward pass.
    """
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        model.eval()
        return
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    # A fixed random subset: the images may be sorted by class.
    chosen = np.sort(np.random.default_rng(0).permutation(len(images))[:max_images])
    subset = images[chosen]
    with torch.no_grad():
        for start in range(0, len(subset), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(subset[start:start + batch_size])).to(device)
            if len(batch) < 2:
                continue
            model(_normalise(batch, mean=config.mean, std=config.std, in_chans=config.in_chans))
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    model.eval()


@dataclass
class FitResult:
    """What :func:`fit` did: mean training loss per epoch and per step."""

    epoch_losses: list[float]
    step_losses: list[float]


def fit(
    model,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    config: ClassifierConfig,
    epochs: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    balance_classes: bool = True,
    augment: bool = True,
    device: str = "cpu",
    on_step: Callable[[int, int, float], None] | None = None,
) -> FitResult:
    """Train ``model`` in place with AdamW and a one-cycle schedule: the one training loop of the project's classifiers.

    Args:
        model: a model from :func:`build_model`.
        images: ``(N, S, S)`` uint8 grey images at ``config.image_size`` (see :func:`stack_grey`).
        labels: ``(N,)`` integer classes in ``config.labels`` order.
        config: gives the normalisation and the number of classes.
        epochs: passes over the data, at least 1.
        batch_size, lr, weight_decay: optimiser settings.
        seed: seeds the weights, the shuffling and augmentation.
        balance_classes: weight the loss by inverse class frequency (aims at balanced accuracy).
        augment: small affine and intensity jitter (:func:`_augment`).
        device: torch device.
        on_step: called as ``on_step(step, total_steps, loss)`` after every optimiser step.
    """
    import torch
    import torch.nn.functional as F

    labels = np.asarray(labels, dtype=np.int64)
    n_classes = len(config.labels)
    if images.ndim != 3 or images.dtype != np.uint8 or images.shape[1:] != (config.image_size, config.image_size):
        raise ClassifierError(
            f"fit expects (N, {config.image_size}, {config.image_size}) uint8 images, got {images.shape} {images.dtype}"
        )
    if len(images) != len(labels) or len(images) == 0:
        raise ClassifierError(f"fit needs as many labels as images (got {len(images)} images, {len(labels)} labels)")
    if labels.min() < 0 or labels.max() >= n_classes:
        raise ClassifierError(f"labels must be in 0..{n_classes - 1}, got {labels.min()}..{labels.max()}")
    if not isinstance(epochs, int) or epochs < 1:
        raise ClassifierError(f"epochs must be an int of at least 1, got {epochs!r}")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weights = None
    if balance_classes:
        present = counts > 0
        class_weights = np.zeros(n_classes)
        class_weights[present] = counts[present].sum() / (present.sum() * counts[present])
        weights = torch.tensor(class_weights, dtype=torch.float32, device=device)
    data = torch.from_numpy(images)
    targets = torch.from_numpy(labels)
    steps_per_epoch = math.ceil(len(data) / batch_size)
    total = steps_per_epoch * epochs
    model.to(device).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=total, pct_start=0.15)
    epoch_losses, step_losses = [], []
    step = 0
    for _ in range(epochs):
        order = torch.randperm(len(data), generator=generator)
        running, seen = 0.0, 0
        for start in range(0, len(data), batch_size):
            index = order[start:start + batch_size]
            # A short last batch gives BatchNorm noisy statistics and the loss a spike: drop it (it is
            # a different random set of images each epoch) unless it is all the data there is.
            if len(index) < 2 or (start > 0 and len(index) < batch_size // 2):
                continue
            batch = data[index].to(device).float().unsqueeze(1) / 255.0
            if augment:
                batch = _augment(batch, generator)
            batch = ((batch - config.mean) / config.std).expand(-1, config.in_chans, -1, -1)
            loss = F.cross_entropy(model(batch), targets[index].to(device), weight=weights)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            step += 1
            value = float(loss.detach())
            step_losses.append(value)
            running += value * len(index)
            seen += len(index)
            if on_step is not None:
                on_step(step, total, value)
        epoch_losses.append(running / max(seen, 1))
    recalibrate_batchnorm(model, images, config=config, batch_size=batch_size, device=device)
    return FitResult(epoch_losses=epoch_losses, step_losses=step_losses)
