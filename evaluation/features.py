"""Feature networks for Frechet distances and the Inception Score.

- :class:`InceptionFeatures`: the standard FID network (torch-fidelity's TensorFlow-compatible
  InceptionV3, 2048-d pool features and 1008-way logits), only from a weights file on disk: nothing
  is downloaded. Without the file it is a :class:`FeatureNetworkUnavailable` that says where to put it.
- :class:`ClassifierFeatures`: the penultimate layer of a trained
  :class:`~clinisynth.evaluation.classifier.Classifier`, a domain feature space that needs no
  ImageNet weights (the Frechet distance in it is "FD-classifier", not FID: the numbers are not
  comparable with published FIDs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

#: File name of torch-fidelity's InceptionV3 weights (converted from the TensorFlow FID graph, Apache 2.0).
INCEPTION_WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)


class FeatureNetworkUnavailable(RuntimeError):
    """A feature network cannot be used here (missing weights or package); the message says how to supply it."""


class FeatureNetwork(Protocol):
    """Anything that maps images to an ``(N, D)`` float array and has a ``name`` for reports."""

    name: str

    def __call__(self, images: Sequence) -> np.ndarray: ...


class ClassifierFeatures:
    """Penultimate-layer features of a trained classifier.

    Args:
        classifier: a :class:`~clinisynth.evaluation.classifier.Classifier`.
        batch_size: images per forward pass.
    """

    def __init__(self, classifier, *, batch_size: int = 128) -> None:
        self.classifier = classifier
        self.batch_size = batch_size
        self.name = f"classifier-penultimate ({classifier.name})"

    def __call__(self, images: Sequence) -> np.ndarray:
        return self.classifier.features(images, batch_size=self.batch_size).astype(np.float64)


def default_inception_weights_path() -> Path:
    """Where torch-fidelity (and torchmetrics' FID) cache the weights: ``$TORCH_HOME/hub/checkpoints/<name>``."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_NAME


def find_inception_weights(weights: Path | str | None = None) -> Path:
    """The InceptionV3 weights file: ``weights`` when given, else the torch hub cache.

    Raises:
        FeatureNetworkUnavailable: the file is not there (names the path and how to get the file).
    """
    candidate = Path(weights).expanduser() if weights is not None else default_inception_weights_path()
    if not candidate.is_file():
        where = "given" if weights is not None else "default (torch hub cache)"
        raise FeatureNetworkUnavailable(
            f"InceptionV3 weights for FID / IS not found at the {where} path {candidate}; download "
            f"{INCEPTION_WEIGHTS_URL} on a machine with network access and pass its path "
            f"(--inception-weights), or copy it to {default_inception_weights_path()}"
        )
    return candidate


class InceptionFeatures:
    """InceptionV3 pool features (2048-d) and logits (1008 classes, for the Inception Score).

    Args:
        weights: path of the weights file; the torch hub cache when ``None`` (see :func:`find_inception_weights`).
        device: torch device.
        batch_size: images per forward pass (each is resized to 299 x 299 inside the network).

    Raises:
        FeatureNetworkUnavailable: no weights file, or ``torch-fidelity`` is not installed.
    """

    name = "inception-v3 (FID, torch-fidelity weights)"

    def __init__(self, weights: Path | str | None = None, *, device: str = "cpu", batch_size: int = 32) -> None:
        path = find_inception_weights(weights)
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError as error:
            raise FeatureNetworkUnavailable("InceptionV3 features need the torch-fidelity package: pip install torch-fidelity") from error
        self.weights = path
        self.device = device
        self.batch_size = batch_size
        self.network = FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(path)
        ).to(device)

    def _run(self, images: Sequence) -> tuple[np.ndarray, np.ndarray]:
        import torch

        sizes = {_size(image) for image in images}
        if len(sizes) > 1:
            raise ValueError(f"InceptionV3 features need images of one size per call, got sizes {sorted(sizes)}")
        pools, logits = [], []
        for start in range(0, len(images), self.batch_size):
            batch = np.stack([_rgb_uint8(image) for image in images[start:start + self.batch_size]])
            tensor = torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous().to(self.device)
            with torch.inference_mode():
                pool, logit = self.network(tensor)
            pools.append(pool.double().cpu().numpy())
            logits.append(logit.double().cpu().numpy())
        return np.concatenate(pools), np.concatenate(logits)

    def __call__(self, images: Sequence) -> np.ndarray:
        """2048-d pool features, ``(N, 2048)``."""
        return self._run(images)[0]

    def class_probabilities(self, images: Sequence) -> np.ndarray:
        """Softmax over the 1008 logits (what the Inception Score is computed from), ``(N, 1008)``."""
        logits = self._run(images)[1]
        logits = logits - logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)


def _size(image) -> tuple[int, int]:
    return tuple(image.shape[:2]) if isinstance(image, np.ndarray) else (image.size[1], image.size[0])


def _rgb_uint8(image) -> np.ndarray:
    """Grey or colour PIL / numpy image -> (H, W, 3) uint8 (grey is repeated over the three channels)."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        array = image
        if np.issubdtype(array.dtype, np.floating):
            array = (np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8)
        image = Image.fromarray(array.astype(np.uint8) if array.dtype != np.uint8 else array)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)

