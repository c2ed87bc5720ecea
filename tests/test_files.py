"""The one atomic writer and the one staged-folder publisher (generation/files.py), and that nothing else renames."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

from clinisynth.generation import files
from clinisynth.generation.files import staged_directory, write_atomically

ROOT = Path(__file__).resolve().parents[1]


def test_write_atomically_replaces_whole_fsyncs_file_and_folder_and_leaves_no_temp(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(files.os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_mode), real_fsync(fd))[1])
    target = tmp_path / "a.json"
    write_atomically(target, "old")
    assert write_atomically(target, b"new") == target and target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    import stat
    assert any(stat.S_ISREG(mode) for mode in synced) and any(stat.S_ISDIR(mode) for mode in synced)


def test_a_failed_write_keeps_the_old_file_and_removes_its_temp(tmp_path, monkeypatch):
    target = tmp_path / "a.txt"
    write_atomically(target, "old")
    monkeypatch.setattr(files.os, "replace", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left")))
    with pytest.raises(OSError, match="No space"):
        write_atomically(target, "new")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_staged_directory_publishes_replaces_whole_and_cleans_up(tmp_path):
    final = tmp_path / "model"
    with staged_directory(final) as staging:
        assert staging.parent == tmp_path and staging.name.startswith(".model.tmp-") and not final.exists()
        (staging / "weights.bin").write_bytes(b"1")
    assert (final / "weights.bin").read_bytes() == b"1"
    with staged_directory(final) as staging:
        (staging / "other.bin").write_bytes(b"2")
    assert sorted(p.name for p in final.iterdir()) == ["other.bin"]  # replaced as a whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no staging, no old copy left


def test_a_failing_block_leaves_the_published_folder_untouched(tmp_path):
    final = tmp_path / "model"
    with staged_directory(final) as staging:
        (staging / "weights.bin").write_bytes(b"1")
    with pytest.raises(RuntimeError, match="boom"):
        with staged_directory(final) as staging:
            (staging / "weights.bin").write_bytes(b"half")
            raise RuntimeError("boom")
    assert (final / "weights.bin").read_bytes() == b"1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_check_existing_refuses_a_foreign_folder_and_replace_false_keeps_the_first_copy(tmp_path):
    foreign = tmp_path / "taken"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("mine")

    def must_be_ours(existing: Path) -> None:
        if not (existing / "card.json").is_file():
            raise FileExistsError(f"{existing} is not ours")

    with pytest.raises(FileExistsError, match="not ours"):
        with staged_directory(foreign, check_existing=must_be_ours) as staging:
            (staging / "card.json").write_text("{}")
    assert (foreign / "precious.txt").read_text() == "mine"

    first = tmp_path / "cache"
    with staged_directory(first, replace=False) as staging:
        (staging / "card.json").write_text("first")
    with staged_directory(first, replace=False, check_existing=must_be_ours) as staging:
        (staging / "card.json").write_text("second")
    assert (first / "card.json").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "taken"]


def test_a_rename_that_fails_puts_the_old_copy_back(tmp_path, monkeypatch):
    final = tmp_path / "model"
    with staged_directory(final) as staging:
        (staging / "weights.bin").write_bytes(b"1")
    real_rename = os.rename

    def rename(source, target):
        if ".tmp-" in str(source):
            raise OSError(18, "Invalid cross-device link")
        return real_rename(source, target)

    monkeypatch.setattr(files.os, "rename", rename)
    with pytest.raises(OSError, match="cross-device"):
        with staged_directory(final) as staging:
            (staging / "weights.bin").write_bytes(b"2")
    assert (final / "weights.bin").read_bytes() == b"1"


#: Folders whose files DESIGN.md does not let import generation/ (knowledge, retrieval, evaluation) keep their own
#: rename. Everything else goes through generation/files.
OWN_RENAMES = {"generation/files.py", "knowledge/loader.py", "retrieval/index.py"}


def test_only_generation_files_renames_into_place():
    found = []
    for folder in ("agents", "generation", "evaluation", "training", "clinisynth"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            name = str(path.relative_to(ROOT))
            if name in OWN_RENAMES:
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Call) and getattr(node.func, "attr", None) in ("rename", "replace") and (
                        isinstance(node.func.value, ast.Name) and node.func.value.id == "os"
                        or node.func.attr == "rename"):
                    found.append(f"{name}:{node.lineno}")
    assert found == [], f"write through clinisynth.generation.files instead: {found}"
