"""Campaign workers on Ray: each an actor holding one loaded planner, generator and verifier (one GPU each when the
cluster has GPUs), running chunks the driver hands out; the driver alone writes the dataset, in campaign order.

:func:`ray_session` starts a local Ray (``ray.init(num_cpus=N)``) or joins a cluster; :class:`WorkerPool` keeps N
actors and replaces one that dies; :func:`run_campaign_on_workers` is the driver loop: it gives each open chunk of
the journal its run, sends it to an idle worker, and files the results in chunk order (``curation/remote.py``).
A worker that dies (killed, out of memory, its node gone) has its chunk sent again, under the same run and seeds:
nothing it did was filed, so nothing is lost or filed twice.
"""

from __future__ import annotations

import bisect
import os
import re
import socket
from collections import Counter
from contextlib import contextmanager
from typing import Callable, Iterator

from clinisynth.curation.journal import Chunk, Journal
from clinisynth.curation.spec import CampaignError

RAY_MISSING = ('--workers above 1 and --ray-address need Ray, which is not installed; install it with '
               'pip install "clinisynth[ray]" (or run with --workers 1, in this process)')

#: Chunks sent ahead of the first one not yet filed, per worker: bounds the results the driver holds.
WINDOW_PER_WORKER = 2


def import_ray():
    """``ray``, or a :class:`CampaignError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise CampaignError(RAY_MISSING) from None
    return ray


@contextmanager
def ray_session(*, workers: int, address: str | None) -> Iterator[object]:
    """Ray for one campaign: a local instance with ``workers`` CPUs, or the cluster at ``address``; shut down
    (or left, for a cluster) at the end, also on an error or Ctrl-C."""
    ray = import_ray()
    if ray.is_initialized():  # a caller's own Ray (the Python API inside a Ray program): use it, leave it up
        yield ray
        return
    options = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    try:
        if address is None:
            ray.init(num_cpus=workers, **options)
        else:
            ray.init(address=address, **options)
    except (ConnectionError, ValueError, RuntimeError) as error:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise CampaignError(f"cannot start {where}: {str(error).splitlines()[0]}"
                            + ("; check --ray-address (e.g. ray://head:10001 or auto)" if address else "")) from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _rss_bytes() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class CampaignWorker:
    """One worker: a planner, generator and verifier loaded once, running chunks (``remote.run_detached``).

    Made a Ray actor by :class:`WorkerPool`; plain Python otherwise.

    Args:
        load: ``() -> (planner, generator, verifier)``, called once in the worker's process (a picklable function:
            ``clinisynth.campaigns.load_worker_models`` with the campaign's settings).
        run_settings: the campaign's :class:`~clinisynth.curation.worker.RunSettings`.
        adapters_dir: the adapters folder (the setting ``adapters_dir``; the shipped one when ``None``).
    """

    def __init__(self, *, load: Callable[[], tuple], run_settings, adapters_dir=None) -> None:
        self.planner, self.generator, self.verifier = load()
        self.run_settings = run_settings
        self.adapters_dir = adapters_dir
        self.chunks = 0

    def run(self, work):
        """Run one :class:`~clinisynth.curation.remote.ChunkWork`; returns its
        :class:`~clinisynth.curation.remote.ChunkResult`."""
        from clinisynth.curation.adapters import use_campaign_adapters
        from clinisynth.curation.remote import run_detached

        record = use_campaign_adapters(self.generator, specs=work.adapters, adapters_dir=self.adapters_dir,
                                       knowledge=self.planner.knowledge, modality=work.modality, label=work.label)
        result = run_detached(work, planner=self.planner, generator=self.generator, verifier=self.verifier,
                              settings=self.run_settings, adapters=record)
        self.chunks += 1
        result.worker = self.describe()
        return result

    def embed(self, pngs: list[bytes]):
        """Duplicate embeddings of PNG-encoded images (those already in the dataset when a driver starts)."""
        import io

        import numpy as np
        from PIL import Image

        rows = []
        for data in pngs:
            with Image.open(io.BytesIO(data)) as image:
                rows.append(np.asarray(self.verifier.embed(image), dtype=np.float32))
        return np.stack(rows) if rows else np.zeros((0, 0), np.float32)

    def describe(self) -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname(), "device": str(self.generator.device),
                "rss_bytes": _rss_bytes(), "chunks": self.chunks}


def _cause(error: BaseException) -> str:
    """The line of a Ray error that names the exception inside the worker (``KindError: message``)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    causes = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception): ", line)]
    return (causes[-1] if causes else lines[0] if lines else type(error).__name__)[:500]


