"""``clinisynth knowledge validate | build-index | search``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from clinisynth.cli.errors import fail, user_errors
from clinisynth.cli.options import path_parser

app = typer.Typer(help="Check, index and search the knowledge base.", no_args_is_help=True)

DirOption = Annotated[Optional[Path], typer.Option("--dir", help="knowledge folder (default: the packaged one)",
                                                   parser=path_parser("--dir"))]


def _knowledge_dir(directory: Path | None) -> Path:
    from clinisynth.knowledge import DEFAULT_DATA_DIR
    from clinisynth.settings import Settings

    return directory or Settings().knowledge_dir or DEFAULT_DATA_DIR


def _open_retriever(directory: Path | None, *, rebuild: bool = False, knowledge=None):
    """The knowledge records (``knowledge`` when given) and their FAISS retriever, built or loaded from the cache
    of the settings."""
    from clinisynth.api import quiet_model_loading
    from clinisynth.knowledge import load_knowledge
    from clinisynth.retrieval import Retriever
    from clinisynth.settings import Settings

    settings = Settings()
    quiet_model_loading()
    knowledge = knowledge or load_knowledge(_knowledge_dir(directory))
    retriever = Retriever.open(knowledge=knowledge, cache_dir=settings.cache_dir, model=settings.embedder,
                               rebuild=rebuild)
    return knowledge, retriever


@app.command()
def validate(directory: DirOption = None) -> None:
    """Check every record against the schema and that every reference resolves."""
    from collections import Counter

    with user_errors():
        from clinisynth.knowledge import load_knowledge

        knowledge = load_knowledge(_knowledge_dir(directory))
    kinds = Counter(record.kind for record in knowledge.records)
    summary = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items()))
    typer.echo(f"ok: {len(knowledge.records)} records ({summary}), version {knowledge.version}, "
               f"hash {knowledge.content_hash[:12]}")


@app.command("build-index")
def build_index(
    directory: DirOption = None,
    rebuild: Annotated[bool, typer.Option(help="rebuild even when a cached index matches")] = False,
) -> None:
    """Build (or reuse) the FAISS index for the current knowledge content."""
    import time

    started = time.perf_counter()
    with user_errors():
        knowledge, retriever = _open_retriever(directory, rebuild=rebuild)
        phrases = retriever.index.ntotal  # a missing index is built on first use
    typer.echo(f"index: {phrases} phrases of {len(knowledge.records)} records at {retriever.cache_dir} "
               f"({time.perf_counter() - started:.1f} s)")


def _modality_id(knowledge, given: str) -> str:
    """The record id of the modality ``given`` as an id (``modality.chest_xray``) or a label (``chest_xray``)."""
    for record in knowledge.modalities:
        if given in (record.id, record.label):
            return record.id
    fail(f"--modality {given!r} is not a modality of the knowledge base; use one of: "
         f"{', '.join(record.id for record in knowledge.modalities)}")
    raise AssertionError  # unreachable: fail() exits


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="words to look up")],
    k: Annotated[int, typer.Option("-k", help="number of records")] = 5,
    kind: Annotated[Optional[list[str]], typer.Option(help="restrict to a kind (repeatable)")] = None,
    modality: Annotated[Optional[str], typer.Option(help="restrict to a modality id, e.g. modality.chest_xray")] = None,
    directory: DirOption = None,
) -> None:
    """Nearest knowledge records to QUERY by embedding similarity."""
    import typing

    if k < 1:
        fail(f"-k must be at least 1, got {k}")
    with user_errors():
        from clinisynth.agents.requests import check_request
        from clinisynth.knowledge.schema import RecordKind
        from clinisynth.settings import Settings

        query = check_request(query, max_chars=Settings().max_request_chars, what="the query")
        kinds = typing.get_args(RecordKind)
        unknown = [value for value in kind or [] if value not in kinds]
        if unknown:
            fail(f"--kind {unknown[0]!r} is not a record kind; use one of: {', '.join(kinds)}")
        from clinisynth.knowledge import load_knowledge

        knowledge = load_knowledge(_knowledge_dir(directory))
        if modality is not None:
            modality = _modality_id(knowledge, modality)  # before the embedder loads
        knowledge, retriever = _open_retriever(directory, knowledge=knowledge)
        hits = retriever.search(query, k=k, kinds=kind, modality=modality)
    for hit in hits:
        typer.echo(f"{hit.score:.3f}  {hit.id:45s} {knowledge.get(hit.id).term}  (matched: {hit.text})")
