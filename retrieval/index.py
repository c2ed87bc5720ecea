"""FAISS index over the knowledge records' phrases, persisted in a cache keyed by the knowledge hash."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from clinisynth.knowledge import KnowledgeBase
from clinisynth.retrieval.embedder import PACKAGED_MINILM, Embedder

INDEX_FORMAT = 1


@dataclass(frozen=True)
class Entry:
    """One embedded phrase: a record's term, synonym, abbreviation or definition."""

    record_id: str
    kind: str
    modalities: tuple[str, ...]
    text: str
    field: str


@dataclass(frozen=True)
class Hit:
    """A retrieved record with its best cosine similarity and the phrase that matched."""

    id: str
    score: float
    text: str
    kind: str


def index_entries(knowledge: KnowledgeBase) -> list[Entry]:
    """Every phrase worth embedding, one entry each (abbreviations are embedded with their term)."""
    entries: list[Entry] = []
    for record in knowledge.records:
        modalities = tuple(record.modalities) if record.modalities else ((record.id,) if record.kind == "modality" else ())
        phrases = [("term", record.term), *(("synonym", s) for s in record.synonyms)]
        phrases += [("abbreviation", f"{a} ({record.term})") for a in record.abbreviations]
        if record.definition:
            phrases.append(("definition", record.definition))
        seen: set[str] = set()
        for field, text in phrases:
            key = text.strip().lower()
            if key and key not in seen:
                seen.add(key)
                entries.append(Entry(record.id, record.kind, modalities, text.strip(), field))
    return entries


def _single_thread_faiss(faiss) -> None:
    # One thread: queries are single vectors and OpenMP start-up costs more than it saves here.
    faiss.omp_set_num_threads(1)


def cache_key(knowledge: KnowledgeBase, model: str) -> str:
    digest = hashlib.sha256(f"{INDEX_FORMAT}\0{knowledge.content_hash}\0{model}".encode()).hexdigest()
    return digest[:20]


