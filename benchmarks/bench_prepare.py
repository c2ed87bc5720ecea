"""Throughput of ``clinisynth prepare`` against a plain Pillow open + save loop over the same files.

    python benchmarks/bench_prepare.py --source ../shared/data/chest_xray --modality chest_xray \
        --limit 1000 --workers 2

Both run in the same process on the same files (an evenly spaced sample, class folders kept,
linked into a temporary SOURCE). The baseline opens each file and saves it as PNG, one process,
nothing else; prepare decodes, checks, hashes, deduplicates, resizes, writes PNGs, the journal,
the CSVs, the reports and the contact sheets. Prints images/s of both and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from clinisynth.training.prepare.decode import DICOM_EXTENSIONS, RASTER_EXTENSIONS


def _sample(source: Path, limit: int) -> list[Path]:
    files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in RASTER_EXTENSIONS | DICOM_EXTENSIONS)
    if limit and len(files) > limit:
        step = len(files) / limit
        files = [files[int(i * step)] for i in range(limit)]
    return files


def _pillow_loop(files: list[Path], target: Path) -> float:
    from PIL import Image

    target.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for index, path in enumerate(files):
        with Image.open(path) as image:
            image.save(target / f"{index}.png")
    return time.perf_counter() - start


def _prepare(files: list[Path], source: Path, work: Path, args) -> tuple[float, dict]:
    from clinisynth.training.prepare import PrepareConfig, prepare_dataset

    linked = work / "source"
    for path in files:
        link = linked / path.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(path.resolve(), link)
    config = PrepareConfig(
        source=linked,
        out=work / "out",
        size=args.size,
        modality=args.modality,
        workers=args.workers,
        label_map=args.label_map,
    )
    start = time.perf_counter()
    summary = prepare_dataset(config, progress=False)
    return time.perf_counter() - start, summary.report["totals"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True, help="ImageFolder-style folder")
    parser.add_argument("--modality", required=True, help="modality id or label, e.g. chest_xray")
    parser.add_argument("--label-map", type=Path, default=None, help="YAML/JSON folder name -> label")
    parser.add_argument("--limit", type=int, default=1000, help="files to sample (0: all)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()

    files = _sample(args.source, args.limit)
    work = Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    try:
        baseline_seconds = _pillow_loop(files, work / "baseline")
        prepare_seconds, totals = _prepare(files, args.source, work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    baseline_rate = len(files) / baseline_seconds
    prepare_rate = len(files) / prepare_seconds
    result = {
        "files": len(files),
        "workers": args.workers,
        "cpus": os.cpu_count(),
        "pillow_open_save_images_per_s": round(baseline_rate, 1),
        "prepare_images_per_s": round(prepare_rate, 1),
        "prepare_over_pillow": round(prepare_rate / baseline_rate, 2),
        "prepare_totals": totals,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
