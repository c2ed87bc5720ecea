"""One generation run: validate, run the graph with a SQLite checkpointer, write the trace."""

from __future__ import annotations

import os
import secrets
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from clinisynth.agents.context import Services
from clinisynth.agents.graph import build_graph, recursion_limit
from clinisynth.agents.planner import PlanError, Planner
from clinisynth.agents.state import GraphState
from clinisynth.agents.verifier import Verifier
from clinisynth.generation import limits
from clinisynth.generation.storage import run_state

TRACE_FORMAT = 1


@dataclass
class RunResult:
    """What a run produced.

    Args:
        run_id: the run's id (its folder under ``OUT/runs``).
        status: ``complete`` (all images stored), ``partial``, or ``failed`` (none passed).
        stored: ordered-storage file names, relative to the output dir.
        trace_path: ``OUT/runs/<run_id>/trace.json``.
        trace: the trace as written.
    """

    run_id: str
    status: str
    stored: list[str]
    trace_path: Path
    trace: dict[str, Any]


_run_clock_lock = threading.Lock()
_last_run_micros = 0  # the time (microseconds since the epoch) in the last id this process handed out


def new_run_id() -> str:
    """An id that sorts, as a string, in the order ids were made: ``20261121T101530.123456Z-1a2b3c4d``.

    UTC time to the microsecond, made strictly increasing within the process (two ids in one microsecond,
    or a clock stepped back, take the last time plus 1 µs: the per-process counter), then random hex so
    that ids from different processes never collide. Runs of one process therefore list in creation order
    whatever the clock's resolution; runs of two processes in the same microsecond come in either order.
    """
    global _last_run_micros
    with _run_clock_lock:
        now = time.time_ns() // 1000
        _last_run_micros = now if now > _last_run_micros else _last_run_micros + 1
        stamp = _last_run_micros
    seconds, micros = divmod(stamp, 1_000_000)
    when = datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"{when}.{micros:06d}Z-{secrets.token_hex(4)}"


def validate_run_arguments(
    *, n_images: int, steps: int | None, guidance: float | None, max_rounds: int, max_images: int, best_of: int = 1
) -> None:
    """Reject impossible numbers before anything is loaded or written (``None``: the profile's default)."""
    if n_images < 1:
        raise PlanError(f"-n must be at least 1, got {n_images}")
    if n_images > max_images:
        raise PlanError(f"-n is {n_images}, more than the limit of {max_images}; raise CLINISYNTH_MAX_IMAGES")
    if steps is not None and not limits.MIN_STEPS <= steps <= limits.MAX_STEPS:
        raise PlanError(f"--steps must be between {limits.MIN_STEPS} and {limits.MAX_STEPS}, got {steps}")
    if guidance is not None and not limits.MIN_GUIDANCE <= guidance <= limits.MAX_GUIDANCE:
        raise PlanError(f"--guidance must be between {limits.MIN_GUIDANCE:g} and {limits.MAX_GUIDANCE:g}, got {guidance}")
    if not limits.MIN_ROUNDS <= max_rounds <= limits.MAX_ROUNDS:
        raise PlanError(f"--max-rounds must be between {limits.MIN_ROUNDS} and {limits.MAX_ROUNDS}, got {max_rounds}")
    if not limits.MIN_BEST_OF <= best_of <= limits.MAX_BEST_OF:
        raise PlanError(f"--best-of must be between {limits.MIN_BEST_OF} and {limits.MAX_BEST_OF}, got {best_of}")


