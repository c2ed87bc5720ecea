"""A chunk run on a worker that does not write the dataset, and the driver part that files what it returns.

On Ray (``curation/ray_workers.py``) each worker runs a chunk's ordinary generation run (graph, verifier, trace) into
a scratch storage of its own and returns the accepted images with their metadata and embeddings, the run's trace
and its folder (:class:`ChunkResult`); only the driver writes the dataset (:func:`file_result`), in campaign order,
so file names, counters and ``metadata.jsonl`` come out exactly as a run in one process gives them.

Duplicates: a worker checks its candidates against the dataset as the driver had filed it when the chunk was sent
(:class:`KnownImages`) plus its own run. When the driver files the chunk, every earlier chunk is filed; it checks the
accepted images against what was filed since the chunk was sent. A duplicate there means the worker decided on
too little: the chunk is sent again with the whole dataset (a conflict, rare); otherwise the recorded duplicate
similarity is the highest of both, the value a run in one process records.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clinisynth.curation.journal import Chunk
from clinisynth.curation.worker import Outcome, RunSettings

#: Not shipped from a worker: a chunk that did not finish is run again whole, never resumed from a checkpoint.
LEFT_ON_WORKER = ("checkpoints.sqlite",)


@dataclass
class ChunkWork:
    """What the driver sends a worker: one chunk of an item's slots and the dataset's embeddings to check against.

    Args:
        run_id: the run the journal gave the chunk.
        description, modality, label: the item's.
        first_slot, n, seed: the chunk's slots and the run's base seed (:attr:`Chunk.seed`).
        known: embeddings of the images of ``modality`` filed so far (other runs), or ``None`` when there are none.
        adapters: the adapters to draw with (``"NAME_OR_PATH[:WEIGHT]"``), or ``None`` for the usual choice.
    """

    run_id: str
    description: str
    modality: str
    label: str
    first_slot: int
    n: int
    seed: int
    known: np.ndarray | None = None
    adapters: list[str] | None = None

    @classmethod
    def of(cls, chunk: Chunk, *, known: np.ndarray | None, adapters: list[str] | None = None) -> "ChunkWork":
        item = chunk.item
        return cls(run_id=chunk.run_id, description=item.description, modality=item.modality, label=item.label,
                   first_slot=chunk.first_slot, n=chunk.n, seed=chunk.seed, known=known, adapters=adapters)


@dataclass
class AcceptedImage:
    """One image the worker's run accepted, in the order the run filed it.

    Args:
        slot: the run's slot (0-based).
        file_name: its name in the worker's scratch storage (the trace names it so until the driver files it).
        png: the image, PNG-encoded.
        metadata: its ``metadata.jsonl`` record there, without ``file_name`` and ``created_at``.
        embedding: the verifier's duplicate embedding of it.
        duplicate: the verdict's ``duplicate`` score (``similarity``, ``threshold``, ``n_accepted``), or ``None``.
    """

    slot: int
    file_name: str
    png: bytes
    metadata: dict
    embedding: np.ndarray
    duplicate: dict | None


@dataclass
class ChunkResult:
    """What a worker returns for a chunk: the run's status, trace and folder, and its accepted images."""

    run_id: str
    status: str
    trace: dict
    files: dict[str, bytes]
    images: list[AcceptedImage]
    seconds: float
    worker: dict = field(default_factory=dict)


