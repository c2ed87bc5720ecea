"""Store as they pass, and resume after a kill: kill -9 drills in a subprocess, then ``generate --resume``.

After a drill: 0 images lost (the same slots and seeds as an uninterrupted run), 0 duplicated, 0 half-written
files, the counters continue, and the trace says the run was resumed.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from _graph_helpers import REQUEST as GRAPH_REQUEST
from _graph_helpers import ScriptedGenerator
from PIL import Image
from typer.testing import CliRunner

from clinisynth.agents.runner import run_generation
from clinisynth.cli.main import app
from clinisynth.generation import storage as storage_module
from clinisynth.generation.storage import PENDING_NAME, OrderedStorage, StorageError

DRILL = Path(__file__).with_name("_kill_drill.py")
ROOT = Path(__file__).resolve().parents[1]


def _image(value: int) -> Image.Image:
    return Image.new("L", (16, 16), value)


def test_a_store_killed_after_its_png_is_finished_once_by_the_next_store(tmp_path, monkeypatch):
    storage = OrderedStorage(tmp_path)
    storage.store(image=_image(1), modality="chest_xray", label="normal", metadata={"seed": 1})

    def killed(*args, **kwargs):
        raise SystemExit("killed between the PNG and its metadata line")

    monkeypatch.setattr(storage_module, "_append_durably", killed)
    with pytest.raises(SystemExit):
        storage.store(image=_image(2), modality="chest_xray", label="normal", metadata={"seed": 2})
    monkeypatch.undo()
    assert (tmp_path / PENDING_NAME).is_file() and len(storage.read_metadata()) == 1

    OrderedStorage(tmp_path).recover()
    OrderedStorage(tmp_path).recover()  # nothing left to do: still once
    records = storage.read_metadata()
    assert [r["seed"] for r in records] == [1, 2] and not (tmp_path / PENDING_NAME).exists()
    with (tmp_path / "manifest.csv").open(newline="") as handle:
        assert [row["img_savename"] for row in csv.DictReader(handle)] == [r["file_name"] for r in records]
    third = storage.store(image=_image(3), modality="chest_xray", label="normal", metadata={"seed": 3})
    assert third.index == 3  # the counters continue


def test_a_store_killed_before_its_png_only_skips_a_number(tmp_path, monkeypatch):
    storage = OrderedStorage(tmp_path)
    real = storage_module.write_atomically

    def no_png(path, data):
        if Path(path).suffix == ".png":
            raise SystemExit("killed before the PNG")
        return real(path, data)

    monkeypatch.setattr(storage_module, "write_atomically", no_png)
    with pytest.raises(SystemExit):
        storage.store(image=_image(1), modality="chest_xray", label="normal", metadata={"seed": 1})
    monkeypatch.undo()
    stored = storage.store(image=_image(2), modality="chest_xray", label="normal", metadata={"seed": 2})
    assert stored.index == 2 and [r["seed"] for r in storage.read_metadata()] == [2]  # number 1 is never reused


def test_unique_stores_are_idempotent(tmp_path):
    storage = OrderedStorage(tmp_path)
    key = {"run_id": "r1", "slot": 0}
    first = storage.store(image=_image(1), modality="oct", label="normal", metadata={**key, "seed": 1}, unique=key)
    again = OrderedStorage(tmp_path).store(image=_image(9), modality="oct", label="normal",
                                           metadata={**key, "seed": 9}, unique=key)
    assert again == first and len(storage.read_metadata()) == 1
    with pytest.raises(StorageError, match="unique"):
        storage.store(image=_image(1), modality="oct", label="normal", metadata={"seed": 1}, unique=key)


class Interrupted(Exception):
    pass


def test_a_run_that_fails_half_way_is_resumed_from_its_checkpoint_without_redoing_slots(planner, tmp_path):
    calls = []

    def script(call, seed):
        calls.append(seed)
        if seed == 101 and calls.count(101) == 1:
            return "noise"  # slot 1 fails round 1
        return "good"

    class FailingOnce(ScriptedGenerator):
        failed = False

        def generate(self, **kwargs):
            if len(self.calls) == 1 and not FailingOnce.failed:  # round 2: the process "dies"
                FailingOnce.failed = True
                raise Interrupted("power cut")
            return super().generate(**kwargs)

    storage = OrderedStorage(tmp_path / "out")
    arguments = dict(planner=planner, storage=storage, request=GRAPH_REQUEST, n_images=2, seed=100, steps=10,
                     guidance=5.0, max_rounds=3, profile="scripted")
    with pytest.raises(Interrupted):
        run_generation(generator=FailingOnce(script), **arguments)
    (run_dir,) = (tmp_path / "out" / "runs").iterdir()
    # Slot 0 passed in round 1 and was filed at once, before the failure.
    assert [r["slot"] for r in storage.read_metadata()] == [0]
    assert storage.read_trace(run_dir.name)["status"] == "failed"

    generator = ScriptedGenerator(lambda call, seed: "good")
    result = run_generation(generator=generator, run_id=run_dir.name, resume=True, **arguments)
    assert result.status == "complete" and len(generator.calls) == 1 and len(generator.calls[0]["seeds"]) == 1
    assert sorted(r["slot"] for r in storage.read_metadata()) == [0, 1]
    assert result.trace["resumed"][0]["after_status"] == "failed" and "power cut" in result.trace["resumed"][0]["error"]
    assert "error" not in result.trace
    with pytest.raises(Exception, match="nothing to resume"):
        from clinisynth.agents.runner import resumable_run

        resumable_run(storage, run_dir.name)


def _env(cache_dir: Path) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CLINISYNTH_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", CLINISYNTH_CACHE_DIR=str(cache_dir),
               PYTHONPATH=str(ROOT / "tests"))
    return env


def _drill(out: Path, where: str, after: int, cache_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(DRILL), str(out), where, str(after)], env=_env(cache_dir),
                          capture_output=True, text=True, timeout=600)


def _filed(out: Path) -> dict[int, dict]:
    """Slot -> metadata record, checking that disk, metadata and manifest agree and nothing is half-written."""
    records = [json.loads(line) for line in (out / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]
    with (out / "manifest.csv").open(newline="", encoding="utf-8") as handle:
        manifest = [row["img_savename"] for row in csv.DictReader(handle)]
    pngs = sorted(str(p.relative_to(out)) for p in out.glob("chest_xray/*/*.png"))
    assert sorted(r["file_name"] for r in records) == sorted(manifest) == pngs  # no orphan, no duplicate
    assert len({r["slot"] for r in records}) == len(records)
    assert not list(out.rglob("*.tmp")) and not list(out.rglob(".*.tmp-*")) and not (out / PENDING_NAME).exists()
    for png in pngs:
        with Image.open(out / png) as image:
            image.verify()
    numbers = sorted(int(Path(name).stem.rsplit("_", 1)[1]) for name in pngs)
    assert numbers == list(range(1, len(numbers) + 1))  # the counters continued
    return {r["slot"]: r for r in records}


@pytest.fixture(scope="module")
def reference(cache_dir, tmp_path_factory) -> dict[int, dict]:
    """The same request, uninterrupted."""
    out = tmp_path_factory.mktemp("reference") / "out"
    done = _drill(out, "none", 0, cache_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    return _filed(out)


@pytest.mark.slow
@pytest.mark.parametrize("where, after", [("generate", 3), ("store", 2)])
def test_kill_9_during_a_run_then_resume_loses_and_repeats_nothing(cache_dir, tmp_path, reference, where, after):
    out = tmp_path / "out"
    killed = _drill(out, where, after, cache_dir)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    (run_dir,) = (out / "runs").iterdir()
    before = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()] \
        if (out / "metadata.jsonl").exists() else []

    runner = CliRunner(env={"CLINISYNTH_CACHE_DIR": str(cache_dir), "CLINISYNTH_CONFIG": None})
    listing = runner.invoke(app, ["trace", "list", str(out)])
    assert listing.exit_code == 0 and "interrupted" in listing.stdout and run_dir.name in listing.stdout
    refused = runner.invoke(app, ["generate", "--resume", run_dir.name, "--out", str(out), "-n", "9"])
    assert refused.exit_code == 2 and "leave out -n" in refused.stderr

    # Run outside the checkout: with -m the current folder comes first on sys.path, and the source folder
    # clinisynth/ there is not the installed package (CI installs it non-editable).
    resumed = subprocess.run([sys.executable, "-m", "clinisynth.cli.main", "generate", "--resume", run_dir.name,
                              "--out", str(out)], env=_env(cache_dir), capture_output=True, text=True, timeout=600,
                             cwd=out.parent)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    filed = _filed(out)
    assert {slot: r["seed"] for slot, r in filed.items()} == {slot: r["seed"] for slot, r in reference.items()}
    assert [r["file_name"] for r in before] == [filed[r["slot"]]["file_name"] for r in before]  # kept, not redone
    trace = json.loads((run_dir / "trace.json").read_text())
    assert trace["status"] == "complete" and len(trace["resumed"]) == 1 and "process" not in trace
    attempts = [(a["round"], a["slot"], a["candidate"]) for a in trace["attempts"]]
    assert len(attempts) == len(set(attempts))  # no candidate drawn twice
    again = runner.invoke(app, ["generate", "--resume", run_dir.name, "--out", str(out)])
    assert again.exit_code == 2 and "nothing to resume" in again.stderr


def test_resume_of_an_unknown_run_is_one_error_line(cache_dir, tmp_path):
    runner = CliRunner(env={"CLINISYNTH_CACHE_DIR": str(cache_dir), "CLINISYNTH_CONFIG": None})
    result = runner.invoke(app, ["generate", "--resume", "20261121T000000.000000Z-00000000", "--out", str(tmp_path)])
    assert result.exit_code == 2 and result.stderr.startswith("error: no trace for run")
    missing = runner.invoke(app, ["generate", "--out", str(tmp_path)])
    assert missing.exit_code == 2 and "give a description" in missing.stderr
