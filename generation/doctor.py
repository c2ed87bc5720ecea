"""Repair a generated dataset (``clinisynth doctor DIR --repair``): what :func:`~clinisynth.generation.health.inspect_dataset`
finds, fixed without touching an accepted image and without deleting anything.

Every file taken out (a damaged or orphan PNG, a temporary file, a damaged counters file, intent, marker or
manifest) is moved, byte for byte, to ``DIR/_quarantine/<UTC time>/<its path>.quarantined`` (the suffix keeps
image loaders away from it); every line taken out of ``metadata.jsonl`` or the seed reservations is kept in a
file there. Then ``metadata.jsonl`` holds only records whose PNG is in place, ``manifest.csv`` is rebuilt from it
when it differed, and the counters are at least the highest number ever given (so none is given again).
It runs under the dataset lock and refuses while a run is writing into the folder. Standard library only.
"""

from __future__ import annotations

import csv
import io
import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path

from clinisynth.generation import owner
from clinisynth.generation.files import move_durably, write_atomically
from clinisynth.generation.health import QUARANTINE_DIR, _INDEXED, _lines, inspect_dataset, read_counters
from clinisynth.generation.storage import (COUNTERS_NAME, MANIFEST_COLUMNS, MANIFEST_NAME, METADATA_NAME, PENDING_NAME,
                                           RUNS_DIR, SEEDS_NAME, TRACE_NAME, OrderedStorage, StorageError,
                                           _alive, dataset_lock)

QUARANTINE_SUFFIX = ".quarantined"


def running_writer(root: Path) -> str | None:
    """A run whose trace says it is running and whose process (on this host) is alive, as ``run (process)``."""
    runs = Path(root) / RUNS_DIR
    if not runs.is_dir():
        return None
    for trace_path in sorted(runs.glob(f"*/{TRACE_NAME}")):
        try:
            trace = json.loads(trace_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            continue
        process = trace.get("process") or {} if isinstance(trace, dict) else {}
        if trace.get("status") == "running" and process.get("host") == socket.gethostname() \
                and _alive(process.get("pid")):
            return f"{trace_path.parent.name} (process {process['pid']})"
    return None


class _Quarantine:
    """``DIR/_quarantine/<time>/``, made on first use."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.folder = root / QUARANTINE_DIR / datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        self.actions: list[str] = []

    def move(self, path: Path, why: str) -> None:
        target = self.folder / (path.relative_to(self.root).as_posix() + QUARANTINE_SUFFIX)
        move_durably(path, target)  # same file system: the bytes are kept as they were
        self.actions.append(f"moved {path.relative_to(self.root)} to {target.relative_to(self.root)} ({why})")

    def keep_lines(self, name: str, lines: list[bytes], why: str) -> None:
        target = self.folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "ab") as handle:
            handle.write(b"".join(line if line.endswith(b"\n") else line + b"\n" for line in lines))
        self.actions.append(f"kept {len(lines)} line(s) taken out ({why}) in {target.relative_to(self.root)}")


def _kept_lines(path: Path, keep) -> tuple[list[bytes], list[bytes]]:
    """``path``'s lines split by ``keep(raw) -> bool``; a half last line is never kept."""
    lines, rest = _lines(path)
    kept = [raw + b"\n" for _, raw in lines if keep(raw)]
    dropped = [raw for _, raw in lines if not keep(raw)] + ([rest] if rest else [])
    return kept, dropped


def _metadata_record(raw: bytes) -> dict | None:
    try:
        record = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("file_name"), str) else None


def repair_dataset(root: Path) -> list[str]:
    """Repair the generated dataset ``root`` (see the module docstring) and say what was done, one line each.

    Raises:
        StorageError: ``root`` is no folder, is another command's dataset, or a run is writing into it.
    """
    root = Path(root).absolute()
    if not root.is_dir():
        raise StorageError(f"{root} is not a folder; give the output dir of `clinisynth generate`")
    try:
        kind = owner.dataset_kind(root)
    except owner.OwnerError:
        kind = None  # a damaged marker: repaired below
    if kind == "prepare":
        raise StorageError(f"{root} is a dataset made by `clinisynth prepare`; doctor repairs generated datasets")
    writer = running_writer(root)
    if writer:
        raise StorageError(f"run {writer} is writing into {root}; repair it once that run has stopped")
    quarantine = _Quarantine(root)
    storage = OrderedStorage(root)
    with dataset_lock(root, create=False):  # a folder no writer of ours has been in gets no lock file
        _repair_marker(root, quarantine)
        _repair_metadata(root, quarantine)
        pending = root / PENDING_NAME
        if pending.is_file():
            try:
                storage._finish_pending()  # we hold the lock
                quarantine.actions.append(f"finished the store a killed writer left ({PENDING_NAME})")
            except StorageError:
                quarantine.move(pending, "damaged store intent")
        problems = inspect_dataset(root)
        for problem in problems:
            if problem.kind in ("zero_png", "truncated_png", "orphan_png", "temp_file") and problem.path.exists():
                quarantine.move(problem.path, problem.detail)
        removed = _drop_orphan_rows(root, quarantine)
        _repair_manifest(root, quarantine)
        _repair_counters(root, quarantine, extra=removed)
        _repair_seeds(root, quarantine)
    return quarantine.actions


