"""End-to-end ``generate`` on the ``tiny`` profile: the share of a run's time spent outside the
diffusion call (planning, graph, verification, storage, trace), measured in the same run.

    python benchmarks/bench_generate.py [--n 8] [--steps 20] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from _common import machine

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REQUEST = "moderate right pleural effusion with basal atelectasis, PA chest radiograph"


class TimedGenerator:
    """Wraps the real generator and adds up the time spent inside its diffusion call."""

    def __init__(self, generator) -> None:
        self.generator = generator
        self.model_ids = generator.model_ids
        self.guidance_interval = generator.guidance_interval
        self.seconds = 0.0

    def generate(self, **kwargs):
        started = time.perf_counter()
        try:
            return self.generator.generate(**kwargs)
        finally:
            self.seconds += time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    from clinisynth.agents.runner import run_generation
    from clinisynth.api import get_planner, load_generator
    from clinisynth.generation.storage import OrderedStorage
    from clinisynth.settings import Settings

    settings = Settings()
    started = time.perf_counter()
    planner = get_planner(settings)
    generator, profile = load_generator(profile="tiny", settings=settings)
    load_seconds = time.perf_counter() - started

    shares, totals = [], []
    with tempfile.TemporaryDirectory() as out:
        for run in range(args.runs):
            timed = TimedGenerator(generator)
            started = time.perf_counter()
            result = run_generation(planner=planner, generator=timed, storage=OrderedStorage(Path(out)),
                                    request=REQUEST, n_images=args.n, seed=run * 1000, steps=args.steps,
                                    guidance=profile.default_guidance, max_rounds=3, profile="tiny")
            total = time.perf_counter() - started
            totals.append(total)
            shares.append((total - timed.seconds) / total)
            print(f"run {run}: {result.status}, {len(result.stored)}/{args.n} stored, total {total:.2f} s, "
                  f"diffusion {timed.seconds:.2f} s, outside {total - timed.seconds:.2f} s")
    print(f"machine: {machine()}")
    print(f"model + index load (once per process): {load_seconds:.2f} s")
    print(f"tiny, {args.n} images x {args.steps} steps at {profile.resolution}px: median run {statistics.median(totals):.2f} s, "
          f"share outside the diffusion call {statistics.median(shares) * 100:.1f}%")


if __name__ == "__main__":
    main()
