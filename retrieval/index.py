"""FAISS index over the knowledge records' phrases, persisted in a cache keyed by the knowledge hash."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
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


def cache_key(knowledge: KnowledgeBase, model: str) -> str:
    digest = hashlib.sha256(f"{INDEX_FORMAT}\0{knowledge.content_hash}\0{model}".encode()).hexdigest()
    return digest[:20]


class Retriever:
    """Exact inner-product search (``IndexIDMap2(IndexFlatIP)``) over normalised phrase embeddings.

    Build with :meth:`open`, which reuses the persisted index when the knowledge files and the
    embedder are unchanged and rebuilds it otherwise.

    Args:
        embedder: encodes queries (and entries at build time).
        index: the FAISS index; ids are positions in ``entries``.
        entries: what each vector is.
    """

    def __init__(self, *, embedder: Embedder, index, entries: list[Entry], cache_dir: Path | None = None) -> None:
        self.embedder = embedder
        self.index = index
        self.entries = entries
        self.cache_dir = cache_dir

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
        """Load the cached index for this knowledge content and model, building it when missing.

        Args:
            knowledge: the loaded records; their ``content_hash`` keys the cache.
            cache_dir: root cache folder; the index goes to ``<cache_dir>/retrieval/<key>/``.
            model: embedder setting (see :func:`clinisynth.retrieval.embedder.resolve_model_path`).
            embedder: an already loaded embedder to reuse.
            rebuild: ignore a cached index.
        """
        import faiss

        # One thread: queries are single vectors and OpenMP start-up costs more than it saves here.
        faiss.omp_set_num_threads(1)
        embedder = embedder or Embedder(model=model)
        folder = Path(cache_dir) / "retrieval" / cache_key(knowledge, embedder.model_id)
        if folder.is_dir() and not rebuild:
            return cls._load(folder, embedder)
        return cls._build(knowledge, embedder, folder)

    @classmethod
    def _build(cls, knowledge: KnowledgeBase, embedder: Embedder, folder: Path) -> "Retriever":
        import faiss

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

    @classmethod
    def _load(cls, folder: Path, embedder: Embedder) -> "Retriever":
        import faiss

        index = faiss.read_index(str(folder / "index.faiss"))
        raw = json.loads((folder / "entries.json").read_text(encoding="utf-8"))
        entries = [Entry(**{**item, "modalities": tuple(item["modalities"])}) for item in raw]
        if index.ntotal != len(entries) or index.d != embedder.dimension:
            raise ValueError(
                f"retrieval cache {folder} is inconsistent ({index.ntotal} vectors of width {index.d}, "
                f"{len(entries)} entries, embedder width {embedder.dimension}); delete the folder to rebuild it"
            )
        return cls(embedder=embedder, index=index, entries=entries, cache_dir=folder)

    def search(
        self, query: str, *, k: int = 5, kinds: Iterable[str] | None = None, modality: str | None = None
    ) -> list[Hit]:
        """Best ``k`` records for ``query``, one hit per record, optionally restricted by kind and modality."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        wanted = set(kinds) if kinds is not None else None
        vector = self.embedder.encode([query])
        # Over-fetch so that filtering by kind / modality and de-duplicating by record still leaves k.
        fetch = min(self.index.ntotal, max(k * 20, 50))
        scores, ids = self.index.search(vector, fetch)
        hits: dict[str, Hit] = {}
        for score, position in zip(scores[0], ids[0]):
            if position < 0:
                continue
            entry = self.entries[position]
            if wanted is not None and entry.kind not in wanted:
                continue
            if modality is not None and entry.modalities and modality not in entry.modalities:
                continue
            if entry.record_id not in hits:
                hits[entry.record_id] = Hit(id=entry.record_id, score=float(score), text=entry.text, kind=entry.kind)
            if len(hits) == k:
                break
        return list(hits.values())
