"""A dataset prepared by ``clinisynth prepare``, read for diffusion training.

``DIR/manifest.csv`` has the columns ``path,text,modality,label,source_sha256,width,height``; ``path`` is relative
to ``DIR``. Every file is checked before training starts, so a missing image is a clear error, not a crash at
step 3000.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path

MANIFEST_NAME = "manifest.csv"
REQUIRED_COLUMNS = ("path", "text", "modality", "label")


class ManifestError(ValueError):
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
    if not manifest.is_file():
        raise ManifestError(f"no {MANIFEST_NAME} in {dataset_dir}: prepare the data first with `clinisynth prepare`")
    with manifest.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing_columns = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing_columns:
            raise ManifestError(f"{manifest} lacks column(s) {missing_columns}; expected {', '.join(REQUIRED_COLUMNS)}")
        rows = list(reader)
    records = [
        ManifestRecord(path=(dataset_dir / row["path"]).resolve(), text=(row.get("text") or "").strip(),
                       modality=(row.get("modality") or "").strip(), label=(row.get("label") or "").strip(),
                       source_sha256=(row.get("source_sha256") or "").strip())
        for row in rows
    ]
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
    blank = [r for r in records if not r.label]
    if blank:
        raise ManifestError(f"{len(blank)} row(s) of {manifest} have no label (first: {blank[0].path})")
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
    """Split into (train, validation), stratified by label and seeded (the same split on every resume).

    Args:
        records: from :func:`read_manifest`.
        validation_fraction: share held out per label, 0 to 0.5; each label with at least 2 images keeps at least
            one image in each part when the fraction is above 0.
        seed: shuffling seed.
    """
    if not 0 <= validation_fraction <= 0.5:
        raise ValueError(f"validation_fraction must be from 0 to 0.5, got {validation_fraction}")
    train: list[ManifestRecord] = []
    validation: list[ManifestRecord] = []
    for label in sorted({r.label for r in records}):
        group = sorted((r for r in records if r.label == label), key=lambda r: str(r.path))
        random.Random(f"{seed}-{label}").shuffle(group)
        count = round(len(group) * validation_fraction)
        if validation_fraction > 0 and len(group) >= 2:
            count = min(max(count, 1), len(group) - 1)
        validation.extend(group[:count])
        train.extend(group[count:])
    return train, validation


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
