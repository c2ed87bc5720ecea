"""Find the sources to prepare: an ImageFolder tree, a CSV of paths, or a MedMNIST ``.npz``.

Everything that can be wrong with the input is found here, before any image is decoded, and
raised as :class:`PrepareInputError` with every offending value listed (up to a few).
"""

from __future__ import annotations

import csv
import io
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clinisynth.training.prepare.decode import DICOM_EXTENSIONS, RASTER_EXTENSIONS
from clinisynth.training.prepare.labels import MEDMNIST_LABELS, MEDMNIST_MODALITIES, is_valid_label, resolve_label

_SKIPPED_DIRS = frozenset({"__MACOSX", "$RECYCLE.BIN"})
_NPZ_SPLITS = ("train", "val", "test")
_SHOWN = 5


class PrepareInputError(ValueError):
    """Bad input found before any work: the message names the value and the fix."""


@dataclass(frozen=True)
class SourceItem:
    """One source to decode.

    Args:
        key: stable name of the source: its path relative to SOURCE, or ``<split>/<index>`` in a ``.npz``.
        kind: ``raster``, ``dicom`` or ``array``.
        label: class label (a valid folder name).
        modality: modality id from the CSV row, ``None`` to use the run's ``--modality``.
        text: caption from the CSV row, ``None`` to write one from the label.
        path: the file, for ``raster`` / ``dicom``.
        array: the pixels, for ``array``.
        size: file size in bytes (the ``.npz``'s for arrays); with ``mtime_ns`` it tells whether
            a source changed between runs.
        mtime_ns: modification time in ns.
    """

    key: str
    kind: str
    label: str
    modality: str | None = None
    text: str | None = None
    path: Path | None = None
    array: np.ndarray | None = field(default=None, compare=False, repr=False)
    size: int = 0
    mtime_ns: int = 0


@dataclass
class Discovery:
    """What was found: the items, the files ignored (by extension), the label map entries used."""

    items: list[SourceItem]
    ignored: Counter
    source_names: dict[str, set[str]]  # label -> the folder names / class ids it came from
    unused_map_keys: list[str]
    default_modality: str | None = None


def _file_kind(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in RASTER_EXTENSIONS:
        return "raster"
    if suffix in DICOM_EXTENSIONS:
        return "dicom"
    if suffix == "":
        # DICOM files often have no extension; the preamble says what they are.
        try:
            with path.open("rb") as handle:
                head = handle.read(132)
        except OSError:
            return None
        return "dicom" if head[128:132] == b"DICM" else None
    return None


def _shown(values) -> str:
    values = sorted(values)
    more = f" (and {len(values) - _SHOWN} more)" if len(values) > _SHOWN else ""
    return ", ".join(repr(v) for v in values[:_SHOWN]) + more


def _label_for(name: str, label_map: dict[str, str] | None, bad: set[str]) -> str | None:
    label = resolve_label(name, label_map)
    if label is None:
        bad.add(name)
    return label


def _unused(label_map: dict[str, str] | None, used: set[str]) -> list[str]:
    return sorted(set(label_map or {}) - used)


def discover_folder(source: Path, *, label_map: dict[str, str] | None, label_level: int = -1) -> Discovery:
    """Walk an ImageFolder-style tree; the label is the folder at ``label_level`` among a file's parents.

    Args:
        source: the root folder.
        label_map: optional folder name -> label mapping.
        label_level: which parent folder names the class: ``-1`` the innermost (``train/glioma/x.png``
            -> ``glioma``), ``0`` the outermost.
    """
    items: list[SourceItem] = []
    ignored: Counter = Counter()
    bad_names: set[str] = set()
    top_level: list[str] = []
    shallow: list[str] = []
    names: dict[str, set[str]] = {}
    used_keys: set[str] = set()
    for directory, subdirs, files in os.walk(source):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith(".") and d not in _SKIPPED_DIRS)
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(directory) / name
            kind = _file_kind(path)
            if kind is None:
                ignored[path.suffix.lower() or "(no extension)"] += 1
                continue
            relative = path.relative_to(source)
            parents = relative.parts[:-1]
            if not parents:
                top_level.append(name)
                continue
            try:
                folder = parents[label_level]
            except IndexError:
                shallow.append(relative.as_posix())
                continue
            label = _label_for(folder, label_map, bad_names)
            if label is None:
                continue
            if label_map and (folder in label_map or resolve_label(folder, None) in label_map):
                used_keys.add(folder if folder in label_map else resolve_label(folder, None))
            names.setdefault(label, set()).add(folder)
            stat = path.stat()
            items.append(SourceItem(key=relative.as_posix(), kind=kind, label=label, path=path, size=stat.st_size, mtime_ns=stat.st_mtime_ns))
    if top_level:
        raise PrepareInputError(
            f"{len(top_level)} image file(s) sit directly in {source} ({_shown(top_level)}); "
            "put each in a class folder (SOURCE/<class>/<image>) or use --labels-from csv"
        )
    if shallow:
        raise PrepareInputError(
            f"--label-level {label_level} points above the folders of {len(shallow)} file(s) ({_shown(shallow)}); "
            "use -1 for the innermost folder"
        )
    if bad_names:
        raise PrepareInputError(
            f"folder name(s) {_shown(bad_names)} do not make valid labels (lower-case letter first, then a-z, 0-9 or _); "
            "map them with --label-map FILE (YAML or JSON, e.g. '2019-batch: normal')"
        )
    if not items:
        raise PrepareInputError(
            f"no image files found under {source} (looked for {', '.join(sorted(RASTER_EXTENSIONS | DICOM_EXTENSIONS))} "
            "and extension-less DICOM)"
        )
    return Discovery(items=items, ignored=ignored, source_names=names, unused_map_keys=_unused(label_map, used_keys))


