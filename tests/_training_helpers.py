"""Small prepared datasets for the training tests (synthetic PNGs in the `clinisynth prepare` manifest format)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

COLUMNS = ("path", "text", "modality", "label", "source_sha256", "width", "height")
CAPTIONS = {
    "normal": "chest radiograph, normal study, clear lungs",
    "pneumonia": "chest radiograph, right lower lobe consolidation, pneumonia",
}


def make_dataset(root: Path, *, per_label: int = 6, size: int = 64, seed: int = 0, text: bool = True) -> Path:
    """A dataset folder with ``per_label`` images of two labels that differ visibly (bright vs dark bottom half)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for label in CAPTIONS:
        (root / label).mkdir(exist_ok=True)
        for i in range(per_label):
            base = np.linspace(40, 200, size)[None, :].repeat(size, 0)
            if label == "pneumonia":
                base[size // 2:, : size // 2] += 50
            pixels = np.clip(base + rng.normal(0, 12, (size, size)), 0, 255).astype(np.uint8)
            relative = f"{label}/{label}_{i:03d}.png"
            Image.fromarray(pixels, mode="L").save(root / relative)
            rows.append({"path": relative, "text": CAPTIONS[label] if text else "", "modality": "modality.chest_xray",
                         "label": label, "source_sha256": f"{i:064d}", "width": size, "height": size})
    with (root / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return root


def add_class(root: Path, *, modality: str, label: str, caption: str, count: int = 4, size: int = 32,
              seed: int = 1) -> Path:
    """Append ``count`` images of one more class (e.g. ``modality.brain_mri`` / ``normal``) to a dataset made by
    :func:`make_dataset`: a dataset of several modalities, as a base generator is trained on."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder = f"{modality.removeprefix('modality.')}_{label}"
    (root / folder).mkdir(exist_ok=True)
    rows = []
    for i in range(count):
        yy, xx = np.mgrid[:size, :size]
        disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2) * 120.0
        pixels = np.clip(40 + disc + rng.normal(0, 12, (size, size)), 0, 255).astype(np.uint8)
        relative = f"{folder}/{label}_{i:03d}.png"
        Image.fromarray(pixels, mode="L").save(root / relative)
        rows.append({"path": relative, "text": caption, "modality": modality, "label": label,
                     "source_sha256": f"{seed}{i:063d}", "width": size, "height": size})
    with (root / "manifest.csv").open("a", newline="") as handle:
        csv.DictWriter(handle, fieldnames=COLUMNS).writerows(rows)
    return root
