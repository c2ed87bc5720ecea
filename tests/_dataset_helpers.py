"""Small generated datasets, healthy or damaged one way, for the health check, doctor and bad-input tests."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from clinisynth.generation.storage import COUNTERS_NAME, OrderedStorage

#: How a dataset can be damaged -> what the refusal names.
DAMAGES = {
    "zero_png": "normal_000002.png: zero-byte PNG",
    "truncated_png": "normal_000002.png: truncated PNG",
    "garbage_line": "metadata.jsonl line 2: not JSON",
    "half_line": "metadata.jsonl line 4: half a line",
    "foreign_header": "manifest.csv line 1: foreign header",
    "damaged_counters": f"{COUNTERS_NAME}: damaged counters file",
    "prepared": "made by `clinisynth prepare`",
}


def make_dataset(out: Path, *, n: int = 3) -> OrderedStorage:
    """``n`` stored chest_xray/normal images (distinct grey levels), as a generate run files them."""
    storage = OrderedStorage(out)
    for index in range(n):
        image = Image.new("L", (16, 16), 30 + 60 * index)
        image.putpixel((index, index), 255)
        storage.store(image=image, modality="chest_xray", label="normal",
                      metadata={"seed": index, "run_id": "20261121T000000.000000Z-00000000", "slot": index})
    return storage


def damage(out: Path, how: str) -> None:
    """Damage the dataset ``out`` (made by :func:`make_dataset`) the way ``how`` names (a key of :data:`DAMAGES`)."""
    png = out / "chest_xray" / "normal" / "normal_000002.png"
    if how == "zero_png":
        png.write_bytes(b"")
    elif how == "truncated_png":
        png.write_bytes(png.read_bytes()[:40])
    elif how == "garbage_line":
        lines = (out / "metadata.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
        (out / "metadata.jsonl").write_text(lines[0] + "}}garbage{{\n" + "".join(lines[1:]), encoding="utf-8")
    elif how == "half_line":
        with open(out / "metadata.jsonl", "a", encoding="utf-8") as handle:
            handle.write('{"file_name": "chest_xray/normal/norm')
    elif how == "foreign_header":
        (out / "manifest.csv").write_text("path,text,modality,label\nx.png,a,chest_xray,normal\n", encoding="utf-8")
    elif how == "damaged_counters":
        (out / COUNTERS_NAME).write_text('{"counters": {"chest_xray/normal": "many"', encoding="utf-8")
    elif how == "prepared":
        (out / ".clinisynth_dataset.json").write_text(json.dumps({"kind": "prepare"}), encoding="utf-8")
    else:
        raise ValueError(f"unknown damage {how!r}")
