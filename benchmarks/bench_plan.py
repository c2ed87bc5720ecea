"""``plan`` latency on a warm process: p50 and p95 over 200 varied descriptions (target p50 < 50 ms).

The descriptions are the reasoning development set (tests/data/reasoning_devset.jsonl), cycled to 200.
The baseline, measured in the same run, is the query embedding alone (one MiniLM forward pass),
which any retrieval-backed plan has to pay at least once.

    python benchmarks/bench_plan.py [--n 200]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import time
from pathlib import Path

from _common import machine, percentile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DEVSET = Path(__file__).resolve().parents[1] / "tests" / "data" / "reasoning_devset.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=200)
    args = parser.parse_args()
    from clinisynth.agents.planner import PlanError
    from clinisynth.api import get_planner

    texts = [json.loads(line)["text"] for line in DEVSET.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = list(itertools.islice(itertools.cycle(texts), args.n))
    started = time.perf_counter()
    planner = get_planner()
    planner.plan(texts[0])
    warmup = time.perf_counter() - started

    latencies, failures = [], 0
    for text in texts:
        started = time.perf_counter()
        try:
            planner.plan(text)
        except PlanError:
            failures += 1
        latencies.append((time.perf_counter() - started) * 1000)
    embed = []
    for text in texts[:50]:
        started = time.perf_counter()
        planner.reasoner.retriever.embedder.encode([text])
        embed.append((time.perf_counter() - started) * 1000)

    print(f"machine: {machine()}")
    print(f"cold start (knowledge + index + matchers): {warmup:.2f} s")
    print(f"plan over {len(texts)} descriptions: p50 {percentile(latencies, 50):.1f} ms, "
          f"p95 {percentile(latencies, 95):.1f} ms, max {max(latencies):.1f} ms ({failures} rejected as bad input)")
    print(f"baseline, one MiniLM query embedding: p50 {statistics.median(embed):.1f} ms")
    print(f"ratio plan p50 / embedding p50: {percentile(latencies, 50) / statistics.median(embed):.2f}")


if __name__ == "__main__":
    main()