def run_generation(
    *,
    planner: Planner,
    generator,
    storage,
    request: str,
    n_images: int,
    seed: int,
    steps: int,
    guidance: float,
    max_rounds: int,
    profile: str,
    run_id: str | None = None,
    verifier: Verifier | None = None,
    best_of: int = 1,
    on_progress: Callable[[str, dict], None] | None = None,
    resume: bool = False,
) -> RunResult:
    """Run the graph once and file what passes, each accepted image as soon as it is verified.

    The plan is checked before the run folder is created, so a description that cannot be planned
    leaves nothing behind. ``runs/<run_id>/trace.json`` is written when the run starts (status
    ``running``, with this process's id) and again at the end with every node's event, every attempt
    (accepted or not) and the final status, also when the run fails half-way.

    Args:
        verifier: decides which candidates are kept; a sanity + duplicate :class:`Verifier` when ``None``.
        best_of: candidates drawn per slot and round; the best that passes every check is kept.
        resume: continue the interrupted run ``run_id`` from its LangGraph checkpoint (``request`` and the
            numbers must be the run's own, see :func:`resumable_run`): no slot is generated or filed twice,
            the counters continue, the trace records each resume.

    Raises:
        PlanError: the description cannot be planned, names no modality or nothing to draw.
    """
    from langgraph.checkpoint.sqlite import SqliteSaver

    if resume:
        if run_id is None:
            raise ValueError("resume needs the run_id of the run to continue")
        run_dir = Path(storage.root) / "runs" / run_id
        trace = storage.read_trace(run_id)
        trace.setdefault("resumed", []).append({"at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                                                "after_status": trace.get("status"), "error": trace.get("error")})
        trace.pop("error", None)
    else:
        plan = planner.plan_for_generation(request)
        # The check above parsed the text; forget it so the traced nodes time their real work.
        planner.reasoner.forget(plan.request)
        run_id = run_id or new_run_id()
        run_dir = Path(storage.root) / "runs" / run_id
        run_dir.mkdir(parents=True, exist_ok=False)
        trace = {
            "format": TRACE_FORMAT,
            "run_id": run_id,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "request": request,
            "parameters": {"n_images": n_images, "seed": seed, "steps": steps, "guidance": guidance,
                           "max_rounds": max_rounds, "best_of": best_of, "profile": profile},
        }
    services = Services(
        planner=planner,
        generator=generator,
        storage=storage,
        run_dir=run_dir,
        verifier=verifier or Verifier(),
        on_progress=on_progress or (lambda event, info: None),
    )
    initial = GraphState(
        request=request.strip(), run_id=run_id, n_images=n_images, seed=seed,
        steps=steps, guidance=guidance, max_rounds=max_rounds, best_of=best_of,
    )
    trace.update({
        "models": dict(generator.model_ids),
        "verifier": services.verifier.describe(),
        "knowledge_version": planner.knowledge.version,
        "status": "running",
        "process": {"pid": os.getpid(), "host": socket.gethostname()},
    })
    storage.write_trace(run_id, trace)  # an interrupted run is listed (status running, its process gone)
    connection = sqlite3.connect(run_dir / "checkpoints.sqlite", check_same_thread=False)
    try:
        graph = build_graph(checkpointer=SqliteSaver(connection))
        config = {"configurable": {"thread_id": run_id}, "recursion_limit": recursion_limit(max_rounds)}
        try:
            if resume and not graph.get_state(config).next:
                raise PlanError(f"run {run_id} has no checkpoint to continue from; start a new run")
            final = graph.invoke(None if resume else initial, config=config, context=services,
                                 durability="sync", version="v2")
            state = GraphState.model_validate(final.value if hasattr(final, "value") else final)
        except BaseException as error:
            snapshot = graph.get_state(config).values
            state = GraphState.model_validate(snapshot) if snapshot else initial
            trace.update(_state_trace(state), status="failed", error=f"{type(error).__name__}: {error}")
            storage.write_trace(run_id, trace)
            raise
    finally:
        connection.close()
    trace.update(_state_trace(state))
    trace.pop("process", None)
    if state.attempts:
        trace["contact_sheet"] = _attempt_sheet(run_dir, state.attempts).name
    trace_path = storage.write_trace(run_id, trace)
    return RunResult(run_id=run_id, status=state.status, stored=list(state.stored), trace_path=trace_path, trace=trace)


def resumable_run(storage, run_id: str) -> dict:
    """The trace of ``run_id`` if the run can be resumed: interrupted (killed) or failed with an error.

    Raises:
        StorageError: no such run. PlanError: the run finished, or is still running.
    """
    trace = storage.read_trace(run_id)
    state = run_state(trace)
    if state == "running":
        raise PlanError(f"run {run_id} is still running (process {trace['process'].get('pid')}); "
                        "resume it once that process has stopped")
    if state != "interrupted" and not trace.get("error"):
        raise PlanError(f"run {run_id} finished ({state}); nothing to resume")
    if not (Path(storage.root) / "runs" / run_id / "checkpoints.sqlite").is_file():
        raise PlanError(f"run {run_id} has no checkpoint to continue from; start a new run")
    return trace


#: Attempts shown on a run's contact sheet (the trace keeps every one).
SHEET_LIMIT = 64
_SHORT_VERDICT = {"accepted": "ok", "passed_not_chosen": "spare"}


def _attempt_sheet(run_dir: Path, attempts: list[dict]) -> Path:
    """``runs/<id>/attempts.png``: the candidates for a reviewer, each labelled slot.round and verdict or failure."""
    from PIL import Image

    from clinisynth.generation.plots import contact_sheet

    shown = attempts[:SHEET_LIMIT]
    images, labels = [], []
    for attempt in shown:
        with Image.open(run_dir / attempt["path"]) as image:
            images.append(image.convert("RGB").resize((96, 96)))
        verdict = _SHORT_VERDICT.get(attempt["verdict"], attempt.get("failure") or attempt["verdict"])
        labels.append(f"{attempt['slot']}.{attempt['round']} {verdict}")
    return contact_sheet(run_dir / "attempts.png", images, columns=min(8, len(images)), labels=labels)


def _state_trace(state: GraphState) -> dict[str, Any]:
    rejected = [a for a in state.attempts if a["verdict"] == "rejected"]
    failures: dict[str, int] = {}
    for attempt in rejected:
        failures[attempt.get("failure") or "unknown"] = failures.get(attempt.get("failure") or "unknown", 0) + 1
    given_up = sorted({a["slot"] for a in state.attempts} - {a["slot"] for a in state.attempts if a["verdict"] == "accepted"})
    return {
        "status": state.status,
        "rounds": state.round,
        "plan": state.plan,
        "events": state.events,
        "attempts": state.attempts,
        "stored": state.stored,
        "summary": {
            "requested": state.n_images,
            "stored": len(state.stored),
            "attempts": len(state.attempts),
            "rejected": len(rejected),
            "rejected_by_failure": failures,
            "verify_seconds": round(sum(a.get("verify_s", 0.0) for a in state.attempts), 4),
            "generate_seconds": round(sum(a.get("elapsed_s", 0.0) for a in state.attempts), 4),
            "given_up_slots": given_up,
        },
    }
