"""Services handed to the nodes through LangGraph's runtime context: never checkpointed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from clinisynth.agents.planner import Planner


@dataclass
class Services:
    """Models, index and storage the nodes use.

    Args:
        planner: the reasoning steps (knowledge + retriever inside).
        generator: the loaded :class:`clinisynth.generation.pipeline.Generator` (loaded before the run starts,
            so a missing model fails before anything is written).
        storage: the :class:`clinisynth.generation.storage.OrderedStorage` of the output dir.
        run_dir: ``OUT/runs/<run_id>``; candidates (accepted or rejected) are kept there for the trace.
        sanity_thresholds: passed to :func:`clinisynth.evaluation.sanity.check_image`.
        on_progress: ``(event, info)`` callback for the CLI's progress display.
    """

    planner: Planner
    generator: Any
    storage: Any
    run_dir: Path
    sanity_thresholds: Any = None
    on_progress: Callable[[str, dict], None] = lambda event, info: None
