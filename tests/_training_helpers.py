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
