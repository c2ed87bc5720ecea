"""Work on one source in a worker process: read, hash, decode, check, standardize, encode.

The worker writes nothing: it returns PNG bytes, and the parent process alone decides about
duplicates and writes files, so a killed worker can leave nothing half-done.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from clinisynth.evaluation.hashing import exact_hash, perceptual_hash, thumbnail
from clinisynth.evaluation.sanity import SanityThresholds, check_image
from clinisynth.training.prepare.burned_in import find_text_lines
from clinisynth.training.prepare.decode import QuarantineError, decode_array, decode_dicom, decode_raster
from clinisynth.training.prepare.discover import SourceItem
from clinisynth.training.prepare.standardize import apply_channel_policy, encode_png, resize_and_pad


@dataclass(frozen=True)
class WorkSettings:
    """Per-run settings every worker needs.

    Args:
        size: output side in pixels.
        mode: ``L`` or ``RGB``.
        pages: ``all`` or ``first`` page / frame of multi-page sources.
        thresholds: sanity thresholds for the 8-bit frames.
        text_check: look for text burned into the pixels (:mod:`~clinisynth.training.prepare.burned_in`).
        dicom_modalities: modality id -> the DICOM Modality codes it accepts (the knowledge base's
            ``dicom_modalities``); a DICOM whose tag names another code is quarantined.
    """

    size: int
    mode: str
    pages: str
    thresholds: SanityThresholds = field(default_factory=SanityThresholds)
    text_check: bool = True
    dicom_modalities: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass
class FrameResult:
    """One frame: quarantined (``reason`` set) or a candidate (``png`` set)."""

    index: int
    width: int
    height: int
    reason: str | None = None
    value: float | None = None
    detail: str | None = None
    png: bytes | None = None
    pixel_sha256: str | None = None
    phash: int | None = None
    thumb: np.ndarray | None = None


@dataclass
class ItemResult:
    """One source: its hash, format and mode, and either a source-level error or its frames."""

    key: str
    source_sha256: str
    format: str | None = None
    mode: str | None = None
    error: QuarantineError | None = None
    frames: list[FrameResult] = field(default_factory=list)
    seconds: float = 0.0


def _read(item: SourceItem) -> bytes:
    if item.kind == "array":
        array = np.ascontiguousarray(item.array)
        return f"{array.shape}|{array.dtype.str}|".encode() + array.tobytes()
    return item.path.read_bytes()


def process_item(item: SourceItem, settings: WorkSettings) -> ItemResult:
    """Turn one source into frame results; never raises for a bad image (that is a quarantine)."""
    import time

    start = time.perf_counter()
    try:
        data = _read(item)
    except OSError as error:
        return ItemResult(key=item.key, source_sha256="", error=QuarantineError("unreadable", f"could not read the file ({type(error).__name__})"))
    result = ItemResult(key=item.key, source_sha256=hashlib.sha256(data).hexdigest())
    try:
        if not data:
            raise QuarantineError("zero_byte", "the file is empty", 0.0)
        if item.kind == "dicom":
            decoded = decode_dicom(
                data, pages=settings.pages, modality_id=item.modality, accepted_modalities=settings.dicom_modalities.get(item.modality, ())
            )
        elif item.kind == "raster":
            decoded = decode_raster(data, pages=settings.pages)
        else:
            decoded = decode_array(item.array)
    except QuarantineError as error:
        result.error = error
        result.seconds = time.perf_counter() - start
        return result
    result.format, result.mode = decoded.format, decoded.mode
    for index, frame in enumerate(decoded.frames):
        height, width = frame.shape[:2]
        frame_result = FrameResult(index=index, width=width, height=height)
        sanity = check_image(frame, thresholds=settings.thresholds)
        if not sanity.ok:
            frame_result.reason, frame_result.value = sanity.reason, sanity.value
            frame_result.detail = f"sanity check {sanity.reason} failed"
        elif settings.text_check and (lines := find_text_lines(frame)):
            # The report says where and how much, never what: the text may be the identifier.
            frame_result.reason, frame_result.value = "burned_in_text", float(len(lines))
            frame_result.detail = (
                f"text in the pixels: {len(lines)} line(s) read by OCR, the longest of {lines[0].chars} characters; "
                "identifiers may be burned in"
            )
        else:
            policy = apply_channel_policy(frame, mode=settings.mode)
            frame_result.png = encode_png(resize_and_pad(policy, size=settings.size))
            frame_result.pixel_sha256 = exact_hash(policy)
            frame_result.phash = perceptual_hash(policy)
            frame_result.thumb = thumbnail(policy)
        result.frames.append(frame_result)
    result.seconds = time.perf_counter() - start
    return result