class WorkerPool:
    """``count`` Ray actors of :class:`CampaignWorker`; one that dies is replaced (at most ``max_replacements``
    times in a campaign, then the campaign stops with the last error).

    Args:
        ray: the ``ray`` module, initialised.
        count: workers to keep.
        options: :class:`CampaignWorker`'s keyword arguments.
        worker_class: the class made an actor; :class:`CampaignWorker` (looked up when the pool starts) when ``None``.
        max_replacements: deaths survived; default ``2 * count + 2``.
    """

    def __init__(self, *, ray, count: int, options: dict, worker_class=None,
                 max_replacements: int | None = None) -> None:
        self.ray = ray
        self.count = count
        self._options = options
        gpus = ray.cluster_resources().get("GPU", 0)
        self._actor_class = ray.remote(num_cpus=1, num_gpus=1 if gpus >= 1 else 0)(worker_class or CampaignWorker)
        self.max_replacements = 2 * count + 2 if max_replacements is None else max_replacements
        self.replaced = 0
        self.actors = [self._start() for _ in range(count)]
        try:  # loaded before any chunk is sent: a worker that cannot load its models is bad setup, not a death
            ray.get([actor.describe.remote() for actor in self.actors])
        except ray.exceptions.RayActorError as error:
            raise CampaignError(f"campaign workers could not start: {_cause(error)}") from None

    def _start(self):
        return self._actor_class.remote(**self._options)

    def replace(self, actor, error: BaseException):
        """A new actor in place of ``actor``, which died with ``error``."""
        self.replaced += 1
        if self.replaced > self.max_replacements:
            raise CampaignError(f"campaign workers died {self.replaced} times (last: {_cause(error)}); "
                                "the journal keeps what was filed; fix the cause and run the campaign again")
        index = self.actors.index(actor)
        self.actors[index] = self._start()
        return self.actors[index]

    def describe(self) -> list[dict]:
        return self.ray.get([actor.describe.remote() for actor in self.actors])

    def embed(self, pngs: list[bytes]):
        return self.ray.get(self.actors[0].embed.remote(pngs))


