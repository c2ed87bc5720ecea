"""Run ids sort in the order they were made, whatever the clock does."""

from __future__ import annotations

import subprocess
import sys

from clinisynth.agents import runner
from clinisynth.agents.runner import new_run_id
from clinisynth.generation.storage import OrderedStorage, check_run_id


def test_run_ids_made_in_a_tight_loop_sort_in_creation_order_and_are_safe_folder_names():
    ids = [new_run_id() for _ in range(5000)]  # many share a microsecond of the wall clock
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(check_run_id(run_id) == run_id for run_id in ids)


def test_run_ids_keep_their_order_when_the_clock_stands_still_or_steps_back(monkeypatch):
    clock = iter([2_000_000_000_000_000_000] * 3 + [1_999_999_999_000_000_000] * 2 + [2_000_000_001_000_000_000])
    monkeypatch.setattr(runner.time, "time_ns", lambda: next(clock))
    monkeypatch.setattr(runner, "_last_run_micros", 0)
    ids = [new_run_id() for _ in range(6)]
    assert ids == sorted(ids) and len(set(ids)) == 6
    assert ids[0].startswith("20330518T033320.000000Z-") and ids[4].startswith("20330518T033320.000004Z-")
    assert ids[5].startswith("20330518T033321.000000Z-")


def test_run_ids_of_two_processes_do_not_collide(tmp_path):
    code = "from clinisynth.agents.runner import new_run_id; print('\\n'.join(new_run_id() for _ in range(200)))"
    # cwd outside the checkout: with -c the current folder is first on sys.path (see test_install.py)
    outputs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path).stdout.split()
               for _ in range(2)]
    assert len(set(outputs[0]) | set(outputs[1])) == 400


def test_run_listing_follows_the_ids_not_the_trace_files_times(tmp_path):
    storage = OrderedStorage(tmp_path)
    first, second = new_run_id(), new_run_id()
    storage.write_trace(second, {"status": "complete"})
    storage.write_trace(first, {"status": "complete"})  # rewritten later, e.g. a resumed run's final trace
    assert [run["run_id"] for run in storage.list_runs()] == [first, second]
