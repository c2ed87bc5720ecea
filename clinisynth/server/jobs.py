"""Generation jobs: a bounded queue, one worker thread, per-job event logs that SSE clients follow.

The worker calls :func:`clinisynth.api.generate`, the one run path: models load once per process (the API keeps
the planner and the generator), every image is filed as it passes, and Cancel stops the run at the next graph
step (``should_stop``) with the images accepted so far kept and the trace saying ``cancelled``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from clinisynth.server.errors import ApiError

log = logging.getLogger("clinisynth.server")

#: Job states before the run's own status (complete, partial, failed, cancelled) or ``error``.
QUEUED, RUNNING, ERROR, CANCELLED = "queued", "running", "error", "cancelled"
ACTIVE = (QUEUED, RUNNING)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class Job:
    """One request to generate (or resume) a run, and everything it reported.

    Args:
        id: the job id (``/api/jobs/{id}``).
        owner: the token that submitted it (``local`` without tokens), for the per-token running-job limit.
        options: the :func:`clinisynth.api.generate` keyword arguments (``text``, ``n``, ...), or ``resume``, or
            ``campaign`` (a campaign file's text).
        run_id: the run it makes (chosen before it starts, so clients can follow the run at once); for a campaign,
            the run of the chunk now being generated (``None`` between runs).
    """

    id: str
    owner: str
    options: dict[str, Any]
    run_id: str | None
    status: str = QUEUED
    created_at: str = field(default_factory=_now)
    started_at: str | None = None
    finished_at: str | None = None
    stored: list[str] = field(default_factory=list)
    error: str | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    events: list[dict] = field(default_factory=list)
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    changed: asyncio.Event | None = None

    @property
    def finished(self) -> bool:
        return self.status not in ACTIVE

    def summary(self) -> dict[str, Any]:
        """The job as ``GET /api/jobs/{id}`` answers it."""
        with self.lock:
            return {"id": self.id, "status": self.status, "run_id": self.run_id, "stored": list(self.stored),
                    "n_stored": len(self.stored), "requested": self.options.get("n"), "progress": dict(self.progress),
                    "error": self.error, "cancel_requested": self.cancel_requested.is_set(),
                    "created_at": self.created_at, "started_at": self.started_at, "finished_at": self.finished_at,
                    "request": self.options.get("text"), "resume": self.options.get("resume"),
                    "kind": "campaign" if "campaign" in self.options else "run", "n_events": len(self.events)}


class JobManager:
    """Runs jobs one at a time in a worker thread, from a queue of at most ``queue_size`` waiting jobs.

    Args:
        out: the output dir (ordered storage) every job writes into.
        settings: the :class:`~clinisynth.settings.Settings` of every run.
        profile: the model profile of every run (``None``: the settings').
        queue_size: waiting jobs accepted before ``POST /api/jobs`` answers 503.
        max_running_per_token: queued or running jobs one token may have at once (429 beyond).
    """

    def __init__(self, *, out: Path, settings, profile: str | None = None, queue_size: int = 8,
                 max_running_per_token: int = 2) -> None:
        self.out = Path(out)
        self.settings = settings
        self.profile = profile
        self.max_running_per_token = max_running_per_token
        self.jobs: dict[str, Job] = {}
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: threading.Thread | None = None

    # Life cycle ---------------------------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the worker; SSE clients are woken on ``loop``."""
        self._loop = loop
        self._worker = threading.Thread(target=self._work, name="clinisynth-jobs", daemon=True)
        self._worker.start()

    def stop(self) -> None:
        """Cancel every job, let the running one stop at its next step, and end the worker."""
        with self._lock:
            jobs = list(self.jobs.values())
        for job in jobs:
            if not job.finished:
                job.cancel_requested.set()
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join()
            self._worker = None

    def warm(self) -> None:
        """Load what every job needs before the first request: the planner, and the generator's profile built."""
        from clinisynth import api

        api.get_planner(self.settings)
        api.resolve_generator_profile(self.profile or self.settings.profile, settings=self.settings)

    # Jobs ---------------------------------------------------------------------------------------------------

    def submit(self, *, owner: str, options: dict[str, Any]) -> Job:
        """Queue a job.

        Raises:
            ApiError: 429 when ``owner`` has ``max_running_per_token`` jobs queued or running; 503 when the queue
                is full.
        """
        from clinisynth.agents.runner import new_run_id

        with self._lock:
            active = sum(1 for job in self.jobs.values() if job.owner == owner and not job.finished)
            if active >= self.max_running_per_token:
                raise ApiError(429, f"this token already has {active} job(s) queued or running (the limit is "
                                    f"{self.max_running_per_token}); wait for one to finish or cancel it")
            run_id = None if "campaign" in options else options.get("resume") or new_run_id()
            if options.get("resume") and any(job.run_id == run_id and not job.finished for job in self.jobs.values()):
                raise ApiError(409, f"run {run_id} is already being resumed by another job")
            job = Job(id=uuid.uuid4().hex[:16], owner=owner, options=options, run_id=run_id)
            # Its first event before the worker can see it: "queued" always comes before "running".
            job.events.append({"seq": 0, "event": "status", "data": {"status": QUEUED}, "time": time.time()})
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                raise ApiError(503, f"the job queue is full ({self._queue.maxsize} waiting); try again once a job "
                                    "has finished") from None
            self.jobs[job.id] = job
        return job

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self.jobs.get(job_id)
        if job is None:
            raise ApiError(404, f"no job {job_id!r}; GET /api/jobs lists this server's jobs", field="id")
        return job

    def list(self) -> list[dict]:
        with self._lock:
            jobs = list(self.jobs.values())
        return [job.summary() for job in jobs]

    def cancel(self, job_id: str) -> Job:
        """Ask a job to stop: a queued one never starts; a running one stops after its current graph step."""
        job = self.get(job_id)
        if job.finished:
            return job
        job.cancel_requested.set()
        self._publish(job, "cancel_requested", {})
        return job

    def active_run_ids(self) -> set[str]:
        with self._lock:
            return {job.run_id for job in self.jobs.values() if not job.finished and job.run_id is not None}

    # Events -------------------------------------------------------------------------------------------------

    def _publish(self, job: Job, event: str, data: dict) -> None:
        with job.lock:
            job.events.append({"seq": len(job.events), "event": event, "data": data, "time": time.time()})
        if self._loop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._wake, job)
            except RuntimeError:  # the loop closed meanwhile: nobody is listening
                pass

    @staticmethod
    def _wake(job: Job) -> None:
        changed, job.changed = job.changed, asyncio.Event()
        if changed is not None:
            changed.set()

    def waiter(self, job: Job) -> asyncio.Event:
        """The event set at the job's next change (call on the app's loop, before reading ``job.events``)."""
        if job.changed is None:
            job.changed = asyncio.Event()
        return job.changed

    # The worker ---------------------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if job.cancel_requested.is_set():
                self._finish(job, CANCELLED, error=None)
                continue
            self._run(job)

    def _run(self, job: Job) -> None:
        from clinisynth.cli.errors import user_error_types

        with job.lock:
            job.status, job.started_at = RUNNING, _now()
        self._publish(job, "status", {"status": RUNNING, "run_id": job.run_id})
        try:
            status, error = self._run_campaign(job) if "campaign" in job.options else self._run_generation(job)
        except user_error_types() as failure:
            lines = str(failure).strip().splitlines()
            self._finish(job, ERROR, error=lines[0] if lines else type(failure).__name__)
        except Exception as failure:  # noqa: BLE001 - a bug in a run must not end the worker
            log.exception("job %s failed", job.id)
            self._finish(job, ERROR, error=f"internal error ({type(failure).__name__}); the server log has the details")
        else:
            self._finish(job, status, error=error)

    def _run_generation(self, job: Job) -> tuple[str, str | None]:
        """A run job: :func:`clinisynth.api.generate`; its status and error."""
        from clinisynth import api

        def on_progress(event: str, info: dict) -> None:
            with job.lock:
                if event == "image":
                    job.progress = {"round": info.get("round"), "done": info.get("done"), "total": info.get("total")}
                elif event == "stored":
                    job.stored.append(info["file_name"])
                elif event == "node":
                    job.progress = {**job.progress, "node": info.get("node")}
            self._publish(job, event, dict(info))

        options = dict(job.options)
        result = api.generate(options.pop("text", "") or "", out=self.out, settings=self.settings,
                              profile=options.pop("profile", None) or (None if options.get("resume") else self.profile),
                              on_progress=on_progress, should_stop=job.cancel_requested.is_set,
                              run_id=None if options.get("resume") else job.run_id, **options)
        with job.lock:
            job.stored = list(result.stored)
        return result.status, result.trace.get("error")

    def _run_campaign(self, job: Job) -> tuple[str, str | None]:
        """A campaign job: ``clinisynth.curate`` into the output dir (submitting the same campaign again resumes
        it); its status and error."""
        from clinisynth.campaigns import curate
        from clinisynth.curation.journal import Journal, journal_path
        from clinisynth.generation.storage import OrderedStorage

        def on_progress(event: str, info: dict) -> None:
            with job.lock:
                if event == "campaign":
                    job.progress = {"done": info.get("done"), "total": info.get("total")}
                elif event in ("slot", "chunk"):
                    job.progress = {**job.progress, "done": info.get("campaign_done"), "item": info.get("item")}
                elif event == "run":
                    job.run_id = info.get("run_id")
                elif event == "planned":
                    job.progress = {"planned": info.get("done"), "to_plan": info.get("total")}
            self._publish(job, event, dict(info))

        settings = self.settings if self.profile is None else self.settings.model_copy(update={"profile": self.profile})
        with campaign_file(job.options["campaign"]) as path:
            result = curate(path, out=self.out, settings=settings, on_progress=on_progress,
                            should_stop=job.cancel_requested.is_set)
        with Journal.open(journal_path(self.out), read_only=True) as journal:
            runs = {run["run_id"] for run in journal.runs()}
        # Read from the dataset, not the journal's slots: a cancelled run's images are filed, its chunk still open.
        stored = [row["file_name"] for row in OrderedStorage(self.out).read_metadata() if row.get("run_id") in runs]
        with job.lock:
            job.stored, job.run_id = stored, None
            job.progress = {**job.progress, "counts": dict(result.counts)}
        return (CANCELLED if result.cancelled else "complete" if result.counts["given_up"] == 0 else "partial"), None

    def _finish(self, job: Job, status: str, *, error: str | None) -> None:
        with job.lock:
            job.status, job.error, job.finished_at = status, error, _now()
        self._publish(job, "end", {"status": status, "stored": list(job.stored), "error": error, "run_id": job.run_id})


def process_is_this_one(trace: dict) -> bool:
    """Whether ``trace`` says it is being written by this process (its pid and host)."""
    import socket

    process = trace.get("process") or {}
    return process.get("pid") == os.getpid() and process.get("host") == socket.gethostname()


@contextmanager
def campaign_file(text: str) -> Iterator[Path]:
    """``text`` as ``campaign.yaml`` in a private temporary folder (errors name the file ``campaign.yaml``)."""
    with tempfile.TemporaryDirectory(prefix="clinisynth-campaign-") as folder:
        path = Path(folder) / "campaign.yaml"
        path.write_text(text, encoding="utf-8")
        yield path


def check_campaign_text(text: str) -> None:
    """Refuse a campaign job whose file is wrong (unknown keys, types, counts) before it is queued.

    Raises:
        ApiError: 422 naming ``campaign`` with the campaign check's own message (its line numbers).
    """
    from clinisynth.curation.spec import CampaignError, load_campaign

    with campaign_file(text) as path:
        try:
            load_campaign(path)  # inline items only (the schema refuses items_file), so no row is left to check
        except CampaignError as error:
            raise ApiError(422, f"campaign: {str(error).strip()}", field="campaign") from None
