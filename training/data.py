"""A dataset prepared by ``clinisynth prepare``, read for diffusion training.

``DIR/manifest.csv`` has the columns ``path,text,modality,label,source_sha256,width,height``; ``path`` is relative
to ``DIR``. Every file is checked before training starts, so a missing image is a clear error, not a crash at
step 3000.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clinisynth.evaluation.metrics import MANIFEST_NAME, DatasetError, grouped_stratified_split, read_manifest_rows

__all__ = ["MANIFEST_NAME", "REQUIRED_COLUMNS", "ManifestError", "ManifestRecord", "load_images", "read_manifest",
           "split_records"]

REQUIRED_COLUMNS = ("path", "text", "modality", "label")


class ManifestError(DatasetError):
    """The dataset directory or its manifest cannot be used for training."""


@dataclass(frozen=True)
class ManifestRecord:
    """One training image.

    Args:
        path: absolute image path.
        text: caption from the manifest; may be empty (then :mod:`clinisynth.training.captions` writes one).
        modality: modality record id, e.g. ``modality.chest_xray``.
        label: class label, e.g. ``pneumonia``.
        source_sha256: hash of the source image (identifies the data in cards).
    """

    path: Path
    text: str
    modality: str
    label: str
    source_sha256: str = ""


def read_manifest(dataset_dir: Path, *, labels: list[str] | None = None, modality: str | None = None,
                  limit: int | None = None) -> list[ManifestRecord]:
    """Read and check ``dataset_dir/manifest.csv``.

    Args:
        dataset_dir: a folder prepared by ``clinisynth prepare``.
        labels: keep only these labels (each must occur in the manifest); ``None`` keeps all.
        modality: keep only this modality id; ``None`` keeps all.
        limit: keep at most this many rows (in manifest order), for quick runs.

    Raises:
        ManifestError: no manifest, missing columns, empty selection, unknown label, or image files that do not
            exist (all of them are counted, the first few named).
    """
    dataset_dir = Path(dataset_dir)
    manifest = dataset_dir / MANIFEST_NAME
    try:
        rows = read_manifest_rows(dataset_dir, required=REQUIRED_COLUMNS)
    except DatasetError as error:
        raise ManifestError(str(error)) from None
    records = [ManifestRecord(path=row["path"], text=row.get("text", ""), modality=row.get("modality", ""),
                              label=row["label"], source_sha256=row.get("source_sha256", "")) for row in rows]
    if modality is not None:
        records = [r for r in records if r.modality == modality]
    if labels is not None:
        present = {r.label for r in records}
        unknown = sorted(set(labels) - present)
        if unknown:
            raise ManifestError(f"label(s) {unknown} are not in {manifest}; labels there: {sorted(present)}")
        records = [r for r in records if r.label in set(labels)]
    if limit is not None:
        if limit < 1:
            raise ManifestError(f"limit must be at least 1, got {limit}")
        records = records[:limit]
    if not records:
        raise ManifestError(f"{manifest} has no rows for modality={modality!r} labels={labels!r}")
    missing = [r.path for r in records if not r.path.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:3])
        raise ManifestError(
            f"{len(missing)} image file(s) listed in {manifest} do not exist (e.g. {shown}); re-run "
            "`clinisynth prepare` or fix the manifest"
        )
    return records


def split_records(records: list[ManifestRecord], *, validation_fraction: float,
                  seed: int) -> tuple[list[ManifestRecord], list[ManifestRecord]]:
    """Split into (train, validation), stratified by label, grouped by source and seeded (the same split on
    every resume, whatever the manifest's row order).

    Images sharing a ``source_sha256`` (the frames and copies of one source file) land on the same side, so the
    validation loss is never measured on a frame of a training source. The splitter is evaluation's
    :func:`~clinisynth.evaluation.metrics.grouped_stratified_split`, the one the classifier uses.

    Args:
        records: from :func:`read_manifest`.
        validation_fraction: share of each label's sources held out, 0 to 0.5; each label with at least 2
            sources keeps at least one on each side when the fraction is above 0.
        seed: shuffling seed.
    """
    if not 0 <= validation_fraction <= 0.5:
        raise ValueError(f"validation_fraction must be from 0 to 0.5, got {validation_fraction}")
    ordered = sorted(records, key=lambda record: str(record.path))
    if validation_fraction == 0:
        return ordered, []
    train, validation = grouped_stratified_split(ordered, fraction=validation_fraction, seed=seed,
                                                 group=lambda record: record.source_sha256 or None)
    return [ordered[i] for i in train], [ordered[i] for i in validation]


def load_images(records: list[ManifestRecord], *, resolution: int):
    """All images as one float tensor ``(N, 3, resolution, resolution)`` in [-1, 1].

    Small prepared sets fit in memory at training resolutions; loading once keeps the CPU on the model.
    Grey images are repeated to 3 channels (the SD VAE takes RGB).
    """
    import numpy as np
    import torch
    from PIL import Image

    if resolution < 8 or resolution % 8:
        raise ValueError(f"resolution must be a multiple of 8 and at least 8, got {resolution}")
    arrays = []
    for record in records:
        try:
            with Image.open(record.path) as image:
                image = image.convert("RGB").resize((resolution, resolution), Image.Resampling.BICUBIC)
                arrays.append(np.asarray(image, dtype=np.uint8))
        except OSError as error:
            raise ManifestError(f"cannot read image {record.path}: {error}") from error
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()
    return batch / 127.5 - 1.0
