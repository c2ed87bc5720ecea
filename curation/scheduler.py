"""Scheduling a campaign in this process: plan every item first, then run the open chunks of slots, resuming
the interrupted one.

:func:`plan_rows` plans each row (a row that cannot be planned, or whose label the generator cannot draw, is
rejected with its line and why); :func:`allocate` turns a balance target into counts; :func:`run_campaign`
runs every open chunk through a worker and records each run in the journal. Seeds come from the journal
(campaign seed + item id + slot), so a slot's seeds do not depend on the chunking or the order items run in.
"""

from __future__ import annotations

import csv
import io
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from clinisynth.curation.journal import Chunk, Journal, PlannedItem
from clinisynth.curation.spec import MAX_CAMPAIGN_IMAGES, CampaignError, LoadedCampaign, Rejected, Row, item_seed
from clinisynth.curation.worker import Outcome, outcome_of_trace

REJECTED_NAME = "rejected.csv"


@dataclass(frozen=True)
class PlannedRow:
    row: Row
    modality: str
    label: str


def plan_rows(rows: list[Row], *, planner, coverage: Callable[[str, str, Row], str | None] | None = None,
              on_progress: Callable[[str, dict], None] | None = None) -> tuple[list[PlannedRow], list[Rejected]]:
    """Plan every row before anything is generated.

    Args:
        planner: :class:`clinisynth.agents.planner.Planner`.
        coverage: ``(modality, label, row) -> why the generator (with the row's adapters) cannot draw it``
            (``None`` when it can).

    Returns:
        The planned rows and the rejected ones (line and why), both in campaign order.
    """
    from clinisynth.agents.planner import PlanError

    planned, rejected = [], []
    for number, row in enumerate(rows, start=1):
        try:
            plan = planner.plan_for_generation(row.description)
        except PlanError as error:
            rejected.append(Rejected(row.source, row.line, row.description, str(error).splitlines()[0]))
            continue
        modality = planner.knowledge.get(plan.modality.id).label
        problem = coverage(modality, plan.label, row) if coverage is not None else None
        if problem:
            rejected.append(Rejected(row.source, row.line, row.description, problem))
            continue
        planned.append(PlannedRow(row=row, modality=modality, label=plan.label))
        if on_progress is not None:
            on_progress("planned", {"done": number, "total": len(rows)})
    return planned, rejected


