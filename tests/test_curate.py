"""Curation campaigns (issue 13), in process, on the tiny profile: the campaign file and its line numbers, balance
targets, the journal and scheduler's resume paths, the smallest campaign end to end, reruns, a changed campaign
file, --skip-invalid, and kill -9 of the driver then rerun (tests/_curate_drill.py)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clinisynth.cli.main import app
from clinisynth.curation.journal import Journal, PlannedItem, journal_path
from clinisynth.curation.scheduler import PlannedRow, allocate, run_campaign
from clinisynth.curation.spec import CampaignError, Row, differences, item_seed, load_campaign
from clinisynth.curation.worker import Outcome
from clinisynth.generation.storage import PENDING_NAME, OrderedStorage

ROOT = Path(__file__).resolve().parents[1]
DRILL = Path(__file__).with_name("_curate_drill.py")

SMALLEST = """\
profile: tiny
seed: 0
items:
  - description: "right lower lobe pneumonia, PA chest radiograph"
    count: 3
  - description: "normal chest radiograph"
    count: 2
"""
#: The smallest campaign in chunks of two slots, two sampler steps: five runs' worth of kill points.
DRILLED = SMALLEST + "steps: 2\nchunk_size: 2\n"


def _write(folder: Path, text: str, name: str = "campaign.yaml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def _problems(path: Path) -> list[str]:
    with pytest.raises(CampaignError) as caught:
        load_campaign(path)
    return caught.value.problems


# --- the campaign file ----------------------------------------------------------------------------------------

def test_the_smallest_campaign_reads_with_ids_lines_and_seeds_from_the_campaign_seed(tmp_path):
    loaded = load_campaign(_write(tmp_path, SMALLEST))
    assert [(r.key, r.line, r.count) for r in loaded.rows] == [("1", 4, 3), ("2", 6, 2)]
    assert loaded.name == "campaign" and loaded.campaign.profile == "tiny"
    assert item_seed(0, "1") != item_seed(0, "2") and item_seed(0, "1") != item_seed(1, "1")
    assert item_seed(0, "1") == item_seed(0, "1") < 2**40


def test_schema_errors_name_the_line(tmp_path):
    path = _write(tmp_path, """\
profile: tiny
seed: 0
colour: red
items:
  - description: "right lower lobe pneumonia, PA chest radiograph"
    count: 0
  - description: "normal chest radiograph"
    cuont: 2
  - description: "small left pneumothorax, PA chest radiograph"
    count: 200000
