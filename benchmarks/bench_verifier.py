"""Verifier time per image as a share of generation time, measured in the same process.

Generates images with a profile's generator (``tiny`` by default; ``demo`` when its generator is
trained), then verifies each with every offline signal on: sanity, memorisation (FAISS over the
thumbnails of a real training set), duplicates against the images accepted so far, and the shipped
classifier. CLIP is unavailable offline and is reported as such. Sanity thresholds are relaxed so
that noise images from the ``tiny`` generator still go through every signal (worst case: a failed
sanity check would skip the model signals and cost less).

    python benchmarks/bench_verifier.py [--profile tiny] [--n 16] [--steps 20] [--classifier DIR] [--real DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from _common import machine, percentile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
PROMPT = "chest radiograph, right lower lobe pneumonia, airspace consolidation"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--classifier", type=Path, default=REPO / "models" / "classifiers" / "chest_xray")
    parser.add_argument("--real", type=Path, default=SHARED / "chest_xray" / "train",
                        help="training images for the memorisation index (a <label>/ folder or prepared dir)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from clinisynth.agents.verifier import ModalityThresholds, Verifier
    from clinisynth.evaluation.classifier import Classifier
    from clinisynth.evaluation.memorisation import ThumbnailEmbedder, build_or_load_index
    from clinisynth.evaluation.metrics import read_image_set
    from clinisynth.evaluation.sanity import SanityThresholds
    from clinisynth.generation.pipeline import Generator
    from clinisynth.generation.profiles import resolve_profile

    with tempfile.TemporaryDirectory() as cache:
        started = time.perf_counter()
        profile = resolve_profile(args.profile, cache_dir=Path(cache))
        generator = Generator.from_profile(profile, device="cpu")
        load_generator_s = time.perf_counter() - started

        started = time.perf_counter()
        classifier = Classifier.load(args.classifier)
        paths = [record.path for record in read_image_set(args.real)]
        index = build_or_load_index(paths, cache_dir=Path(cache) / "memorisation", embedder=ThumbnailEmbedder())
        relaxed = SanityThresholds(min_neighbour_correlation=-1.0, max_blank_fraction=1.0, min_std=0.0)
        verifier = Verifier({"chest_xray": ModalityThresholds(sanity=relaxed)}, classifiers={"chest_xray": classifier},
                            memorisation={"chest_xray": index}, unavailable={"clip_score": "no CLIP weights offline"})
        load_verifier_s = time.perf_counter() - started

        verifier.verify(generator.generate(prompt=PROMPT, negative_prompt="", seeds=[999], steps=2, guidance=3.0)[0].image,
                        plan_label="pneumonia", modality="chest_xray", prompt=PROMPT)  # warm-up
        started = time.perf_counter()
        images = generator.generate(prompt=PROMPT, negative_prompt="", seeds=list(range(args.n)), steps=args.steps,
                                    guidance=profile.default_guidance)
        generation_s = time.perf_counter() - started

        per_image, accepted = [], []
        signals = None
        for generated in images:
            began = time.perf_counter()
            verdict = verifier.verify(generated.image, plan_label="pneumonia", modality="chest_xray", prompt=PROMPT,
                                      accepted_embeddings=accepted)
            per_image.append(time.perf_counter() - began)
            accepted.append(verdict.embedding)  # every image counts as accepted: duplicate search grows as in a run
            signals = {k: ("n/a" if v in ("unavailable", "skipped") else "on") for k, v in verdict.scores.items()
                       if k in ("sanity", "memorisation", "duplicate", "classifier", "clip_score")}

    generation_per_image = generation_s / args.n
    verify_median = statistics.median(per_image)
    print(f"machine: {machine()}, torch threads {torch.get_num_threads()}")
    print(f"profile {args.profile}: {args.n} images x {args.steps} steps at {profile.resolution}px; "
          f"generator load {load_generator_s:.2f} s, verifier load (classifier + index of {len(index)} images) "
          f"{load_verifier_s:.2f} s")
    print(f"signals: {signals}")
    print(f"generation {generation_per_image * 1000:.1f} ms/image; verification median {verify_median * 1000:.1f} ms/image "
          f"(p90 {percentile(per_image, 90) * 1000:.1f} ms)")
    print(f"verifier share of generation time: {verify_median / generation_per_image * 100:.1f}% "
          f"(target < 10% with demo-sized models)")


if __name__ == "__main__":
    main()
