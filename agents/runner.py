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
from clinisynth.agents.plan import Plan
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


def highest_base_seed(*, n_images: int, max_rounds: int, best_of: int) -> int:
    """The largest ``--seed`` whose every attempt seed (:func:`~clinisynth.agents.nodes.attempt_seed`) stays a valid
    sampler seed (at most :data:`~clinisynth.generation.limits.MAX_SEED`)."""
    from clinisynth.agents.nodes import CANDIDATE_SEED_STRIDE, ROUND_SEED_STRIDE

    return limits.MAX_SEED - (max(n_images, 1) - 1) - (max_rounds - 1) * ROUND_SEED_STRIDE - (
        best_of - 1) * CANDIDATE_SEED_STRIDE


def validate_run_arguments(
    *, n_images: int, steps: int | None, guidance: float | None, max_rounds: int, max_images: int, best_of: int = 1,
    seed: int | None = None,
) -> None:
    """Reject impossible numbers before anything is loaded or written (``None``: the profile's default; ``seed``
    ``None``: not checked)."""
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
    if seed is not None:
        highest = highest_base_seed(n_images=n_images, max_rounds=max_rounds, best_of=best_of)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= highest:
            raise PlanError(f"--seed must be a whole number from 0 to {highest} (room for the seeds of every image, "
                            f"round and candidate), got {seed!r}")


#: The node a run's reasoning stops before: everything up to it only reads the request and the knowledge.
FIRST_WRITING_NODE = "generate"


@dataclass
class PlannedRun:
    """A run whose reasoning is done and checked, and nothing written yet.

    :func:`plan_run` runs the graph's own reasoning nodes (localize, pathology, visual map, prompt) on the run's
    thread, checkpointed into an in-memory SQLite database; :func:`run_generation` copies those checkpoints into
    ``runs/<run_id>/checkpoints.sqlite`` and continues the same graph from the generate node. So a run is planned
    once, by its nodes, and the trace and the checkpoint history hold those nodes' real input, output and timing.

    Args:
        run_id: the run's id (the graph's thread id).
        state: the graph state after the prompt node (``plan``, ``events`` of the four reasoning nodes).
        plan: ``state.plan`` as a :class:`Plan`, checked drawable.
        connection: the in-memory checkpoint database.
    """

    run_id: str
    state: GraphState
    plan: Plan
    connection: sqlite3.Connection

    def reseed(self, seed: int, *, max_rounds: int) -> None:
        """Give the planned run the base seed its dataset reserved for it (nothing is planned again): the
        checkpoint the run continues from, and :attr:`state`, carry ``seed`` from now on."""
        from langgraph.checkpoint.sqlite import SqliteSaver

        graph = build_graph(checkpointer=SqliteSaver(self.connection))
        graph.update_state(_graph_config(self.run_id, max_rounds), {"seed": seed}, as_node="prompt")
        self.state = self.state.model_copy(update={"seed": seed})

    def save_checkpoints(self, path: Path) -> sqlite3.Connection:
        """Copy the checkpoints into the database file ``path``; return an open connection to it."""
        target = sqlite3.connect(path, check_same_thread=False)
        self.connection.backup(target)
        self.connection.close()
        return target


def _graph_config(run_id: str, max_rounds: int) -> dict:
    return {"configurable": {"thread_id": run_id}, "recursion_limit": recursion_limit(max_rounds)}


def plan_run(
    *,
    planner: Planner,
    request: str,
    n_images: int,
    seed: int | None,
    steps: int,
    guidance: float,
    max_rounds: int,
    best_of: int = 1,
    run_id: str | None = None,
) -> PlannedRun:
    """Plan a run with the graph's reasoning nodes, and check the plan can be drawn; nothing is written.

    It reports no progress: a request refused here prints only its error. :func:`run_generation` reports these
    nodes' progress events when the run starts.

    ``seed=None`` (a seed the dataset draws when the run starts) plans with base seed 0;
    :func:`run_generation` gives the run its reserved base seed (:meth:`PlannedRun.reseed`).

    This is the only planning a run does: the checks that must come before any write or model load (a modality
    and something to draw here; the generator's coverage and the adapter choice in :func:`clinisynth.api.generate`)
    read :attr:`PlannedRun.plan`, and :func:`run_generation` continues from these nodes without running them again.

    Raises:
        PlanError: the description is empty or too long, or cannot be planned, names no modality or nothing to draw.
    """
    from langgraph.checkpoint.sqlite import SqliteSaver

    text = planner.check_request(request)
    run_id = run_id or new_run_id()
    initial = GraphState(request=text, run_id=run_id, n_images=n_images, seed=0 if seed is None else seed, steps=steps,
                         guidance=guidance, max_rounds=max_rounds, best_of=best_of)
    connection = sqlite3.connect(":memory:", check_same_thread=False)
    try:
        graph = build_graph(checkpointer=SqliteSaver(connection))
        config = _graph_config(run_id, max_rounds)
        graph.invoke(initial, config=config, context=Services(planner=planner),
                     interrupt_before=[FIRST_WRITING_NODE], durability="sync", version="v2")
        state = GraphState.model_validate(graph.get_state(config).values)
        plan = planner.check_drawable(Plan.model_validate(state.plan))
    except BaseException:
        connection.close()
        raise
    return PlannedRun(run_id=run_id, state=state, plan=plan, connection=connection)