def _repair_marker(root: Path, quarantine: _Quarantine) -> None:
    try:
        owner.read_kind(root)
    except owner.OwnerError:
        quarantine.move(root / owner.MARKER_NAME, "damaged owner marker")
    if owner.read_kind(root) is None and ((root / METADATA_NAME).exists() or (root / COUNTERS_NAME).exists()):
        owner.claim(root, kind="generate", made_by="clinisynth doctor")
        quarantine.actions.append(f"wrote the owner marker {owner.MARKER_NAME} (kind generate)")


def _repair_metadata(root: Path, quarantine: _Quarantine) -> None:
    path = root / METADATA_NAME
    if not path.is_file():
        return
    kept, dropped = _kept_lines(path, lambda raw: not raw.strip() or _metadata_record(raw) is not None)
    if dropped:
        quarantine.keep_lines(METADATA_NAME + ".bad-lines", dropped, f"not metadata records, from {METADATA_NAME}")
        write_atomically(path, b"".join(line for line in kept if line.strip()))


def _drop_orphan_rows(root: Path, quarantine: _Quarantine) -> list[str]:
    """Take out the metadata rows whose PNG is missing; their file names (their numbers stay used)."""
    path = root / METADATA_NAME
    if not path.is_file():
        return []
    removed: list[str] = []

    def present(raw: bytes) -> bool:
        record = _metadata_record(raw)
        if record is not None and not (root / record["file_name"]).is_file():
            removed.append(record["file_name"])
            return False
        return True

    kept, dropped = _kept_lines(path, present)
    if dropped:
        quarantine.keep_lines("orphan_rows.jsonl", dropped, "rows whose PNG is missing")
        write_atomically(path, b"".join(kept))
    return removed


def _records(root: Path) -> list[dict]:
    path = root / METADATA_NAME
    if not path.is_file():
        return []
    return [record for _, raw in _lines(path)[0] if (record := _metadata_record(raw)) is not None]


def _repair_manifest(root: Path, quarantine: _Quarantine) -> None:
    path = root / MANIFEST_NAME
    records = _records(root)
    if not path.exists() and not records:
        return
    from clinisynth.generation.storage import _csv_value

    columns = list(MANIFEST_COLUMNS)
    if path.is_file() and path.stat().st_size:
        with open(path, "rb") as handle:
            header = next(csv.reader(io.StringIO(handle.readline().decode("utf-8", errors="replace"))), [])
        if header and "img_savename" in header and set(header) <= set(MANIFEST_COLUMNS):
            columns = header  # ours, maybe from an older version: keep its columns
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for record in records:
        row = {"img_savename": record["file_name"], **record}
        writer.writerow({column: _csv_value(row.get(column)) for column in columns})
    rebuilt = text.getvalue().encode("utf-8")
    if path.is_file() and path.read_bytes() == rebuilt:
        return
    if path.is_file():
        quarantine.move(path, "out of step with metadata.jsonl, or not ordered storage's manifest")
    write_atomically(path, rebuilt)
    quarantine.actions.append(f"rebuilt {MANIFEST_NAME} from {METADATA_NAME} ({len(records)} rows)")


def _repair_counters(root: Path, quarantine: _Quarantine, *, extra: list[str]) -> None:
    path = root / COUNTERS_NAME
    counters = read_counters(path) if path.is_file() else {}
    if counters is None:
        quarantine.move(path, "damaged counters file")
        counters = {}
        # Numbers of the images quarantined earlier still count: they were given once.
        for old in sorted((root / QUARANTINE_DIR).rglob(f"{COUNTERS_NAME}{QUARANTINE_SUFFIX}")):
            counters = {**counters, **{k: max(v, counters.get(k, 0)) for k, v in (read_counters(old) or {}).items()}}
    names = [record["file_name"] for record in _records(root)] + extra
    names += [png.relative_to(root).as_posix() for png in root.glob("*/*/*.png")]
    names += [png.relative_to(root / QUARANTINE_DIR).as_posix().split("/", 1)[-1].removesuffix(QUARANTINE_SUFFIX)
              for png in (root / QUARANTINE_DIR).glob(f"*/*/*/*.png{QUARANTINE_SUFFIX}")]
    changed = dict(counters)
    for file_name in names:
        parts = file_name.split("/")
        match = _INDEXED.match(parts[-1]) if len(parts) == 3 else None
        if match and match.group("label") == parts[1]:
            key = f"{parts[0]}/{parts[1]}"
            changed[key] = max(changed.get(key, 0), int(match.group("index")))
    if changed != counters or not path.is_file() and changed:
        write_atomically(path, json.dumps({"version": 1, "counters": changed}, indent=2) + "\n")
        raised = {key: value for key, value in changed.items() if counters.get(key) != value}
        quarantine.actions.append(f"set counters {', '.join(f'{k}={v}' for k, v in sorted(raised.items()))} "
                                  "(the highest number given)")


def _repair_seeds(root: Path, quarantine: _Quarantine) -> None:
    path = root / SEEDS_NAME
    if not path.is_file():
        return

    def reservation(raw: bytes) -> bool:
        try:
            entry = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return False
        return isinstance(entry, dict) and all(isinstance(entry.get(k), int) for k in ("base", "n", "rounds", "best_of"))

    kept, dropped = _kept_lines(path, reservation)
    if dropped:
        quarantine.keep_lines(SEEDS_NAME + ".bad-lines", dropped, "not seed reservations")
        write_atomically(path, b"".join(kept))


__all__ = ["QUARANTINE_SUFFIX", "repair_dataset", "running_writer"]
