"""Model-free sanity checks for one image: the same scorer serves data preparation and the verifier.

Numpy only, a few milliseconds per image. Each check yields a value; the first check that fails
names the reason. Checks, in order:

- ``non_finite``: fraction of NaN / inf values (fails when above 0).
- ``out_of_range``: fraction of float values outside ``value_range`` (integer arrays are in range
  by their dtype).
- ``too_small``: the shorter side in pixels.
- ``degenerate_shape``: longer side / shorter side.
- ``constant``: standard deviation of the image scaled to [0, 1].
- ``blank``: fraction of pixels nearly black or nearly white (the larger of the two).
- ``pure_noise``: correlation of neighbouring pixels (mean of horizontal and vertical lag-1
  Pearson correlation); real images are smooth at the pixel scale (0.8 - 1.0), white noise is
  near 0.

How values are scaled to [0, 1] before the intensity checks: ``uint8`` and ``bool`` by their
fixed range; floats by ``value_range`` (or their own min / max when it is ``None``); wider
integers (``uint16``, ``int16``, ...) by their own min / max, because 12- or 16-bit medical data
has no fixed black level. Colour images become luma (:func:`clinisynth.evaluation.images.grey`); an alpha channel is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from clinisynth.evaluation.images import as_array
from clinisynth.evaluation.images import grey as to_grey

REASONS = ("non_finite", "out_of_range", "too_small", "degenerate_shape", "constant", "blank", "pure_noise")

# Larger images are block-averaged before the intensity checks: keeps the cost bounded and
# changes neither the blank fraction nor white noise's lack of correlation much.
_MAX_CHECK_SIDE = 1024


@dataclass(frozen=True)
class SanityThresholds:
    """Thresholds of :func:`check_image`; the defaults pass real radiographs, MRI and MedMNIST.

    Args:
        value_range: expected range of float inputs (``(0.0, 1.0)``, diffusers' ``output_type="np"``);
            ``None`` skips the range check and scales floats by their own min / max.
        range_tolerance: slack on ``value_range`` before a value counts as out of range.
        max_out_of_range_fraction: fraction of out-of-range values allowed (0.0: none).
        min_side: shortest side allowed, in pixels (MedMNIST is 28).
        max_aspect: longest / shortest side allowed.
        min_std: an image whose [0, 1]-scaled standard deviation is below this is ``constant``
            (1/255 is about one grey level).
        dark_level: pixels at or below this ([0, 1] scale) count as black.
        bright_level: pixels at or above this count as white.
        max_blank_fraction: an image with more black (or more white) pixels than this is ``blank``.
        min_neighbour_correlation: an image whose neighbouring-pixel correlation is below this is
            ``pure_noise``.
    """

    value_range: tuple[float, float] | None = (0.0, 1.0)
    range_tolerance: float = 1e-3
    max_out_of_range_fraction: float = 0.0
    min_side: int = 16
    max_aspect: float = 8.0
    min_std: float = 1.0 / 255.0
    dark_level: float = 10.0 / 255.0
    bright_level: float = 245.0 / 255.0
    max_blank_fraction: float = 0.98
    min_neighbour_correlation: float = 0.3


@dataclass(frozen=True)
class SanityResult:
    """Outcome of :func:`check_image`.

    Args:
        ok: every check passed.
        reason: the first failing check's name (one of :data:`REASONS`), ``None`` when ``ok``.
        value: the failing check's value, ``None`` when ``ok``.
        checks: every computed check value by name (later checks are skipped after a failure
            that makes them meaningless, e.g. NaN).
    """

    ok: bool
    reason: str | None
    value: float | None
    checks: dict[str, float] = field(default_factory=dict)


def _scaled(grey: np.ndarray, original_dtype: np.dtype, thresholds: SanityThresholds) -> np.ndarray:
    """Map values to [0, 1] as described in the module docstring."""
    if original_dtype == np.uint8:
        return grey.astype(np.float64) / 255.0
    if original_dtype == np.bool_:
        return grey.astype(np.float64)
    values = grey.astype(np.float64)
    if np.issubdtype(original_dtype, np.floating) and thresholds.value_range is not None:
        low, high = thresholds.value_range
        return (values - low) / (high - low)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros_like(values)
    return (values - low) / (high - low)


def _block_reduce(values: np.ndarray) -> np.ndarray:
    factor = int(np.ceil(max(values.shape) / _MAX_CHECK_SIDE))
    if factor <= 1:
        return values
    height = values.shape[0] // factor * factor
    width = values.shape[1] // factor * factor
    trimmed = values[:height, :width]
    return trimmed.reshape(height // factor, factor, width // factor, factor).mean(axis=(1, 3))


def neighbour_correlation(values: np.ndarray) -> float:
    """Mean of the horizontal and vertical lag-1 Pearson correlations of a 2-D array (0.0 if flat)."""
    correlations = []
    for first, second in ((values[:, :-1], values[:, 1:]), (values[:-1, :], values[1:, :])):
        if first.size == 0:
            continue
        a = first - first.mean()
        b = second - second.mean()
        denominator = np.sqrt((a * a).sum() * (b * b).sum())
        correlations.append(float((a * b).sum() / denominator) if denominator > 0 else 0.0)
    return float(np.mean(correlations)) if correlations else 0.0


def check_image(image, *, thresholds: SanityThresholds | None = None) -> SanityResult:
    """Run the sanity checks on one image and say whether it is usable.

    Args:
        image: a numpy array of shape (H, W) or (H, W, C) (any numeric dtype) or a PIL image.
        thresholds: limits of each check; ``SanityThresholds()`` when ``None``.

    Returns:
        A :class:`SanityResult`; ``reason`` names the first failing check.

    Raises:
        TypeError / ValueError: the input is not an image (wrong type or shape).
    """
    thresholds = thresholds or SanityThresholds()
    array = as_array(image)
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise TypeError(f"check_image expects a numeric array, got dtype {array.dtype}")
    grey = to_grey(array)
    checks: dict[str, float] = {}

    def fail(reason: str) -> SanityResult:
        return SanityResult(ok=False, reason=reason, value=checks[reason], checks=checks)

    if np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(array)
        checks["non_finite"] = float(1.0 - finite.mean()) if array.size else 0.0
        if checks["non_finite"] > 0:
            return fail("non_finite")
        if thresholds.value_range is not None:
            low, high = thresholds.value_range
            tol = thresholds.range_tolerance
            outside = (array < low - tol) | (array > high + tol)
            checks["out_of_range"] = float(outside.mean()) if array.size else 0.0
            if checks["out_of_range"] > thresholds.max_out_of_range_fraction:
                return fail("out_of_range")
    else:
        checks["non_finite"] = 0.0
        checks["out_of_range"] = 0.0

    height, width = grey.shape
    checks["too_small"] = float(min(height, width))
    if min(height, width) < thresholds.min_side:
        return fail("too_small")
    checks["degenerate_shape"] = float(max(height, width) / min(height, width))
    if checks["degenerate_shape"] > thresholds.max_aspect:
        return fail("degenerate_shape")

    values = _block_reduce(_scaled(grey, array.dtype, thresholds))
    checks["constant"] = float(values.std())
    if checks["constant"] < thresholds.min_std:
        return fail("constant")
    dark = float((values <= thresholds.dark_level).mean())
    bright = float((values >= thresholds.bright_level).mean())
    checks["blank"] = max(dark, bright)
    if checks["blank"] > thresholds.max_blank_fraction:
        return fail("blank")
    checks["pure_noise"] = neighbour_correlation(values)
    if checks["pure_noise"] < thresholds.min_neighbour_correlation:
        return fail("pure_noise")
    return SanityResult(ok=True, reason=None, value=None, checks=checks)