def checkpointed_plan(storage, run_id: str) -> Plan:
    """The plan of the interrupted run ``run_id``, from its checkpoint (a resumed run is not planned again).

    Raises:
        PlanError: the run has no checkpoint, or its checkpoint holds no plan.
    """
    from langgraph.checkpoint.sqlite import SqliteSaver

    database = Path(storage.root) / "runs" / run_id / "checkpoints.sqlite"
    if not database.is_file():
        raise PlanError(f"run {run_id} has no checkpoint to continue from; start a new run")
    connection = sqlite3.connect(database, check_same_thread=False)
    try:
        values = build_graph(checkpointer=SqliteSaver(connection)).get_state(
            {"configurable": {"thread_id": run_id}}).values
    finally:
        connection.close()
    if not values or not values.get("plan"):
        raise PlanError(f"run {run_id} was interrupted before its plan was made; start a new run")
    return Plan.model_validate(values["plan"])


def run_generation(
    *,
    planner: Planner,
    generator,
    storage,
    request: str,
    n_images: int,
    seed: int | None,
    steps: int,
    guidance: float,
    max_rounds: int,
    profile: str,
    run_id: str | None = None,
    verifier: Verifier | None = None,
    best_of: int = 1,
    on_progress: Callable[[str, dict], None] | None = None,
    resume: bool = False,
    planned: PlannedRun | None = None,
    adapters: dict[str, Any] | None = None,
    known_embeddings: dict[str, Any] | None = None,
    should_stop: Callable[[], bool] | None = None,
    exact_seed: bool = False,
) -> RunResult:
    """Run the graph once and file what passes, each accepted image as soon as it is verified.

    The run is planned once, by the graph's reasoning nodes (:func:`plan_run`, unless ``planned`` is given), and
    the plan is checked before the run folder is created, so a description that cannot be planned leaves nothing
    behind. ``runs/<run_id>/trace.json`` is written when the run starts (status
    ``running``, with this process's id) and again at the end with every node's event, every attempt
    (accepted or not) and the final status, also when the run fails half-way.

    Before anything else is written, the run's seeds are reserved in the dataset
    (:meth:`~clinisynth.generation.storage.OrderedStorage.reserve_seeds`): ``seed=None`` draws a fresh base seed,
    a given seed is kept unless earlier runs there drew from it (then the run continues with the unused slots).
    The base seed, the one asked for and why they differ go in the trace's ``parameters``.

    Args:
        seed: the base seed asked for; ``None`` to draw a fresh one.
        verifier: decides which candidates are kept; a sanity + duplicate :class:`Verifier` when ``None``.
        best_of: candidates drawn per slot and round; the best that passes every check is kept.
        resume: continue the interrupted run ``run_id`` from its LangGraph checkpoint (``request`` and the
            numbers must be the run's own, see :func:`resumable_run`): no slot is generated or filed twice,
            the counters continue, the trace records each resume.
        planned: this run's :func:`plan_run` (its numbers and request must be these); planned here when ``None``.
        adapters: the LoRA adapters the generator runs with and why (see :func:`clinisynth.api.generate`), kept in
            the trace under ``adapters`` and, for a resume, in ``parameters``.
        known_embeddings: per storage modality, the embeddings the duplicate check compares against instead of
            the images under ``storage`` (a campaign worker runs into a scratch storage; the driver, which files
            the images, sends it those of the dataset, see ``clinisynth.curation.remote``).
        should_stop: asked after every graph step (node); when it answers true the run stops there, keeping every
            image filed so far, with status ``cancelled`` in the result and the trace (``cancelled``: when and
            after which node).
        exact_seed: keep ``seed`` even where earlier runs in the dataset drew from it (it is still reserved, so
            later runs avoid it): a campaign's slot seeds, derived from the campaign seed, item and slot, must be
            the same whether the slots run in this process or on any number of workers.

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
        # A run made before seed reservations keeps the seeds its checkpoint holds; later runs then avoid them.
        storage.reserve_seeds(run_id=run_id, seed=seed, n_images=n_images, max_rounds=max_rounds, best_of=best_of,
                              keep=True)
        trace.pop("cancelled", None)
    else:
        if planned is None:
            planned = plan_run(planner=planner, request=request, n_images=n_images, seed=seed, steps=steps,
                               guidance=guidance, max_rounds=max_rounds, best_of=best_of, run_id=run_id)
        else:
            _check_planned(planned, request=request, n_images=n_images, seed=seed, steps=steps, guidance=guidance,
                           max_rounds=max_rounds, best_of=best_of, run_id=run_id)
        run_id = planned.run_id
        run_dir = Path(storage.root) / "runs" / run_id
        # Under the dataset lock, before any image: concurrent runs into this dataset never draw one seed.
        reservation = storage.reserve_seeds(run_id=run_id, seed=seed, n_images=n_images, max_rounds=max_rounds,
                                            best_of=best_of, keep=exact_seed and seed is not None)
        if reservation.base != planned.state.seed:
            planned.reseed(reservation.base, max_rounds=max_rounds)
        seed = reservation.base
        trace = {
            "format": TRACE_FORMAT,
            "run_id": run_id,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "request": request,
            "parameters": {"n_images": n_images, "seed": seed, "steps": steps, "guidance": guidance,
                           "guidance_interval": list(generator.guidance_interval), "max_rounds": max_rounds,
                           "best_of": best_of, "profile": profile,
                           "seed_requested": reservation.requested},
            "plan": planned.state.plan,
        }
        if reservation.note:
            trace["parameters"]["seed_note"] = reservation.note
        if adapters is not None:
            trace["parameters"]["adapters"] = [{key: entry[key] for key in ("name", "path", "weight", "card_sha256")}
                                               for entry in adapters.get("chosen", [])]
            trace["adapters"] = adapters
    services = Services(
        planner=planner,
        generator=generator,
        storage=storage,
        run_dir=run_dir,
        verifier=verifier or Verifier(),
        on_progress=on_progress or (lambda event, info: None),
        stored_embeddings=dict(known_embeddings or {}),
    )
    initial = planned.state if planned is not None else GraphState(
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
    if resume:
        connection = sqlite3.connect(run_dir / "checkpoints.sqlite", check_same_thread=False)
    else:
        run_dir.mkdir(parents=True, exist_ok=False)
        # The reasoning nodes' checkpoints first: the run continues (and a resume starts) after them.
        connection = planned.save_checkpoints(run_dir / "checkpoints.sqlite")
    storage.write_trace(run_id, trace)  # an interrupted run is listed (status running, its process gone)
    if not resume:
        for event in planned.state.events:  # the reasoning nodes ran silently before the first write
            services.on_progress("node", {"node": event["node"], "elapsed_ms": event["elapsed_ms"]})
    try:
        graph = build_graph(checkpointer=SqliteSaver(connection))
        config = _graph_config(run_id, max_rounds)
        try:
            if resume and not graph.get_state(config).next:
                raise PlanError(f"run {run_id} has no checkpoint to continue from; start a new run")
            # Both a new run and a resumed one continue from their checkpoint: a new one after its prompt node.
            cancelled = _run_steps(graph, config=config, services=services, should_stop=should_stop)
            state = GraphState.model_validate(graph.get_state(config).values)
            if cancelled is not None:
                state = state.model_copy(update={"status": CANCELLED})
                trace["cancelled"] = cancelled
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


#: Status of a run stopped by ``should_stop`` (the images filed before it are kept).
CANCELLED = "cancelled"


def _run_steps(graph, *, config: dict, services: Services, should_stop: Callable[[], bool] | None) -> dict | None:
    """Run the graph from its checkpoint step by step; stop after the step where ``should_stop()`` turns true.

    Returns:
        ``None`` when the graph ran to its end, else ``{"at", "after_node"}`` of the stop.
    """
    # "updates" yields once per finished step, after its checkpoint is written (durability "sync").
    for update in graph.stream(None, config=config, context=services, durability="sync", stream_mode="updates"):
        if should_stop is not None and should_stop() and graph.get_state(config).next:
            return {"at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                    "after_node": next(iter(update), None)}
    return None


def _check_planned(planned: PlannedRun, *, request: str, run_id: str | None, **numbers) -> None:
    state = planned.state
    if numbers.get("seed") is None:  # a seed the dataset draws: planned with 0
        numbers["seed"] = 0
    differs = [name for name, value in numbers.items() if getattr(state, name) != value]
    if state.request != request.strip() or differs or (run_id is not None and run_id != planned.run_id):
        raise ValueError(f"the planned run {planned.run_id} was planned for other settings ({differs or 'request'}); "
                         "plan it with these")


def resumable_run(storage, run_id: str) -> dict:
    """The trace of ``run_id`` if the run can be resumed: interrupted (killed), cancelled, or failed with an error.

    Raises:
        StorageError: no such run. PlanError: the run finished, or is still running.
    """
    trace = storage.read_trace(run_id)
    state = run_state(trace)
    if state == "running":
        raise PlanError(f"run {run_id} is still running (process {trace['process'].get('pid')}); "
                        "resume it once that process has stopped")
    if state not in ("interrupted", CANCELLED) and not trace.get("error"):
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
