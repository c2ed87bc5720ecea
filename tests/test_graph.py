"""The LangGraph graph with a scripted generator: bounded refine loop, verdicts, checkpoints, trace."""

from __future__ import annotations

import json
import sqlite3

import pytest

from _graph_helpers import REQUEST, ScriptedGenerator

from clinisynth.agents.graph import NODE_ORDER
from clinisynth.agents.runner import run_generation
from clinisynth.generation.storage import OrderedStorage


def run(planner, tmp_path, generator, *, n=2, max_rounds=3, steps=10):
    return run_generation(planner=planner, generator=generator, storage=OrderedStorage(tmp_path / "out"),
                          request=REQUEST, n_images=n, seed=100, steps=steps, guidance=5.0,
                          max_rounds=max_rounds, profile="scripted")


def test_all_good_images_are_stored_in_one_round(planner, tmp_path):
    generator = ScriptedGenerator(lambda round_, seed: "good")
    result = run(planner, tmp_path, generator)
    assert result.status == "complete"
    assert result.stored == ["chest_xray/pneumothorax/pneumothorax_000001.png",
                             "chest_xray/pneumothorax/pneumothorax_000002.png"]
    assert len(generator.calls) == 1 and generator.calls[0]["seeds"] == [100, 101]
    assert [e["node"] for e in result.trace["events"]] == [
        "localize", "pathology", "visual_map", "prompt", "generate", "verify", "store"]


def test_refine_retries_only_the_failed_slot_with_a_new_seed_and_more_steps(planner, tmp_path):
    generator = ScriptedGenerator(lambda round_, seed: "noise" if (round_ == 1 and seed == 101) else "good")
    result = run(planner, tmp_path, generator)
    assert result.status == "complete"
    assert len(generator.calls) == 2
    retry = generator.calls[1]
    assert len(retry["seeds"]) == 1 and retry["seeds"][0] not in (100, 101)
    assert retry["steps"] == 15
    rejected = [a for a in result.trace["attempts"] if a["verdict"] == "rejected"]
    assert len(rejected) == 1 and rejected[0]["reasons"][0].startswith("quality: sanity check")
    assert rejected[0]["failure"] == "quality" and rejected[0]["thumbnail"].startswith("data:image/png;base64,")
    assert rejected[0]["action"].startswith("new seed, steps 10 -> 15")
    assert (tmp_path / "out" / "runs" / result.run_id / rejected[0]["path"]).is_file()


def test_the_loop_is_bounded_and_nothing_failing_is_stored(planner, tmp_path):
    generator = ScriptedGenerator(lambda round_, seed: "constant")
    result = run(planner, tmp_path, generator, max_rounds=4)
    assert result.status == "failed"
    assert result.stored == []
    assert len(generator.calls) == 4
    assert len(result.trace["attempts"]) == 8
    assert result.trace["summary"]["given_up_slots"] == [0, 1]
    assert not (tmp_path / "out" / "chest_xray").exists()


def test_identical_images_are_rejected_as_duplicates(planner, tmp_path):
    generator = ScriptedGenerator(lambda round_, seed: "same" if round_ == 1 else "good")
    result = run(planner, tmp_path, generator)
    duplicates = [a for a in result.trace["attempts"] if any(r.startswith("duplicate") for r in a["reasons"])]
    assert len(duplicates) == 1 and duplicates[0]["action"] == "new seed"
    assert result.status == "complete"


def test_every_node_is_checkpointed_in_sqlite(planner, tmp_path):
    result = run(planner, tmp_path, ScriptedGenerator(lambda round_, seed: "good"), n=1)
    database = tmp_path / "out" / "runs" / result.run_id / "checkpoints.sqlite"
    with sqlite3.connect(database) as connection:
        (count,) = connection.execute("select count(*) from checkpoints").fetchone()
    assert count >= 7
    trace = json.loads(result.trace_path.read_text(encoding="utf-8"))
    assert trace["plan"]["label"] == "pneumothorax"
    assert set(e["node"] for e in trace["events"]) <= set(NODE_ORDER)


def test_a_failure_mid_run_still_writes_the_trace(planner, tmp_path):
    class Broken(ScriptedGenerator):
        def generate(self, **kwargs):
            raise RuntimeError("GPU fell over")

    with pytest.raises(RuntimeError, match="GPU fell over"):
        run(planner, tmp_path, Broken(lambda r, s: "good"))
    (trace_path,) = (tmp_path / "out" / "runs").glob("*/trace.json")
    trace = json.loads(trace_path.read_text(encoding="utf-8"))
    assert trace["status"] == "failed" and "GPU fell over" in trace["error"]
    assert [e["node"] for e in trace["events"]] == ["localize", "pathology", "visual_map", "prompt"]
