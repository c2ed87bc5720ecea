"""Ordered storage: images filed by modality and label with per-class counters that are never reused.

Layout (DESIGN.md), loadable with ``datasets.load_dataset("imagefolder", data_dir=OUT)``::

    OUT/<modality>/<label>/<label>_000001.png
    OUT/metadata.jsonl          one JSON object per image, ``file_name`` relative to OUT
    OUT/manifest.csv            the same images as CSV rows (``img_savename``, ``prompt``, ``label``, ...)
    OUT/runs/<run_id>/trace.json

Several processes may write into one OUT at once: every store runs under an exclusive ``fcntl.flock`` on
``OUT/.clinisynth.lock``, files are written to a temporary name and renamed into place, and the counters
file remembers every number handed out, so a deleted image's number is not given again.

A store is crash-safe: it first writes its intent (``OUT/.clinisynth_pending.json``: the record it is about
to add), then the PNG, then the ``metadata.jsonl`` line and the ``manifest.csv`` row. The next store (of any
process) finishes an intent a killed writer left: a PNG that made it gets its metadata line and manifest row,
exactly once; a PNG that did not only leaves its number unused. ``store(..., unique=...)`` makes a store
idempotent (a resumed run that files the same slot again gets the image already filed); ``store(..., admit=...)``
lets the caller refuse the image after seeing, under the lock, every record stored so far (by any process).

The first store or seed reservation writes the owner marker (:mod:`clinisynth.generation.owner`): a prepared
dataset is refused. :meth:`OrderedStorage.reserve_seeds` gives each run a base seed whose seeds no other run in
the dataset draws (:mod:`clinisynth.generation.seeds`), recorded in ``OUT/.clinisynth_seeds.jsonl``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import socket
import tempfile
import warnings
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from clinisynth.generation import owner, seeds
from clinisynth.generation.files import OutputDirError, check_writable_dir, write_atomically

LOCK_NAME = ".clinisynth.lock"
COUNTERS_NAME = ".clinisynth_counters.json"
PENDING_NAME = ".clinisynth_pending.json"
SEEDS_NAME = ".clinisynth_seeds.jsonl"
METADATA_NAME = "metadata.jsonl"
MANIFEST_NAME = "manifest.csv"
RUNS_DIR = "runs"
TRACE_NAME = "trace.json"
INDEX_DIGITS = 6

#: Columns of a new manifest.csv; metadata keys outside these stay in metadata.jsonl only.
MANIFEST_COLUMNS = (
    "img_savename",
    "file_name",
    "prompt",
    "negative_prompt",
    "label",
    "modality",
    "seed",
    "steps",
    "guidance",
    "run_id",
    "model_profile",
    "model_text_encoder",
    "model_generator",
    "adapters",
    "created_at",
)

#: Keys :meth:`OrderedStorage.list_runs` copies from a trace into its summary when present.
TRACE_SUMMARY_KEYS = ("status", "request", "label", "modality", "profile", "n_images", "started_at", "finished_at")

_SAFE_NAME = re.compile(r"^[a-z0-9]+(?:_[a-z0-9]+)*$")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class StorageError(ValueError):
    """The output directory cannot be used, or a name, image or metadata cannot be stored."""


@dataclass(frozen=True)
class SeedReservation:
    """The base seed a run draws from, reserved in the dataset (see :meth:`OrderedStorage.reserve_seeds`).

    Args:
        run_id: the run.
        base: its base seed.
        requested: the seed it was given (``None``: drawn at random).
        note: why ``base`` differs from ``requested`` (``None`` when it does not).
    """

    run_id: str
    base: int
    requested: int | None
    note: str | None = None


@dataclass(frozen=True)
class StoredImage:
    """Where :meth:`OrderedStorage.store` put an image.

    Args:
        path: absolute path of the PNG.
        file_name: path relative to the storage root, as written in ``metadata.jsonl``.
        index: the per-class counter value in the file name.
    """

    path: Path
    file_name: str
    index: int


def check_output_dir(root: Path) -> Path:
    """Check that ``root`` is, or can become, a writable directory, without creating it
    (:func:`~clinisynth.generation.files.check_writable_dir`).

    Call it before any work so a bad output dir fails with no partial output.

    Args:
        root: the output directory.

    Returns:
        ``root`` made absolute.

    Raises:
        StorageError: ``root`` is empty, (or a parent) is a file, a link that leads nowhere, or the nearest existing
            folder is not writable.
    """
    try:
        return check_writable_dir(root, option="--out")
    except OutputDirError as error:
        raise StorageError(str(error)) from None


@contextlib.contextmanager
def dataset_lock(root: Path, *, create: bool = True) -> Iterator[None]:
    """Hold the exclusive lock of the dataset ``root`` (``root/.clinisynth.lock``), as every store does.

    Args:
        create: create the lock file when missing. ``False`` (readers such as the health check): a folder without
            one has never had a writer of ours, and is not locked; nothing is created.
    """
    import fcntl

    try:
        descriptor = os.open(Path(root) / LOCK_NAME, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
    except FileNotFoundError:
        if create:
            raise
        yield
        return
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def check_name(value: str, *, what: str) -> str:
    """``value`` if it is a safe folder name (snake_case: lower-case letters, digits, single underscores).

    Raises:
        StorageError: naming ``what`` (``label``, ``modality``) and the bad value.
    """
    if not isinstance(value, str) or not _SAFE_NAME.fullmatch(value) or len(value) > 64:
        raise StorageError(
            f"{what} {value!r} is not a safe folder name: use snake_case (a-z, 0-9, single underscores, "
            "at most 64 characters), e.g. 'pleural_effusion'"
        )
    return value


def run_state(trace: dict) -> str:
    """A run's state from its trace: its status, or ``interrupted`` for a run marked running whose process
    (on this host) is gone."""
    status = trace.get("status", "?")
    process = trace.get("process") or {}
    if status == "running" and process.get("host") == socket.gethostname() and not _alive(process.get("pid")):
        return "interrupted"
    return status


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_run_id(run_id: str) -> str:
    """``run_id`` if it is a safe folder name (letters, digits, ``.``, ``_``, ``-``; no leading dot)."""
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id) or ".." in run_id:
        raise StorageError(
            f"run id {run_id!r} is not a safe folder name: use letters, digits, '.', '_' or '-' (at most 128), "
            "not starting with '.'"
        )
    return run_id


def trace_bytes(run_id: str, trace: dict) -> bytes:
    """``trace.json``'s content for run ``run_id`` (what :meth:`OrderedStorage.write_trace` writes).

    Raises:
        StorageError: a trace that is not a dict or not JSON-serialisable.
    """
    if not isinstance(trace, dict):
        raise StorageError(f"trace must be a dict, got {type(trace).__name__}")
    return (_dumps(trace, what=f"trace of run {run_id!r}", indent=2) + "\n").encode("utf-8")


def _json_default(value: Any) -> Any:
    # The few non-JSON types traces and metadata carry in practice; anything else is an error, not a repr.
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _dumps(value: Any, *, what: str, indent: int | None = None) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False, default=_json_default, indent=indent)
    except (TypeError, ValueError) as error:
        raise StorageError(
            f"{what} cannot be written as JSON: {error} (NaN/inf and custom objects are refused)"
        ) from error


def _append_durably(path: Path, data: bytes) -> None:
    """Append ``data`` (ending in a newline) and fsync; first drop a partial last line a crash left behind."""
    with open(path, "a+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size:
            handle.seek(size - 1)
            if handle.read(1) != b"\n":
                handle.seek(0)
                keep = handle.read().rfind(b"\n") + 1
                handle.truncate(keep)
                warnings.warn(f"{path}: dropped a partial last line left by an interrupted write", RuntimeWarning,
                              stacklevel=3)
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _complete_json_lines(path: Path) -> list[dict]:
    """The records of a JSON-lines file, without a partial last line an interrupted append left."""
    if not path.exists():
        return []
    data = path.read_bytes()
    return [json.loads(line) for line in data[: data.rfind(b"\n") + 1].decode("utf-8").splitlines() if line.strip()]


def _manifest_names(path: Path) -> set[str]:
    """``img_savename`` of every complete row of ``manifest.csv``."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    rows = csv.DictReader(io.StringIO(data[: data.rfind(b"\n") + 1].decode("utf-8")))
    return {row.get("img_savename") or "" for row in rows}


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or isinstance(value, (int, float)):
        return json.dumps(value)
    return _dumps(value, what="manifest value")


