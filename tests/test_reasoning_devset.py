"""The development set meets the targets of issue 3 (findings+status micro-F1 >= 0.90, modality >= 0.95)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_reasoning", ROOT / "benchmarks" / "bench_reasoning.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_devset_is_large_and_covers_every_modality(knowledge):
    bench = _bench()
    items = bench.load_devset(bench.DEFAULT_DEVSET)
    assert len(items) >= 200
    covered = {item["modality"] for item in items}
    assert {m.id for m in knowledge.modalities} <= covered
    for item in items:
        assert item["modality"] is None or item["modality"] in knowledge.by_id, item
        for finding in item["findings"]:
            assert finding["id"] in knowledge.by_id, f"dev set names unknown record {finding['id']} in {item['text']!r}"


def test_devset_targets(knowledge):
    from clinisynth.agents.reasoning import Reasoner

    bench = _bench()
    fields = bench.score(Reasoner(knowledge=knowledge), bench.load_devset(bench.DEFAULT_DEVSET))
    for name, target in bench.TARGETS.items():
        assert fields[name].scores()[2] >= target, (name, fields[name].scores())