def run_detached(work: ChunkWork, *, planner, generator, verifier, settings: RunSettings,
                 adapters: dict | None = None) -> ChunkResult:
    """Run one chunk as an ordinary generation run into a scratch storage, and collect what the driver files.

    Args:
        planner, generator, verifier: the worker's, loaded once (the generator with this chunk's adapters on).
        settings: the campaign's run settings.
        adapters: the adapter choice's record for the trace (:meth:`AdapterChoice.record`), or ``None``.
    """
    from clinisynth.agents.runner import run_generation
    from clinisynth.generation.storage import OrderedStorage

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="clinisynth-chunk-") as scratch:
        storage = OrderedStorage(Path(scratch))
        known = {work.modality: work.known} if work.known is not None and len(work.known) else None
        result = run_generation(
            planner=planner, generator=generator, storage=storage, verifier=verifier, request=work.description,
            n_images=work.n, seed=work.seed, steps=settings.steps, guidance=settings.guidance,
            max_rounds=settings.max_rounds, best_of=settings.best_of, profile=settings.profile, run_id=work.run_id,
            adapters=adapters, known_embeddings=known, exact_seed=True)
        accepted = {a["stored_as"]: a for a in result.trace.get("attempts", []) if a.get("stored_as")}
        images = []
        for record in storage.read_metadata():
            from PIL import Image

            png = (storage.root / record["file_name"]).read_bytes()
            with Image.open(io.BytesIO(png)) as image:
                embedding = verifier.embed(image)
            attempt = accepted[record["file_name"]]
            metadata = {key: value for key, value in record.items() if key not in ("file_name", "created_at")}
            images.append(AcceptedImage(slot=int(record["slot"]), file_name=record["file_name"], png=png,
                                        metadata=metadata, embedding=np.asarray(embedding, dtype=np.float32),
                                        duplicate=(attempt.get("scores") or {}).get("duplicate")))
        run_dir = storage.root / "runs" / work.run_id
        files = {str(path.relative_to(run_dir)): path.read_bytes() for path in sorted(run_dir.rglob("*"))
                 if path.is_file() and path.name not in LEFT_ON_WORKER and path.name != "trace.json"}
    return ChunkResult(run_id=result.run_id, status=result.status, trace=result.trace, files=files, images=images,
                       seconds=time.perf_counter() - started)


class KnownImages:
    """The duplicate embeddings of the dataset's images per modality, in the order the driver learnt them, each
    with its run; :meth:`mark` / :meth:`since` tell what was added after a chunk was sent."""

    def __init__(self) -> None:
        self._runs: dict[str, list[str | None]] = {}
        self._embeddings: dict[str, list[np.ndarray]] = {}
        self.files: set[str] = set()

    def add(self, *, modality: str, run_id: str | None, file_name: str, embedding: np.ndarray) -> None:
        if file_name in self.files:  # filed before a driver restart: already known from the dataset
            return
        self.files.add(file_name)
        self._runs.setdefault(modality, []).append(run_id)
        self._embeddings.setdefault(modality, []).append(np.asarray(embedding, dtype=np.float32))

    def mark(self, modality: str) -> int:
        return len(self._runs.get(modality, []))

    def since(self, modality: str, mark: int = 0, *, without_run: str | None = None) -> np.ndarray | None:
        """The embeddings added after ``mark``, leaving out run ``without_run``'s own images; ``None`` when none."""
        rows = [embedding for run, embedding in zip(self._runs.get(modality, [])[mark:],
                                                    self._embeddings.get(modality, [])[mark:]) if run != without_run]
        return np.stack(rows) if rows else None


def load_known_images(storage, modalities: list[str], *, embed) -> KnownImages:
    """Embed the images already in the dataset (an earlier session, another campaign) once, for the duplicate
    check, as a run in one process does; ``embed(list of PNG bytes) -> array`` runs on a worker."""
    known = KnownImages()
    storage.recover()  # a store a killed driver left half done is finished first: its run is then known
    runs = {record["file_name"]: record.get("run_id") for record in storage.read_metadata()}
    for modality in modalities:
        folder = Path(storage.root) / modality
        files = sorted(folder.glob("*/*.png")) if folder.is_dir() else []
        for start in range(0, len(files), 256):
            batch = files[start:start + 256]
            embeddings = embed([path.read_bytes() for path in batch])
            for path, embedding in zip(batch, embeddings):
                name = str(path.relative_to(storage.root))
                known.add(modality=modality, run_id=runs.get(name), file_name=name, embedding=embedding)
    return known


