"""One train / held-out splitter, grouped by source: no source file's frames or copies on both sides."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from clinisynth.evaluation.metrics import ImageRecord, grouped_stratified_split, read_manifest_rows
from clinisynth.training.data import ManifestError, ManifestRecord, read_manifest, split_records


def records(sources_per_label: int = 6, frames: int = 4) -> list[ManifestRecord]:
    """Multi-frame sources: ``frames`` images share each ``source_sha256``."""
    made = []
    for label in ("normal", "pneumonia"):
        for source in range(sources_per_label):
            for frame in range(frames):
                made.append(ManifestRecord(path=Path(f"/data/{label}/{source:02d}_{frame}.png"), text="",
                                           modality="modality.chest_xray", label=label,
                                           source_sha256=f"{label}-{source}"))
    return made


@pytest.mark.parametrize("seed", range(8))
def test_diffusion_split_puts_every_source_on_one_side_only(seed):
    train, validation = split_records(records(), validation_fraction=0.25, seed=seed)
    assert {r.source_sha256 for r in train}.isdisjoint({r.source_sha256 for r in validation})
    assert len(train) + len(validation) == 48 and {r.path for r in train}.isdisjoint({r.path for r in validation})
    # Stratified: every label is on both sides, a quarter of its sources held out, whole.
    for label in ("normal", "pneumonia"):
        held = {r.source_sha256 for r in validation if r.label == label}
        assert len(held) == 2 and sum(r.label == label for r in validation) == 8


def test_split_is_stable_whatever_the_manifest_order_and_depends_on_the_seed():
    shuffled = records()
    random.Random(5).shuffle(shuffled)
    assert split_records(shuffled, validation_fraction=0.25, seed=3) == split_records(records(), validation_fraction=0.25,
                                                                                      seed=3)
    held = {seed: {r.source_sha256 for r in split_records(records(), validation_fraction=0.25, seed=seed)[1]}
            for seed in range(6)}
    assert len({frozenset(v) for v in held.values()}) > 1


def test_rows_without_a_source_hash_are_each_their_own_group_and_fraction_zero_holds_nothing_out():
    single = [ManifestRecord(path=Path(f"/d/{i}.png"), text="", modality="m", label="normal") for i in range(10)]
    train, validation = split_records(single, validation_fraction=0.2, seed=0)
    assert len(validation) == 2 and len(train) == 8
    assert split_records(single, validation_fraction=0.0, seed=0) == (sorted(single, key=lambda r: str(r.path)), [])
    with pytest.raises(ValueError, match="validation_fraction"):
        split_records(single, validation_fraction=0.6, seed=0)


def test_one_source_per_label_is_never_split_even_if_validation_stays_empty():
    one = [ManifestRecord(path=Path(f"/d/{i}.png"), text="", modality="m", label="normal", source_sha256="s")
           for i in range(5)]
    assert split_records(one, validation_fraction=0.5, seed=0) == (one, [])


def test_the_classifier_and_evaluation_splitter_is_the_same_function_on_image_records():
    image_records = [ImageRecord(path=r.path, label=r.label, group=r.source_sha256) for r in records()]
    ordered = sorted(records(), key=lambda r: str(r.path))
    kept, held = grouped_stratified_split(sorted(image_records, key=lambda r: str(r.path)), fraction=0.25, seed=2)
    train, validation = split_records(records(), validation_fraction=0.25, seed=2)
    assert [ordered[i] for i in held] == validation and [ordered[i] for i in kept] == train


def test_one_manifest_reader_for_training_and_evaluation(tmp_path):
    (tmp_path / "normal").mkdir()
    for name in ("a.png", "b.png"):
        (tmp_path / "normal" / name).write_bytes(b"png")
    (tmp_path / "manifest.csv").write_text(
        "path,text,modality,label,source_sha256,width,height\n"
        "normal/a.png, a caption ,modality.chest_xray,normal,s1,8,8\n"
        "normal/b.png,,modality.chest_xray,normal,s1,8,8\n", encoding="utf-8")
    rows = read_manifest_rows(tmp_path)
    assert [row["line"] for row in rows] == [2, 3] and rows[0]["path"] == (tmp_path / "normal" / "a.png").resolve()
    training = read_manifest(tmp_path)
    assert [r.text for r in training] == ["a caption", ""] and {r.source_sha256 for r in training} == {"s1"}

    (tmp_path / "manifest.csv").write_text("path,text,modality,label\nnormal/a.png,,m,\n", encoding="utf-8")
    with pytest.raises(ManifestError, match="line 2: empty 'path' or 'label'"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.csv").write_text("path,label\nnormal/a.png,normal\n", encoding="utf-8")
    assert len(read_manifest_rows(tmp_path)) == 1  # evaluation needs only path and label
    with pytest.raises(ManifestError, match=r"lacks column\(s\) \['text', 'modality'\]"):
        read_manifest(tmp_path)
