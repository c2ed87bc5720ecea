"""The OUT folder's bookkeeping: layout, the run marker, the journal, leftovers of killed writes.

``OUT/_sensitive/`` holds everything that can name a source (paths, the id secret); the rest of
OUT is free of source names and DICOM header values. The journal (``journal.jsonl``) gets one
line per source, appended only after all of that source's PNGs are in place, so a re-run knows
exactly what is done; the CSVs and reports are rebuilt from it and replaced atomically.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

from clinisynth.generation import owner
from clinisynth.generation.files import TMP_SUFFIX, write_atomically
from clinisynth.training.prepare.discover import PrepareInputError

SENSITIVE_DIR = "_sensitive"
# Hidden: datasets' imagefolder takes every folder holding images for a class, except hidden ones.
CONTACT_DIR = ".contact_sheets"
#: Where contact sheets went before: still counted as ours, so that an older OUT resumes.
LEGACY_CONTACT_DIR = "_contact_sheets"
MARKER = "prepare.json"
JOURNAL = "journal.jsonl"
SOURCE_MAP = "source_map.csv"
MARKER_VERSION = 1
#: ``_sensitive/`` and its files are for the owner alone: they name the sources.
SENSITIVE_DIR_MODE = 0o700
SENSITIVE_FILE_MODE = 0o600
# Files and folders a prepare run writes at the top of OUT; anything else there means OUT is not ours.
OWN_TOP_LEVEL = frozenset({SENSITIVE_DIR, CONTACT_DIR, LEGACY_CONTACT_DIR, owner.MARKER_NAME, "manifest.csv", "quarantine.csv",
                           "duplicates.csv", "report.md", "report.json"})


def remove_stale_temp_files(out: Path) -> int:
    """Delete the temp files of :func:`~clinisynth.generation.files.write_atomically` a killed run left; how many."""
    removed = 0
    for temp in out.rglob(f".*{TMP_SUFFIX}"):
        temp.unlink()
        removed += 1
    return removed


class RunState:
    """The marker and journal of one OUT folder.

    Args:
        out: the output folder.
        source: the resolved source (folder or ``.npz``).
        fingerprint: options that decide the outputs; a re-run must match them.
    """

    def __init__(self, out: Path, *, source: Path, fingerprint: dict) -> None:
        self.out = out
        self.sensitive = out / SENSITIVE_DIR
        self.source = source
        self.fingerprint = fingerprint
        self.secret = b""
        self.records: dict[str, dict] = {}
        self._journal = None

    def open(self) -> None:
        """Create or check the marker, then load the journal.

        Raises:
            PrepareInputError: OUT is a file, holds something that is not a prepare output, or was
                prepared from another source or with other options.
        """
        if self.out.exists() and not self.out.is_dir():
            raise PrepareInputError(f"OUT {self.out} is a file; give a folder")
        try:
            owner.check_owner(self.out, kind="prepare")  # a generated dataset is never prepared into
        except owner.OwnerError as error:
            raise PrepareInputError(str(error)) from None
        marker_path = self.sensitive / MARKER
        if marker_path.is_file():
            marker = json.loads(marker_path.read_text(encoding="utf-8"))
            if marker.get("source") != str(self.source):
                raise PrepareInputError(
                    f"OUT {self.out} holds a dataset prepared from another source; give a new OUT folder"
                )
            differing = sorted(k for k in set(marker.get("fingerprint", {})) | set(self.fingerprint) if marker["fingerprint"].get(k) != self.fingerprint.get(k))
            if differing:
                detail = ", ".join(f"{k}: {marker['fingerprint'].get(k)!r} then, {self.fingerprint.get(k)!r} now" for k in differing)
                raise PrepareInputError(f"OUT {self.out} was prepared with other options ({detail}); use the same options or a new OUT folder")
            self.secret = bytes.fromhex(marker["secret"])
        else:
            if self.out.is_dir():
                foreign = sorted(p.name for p in self.out.iterdir())
                if foreign:
                    raise PrepareInputError(
                        f"OUT {self.out} is not empty and is not a clinisynth prepare output (holds {', '.join(foreign[:5])}); "
                        "give an empty or new folder"
                    )
            self.sensitive.mkdir(parents=True, exist_ok=True, mode=SENSITIVE_DIR_MODE)
            self.secret = secrets.token_bytes(32)
            marker = {
                "tool": "clinisynth prepare",
                "version": MARKER_VERSION,
                "source": str(self.source),
                "fingerprint": self.fingerprint,
                "secret": self.secret.hex(),
                "note": "SENSITIVE: names the source; the secret links opaque ids to source paths. Do not share.",
            }
            write_atomically(marker_path, json.dumps(marker, indent=2), mode=SENSITIVE_FILE_MODE)
        self._restrict()
        owner.claim(self.out, kind="prepare", made_by="clinisynth prepare")
        self._load_journal()

    def _restrict(self) -> None:
        """0700 on ``_sensitive/`` and 0600 on its files, also for an OUT an older version made world-readable."""
        os.chmod(self.sensitive, SENSITIVE_DIR_MODE)
        for path in self.sensitive.iterdir():
            if path.is_file() and not path.is_symlink():
                os.chmod(path, SENSITIVE_FILE_MODE)

    def _load_journal(self) -> None:
        path = self.sensitive / JOURNAL
        if not path.is_file():
            return
        with path.open("rb") as handle:
            for raw in handle:
                try:
                    record = json.loads(raw)
                except json.JSONDecodeError:
                    continue  # a line cut short by a kill: that source is simply redone
                self.records[record["key"]] = record

    def item_id(self, key: str) -> str:
        """Opaque, stable id for a source: keyed hash of its name, so the name cannot be guessed back."""
        return hmac.new(self.secret, key.encode("utf-8"), hashlib.sha256).hexdigest()[:16]

    def append(self, record: dict) -> None:
        """Record a finished source; call only after its PNGs are in place."""
        if self._journal is None:
            descriptor = os.open(self.sensitive / JOURNAL, os.O_WRONLY | os.O_APPEND | os.O_CREAT, SENSITIVE_FILE_MODE)
            self._journal = os.fdopen(descriptor, "a", encoding="utf-8")
        self._journal.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._journal.flush()
        self.records[record["key"]] = record

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None
