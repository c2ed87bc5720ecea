"""Curation campaigns on Ray workers (issue 13), tiny profile, a local Ray of 2 CPUs: 2 workers give exactly the
files, seeds and metadata of one worker in this process; a worker killed (ray.kill) or dying after its chunk loses
and duplicates nothing; kill -9 of the driver then rerun completes; and the duplicate check across concurrent chunks
(the bad input of --workers is in test_bad_input.py)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from clinisynth.curation.journal import Journal, journal_path
from test_curate import DRILLED, _campaign_state, _drill, _env, _records, _write

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow

#: More chunks than workers, two items: chunks finish out of order and must still be filed in order.
CAMPAIGN = DRILLED


def _curate(campaign: Path, out: Path, cache_dir: Path, **options):
    import clinisynth
    from clinisynth.settings import Settings

    return clinisynth.curate(campaign, out=out, settings=Settings(cache_dir=cache_dir), **options)


@pytest.fixture(scope="module")
def in_process(cache_dir, tmp_path_factory):
    """The campaign with one worker in this process, at one thread: a Ray worker has one CPU, so one thread, and
    float sums (so pixels) depend on the thread count."""
    import torch

    folder = tmp_path_factory.mktemp("in-process")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = _curate(_write(folder, CAMPAIGN), folder / "out", cache_dir)
    finally:
        torch.set_num_threads(threads)
    assert result.complete and not result.workers
    return folder / "out"


@pytest.fixture(autouse=True)
def outside_the_checkout(tmp_path, monkeypatch):
    """Ray starts its workers in the driver's working directory and puts it on their ``sys.path``: from the
    checkout's root, ``import clinisynth`` there would find the source folder ./clinisynth, not the installed
    package (as it would for a user who runs ``clinisynth curate`` inside a source checkout)."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture()
def no_ray_left():
    yield
    if ray.is_initialized():  # a failed test must not leave its Ray to the next one
        ray.shutdown()


def _without_run_ids(out: Path) -> list[dict]:
    return [{k: v for k, v in record.items() if k not in ("run_id", "created_at")} for record in _records(out)]