class OrderedStorage:
    """Files images under ``root`` (see the module docstring); safe across threads and processes.

    Nothing is created until the first :meth:`store` or :meth:`write_trace`.

    Args:
        root: the output directory; checked with :func:`check_output_dir`.
        made_by: the command named in the owner marker the first store writes.
    """

    def __init__(self, root: Path, *, made_by: str = "clinisynth generate") -> None:
        self.root = check_output_dir(root)
        self.made_by = made_by
        # metadata.jsonl records read so far (a cache for ``unique`` look-ups; refreshed under the lock).
        self._records: list[dict] = []
        self._records_offset = 0
        self._records_inode = None  # a rewritten metadata.jsonl (update_metadata) is a new file: read it again

    @property
    def metadata_path(self) -> Path:
        return self.root / METADATA_NAME

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST_NAME

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with dataset_lock(self.root, create=True):
            yield

    def _read_counters(self) -> dict[str, int]:
        path = self.root / COUNTERS_NAME
        if not path.exists():
            return {}
        try:
            counters = json.loads(path.read_text())["counters"]
            return {str(key): int(value) for key, value in counters.items()}
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise StorageError(
                f"counters file {path} is damaged ({error}); restore it from a backup. Deleting it would let "
                "numbers of deleted images be given out again"
            ) from error

    def _highest_on_disk(self, class_dir: Path, label: str) -> int:
        pattern = re.compile(rf"{re.escape(label)}_(\d+)\.png")
        highest = 0
        if class_dir.is_dir():
            for entry in os.scandir(class_dir):
                match = pattern.fullmatch(entry.name)
                if match:
                    highest = max(highest, int(match.group(1)))
        return highest

    def next_index(self, *, modality: str, label: str) -> int:
        """The number the next image of this class would get (a snapshot; :meth:`store` decides under the lock)."""
        check_name(modality, what="modality")
        check_name(label, what="label")
        key = f"{modality}/{label}"
        return max(self._read_counters().get(key, 0), self._highest_on_disk(self.root / modality / label, label)) + 1

    def store(self, *, image, modality: str, label: str, metadata: dict, unique: dict | None = None,
              admit: Callable[[list[dict]], str | None] | None = None) -> StoredImage | None:
        """Write ``image`` as ``<modality>/<label>/<label>_NNNNNN.png`` and record it.

        Args:
            image: a ``PIL.Image.Image``.
            modality: snake_case modality folder, e.g. ``chest_xray``.
            label: snake_case class folder, e.g. ``pleural_effusion``.
            metadata: JSON-serialisable fields for ``metadata.jsonl`` (prompt, seed, steps, guidance, model ids,
                scores, run_id, ...); must not contain ``file_name``; ``label`` / ``modality`` must match if given.
            unique: metadata values (e.g. ``{"run_id": ..., "slot": 3}``, which ``metadata`` must hold too) that
                name this image: when a stored record already has them, that image is returned and nothing is
                written.
            admit: called under the lock, before a number is handed out, with every complete record stored so far
                (by any process); a returned reason refuses the image: nothing is written and ``None`` returned.
                It sees what other processes accepted since the caller last looked (duplicates across processes).

        Raises:
            StorageError: bad names or metadata, or an image that cannot be encoded; nothing is written then.
        """
        from PIL import Image

        check_name(modality, what="modality")
        check_name(label, what="label")
        if not isinstance(image, Image.Image):
            raise StorageError(f"image must be a PIL.Image.Image, got {type(image).__name__}")
        if not isinstance(metadata, dict):
            raise StorageError(f"metadata must be a dict, got {type(metadata).__name__}")
        if "file_name" in metadata or "img_savename" in metadata:
            raise StorageError("metadata must not set 'file_name' or 'img_savename': storage assigns them")
        for key, value in (("label", label), ("modality", modality)):
            if key in metadata and metadata[key] != value:
                raise StorageError(f"metadata {key} {metadata[key]!r} differs from the {key} argument {value!r}")
        if unique is not None and any(metadata.get(key) != value for key, value in unique.items()):
            raise StorageError(f"metadata must hold the unique values {unique!r}")
        # Everything that can fail is checked before a number is handed out.
        _dumps(metadata, what="metadata")
        buffer = io.BytesIO()
        try:
            image.save(buffer, format="PNG")
        except (OSError, ValueError) as error:
            raise StorageError(f"image cannot be encoded as PNG: {error}") from error
        png = buffer.getvalue()

        with self._locked():
            self._finish_pending()
            if unique is not None:
                existing = self._find(unique)
                if existing is not None:
                    return StoredImage(path=self.root / existing["file_name"], file_name=existing["file_name"],
                                       index=int(Path(existing["file_name"]).stem.rsplit("_", 1)[1]))
            if admit is not None and admit(self.records()) is not None:
                return None
            owner.claim(self.root, kind="generate", made_by=self.made_by)
            class_dir = self.root / modality / label
            class_dir.mkdir(parents=True, exist_ok=True)
            counters = self._read_counters()
            key = f"{modality}/{label}"
            index = max(counters.get(key, 0), self._highest_on_disk(class_dir, label)) + 1
            # Reserve the number before writing the image: a crash from here on skips it, never reuses it.
            counters[key] = index
            write_atomically(self.root / COUNTERS_NAME, (_dumps({"version": 1, "counters": counters},
                                                                  what="counters", indent=2) + "\n").encode())
            name = f"{label}_{index:0{INDEX_DIGITS}d}.png"
            path = class_dir / name
            if path.exists():  # cannot happen while every writer takes the lock; never overwrite regardless
                raise StorageError(f"{path} already exists; another tool writes into {self.root} without the lock")
            file_name = f"{modality}/{label}/{name}"
            record = {"file_name": file_name, **metadata, "label": label, "modality": modality}
            record.setdefault("created_at", datetime.now(timezone.utc).isoformat(timespec="milliseconds"))
            pending = self.root / PENDING_NAME
            write_atomically(pending, _dumps(record, what="metadata"))  # the intent, for a crash from here on
            write_atomically(path, png)
            _append_durably(self.metadata_path, (_dumps(record, what="metadata") + "\n").encode())
            self._append_manifest_row({"img_savename": file_name, **record})
            pending.unlink()
        return StoredImage(path=path, file_name=file_name, index=index)

    def recover(self) -> None:
        """Finish a store that a killed writer left half done (see the module docstring); cheap when none."""
        if (self.root / PENDING_NAME).exists():
            with self._locked():
                self._finish_pending()

    def reserve_seeds(self, *, run_id: str, seed: int | None, n_images: int, max_rounds: int, best_of: int,
                      keep: bool = False) -> SeedReservation:
        """Reserve the seeds of run ``run_id`` under the dataset lock, so that no two runs draw one seed.

        The rule (:mod:`clinisynth.generation.seeds`): ``seed=None`` draws a fresh random base; a given seed is
        kept when no run in the dataset drew any of the seeds it leads to, else the run moves to the first base
        above it that is free (it continues with unused slots; the reservation's ``note`` says so). Seeds of
        images stored before reservations existed count as taken. A run already reserved gets its reservation
        back (a resumed run keeps its seeds).

        Args:
            keep: take ``seed`` as it is, free or not (a run resumed from a checkpoint made before reservations,
                or a campaign slot seed: see ``run_generation(exact_seed=...)``).

        Returns:
            the :class:`SeedReservation`, also appended to ``OUT/.clinisynth_seeds.jsonl``.
        """
        check_run_id(run_id)
        with self._locked():
            owner.claim(self.root, kind="generate", made_by=self.made_by)
            reservations = self._read_reservations()
            for entry in reservations:
                if entry["run_id"] == run_id:
                    return SeedReservation(run_id=run_id, base=entry["base"], requested=entry.get("requested"),
                                           note=entry.get("note"))
            reserved_runs = {entry["run_id"] for entry in reservations}
            taken = [seeds.Footprint(entry["base"], entry["n"], entry["rounds"], entry["best_of"])
                     for entry in reservations]
            taken += [seeds.Footprint(record["seed"], 1) for record in self.records()
                      if record.get("run_id") not in reserved_runs and isinstance(record.get("seed"), int)]
            wanted = seeds.Footprint(0 if seed is None else seed, n_images, max_rounds, best_of)
            note = None
            if seed is None:
                base = seeds.fresh_base(wanted, taken)
            elif keep:
                base = seed
            else:
                base = seeds.first_free_base(wanted, taken)
                if base != seed:
                    note = (f"seeds from {seed} were already drawn by earlier runs in {self.root}; "
                            f"this run continues with the unused ones from base seed {base}")
            entry = {"run_id": run_id, "base": base, "requested": seed, "n": n_images, "rounds": max_rounds,
                     "best_of": best_of, "at": datetime.now(timezone.utc).isoformat(timespec="milliseconds")}
            if note:
                entry["note"] = note
            _append_durably(self.root / SEEDS_NAME, (_dumps(entry, what="seed reservation") + "\n").encode())
        return SeedReservation(run_id=run_id, base=base, requested=seed, note=note)

    def _read_reservations(self) -> list[dict]:
        path = self.root / SEEDS_NAME
        try:
            entries = _complete_json_lines(path)
            for entry in entries:
                for key in ("base", "n", "rounds", "best_of"):
                    if not isinstance(entry[key], int):
                        raise TypeError(f"{key} is not an integer")
        except (ValueError, KeyError, TypeError) as error:
            raise StorageError(f"seed reservations {path} are damaged ({error}); run `clinisynth doctor "
                               f"{self.root}` to see and repair them") from error
        return entries

    def _finish_pending(self) -> None:
        """Complete the store a killed writer left half done (call under the lock)."""
        pending = self.root / PENDING_NAME
        if not pending.exists():
            return
        try:
            record = json.loads(pending.read_text(encoding="utf-8"))
            file_name = record["file_name"]
        except (ValueError, KeyError, TypeError) as error:
            raise StorageError(f"{pending} is damaged ({error}); check the last image filed and delete it") from error
        if (self.root / file_name).is_file():
            if not any(r.get("file_name") == file_name for r in _complete_json_lines(self.metadata_path)):
                _append_durably(self.metadata_path, (_dumps(record, what="metadata") + "\n").encode())
            if file_name not in _manifest_names(self.manifest_path):
                self._append_manifest_row({"img_savename": file_name, **record})
        pending.unlink()

    def records(self) -> list[dict]:
        """Every complete record of ``metadata.jsonl``, read incrementally (only what was appended since the last
        call is read); under the lock it is everything stored so far, by any process. Do not modify the list."""
        path = self.metadata_path
        stat = path.stat() if path.exists() else None
        size = stat.st_size if stat else 0
        inode = stat.st_ino if stat else None
        # The file was cut (a partial last line dropped) or replaced (update_metadata): read it again.
        if size < self._records_offset or inode != self._records_inode:
            self._records, self._records_offset, self._records_inode = [], 0, inode
        if size > self._records_offset:
            with open(path, "rb") as handle:
                handle.seek(self._records_offset)
                data = handle.read()
            complete = data[: data.rfind(b"\n") + 1]
            self._records += [json.loads(line) for line in complete.decode("utf-8").splitlines() if line.strip()]
            self._records_offset += len(complete)
        return self._records

    def _find(self, unique: dict) -> dict | None:
        """The stored record whose values match ``unique`` (call under the lock)."""
        for record in reversed(self.records()):
            if all(record.get(key) == value for key, value in unique.items()):
                return record
        return None

    def _append_manifest_row(self, row: dict) -> None:
        path = self.manifest_path
        columns = list(MANIFEST_COLUMNS)
        new_file = not path.exists() or path.stat().st_size == 0
        if not new_file:
            # Keep the header the file already has (it may come from an older version).
            with open(path, newline="", encoding="utf-8") as handle:
                columns = next(csv.reader(handle), columns)
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        if new_file:
            writer.writeheader()
        writer.writerow({column: _csv_value(row.get(column)) for column in columns})
        _append_durably(path, text.getvalue().encode("utf-8"))

    def read_metadata(self) -> list[dict]:
        """Every record of ``metadata.jsonl``, in the order stored."""
        if not self.metadata_path.exists():
            return []
        with open(self.metadata_path, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]

    def append_record(self, name: str, record: dict) -> None:
        """Append ``record`` as one fsynced JSON line to ``root/name`` (a log beside the dataset, e.g. reviews),
        under the storage lock.

        Raises:
            StorageError: ``name`` is not a plain ``*.jsonl`` file name, or ``record`` is not JSON-serialisable.
        """
        if Path(name).name != name or not name.endswith(".jsonl") or name == METADATA_NAME:
            raise StorageError(f"{name!r} is not a log file name of the output dir (NAME.jsonl, not metadata.jsonl)")
        line = (_dumps(record, what=f"a record of {name}") + "\n").encode("utf-8")
        with self._locked():
            _append_durably(self.root / name, line)

    def read_records(self, name: str) -> list[dict]:
        """The complete records of the JSON-lines file ``root/name`` (a partial last line a crash left is skipped)."""
        return _complete_json_lines(self.root / name)

    def update_metadata(self, file_name: str, fields: dict[str, Any]) -> dict:
        """Set ``fields`` on the ``metadata.jsonl`` record of ``file_name`` (e.g. a reviewer's decision column).

        The file is rewritten whole under the storage lock, to a temporary name renamed into place, so a reader
        sees the old or the new file and a concurrent store is neither lost nor duplicated.

        Returns:
            the updated record.

        Raises:
            StorageError: no record has that ``file_name``, or a field would replace ``file_name``.
        """
        if "file_name" in fields:
            raise StorageError("file_name cannot be changed by a metadata update")
        with self._locked():
            self._finish_pending()
            records = _complete_json_lines(self.metadata_path)
            matches = [record for record in records if record.get("file_name") == file_name]
            if not matches:
                raise StorageError(f"no image {file_name!r} in {self.metadata_path}")
            for record in matches:
                record.update(fields)
            data = "".join(_dumps(record, what=f"metadata of {file_name}") + "\n" for record in records)
            write_atomically(self.metadata_path, data.encode("utf-8"))
        return matches[-1]

    # Traces -------------------------------------------------------------------------------------------------

    def trace_path(self, run_id: str) -> Path:
        """``root/runs/<run_id>/trace.json``."""
        return self.root / RUNS_DIR / check_run_id(run_id) / TRACE_NAME

    def write_trace(self, run_id: str, trace: dict) -> Path:
        """Write ``trace`` as ``runs/<run_id>/trace.json`` atomically (a reader sees the old or the new file whole).

        Raises:
            StorageError: unsafe run id, or a trace that is not JSON-serialisable.
        """
        path = self.trace_path(run_id)
        data = trace_bytes(run_id, trace)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, data)
        return path

    def read_trace(self, run_id: str) -> dict:
        """The trace of ``run_id``.

        Raises:
            StorageError: no such run (the message lists the runs there are) or an unreadable trace.
        """
        path = self.trace_path(run_id)
        if not path.is_file():
            known = [run["run_id"] for run in self.list_runs()]
            listing = ", ".join(known[-10:]) if known else "none"
            raise StorageError(f"no trace for run {run_id!r} in {self.root}; runs there: {listing}")
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except ValueError as error:
            raise StorageError(f"trace {path} is not valid JSON: {error}") from error

    def list_runs(self) -> list[dict]:
        """One summary per run with a trace, in run-id order: creation order for generated ids
        (``agents.runner.new_run_id``), never the files' times, which a rewritten trace changes.

        Each summary has ``run_id``, ``path``, ``modified`` (ISO time), ``n_events`` and ``n_stored`` when the
        trace has ``events`` / ``stored`` lists, the keys of :data:`TRACE_SUMMARY_KEYS` the trace has, and
        ``error`` instead when the trace cannot be read.
        """
        runs_dir = self.root / RUNS_DIR
        if not runs_dir.is_dir():
            return []
        summaries = []
        for entry in runs_dir.iterdir():
            path = entry / TRACE_NAME
            if not _RUN_ID.fullmatch(entry.name) or not path.is_file():
                continue
            modified = path.stat().st_mtime
            summary: dict[str, Any] = {
                "run_id": entry.name,
                "path": str(path),
                "modified": datetime.fromtimestamp(modified, timezone.utc).isoformat(timespec="seconds"),
            }
            try:
                trace = json.loads(path.read_text(encoding="utf-8"))
            except ValueError as error:
                summary["error"] = f"unreadable trace: {error}"
            else:
                if isinstance(trace, dict):
                    summary.update({key: trace[key] for key in TRACE_SUMMARY_KEYS if key in trace})
                    if "status" in trace:
                        summary["status"] = run_state(trace)
                    for key in ("events", "stored"):
                        if isinstance(trace.get(key), list):
                            summary[f"n_{key}"] = len(trace[key])
            summaries.append(summary)
        return sorted(summaries, key=lambda summary: summary["run_id"])
