"""One worker: a loaded planner, generator and verifier that runs one chunk of an item's slots as a generation run.

The run is the ordinary graph run (``clinisynth.agents.runner.run_generation``): planned, generated, verified
and filed as each image passes, traced under ``DIR/runs/<run_id>/``, resumable from its checkpoint.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from clinisynth.curation.journal import Chunk


@dataclass(frozen=True)
class RunSettings:
    """The campaign-wide numbers every run of the campaign uses (already resolved: no ``None``)."""

    profile: str
    steps: int
    guidance: float
    max_rounds: int
    best_of: int

    def as_dict(self) -> dict:
        return {"profile": self.profile, "steps": self.steps, "guidance": self.guidance,
                "max_rounds": self.max_rounds, "best_of": self.best_of}


@dataclass
class Outcome:
    """What a run gave: its status and, per slot of the chunk (0-based), the stored file name and seed."""

    run_id: str
    status: str
    stored: dict[int, tuple[str, int]]
    seconds: float = 0.0
    summary: dict = field(default_factory=dict)


def outcome_of_trace(run_id: str, trace: dict, seconds: float = 0.0) -> Outcome:
    """The stored slots of a finished run, read from its trace (each accepted attempt's ``stored_as``)."""
    stored = {attempt["slot"]: (attempt["stored_as"], attempt["seed"]) for attempt in trace.get("attempts", [])
              if attempt.get("verdict") == "accepted" and attempt.get("stored_as")}
    return Outcome(run_id=run_id, status=trace.get("status", "?"), stored=stored, seconds=seconds,
                   summary=trace.get("summary") or {})


class InProcessWorker:
    """Runs chunks in this process with models loaded once.

    Args:
        planner, generator, verifier: loaded once for the whole campaign.
        storage: the campaign's :class:`~clinisynth.generation.storage.OrderedStorage`.
        settings: the campaign's run settings.
        adapters_of: ``item key -> adapters`` the item draws with (``None``: the run path's choice by plan).
        adapters_dir: the adapters folder (the setting ``adapters_dir``; the shipped one when ``None``).
    """

    def __init__(self, *, planner, generator, verifier, storage, settings: RunSettings,
                 adapters_of: Callable[[str], list[str] | None] = lambda key: None,
                 adapters_dir=None) -> None:
        self.planner = planner
        self.generator = generator
        self.verifier = verifier
        self.storage = storage
        self.settings = settings
        self.adapters_of = adapters_of
        self.adapters_dir = adapters_dir

    def run(self, chunk: Chunk, *, resume: bool, on_progress: Callable[[str, dict], None] | None = None,
            should_stop: Callable[[], bool] | None = None) -> Outcome:
        """Run (or, with ``resume``, continue) the chunk's generation run ``chunk.run_id``; ``should_stop`` as in
        :func:`clinisynth.agents.runner.run_generation` (a stopped run's status is ``cancelled``)."""
        from clinisynth.agents.runner import run_generation
        from clinisynth.curation.adapters import use_campaign_adapters

        started = time.perf_counter()
        # A resumed run reads its adapters from its trace; the generator must carry the same ones again.
        record = use_campaign_adapters(self.generator, specs=self.adapters_of(chunk.item.key),
                                       adapters_dir=self.adapters_dir, knowledge=self.planner.knowledge,
                                       modality=chunk.item.modality, label=chunk.item.label)
        result = run_generation(
            planner=self.planner, generator=self.generator, storage=self.storage, verifier=self.verifier,
            request=chunk.item.description, n_images=chunk.n, seed=chunk.seed, steps=self.settings.steps,
            guidance=self.settings.guidance, max_rounds=self.settings.max_rounds, best_of=self.settings.best_of,
            profile=self.settings.profile, run_id=chunk.run_id, resume=resume, on_progress=on_progress,
            adapters=None if resume else record, should_stop=should_stop, exact_seed=True)
        return outcome_of_trace(result.run_id, result.trace, seconds=time.perf_counter() - started)
