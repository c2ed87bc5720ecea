"""Cold start of ``clinisynth --help`` (target: under 1.0 s), against a bare ``python -c pass``
measured in the same run.

    python benchmarks/bench_cli_startup.py [--repeat 10]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from _common import machine


def _time(command: list[str], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    baseline = _time([sys.executable, "-c", "pass"], args.repeat)
    cli = _time([sys.executable, "-m", "clinisynth.cli.main", "--help"], args.repeat)
    print(f"machine: {machine()}")
    print(f"python -c pass      median {statistics.median(baseline) * 1000:7.1f} ms")
    print(f"clinisynth --help   median {statistics.median(cli) * 1000:7.1f} ms  (target < 1000 ms)")
    print(f"ratio clinisynth/python: {statistics.median(cli) / statistics.median(baseline):.1f}x")


if __name__ == "__main__":
    main()
