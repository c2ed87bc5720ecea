"""One channel policy, aspect-preserving resize with padding, lossless 8-bit PNG."""

from __future__ import annotations

import io

import numpy as np

from clinisynth.evaluation.images import grey

CHANNEL_MODES = ("L", "RGB")


def apply_channel_policy(frame: np.ndarray, *, mode: str) -> np.ndarray:
    """``L``: colour becomes ITU-R 601-2 luma (:func:`clinisynth.evaluation.images.grey`, exactly Pillow's
    ``convert("L")``); ``RGB``: grey is repeated.

    Args:
        frame: uint8 (H, W) or (H, W, 3).
        mode: ``L`` or ``RGB``.
    """
    if mode not in CHANNEL_MODES:
        raise ValueError(f"mode must be one of {CHANNEL_MODES}, got {mode!r}")
    if mode == "L":
        return grey(frame)
    return np.repeat(frame[..., None], 3, axis=2) if frame.ndim == 2 else frame


def resize_and_pad(frame: np.ndarray, *, size: int) -> np.ndarray:
    """Scale the longer side to ``size`` (Lanczos) and pad the shorter one with black, centred."""
    from PIL import Image

    height, width = frame.shape[:2]
    scale = size / max(height, width)
    new_width, new_height = max(1, round(width * scale)), max(1, round(height * scale))
    image = Image.fromarray(frame)
    if (new_width, new_height) != (width, height):
        image = image.resize((new_width, new_height), Image.Resampling.LANCZOS)
    if (new_width, new_height) == (size, size):
        return np.asarray(image)
    canvas = Image.new(image.mode, (size, size), 0)
    canvas.paste(image, ((size - new_width) // 2, (size - new_height) // 2))
    return np.asarray(canvas)


def encode_png(frame: np.ndarray) -> bytes:
    """Lossless PNG bytes with no metadata chunks (nothing but the pixels leaves the source)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()