class Retriever:
    """Exact inner-product search (``IndexIDMap2(IndexFlatIP)``) over normalised phrase embeddings.

    Build with :meth:`open`, which reuses the persisted index when the knowledge files and the
    embedder are unchanged and rebuilds it otherwise. A reused index is opened lazily: neither the
    embedder (sentence-transformers, torch: seconds to import) nor FAISS is loaded until the first
    :meth:`search` (or the first use of :attr:`embedder`, :attr:`index` or :attr:`entries`), so a
    process whose descriptions the lexicon resolves never pays for them.

    Args:
        embedder: encodes queries (and entries at build time); ``None`` loads ``model`` on first use.
        index: the FAISS index; ids are positions in ``entries``; ``None`` reads it from ``cache_dir``
            on first use.
        entries: what each vector is; ``None`` reads them from ``cache_dir`` on first use.
        cache_dir: the folder of this index (``<cache root>/retrieval/<key>/``).
        model: the embedder setting loaded when ``embedder`` is ``None``.
    """

    def __init__(
        self,
        *,
        embedder: Embedder | None = None,
        index=None,
        entries: list[Entry] | None = None,
        cache_dir: Path | None = None,
        model: str = PACKAGED_MINILM,
        knowledge: KnowledgeBase | None = None,
    ) -> None:
        if (index is None or entries is None) and cache_dir is None:
            raise ValueError("a Retriever needs either an index and its entries or the cache_dir holding them")
        self._knowledge = knowledge  # to build the index on first use when ``cache_dir`` holds none
        self._embedder = embedder
        self._index = index
        self._entries = entries
        self._model = embedder.model_id if embedder is not None else model
        self._lock = threading.RLock()
        self.cache_dir = cache_dir

    @property
    def embedder(self) -> Embedder:
        """The query embedder, loaded on first use."""
        if self._embedder is None:
            with self._lock:
                if self._embedder is None:
                    # Queries against a built index: numpy when the model allows (no torch import in a cold
                    # `plan`), the same vectors as the sentence-transformers ones the index was built with.
                    self._embedder = Embedder(model=self._model, backend="auto")
        return self._embedder

    @property
    def index(self):
        """The FAISS index, read from the cache folder on first use."""
        if self._index is None:
            self._read()
        return self._index

    @property
    def entries(self) -> list[Entry]:
        """What each vector is, read from the cache folder on first use."""
        if self._entries is None:
            self._read()
        return self._entries

    @classmethod
    def open(
        cls,
        *,
        knowledge: KnowledgeBase,
        cache_dir: Path | str,
        model: str = PACKAGED_MINILM,
        embedder: Embedder | None = None,
        rebuild: bool = False,
    ) -> "Retriever":
        """Open the cached index for this knowledge content and model, building it when missing.

        Opening reads nothing but the folder's name: the index, its entries and the embedder load on
        first use, and a missing index is built then (so a plan the lexicon resolves never pays for it).
        ``rebuild`` builds it here.

        Args:
            knowledge: the loaded records; their ``content_hash`` keys the cache.
            cache_dir: root cache folder; the index goes to ``<cache_dir>/retrieval/<key>/``.
            model: embedder setting (see :func:`clinisynth.retrieval.embedder.resolve_model_path`).
            embedder: an already loaded embedder to reuse.
            rebuild: ignore a cached index.
        """
        model_id = embedder.model_id if embedder is not None else model
        folder = Path(cache_dir) / "retrieval" / cache_key(knowledge, model_id)
        if rebuild:
            return cls._build(knowledge, embedder or Embedder(model=model), folder)
        return cls(embedder=embedder, cache_dir=folder, model=model_id, knowledge=knowledge)

    @classmethod
    def _build(cls, knowledge: KnowledgeBase, embedder: Embedder, folder: Path) -> "Retriever":
        import faiss

        _single_thread_faiss(faiss)
        entries = index_entries(knowledge)
        vectors = embedder.encode([entry.text for entry in entries])
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(embedder.dimension))
        index.add_with_ids(vectors, np.arange(len(entries), dtype=np.int64))
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        try:
            faiss.write_index(index, str(staging / "index.faiss"))
            (staging / "entries.json").write_text(json.dumps([asdict(e) for e in entries]), encoding="utf-8")
            meta = {"format": INDEX_FORMAT, "knowledge_hash": knowledge.content_hash, "model": embedder.model_id,
                    "entries": len(entries), "dimension": embedder.dimension}
            (staging / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
            try:
                os.rename(staging, folder)
            except OSError:
                # Another process published the same index first; theirs is identical.
                shutil.rmtree(staging, ignore_errors=True)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return cls(embedder=embedder, index=index, entries=entries, cache_dir=folder)

    def _read(self) -> None:
        """Read the persisted index and entries, checked against each other and the embedder."""
        with self._lock:
            if self._index is not None and self._entries is not None:
                return
            import faiss

            _single_thread_faiss(faiss)
            folder = self.cache_dir
            if not folder.is_dir() and self._knowledge is not None:
                built = self._build(self._knowledge, self.embedder, folder)
                self._index, self._entries = built._index, built._entries
                return
            index = faiss.read_index(str(folder / "index.faiss"))
            raw = json.loads((folder / "entries.json").read_text(encoding="utf-8"))
            entries = [Entry(**{**item, "modalities": tuple(item["modalities"])}) for item in raw]
            dimension = self._cached_dimension(folder)
            if index.ntotal != len(entries) or (dimension is not None and index.d != dimension):
                raise ValueError(
                    f"retrieval cache {folder} is inconsistent ({index.ntotal} vectors of width {index.d}, "
                    f"{len(entries)} entries, embedder width {dimension}); delete the folder to rebuild it"
                )
            self._index, self._entries = index, entries

    def _cached_dimension(self, folder: Path) -> int | None:
        # The embedder's width: from a loaded embedder, else from meta.json (so that reading the index
        # does not load the embedder); the width of a loaded embedder is checked again in ``search``.
        if self._embedder is not None:
            return self._embedder.dimension
        try:
            return int(json.loads((folder / "meta.json").read_text(encoding="utf-8"))["dimension"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def search(
        self, query: str, *, k: int = 5, kinds: Iterable[str] | None = None, modality: str | None = None
    ) -> list[Hit]:
        """Best ``k`` records for ``query``, one hit per record, optionally restricted by kind and modality."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        wanted = set(kinds) if kinds is not None else None
        index, entries, embedder = self.index, self.entries, self.embedder
        if index.d != embedder.dimension:
            raise ValueError(
                f"retrieval cache {self.cache_dir} holds vectors of width {index.d} but embedder "
                f"{embedder.model_id!r} gives {embedder.dimension}; delete the folder to rebuild it"
            )
        vector = embedder.encode([query])
        # Over-fetch so that filtering by kind / modality and de-duplicating by record still leaves k.
        fetch = min(index.ntotal, max(k * 20, 50))
        scores, ids = index.search(vector, fetch)
        hits: dict[str, Hit] = {}
        for score, position in zip(scores[0], ids[0]):
            if position < 0:
                continue
            entry = entries[position]
            if wanted is not None and entry.kind not in wanted:
                continue
            if modality is not None and entry.modalities and modality not in entry.modalities:
                continue
            if entry.record_id not in hits:
                hits[entry.record_id] = Hit(id=entry.record_id, score=float(score), text=entry.text, kind=entry.kind)
            if len(hits) == k:
                break
        return list(hits.values())
