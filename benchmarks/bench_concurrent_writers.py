"""Concurrent writers into one dataset, and the cost of the start-up health check.

1. ``--writers`` ``clinisynth generate`` processes (tiny profile) of one description, ``-n --images`` each, started
   at once into one output dir, with no ``--seed`` (fresh drawn seeds) and with one same ``--seed 0``: images
   stored, byte-identical copies, distinct seeds, wall time; baseline in the same run: one process asked for all
   ``writers x images`` images.
2. ``check_dataset`` (the health check ``generate`` runs first) on a dataset of ``N`` stored images, median of
   ``--repeat`` (interleaved), against a plain listing of the same folder (``os.walk``), the listing with a ``stat`` of every
   file, and reading every PNG whole (what decoding every image would at least cost).

    python benchmarks/bench_concurrent_writers.py [--writers 4] [--images 6] [--sizes 1000,5000] [--skip-writers]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine

REQUEST = "moderate right pleural effusion with basal atelectasis, PA chest radiograph"


def _generate(out: Path, n: int, seed: list[str], env: dict, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "clinisynth.cli.main", "generate", REQUEST, "-n", str(n),
                             "--out", str(out), "--profile", "tiny", *seed], env=env, cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _count(out: Path) -> dict:
    pngs = sorted(out.glob("chest_xray/*/*.png"))
    digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in pngs]
    records = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()] \
        if (out / "metadata.jsonl").exists() else []
    return {"stored": len(pngs), "byte_identical": len(digests) - len(set(digests)),
            "distinct_seeds": len({r["seed"] for r in records}), "rows": len(records)}


def writers(args, work: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONSAFEPATH": "1"}
    if args.cache_dir:
        env["CLINISYNTH_CACHE_DIR"] = str(args.cache_dir)
    warm = _generate(work / "warm", 1, [], env, work)  # builds the tiny pipeline once, outside the timings
    assert warm.wait() == 0, warm.stderr.read()
    total = args.writers * args.images
    print(f"| mode | writers x images | stored | byte-identical | distinct seeds | wall |")
    print("|---|---|---|---|---|---|")
    started = time.perf_counter()
    single = _generate(work / "single", total, [], env, work)
    code = single.wait()
    print(f"| baseline: one process | 1 x {total} | {_count(work / 'single')['stored']} | "
          f"{_count(work / 'single')['byte_identical']} | {_count(work / 'single')['distinct_seeds']} | "
          f"{time.perf_counter() - started:.1f} s (exit {code}) |")
    for name, seed in (("no --seed (drawn)", []), ("same --seed 0", ["--seed", "0"])):
        out = work / name.split()[0].replace("-", "")
        started = time.perf_counter()
        processes = [_generate(out, args.images, seed, env, work) for _ in range(args.writers)]
        codes = [process.wait() for process in processes]
        wall = time.perf_counter() - started
        counted = _count(out)
        print(f"| {name} | {args.writers} x {args.images} | {counted['stored']} | {counted['byte_identical']} | "
              f"{counted['distinct_seeds']} | {wall:.1f} s (exits {sorted(set(codes))}) |")


def _dataset(root: Path, n: int) -> None:
    import numpy as np
    from PIL import Image

    from clinisynth.generation.storage import OrderedStorage

    storage = OrderedStorage(root)
    rng = np.random.default_rng(0)
    for index in range(n):
        pixels = (rng.random((64, 64)) * 255).astype(np.uint8)
        storage.store(image=Image.fromarray(pixels, "L"), modality="chest_xray", label="pleural_effusion",
                      metadata={"seed": index, "run_id": "bench", "slot": index, "prompt": REQUEST})


def _medians(functions: list, repeat: int) -> list[float]:
    """Median time of each function, run interleaved (one of each per round) so that all see the same load."""
    times: list[list[float]] = [[] for _ in functions]
    for _ in range(repeat):
        for function, spent in zip(functions, times):
            started = time.perf_counter()
            function()
            spent.append(time.perf_counter() - started)
    return [statistics.median(spent) for spent in times]


def health(args, work: Path) -> None:
    from clinisynth.generation.health import check_dataset

    def listing(root: Path) -> None:
        for _ in os.walk(root):
            pass

    def listing_and_stat(root: Path) -> None:
        for folder, _, names in os.walk(root):
            for name in names:
                os.stat(os.path.join(folder, name))

    def read_all(root: Path) -> None:
        for png in root.glob("chest_xray/*/*.png"):
            png.read_bytes()

    print("| images | plain listing (os.walk) | listing + stat of every file | health check | per image | "
          "reading every PNG whole |")
    print("|---|---|---|---|---|---|")
    for n in args.sizes:
        root = work / f"dataset-{n}"
        _dataset(root, n)
        base, stat, check, whole = _medians([lambda: listing(root), lambda: listing_and_stat(root),
                                             lambda: check_dataset(root), lambda: read_all(root)], args.repeat)
        print(f"| {n} | {base * 1000:.1f} ms | {stat * 1000:.1f} ms | {check * 1000:.1f} ms | "
              f"{check / n * 1e6:.0f} us | {whole * 1000:.1f} ms |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--sizes", type=lambda text: [int(v) for v in text.split(",")], default=[1000, 5000])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: the settings' cache dir")
    parser.add_argument("--skip-writers", action="store_true", help="only the health-check figures")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="bench-writers-") as folder:
        work = Path(folder)
        if not args.skip_writers:
            writers(args, work)
            print()
        health(args, work)


if __name__ == "__main__":
    main()
