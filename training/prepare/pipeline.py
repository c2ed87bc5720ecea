"""``prepare_dataset``: a raw medical image folder (or CSV, or MedMNIST ``.npz``) to a clean training set.

Order of work: check every input and option (errors before anything is written), open OUT
(marker + journal), decode the pending sources in worker processes, and in this process alone
decide duplicates, write PNGs (``generation.files.write_atomically``), append the journal, and rebuild the
CSVs and reports atomically. See ``state.py`` for what makes a re-run resume.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from clinisynth.evaluation.hashing import NearDuplicateIndex
from clinisynth.evaluation.sanity import SanityThresholds
from clinisynth.generation.files import write_atomically
from clinisynth.training.prepare.discover import (
    Discovery,
    PrepareInputError,
    SourceItem,
    _shown,
    discover_csv,
    discover_folder,
    discover_npz,
)
from clinisynth.training.prepare.labels import LabelError, load_label_map
from clinisynth.training.prepare.report import write_outputs
from clinisynth.training.prepare.state import LEGACY_CONTACT_DIR, RunState, remove_stale_temp_files
from clinisynth.training.prepare.worker import ItemResult, WorkSettings, process_item

LABEL_SOURCES = ("folders", "csv")
PAGE_POLICIES = ("all", "first")
SNAPSHOT_EVERY = 500


class PrepareInterrupted(RuntimeError):
    """The run was interrupted; everything recorded so far is consistent and a re-run resumes."""


@dataclass
class PrepareConfig:
    """Everything one prepare run needs.

    Args:
        source: an ImageFolder-style folder, the folder a CSV's paths are relative to, or a ``.npz``.
        out: output folder (created; must be empty, or a previous run of the same preparation).
        size: output side in pixels (square, aspect kept, black padding).
        mode: ``L`` (grey) or ``RGB``.
        modality: modality id (``modality.chest_xray``) or its label (``chest_xray``) for every image;
            a CSV ``modality`` column overrides it per row; built in for the known MedMNIST files.
        labels_from: ``folders`` (the class folder names) or ``csv``.
        csv: the CSV with ``path,text,modality,label`` columns when ``labels_from="csv"``.
        workers: decoding processes; 1 decodes in this process.
        label_map: YAML / JSON file mapping source names (folders, CSV labels, npz class numbers) to labels.
        pages: ``all`` or ``first`` page / frame of multi-page TIFF and multi-frame DICOM.
        label_level: which parent folder names the class (-1: the innermost).
        near_max_distance: pHash Hamming distance for near-duplicate candidates.
        near_min_correlation: thumbnail correlation that confirms a near duplicate.
        thresholds: sanity thresholds (see ``clinisynth.evaluation.sanity``).
        text_check: quarantine frames with text burned into the pixels (needs the ``tesseract`` program);
            ``False`` turns it off, and the report and the marker say so.
        strict: refuse the whole run (nothing written) when a DICOM's Modality tag contradicts the
            modality it is filed under, instead of quarantining the file.
    """

    source: Path
    out: Path
    size: int = 256
    mode: str = "L"
    modality: str | None = None
    labels_from: str = "folders"
    csv: Path | None = None
    workers: int = 2
    label_map: Path | None = None
    pages: str = "all"
    label_level: int = -1
    near_max_distance: int = 8
    near_min_correlation: float = 0.99
    thresholds: SanityThresholds = field(default_factory=SanityThresholds)
    text_check: bool = True
    strict: bool = False


@dataclass
class PrepareSummary:
    """What a run did; the full figures are in ``OUT/report.json``."""

    out: Path
    kept: int
    quarantined: int
    duplicates: int
    processed: int
    skipped: int
    seconds: float
    report: dict


def _validate_options(config: PrepareConfig) -> None:
    if not 8 <= config.size <= 4096:
        raise PrepareInputError(f"--size {config.size} is out of range; use 8 to 4096 pixels")
    if config.mode not in ("L", "RGB"):
        raise PrepareInputError(f"--mode {config.mode!r} is not supported; use L (grey) or RGB")
    if config.labels_from not in LABEL_SOURCES:
        raise PrepareInputError(f"--labels-from {config.labels_from!r} is not supported; use folders or csv")
    if config.pages not in PAGE_POLICIES:
        raise PrepareInputError(f"--pages {config.pages!r} is not supported; use all or first")
    if config.workers < 1:
        raise PrepareInputError(f"--workers {config.workers} must be at least 1")
    if config.labels_from == "csv" and config.csv is None:
        raise PrepareInputError("--labels-from csv needs --csv FILE")
    if config.csv is not None and config.labels_from != "csv":
        raise PrepareInputError("--csv is only read with --labels-from csv; add it or drop --csv")
    if config.text_check:
        _check_ocr_engine()


def _check_ocr_engine() -> None:
    """The burned-in text check confirms text with Tesseract: it must be installed before any work."""
    try:
        import pytesseract

        pytesseract.get_tesseract_version()
    except ImportError:
        raise PrepareInputError(
            "the burned-in text check needs pytesseract (pip install pytesseract); or pass --no-text-check to skip it (the report says so)"
        ) from None
    except (OSError, RuntimeError, pytesseract.TesseractNotFoundError):
        raise PrepareInputError(
            "the burned-in text check needs the tesseract program (Debian / Ubuntu: apt-get install tesseract-ocr); "
            "or pass --no-text-check to skip it (the report says so)"
        ) from None


def _validate_paths(source: Path, out: Path) -> str:
    """Return the source kind (``folder`` or ``npz``)."""
    if not source.exists():
        raise PrepareInputError(f"SOURCE {source} does not exist")
    if source.is_file():
        if source.suffix.lower() != ".npz":
            raise PrepareInputError(f"SOURCE {source} is a file; give a folder, or a MedMNIST .npz")
        kind = "npz"
    else:
        kind = "folder"
        if not any(source.iterdir()):
            raise PrepareInputError(f"SOURCE {source} is empty")
    src, dst = source.resolve(), out.resolve()
    if kind == "folder" and (dst == src or dst.is_relative_to(src)):
        raise PrepareInputError(f"OUT {out} is inside SOURCE {source}; put it elsewhere so the source is never touched")
    if src.is_relative_to(dst):
        raise PrepareInputError(f"SOURCE {source} is inside OUT {out}; choose another OUT")
    return kind


def normalize_modality(modality: str, known: list[str]) -> str:
    """``chest_xray`` or ``modality.chest_xray`` -> ``modality.chest_xray``, checked against the knowledge base."""
    candidate = modality if modality.startswith("modality.") else f"modality.{modality}"
    if candidate not in known:
        raise PrepareInputError(f"modality {modality!r} is not in the knowledge base; use one of {', '.join(known)}")
    return candidate


def _captions(items: list[SourceItem], run_modality: str | None, default_modality: str | None, knowledge) -> tuple[list[SourceItem], dict]:
    """Resolve each item's modality and write a caption per (modality, label) pair, before any work.

    The caption comes from the same prompt function the reasoning agents use.
    """
    from dataclasses import replace

    # Imported here, for the captions only: training/ does not depend on agents/ otherwise.
    from clinisynth.agents.prompting import caption_for_label

    known = [record.id for record in knowledge.modalities]
    run_id = normalize_modality(run_modality, known) if run_modality else None
    fallback = run_id or default_modality
    resolved: list[SourceItem] = []
    missing = 0
    for item in items:
        modality = normalize_modality(item.modality, known) if item.modality else fallback
        if modality is None:
            missing += 1
            continue
        resolved.append(replace(item, modality=modality) if modality != item.modality else item)
    if missing:
        raise PrepareInputError(f"{missing} image(s) have no modality; give --modality (one of {', '.join(known)})")
    captions: dict[tuple[str, str], str] = {}
    for item in resolved:
        pair = (item.modality, item.label)
        if item.text is None and pair not in captions:
            try:
                captions[pair] = caption_for_label(knowledge=knowledge, modality_id=item.modality, label=item.label)
            except (KeyError, ValueError) as error:
                raise PrepareInputError(
                    f"no caption for label {item.label!r} in {item.modality}: {error}; map the folder names to the knowledge "
                    "base's labels with --label-map FILE"
                ) from None
    return resolved, captions


def _strict_modality_check(items: list[SourceItem], accepted: dict[str, tuple[str, ...]]) -> None:
    """``--strict``: read every DICOM header (no pixels) and refuse the run on a contradicting Modality tag."""
    import pydicom

    from clinisynth.training.prepare.decode import QuarantineError, check_dicom_modality, describe_modality_code, dicom_modality_code

    wrong: list[str] = []
    for item in items:
        if item.kind != "dicom":
            continue
        try:
            dataset = pydicom.dcmread(item.path, stop_before_pixels=True, specific_tags=["Modality"])
        except Exception:  # noqa: BLE001 - an unreadable header is quarantined by the run itself
            continue
        try:
            check_dicom_modality(dataset, modality_id=item.modality, accepted=accepted.get(item.modality, ()))
        except QuarantineError:
            wrong.append(f"{item.key} ({describe_modality_code(dicom_modality_code(dataset) or '')} under {item.modality})")
    if wrong:
        raise PrepareInputError(
            f"--strict: {len(wrong)} DICOM file(s) carry a Modality tag that contradicts the modality they are filed under: "
            f"{_shown(wrong)}; file them under their own modality (--modality or the CSV modality column), "
            "or drop --strict to quarantine them"
        )


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fingerprint(config: PrepareConfig, label_map: dict | None) -> dict:
    return {
        "size": config.size,
        "mode": config.mode,
        "modality": config.modality,
        "labels_from": config.labels_from,
        "csv_sha256": _file_sha256(config.csv) if config.csv is not None else None,
        "label_map": label_map,
        "pages": config.pages,
        "label_level": config.label_level,
        "near_max_distance": config.near_max_distance,
        "near_min_correlation": config.near_min_correlation,
        "thresholds": json.loads(json.dumps(asdict(config.thresholds))),
        "text_check": config.text_check,
    }


def _discover(config: PrepareConfig, kind: str, label_map: dict | None) -> Discovery:
    if kind == "npz":
        if config.labels_from == "csv":
            raise PrepareInputError("a .npz SOURCE carries its own labels; drop --labels-from csv")
        return discover_npz(config.source, label_map=label_map)
    if config.labels_from == "csv":
        return discover_csv(config.source, config.csv, label_map=label_map)
    return discover_folder(config.source, label_map=label_map, label_level=config.label_level)


def _worker_init() -> None:
    # Ctrl-C is handled once, by the parent, which then stops the pool cleanly.
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _results(pending: list[SourceItem], settings: WorkSettings, workers: int):
    """Yield results in submission order, so duplicate decisions do not depend on timing."""
    work = partial(process_item, settings=settings)
    if workers == 1:
        yield from map(work, pending)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn: safe even when the caller has imported torch (fork after threads can deadlock).
    executor = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init)
    try:
        yield from executor.map(work, pending, chunksize=max(1, min(32, len(pending) // (workers * 8) or 1)))
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


class _Deduplicator:
    """Exact (pixel hash) and near (pHash + thumbnail) duplicates among the kept frames."""

    def __init__(self, config: PrepareConfig) -> None:
        self.pixels: dict[str, tuple[str, str]] = {}
        self.sources: set[str] = set()
        self.labels: dict[str, str] = {}
        self.index = NearDuplicateIndex(max_distance=config.near_max_distance, min_correlation=config.near_min_correlation)

    def add(self, frame_id: str, label: str, pixel_sha: str, phash: int, thumb: np.ndarray, source_sha: str) -> None:
        self.pixels.setdefault(pixel_sha, (frame_id, label))
        self.sources.add(source_sha)
        self.labels[frame_id] = label
        self.index.add(frame_id, phash, thumb)

    def match(self, pixel_sha: str, phash: int, thumb: np.ndarray) -> dict | None:
        if pixel_sha in self.pixels:
            other, label = self.pixels[pixel_sha]
            return {"of": other, "of_label": label, "kind": "exact", "distance": 0, "correlation": 1.0}
        near = self.index.query(phash, thumb)
        if near is None:
            return None
        return {"of": near.key, "of_label": self.labels[near.key], "kind": "near", "distance": near.distance, "correlation": round(near.correlation, 4)}


def _kept_files_present(out: Path, record: dict) -> bool:
    return all((out / frame["path"]).is_file() for frame in record.get("frames", []) if frame["status"] == "kept")


def _decide(result: ItemResult, item: SourceItem, caption: str, state: RunState, dedup: _Deduplicator, out: Path) -> dict:
    """Quarantine, drop as duplicate, or write each frame; return the journal record."""
    item_id = state.item_id(item.key)
    record = {
        "key": item.key,
        "size": item.size,
        "mtime_ns": item.mtime_ns,
        "id": item_id,
        "sha256": result.source_sha256,
        "label": item.label,
        "modality": item.modality,
        "text": caption,
        "format": result.format,
        "mode": result.mode,
        "seconds": round(result.seconds, 4),
        "error": None,
        "frames": [],
    }
    if result.error is not None:
        record["error"] = {"reason": result.error.reason, "value": result.error.value, "detail": result.error.detail}
        return record
    multi = len(result.frames) > 1
    for frame in result.frames:
        frame_id = f"{item_id}_{frame.index:03d}" if multi else item_id
        entry = {"i": frame.index, "id": frame_id, "w": frame.width, "h": frame.height}
        if frame.reason is not None:
            entry.update(status="quarantined", reason=frame.reason, value=frame.value, detail=frame.detail)
        else:
            match = dedup.match(frame.pixel_sha256, frame.phash, frame.thumb)
            if match is not None:
                entry.update(status="duplicate", **match)
            else:
                relative = f"{item.label}/{frame_id}.png"
                target = out / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                write_atomically(target, frame.png)
                dedup.add(frame_id, item.label, frame.pixel_sha256, frame.phash, frame.thumb, result.source_sha256)
                entry.update(
                    status="kept",
                    path=relative,
                    pixel_sha256=frame.pixel_sha256,
                    phash=f"{frame.phash:016x}",
                    thumb=frame.thumb.tobytes().hex(),
                )
        record["frames"].append(entry)
    return record


def prepare_dataset(
    config: PrepareConfig,
    *,
    progress: bool = True,
    on_record: Callable[[dict], None] | None = None,
) -> PrepareSummary:
    """Prepare a dataset (see the module docstring); re-running with the same options resumes.

    Args:
        config: the run's inputs and options.
        progress: show a progress bar on stderr.
        on_record: called after each source is recorded (tests use it to interrupt a run).

    Raises:
        PrepareInputError: bad input or options, found before any work.
        PrepareInterrupted: Ctrl-C; the outputs written so far are consistent.
    """
    started = time.perf_counter()
    _validate_options(config)
    kind = _validate_paths(config.source, config.out)
    try:
        label_map = load_label_map(config.label_map) if config.label_map is not None else None
    except LabelError as error:
        raise PrepareInputError(str(error)) from None
    discovery = _discover(config, kind, label_map)
    from clinisynth.knowledge import load_knowledge

    knowledge = load_knowledge()
    items, captions = _captions(discovery.items, config.modality, discovery.default_modality, knowledge)
    accepted = {record.id: tuple(record.dicom_modalities) for record in knowledge.modalities}
    if config.strict:
        _strict_modality_check(items, accepted)

    state = RunState(config.out, source=config.source.resolve(), fingerprint=_fingerprint(config, label_map))
    state.open()
    try:
        return _run(config, state, items, captions, discovery, label_map, kind, started, progress, on_record, accepted)
    finally:
        state.close()


def _run(config, state, items, captions, discovery, label_map, kind, started, progress, on_record, accepted) -> PrepareSummary:
    changed = [
        item.key
        for item in items
        if item.key in state.records and (state.records[item.key]["size"], state.records[item.key]["mtime_ns"]) != (item.size, item.mtime_ns)
    ]
    if changed:
        raise PrepareInputError(
            f"{len(changed)} source file(s) changed since OUT {config.out} was prepared; prepare into a new OUT folder"
        )
    remove_stale_temp_files(config.out)

    dedup = _Deduplicator(config)
    done: set[str] = set()
    for key, record in state.records.items():
        if not _kept_files_present(config.out, record):
            continue
        done.add(key)
        for frame in record.get("frames", []):
            if frame["status"] == "kept":
                thumb = np.frombuffer(bytes.fromhex(frame["thumb"]), dtype=np.uint8).reshape(16, 16)
                dedup.add(frame["id"], record["label"], frame["pixel_sha256"], int(frame["phash"], 16), thumb, record["sha256"])
    pending = [item for item in items if item.key not in done]
    # Contact sheets an older version left where loaders take them for a class: write the outputs again (once).
    if not pending and _previous_report_complete(config.out) and not (config.out / LEGACY_CONTACT_DIR).exists():
        # Nothing to do: leave every file as it is, reports included.
        return _summary(config, json.loads((config.out / "report.json").read_text(encoding="utf-8")), 0, len(items), started)
    settings = WorkSettings(
        size=config.size, mode=config.mode, pages=config.pages, thresholds=config.thresholds,
        text_check=config.text_check, dicom_modalities=accepted,
    )
    context = {"discovery": discovery, "config": config, "label_map": label_map, "kind": kind}

    from tqdm import tqdm

    bar = tqdm(total=len(pending), unit="img", desc="prepare", disable=not progress or not pending)
    processed = 0
    results = _results(pending, settings, config.workers)
    try:
        for item, result in zip(pending, results):
            caption = item.text if item.text is not None else captions[(item.modality, item.label)]
            record = _decide(result, item, caption, state, dedup, config.out)
            state.append(record)
            processed += 1
            bar.update(1)
            if on_record is not None:
                on_record(record)
            if processed % SNAPSHOT_EVERY == 0:
                write_outputs(config.out, state.records, context=context, run=_run_info(started, processed, len(items), config), final=False)
    except KeyboardInterrupt:
        bar.close()
        results.close()  # stops the worker pool before the snapshot is written
        write_outputs(config.out, state.records, context=context, run=_run_info(started, processed, len(items), config), final=False)
        raise PrepareInterrupted(f"interrupted after {processed} of {len(pending)} pending source(s); run the same command again to resume") from None
    finally:
        results.close()
    bar.close()
    run = _run_info(started, processed, len(items), config)
    report = write_outputs(config.out, state.records, context=context, run=run, final=True)
    return _summary(config, report, processed, len(items) - len(pending), started)


def _previous_report_complete(out: Path) -> bool:
    path = out / "report.json"
    try:
        return bool(json.loads(path.read_text(encoding="utf-8")).get("complete"))
    except (OSError, json.JSONDecodeError):
        return False


def _summary(config: PrepareConfig, report: dict, processed: int, skipped: int, started: float) -> PrepareSummary:
    totals = report["totals"]
    return PrepareSummary(
        out=config.out,
        kept=totals["kept"],
        quarantined=totals["quarantined"],
        duplicates=totals["duplicates"],
        processed=processed,
        skipped=skipped,
        seconds=time.perf_counter() - started,
        report=report,
    )


def _run_info(started: float, processed: int, total: int, config: PrepareConfig) -> dict:
    seconds = time.perf_counter() - started
    return {
        "seconds": round(seconds, 2),
        "processed_this_run": processed,
        "sources_total": total,
        "sources_per_second": round(processed / seconds, 1) if seconds > 0 else None,
        "workers": config.workers,
    }
