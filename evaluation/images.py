"""Image to grey: the one conversion that the verifier, the scorers, data preparation and the reports share.

Colour becomes ITU-R 601-2 luma with Pillow's own fixed-point weights, so a uint8 RGB array and the same
picture as a PIL image give identical grey bytes (``Image.convert("L")``); alpha is dropped; palette and
other colour modes go through RGB first. Floats keep their values (NaN and out-of-range values included:
the sanity check must see them); :func:`grey_uint8` reads floats as [0, 1] for 8-bit consumers.
"""

from __future__ import annotations

import numpy as np

#: ITU-R 601-2 luma weights in 1/65536 (Pillow's ``L = (R*19595 + G*38470 + B*7471 + 32768) >> 16``).
LUMA_WEIGHTS = (19595, 38470, 7471)
_COLOUR_MODES_VIA_RGB = ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa", "La")


def as_array(image) -> np.ndarray:
    """A numpy view of an image: arrays as they are; PIL palette / colour modes as RGB(A), ``1`` as ``L``."""
    if isinstance(image, np.ndarray):
        return image
    from PIL import Image

    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a numpy array or a PIL image, got {type(image).__name__}")
    if image.mode in _COLOUR_MODES_VIA_RGB:
        image = image.convert("RGBA" if "A" in image.mode or "a" in image.mode else "RGB")
    elif image.mode == "1":
        image = image.convert("L")
    return np.asarray(image)


def grey(image) -> np.ndarray:
    """An ``(H, W)`` grey array of a PIL image or an ``(H, W)`` / ``(H, W, C)`` array (C = 1 to 4).

    uint8 colour gives uint8 luma, exactly Pillow's; other colour dtypes give float64 luma; a grey image
    (2-D, one channel, or grey + alpha) comes back as its own values. PIL ``I`` / ``I;16`` / ``F`` images keep
    their values (not clipped to 8 bits).

    Raises:
        TypeError: not an image. ValueError: an array of another shape (e.g. channel-first).
    """
    array = as_array(image)
    if array.ndim == 2:
        return array
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"expected an (H, W) or (H, W, C) image with C in 1..4, got shape {array.shape}; "
                         "transpose channel-first (C, H, W) arrays to (H, W, C) first")
    if array.shape[2] <= 2:  # grey, or grey + alpha
        return array[..., 0]
    colour = array[..., :3]
    if colour.dtype == np.uint8:
        weighted = colour.astype(np.uint32) @ np.array(LUMA_WEIGHTS, dtype=np.uint32)
        return ((weighted + 32768) >> 16).astype(np.uint8)
    return colour.astype(np.float64) @ (np.array(LUMA_WEIGHTS, dtype=np.float64) / 65536.0)


def grey_uint8(image) -> np.ndarray:
    """:func:`grey` as uint8 0..255: floats read as [0, 1] (NaN as 0, clipped), other integers clipped to 0..255
    (as Pillow's ``I`` -> ``L``)."""
    values = grey(image)
    if values.dtype == np.uint8:
        return values
    if np.issubdtype(values.dtype, np.floating):
        return (np.clip(np.nan_to_num(values.astype(np.float64)), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return np.clip(values, 0, 255).astype(np.uint8)


def grey_image(image):
    """:func:`grey_uint8` as a PIL ``L`` image."""
    from PIL import Image

    return Image.fromarray(grey_uint8(image), mode="L")


def grey_unit(image) -> np.ndarray:
    """:func:`grey` as float64 in [0, 1] for 8-bit images (value / 255); float images keep their values."""
    values = grey(image)
    if np.issubdtype(values.dtype, np.floating):
        return values.astype(np.float64)
    return grey_uint8(values).astype(np.float64) / 255.0


__all__ = ["LUMA_WEIGHTS", "as_array", "grey", "grey_image", "grey_uint8", "grey_unit"]
