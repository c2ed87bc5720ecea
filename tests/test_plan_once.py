"""Plan once (issue 11): a run is planned by its graph's reasoning nodes alone, once; the checks before any write
read that result, a resumed run is not planned again, and a request refused by those checks writes nothing."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter

import pytest
from _graph_helpers import REQUEST as GRAPH_REQUEST
from _graph_helpers import ScriptedGenerator

from clinisynth import api
from clinisynth.agents.planner import PlanError
from clinisynth.agents.runner import run_generation
from clinisynth.generation.storage import OrderedStorage
from clinisynth.settings import Settings

REQUEST = "moderate right pleural effusion with basal atelectasis, PA chest radiograph"
REASONING = ("localize", "pathology", "visual_map", "prompt")
#: Every way into the planner: its steps, its whole-plan entry points, and the reasoner under it.
PLANNER_METHODS = ("localize", "assess", "visual_map", "compose", "plan", "plan_for_generation", "check_drawable")
REASONER_METHODS = ("localize", "assess_pathology")


@pytest.fixture
def counted(monkeypatch):
    """Count calls into a planner (and its reasoner) from now on: ``counted(planner) -> Counter``."""

    def count(planner) -> Counter:
        calls: Counter = Counter()
        for owner, prefix, names in ((planner, "", PLANNER_METHODS), (planner.reasoner, "reasoner.", REASONER_METHODS)):
            for name in names:
                real = getattr(owner, name)

                def wrapper(*args, _real=real, _key=prefix + name, **kwargs):
                    calls[_key] += 1
                    return _real(*args, **kwargs)

                monkeypatch.setattr(owner, name, wrapper)
        return calls

    return count


def _settings(cache_dir) -> Settings:
    return Settings(cache_dir=cache_dir, profile="tiny")


def _planned_once(calls: Counter) -> None:
    assert calls["plan"] == 0 and calls["plan_for_generation"] == 0, calls  # no whole-plan pass on the side
    for step in ("localize", "assess", "visual_map", "compose", "reasoner.localize", "reasoner.assess_pathology"):
        assert calls[step] == 1, (step, calls)


def test_a_run_through_the_api_is_planned_once_by_its_reasoning_nodes(cache_dir, tmp_path, counted):
    settings = _settings(cache_dir)
    calls = counted(api.get_planner(settings))
    result = api.generate(REQUEST, out=tmp_path / "out", n=1, seed=5, settings=settings)
    _planned_once(calls)
    assert calls["check_drawable"] == 1
    # The trace holds each reasoning node once, with its real input, output and timing ...
    events = [e for e in result.trace["events"] if e["node"] in REASONING]
    assert [e["node"] for e in events] == list(REASONING)
    assert all(e["elapsed_ms"] > 0 and "input" in e and e["output"] for e in events)
    assert events[0]["input"] == {"request": REQUEST}
    assert result.trace["plan"]["label"] == "pleural_effusion"
    # ... and so does the run's checkpoint history, where the rest of the run continued from.
    database = tmp_path / "out" / "runs" / result.run_id / "checkpoints.sqlite"
    with sqlite3.connect(database) as connection:
        (count,) = connection.execute("select count(*) from checkpoints").fetchone()
    assert count >= 8  # input, 4 reasoning nodes, generate, verify, store


def test_run_generation_plans_once_and_the_trace_starts_with_the_plan(planner, tmp_path, counted):
    calls = counted(planner)
    storage = OrderedStorage(tmp_path / "out")
    result = run_generation(planner=planner, generator=ScriptedGenerator(lambda r, s: "good"), storage=storage,
                            request=GRAPH_REQUEST, n_images=1, seed=3, steps=4, guidance=3.0, max_rounds=2,
                            profile="scripted")
    _planned_once(calls)
    assert result.status == "complete"
    assert [e["node"] for e in result.trace["events"]] == [*REASONING, "generate", "verify", "store"]


def test_a_resumed_run_is_not_planned_again(cache_dir, tmp_path, counted, monkeypatch):
    from clinisynth.agents import nodes

    settings = _settings(cache_dir)
    out = tmp_path / "out"
    real_save = nodes._save_png_atomically

    def power_cut(image, path):
        raise RuntimeError("power cut")

    monkeypatch.setattr(nodes, "_save_png_atomically", power_cut)
    with pytest.raises(RuntimeError, match="power cut"):
        api.generate(REQUEST, out=out, n=1, seed=7, settings=settings)
    monkeypatch.setattr(nodes, "_save_png_atomically", real_save)
    (run_dir,) = (out / "runs").iterdir()
    started = json.loads((run_dir / "trace.json").read_text(encoding="utf-8"))
    assert started["status"] == "failed" and started["plan"]["label"] == "pleural_effusion"

    calls = counted(api.get_planner(settings))
    result = api.generate(None, out=out, resume=run_dir.name, settings=settings)
    assert sum(calls.values()) == 0, calls  # its plan comes from its checkpoint
    assert result.status == "complete" and len(result.trace["resumed"]) == 1
    assert [e["node"] for e in result.trace["events"]][:4] == list(REASONING)


@pytest.mark.parametrize("text, message", [
    ("PA chest radiograph", "names no finding to draw"),
    ("the weather is lovely today and I bought bread", "found nothing medical"),
    ("MRI of the left knee with a torn meniscus", "does not cover"),
])
def test_a_request_refused_by_the_checks_writes_and_loads_nothing(cache_dir, tmp_path, counted, monkeypatch,
                                                                  text, message):
    settings = _settings(cache_dir)
    calls = counted(api.get_planner(settings))

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded for a request the plan refuses")

    monkeypatch.setattr(api, "_loaded_generator", no_model)
    with pytest.raises(PlanError, match=message):
        api.generate(text, out=tmp_path / "out", n=1, settings=settings)
    assert list(tmp_path.iterdir()) == []  # not even the output folder
    assert calls["plan"] == 0 and calls["localize"] == 1