def _same(a, b, where: str = "") -> list[str]:
    """Where ``a`` and ``b`` differ: exactly, but floats (scores) to 1e-6, since the driver embeds the duplicate
    check's references from the PNGs in another process, so similarities may differ in their last float bits."""
    if isinstance(a, float) and isinstance(b, float):
        return [] if math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6) else [f"{where}: {a} != {b}"]
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where}: keys {sorted(a)} != {sorted(b)}"]
        return [problem for key in a for problem in _same(a[key], b[key], f"{where}.{key}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} items != {len(b)}"]
        return [problem for i, (x, y) in enumerate(zip(a, b)) for problem in _same(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def _images(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in out.glob("chest_xray/*/*.png")}


def _slots(out: Path) -> list[tuple]:
    with Journal.open(journal_path(out), read_only=True) as journal:
        return [(s["item"], s["slot"], s["state"], s["seed"], s["file_name"], s["stored_seed"]) for s in journal.slots()]


def _attempts(out: Path) -> list[list[tuple]]:
    """Per run (in slot order), every attempt's slot, round, seed, verdict and filed name."""
    runs = []
    for run_dir in (out / "runs").iterdir():
        trace = json.loads((run_dir / "trace.json").read_text())
        runs.append((trace["parameters"]["seed"], [(a["slot"], a["round"], a["seed"], a["verdict"], a.get("stored_as"))
                                                   for a in trace["attempts"]]))
    return [attempts for _, attempts in sorted(runs)]


def test_two_ray_workers_give_exactly_the_files_seeds_and_metadata_of_one_worker_in_process(
        cache_dir, tmp_path, in_process, no_ray_left):
    out = tmp_path / "out"
    result = _curate(_write(tmp_path, CAMPAIGN), out, cache_dir, workers=2)
    assert result.complete and result.counts["stored"] == 5 and result.requeued == 0
    assert len(result.workers) == 2 and all(w["rss_bytes"] > 0 and w["pid"] != os.getpid() for w in result.workers)
    assert sum(w["chunks"] for w in result.workers) == 3  # every chunk ran on a worker, none in the driver

    assert not _same(_without_run_ids(out), _without_run_ids(in_process))  # seeds, scores, names, in the same order
    assert _images(out) == _images(in_process)  # the same pixels under the same names
    assert [s[:4] + s[5:] for s in _slots(out)] == [s[:4] + s[5:] for s in _slots(in_process)]
    assert [s[4] for s in _slots(out)] == [s[4] for s in _slots(in_process)]
    assert _attempts(out) == _attempts(in_process)
    # The driver wrote every run folder whole; a worker's checkpoint stays with it.
    for run_dir in (out / "runs").iterdir():
        trace = json.loads((run_dir / "trace.json").read_text())
        assert trace["status"] == "complete" and trace["worker"]["pid"] != os.getpid()
        assert all((out / name).is_file() for name in trace["stored"])
        assert (run_dir / "attempts.png").is_file() and not (run_dir / "checkpoints.sqlite").exists()
    assert not list(out.rglob(".*.tmp-*"))
    assert not ray.is_initialized()  # the campaign shut its Ray down

    again = _curate(_write(tmp_path, CAMPAIGN), out, cache_dir, workers=2)
    assert again.runs == 0 and not _same(_without_run_ids(out), _without_run_ids(in_process))


def _dying_worker_class(marker: Path):
    """A :class:`CampaignWorker` that, as the first to run item 2, runs its chunk and then dies before returning
    it (the marker file says who was first, across the workers' processes)."""
    from clinisynth.curation.ray_workers import CampaignWorker

    class Dying(CampaignWorker):
        def run(self, work):
            result = super().run(work)
            if work.label == "normal":
                try:
                    os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                except FileExistsError:
                    return result
                os._exit(1)  # the chunk was generated and verified; its result never reaches the driver
            return result

    return Dying


@pytest.mark.parametrize("how", ["ray.kill", "dies after its chunk"])
def test_a_worker_that_dies_has_its_chunk_sent_again_and_nothing_is_lost_or_filed_twice(
        cache_dir, tmp_path, in_process, no_ray_left, monkeypatch, how):
    from clinisynth.curation import ray_workers

    events = []
    killed = []

    def on_progress(event: str, info: dict) -> None:
        events.append((event, info.get("run_id")))
        if how == "ray.kill" and event == "sending" and info["first_slot"] == 2 and not killed:
            # The second chunk of item 1: its worker is killed as the chunk is handed to it.
            ray.kill(info["worker"])
            while True:  # until the kill has landed (tasks sent after it fail), not for a time
                try:
                    ray.get(info["worker"].describe.remote())
                except ray.exceptions.RayActorError:
                    break
            killed.append(info["run_id"])

    if how != "ray.kill":
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this file
        monkeypatch.setattr(ray_workers, "CampaignWorker", _dying_worker_class(tmp_path / "died"))
    out = tmp_path / "out"
    result = _curate(_write(tmp_path, CAMPAIGN), out, cache_dir, workers=2, on_progress=on_progress)

    assert result.complete and result.requeued == 1
    requeued = [run_id for event, run_id in events if event == "requeued"]
    assert len(requeued) == 1 and (how != "ray.kill" or requeued == killed)
    # Sent twice under the same run id (the same seeds), recorded once.
    assert [run_id for event, run_id in events if event == "sent"].count(requeued[0]) == 2
    with Journal.open(journal_path(out), read_only=True) as journal:
        assert [run["run_id"] for run in journal.runs()].count(requeued[0]) == 1
    assert _campaign_state(out) == _campaign_state(in_process)  # every slot once, same labels and seeds
    assert not _same(_without_run_ids(out), _without_run_ids(in_process)) and _images(out) == _images(in_process)


@pytest.mark.parametrize("where, after", [("store", 3), ("journal", 2)])
def test_kill_9_of_the_ray_driver_then_rerun_completes_with_nothing_lost_or_repeated(cache_dir, tmp_path, in_process,
                                                                                   where, after):
    campaign, out = _write(tmp_path, CAMPAIGN), tmp_path / "out"
    # store: the driver killed writing its 3rd image; journal: once the 2nd chunk is filed, before it is recorded.
    killed = _drill(campaign, out, where, after, cache_dir, "--workers", "2")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    before = _records(out)
    assert 0 < len(before) < 5

    again = subprocess.run([sys.executable, "-m", "clinisynth.cli.main", "curate", str(campaign), "--out", str(out),
                            "--workers", "2"], env=_env(cache_dir), capture_output=True, text=True, timeout=600,
                           cwd=out.parent)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _campaign_state(out) == _campaign_state(in_process)
    after = {r["file_name"]: r for r in _records(out)}
    assert all(after[r["file_name"]] == r for r in before)  # what was filed before the kill is kept as is
    assert not list(out.rglob(".*.tmp-*"))
    session = json.loads((out / "campaign" / "report.json").read_text())["session"]
    assert session["recorded_from_traces"] == (1 if where == "journal" else 0)


# --- the duplicate check across chunks that ran at the same time ---------------------------------------------

def test_a_duplicate_of_an_image_filed_while_the_chunk_ran_sends_the_chunk_again():
    from clinisynth.curation.remote import AcceptedImage, ChunkResult, KnownImages, conflicts

    known = KnownImages()
    first = np.array([1.0, 0.0, 0.0], np.float32)
    known.add(modality="chest_xray", run_id="a", file_name="chest_xray/normal/normal_000001.png", embedding=first)
    mark = known.mark("chest_xray")
    known.add(modality="chest_xray", run_id="b", file_name="chest_xray/normal/normal_000002.png",
              embedding=np.array([0.0, 1.0, 0.0], np.float32))
    known.add(modality="chest_xray", run_id="c", file_name="chest_xray/normal/normal_000003.png",
              embedding=np.array([0.0, 1.0, 0.0], np.float32))  # c's own image, left out for c

    def result(embedding) -> ChunkResult:
        image = AcceptedImage(slot=0, file_name="x.png", png=b"", metadata={}, embedding=np.asarray(embedding, np.float32),
                              duplicate={"similarity": 0.0, "threshold": 0.95, "n_accepted": 1})
        return ChunkResult(run_id="c", status="complete", trace={}, files={}, images=[image], seconds=0.0)

    extra = known.since("chest_xray", mark, without_run="c")
    assert extra.shape == (1, 3)  # b's image only: a's was sent with the chunk, c's is its own
    assert conflicts(result([0.0, 1.0, 0.01]), extra=extra)  # a duplicate of b's image: the worker did not see it
    assert not conflicts(result([0.0, 0.3, 1.0]), extra=extra)
    assert not conflicts(result([0.0, 1.0, 0.0]), extra=known.since("chest_xray", known.mark("chest_xray")))
    assert known.since("chest_xray", without_run="a").shape == (2, 3)
    known.add(modality="chest_xray", run_id="a", file_name="chest_xray/normal/normal_000001.png", embedding=first)
    assert known.mark("chest_xray") == 3  # a file already known is not counted twice


def _cannot_load():
    from clinisynth.curation.ray_workers import CampaignWorker

    class CannotLoad(CampaignWorker):
        def __init__(self, **options):
            raise FileNotFoundError("no model at /nowhere/unet")

    return CannotLoad


def test_workers_that_cannot_load_their_models_stop_the_campaign_with_the_cause(no_ray_left):
    from clinisynth.curation.ray_workers import WorkerPool, ray_session
    from clinisynth.curation.spec import CampaignError

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this file
    with ray_session(workers=1, address=None) as session:
        with pytest.raises(CampaignError) as refused:
            WorkerPool(ray=session, count=1, options={}, worker_class=_cannot_load())
    assert str(refused.value) == "campaign workers could not start: FileNotFoundError: no model at /nowhere/unet"
    assert not ray.is_initialized()