def discover_csv(source: Path, csv_path: Path, *, label_map: dict[str, str] | None) -> Discovery:
    """Read ``path,label`` (plus optional ``text``, ``modality``) rows; paths are relative to ``source``.

    Raises:
        PrepareInputError: missing columns, empty rows, paths that are missing, not images, listed
            twice, or outside ``source``, and labels that are not valid folder names.
    """
    if not csv_path.is_file():
        raise PrepareInputError(f"--csv {csv_path} does not exist")
    data = csv_path.read_bytes()
    nul = data.find(b"\0")
    if nul >= 0:  # the csv module stops at a NUL with an error that names no file
        raise PrepareInputError(f"--csv {csv_path} is binary (a NUL byte at offset {nul}), not a CSV file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise PrepareInputError(f"--csv {csv_path} is not UTF-8 text (byte 0x{data[error.start]:02x} at offset "
                                f"{error.start}); save it as UTF-8 CSV") from None
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        columns = [c.strip() for c in reader.fieldnames or []]
        missing_columns = {"path", "label"} - set(columns)
        if missing_columns:
            raise PrepareInputError(
                f"--csv {csv_path} lacks column(s) {_shown(missing_columns)}; expected a header 'path,text,modality,label' "
                f"(text and modality optional), found {columns or 'no header'}"
            )
        rows = [{(k or "").strip(): (v if isinstance(v, str) else "").strip() for k, v in row.items()} for row in reader]
    except csv.Error as error:
        raise PrepareInputError(f"--csv {csv_path} line {reader.line_num}: not CSV ({error})") from None
    if not rows:
        raise PrepareInputError(f"--csv {csv_path} has a header but no rows")
    root = source.resolve()
    items: list[SourceItem] = []
    problems: dict[str, list[str]] = {"missing": [], "escaping": [], "not_image": [], "twice": []}
    bad_labels: set[str] = set()
    names: dict[str, set[str]] = {}
    seen: dict[str, int] = {}
    used_keys: set[str] = set()
    for line, row in enumerate(rows, start=2):
        raw_path, raw_label = row.get("path", ""), row.get("label", "")
        if not raw_path or not raw_label:
            raise PrepareInputError(f"--csv {csv_path} line {line}: 'path' and 'label' must both be filled")
        resolved = (root / raw_path).resolve()
        if not resolved.is_relative_to(root):
            problems["escaping"].append(raw_path)
            continue
        if not resolved.is_file():
            problems["missing"].append(raw_path)
            continue
        kind = _file_kind(resolved)
        if kind is None:
            problems["not_image"].append(raw_path)
            continue
        key = resolved.relative_to(root).as_posix()
        if key in seen:
            problems["twice"].append(f"{raw_path} (lines {seen[key]} and {line})")
            continue
        seen[key] = line
        label = _label_for(raw_label, label_map, bad_labels)
        if label is None:
            continue
        if label_map and raw_label in label_map:
            used_keys.add(raw_label)
        names.setdefault(label, set()).add(raw_label)
        stat = resolved.stat()
        items.append(
            SourceItem(
                key=key,
                kind=kind,
                label=label,
                modality=row.get("modality") or None,
                text=row.get("text") or None,
                path=resolved,
                size=stat.st_size,
                mtime_ns=stat.st_mtime_ns,
            )
        )
    messages = {
        "escaping": "resolve outside SOURCE {root}; keep every image inside it",
        "missing": "do not exist under SOURCE {root}",
        "not_image": "are not image files (raster or DICOM)",
        "twice": "are listed twice",
    }
    for key, template in messages.items():
        if problems[key]:
            raise PrepareInputError(f"--csv {csv_path}: {len(problems[key])} path(s) {template.format(root=root)}: {_shown(problems[key])}")
    if bad_labels:
        raise PrepareInputError(
            f"--csv {csv_path}: label(s) {_shown(bad_labels)} are not valid folder names "
            "(lower-case letter first, then a-z, 0-9 or _); fix them or map them with --label-map FILE"
        )
    return Discovery(items=items, ignored=Counter(), source_names=names, unused_map_keys=_unused(label_map, used_keys))


def discover_npz(source: Path, *, label_map: dict[str, str] | None) -> Discovery:
    """Read a MedMNIST ``.npz`` (``{train,val,test}_images`` / ``_labels``).

    Class numbers become labels through ``label_map`` (keys ``'0'``, ``'1'``, ...) or, for the
    known files (``pneumoniamnist``, ``breastmnist``), MedMNIST's class names.
    """
    try:
        archive = np.load(source, allow_pickle=False)
    except Exception as error:
        raise PrepareInputError(f"{source} is not a readable .npz ({type(error).__name__})") from None
    stem = source.stem.lower()
    known = MEDMNIST_LABELS.get(stem)
    if label_map is None and known is None:
        raise PrepareInputError(
            f"{source.name}: class numbers need names; give --label-map FILE mapping them, e.g. '0: normal' and '1: pneumonia' "
            f"(built in for {', '.join(sorted(MEDMNIST_LABELS))})"
        )
    stat = source.stat()
    items: list[SourceItem] = []
    names: dict[str, set[str]] = {}
    bad: set[str] = set()
    used_keys: set[str] = set()
    splits = [s for s in _NPZ_SPLITS if f"{s}_images" in archive.files]
    if not splits:
        raise PrepareInputError(f"{source.name} holds none of {', '.join(s + '_images' for s in _NPZ_SPLITS)} (found {archive.files})")
    for split in splits:
        images = archive[f"{split}_images"]
        if f"{split}_labels" not in archive.files:
            raise PrepareInputError(f"{source.name} has {split}_images but no {split}_labels")
        labels = np.asarray(archive[f"{split}_labels"]).reshape(len(images), -1)
        if labels.shape[1] != 1:
            raise PrepareInputError(f"{source.name}: {split}_labels has {labels.shape[1]} columns (multi-label); give a CSV instead")
        for index, (image, number) in enumerate(zip(images, labels[:, 0])):
            number = int(number)
            if label_map is not None:
                label = label_map.get(str(number))
                if label is None:
                    bad.add(str(number))
                    continue
                used_keys.add(str(number))
            else:
                label = known.get(number)
                if label is None:
                    bad.add(str(number))
                    continue
            names.setdefault(label, set()).add(str(number))
            items.append(SourceItem(key=f"{split}/{index:06d}", kind="array", label=label, array=image, size=stat.st_size, mtime_ns=stat.st_mtime_ns))
    if bad:
        raise PrepareInputError(f"{source.name}: class number(s) {_shown(bad)} have no name; add them to --label-map")
    if not items:
        raise PrepareInputError(f"{source.name} holds no images")
    if label_map is not None and not all(is_valid_label(v) for v in label_map.values()):
        raise PrepareInputError("--label-map holds invalid labels")
    return Discovery(
        items=items,
        ignored=Counter(),
        source_names=names,
        unused_map_keys=_unused(label_map, used_keys),
        default_modality=MEDMNIST_MODALITIES.get(stem),
    )
