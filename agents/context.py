"""Services handed to the nodes through LangGraph's runtime context: never checkpointed."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from clinisynth.agents.planner import Planner
from clinisynth.agents.verifier import Verifier


@dataclass
class Services:
    """Models, index and storage the nodes use.

    Args:
        planner: the reasoning steps (knowledge + retriever inside).
        generator: the loaded :class:`clinisynth.generation.pipeline.Generator` (loaded before the run starts,
            so a missing model fails before anything is written). ``None`` while only the reasoning nodes run
            (:func:`clinisynth.agents.runner.plan_run`: they use the planner alone).
        storage: the :class:`clinisynth.generation.storage.OrderedStorage` of the output dir (``None``: as above).
        run_dir: ``OUT/runs/<run_id>``; candidates (accepted or rejected) are kept there for the trace
            (``None``: as above, nothing is written before the plan is checked).
        verifier: the :class:`clinisynth.agents.verifier.Verifier` (sanity and duplicates at least; classifier,
            CLIP score and memorisation where loaded).
        on_progress: ``(event, info)`` callback for the CLI's progress display.
        stored_embeddings: per storage modality, embeddings of the images other runs stored in the output dir
            (filled on first use by the verify node, extended with what other processes store meanwhile; a
            cache, not state).
        seen_files: the stored images already looked at for ``stored_embeddings``.
    """

    planner: Planner
    generator: Any = None
    storage: Any = None
    run_dir: Path | None = None
    verifier: Verifier = field(default_factory=Verifier)
    on_progress: Callable[[str, dict], None] = lambda event, info: None
    stored_embeddings: dict[str, Any] = field(default_factory=dict)
    seen_files: set[Path] = field(default_factory=set)
