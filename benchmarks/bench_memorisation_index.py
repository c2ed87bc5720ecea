"""The compact memorisation index a model ships vs the exact one built from its training images (issue 12).

Builds, from a prepared dataset's training split (the split ``train scratch`` uses: 5 % held out, seed 0), the
exact ``IndexFlatIP`` over 32 x 32 thumbnails and the 8-bit compact index (``compact_index``), then queries both
with (a) the held-out images (distinct patients: must stay under the threshold) and (b) lightly altered copies of
training images (re-encoded as JPEG q75, shifted 1 px, contrast x0.95: must be caught). Reports the similarity
error, whether every flag at the verifier's threshold agrees, the nearest key agreement, bytes on disk and query
time for both, on this machine.

    python benchmarks/bench_memorisation_index.py --data PREPARED_DIR [--threshold 0.985] [--copies 300] [--json]
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import machine


def altered(path: Path, *, index: int):
    from PIL import Image, ImageEnhance

    with Image.open(path) as image:
        grey = image.convert("L")
    kind = index % 3
    if kind == 0:
        buffer = io.BytesIO()
        grey.save(buffer, format="JPEG", quality=75)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("L")
    if kind == 1:
        return grey.transform(grey.size, Image.Transform.AFFINE, (1, 0, 1, 0, 1, 0))
    return ImageEnhance.Contrast(grey).enhance(0.95)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--threshold", type=float, default=0.985)
    parser.add_argument("--copies", type=int, default=300)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from PIL import Image

    from clinisynth.evaluation.memorisation import MemorisationIndex, ThumbnailEmbedder, compact_index
    from clinisynth.training.data import read_manifest, split_records

    train, held_out = split_records(read_manifest(args.data), validation_fraction=0.05, seed=0)
    embedder = ThumbnailEmbedder()
    began = time.perf_counter()
    exact = MemorisationIndex.build([r.path for r in train], embedder=embedder)
    build_seconds = time.perf_counter() - began
    compact = compact_index(exact)
    sizes = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, index in (("exact", exact), ("compact", compact)):
            index.save(Path(folder) / name)
            sizes[name] = sum(p.stat().st_size for p in (Path(folder) / name).iterdir())

    def images(paths):
        out = []
        for path in paths:
            with Image.open(path) as image:
                out.append(image.convert("L"))
        return out

    step = max(1, len(train) // args.copies)
    copies = [altered(r.path, index=i) for i, r in enumerate(train[::step][:args.copies])]
    results = {}
    for name, queries in (("held_out", images([r.path for r in held_out])), ("altered_copies", copies)):
        vectors = embedder(queries)
        timings, answers = {}, {}
        for kind, index in (("exact", exact), ("compact", compact)):
            began = time.perf_counter()
            answers[kind] = index.search(vectors, k=1)
            timings[kind] = (time.perf_counter() - began) / len(vectors) * 1000
        exact_sim, compact_sim = answers["exact"][0][:, 0], answers["compact"][0][:, 0]
        flagged_exact, flagged_compact = exact_sim >= args.threshold, compact_sim >= args.threshold
        results[name] = {
            "queries": len(vectors),
            "max_abs_error": float(np.abs(exact_sim - compact_sim).max()),
            "mean_abs_error": float(np.abs(exact_sim - compact_sim).mean()),
            "flagged_exact": int(flagged_exact.sum()), "flagged_compact": int(flagged_compact.sum()),
            "flag_disagreements": int((flagged_exact != flagged_compact).sum()),
            "nearest_key_agreement": float(np.mean([a == b for a, b in zip(answers["exact"][1], answers["compact"][1])])),
            "query_ms_exact": timings["exact"], "query_ms_compact": timings["compact"],
        }
    report = {"machine": machine(), "dataset": str(args.data), "train_images": len(train),
              "threshold": args.threshold, "bytes": sizes, "size_ratio": sizes["compact"] / sizes["exact"],
              "exact_build_seconds": round(build_seconds, 1), "results": results}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{args.data}: {len(train)} training images; exact {sizes['exact'] / 1e6:.1f} MB, compact "
          f"{sizes['compact'] / 1e6:.1f} MB ({report['size_ratio']:.2f}x)")
    for name, r in results.items():
        print(f"  {name:15s} n={r['queries']:4d} max |error| {r['max_abs_error']:.4f} mean {r['mean_abs_error']:.5f}; "
              f"flagged exact {r['flagged_exact']} compact {r['flagged_compact']} (disagree {r['flag_disagreements']}); "
              f"same nearest {r['nearest_key_agreement']:.3f}; query {r['query_ms_exact']:.2f} vs "
              f"{r['query_ms_compact']:.2f} ms")


if __name__ == "__main__":
    main()