def conflicts(result: ChunkResult, *, extra: np.ndarray | None) -> bool:
    """Whether an accepted image is a duplicate of one filed after the chunk was sent (the worker did not see it)."""
    from clinisynth.evaluation.memorisation import max_similarity

    for image in result.images:
        threshold = (image.duplicate or {}).get("threshold")
        similarity, row = max_similarity(image.embedding, extra)
        if threshold is not None and row is not None and similarity >= threshold:
            return True
    return False


def file_result(result: ChunkResult, *, chunk: Chunk, storage, known: KnownImages, mark: int) -> Outcome:
    """The driver part: file a worker's accepted images in ordered storage (in the order its run filed them),
    then write the run folder whole (trace naming the filed images), and return the run's :class:`Outcome`.

    Each store is idempotent per (run, slot): after a driver restart, slots filed before are given back, not
    filed twice. Call :func:`conflicts` first.
    """
    from PIL import Image

    from clinisynth.evaluation.memorisation import max_similarity

    modality = chunk.item.modality
    extra = known.since(modality, mark, without_run=result.run_id)
    renamed, stored = {}, {}
    attempts = {attempt.get("stored_as"): attempt for attempt in result.trace.get("attempts", [])}
    for image in result.images:
        metadata = {**image.metadata, "scores": dict(image.metadata.get("scores") or {})}
        similarity, row = max_similarity(image.embedding, extra)
        if row is not None and similarity > (metadata["scores"].get("duplicate_similarity") or 0.0):
            metadata["scores"]["duplicate_similarity"] = similarity  # the highest over everything filed before
            score = attempts[image.file_name].setdefault("scores", {}).setdefault("duplicate", {})
            score.update(similarity=similarity, accepted_index=None, checked_by="driver")
        if image.duplicate is not None and extra is not None:
            score = attempts[image.file_name].setdefault("scores", {}).setdefault("duplicate", {})
            score["n_accepted"] = int(score.get("n_accepted") or 0) + len(extra)
        with Image.open(io.BytesIO(image.png)) as decoded:
            decoded.load()
            filed = storage.store(image=decoded, modality=modality, label=chunk.item.label, metadata=metadata,
                                  unique={"run_id": result.run_id, "slot": image.slot})
        known.add(modality=modality, run_id=result.run_id, file_name=filed.file_name, embedding=image.embedding)
        renamed[image.file_name] = filed.file_name
        stored[image.slot] = (filed.file_name, int(metadata["seed"]))
    trace = dict(result.trace)
    for attempt in trace.get("attempts", []):
        if attempt.get("stored_as"):
            attempt["stored_as"] = renamed[attempt["stored_as"]]
    trace["stored"] = [renamed[name] for name in trace.get("stored", [])]
    if result.worker:
        trace["worker"] = result.worker
    write_run_folder(storage, result.run_id, files=result.files, trace=trace)
    return Outcome(run_id=result.run_id, status=result.status, stored=stored, seconds=result.seconds,
                   summary=trace.get("summary") or {})


def write_run_folder(storage, run_id: str, *, files: dict[str, bytes], trace: dict) -> Path:
    """``runs/<run_id>/`` written whole: built under a temporary name with its trace, then renamed into place, so
    a kill leaves either no run folder (the chunk runs again) or a finished one. A folder already there (a run
    of this chunk interrupted in one process) is kept inside it as ``previous/``."""
    from clinisynth.generation.files import write_atomically
    from clinisynth.generation.storage import RUNS_DIR, TRACE_NAME, check_run_id, trace_bytes

    runs = Path(storage.root) / RUNS_DIR
    final = runs / check_run_id(run_id)
    for stale in runs.glob(f".{run_id}.tmp-*"):  # a driver killed while writing this folder
        shutil.rmtree(stale)
    building = runs / f".{run_id}.tmp-{os.getpid()}"
    building.mkdir(parents=True)
    for name, data in files.items():
        path = building / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    if final.exists():
        final.rename(building / "previous")
    write_atomically(building / TRACE_NAME, trace_bytes(run_id, trace))
    os.replace(building, final)
    return final

