"""The health check of a generated dataset: cheap (stat, sizes, PNG header and trailer, the JSON lines), no
image decoded.

:func:`inspect_dataset` lists every problem of ``OUT``; the *blocking* ones (a damaged PNG, metadata line,
manifest header, counters, pending intent, seed reservations or owner marker) make :func:`check_dataset` refuse
the folder before any generation work, naming the file and pointing at ``clinisynth doctor``. The others
(orphans, temporary files, counter drift, a manifest out of step with the metadata) do not stop a run;
``clinisynth doctor DIR --repair`` fixes both kinds (:mod:`clinisynth.generation.doctor`).

The check runs under the dataset lock when the folder has one, so a concurrent writer's half-appended line is
never mistaken for damage; it writes nothing (not even the lock file). Standard library only.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from clinisynth.generation import owner
from clinisynth.generation.files import TMP_SUFFIX
from clinisynth.generation.storage import (COUNTERS_NAME, MANIFEST_COLUMNS, MANIFEST_NAME, METADATA_NAME, PENDING_NAME,
                                           RUNS_DIR, SEEDS_NAME, StorageError, dataset_lock)

QUARANTINE_DIR = "_quarantine"
#: Top-level folders of a generated dataset that are not ``<modality>`` folders.
NOT_MODALITY_DIRS = frozenset({RUNS_DIR, "campaign", QUARANTINE_DIR})
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: A PNG ends with an empty IEND chunk: length 0, type, CRC.
PNG_TRAILER = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_INDEXED = re.compile(r"^(?P<label>[a-z0-9_]+)_(?P<index>\d+)\.png$")
_TEMPORARY = re.compile(rf"^\..+(?:{re.escape(TMP_SUFFIX)}|\.tmp-.+|\.old-.+)$|^\.clinisynth-write-check-")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset.

    Args:
        kind: ``zero_png``, ``truncated_png``, ``bad_line``, ``half_line``, ``foreign_header``, ``damaged_counters``,
            ``damaged_pending``, ``damaged_seeds``, ``damaged_marker`` (blocking), or ``orphan_png``, ``orphan_row``,
            ``temp_file``, ``counter_drift``, ``manifest_drift``, ``seeds_half_line``.
        path: the file (absolute).
        detail: what is wrong, for a person.
        blocking: whether it refuses a run (see the module docstring).
        line: the 1-based line of ``path`` it concerns, when it is one line.
    """

    kind: str
    path: Path
    detail: str
    blocking: bool
    line: int | None = None

    def describe(self, root: Path) -> str:
        where = self.path.relative_to(root) if self.path.is_relative_to(root) else self.path
        return f"{where}{f' line {self.line}' if self.line else ''}: {self.detail}"