steps: 0
""")
    problems = _problems(path)
    assert problems[0].startswith("campaign.yaml:3: unknown key 'colour'") and "known here: name, profile" in problems[0]
    assert problems[1] == "campaign.yaml:6: items[0].count: must be at least 1, got 0"
    assert problems[2].startswith("campaign.yaml:8: unknown key 'items[1].cuont' (known here: description, count")
    assert problems[3].startswith("campaign.yaml:10: items[2].count: must be at most 100000 (the limit)")
    assert problems[4].startswith("campaign.yaml:11: steps: must be at least 1")


@pytest.mark.parametrize("text, expected", [
    ("profile: tiny\nprofile: demo\nitems: []\n", "campaign.yaml:2: key 'profile' given twice"),
    ("items:\n  - description: [unclosed\n", "campaign.yaml:3: not valid YAML"),
    ("seed: 0\nitems:\n  - description: x-ray\n", "campaign.yaml:3: item 1 has no count"),
    ("items:\n  - description: '  '\n    count: 1\n", "campaign.yaml:2: items[0].description: the description is empty"),
    ("balance:\n  per_label: 3\nitems:\n  - description: a\n    count: 2\n", "campaign.yaml:4: item 1 has a count"),
    ("verifier_thresholds:\n  chest_xray:\n    min_probability: 0.5\nitems:\n  - {description: a, count: 1}\n",
     "campaign.yaml:3: unknown key 'verifier_thresholds.chest_xray.min_probability'"),
    ("verifier_thresholds:\n  chest_xray:\n    min_label_probability: 5\nitems:\n  - {description: a, count: 1}\n",
     "campaign.yaml:3: verifier_thresholds.chest_xray: min_label_probability must be between 0 and 1"),
    ("items_file: rows.txt\ncount: 1\n", "campaign.yaml:1: items_file rows.txt must be .csv or .jsonl"),
    ("balance:\n  match: nowhere\nitems:\n  - description: a\n", "campaign.yaml:2: balance.match: no manifest.csv"),
    ("seed: 0\n", "campaign.yaml:1: the campaign lists no items"),
])
def test_each_problem_is_named_with_its_line(tmp_path, text, expected):
    problems = _problems(_write(tmp_path, text))
    assert any(problem.startswith(expected) for problem in problems), problems


def test_items_files_give_rows_with_their_lines_and_bad_rows_apart(tmp_path):
    (tmp_path / "rows.csv").write_text("id,description,count\nr1,normal chest radiograph,2\nr2,,1\n"
                                       "r3,small left pneumothorax,0\n", encoding="utf-8")
    loaded = load_campaign(_write(tmp_path, "items_file: rows.csv\n"))
    assert [(r.key, r.source, r.line, r.count) for r in loaded.rows] == [("r1", "rows.csv", 2, 2)]
    assert [(r.line, r.why.split(":")[0]) for r in loaded.bad_rows] == [(3, "description"), (4, "count")]
    (tmp_path / "rows.jsonl").write_text('{"description": "normal chest radiograph"}\n\nnot json\n'
                                         '{"description": "x", "colour": 1}\n', encoding="utf-8")
    loaded = load_campaign(_write(tmp_path, "items:\n  - {description: a, count: 1}\nitems_file: rows.jsonl\n"
                                            "count: 4\n"))
    assert [(r.key, r.source, r.line, r.count) for r in loaded.rows] == [("1", "campaign.yaml", 2, 1),
                                                                          ("2", "rows.jsonl", 1, 4)]
    assert [(r.line, r.why[:14]) for r in loaded.bad_rows] == [(3, "not valid JSON"), (4, "unknown key(s)")]
    (tmp_path / "wide.csv").write_text("description,colour\na,b\n", encoding="utf-8")
    assert _problems(_write(tmp_path, "items_file: wide.csv\ncount: 1\n")) == [
        "wide.csv:1: unknown column(s) ['colour'] (columns: description, count, id)"]


def test_differences_name_each_changed_key():
    old = {"campaign": {"seed": 0}, "items": [{"count": 2}, {"count": 1}]}
    new = {"campaign": {"seed": 1}, "items": [{"count": 3}]}
    assert differences(old, new) == ["campaign.seed: 0 -> 1", "items[0].count: 2 -> 3",
                                     'items[1]: removed (was {"count": 1})']


def _planned(label: str, key: str, line: int) -> PlannedRow:
    return PlannedRow(row=Row(key=key, source="c.yaml", line=line, description=label, count=None),
                      modality="chest_xray", label=label)


def test_balance_targets_give_each_label_its_share(tmp_path):
    rows = [_planned("pneumonia", "1", 1), _planned("normal", "2", 2), _planned("pneumonia", "3", 3)]
    loaded = load_campaign(_write(tmp_path, "balance:\n  per_label: 5\nitems:\n  - description: a\n"))
    assert [(r.row.key, n) for r, n in allocate(loaded, rows)] == [("1", 3), ("2", 5), ("3", 2)]
    real = tmp_path / "real"
    real.mkdir()
    (real / "manifest.csv").write_text("path,label\n" + "a.png,normal\n" * 1 + "b.png,pneumonia\n" * 3,
                                       encoding="utf-8")
    loaded = load_campaign(_write(tmp_path, "balance:\n  match: real\n  total: 8\nitems:\n  - description: a\n"))
    assert [(r.row.key, n) for r, n in allocate(loaded, rows)] == [("1", 3), ("2", 2), ("3", 3)]
    with pytest.raises(CampaignError, match="the real dataset has label\\(s\\) normal that no item plans to"):
        allocate(loaded, [rows[0]])
    with pytest.raises(CampaignError, match="plan to label\\(s\\) effusion, which the real dataset does not have"):
        allocate(loaded, [*rows, _planned("effusion", "4", 4)])


def test_a_campaign_over_the_total_limit_is_refused(tmp_path, monkeypatch):
    from clinisynth.curation import scheduler

    monkeypatch.setattr(scheduler, "MAX_CAMPAIGN_IMAGES", 6)
    loaded = load_campaign(_write(tmp_path, "balance:\n  per_label: 4\nitems:\n  - description: a\n"))
    with pytest.raises(CampaignError, match="asks for 8 images, more than the limit of 6"):
        allocate(loaded, [_planned("pneumonia", "1", 1), _planned("normal", "2", 2)])


# --- journal and scheduler, with a stand-in worker ----------------------------------------------------------

class RecordingWorker:
    """Stands in for the loaded models: gives up every slot, and remembers what it was asked."""

    def __init__(self, status="failed"):
        self.calls, self.status = [], status

    def run(self, chunk, *, resume, on_progress=None, should_stop=None):
        self.calls.append((chunk.item.key, chunk.first_slot, chunk.n, chunk.seed, chunk.run_id, resume))
        return Outcome(run_id=chunk.run_id, status=self.status, stored={})


def _journal(tmp_path: Path, counts=(3, 2)) -> Journal:
    items = [PlannedItem(item=i, key=str(i), source="c.yaml", line=i, description=f"d{i}", modality="chest_xray",
                         label="normal", count=count, seed=1000 * i) for i, count in enumerate(counts, start=1)]
    return Journal.create(journal_path(tmp_path), name="c", fingerprint="f", canonical={}, parameters={}, items=items)


def test_slots_run_in_chunks_with_seeds_that_do_not_depend_on_the_chunking(tmp_path):
    journal, worker = _journal(tmp_path), RecordingWorker()
    result = run_campaign(journal, worker, storage=OrderedStorage(tmp_path), chunk_size=2)
    assert [call[:4] for call in worker.calls] == [("1", 0, 2, 1000), ("1", 2, 1, 1002), ("2", 0, 2, 2000)]
    assert result["counts"] == {"pending": 0, "running": 0, "stored": 0, "given_up": 5, "total": 5}
    assert [s["seed"] for s in journal.slots()] == [1000, 1001, 1002, 2000, 2001]
    assert run_campaign(journal, worker, storage=OrderedStorage(tmp_path), chunk_size=2)["runs"] == 0


def test_a_started_chunk_keeps_its_run_and_a_finished_unrecorded_run_is_read_from_its_trace(tmp_path):
    journal, worker = _journal(tmp_path), RecordingWorker()
    storage = OrderedStorage(tmp_path)
    chunks = journal.open_chunks(2)
    never_created = journal.start_run(chunks[0], "run-a")           # killed before its run folder was made
    finished = journal.start_run(chunks[1], "run-b")                # killed after the run, before the journal heard
    storage.write_trace("run-b", {"run_id": "run-b", "status": "complete", "attempts": [
        {"slot": 0, "verdict": "accepted", "stored_as": "chest_xray/normal/normal_000007.png", "seed": 1002}]})
    result = run_campaign(journal, worker, storage=storage, chunk_size=2)
    assert [(c[4], c[5]) for c in worker.calls] == [("run-a", False), (worker.calls[1][4], False)]
    assert worker.calls[1][4] not in ("run-a", "run-b") and never_created.n == 2 and finished.n == 1
    assert result == {"counts": {"pending": 0, "running": 0, "stored": 1, "given_up": 4, "total": 5}, "runs": 2,
                      "resumed": 0, "recorded": 1, "cancelled": False}
    assert journal.stored_files() == [(1, 2, "chest_xray/normal/normal_000007.png")]


def test_a_stop_before_a_chunk_or_inside_a_run_leaves_the_rest_open_for_the_next_call(tmp_path):
    storage = OrderedStorage(tmp_path)
    journal = _journal(tmp_path)
    stopped = run_campaign(journal, RecordingWorker(), storage=storage, chunk_size=2, should_stop=lambda: True)
    assert stopped["cancelled"] and stopped["runs"] == 0 and journal.counts()["pending"] == 5

    cancelling = RecordingWorker(status="cancelled")  # the run stopped at a graph step
    result = run_campaign(journal, cancelling, storage=storage, chunk_size=2, should_stop=lambda: False)
    assert result["cancelled"] and len(cancelling.calls) == 1
    assert journal.counts() == {"pending": 3, "running": 2, "stored": 0, "given_up": 0, "total": 5}
    stopped_run = cancelling.calls[0][4]
    storage.write_trace(stopped_run, {"run_id": stopped_run, "status": "cancelled", "attempts": []})
    resumed = RecordingWorker()
    assert not run_campaign(journal, resumed, storage=storage, chunk_size=2)["cancelled"]
    assert resumed.calls[0][4:] == (stopped_run, True)  # the stopped run is continued, not replaced
    assert journal.counts()["given_up"] == 5


def test_a_journal_that_is_not_one_is_refused(tmp_path):
    path = journal_path(tmp_path)
    path.parent.mkdir()
    path.write_bytes(b"not a database at all, just bytes" * 10)
    with pytest.raises(CampaignError, match="is not a campaign journal"):
        Journal.open(path)


# --- end to end on the tiny profile -------------------------------------------------------------------------

@pytest.fixture()
def runner(cache_dir):
    return CliRunner(env={"CLINISYNTH_CACHE_DIR": str(cache_dir), "CLINISYNTH_CONFIG": None})


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]


def _tree(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_smallest_campaign_runs_end_to_end_and_reruns_do_nothing_more(runner, tmp_path):
    campaign, out = _write(tmp_path, SMALLEST), tmp_path / "out"
    done = runner.invoke(app, ["curate", str(campaign), "--out", str(out)])
    assert done.exit_code == 0, (done.stderr, done.exception)
    assert done.stdout.strip() == str(out / "campaign" / "report.md")
    assert "campaign complete: 5 of 5 image(s) stored" in done.stderr

    records = _records(out)
    assert Counter(r["label"] for r in records) == {"pneumonia": 3, "normal": 2}
    assert sorted(str(p.relative_to(out)) for p in out.glob("chest_xray/*/*.png")) == sorted(r["file_name"] for r in records)
    with (out / "manifest.csv").open(newline="", encoding="utf-8") as handle:
        assert sorted(row["img_savename"] for row in csv.DictReader(handle)) == sorted(r["file_name"] for r in records)
    with Journal.open(journal_path(out), read_only=True) as journal:
        slots = journal.slots()
        assert journal.counts()["stored"] == 5 and len(journal.runs()) == 2
        by_file = {r["file_name"]: r for r in records}
        for slot, item in zip(slots, [1, 1, 1, 2, 2]):
            record = by_file[slot["file_name"]]
            assert slot["item"] == item and record["seed"] == slot["stored_seed"] and record["run_id"] == slot["run_id"]
            assert slot["seed"] == item_seed(0, str(item)) + slot["slot"]
        assert {r["request"] for r in records} == {i.description for i in journal.items()}

    report = json.loads((out / "campaign" / "report.json").read_text())
    assert report["complete"] and report["totals"]["stored"] == report["totals"]["target"] == 5
    assert {key: (c["target"], c["stored"]) for key, c in report["classes"].items()} == {
        "chest_xray/pneumonia": (3, 3), "chest_xray/normal": (2, 2)}
    assert [(i["id"], i["source"], i["stored"]) for i in report["items"]] == [("1", "campaign.yaml:4", 3),
                                                                              ("2", "campaign.yaml:6", 2)]
    for item in report["items"]:
        assert 0 < item["acceptance_rate"] <= 1 and item["seconds_per_image"] > 0
        assert isinstance(item["rejected_by_failure"], dict)
    for name in [*report["plots"].values(), *report["contact_sheets"].values(), "report.md"]:
        assert (out / "campaign" / name).is_file(), name
    assert set(report["contact_sheets"]) == {"chest_xray/pneumonia", "chest_xray/normal"}

    before, runs = _records(out), sorted(p.name for p in (out / "runs").iterdir())
    again = runner.invoke(app, ["curate", str(campaign), "--out", str(out)])
    assert again.exit_code == 0 and "(0 run(s) this time" in again.stderr
    assert _records(out) == before and sorted(p.name for p in (out / "runs").iterdir()) == runs

    # The campaign file changed since the journal was made: refused with the differences, nothing written.
    tree = _tree(tmp_path)
    _write(tmp_path, SMALLEST.replace("count: 2", "count: 4").replace("seed: 0", "seed: 1"))
    tree["campaign.yaml"] = (tmp_path / "campaign.yaml").stat().st_mtime_ns
    changed = runner.invoke(app, ["curate", str(campaign), "--out", str(out)])
    assert changed.exit_code == 2 and isinstance(changed.exception, SystemExit)
    assert changed.stderr.startswith("error: campaign file campaign.yaml has changed since the journal")
    assert "campaign.seed: 0 -> 1" in changed.stderr and "items[1].count: 2 -> 4" in changed.stderr
    assert len([line for line in changed.stderr.splitlines() if line.startswith("error:")]) == 1
    assert _tree(tmp_path) == tree


def test_rows_that_cannot_be_run_are_refused_with_their_lines_or_skipped_into_rejected_csv(runner, tmp_path):
    campaign = _write(tmp_path, """\
