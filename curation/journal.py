"""The campaign journal, ``DIR/campaign/journal.sqlite``: what the campaign is, and the state of every slot.

Tables: ``meta`` (format, campaign name, fingerprint, the canonical campaign as JSON, the resolved run settings),
``items`` (id, where it was read, description, planned modality and label, count, base seed), ``slots`` (item,
slot, state ``pending | running | stored | given_up``, seed, run_id, file name, the seed of the stored image) and
``runs`` (one generation run per chunk of an item's slots: which slots, status, wall time).

The driver writes it, one transaction per step, in SQLite's rollback-journal mode with ``synchronous=FULL``:
a kill leaves the last committed state, and a journal that is only read leaves no file behind. A new journal is
built under a temporary name and renamed into place whole.
"""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from clinisynth.curation.spec import CampaignError

FORMAT = 1
CAMPAIGN_DIR = "campaign"
JOURNAL_NAME = "journal.sqlite"
SLOT_STATES = ("pending", "running", "stored", "given_up")

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE items (item INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, source TEXT NOT NULL, line INTEGER NOT NULL,
                    description TEXT NOT NULL, modality TEXT NOT NULL, label TEXT NOT NULL, count INTEGER NOT NULL,
                    seed INTEGER NOT NULL);
CREATE TABLE slots (item INTEGER NOT NULL REFERENCES items(item), slot INTEGER NOT NULL, state TEXT NOT NULL,
                    seed INTEGER NOT NULL, run_id TEXT, file_name TEXT, stored_seed INTEGER,
                    PRIMARY KEY (item, slot));
CREATE INDEX slots_by_run ON slots (run_id);
CREATE TABLE runs (run_id TEXT PRIMARY KEY, item INTEGER NOT NULL, first_slot INTEGER NOT NULL, n INTEGER NOT NULL,
                   state TEXT NOT NULL, status TEXT, started_at TEXT NOT NULL, finished_at TEXT,
                   wall_s REAL NOT NULL DEFAULT 0, sessions INTEGER NOT NULL DEFAULT 0);
