"""``clinisynth.curate``: a campaign file to a verified dataset, built from the settings (``clinisynth curate``).

The checks come first and write nothing: the campaign file (every problem with its line), the profile, the
output dir, a journal already in it (another campaign's, or this one's from a campaign file that has changed
since), and then every item's plan and whether the generator can draw its label. Only then is
``DIR/campaign/journal.sqlite`` created and the open slots run: in this process with the models loaded once
(``workers=1``), or on Ray workers (``workers > 1`` starts a local Ray, ``ray_address`` joins a cluster), each
holding its own models, with this process alone writing the dataset (``curation/ray_workers.py``).
"""

from __future__ import annotations

import fcntl
import functools
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from clinisynth.settings import Settings

LOCK_NAME = ".curate.lock"
#: More workers than this is a typo, not a cluster (each worker holds a whole generator and verifier).
MAX_WORKERS = 1024


@dataclass
class CampaignResult:
    """What ``curate`` did.

    Args:
        out: the output dataset.
        counts: slots per state (``pending``, ``running``, ``stored``, ``given_up``) and ``total``.
        report: ``DIR/campaign/report.md`` (``report.json`` beside it).
        rejected: rows left out with ``skip_invalid`` (``DIR/campaign/rejected.csv``).
        runs: generation runs this call started or resumed (0 when the campaign was already complete).
        resumed: of them, runs continued from their checkpoint (an interrupted campaign).
        seconds: wall time of this call.
        requeued: chunks sent again because their Ray worker died (0 in this process).
        workers: each Ray worker's pid, host, device, memory (``rss_bytes``) and chunks run; empty in this process.
        cancelled: ``should_stop`` stopped the campaign; the next call continues it.
    """

    out: Path
    counts: dict[str, int]
    report: Path
    rejected: int
    runs: int
    resumed: int
    seconds: float
    requeued: int = 0
    workers: list = field(default_factory=list)
    cancelled: bool = False

    @property
    def complete(self) -> bool:
        return self.counts["pending"] + self.counts["running"] == 0


@contextmanager
def _campaign_lock(folder: Path) -> Iterator[None]:
    """One driver per output dir: an exclusive lock on ``DIR/campaign/.curate.lock`` while it runs."""
    from clinisynth.curation.spec import CampaignError

    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / LOCK_NAME, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CampaignError(f"another `clinisynth curate` is running on {folder.parent}; wait for it to "
                                "finish") from None
        yield
    finally:
        handle.close()


def _check_existing_journal(loaded, out: Path, storage) -> None:
    """Refuse a journal that is another campaign's, or this campaign's from a file that has changed since."""
    from clinisynth.curation.journal import Journal, journal_path
    from clinisynth.curation.spec import CampaignError, differences

    path = journal_path(out)
    if not path.exists():
        return
    with Journal.open(path, read_only=True) as journal:
        if journal.name != loaded.name:
            raise CampaignError(f"output dir {out} holds another campaign ({journal.name!r}, {path}), not "
                                f"{loaded.name!r}; use another --out (or the campaign file of {journal.name!r})")
        if journal.fingerprint != loaded.fingerprint():
            changed = differences(journal.canonical, loaded.canonical())
            raise CampaignError(changed or ["the items file's rows differ"],
                                headline=f"campaign file {loaded.path.name} has changed since the journal in {out} "
                                         f"was made ({len(changed)} difference(s)); restore it to continue, or use "
                                         "another --out for the new campaign:")
        filed = {record["file_name"] for record in storage.read_metadata()}
        missing = [name for _, _, name in journal.stored_files() if name not in filed]
        runs = [run["run_id"] for run in journal.runs()
                if run["state"] == "done" and not (out / "runs" / run["run_id"]).is_dir()]
        if missing or runs:
            example = missing[0] if missing else f"runs/{runs[0]}"
            raise CampaignError(f"the journal {path} is from another campaign's output: {len(missing)} image(s) and "
                                f"{len(runs)} run(s) it records are not in {out} (e.g. {example}); move it away or "
                                "use the output dir it belongs to")


def _check_parameters(journal_parameters: dict, parameters: dict, out: Path) -> None:
    from clinisynth.curation.spec import CampaignError

    changed = [f"{key}: {journal_parameters.get(key)!r} -> {value!r}" for key, value in parameters.items()
               if journal_parameters.get(key) != value]
    if changed:
        raise CampaignError(changed, headline=f"the campaign in {out} was started with other run settings (from the "
                                              "settings or the profile's defaults); restore them to continue:")


