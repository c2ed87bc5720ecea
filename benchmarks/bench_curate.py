"""Campaign overhead: ``clinisynth.curate`` against the sum of its generation runs' own time, on ``tiny``.

A campaign of ``--items`` descriptions x ``--count`` images at ``--steps`` sampler steps runs in this process
after the planner and the generator were loaded and LangGraph imported once (the per-process load that
``generate`` pays too). Figures:

- runs: the sum of the runs' wall time (each ``run_generation`` call: plan, draw, verify, file, trace), from the
  journal, and of the diffusion calls inside them (the traces' ``generate_seconds``);
- overhead: everything else the campaign spends (checking the campaign file, planning every item up front, the
  journal, reloading the generator, progress, the report with its plots and contact sheets), as a share of runs.

    python benchmarks/bench_curate.py [--items 4] [--count 8] [--steps 20] [--chunk-size 16]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from _common import machine

DESCRIPTIONS = ["right lower lobe pneumonia, PA chest radiograph", "normal chest radiograph",
                "moderate right pleural effusion, PA chest radiograph", "small left pneumothorax, PA chest radiograph",
                "cardiomegaly, PA chest radiograph", "left upper lobe mass, PA chest radiograph"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=4)
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--chunk-size", type=int, default=16)
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: the settings' cache dir")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from clinisynth.api import get_planner, load_generator
    from clinisynth.campaigns import curate
    from clinisynth.curation.journal import Journal, journal_path
    from clinisynth.settings import Settings

    settings = Settings(profile="tiny", **({"cache_dir": args.cache_dir} if args.cache_dir else {}))
    started = time.perf_counter()
    import clinisynth.agents.runner  # noqa: F401  (LangGraph: 1.4 s of imports, paid by any first run)

    get_planner(settings).plan_for_generation(DESCRIPTIONS[0])
    load_generator(profile="tiny", settings=settings)
    load_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="bench-curate-") as folder:
        campaign = Path(folder) / "campaign.yaml"
        items = "".join(f'  - description: "{DESCRIPTIONS[i % len(DESCRIPTIONS)]}"\n    count: {args.count}\n'
                        f'    id: item{i}\n' for i in range(args.items))
        campaign.write_text(f"profile: tiny\nseed: 0\nsteps: {args.steps}\nchunk_size: {args.chunk_size}\n"
                            f"items:\n{items}", encoding="utf-8")
        marks: dict[str, float] = {}

        def progress(event: str, info: dict) -> None:
            marks.setdefault(f"first_{event}", time.perf_counter())
            marks[f"last_{event}"] = time.perf_counter()

        out = Path(folder) / "out"
        began = time.perf_counter()
        result = curate(campaign, out=out, settings=settings, on_progress=progress)
        wall = time.perf_counter() - began
        with Journal.open(journal_path(out), read_only=True) as journal:
            runs_s = sum(run["wall_s"] for run in journal.runs())
        report = json.loads((out / "campaign" / "report.json").read_text())
    diffusion_s = report["totals"]["generate_s"]
    before_runs = marks["first_campaign"] - began
    report_s = began + wall - marks["last_chunk"]
    overhead = wall - runs_s
    print(json.dumps({
        "machine": machine(), "load": os.getloadavg()[0], "images": result.counts["stored"],
        "target": result.counts["total"], "runs": result.runs, "steps": args.steps, "chunk_size": args.chunk_size,
        "process_load_s": round(load_s, 2), "campaign_wall_s": round(wall, 2), "runs_s": round(runs_s, 2),
        "diffusion_s": round(diffusion_s, 2), "before_runs_s": round(before_runs, 2),
        "between_runs_s": round(marks["last_chunk"] - marks["first_campaign"] - runs_s, 2),
        "report_s": round(report_s, 2), "overhead_s": round(overhead, 2),
        "overhead_share_of_runs": round(overhead / runs_s, 4),
        "overhead_share_of_diffusion": round((wall - diffusion_s) / diffusion_s, 4),
    }, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