def _split(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` near-equal integers, the larger ones first."""
    base, extra = divmod(total, parts)
    return [base + (1 if index < extra else 0) for index in range(parts)]


def _proportional(total: int, weights: dict[str, int]) -> dict[str, int]:
    """``total`` split in proportion to ``weights`` (largest remainder; ties by name)."""
    whole = sum(weights.values())
    shares = {key: total * weight / whole for key, weight in weights.items()}
    counts = {key: int(share) for key, share in shares.items()}
    left = total - sum(counts.values())
    for key in sorted(shares, key=lambda k: (-(shares[k] - counts[k]), k))[:left]:
        counts[key] += 1
    return counts


def real_label_counts(folder: Path) -> Counter:
    """Images per label in a prepared dataset's ``manifest.csv``."""
    from clinisynth.evaluation.metrics import DatasetError, read_manifest_rows

    try:
        return Counter(row["label"] for row in read_manifest_rows(folder))
    except DatasetError as error:
        raise CampaignError(f"balance.match: {error}") from None


def allocate(loaded: LoadedCampaign, planned: list[PlannedRow]) -> list[tuple[PlannedRow, int]]:
    """Each planned row with its count: its own, or its share of a balance target (rows of one label share it
    evenly, earlier rows taking the remainder). Rows given 0 images are left out.

    Raises:
        CampaignError: a label the target asks for that no item plans to, items whose label a matched dataset
            lacks, or more images than :data:`MAX_CAMPAIGN_IMAGES`.
    """
    balance = loaded.campaign.balance
    by_label: dict[str, list[PlannedRow]] = {}
    for row in planned:
        by_label.setdefault(row.label, []).append(row)
    if balance is None:
        counts = [(row, row.row.count) for row in planned]
    else:
        if balance.per_label is not None:
            targets = {label: balance.per_label for label in by_label}
        else:
            real = real_label_counts(loaded.balance_dir())
            missing = sorted(set(real) - set(by_label))
            if missing:
                raise CampaignError(
                    f"balance.match: the real dataset has label(s) {', '.join(missing)} that no item plans to "
                    f"(the items plan to: {', '.join(sorted(by_label)) or 'nothing'}); add a description of each")
            extra = sorted(set(by_label) - set(real))
            if extra:
                lines = ", ".join(f"{r.row.source}:{r.row.line}" for label in extra for r in by_label[label])
                raise CampaignError(f"balance.match: item(s) at {lines} plan to label(s) {', '.join(extra)}, which "
                                    f"the real dataset does not have (it has: {', '.join(sorted(real))})")
            targets = _proportional(balance.total or sum(real.values()), dict(real))
        shares: dict[int, int] = {}
        for label, rows in by_label.items():
            for row, share in zip(rows, _split(targets[label], len(rows))):
                shares[id(row)] = share
        counts = [(row, shares[id(row)]) for row in planned]
    total = sum(count for _, count in counts)
    if total > MAX_CAMPAIGN_IMAGES:
        raise CampaignError(f"the campaign asks for {total} images, more than the limit of {MAX_CAMPAIGN_IMAGES}; "
                            "split it into several campaigns")
    return [(row, count) for row, count in counts if count > 0]


def planned_items(loaded: LoadedCampaign, allocated: list[tuple[PlannedRow, int]]) -> list[PlannedItem]:
    """The journal's items: numbered in campaign order, seeded from the campaign seed and the item's id."""
    return [PlannedItem(item=number, key=row.row.key, source=row.row.source, line=row.row.line,
                        description=row.row.description, modality=row.modality, label=row.label, count=count,
                        seed=item_seed(loaded.campaign.seed, row.row.key))
            for number, (row, count) in enumerate(allocated, start=1)]


def write_rejected(path: Path, rejected: list[Rejected]) -> Path:
    """``DIR/campaign/rejected.csv``: source, line, description, why (written whole)."""
    from clinisynth.generation.files import write_atomically

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["source", "line", "description", "why"])
    for row in rejected:
        writer.writerow([row.source, row.line, row.description, row.why])
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomically(path, buffer.getvalue())


def refusal(rejected: list[Rejected], *, name: str) -> CampaignError:
    return CampaignError([row.message() for row in rejected],
                         headline=f"campaign {name}: {len(rejected)} item(s) cannot be run (nothing was generated; "
                                  "--skip-invalid writes them to DIR/campaign/rejected.csv and runs the others):")


# --- running --------------------------------------------------------------------------------------------------

def _settle(chunk: Chunk, *, journal: Journal, storage) -> tuple[Chunk, bool | None, Outcome | None]:
    """What to do with an open chunk: ``(chunk, resume, None)`` to run it (a new run when ``resume`` is False),
    or ``(chunk, None, outcome)`` when its run already finished (the driver stopped before recording it)."""
    from clinisynth.agents.runner import new_run_id
    from clinisynth.generation.storage import run_state

    if chunk.run_id is None:
        return journal.start_run(chunk, new_run_id()), False, None
    run_dir = Path(storage.root) / "runs" / chunk.run_id
    if not run_dir.exists():
        return chunk, False, None  # killed after the journal named the run, before the run folder was made
    if not storage.trace_path(chunk.run_id).is_file():
        if any(path.is_file() for path in run_dir.rglob("*")):
            raise CampaignError(f"run {chunk.run_id} of this campaign has files but no trace.json; move "
                                f"{run_dir} away and run the campaign again")
        for folder in sorted(run_dir.rglob("*"), reverse=True):
            folder.rmdir()
        run_dir.rmdir()
        return chunk, False, None
    trace = storage.read_trace(chunk.run_id)
    state = run_state(trace)
    if state == "running":
        process = trace.get("process") or {}
        raise CampaignError(f"run {chunk.run_id} of this campaign is still running (process {process.get('pid')} "
                            f"on {process.get('host')}); wait for it or stop it, then run the campaign again")
    if state in ("interrupted", "cancelled") or trace.get("error"):  # cancelled: stopped by ``should_stop``
        return chunk, True, None
    return chunk, None, outcome_of_trace(chunk.run_id, trace)


def announce_campaign(journal: Journal, notify: Callable[[str, dict], None]) -> tuple[Counter, int]:
    """Slots decided so far (stored or given up), per item number and in all; sends the ``campaign`` event."""
    done_by_item = Counter(slot["item"] for slot in journal.slots() if slot["state"] in ("stored", "given_up"))
    counts = journal.counts()
    decided = counts["stored"] + counts["given_up"]
    notify("campaign", {"total": counts["total"], "done": decided, "items": len(journal.items())})
    return done_by_item, decided


def run_campaign(journal: Journal, worker, *, storage, chunk_size: int,
                 on_progress: Callable[[str, dict], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> dict:
    """Run every open chunk of the journal, in item then slot order, and record each run as it ends.

    A chunk whose run was interrupted (kill, Ctrl-C, an error, a stop) is resumed from its checkpoint with
    ``resume=True``; one whose run finished before the journal heard of it is recorded from its trace; a run
    that never got a checkpoint and filed nothing is replaced by a new one. An exception stops the campaign
    (the run's trace and the journal say where); the next call continues from there.

    Args:
        should_stop: asked before every chunk and, inside a run, after every graph step; when it answers true the
            campaign stops there: the images filed so far stay, the stopped run stays open in the journal (the
            next call resumes it) and the result says ``cancelled``.

    Returns:
        ``counts`` (the journal's slots per state at the end), ``runs`` (runs started or resumed here),
        ``resumed`` (of them, continued from a checkpoint), ``recorded`` (finished runs only recorded here),
        ``cancelled`` (``should_stop`` stopped it).
    """
    from clinisynth.agents.runner import CANCELLED
    from clinisynth.agents.planner import PlanError

    notify = on_progress or (lambda event, info: None)
    done_by_item, decided = announce_campaign(journal, notify)
    ran, cancelled = Counter(), False
    for chunk in journal.open_chunks(chunk_size):
        if should_stop is not None and should_stop():
            cancelled = True
            break
        item = chunk.item
        notify("item", {"item": item.key, "label": item.label, "count": item.count, "done": done_by_item[item.item]})
        chunk, resume, outcome = _settle(chunk, journal=journal, storage=storage)
        ran["recorded" if outcome is not None else "resumed" if resume else "new"] += 1
        if outcome is None:
            stored_now = [0]

            def forward(event: str, info: dict, key: str = item.key) -> None:
                if event == "stored":
                    stored_now[0] += 1
                    notify("slot", {"item": key, "done": done_by_item[item.item] + stored_now[0],
                                    "campaign_done": decided + stored_now[0]})

            started = time.perf_counter()
            notify("run", {"item": item.key, "run_id": chunk.run_id, "resume": bool(resume)})
            try:
                outcome = worker.run(chunk, resume=bool(resume), on_progress=forward, should_stop=should_stop)
            except PlanError as error:
                if not resume or any(r.get("run_id") == chunk.run_id for r in storage.read_metadata()):
                    raise
                # Killed before its first checkpoint: nothing was drawn or filed; start the chunk again.
                chunk = journal.start_run(journal.abandon_run(chunk, f"not resumable: {error}"), _fresh_run_id())
                notify("run", {"item": item.key, "run_id": chunk.run_id, "resume": False})
                outcome = worker.run(chunk, resume=False, on_progress=forward, should_stop=should_stop)
            except BaseException:
                journal.add_wall_time(chunk.run_id, time.perf_counter() - started)
                raise
            if outcome.status == CANCELLED:  # stopped mid-run: it stays open in the journal, resumed next time
                journal.add_wall_time(chunk.run_id, time.perf_counter() - started)
                cancelled = True
                break
        journal.finish_run(chunk, status=outcome.status, stored=outcome.stored, seconds=outcome.seconds)
        done_by_item[item.item] += chunk.n
        decided += chunk.n
        notify("chunk", {"item": item.key, "done": done_by_item[item.item], "count": item.count,
                         "campaign_done": decided, "run_id": chunk.run_id, "status": outcome.status})
    return {"counts": journal.counts(), "runs": ran["new"] + ran["resumed"], "resumed": ran["resumed"],
            "recorded": ran["recorded"], "cancelled": cancelled}


def _fresh_run_id() -> str:
    from clinisynth.agents.runner import new_run_id

    return new_run_id()
