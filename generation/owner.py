"""Which command made a dataset folder: the owner marker ``DIR/.clinisynth_dataset.json``.

``clinisynth generate`` (and ``clinisynth curate``, which writes the same ordered storage plus its ``campaign/``
folder) make ``generate`` datasets; ``clinisynth prepare`` makes ``prepare`` datasets. Each refuses the other's
folder, so a generate run can never append rows to a prepared dataset's manifest. Folders made before the marker
existed are told apart by what is in them (:func:`dataset_kind`). Standard library only.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from clinisynth.generation.files import write_atomically

MARKER_NAME = ".clinisynth_dataset.json"
MARKER_VERSION = 1
KINDS = ("generate", "prepare")
#: The command that makes each kind, for messages.
MAKERS = {"generate": "clinisynth generate / curate", "prepare": "clinisynth prepare"}
#: A prepared dataset's own marker (training/prepare/state.py), for folders prepared before this marker existed.
_LEGACY_PREPARE_MARKER = Path("_sensitive") / "prepare.json"
_LEGACY_GENERATE_FILES = (".clinisynth_counters.json", "metadata.jsonl")


class OwnerError(ValueError):
    """A folder made by another command, or a marker that cannot be read."""


def read_kind(root: Path) -> str | None:
    """The kind the marker of ``root`` names, or ``None`` without a marker.

    Raises:
        OwnerError: the marker is not valid JSON or names no known kind.
    """
    path = Path(root) / MARKER_NAME
    if not path.is_file():
        return None
    try:
        kind = json.loads(path.read_text(encoding="utf-8")).get("kind")
    except (ValueError, AttributeError, UnicodeDecodeError) as error:
        raise OwnerError(f"owner marker {path} is damaged ({error}); run `clinisynth doctor {root}`") from None
    if kind not in KINDS:
        raise OwnerError(f"owner marker {path} names kind {kind!r}, not one of {', '.join(KINDS)}; "
                         f"run `clinisynth doctor {root}`")
    return kind


def dataset_kind(root: Path) -> str | None:
    """What made ``root``: its marker, else what an older folder holds; ``None`` for a new or foreign folder."""
    root = Path(root)
    kind = read_kind(root)
    if kind is not None:
        return kind
    if (root / _LEGACY_PREPARE_MARKER).is_file():
        return "prepare"
    if any((root / name).is_file() for name in _LEGACY_GENERATE_FILES):
        return "generate"
    return None


def check_owner(root: Path, *, kind: str) -> None:
    """Refuse ``root`` when another command made it (nothing is written).

    Raises:
        OwnerError: one line naming the folder, the command that made it and what to do.
    """
    found = dataset_kind(root)
    if found is not None and found != kind:
        raise OwnerError(f"output dir {root} is a dataset made by `{MAKERS[found]}` (owner marker {MARKER_NAME}); "
                         f"`{MAKERS[kind].split(' / ')[0]}` does not write into it: choose another output dir")


def claim(root: Path, *, kind: str, made_by: str) -> None:
    """Write the owner marker of ``root`` when it has none; refuse a folder another command made.

    Call it with the folder's lock held (or as its only writer), before the first file of the dataset.

    Args:
        kind: ``generate`` or ``prepare``.
        made_by: the command, kept in the marker (``clinisynth generate``, ``clinisynth curate``, ...).
    """
    check_owner(root, kind=kind)
    if read_kind(root) is None:
        marker = {"kind": kind, "made_by": made_by, "version": MARKER_VERSION,
                  "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        write_atomically(Path(root) / MARKER_NAME, json.dumps(marker, indent=2) + "\n")


__all__ = ["KINDS", "MARKER_NAME", "OwnerError", "check_owner", "claim", "dataset_kind", "read_kind"]
