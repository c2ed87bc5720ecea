"""Drills: concurrent ``generate`` processes into one dir, repeated identical commands, kill -9 then carry on.

No assertion depends on timing: whatever order the processes take the lock in, every image is stored, no two
are byte-identical and no seed is drawn twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clinisynth.cli.main import app
from clinisynth.generation.storage import PENDING_NAME, SEEDS_NAME

ROOT = Path(__file__).resolve().parents[1]
DRILL = Path(__file__).with_name("_kill_drill.py")
REQUEST = "moderate right pleural effusion with basal atelectasis, PA chest radiograph"


def _env(cache_dir: Path) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CLINISYNTH_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", CLINISYNTH_CACHE_DIR=str(cache_dir),
               PYTHONPATH=str(ROOT / "tests"))
    return env


def _generate_command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "clinisynth.cli.main", "generate", REQUEST, "--out", str(out), "--profile", "tiny",
            *extra]


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]


def _check_whole(out: Path, expected: int) -> list[dict]:
    """``expected`` images, each PNG with one row, none byte-identical, no seed twice, and doctor finds nothing."""
    records = _records(out)
    pngs = sorted(out.glob("chest_xray/*/*.png"))
    assert len(records) == len(pngs) == expected
    assert sorted(r["file_name"] for r in records) == sorted(str(p.relative_to(out)) for p in pngs)
    assert len({hashlib.sha256(p.read_bytes()).hexdigest() for p in pngs}) == expected  # 0 byte-identical
    assert len({r["seed"] for r in records}) == expected
    doctor = CliRunner().invoke(app, ["doctor", str(out)])
    assert doctor.exit_code == 0 and "healthy" in doctor.stdout, doctor.output
    return records


@pytest.fixture(scope="module")
def built(cache_dir):
    """The tiny pipeline built once, before processes race to use it."""
    from clinisynth.generation.profiles import resolve_profile

    resolve_profile("tiny", cache_dir=cache_dir)
    return cache_dir


@pytest.mark.slow
@pytest.mark.parametrize("seed", [[], ["--seed", "0"]], ids=["drawn", "same-seed"])
def test_four_concurrent_generate_runs_of_one_description_store_all_and_no_copy(built, tmp_path, seed):
    out = tmp_path / "out"
    processes = [subprocess.Popen(_generate_command(out, "-n", "3", *seed), env=_env(built), cwd=tmp_path,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [(process.wait(timeout=900), *process.communicate()) for process in processes]
    for code, _, stderr in results:
        assert code == 0, stderr[-3000:]
    records = _check_whole(out, 12)
    reservations = [json.loads(line) for line in (out / SEEDS_NAME).read_text().splitlines()]
    assert len(reservations) == 4 and len({r["run_id"] for r in records}) == 4
    if seed:  # one asked-for seed: the runs took consecutive slots, in whatever order they got the lock
        assert sorted(r["base"] for r in reservations) == [0, 3, 6, 9]
        assert sum("continues with the unused ones" in stderr for _, _, stderr in results) == 3
    else:
        assert all(r["requested"] is None for r in reservations)


@pytest.mark.slow
def test_repeating_one_command_keeps_working_and_never_redraws_a_stored_image(built, tmp_path):
    out = tmp_path / "out"
    runner = CliRunner(env={"CLINISYNTH_CACHE_DIR": str(built), "CLINISYNTH_CONFIG": None})
    for attempt in range(5):
        result = runner.invoke(app, ["generate", REQUEST, "-n", "2", "--seed", "0", "--out", str(out),
                                     "--profile", "tiny"])
        assert result.exit_code == 0 and "complete, stored 2 of 2" in result.stderr, result.output
        assert ("note: seeds from 0 were already drawn" in result.stderr) == (attempt > 0)
    records = _check_whole(out, 10)
    bases = sorted({r["run_seed"] for r in records})
    assert bases == [0, 2, 4, 6, 8]  # what one -n 10 --seed 0 run would have drawn first
    drawn = [runner.invoke(app, ["generate", REQUEST, "-n", "1", "--out", str(out), "--profile", "tiny"])
             for _ in range(2)]
    assert all(result.exit_code == 0 and "(drawn)" in result.stderr for result in drawn), drawn[0].output
    _check_whole(out, 12)


@pytest.mark.slow
def test_a_writer_killed_mid_store_then_a_new_run_into_the_dir(built, tmp_path):
    out = tmp_path / "out"
    killed = subprocess.run([sys.executable, str(DRILL), str(out), "store", "2"], env=_env(built),
                            capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (out / PENDING_NAME).exists()  # its second image is on disk without a row
    report = CliRunner().invoke(app, ["doctor", str(out)])
    assert report.exit_code == 0, report.output  # a killed store is no damage: the next store finishes it
    # The same command again (a new run, --seed 11 as the killed one): the health check passes, the killed
    # store is finished, and the new run draws none of the killed run's seeds.
    again = subprocess.run(_generate_command(out, "-n", "4", "--seed", "11"), env=_env(built), cwd=tmp_path,
                           capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and "stored 4 of 4" in again.stderr, again.stderr[-3000:]
    records = _check_whole(out, 6)
    assert sorted(r["run_seed"] for r in records) == [11, 11, 15, 15, 15, 15]
