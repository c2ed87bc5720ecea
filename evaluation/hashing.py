"""Exact and perceptual image hashes, and a small index that finds near duplicates.

Exact: sha256 over an array's shape, dtype and bytes (same pixels, whatever the file encoding or
header). Near: a 64-bit DCT perceptual hash (pHash) narrows the candidates by Hamming distance, and
a 16x16 thumbnail correlation confirms them, because grey medical images of one kind (all brain
slices look alike at 8x8) share many pHash bits without being the same picture.

Defaults (pHash distance <= 8 of 64 bits and thumbnail correlation >= 0.99) were set by looking at
pairs in the shared chest X-ray and brain MRI sets: at 0.95 and even 0.98 distinct children's
radiographs (of different classes, too) matched; at 0.99 the chest matches were only identical
images, and the brain matches the same slice re-encoded or re-augmented (noise, contrast, shift).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from clinisynth.evaluation.images import grey

HASH_SIZE = 8
_DCT_SIZE = 32
THUMB_SIZE = 16
_POPCOUNT8 = np.array([bin(value).count("1") for value in range(256)], dtype=np.uint8)


def exact_hash(array: np.ndarray) -> str:
    """sha256 hex digest of an array's shape, dtype and contiguous bytes."""
    digest = hashlib.sha256()
    digest.update(f"{array.shape}|{array.dtype.str}|".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _dct_matrix(size: int) -> np.ndarray:
    index = np.arange(size)
    matrix = np.cos(np.pi * (2 * index[None, :] + 1) * index[:, None] / (2 * size))
    matrix[0] /= np.sqrt(2.0)
    return matrix * np.sqrt(2.0 / size)


_DCT = _dct_matrix(_DCT_SIZE)


def _resized_grey(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    image = grey(image)
    if image.dtype != np.uint8:
        values = image.astype(np.float64)
        low, high = float(values.min()), float(values.max())
        values = (values - low) / (high - low) * 255.0 if high > low else np.zeros_like(values)
        image = values.round().astype(np.uint8)
    resized = Image.fromarray(image, mode="L").resize((size, size), Image.Resampling.BOX)
    return np.asarray(resized, dtype=np.float64)


def perceptual_hash(image: np.ndarray) -> int:
    """64-bit DCT pHash of an (H, W) or (H, W, C) array: low frequencies above their median."""
    pixels = _resized_grey(image, _DCT_SIZE)
    coefficients = (_DCT @ pixels @ _DCT.T)[:HASH_SIZE, :HASH_SIZE].ravel()
    bits = coefficients > np.median(coefficients[1:])
    return int(sum(1 << index for index, bit in enumerate(bits) if bit))


def thumbnail(image: np.ndarray) -> np.ndarray:
    """16x16 uint8 grey thumbnail used to confirm a near-duplicate candidate."""
    return _resized_grey(image, THUMB_SIZE).round().astype(np.uint8)


def hamming(first: int, second: int) -> int:
    """Number of differing bits between two 64-bit hashes."""
    return (first ^ second).bit_count()


def thumbnail_correlation(first: np.ndarray, second: np.ndarray) -> float:
    """Pearson correlation of two thumbnails; 1.0 for two flat identical ones, 0.0 for flat vs not."""
    a = first.astype(np.float64).ravel() - first.mean()
    b = second.astype(np.float64).ravel() - second.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    if denominator == 0:
        return 1.0 if np.array_equal(first, second) else 0.0
    return float((a * b).sum() / denominator)


@dataclass(frozen=True)
class NearMatch:
    """The closest confirmed near duplicate: its key, pHash distance and thumbnail correlation."""

    key: str
    distance: int
    correlation: float


class NearDuplicateIndex:
    """Finds images whose pHash is within ``max_distance`` bits and whose thumbnails correlate.

    Args:
        max_distance: Hamming distance (of 64 bits) under which two hashes are candidates.
        min_correlation: thumbnail correlation at or above which a candidate is confirmed.
    """

    def __init__(self, *, max_distance: int = 8, min_correlation: float = 0.99) -> None:
        self.max_distance = max_distance
        self.min_correlation = min_correlation
        self._keys: list[str] = []
        self._hashes: list[int] = []
        self._thumbs: list[np.ndarray] = []
        self._array = np.zeros(0, dtype=np.uint64)
        self._dirty = False

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: str, phash: int, thumb: np.ndarray) -> None:
        self._keys.append(key)
        self._hashes.append(phash)
        self._thumbs.append(thumb)
        self._dirty = True

    def query(self, phash: int, thumb: np.ndarray) -> NearMatch | None:
        """The closest confirmed match among added images, or ``None``."""
        if not self._keys:
            return None
        if self._dirty:
            self._array = np.array(self._hashes, dtype=np.uint64)
            self._dirty = False
        xor = np.bitwise_xor(self._array, np.uint64(phash))
        distances = _POPCOUNT8[xor.view(np.uint8)].reshape(-1, 8).sum(axis=1)
        best: NearMatch | None = None
        candidates = np.flatnonzero(distances <= self.max_distance)
        for index in candidates[np.argsort(distances[candidates], kind="stable")]:
            correlation = thumbnail_correlation(self._thumbs[index], thumb)
            if correlation >= self.min_correlation:
                best = NearMatch(key=self._keys[index], distance=int(distances[index]), correlation=correlation)
                break
        return best