profile: tiny
steps: 2
items:
  - description: "normal chest radiograph"
    count: 1
  - description: "the weather is lovely today"
    count: 2
""")
    out = tmp_path / "out"
    refused = runner.invoke(app, ["curate", str(campaign), "--out", str(out)])
    assert refused.exit_code == 2 and refused.stderr.startswith("error: campaign campaign: 1 item(s) cannot be run")
    assert "  campaign.yaml:6: " in refused.stderr and not out.exists()
    skipped = runner.invoke(app, ["curate", str(campaign), "--out", str(out), "--skip-invalid"])
    assert skipped.exit_code == 0, skipped.stderr
    with (out / "campaign" / "rejected.csv").open(newline="", encoding="utf-8") as handle:
        (row,) = list(csv.DictReader(handle))
    assert (row["source"], row["line"], row["description"]) == ("campaign.yaml", "6", "the weather is lovely today")
    assert row["why"] and len(_records(out)) == 1
    assert json.loads((out / "campaign" / "report.json").read_text())["rejected_rows"] == 1


def test_the_python_api_runs_a_campaign(cache_dir, tmp_path):
    import clinisynth
    from clinisynth.settings import Settings

    campaign = _write(tmp_path, "profile: tiny\nsteps: 2\nitems:\n  - {description: normal chest radiograph, count: 1}\n")
    events = []
    result = clinisynth.curate(campaign, out=tmp_path / "out", settings=Settings(cache_dir=cache_dir),
                               on_progress=lambda event, info: events.append(event))
    assert result.complete and result.counts["stored"] == 1 and result.runs == 1 and result.report.is_file()
    assert events[0] == "planned" and "campaign" in events and events[-1] == "chunk"


# --- kill -9 of the driver, then the same command again -----------------------------------------------------

def _env(cache_dir: Path) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CLINISYNTH_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", CLINISYNTH_CACHE_DIR=str(cache_dir),
               PYTHONPATH=str(ROOT / "tests"))
    return env


def _drill(campaign: Path, out: Path, where: str, after: int, cache_dir: Path, *options: str
           ) -> subprocess.CompletedProcess:
    # Run outside the checkout: from its root, ``import clinisynth`` (here, or in a Ray worker started from here)
    # would find the source folder ./clinisynth instead of the installed package.
    return subprocess.run([sys.executable, str(DRILL), str(campaign), str(out), where, str(after), *options],
                          env=_env(cache_dir), capture_output=True, text=True, timeout=600, cwd=campaign.parent)


def _campaign_state(out: Path) -> dict[tuple[int, int], tuple[str, int]]:
    """(item, slot) -> (label, seed) of every stored slot, checking that journal, metadata, manifest and disk agree,
    nothing is duplicated or half-written, and the counters run 1..n per class."""
    records = _records(out)
    with (out / "manifest.csv").open(newline="", encoding="utf-8") as handle:
        manifest = [row["img_savename"] for row in csv.DictReader(handle)]
    pngs = sorted(str(p.relative_to(out)) for p in out.glob("chest_xray/*/*.png"))
    assert sorted(r["file_name"] for r in records) == sorted(manifest) == pngs
    assert len({(r["run_id"], r["slot"]) for r in records}) == len(records)
    assert not list(out.rglob(".*.tmp-*")) and not (out / PENDING_NAME).exists()
    for label in {r["label"] for r in records}:
        numbers = sorted(int(Path(r["file_name"]).stem.rsplit("_", 1)[1]) for r in records if r["label"] == label)
        assert numbers == list(range(1, len(numbers) + 1))
    by_file = {r["file_name"]: r for r in records}
    with Journal.open(journal_path(out), read_only=True) as journal:
        assert journal.counts()["pending"] == journal.counts()["running"] == 0
        stored = {(s["item"], s["slot"]): s for s in journal.slots() if s["state"] == "stored"}
    assert sorted(s["file_name"] for s in stored.values()) == pngs  # every image is a journal slot, once
    for slot in stored.values():
        assert by_file[slot["file_name"]]["seed"] == slot["stored_seed"]
    return {key: (by_file[s["file_name"]]["label"], s["stored_seed"]) for key, s in stored.items()}


@pytest.fixture(scope="module")
def reference(cache_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    done = _drill(_write(folder, DRILLED), folder / "out", "none", 0, cache_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    return _campaign_state(folder / "out")


@pytest.mark.slow
@pytest.mark.parametrize("where, after", [("generate", 3), ("store", 2), ("journal", 2)])
def test_kill_9_of_the_driver_then_rerun_completes_with_nothing_lost_or_repeated(cache_dir, tmp_path, reference,
                                                                               where, after):
    campaign, out = _write(tmp_path, DRILLED), tmp_path / "out"
    killed = _drill(campaign, out, where, after, cache_dir)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    before = _records(out) if (out / "metadata.jsonl").exists() else []

    again = subprocess.run([sys.executable, "-m", "clinisynth.cli.main", "curate", str(campaign), "--out", str(out)],
                           env=_env(cache_dir), capture_output=True, text=True, timeout=600, cwd=out.parent)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _campaign_state(out) == reference  # the same slots, labels and seeds as the uninterrupted campaign
    after_records = {r["file_name"]: r for r in _records(out)}
    assert all(after_records[r["file_name"]] == r for r in before)  # what was filed before the kill is kept as is
    session = json.loads((out / "campaign" / "report.json").read_text())["session"]
    if where == "journal":
        assert session["recorded_from_traces"] == 1 and session["resumed"] == 0
    else:
        assert session["resumed"] == 1
    for run_dir in (out / "runs").iterdir():
        trace = json.loads((run_dir / "trace.json").read_text())
        attempts = [(a["round"], a["slot"], a["candidate"]) for a in trace["attempts"]]
        assert trace["status"] == "complete" and len(attempts) == len(set(attempts))
