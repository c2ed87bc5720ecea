"""How faithful the demo generator is before any verification: raw samples, not the verified ones a run stores.

For each class it draws N images prompted exactly as a run prompts them (the planner's prompt and negative prompt,
and the adapters the run path would choose from the adapters folder for that plan), then reports, with the shipped
classifier of the class's modality: agreement with the class asked for (its recall on real held-out images, in its
card, is the ceiling), the mean label probability, and the Frechet distance in the classifier's features (their
top 16 principal axes on the held-out images) between the N samples and the held-out real images of the class,
against the floor: the same distance for N real training images of the class (the median over 20 random draws,
with its 10-90 % range). The VAE ceiling: the classifier's agreement on the held-out real images of the class after
a round trip through the generator's VAE, the most a sample can be recognised through that decoder, and the VAE's
FD ceiling: the FD of N real training images after the round trip (median of 5 draws). Nearest-training similarity
and the memorisation rate come from the generator's shipped memorisation index (what the verifier uses), at the
verifier's threshold. With ``--compare-adapters`` every class an adapter is chosen for is drawn again without it,
same seeds. Writes a contact sheet per class.

    python benchmarks/demo_quality.py [--n 48] [--generator DIR] [--adapters-dir DIR] [--compare-adapters]
        [--guidance G] [--guidance-interval START,END] [--negative-prompt TEXT] [--scheduler NAME]
        [--heldout chest_xray=DIR@validation --heldout brain_mri=DIR ...] [--train chest_xray=DIR ...]
        [--sheets DIR] [--json OUT] [--classes chest_xray/normal,...]

``MODALITY=DIR`` is a prepared dataset (manifest.csv) and its rows of that modality; ``DIR@validation`` the rows
the trainers held out of it (the same grouped, stratified 5 % split, seed 0).
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

#: Principal axes of the held-out features the Frechet distance is measured in.
FD_DIMS = 16
#: Random draws of N real training images whose median distance is the floor.
FLOOR_DRAWS = 20
#: Draws of N real training images sent through the VAE for its FD ceiling (each costs an encode and a decode).
VAE_FD_DRAWS = 5
#: class -> the description a user would type for it.
REQUESTS = {
    "chest_xray/normal": "normal chest radiograph",
    "chest_xray/pneumonia": "right lower lobe pneumonia, PA chest radiograph",
    "brain_mri/glioma": "glioma, axial T1 post-contrast brain MRI",
    "brain_mri/meningioma": "meningioma, axial T1 post-contrast brain MRI",
    "brain_mri/pituitary_adenoma": "pituitary adenoma, sagittal T1 post-contrast brain MRI",
    "brain_mri/normal": "normal brain MRI",
    "breast_ultrasound/benign": "benign breast mass on ultrasound",
    "breast_ultrasound/malignant": "malignant breast mass on breast ultrasound",
}


def _pairs(values: list[str]) -> dict[str, str]:
    pairs = {}
    for value in values:
        modality, _, where = value.partition("=")
        if not where:
            raise SystemExit(f"error: {value!r} is not MODALITY=DIR")
        pairs[modality] = where
    return pairs


def real_images(where: str, *, modality: str) -> dict[str, list]:
    """label -> PIL images of ``modality`` in a prepared dataset (``DIR`` or ``DIR@validation``)."""
    from PIL import Image

    from clinisynth.training.data import read_manifest, split_records

    folder, _, part = where.partition("@")
    records = read_manifest(Path(folder), modality=f"modality.{modality}")
    if part == "validation":
        records = split_records(records, validation_fraction=0.05, seed=0)[1]
    by_label: dict[str, list] = {}
    for record in records:
        with Image.open(record.path) as image:
            by_label.setdefault(record.label, []).append(image.convert("L").copy())
    return by_label


def agreement(probabilities: np.ndarray, *, label: str, classifier) -> float:
    """Share of images whose most probable class is ``label`` (several classes per modality)."""
    return round(float((probabilities.argmax(axis=1) == classifier.labels.index(label)).mean()), 3)


def evaluate_class(images, *, label: str, classifier, heldout, train, index, threshold: float, seed: int,
                   round_trip=None) -> dict:
    """Score N samples of one class; ``round_trip`` (images -> images through the generator's VAE) adds the VAE's
    own FD ceiling: real training images decoded back, against the same held-out set."""
    from clinisynth.evaluation.metrics import frechet_distance

    probabilities = classifier.predict_proba(images)
    row = {"agreement": agreement(probabilities, label=label, classifier=classifier),
           "mean_label_probability": round(float(probabilities[:, classifier.labels.index(label)].mean()), 3)}
    if heldout:
        # A few dozen images cannot fill a covariance of the classifier's hundreds of features (the square root
        # of a singular product is noise), so the distance is taken in the held-out images' top principal axes.
        held = classifier.features(heldout)
        centre = held.mean(axis=0)
        dims = min(FD_DIMS, len(heldout) - 1, len(images) - 1)
        axes = np.linalg.svd(held - centre, full_matrices=False)[2][:dims].T

        def project(features: np.ndarray) -> np.ndarray:
            return (features - centre) @ axes

        row["fd"] = round(frechet_distance(project(classifier.features(images)), project(held)), 3)
        if train and len(train) >= len(images):
            # One draw of N real images is a noisy floor (it moved 3.5 -> 13.2 for brain "normal" between two
            # orders of the same files): the median over FLOOR_DRAWS draws, with its 10-90 % range.
            train_features, held_projected = project(classifier.features(train)), project(held)
            rng = np.random.default_rng(seed)
            floors = [frechet_distance(train_features[rng.choice(len(train), size=len(images), replace=False)],
                                       held_projected) for _ in range(FLOOR_DRAWS)]
            floor = float(np.median(floors))
            row["fd_floor"] = round(floor, 3)
            row["fd_floor_p10_p90"] = [round(float(v), 3) for v in np.percentile(floors, [10, 90])]
            row["fd_over_floor"] = round(row["fd"] / floor, 2) if floor > 0 else None
            if round_trip is not None:
                # The best FD a sample drawn through this decoder can reach: real images, encoded and decoded.
                rng = np.random.default_rng(seed)
                ceilings = [frechet_distance(project(classifier.features(round_trip(
                    [train[i] for i in rng.choice(len(train), size=len(images), replace=False)]))), held_projected)
                    for _ in range(VAE_FD_DRAWS)]
                row["vae_ceiling_fd"] = round(float(np.median(ceilings)), 3)
                row["vae_ceiling_fd_over_floor"] = round(row["vae_ceiling_fd"] / floor, 2) if floor > 0 else None
        row.update(heldout_images=len(heldout), fd_dims=dims)
    if index is not None:
        from clinisynth.evaluation.memorisation import ThumbnailEmbedder

        nearest = np.array([n.similarity for n in index.nearest(ThumbnailEmbedder()(images))])
        row.update(nearest_training_similarity_median=round(float(np.median(nearest)), 4),
                   nearest_training_similarity_max=round(float(nearest.max()), 4),
                   memorisation_rate=round(float((nearest >= threshold).mean()), 3))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=48, help="images per class")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the generator's)")
    parser.add_argument("--guidance", type=float, default=None, help="guidance (default: the generator's)")
    parser.add_argument("--guidance-interval", default=None, metavar="START,END",
                        help="shares of the steps, from the noisiest, that are guided (default: the generator's)")
    parser.add_argument("--scheduler", default=None, help="sampler, e.g. euler_a (default: the generator's)")
    parser.add_argument("--negative-prompt", default=None,
                        help="negative prompt for every class, '' for none (default: the plan's)")
    parser.add_argument("--generator", type=Path, default=None, help="generator dir (default: the shipped one)")
    parser.add_argument("--adapters-dir", type=Path, default=None, help="adapters folder (default: the shipped one)")
    parser.add_argument("--compare-adapters", action="store_true", help="also draw each class without its adapter")
    parser.add_argument("--classifiers-dir", type=Path, default=None,
                        help="folder of MODALITY/ classifiers that score the samples (default: the shipped ones)")
    parser.add_argument("--classes", default=None, help="comma-separated modality/label (default: all it can draw)")
    parser.add_argument("--heldout", action="append", default=[], help="MODALITY=DIR[@validation]: held-out real")
    parser.add_argument("--train", action="append", default=[], help="MODALITY=DIR: real training images (floor)")
    parser.add_argument("--sheets", type=Path, default=None, help="folder for one contact sheet per class")
    parser.add_argument("--json", type=Path, default=None, help="write the results here too")
    args = parser.parse_args()

    from clinisynth.api import get_planner
    from clinisynth.evaluation.classifier import load_classifier
    from clinisynth.evaluation.memorisation import DEFAULT_MEMORISATION_THRESHOLD, load_shipped_indexes
    from clinisynth.generation.adapters import AdapterRequest
    from clinisynth.generation.guidance_interval import parse_interval
    from clinisynth.generation.pipeline import Generator
    from clinisynth.generation.plots import contact_sheet
    from clinisynth.generation.profiles import generator_record, resolve_profile, trained_classes
    from clinisynth.models import ADAPTERS_DIR, CLASSIFIERS_DIR
    from clinisynth.settings import Settings
    from clinisynth.training.vae import reconstruct

    settings = Settings()
    overrides = {"demo_generator": str(args.generator)} if args.generator else {}
    profile = resolve_profile("demo", cache_dir=settings.cache_dir, overrides=overrides)
    generator = Generator.from_profile(profile, device="cpu")
    planner = get_planner(settings)
    steps = args.steps or profile.default_steps
    guidance = profile.default_guidance if args.guidance is None else args.guidance
    interval = (profile.guidance_interval if args.guidance_interval is None
                else parse_interval(args.guidance_interval, what="--guidance-interval"))
    adapters_dir = args.adapters_dir or ADAPTERS_DIR
    classifiers_dir = args.classifiers_dir or CLASSIFIERS_DIR
    request_adapters = AdapterRequest([], directory=adapters_dir, directory_given=True)
    indexes = load_shipped_indexes(profile.generator)
    for card in request_adapters.registry.cards():
        indexes.update({m: i for m, i in load_shipped_indexes(card.path).items() if m not in indexes})
    heldout_of, train_of = _pairs(args.heldout), _pairs(args.train)
    classes = args.classes.split(",") if args.classes else list(REQUESTS)

    results, real_cache, classifiers = {}, {}, {}

    def vae_round_trip(images):
        return reconstruct(generator.pipeline.vae, images)

    for name in classes:
        modality, label = name.split("/")
        plan = planner.plan_for_generation(REQUESTS[name])
        if (plan.modality.id, plan.label) != (f"modality.{modality}", label):
            raise SystemExit(f"error: {REQUESTS[name]!r} plans as {plan.modality.id} / {plan.label}, not {name}")
        choice = request_adapters.choose(modality=plan.modality.id, label=plan.label, problem=generator.adapter_problem)
        base_draws = label in trained_classes(generator_record(profile.generator)).get(modality, [])
        if not base_draws and not choice.entries:
            print(f"skip {name}: neither the base nor an adapter draws it")
            continue
        if modality not in classifiers:
            classifiers[modality] = load_classifier(classifiers_dir / modality)
        classifier = classifiers[modality]
        for where, store in ((heldout_of, "heldout"), (train_of, "train")):
            if modality in where and (modality, store) not in real_cache:
                real_cache[(modality, store)] = real_images(where[modality], modality=modality)
        heldout = real_cache.get((modality, "heldout"), {}).get(label)
        train = real_cache.get((modality, "train"), {}).get(label)
        ceiling = None
        if heldout:
            rebuilt = reconstruct(generator.pipeline.vae, heldout)
            ceiling = agreement(classifier.predict_proba(rebuilt), label=label, classifier=classifier)
        negative_prompt = plan.negative_prompt if args.negative_prompt is None else args.negative_prompt
        ways = [("with adapter", choice.entries)] if choice.entries else [("base", [])]
        if choice.entries and args.compare_adapters:
            ways.append(("without adapter", []))
        for way, entries in ways:
            generator.use_adapters(entries)
            began = time.perf_counter()
            images = [g.image for g in generator.generate(prompt=plan.prompt, negative_prompt=negative_prompt,
                                                          seeds=list(range(args.n)), steps=steps, guidance=guidance,
                                                          batch_size=16, scheduler=args.scheduler,
                                                          guidance_interval=interval)]
            seconds = time.perf_counter() - began
            row = {"request": REQUESTS[name], "way": way, "adapters": [card.name for card, _ in entries],
                   "n": args.n, "images_per_s": round(args.n / seconds, 2), "vae_ceiling_agreement": ceiling}
            row.update(evaluate_class(images, label=label, classifier=classifier, heldout=heldout, train=train,
                                      index=indexes.get(modality), threshold=DEFAULT_MEMORISATION_THRESHOLD, seed=0,
                                      round_trip=vae_round_trip))
            results.setdefault(name, []).append(row)
            print(json.dumps({name: row}))
            if args.sheets and way != "without adapter":
                args.sheets.mkdir(parents=True, exist_ok=True)
                contact_sheet(args.sheets / f"{modality}__{label}.png", images[:16], columns=8)
    generator.use_adapters([])
    report = {"machine": machine(), "generator": str(profile.generator), "adapters_dir": str(adapters_dir),
              "steps": steps, "guidance": guidance, "guidance_interval": list(interval),
              "scheduler": args.scheduler or "the generator's",
              "negative_prompt": "the plan's" if args.negative_prompt is None else args.negative_prompt,
              "classifiers_dir": str(classifiers_dir), "classes": results}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