def png_problem(path: Path | str) -> tuple[str, str] | None:
    """``(kind, detail)`` when ``path`` is empty, not a PNG or cut short (signature, IHDR and IEND checked)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
        try:  # two small unbuffered reads: the file is never read whole
            size = os.fstat(descriptor).st_size
            if size == 0:
                return "zero_png", "zero-byte PNG"
            head = os.pread(descriptor, 16, 0)
            tail = os.pread(descriptor, len(PNG_TRAILER), max(0, size - len(PNG_TRAILER)))
        finally:
            os.close(descriptor)
    except OSError as error:
        return "truncated_png", f"unreadable PNG ({error.strerror})"
    if head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        return "truncated_png", f"not a PNG ({size} bytes without the PNG signature and header)"
    if tail != PNG_TRAILER:
        return "truncated_png", f"truncated PNG ({size} bytes, no IEND trailer)"
    return None


def class_pngs(root: Path) -> list[Path]:
    """Every ``<modality>/<label>/*.png`` of the dataset (what the duplicate check opens), sorted."""
    return [Path(path) for path in _class_png_paths(root)]


def _class_png_paths(root: Path) -> list[str]:
    # Plain strings: for thousands of files, Path objects and their sorting cost more than the checks.
    found = []
    for modality in os.scandir(root):
        if not modality.is_dir() or modality.name in NOT_MODALITY_DIRS or modality.name.startswith((".", "_")):
            continue
        for label in os.scandir(modality.path):
            if label.is_dir():
                found += [entry.path for entry in os.scandir(label.path)
                          if entry.name.endswith(".png") and entry.is_file()]
    return sorted(found)


def _lines(path: Path) -> tuple[list[tuple[int, bytes]], bytes]:
    """The complete lines of ``path`` with their numbers, and what follows the last newline (a half line)."""
    data = path.read_bytes()
    cut = data.rfind(b"\n") + 1
    return list(enumerate(data[:cut].splitlines(), start=1)), data[cut:]


def read_metadata_lines(path: Path) -> tuple[list[tuple[int, dict]], list[Problem]]:
    """The valid records of ``metadata.jsonl`` (with their line numbers) and a problem per bad or half line."""
    records, problems = [], []
    if not path.is_file():
        return records, problems
    lines, rest = _lines(path)
    for number, raw in lines:
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as error:
            problems.append(Problem("bad_line", path, f"not JSON ({error})", True, number))
            continue
        if not isinstance(record, dict) or not isinstance(record.get("file_name"), str):
            problems.append(Problem("bad_line", path, "not a metadata record (a JSON object with file_name)", True,
                                    number))
            continue
        records.append((number, record))
    if rest:
        problems.append(Problem("half_line", path, f"half a line at the end ({len(rest)} bytes, no newline)", True,
                                len(lines) + 1))
    return records, problems


def manifest_header_problem(path: Path) -> Problem | None:
    """A manifest whose header is not ordered storage's (another tool's CSV, e.g. a prepared dataset's)."""
    with open(path, "rb") as handle:
        first = handle.readline()
    try:
        header = next(csv.reader(io.StringIO(first.decode("utf-8"))), [])
    except (UnicodeDecodeError, csv.Error):
        header = None
    if not header or "img_savename" not in header or not set(header) <= set(MANIFEST_COLUMNS):
        shown = ",".join(header[:6]) if header else repr(first[:60])
        return Problem("foreign_header", path, f"foreign header ({shown}); ordered storage writes "
                                               f"{','.join(MANIFEST_COLUMNS[:4])},...", True, 1)
    return None


def _manifest_names(path: Path) -> list[str]:
    data = path.read_bytes()
    rows = csv.DictReader(io.StringIO(data[: data.rfind(b"\n") + 1].decode("utf-8", errors="replace")))
    return [row.get("img_savename") or "" for row in rows]


def read_counters(path: Path) -> dict[str, int] | None:
    """The counters of ``path``; ``None`` when it is damaged."""
    try:
        counters = json.loads(path.read_text(encoding="utf-8"))["counters"]
        return {str(key): int(value) for key, value in counters.items()}
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        return None


def _pending_file_name(path: Path) -> str | None | bool:
    """The file name a pending intent names, ``None`` without one, ``False`` when it is damaged."""
    if not path.is_file():
        return None
    try:
        file_name = json.loads(path.read_text(encoding="utf-8"))["file_name"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return False
    return file_name if isinstance(file_name, str) else False


def _seed_problems(path: Path) -> list[Problem]:
    if not path.is_file():
        return []
    problems = []
    lines, rest = _lines(path)
    for number, raw in lines:
        try:
            entry = json.loads(raw)
            ok = isinstance(entry, dict) and all(isinstance(entry.get(key), int)
                                                 for key in ("base", "n", "rounds", "best_of"))
        except (ValueError, UnicodeDecodeError):
            ok = False
        if not ok:
            problems.append(Problem("damaged_seeds", path, "not a seed reservation", True, number))
    if rest:  # a reservation killed mid-append; the next reservation drops it
        problems.append(Problem("seeds_half_line", path, "half a reservation at the end", False, len(lines) + 1))
    return problems


def inspect_dataset(root: Path, *, blocking_only: bool = False) -> list[Problem]:
    """Every problem of the generated dataset ``root`` (empty for a healthy or missing folder); writes nothing.

    Args:
        blocking_only: look only for the problems that refuse a run (what the start-up check needs; the run
            folders are then not walked).

    Call it with the dataset lock held (:func:`~clinisynth.generation.storage.dataset_lock`) when writers may be
    running.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    problems: list[Problem] = []
    try:
        owner.read_kind(root)
    except owner.OwnerError as error:
        problems.append(Problem("damaged_marker", root / owner.MARKER_NAME, str(error).split(";")[0], True))
    pending = _pending_file_name(root / PENDING_NAME)
    if pending is False:
        problems.append(Problem("damaged_pending", root / PENDING_NAME, "damaged store intent", True))
    # A store killed half way (its intent is there) is finished by the next store: its half line is no damage.
    interrupted = isinstance(pending, str)

    metadata_path = root / METADATA_NAME
    records, metadata_problems = read_metadata_lines(metadata_path)
    problems += [p for p in metadata_problems if not (interrupted and p.kind == "half_line")]
    manifest_path = root / MANIFEST_NAME
    manifest_names: list[str] | None = None
    if manifest_path.is_file() and manifest_path.stat().st_size:
        header = manifest_header_problem(manifest_path)
        if header is not None:
            problems.append(header)
        else:
            data = manifest_path.read_bytes()
            if not data.endswith(b"\n") and not interrupted:
                problems.append(Problem("half_line", manifest_path, "half a row at the end (no newline)", True,
                                        data.count(b"\n") + 1))
            if not blocking_only:
                manifest_names = _manifest_names(manifest_path)

    counters_path = root / COUNTERS_NAME
    counters = read_counters(counters_path) if counters_path.is_file() else {}
    if counters is None:
        problems.append(Problem("damaged_counters", counters_path, "damaged counters file (not the JSON "
                                                                   '{"counters": {...}} storage writes)', True))
    problems += _seed_problems(root / SEEDS_NAME)

    png_paths = _class_png_paths(root)
    for png in png_paths:
        found = png_problem(png)
        if found is not None:
            problems.append(Problem(found[0], Path(png), found[1], True))

    if blocking_only:
        return problems
    # What does not stop a run.
    pngs = [Path(png) for png in png_paths]
    named = {record["file_name"] for _, record in records}
    for png in pngs:
        file_name = png.relative_to(root).as_posix()
        if file_name not in named and file_name != pending:
            problems.append(Problem("orphan_png", png, "PNG without a metadata.jsonl row", False))
    for number, record in records:
        if not (root / record["file_name"]).is_file():
            problems.append(Problem("orphan_row", metadata_path, f"row of {record['file_name']}, which is missing",
                                    False, number))
    if manifest_names is not None and sorted(set(manifest_names)) != sorted(named) and not interrupted:
        problems.append(Problem("manifest_drift", manifest_path, f"{len(manifest_names)} rows for {len(named)} "
                                                                 "metadata records (not the same images)", False))
    if counters is not None:
        highest: dict[str, int] = {}
        for file_name in [*named, *(png.relative_to(root).as_posix() for png in pngs)]:
            parts = file_name.split("/")
            match = _INDEXED.match(parts[-1]) if len(parts) == 3 else None
            if match and match.group("label") == parts[1]:
                key = f"{parts[0]}/{parts[1]}"
                highest[key] = max(highest.get(key, 0), int(match.group("index")))
        for key, value in sorted(highest.items()):
            if counters.get(key, 0) < value:
                problems.append(Problem("counter_drift", counters_path, f"counter {key} is {counters.get(key, 0)}, "
                                                                        f"below image number {value}", False))
    for folder, names, files in os.walk(root):
        here = Path(folder)
        if here.relative_to(root).parts[:1] == (QUARANTINE_DIR,):
            names[:] = []
            continue
        for name in [*files, *names]:
            if _TEMPORARY.match(name):
                problems.append(Problem("temp_file", here / name, "temporary file left by an interrupted write",
                                        False))
    return problems


def check_dataset(root: Path) -> None:
    """Refuse a damaged or foreign dataset before any generation work (cheap; writes nothing).

    Raises:
        StorageError: one line naming the first blocking problem's file and pointing at ``clinisynth doctor``.
    """
    root = Path(root)
    if not root.is_dir():
        return
    try:
        owner.check_owner(root, kind="generate")
    except owner.OwnerError as error:
        raise StorageError(str(error)) from None
    with dataset_lock(root, create=False):
        blocking = [problem for problem in inspect_dataset(root, blocking_only=True) if problem.blocking]
    if blocking:
        more = f" (and {len(blocking) - 1} more problem(s))" if len(blocking) > 1 else ""
        raise StorageError(f"output dir {root} is damaged: {blocking[0].describe(root)}{more}; nothing was generated. "
                           f"Run `clinisynth doctor {root}` to see every problem and `--repair` to fix them")


__all__ = ["QUARANTINE_DIR", "Problem", "check_dataset", "class_pngs", "dataset_lock", "inspect_dataset",
           "png_problem", "read_counters", "read_metadata_lines"]
