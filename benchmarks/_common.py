"""Helpers shared by the benchmarks: machine description and percentiles."""

from __future__ import annotations

import os
import platform
import statistics


def machine() -> str:
    cores = os.cpu_count()
    try:
        with open("/proc/meminfo", encoding="utf-8") as meminfo:
            total_kib = int(meminfo.readline().split()[1])
        memory = f"{total_kib / 2**20:.0f} GiB"
    except OSError:
        memory = "? GiB"
    return f"{platform.processor() or platform.machine()}, {cores} cores, {memory}, Python {platform.python_version()}"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return statistics.quantiles(ordered, n=100, method="inclusive")[int(q) - 1] if len(ordered) > 1 else ordered[0]
