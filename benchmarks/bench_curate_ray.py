"""Campaign throughput on Ray workers: 2 local workers against 1, per-worker memory, and journal bytes per slot.

One campaign of ``--items`` descriptions x ``--count`` images per profile, run three ways in this order, each in a
fresh output dir: in this process (the baseline of ``bench_curate.py``), on 1 Ray worker (``ray_address="local"``:
a local Ray, one actor) and on 2 (``workers=2``: ``ray.init(num_cpus=2)``). A Ray worker has one CPU, so one torch
thread; the in-process run uses the machine's threads. Figures per way:

- wall: the whole ``curate`` call (Ray start, workers loading their models, planning, report);
- steady images/s: images filed after the first chunk over the time from the first chunk recorded to the last
  (the rate once every worker is loaded: what a long campaign sees);
- RSS of each worker at the end, and of the driver.

Then the driver's serial work: a journal of ``--journal-slots`` slots, every chunk of 16 recorded with its run and
file names (bytes per slot, time per chunk record), and ``--filing-images`` stores into ordered storage (time per
image at the start and the end, 64 and 512 px).

    python benchmarks/bench_curate_ray.py [--profiles tiny demo] [--items 2] [--count 8] [--chunk-size 4]
    python benchmarks/bench_curate_ray.py --only-driver [--journal-slots 100000] [--filing-images 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from _common import machine

DESCRIPTIONS = ["right lower lobe pneumonia, PA chest radiograph", "normal chest radiograph",
                "moderate right pleural effusion, PA chest radiograph", "cardiomegaly, PA chest radiograph"]


def _rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def run_campaign(profile: str, *, items: int, count: int, steps: int | None, chunk_size: int, cache_dir, way: str):
    from clinisynth.campaigns import curate
    from clinisynth.settings import Settings

    settings = Settings(profile=profile, **({"cache_dir": cache_dir} if cache_dir else {}))
    options = {"in process": {}, "1 Ray worker": {"workers": 1, "ray_address": "local"},
               "2 Ray workers": {"workers": 2}}[way]
    with tempfile.TemporaryDirectory(prefix="bench-curate-ray-") as folder:
        campaign = Path(folder) / "campaign.yaml"
        rows = "".join(f'  - description: "{DESCRIPTIONS[i % len(DESCRIPTIONS)]}"\n    count: {count}\n'
                       f'    id: item{i}\n' for i in range(items))
        campaign.write_text(f"profile: {profile}\nseed: 0\nchunk_size: {chunk_size}\n"
                            + (f"steps: {steps}\n" if steps else "") + f"items:\n{rows}", encoding="utf-8")
        chunks: list[tuple[float, int]] = []
        decided = [0]

        def progress(event: str, info: dict) -> None:
            if event == "chunk":
                chunks.append((time.perf_counter(), info["campaign_done"] - decided[0]))
                decided[0] = info["campaign_done"]

        began = time.perf_counter()
        result = curate(campaign, out=Path(folder) / "out", settings=settings, on_progress=progress, **options)
        wall = time.perf_counter() - began
    steady_images = sum(n for _, n in chunks[1:])
    steady_s = chunks[-1][0] - chunks[0][0] if len(chunks) > 1 else float("nan")
    return {"way": way, "images": result.counts["stored"], "wall_s": round(wall, 2),
            "images_per_s_wall": round(result.counts["stored"] / wall, 3),
            "images_per_s_steady": round(steady_images / steady_s, 3) if steady_s > 0 else None,
            "worker_rss_mib": [round(w["rss_bytes"] / 2**20) for w in result.workers],
            "driver_rss_mib": round(_rss_mib()), "requeued": result.requeued}


def journal_bytes_per_slot(slots: int, *, chunk: int = 16) -> dict:
    """A finished journal of ``slots`` slots (items of 1,000), every chunk recorded as the driver does."""
    from clinisynth.agents.runner import new_run_id
    from clinisynth.curation.journal import Journal, PlannedItem

    with tempfile.TemporaryDirectory(prefix="bench-journal-") as folder:
        path = Path(folder) / "journal.sqlite"
        per_item = 1000
        items = [PlannedItem(item=i + 1, key=f"item{i}", source="campaign.yaml", line=4 + 2 * i,
                             description=DESCRIPTIONS[i % len(DESCRIPTIONS)], modality="chest_xray",
                             label="pneumonia", count=per_item, seed=10**9 * (i + 1))
                 for i in range(slots // per_item)]
        began = time.perf_counter()
        with Journal.create(path, name="bench", fingerprint="0" * 64, canonical={}, parameters={}, items=items) as journal:
            created = path.stat().st_size
            number = 0
            for open_chunk in journal.open_chunks(chunk):
                started = journal.start_run(open_chunk, new_run_id())
                stored = {}
                for offset in range(started.n):
                    number += 1
                    stored[offset] = (f"chest_xray/pneumonia/pneumonia_{number:06d}.png", started.seed + offset)
                journal.finish_run(started, status="complete", stored=stored, seconds=1.0)
        seconds = time.perf_counter() - began
        size = path.stat().st_size
    return {"slots": slots, "bytes": size, "bytes_per_slot": round(size / slots, 1),
            "bytes_per_slot_at_start": round(created / slots, 1), "record_s_per_chunk": round(seconds / (slots / chunk), 5)}


def filing_seconds_per_image(n: int, *, side: int) -> dict:
    """What the driver spends per image it files (``OrderedStorage.store``, idempotent per run and slot, into a
    dataset of ``n`` images): the serial part of a campaign on any number of workers."""
    import numpy as np
    from PIL import Image

    from clinisynth.generation.storage import OrderedStorage

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (side, side), dtype=np.uint8))
    with tempfile.TemporaryDirectory(prefix="bench-filing-") as folder:
        storage = OrderedStorage(Path(folder))
        times = []
        for number in range(n):
            began = time.perf_counter()
            storage.store(image=image, modality="chest_xray", label="pneumonia",
                          metadata={"prompt": "x", "seed": number, "run_id": "r", "slot": number},
                          unique={"run_id": "r", "slot": number})
            times.append(time.perf_counter() - began)
    first, last = times[: n // 10], times[-(n // 10):]
    return {"images": n, "side": side, "ms_first_10pct": round(1000 * sum(first) / len(first), 2),
            "ms_last_10pct": round(1000 * sum(last) / len(last), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="+", default=["tiny", "demo"])
    parser.add_argument("--items", type=int, default=2)
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--steps", type=int, default=None, help="default: each profile's own")
    parser.add_argument("--chunk-size", type=int, default=4)
    parser.add_argument("--journal-slots", type=int, default=100_000)
    parser.add_argument("--filing-images", type=int, default=2000)
    parser.add_argument("--only-driver", action="store_true", help="only the journal and filing figures")
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: the settings' cache dir")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.only_driver:
        args.profiles = []

    for profile in args.profiles:
        rows = [run_campaign(profile, items=args.items, count=args.count, steps=args.steps,
                             chunk_size=args.chunk_size, cache_dir=args.cache_dir, way=way)
                for way in ("in process", "1 Ray worker", "2 Ray workers")]
        one, two = rows[1], rows[2]
        print(json.dumps({
            "machine": machine(), "load": os.getloadavg()[0], "profile": profile, "steps": args.steps,
            "chunk_size": args.chunk_size, "rows": rows,
            "two_vs_one_steady": round(two["images_per_s_steady"] / one["images_per_s_steady"], 2)
            if one["images_per_s_steady"] and two["images_per_s_steady"] else None,
            "two_vs_one_wall": round(two["images_per_s_wall"] / one["images_per_s_wall"], 2),
        }))
    print(json.dumps({"machine": machine(), "load": os.getloadavg()[0],
                      "journal": journal_bytes_per_slot(args.journal_slots),
                      "filing_64px": filing_seconds_per_image(args.filing_images, side=64),
                      "filing_512px": filing_seconds_per_image(args.filing_images // 4, side=512)}))


if __name__ == "__main__":
    main()
