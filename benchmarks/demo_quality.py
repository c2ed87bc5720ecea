"""How faithful the demo generator is before any verification: raw samples, not the verified ones a run stores.

For each class it draws N images prompted exactly as a run prompts them (the planner's prompt, and the plan's
negative prompt or an empty one), then reports the shipped chest X-ray classifier's agreement with the class
asked for (the same classifier on real held-out images is the ceiling: its card's recall per class), the mean
label probability, and the nearest-training-image similarity (32 px thumbnails, the verifier's memorisation
embedding) against the raw training images in ``../shared/data``. Writes a contact sheet of the first images.

    python benchmarks/demo_quality.py [--n 64] [--steps 25] [--negative plan|empty] [--sheet demo_samples.png]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from _common import machine

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
REQUESTS = {"normal": "normal chest radiograph", "pneumonia": "right lower lobe pneumonia, PA chest radiograph"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=64, help="images per class")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the generator's)")
    parser.add_argument("--guidance", type=float, default=None, help="guidance (default: the generator's)")
    parser.add_argument("--negative", choices=("plan", "empty"), default="plan")
    parser.add_argument("--generator", type=Path, default=None, help="generator dir (default: the shipped one)")
    parser.add_argument("--sheet", type=Path, default=None, help="contact sheet PNG of 8 images per class")
    args = parser.parse_args()

    from PIL import Image

    from clinisynth.api import get_planner
    from clinisynth.evaluation.classifier import load_classifier
    from clinisynth.evaluation.memorisation import ThumbnailEmbedder
    from clinisynth.generation.pipeline import Generator
    from clinisynth.generation.profiles import resolve_profile
    from clinisynth.models import CLASSIFIERS_DIR
    from clinisynth.settings import Settings
    from clinisynth.generation.plots import contact_sheet

    settings = Settings()
    overrides = {"demo_generator": str(args.generator)} if args.generator else {}
    profile = resolve_profile("demo", cache_dir=settings.cache_dir, overrides=overrides)
    generator = Generator.from_profile(profile, device="cpu")
    planner = get_planner(settings)
    classifier = load_classifier(CLASSIFIERS_DIR / "chest_xray")
    steps = args.steps or profile.default_steps
    guidance = profile.default_guidance if args.guidance is None else args.guidance

    embed = ThumbnailEmbedder()
    sources = sorted((SHARED / "chest_xray" / "train").rglob("*.jpeg"))
    training = (np.concatenate([embed([Image.open(p) for p in sources[i:i + 512]])
                                for i in range(0, len(sources), 512)]) if sources else None)

    results, sheet, sheet_labels = {}, [], []
    for label, request in REQUESTS.items():
        plan = planner.plan_for_generation(request)
        negative = plan.negative_prompt if args.negative == "plan" else ""
        began = time.perf_counter()
        images = [g.image for g in generator.generate(prompt=plan.prompt, negative_prompt=negative,
                                                      seeds=list(range(args.n)), steps=steps, guidance=guidance,
                                                      batch_size=16)]
        seconds = time.perf_counter() - began
        probability = classifier.predict_proba(images)[:, classifier.labels.index(label)]
        row = {"request": request, "n": args.n, "agreement": round(float((probability >= 0.5).mean()), 3),
               "mean_label_probability": round(float(probability.mean()), 3),
               "images_per_s": round(args.n / seconds, 2)}
        if training is not None:
            nearest = (embed(images) @ training.T).max(axis=1)
            row.update(nearest_training_similarity_median=round(float(np.median(nearest)), 4),
                       nearest_training_similarity_max=round(float(nearest.max()), 4))
        results[label] = row
        sheet += images[:8]
        sheet_labels += [label] * 8
    if args.sheet:
        contact_sheet(args.sheet, sheet, columns=8, labels=sheet_labels)
    print(json.dumps({"machine": machine(), "generator": profile.generator, "steps": steps, "guidance": guidance,
                      "negative_prompt": args.negative, "training_images": len(sources), "classes": results},
                     indent=2))


if __name__ == "__main__":
    main()