def curate(
    campaign: Path | str,
    *,
    out: Path | str,
    skip_invalid: bool = False,
    settings: Settings | None = None,
    on_progress: Callable[[str, dict], None] | None = None,
    workers: int | None = None,
    ray_address: str | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> CampaignResult:
    """Run the campaign file ``campaign`` into ordered storage under ``out``; call it again to resume.

    Args:
        skip_invalid: rows that cannot be run (unplannable, a label the generator cannot draw, a bad items-file
            row) are written to ``DIR/campaign/rejected.csv`` and the others run; without it they refuse the
            campaign, listing each with its line.
        on_progress: ``(event, info)`` callback: ``planned``, ``campaign``, ``item``, ``slot``, ``chunk`` (on Ray
            also ``sending``, ``sent`` and ``requeued``, see ``curation.ray_workers.run_campaign_on_workers``).
        workers: Ray workers (actors, each with its own generator and verifier; one GPU each when the cluster has
            GPUs). ``None`` or 1: the campaign runs in this process; more starts a local Ray with that many CPUs.
            With ``ray_address``, ``None`` means one worker per GPU of the cluster (1 without GPUs).
        ray_address: join the Ray cluster there (``auto``, ``ray://HEAD:10001``) instead of running locally.
        should_stop: asked before every chunk and after every graph step of a run (the web app's Cancel); when it
            answers true the campaign stops there, keeping every image filed, and a later call resumes it. In this
            process only: not with ``workers`` or ``ray_address``.

    Raises:
        clinisynth.curation.spec.CampaignError (and the generation errors: PlanError, ProfileError, StorageError,
        VerifierSetupError, ModelNotFoundError): bad input, before anything is generated.
    """
    from clinisynth.api import get_planner, load_generator, quiet_model_loading
    from clinisynth.curation.adapters import adapter_problem, adapter_request, adapters_cover, modality_id
    from clinisynth.curation.journal import CAMPAIGN_DIR, Journal, journal_path
    from clinisynth.curation.report import write_report
    from clinisynth.curation.scheduler import (REJECTED_NAME, allocate, plan_rows, planned_items, refusal,
                                               run_campaign, write_rejected)
    from clinisynth.curation.spec import CampaignError, load_campaign
    from clinisynth.curation.worker import InProcessWorker, RunSettings
    from clinisynth.generation.profiles import (PROFILE_NAMES, ProfileError, coverage_problem, generator_record,
                                                resolve_profile)
    from clinisynth.generation.health import check_dataset
    from clinisynth.generation.storage import OrderedStorage, check_output_dir
    from clinisynth.verifier_setup import build_run_verifier, check_verifier_settings

    started = time.perf_counter()
    settings = settings or Settings()
    on_ray = _check_workers(workers, ray_address)
    if on_ray and should_stop is not None:
        raise CampaignError("should_stop stops campaigns run in this process, not on Ray workers")
    loaded = load_campaign(campaign)
    spec = loaded.campaign
    if spec.verifier_thresholds:
        merged = {modality: dict(values) for modality, values in settings.verifier_thresholds.items()}
        for modality, values in spec.verifier_thresholds.items():
            merged.setdefault(modality, {}).update(values)
        settings = settings.model_copy(update={"verifier_thresholds": merged})
    profile = spec.profile or settings.profile
    if profile not in PROFILE_NAMES:
        raise ProfileError(f"{loaded.path.name}: unknown profile {profile!r}; known profiles: {', '.join(PROFILE_NAMES)}")
    out = check_output_dir(Path(out))
    check_dataset(out)  # a damaged or prepared dataset is refused before any work
    check_verifier_settings(settings)
    storage = OrderedStorage(out, made_by="clinisynth curate")
    _check_existing_journal(loaded, out, storage)
    quiet_model_loading()  # the tiny profile's first build writes model shards: no bars before an error line
    resolved = resolve_profile(profile, cache_dir=settings.cache_dir, overrides=settings.profile_overrides())
    run_settings = RunSettings(
        profile=profile,
        steps=spec.steps if spec.steps is not None else resolved.default_steps,
        guidance=spec.guidance if spec.guidance is not None else resolved.default_guidance,
        max_rounds=spec.max_rounds if spec.max_rounds is not None else settings.max_rounds,
        best_of=spec.best_of if spec.best_of is not None else settings.best_of,
    )
    adapter_request(spec.adapters, adapters_dir=settings.adapters_dir)  # unknown names, bad weights: before any work
    planner = get_planner(settings)
    path = journal_path(out)
    rejected_rows, rejected = 0, []
    if path.exists():
        with Journal.open(path, read_only=True) as journal:
            _check_parameters(journal.parameters, run_settings.as_dict(), out)
        rejected_file = out / CAMPAIGN_DIR / REJECTED_NAME
        rejected_rows = max(0, len(rejected_file.read_text(encoding="utf-8").splitlines()) - 1) \
            if rejected_file.is_file() else 0
        items = None
    else:
        record, location = generator_record(resolved.generator), resolved.generator

        def coverage(modality: str, label: str, row) -> str | None:
            specs, knowledge_id = loaded.adapters_of(row.key), modality_id(planner.knowledge, modality)
            problem = adapter_problem(specs, adapters_dir=settings.adapters_dir, modality=knowledge_id, label=label)
            if problem or adapters_cover(specs, adapters_dir=settings.adapters_dir, modality=knowledge_id,
                                         label=label):
                return problem
            return coverage_problem(record, modality=modality, label=label, location=location)

        planned, rejected = plan_rows(loaded.rows, planner=planner, coverage=coverage, on_progress=on_progress)
        rejected = sorted([*loaded.bad_rows, *rejected], key=lambda r: (r.source != loaded.path.name, r.source, r.line))
        if rejected and not skip_invalid:
            raise refusal(rejected, name=loaded.name)
        items = planned_items(loaded, allocate(loaded, planned))
        if not items:
            raise CampaignError(f"campaign {loaded.name}: no item is left to run"
                                + (f" ({len(rejected)} rejected)" if rejected else ""))
        rejected_rows = len(rejected)
    with _campaign_lock(out / CAMPAIGN_DIR):
        if items is not None:
            if journal_path(out).exists():  # another driver made it between the checks and the lock
                raise CampaignError(f"another `clinisynth curate` started a campaign in {out} meanwhile")
            if rejected:
                write_rejected(out / CAMPAIGN_DIR / REJECTED_NAME, rejected)
            Journal.create(path, name=loaded.name, fingerprint=loaded.fingerprint(), canonical=loaded.canonical(),
                           parameters=run_settings.as_dict(), items=items).close()
        with Journal.open(path) as journal:
            ran = {"runs": 0, "resumed": 0, "recorded": 0}
            if journal.counts()["pending"] + journal.counts()["running"] and on_ray:
                ran = _run_on_ray(journal, storage=storage, settings=settings, run_settings=run_settings,
                                  chunk_size=spec.chunk_size, workers=workers, ray_address=ray_address,
                                  adapters_of=loaded.adapters_of, on_progress=on_progress)
            elif journal.counts()["pending"] + journal.counts()["running"]:
                generator, resolved = load_generator(profile=profile, settings=settings)
                verifier = build_run_verifier(settings=settings, profile=resolved, device=generator.device)
                worker = InProcessWorker(planner=planner, generator=generator, verifier=verifier, storage=storage,
                                         settings=run_settings, adapters_of=loaded.adapters_of,
                                         adapters_dir=settings.adapters_dir)
                ran = run_campaign(journal, worker, storage=storage, chunk_size=spec.chunk_size,
                                   on_progress=on_progress, should_stop=should_stop)
            counts = journal.counts()
            seconds = time.perf_counter() - started
            report = write_report(out, journal, storage=storage, rejected=rejected_rows,
                                  timing={"wall_s": round(seconds, 3), "runs": ran["runs"], "resumed": ran["resumed"],
                                          "recorded_from_traces": ran["recorded"],
                                          "requeued": ran.get("requeued", 0), "conflicts": ran.get("conflicts", 0),
                                          "workers": ran.get("workers", [])})
    return CampaignResult(out=out, counts=counts, report=report, rejected=rejected_rows, runs=ran["runs"],
                          resumed=ran["resumed"], seconds=time.perf_counter() - started,
                          requeued=ran.get("requeued", 0), workers=ran.get("workers", []),
                          cancelled=ran.get("cancelled", False))


def _check_workers(workers: int | None, ray_address: str | None) -> bool:
    """Whether the campaign runs on Ray; refuses a bad worker count, or Ray asked for and not installed."""
    from clinisynth.curation.ray_workers import import_ray
    from clinisynth.curation.spec import CampaignError

    if workers is not None and not 1 <= workers <= MAX_WORKERS:
        raise CampaignError(f"--workers must be between 1 and {MAX_WORKERS}, got {workers}")
    if ray_address is not None and not ray_address.strip():
        raise CampaignError("--ray-address is empty; give the cluster's address (auto, or ray://HEAD:10001)")
    on_ray = ray_address is not None or (workers or 1) > 1
    if on_ray:
        import_ray()
    return on_ray


def _run_on_ray(journal, *, storage, settings: Settings, run_settings, chunk_size: int, workers: int | None,
                ray_address: str | None, adapters_of, on_progress) -> dict:
    from clinisynth.curation.ray_workers import WorkerPool, ray_session, run_campaign_on_workers

    load = functools.partial(load_worker_models, settings=settings.model_dump(), profile=run_settings.profile)
    with ray_session(workers=workers or 1, address=ray_address) as ray:
        count = workers or max(1, int(ray.cluster_resources().get("GPU", 0)))
        pool = WorkerPool(ray=ray, count=count, options={"load": load, "run_settings": run_settings,
                                                         "adapters_dir": settings.adapters_dir})
        return run_campaign_on_workers(journal, pool, storage=storage, chunk_size=chunk_size, adapters_of=adapters_of,
                                       on_progress=on_progress)


def load_worker_models(*, settings: dict, profile: str) -> tuple:
    """A campaign worker's ``(planner, generator, verifier)``, loaded in the worker's process from the driver's
    settings (``Settings.model_dump()``: rebuilt from these values, never from the worker's environment)."""
    from clinisynth.api import get_planner, load_generator, quiet_model_loading
    from clinisynth.verifier_setup import build_run_verifier

    quiet_model_loading()
    values = Settings(**settings)
    generator, resolved = load_generator(profile=profile, settings=values)
    return get_planner(values), generator, build_run_verifier(settings=values, profile=resolved,
                                                              device=generator.device)
