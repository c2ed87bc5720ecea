"""Decode one source (raster file, DICOM file or MedMNIST array) into 8-bit display frames.

Raster formats go through Pillow, DICOM through pydicom. Every failure becomes a
:class:`QuarantineError` with a reason code and a detail written here, never a library's message:
those can carry file names or DICOM header values, and nothing of either may reach the outputs.

Intensity policy, per frame:
- 8-bit data is kept as it is.
- Wider raster data (16-bit TIFF / PNG, 32-bit integer or float) is stretched linearly from its own
  minimum to its maximum, so 12-bit data in a 16-bit container is not crushed to black.
- DICOM monochrome: modality LUT (rescale slope / intercept or LUT), then the first VOI LUT or
  window (linear, linear exact or sigmoid), else the frame's own min / max; MONOCHROME1 is inverted
  last so that air is black as in MONOCHROME2.
- DICOM colour: YBR is converted to RGB by pydicom; palette colour through its LUT; samples
  wider than 8 bits are scaled by their bit depth.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass

import numpy as np

from clinisynth.evaluation.images import as_array

from clinisynth.evaluation.sanity import SanityThresholds, check_image

RASTER_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".bmp", ".dib", ".tif", ".tiff", ".gif", ".webp", ".jp2", ".j2k", ".pgm", ".ppm", ".pbm", ".pnm"}
)
DICOM_EXTENSIONS = frozenset({".dcm", ".dicom", ".dic"})
QUARANTINE_REASONS = (
    "zero_byte",
    "unreadable",
    "truncated",
    "unsupported_compression",
    "no_pixel_data",
    "burned_in_annotation",
    "burned_in_text",
    "modality_mismatch",
    "non_finite",
)

# Only the non-finite check runs on native values (their range is arbitrary); the full sanity
# check runs later on the 8-bit frame.
_NATIVE_THRESHOLDS = SanityThresholds(value_range=None, min_side=1, max_aspect=float("inf"), min_std=0.0)


class QuarantineError(Exception):
    """A source that cannot become a training image.

    Args:
        reason: short code (one of :data:`QUARANTINE_REASONS` or a sanity reason).
        detail: a sentence for the report, free of file names and header values.
        value: the failing check's value, where there is one.
    """

    def __init__(self, reason: str, detail: str, value: float | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.value = value

    def __reduce__(self):  # travels back from worker processes
        return (QuarantineError, (self.reason, self.detail, self.value))


@dataclass
class DecodedSource:
    """Frames of one source as uint8 arrays, (H, W) grey or (H, W, 3) RGB.

    Args:
        frames: one array per page / frame kept.
        format: ``PNG``, ``JPEG``, ``TIFF``, ``DICOM``, ``NPZ``, ...
        mode: the native pixel mode, e.g. ``L``, ``RGB``, ``I;16``, ``MONOCHROME2/16``.
    """

    frames: list[np.ndarray]
    format: str
    mode: str


def stretch_to_uint8(values: np.ndarray) -> np.ndarray:
    """Linear min / max stretch to 0..255 (a flat array becomes all zeros)."""
    values = values.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - low) / (high - low) * 255.0).astype(np.uint8)


def _check_finite(values: np.ndarray) -> None:
    if np.issubdtype(values.dtype, np.floating):
        result = check_image(values if values.ndim in (2, 3) else values.reshape(values.shape[0], -1), thresholds=_NATIVE_THRESHOLDS)
        if result.reason == "non_finite":
            raise QuarantineError("non_finite", "NaN or infinite pixel values", result.value)


def _pil_frame_to_array(frame) -> np.ndarray:
    mode = frame.mode
    if mode in ("L", "RGB"):
        return np.asarray(frame).copy()
    if mode == "1":
        return as_array(frame).copy()
    if mode == "LA":
        return np.asarray(frame.getchannel("L")).copy()
    if mode.startswith("I") or mode == "F":
        values = np.asarray(frame)
        _check_finite(values)
        return stretch_to_uint8(values)
    # P, PA, RGBA, CMYK, YCbCr, LAB, HSV: colour, alpha dropped.
    return np.asarray(frame.convert("RGB")).copy()


def decode_raster(data: bytes, *, pages: str) -> DecodedSource:
    """Decode raster bytes with Pillow; ``pages`` is ``all`` or ``first`` for multi-page files."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image_format = image.format or "unknown"
            native_mode = image.mode
            count = getattr(image, "n_frames", 1) if pages == "all" else 1
            frames = []
            for index in range(count):
                image.seek(index)
                image.load()
                frame = ImageOps.exif_transpose(image) if index == 0 else image.copy()
                frames.append(_pil_frame_to_array(frame))
    except QuarantineError:
        raise
    except UnidentifiedImageError:
        raise QuarantineError("unreadable", "not an image Pillow can identify") from None
    except Image.DecompressionBombError:
        raise QuarantineError("unreadable", f"larger than Pillow's limit of {Image.MAX_IMAGE_PIXELS} pixels") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        if "truncated" in str(error).lower() or isinstance(error, EOFError):
            raise QuarantineError("truncated", "the file ends before the image data does") from None
        raise QuarantineError("unreadable", f"Pillow could not decode it ({type(error).__name__})") from None
    return DecodedSource(frames=frames, format=image_format, mode=native_mode)