def run_campaign_on_workers(journal: Journal, pool: WorkerPool, *, storage, chunk_size: int,
                            adapters_of: Callable[[str], list[str] | None] = lambda key: None,
                            on_progress: Callable[[str, dict], None] | None = None) -> dict:
    """Run every open chunk of the journal on the pool's workers; file and record each in chunk order.

    A chunk started before (an earlier session, in this process or on workers) keeps its run: a finished run the
    journal missed is recorded from its trace, any other is run again whole under the same run id (the slots it
    filed are given back by the idempotent store, not filed twice).

    Args:
        adapters_of: ``item key -> adapters`` the item draws with (``None``: the run path's choice by plan).
        on_progress: ``(event, info)``: ``campaign``, ``item``, ``slot``, ``chunk`` as in one process, plus
            ``sending`` then ``sent`` (``run_id``, ``item``, ``first_slot``, ``worker``: the actor) and ``requeued``
            (``run_id``, ``error``).

    Returns:
        As :func:`clinisynth.curation.scheduler.run_campaign`, plus ``requeued`` (chunks sent again after their
        worker died), ``conflicts`` (chunks sent again to check duplicates against the whole dataset) and
        ``workers`` (each worker's pid, host, device, memory and chunks at the end).
    """
    from clinisynth.curation.remote import ChunkWork, conflicts, file_result, load_known_images
    from clinisynth.curation.scheduler import _settle, announce_campaign

    ray = pool.ray
    notify = on_progress or (lambda event, info: None)
    done_by_item, decided = announce_campaign(journal, notify)
    chunks = journal.open_chunks(chunk_size)
    known = load_known_images(storage, sorted({chunk.item.modality for chunk in chunks}), embed=pool.embed) \
        if chunks else None
    ran = Counter()
    queue = list(range(len(chunks)))  # chunk indexes to send, kept sorted
    settled: dict[int, Chunk] = {}
    results: dict[int, tuple] = {}  # index -> ("outcome", Outcome) | ("result", ChunkResult, mark)
    in_flight: dict = {}  # object ref -> (index, actor, mark)
    idle = list(pool.actors)
    next_to_file = 0
    window = WINDOW_PER_WORKER * pool.count
    while next_to_file < len(chunks):
        while queue and idle and queue[0] < next_to_file + window:
            index = queue.pop(0)
            chunk = settled.get(index)
            if chunk is None:
                item = chunks[index].item
                notify("item", {"item": item.key, "label": item.label, "count": item.count,
                                "done": done_by_item[item.item]})
                chunk, resume, outcome = _settle(chunks[index], journal=journal, storage=storage)
                settled[index] = chunk
                ran["recorded" if outcome is not None else "resumed" if resume else "new"] += 1
                if outcome is not None:
                    results[index] = ("outcome", outcome)
                    continue
            actor = idle.pop(0)
            # Sent at the filing frontier, a chunk sees every earlier chunk's images: it cannot conflict.
            mark = known.mark(chunk.item.modality)
            work = ChunkWork.of(chunk, known=known.since(chunk.item.modality, without_run=chunk.run_id),
                                adapters=adapters_of(chunk.item.key))
            sending = {"run_id": chunk.run_id, "item": chunk.item.key, "first_slot": chunk.first_slot, "worker": actor}
            notify("sending", sending)
            in_flight[actor.run.remote(work)] = (index, actor, mark)
            notify("sent", sending)
        while next_to_file in results:
            index = next_to_file
            chunk = settled[index]
            entry = results.pop(index)
            if entry[0] == "result":
                _, result, mark = entry
                if conflicts(result, extra=known.since(chunk.item.modality, mark, without_run=chunk.run_id)):
                    ran["conflicts"] += 1
                    bisect.insort(queue, index)
                    break
                outcome = file_result(result, chunk=chunk, storage=storage, known=known, mark=mark)
                for number, _ in enumerate(result.images, start=1):
                    notify("slot", {"item": chunk.item.key, "done": done_by_item[chunk.item.item] + number,
                                    "campaign_done": decided + number})
            else:
                outcome = entry[1]
            journal.finish_run(chunk, status=outcome.status, stored=outcome.stored, seconds=outcome.seconds)
            done_by_item[chunk.item.item] += chunk.n
            decided += chunk.n
            notify("chunk", {"item": chunk.item.key, "done": done_by_item[chunk.item.item], "count": chunk.item.count,
                             "campaign_done": decided, "run_id": chunk.run_id, "status": outcome.status})
            next_to_file += 1
        if next_to_file >= len(chunks) or (next_to_file in results):
            continue
        if not in_flight:
            raise RuntimeError(f"campaign driver: chunk {next_to_file} is neither sent nor done")  # a bug, not input
        ready, _ = ray.wait(list(in_flight), num_returns=1)
        for ref in ready:
            index, actor, mark = in_flight.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayActorError as error:
                # The worker died with the chunk: nothing of it was filed; send it again, under the same run.
                ran["requeued"] += 1
                bisect.insort(queue, index)
                notify("requeued", {"run_id": settled[index].run_id, "error": _cause(error)})
                idle.append(pool.replace(actor, error))
                continue
            except ray.exceptions.RayTaskError as error:
                raise error.as_instanceof_cause() from None
            results[index] = ("result", result, mark)
            idle.append(actor)
    return {"counts": journal.counts(), "runs": ran["new"] + ran["resumed"], "resumed": ran["resumed"],
            "recorded": ran["recorded"], "requeued": ran["requeued"], "conflicts": ran["conflicts"],
            "workers": pool.describe()}