"""


def journal_path(out: Path) -> Path:
    return Path(out) / CAMPAIGN_DIR / JOURNAL_NAME


@dataclass(frozen=True)
class PlannedItem:
    """An item after planning: where it came from, what it draws, how many and from which seed."""

    item: int
    key: str
    source: str
    line: int
    description: str
    modality: str
    label: str
    count: int
    seed: int


@dataclass(frozen=True)
class Chunk:
    """Slots ``first_slot .. first_slot + n - 1`` of one item, run as one generation run.

    ``run_id`` is set once the chunk was started (its run may be finished, interrupted or not yet created).
    """

    item: PlannedItem
    first_slot: int
    n: int
    run_id: str | None

    @property
    def seed(self) -> int:
        """The run's base seed: the run's slot ``s`` is the item's slot ``first_slot + s``, seed ``item.seed +
        first_slot + s``, whatever the chunking."""
        return self.item.seed + self.first_slot


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class Journal:
    """One campaign's journal. Open with :meth:`open` (an existing one) or :meth:`create`."""

    def __init__(self, path: Path, connection: sqlite3.Connection) -> None:
        self.path = path
        self._db = connection

    # --- opening ---------------------------------------------------------------------------------------------

    @staticmethod
    def _connect(path: Path, *, read_only: bool) -> sqlite3.Connection:
        uri = f"file:{path}?mode={'ro' if read_only else 'rw'}"
        connection = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA synchronous=FULL")
        connection.execute("PRAGMA busy_timeout=10000")
        return connection

    @classmethod
    def open(cls, path: Path, *, read_only: bool = False) -> "Journal":
        """An existing journal.

        Raises:
            CampaignError: the file is not a campaign journal (another program's SQLite file, a damaged one,
                or a newer format).
        """
        path = Path(path)
        try:
            connection = cls._connect(path, read_only=read_only)
            rows = dict(connection.execute("SELECT key, value FROM meta").fetchall())
            connection.execute("SELECT item, slot, state, seed, run_id, file_name FROM slots LIMIT 1").fetchall()
        except sqlite3.DatabaseError as error:
            raise CampaignError(f"{path} is not a campaign journal ({error}); move it away or use another --out") \
                from None
        if rows.get("format") != str(FORMAT) or "fingerprint" not in rows:
            connection.close()
            raise CampaignError(f"{path} is not a campaign journal of this version (format {rows.get('format')!r}); "
                                "use another --out")
        return cls(path, connection)

    @classmethod
    def create(cls, path: Path, *, name: str, fingerprint: str, canonical: dict, parameters: dict,
               items: list[PlannedItem]) -> "Journal":
        """Write a new journal whole (temporary name, then rename) with every item and slot pending."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        temporary.unlink(missing_ok=True)
        with closing(sqlite3.connect(temporary, isolation_level=None)) as connection:
            connection.execute("PRAGMA synchronous=FULL")
            connection.executescript(_SCHEMA)
            connection.execute("BEGIN")
            meta = {"format": str(FORMAT), "name": name, "fingerprint": fingerprint,
                    "canonical": json.dumps(canonical, sort_keys=True), "parameters": json.dumps(parameters, sort_keys=True),
                    "created_at": _now()}
            connection.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
            connection.executemany(
                "INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(i.item, i.key, i.source, i.line, i.description, i.modality, i.label, i.count, i.seed) for i in items])
            connection.executemany(
                "INSERT INTO slots (item, slot, state, seed) VALUES (?, ?, 'pending', ?)",
                ((i.item, slot, i.seed + slot) for i in items for slot in range(i.count)))
            connection.execute("COMMIT")
        os.replace(temporary, path)
        descriptor = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        return cls.open(path)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- reading ---------------------------------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    @property
    def name(self) -> str:
        return self.meta("name") or ""

    @property
    def fingerprint(self) -> str:
        return self.meta("fingerprint") or ""

    @property
    def canonical(self) -> dict:
        return json.loads(self.meta("canonical") or "{}")

    @property
    def parameters(self) -> dict:
        return json.loads(self.meta("parameters") or "{}")

    def items(self) -> list[PlannedItem]:
        return [PlannedItem(*row) for row in self._db.execute(
            "SELECT item, key, source, line, description, modality, label, count, seed FROM items ORDER BY item")]

    def slots(self, item: int | None = None) -> list[dict]:
        query = "SELECT item, slot, state, seed, run_id, file_name, stored_seed FROM slots"
        rows = self._db.execute(query + (" WHERE item = ?" if item is not None else "") + " ORDER BY item, slot",
                                (() if item is None else (item,)))
        keys = ("item", "slot", "state", "seed", "run_id", "file_name", "stored_seed")
        return [dict(zip(keys, row)) for row in rows]

    def runs(self) -> list[dict]:
        keys = ("run_id", "item", "first_slot", "n", "state", "status", "started_at", "finished_at", "wall_s",
                "sessions")
        return [dict(zip(keys, row)) for row in self._db.execute(f"SELECT {', '.join(keys)} FROM runs ORDER BY rowid")]

    def counts(self) -> dict[str, int]:
        """Slots per state (every state present, 0 when none) and ``total``."""
        found = dict(self._db.execute("SELECT state, COUNT(*) FROM slots GROUP BY state").fetchall())
        counts = {state: int(found.get(state, 0)) for state in SLOT_STATES}
        counts["total"] = sum(counts.values())
        return counts

    def stored_files(self) -> list[tuple[int, int, str]]:
        return [tuple(row) for row in self._db.execute(
            "SELECT item, slot, file_name FROM slots WHERE state = 'stored' ORDER BY item, slot")]

    def open_chunks(self, chunk_size: int) -> list[Chunk]:
        """Every chunk with a slot still to decide, in item then slot order.

        A chunk is ``chunk_size`` consecutive slots of one item; one that was started keeps the run it was
        given (its slots carry the run id), so a resumed campaign continues that run instead of starting another.
        """
        items = {item.item: item for item in self.items()}
        chunks: list[Chunk] = []
        rows = self._db.execute(
            "SELECT item, slot, state, run_id FROM slots WHERE state IN ('pending', 'running') ORDER BY item, slot")
        grouped: dict[tuple, list[tuple[int, str | None]]] = {}
        for item, slot, state, run_id in rows:
            grouped.setdefault((item, slot // chunk_size), []).append((slot, run_id))
        for (item, index), slots in grouped.items():
            run_ids = {run_id for _, run_id in slots if run_id}
            if len(run_ids) > 1:
                raise CampaignError(f"{self.path}: slots of item {items[item].key} belong to two runs "
                                    f"({', '.join(sorted(run_ids))}); the journal was edited")
            if run_ids:
                (run_id,) = run_ids
                first, n = self._db.execute("SELECT first_slot, n FROM runs WHERE run_id = ?", (run_id,)).fetchone()
                chunks.append(Chunk(item=items[item], first_slot=first, n=n, run_id=run_id))
            else:
                first = index * chunk_size
                n = min(chunk_size, items[item].count - first)
                chunks.append(Chunk(item=items[item], first_slot=first, n=n, run_id=None))
        return chunks

    # --- writing ---------------------------------------------------------------------------------------------

    def _transaction(self):
        journal = self

        class _Transaction:
            def __enter__(self):
                journal._db.execute("BEGIN IMMEDIATE")
                return journal._db

            def __exit__(self, kind, value, traceback):
                journal._db.execute("COMMIT" if kind is None else "ROLLBACK")

        return _Transaction()

    def start_run(self, chunk: Chunk, run_id: str) -> Chunk:
        """Give a pending chunk its run id (before the run is created: a kill then leaves a run to create)."""
        with self._transaction() as db:
            db.execute("INSERT INTO runs (run_id, item, first_slot, n, state, started_at) VALUES (?, ?, ?, ?, "
                       "'started', ?)", (run_id, chunk.item.item, chunk.first_slot, chunk.n, _now()))
            db.execute("UPDATE slots SET state = 'running', run_id = ? WHERE item = ? AND slot >= ? AND slot < ? "
                       "AND state = 'pending'", (run_id, chunk.item.item, chunk.first_slot, chunk.first_slot + chunk.n))
        return Chunk(item=chunk.item, first_slot=chunk.first_slot, n=chunk.n, run_id=run_id)

    def add_wall_time(self, run_id: str, seconds: float) -> None:
        with self._transaction() as db:
            db.execute("UPDATE runs SET wall_s = wall_s + ?, sessions = sessions + 1 WHERE run_id = ?",
                       (seconds, run_id))

    def finish_run(self, chunk: Chunk, *, status: str, stored: dict[int, tuple[str, int]], seconds: float) -> None:
        """Record a finished run: its slots (the chunk's, numbered from 0) stored with file and seed, or given up."""
        with self._transaction() as db:
            for offset in range(chunk.n):
                slot = chunk.first_slot + offset
                if offset in stored:
                    file_name, seed = stored[offset]
                    db.execute("UPDATE slots SET state = 'stored', file_name = ?, stored_seed = ? WHERE item = ? AND "
                               "slot = ?", (file_name, seed, chunk.item.item, slot))
                else:
                    db.execute("UPDATE slots SET state = 'given_up' WHERE item = ? AND slot = ?",
                               (chunk.item.item, slot))
            db.execute("UPDATE runs SET state = 'done', status = ?, finished_at = ?, wall_s = wall_s + ?, "
                       "sessions = sessions + 1 WHERE run_id = ?", (status, _now(), seconds, chunk.run_id))

    def abandon_run(self, chunk: Chunk, why: str) -> Chunk:
        """A started run that never began work (no checkpoint, nothing filed): its slots go back to pending."""
        with self._transaction() as db:
            db.execute("UPDATE runs SET state = 'abandoned', status = ?, finished_at = ? WHERE run_id = ?",
                       (why, _now(), chunk.run_id))
            db.execute("UPDATE slots SET state = 'pending', run_id = NULL WHERE run_id = ?", (chunk.run_id,))
        return Chunk(item=chunk.item, first_slot=chunk.first_slot, n=chunk.n, run_id=None)