def _transfer_syntax_name(dataset) -> str:
    uid = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    # A name from pydicom's UID dictionary is a standard constant, never patient data.
    if uid is not None and uid.is_transfer_syntax:
        return uid.name
    return "an unrecognised transfer syntax"


def _window(values: np.ndarray, dataset) -> np.ndarray:
    """VOI LUT or window to [0, 1]; the frame's own min / max when the header gives neither."""
    from pydicom.pixels import apply_voi

    if "VOILUTSequence" in dataset and len(dataset.VOILUTSequence):
        lut_output = apply_voi(values, dataset, index=0).astype(np.float64)
        bits = int(dataset.VOILUTSequence[0].LUTDescriptor[2]) or 16
        return np.clip(lut_output / (2.0**bits - 1.0), 0.0, 1.0)
    center, width = dataset.get("WindowCenter"), dataset.get("WindowWidth")
    if center is not None and width is not None:
        center = float(center[0] if hasattr(center, "__len__") and not isinstance(center, str) else center)
        width = float(width[0] if hasattr(width, "__len__") and not isinstance(width, str) else width)
        function = str(dataset.get("VOILUTFunction", "LINEAR")).upper()
        if width > 0 and function == "SIGMOID":
            return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
        if width > 0 and function == "LINEAR_EXACT":
            return np.clip((values - center) / width + 0.5, 0.0, 1.0)
        if width >= 1:  # PS3.3 C.11.2.1.2.1 linear window
            return np.clip((values - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.float64)
    return (values - low) / (high - low)


def dicom_modality_code(dataset) -> str | None:
    """The Modality (0008,0060) code of a dataset, upper-case; ``None`` when absent, empty or ``OT`` (other).

    Absent and ``OT`` make no claim, so they cannot contradict the modality a file is filed under.
    """
    value = dataset.get("Modality")
    code = str(value).strip().upper() if value is not None else ""
    return None if code in ("", "OT") else code


@functools.lru_cache(maxsize=1)
def _acquisition_modality_codes() -> frozenset[str]:
    from pydicom.sr.codedict import codes

    return frozenset(getattr(codes.cid29, name).value for name in codes.cid29.dir())


def describe_modality_code(code: str) -> str:
    """``'CT'`` when the code is a DICOM acquisition modality (CID 29), else words that quote nothing:
    the tag may hold anything, and no header value other than a standard code reaches the outputs."""
    return repr(code) if code in _acquisition_modality_codes() else "a code that is no DICOM acquisition modality"


def check_dicom_modality(dataset, *, modality_id: str | None, accepted: tuple[str, ...]) -> None:
    """Raise ``modality_mismatch`` when the file's Modality tag names a code ``modality_id`` does not accept.

    Args:
        dataset: the parsed header.
        modality_id: the modality the file is filed under (``modality.chest_xray``).
        accepted: that modality's ``dicom_modalities`` from the knowledge base; empty accepts every code.
    """
    code = dicom_modality_code(dataset)
    if code is None or not accepted or code in accepted:
        return
    raise QuarantineError(
        "modality_mismatch",
        f"the DICOM Modality tag says {describe_modality_code(code)}, but the file is filed under {modality_id}, "
        f"which takes {', '.join(accepted)}; file it under its own modality (--modality or the CSV modality column)",
    )


def decode_dicom(data: bytes, *, pages: str, modality_id: str | None = None, accepted_modalities: tuple[str, ...] = ()) -> DecodedSource:
    """Decode DICOM bytes with pydicom (see the module docstring for the intensity policy).

    Args:
        data: the file's bytes.
        pages: ``all`` or ``first`` frame.
        modality_id: the modality the file is filed under, for the Modality tag check.
        accepted_modalities: the DICOM Modality codes that modality accepts (empty: no check).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError:
        raise QuarantineError("unreadable", "not a DICOM file (no DICM preamble)") from None
    except (EOFError, OSError) as error:
        raise QuarantineError("truncated", f"the DICOM header is cut short ({type(error).__name__})") from None
    except Exception as error:  # pydicom raises many types on malformed headers
        raise QuarantineError("unreadable", f"pydicom could not parse the header ({type(error).__name__})") from None

    if not any(tag in dataset for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise QuarantineError("no_pixel_data", "a DICOM object without an image (report, plan, structure set, ...)")
    check_dicom_modality(dataset, modality_id=modality_id, accepted=accepted_modalities)
    if str(dataset.get("BurnedInAnnotation", "")).strip().upper() == "YES":
        raise QuarantineError("burned_in_annotation", "the header says identifying text is burned into the pixels")

    syntax = _transfer_syntax_name(dataset)
    try:
        pixels = dataset.pixel_array
    except RuntimeError as error:
        text = str(error)
        if "missing dependencies" in text:
            raise QuarantineError(
                "unsupported_compression",
                f"no installed decoder for {syntax}; install pylibjpeg with pylibjpeg-libjpeg / "
                "pylibjpeg-openjpeg / pylibjpeg-rle, or python-gdcm",
            ) from None
        raise QuarantineError(
            "unsupported_compression", f"the installed decoders failed on this {syntax} data (e.g. 12-bit JPEG needs pylibjpeg-libjpeg)"
        ) from None
    except ValueError as error:
        if "less than expected" in str(error) or "truncated" in str(error).lower():
            raise QuarantineError("truncated", "the pixel data is shorter than the header promises") from None
        raise QuarantineError("unreadable", f"pydicom could not read the pixel data ({type(error).__name__})") from None
    except Exception as error:
        raise QuarantineError("unreadable", f"pydicom could not read the pixel data ({type(error).__name__})") from None

    frame_count = int(dataset.get("NumberOfFrames", 1) or 1)
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if frame_count == 1:
        pixels = pixels[None]
    if pages == "first":
        pixels = pixels[:1]
    bits = int(dataset.get("BitsStored", dataset.get("BitsAllocated", 8)) or 8)
    _check_finite(pixels)

    frames: list[np.ndarray] = []
    for frame in pixels:
        if photometric == "PALETTE COLOR":
            rgb = apply_color_lut(frame, dataset)
            frames.append((rgb >> 8).astype(np.uint8) if rgb.dtype.itemsize > 1 else rgb.astype(np.uint8))
        elif samples >= 3:
            if frame.dtype == np.uint8:
                frames.append(frame[..., :3].copy())
            else:
                scaled = frame[..., :3].astype(np.float64) / (2.0 ** min(bits, 32) - 1.0)
                frames.append(np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8))
        else:
            values = apply_modality_lut(frame, dataset).astype(np.float64)
            display = _window(values, dataset)
            if photometric == "MONOCHROME1":
                display = 1.0 - display
            frames.append(np.round(display * 255.0).astype(np.uint8))
    return DecodedSource(frames=frames, format="DICOM", mode=f"{photometric}/{bits}")


def decode_array(array: np.ndarray) -> DecodedSource:
    """A MedMNIST-style array, (H, W) or (H, W, 3), uint8 or wider."""
    _check_finite(array)
    frame = array if array.dtype == np.uint8 else stretch_to_uint8(array)
    return DecodedSource(frames=[frame], format="NPZ", mode="RGB" if frame.ndim == 3 else "L")
