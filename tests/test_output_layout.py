"""What prepare and generate leave on disk is what loaders and other users expect (issue 15, item 8).

- ``datasets.load_dataset("imagefolder", data_dir=OUT)`` takes every folder that holds images for a class, except
  hidden ones (names starting with ``.``) and special ones (``__``): a prepared dir must hold images only in its
  class folders, so its contact sheets live in a hidden folder. With ``datasets`` installed this is checked by
  loading; without it, by that layout rule.
- Generated and prepared PNGs get the same mode, the one a plain ``open`` gives (0644 under the usual umask),
  although both are written through ``mkstemp`` (0600) and renamed.
"""

from __future__ import annotations

import csv
import os
import stat
from pathlib import Path

import numpy as np
from PIL import Image

from clinisynth.generation.storage import OrderedStorage
from clinisynth.training.prepare.pipeline import PrepareConfig, prepare_dataset

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"}


def _prepared(tmp_path: Path) -> Path:
    source, out = tmp_path / "src", tmp_path / "out"
    rng = np.random.default_rng(0)
    for label in ("NORMAL", "PNEUMONIA"):
        (source / label).mkdir(parents=True)
        for number in range(3):
            smooth = np.add.outer(np.linspace(0, 200, 48), np.linspace(0, 40, 48)) + rng.normal(0, 3, (48, 48))
            Image.fromarray(np.clip(smooth + 10 * number, 0, 255).astype(np.uint8)).save(source / label / f"{number}.png")
    prepare_dataset(PrepareConfig(source=source, out=out, size=32, modality="chest_xray", workers=1), progress=False)
    return out


def _visible_image_folders(root: Path) -> set[str]:
    """Top-level folders that hold an image somewhere, skipping what imagefolder skips (``.x`` and ``__x``)."""
    found = set()
    for path in root.rglob("*"):
        parts = path.relative_to(root).parts
        if path.suffix.lower() in IMAGE_SUFFIXES and not any(p.startswith((".", "__")) for p in parts):
            found.add(parts[0])
    return found


def test_a_prepared_dir_shows_loaders_only_its_classes(tmp_path):
    out = _prepared(tmp_path)
    with (out / "manifest.csv").open(newline="", encoding="utf-8") as handle:
        labels = {row["label"] for row in csv.DictReader(handle)}
    assert labels == {"normal", "pneumonia"}
    assert any((out / ".contact_sheets").glob("*.png")), "the contact sheets are still written"
    assert _visible_image_folders(out) == labels
    try:
        import datasets
    except ImportError:
        return
    loaded = datasets.load_dataset("imagefolder", data_dir=str(out), split="train")
    assert set(loaded.features["label"].names) == labels


def test_generated_and_prepared_pngs_get_the_usual_mode(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    expected = 0o666 & ~umask  # what open() gives; 0644 under the usual umask 022
    out = _prepared(tmp_path)
    prepared = {stat.S_IMODE(path.stat().st_mode) for path in (out / "normal").glob("*.png")}
    storage = OrderedStorage(tmp_path / "generated")
    stored = storage.store(image=Image.new("L", (16, 16), 90), modality="chest_xray", label="normal",
                           metadata={"prompt": "normal chest radiograph", "seed": 0})
    generated = stat.S_IMODE(stored.path.stat().st_mode)
    assert prepared == {expected}
    assert generated == expected
    for name in ("metadata.jsonl", "manifest.csv"):
        assert stat.S_IMODE((tmp_path / "generated" / name).stat().st_mode) == expected, name


def test_an_older_prepared_dir_loses_its_visible_contact_sheets_on_rerun(tmp_path):
    """A dir prepared before the sheets moved resumes (the old folder is ours) and its sheets move out of sight."""
    out = _prepared(tmp_path)
    os.rename(out / ".contact_sheets", out / "_contact_sheets")  # as an older version left it
    prepare_dataset(PrepareConfig(source=tmp_path / "src", out=out, size=32, modality="chest_xray", workers=1),
                    progress=False)
    assert not (out / "_contact_sheets").exists()
    assert {path.name for path in (out / ".contact_sheets").glob("*.png")} == {"normal.png", "pneumonia.png"}
    assert _visible_image_folders(out) == {"normal", "pneumonia"}
