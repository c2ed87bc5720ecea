"""Sentence-transformers embeddings and a persisted FAISS index over the knowledge records.

Heavy libraries load on first use: ``from clinisynth.retrieval import Retriever`` is cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clinisynth.retrieval.embedder import PACKAGED_MINILM, Embedder, EmbedderError
    from clinisynth.retrieval.index import Hit, Retriever

__all__ = ["PACKAGED_MINILM", "Embedder", "EmbedderError", "Hit", "Retriever"]


def __getattr__(name: str):
    if name in ("PACKAGED_MINILM", "Embedder", "EmbedderError"):
        from clinisynth.retrieval import embedder

        return getattr(embedder, name)
    if name in ("Hit", "Retriever"):
        from clinisynth.retrieval import index

        return getattr(index, name)
    raise AttributeError(f"module 'clinisynth.retrieval' has no attribute {name!r}")
