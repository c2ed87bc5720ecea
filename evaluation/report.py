"""The evaluation report of a synthetic dataset against real images: ``report.json``, ``report.md``, plots.

Every metric is either computed (``status: ok``) or reported as not computable with its reason
(missing weights, too few images, mixed sizes); nothing is estimated in their place.

``real`` plays two parts: the reference distribution (Frechet distances, diversity reference) and
the training set of the generator (memorisation). Downstream utility splits it into a training pool
and a held-out test set, unless a separate ``real_test`` folder is given.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from clinisynth.evaluation.images import grey_uint8

from clinisynth.evaluation.metrics import (
    DatasetError,
    ImageRecord,
    classifier_agreement,
    describe_images,
    diversity_by_prompt,
    frechet_per_class,
    grouped_stratified_split,
    inception_score,
    mean_pairwise_ms_ssim,
    memorisation_rate,
    not_computable,
    ok,
    open_images,
    read_image_set,
)

REPORT_JSON = "report.json"
REPORT_MD = "report.md"


def _sample_per_class(records: Sequence[ImageRecord], *, per_class: int | None, seed: int) -> list[ImageRecord]:
    if per_class is None:
        return list(records)
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[ImageRecord]] = defaultdict(list)
    for record in records:
        by_label[record.label].append(record)
    chosen = []
    for label in sorted(by_label):
        members = by_label[label]
        if len(members) > per_class:
            members = [members[i] for i in sorted(rng.choice(len(members), size=per_class, replace=False))]
        chosen.extend(members)
    return chosen


def _stage(name: str, function: Callable[[], Any], log: Callable[[str], None], timings: dict[str, float]) -> Any:
    log(f"{name} ...")
    began = time.perf_counter()
    result = function()
    timings[name] = round(time.perf_counter() - began, 2)
    return result


def evaluate_dataset(
    synth_dir: Path | str,
    real_dir: Path | str,
    out_dir: Path | str,
    *,
    classifier_dir: Path | str | None = None,
    clip_model: str | None = None,
    inception_weights: Path | str | None = None,
    cache_dir: Path | str | None = None,
    memorisation_threshold: float | None = None,
    max_real_per_class: int | None = 1000,
    downstream: bool = True,
    downstream_settings: Any | None = None,
    real_test_dir: Path | str | None = None,
    test_fraction: float = 0.2,
    device: str = "cpu",
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Compute every metric of issue 6 and write ``report.json``, ``report.md`` and plots into ``out_dir``.

    Args:
        synth_dir: the synthetic set (ordered storage from ``clinisynth generate``, or any folder
            :func:`~clinisynth.evaluation.metrics.read_image_set` reads).
        real_dir: the real set (a prepared folder); also the generator's training images for memorisation.
        out_dir: where the report goes (created).
        classifier_dir: a trained classifier (agreement, FD in its feature space, classifier IS).
        clip_model: open_clip model dir or ``hf-hub:`` id for CLIP scores (``None``: not computed).
        inception_weights: InceptionV3 weights file for FID / IS (``None``: the torch hub cache).
        cache_dir: where the memorisation index is cached (``out_dir/.cache`` when ``None``).
        memorisation_threshold: nearest-training-image similarity counted as memorised
            (memorisation module default when ``None``).
        max_real_per_class: at most this many real images per class for Frechet distances and grids
            (a fixed random sample; ``None``: all).
        downstream: run the downstream-utility training (the slow part).
        downstream_settings: a :class:`~clinisynth.evaluation.downstream.DownstreamSettings`.
        real_test_dir: held-out real images for downstream; else ``test_fraction`` of ``real_dir``.
        test_fraction: held-out share of ``real_dir`` when there is no ``real_test_dir``.
        device: torch device of the networks.
        seed: seeds the samples and splits.
        log: receives progress lines.

    Raises:
        DatasetError: empty folders, or synthetic labels that the real set does not have.
    """
    from clinisynth.evaluation.memorisation import DEFAULT_MEMORISATION_THRESHOLD

    log = log or (lambda message: None)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    threshold = DEFAULT_MEMORISATION_THRESHOLD if memorisation_threshold is None else memorisation_threshold
    if not 0.0 <= threshold <= 1.0:  # a cosine similarity: anything else counts nothing (or all) as memorised
        raise ValueError(f"memorisation_threshold must be between 0 and 1, got {threshold}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(cache_dir) if cache_dir is not None else out_dir / ".cache"

    synth_records = read_image_set(synth_dir)
    real_records = read_image_set(real_dir)
    synth_labels = sorted({r.label for r in synth_records})
    real_labels = sorted({r.label for r in real_records})
    missing = sorted(set(synth_labels) - set(real_labels))
    if missing:
        raise DatasetError(
            f"synthetic labels {missing} have no real images in {real_dir} (real labels: {real_labels}); "
            "compare against a real set with the same class folders"
        )
    real_sample = _sample_per_class(real_records, per_class=max_real_per_class, seed=seed)
    synth_images = _stage("load synthetic images", lambda: open_images(synth_records), log, timings)
    real_images = _stage("load real images", lambda: open_images(real_sample), log, timings)
    synth_y = [r.label for r in synth_records]
    real_y = [r.label for r in real_sample]

    report: dict[str, Any] = {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "synthetic": {"dir": str(synth_dir), "n": len(synth_records), "labels": synth_labels,
                      "per_class": _counts(synth_y), **describe_images(synth_images)},
        "real": {"dir": str(real_dir), "n": len(real_records), "n_sampled": len(real_sample), "labels": real_labels,
                 "per_class_sampled": _counts(real_y), "max_per_class": max_real_per_class,
                 **describe_images(real_images)},
        "notes": ["images are read as grey (PIL mode L) for every metric; modes found are listed above"],
        "metrics": {},
    }
    metrics = report["metrics"]

    classifier = None
    if classifier_dir is not None:
        from clinisynth.evaluation.classifier import Classifier

        classifier = Classifier.load(classifier_dir, device=device)
        report["classifier"] = {"dir": str(classifier_dir), "name": classifier.name, "labels": list(classifier.labels),
                                "card_test_metrics": classifier.card.get("metrics", {}).get("test")}

    # Frechet distances: the classifier's feature space, and InceptionV3 when its weights are here.
    if classifier is not None:
        from clinisynth.evaluation.features import ClassifierFeatures

        network = ClassifierFeatures(classifier)
        synth_features = _stage("classifier features", lambda: network(synth_images), log, timings)
        real_features = network(real_images)
        metrics["fd_classifier"] = {"feature_network": network.name,
                                    **frechet_per_class(synth_features, synth_y, real_features, real_y)}
        synth_probs = classifier.predict_proba(synth_images)
        metrics["classifier_agreement"] = classifier_agreement(synth_probs, synth_y, classifier.labels)
        metrics["inception_score_classifier"] = {
            **inception_score(synth_probs), "note": "IS over the classifier's classes (at most its class count)"}
    else:
        reason = "no classifier given (--classifier DIR)"
        metrics["fd_classifier"] = not_computable(reason)
        metrics["classifier_agreement"] = not_computable(reason)
        metrics["inception_score_classifier"] = not_computable(reason)
    metrics.update(_stage("inception (FID / IS)", lambda: _inception_metrics(
        synth_images, synth_y, real_images, real_y, weights=inception_weights, device=device), log, timings))

    # Diversity: MS-SSIM between images of one prompt; the real reference compares images of one class.
    metrics["diversity"] = _stage("MS-SSIM diversity", lambda: _diversity(synth_records, synth_images), log, timings)
    metrics["diversity_real_reference"] = {
        label: mean_pairwise_ms_ssim([image for image, y in zip(real_images, real_y) if y == label], seed=seed)
        for label in synth_labels
    }

    metrics["clip_score"] = _stage("CLIP score", lambda: _clip_scores(synth_records, synth_images, clip_model, device),
                                   log, timings)
    metrics["memorisation"] = _stage("memorisation", lambda: _memorisation(
        synth_images, real_records, cache_dir=cache_dir, threshold=threshold), log, timings)

    if downstream:
        metrics["downstream"] = _stage("downstream utility", lambda: _downstream(
            synth_images, synth_y, real_records, real_dir=real_dir, real_test_dir=real_test_dir,
            test_fraction=test_fraction, settings=downstream_settings, seed=seed, device=device, log=log), log, timings)
    else:
        metrics["downstream"] = not_computable("skipped (--no-downstream)")

    report["timings_s"] = {**timings, "total": round(time.perf_counter() - started, 2)}
    plots = _stage("plots", lambda: write_plots(report, synth_records, synth_images, real_sample, real_images, out_dir),
                   log, timings)
    report["plots"] = plots
    (out_dir / REPORT_JSON).write_text(json.dumps(_jsonable(report), indent=2) + "\n", encoding="utf-8")
    (out_dir / REPORT_MD).write_text(render_markdown(report), encoding="utf-8")
    return report


def _counts(labels: Sequence[str]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for label in labels:
        counts[label] += 1
    return dict(sorted(counts.items()))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return value


def _inception_metrics(synth_images, synth_y, real_images, real_y, *, weights, device) -> dict[str, Any]:
    from clinisynth.evaluation.features import FeatureNetworkUnavailable, InceptionFeatures

    try:
        network = InceptionFeatures(weights, device=device)
    except FeatureNetworkUnavailable as error:
        return {"fid": not_computable(str(error)), "inception_score": not_computable(str(error))}
    try:
        synth_features, real_features = network(synth_images), network(real_images)
    except ValueError as error:  # images of several sizes in one set
        return {"fid": not_computable(str(error)), "inception_score": not_computable(str(error))}
    fid = {"feature_network": network.name, **frechet_per_class(synth_features, synth_y, real_features, real_y)}
    return {"fid": fid, "inception_score": inception_score(network.class_probabilities(synth_images))}


def _diversity(records: Sequence[ImageRecord], images: Sequence) -> dict[str, Any]:
    groups: dict[str, list] = defaultdict(list)
    by_prompt = all(record.prompt for record in records)
    for record, image in zip(records, images):
        groups[record.prompt if by_prompt else f"label:{record.label}"].append(image)
    result = diversity_by_prompt(dict(groups))
    result["grouped_by"] = "prompt" if by_prompt else "label (the set has no prompts)"
    return result


def _clip_scores(records, images, clip_model, device) -> dict[str, Any]:
    if clip_model is None:
        return not_computable("no CLIP model given (--clip-model DIR or hf-hub:ID)")
    if not all(record.prompt for record in records):
        return not_computable("the synthetic set has no prompts (metadata.jsonl 'prompt') to score against")
    from clinisynth.evaluation.clip_score import ClipScorer, ClipUnavailable

    try:
        scorer = ClipScorer.from_pretrained(clip_model, device=device)
    except ClipUnavailable as error:
        return not_computable(str(error))
    values = scorer.score(images, [record.prompt for record in records])
    per_class = {}
    labels = np.array([record.label for record in records])
    for label in sorted(set(labels.tolist())):
        per_class[label] = ok(float(values[labels == label].mean()), n=int((labels == label).sum()))
    return ok(float(values.mean()), std=float(values.std()), model=scorer.name, per_class=per_class)


def _memorisation(synth_images, real_records, *, cache_dir: Path, threshold: float) -> dict[str, Any]:
    from clinisynth.evaluation.memorisation import ThumbnailEmbedder, build_or_load_index

    embedder = ThumbnailEmbedder()
    index = build_or_load_index([r.path for r in real_records], cache_dir=cache_dir / "memorisation", embedder=embedder)
    embeddings = embedder(synth_images)
    neighbours = index.nearest(embeddings)
    result = memorisation_rate([n.similarity for n in neighbours], threshold=threshold)
    result["embedder"] = embedder.name
    result["n_training_images"] = len(index)
    if result["status"] == "ok":
        worst = sorted(zip(neighbours, range(len(neighbours))), key=lambda item: -item[0].similarity)[:5]
        result["closest"] = [{"synthetic_index": i, "training_image": n.key, "similarity": n.similarity} for n, i in worst]
        # Duplicates inside the synthetic set: pairs at or above the same threshold.
        similarity = embeddings @ embeddings.T
        np.fill_diagonal(similarity, -1.0)
        result["within_set_duplicate_rate"] = float((similarity.max(axis=1) >= threshold).mean()) if len(embeddings) > 1 else 0.0
    return result


def _downstream(synth_images, synth_y, real_records, *, real_dir, real_test_dir, test_fraction, settings, seed, device,
                log) -> dict[str, Any]:
    from clinisynth.evaluation.classifier import stack_grey
    from clinisynth.evaluation.downstream import DownstreamSettings, downstream_utility

    settings = settings or DownstreamSettings(device=device)
    if real_test_dir is not None:
        train_records, test_records = list(real_records), read_image_set(real_test_dir)
        test_source = str(real_test_dir)
    else:
        kept, held = grouped_stratified_split(real_records, fraction=test_fraction, seed=seed)
        train_records, test_records = [real_records[i] for i in kept], [real_records[i] for i in held]
        test_source = f"{test_fraction:.0%} of {real_dir} (grouped by source file)"
    labels = sorted({r.label for r in train_records})
    unknown = sorted({r.label for r in test_records} - set(labels)) + sorted(set(synth_y) - set(labels))
    if unknown:
        return not_computable(f"labels {unknown} are missing from the real training pool (labels: {labels})")
    if len(labels) < 2:
        return not_computable(f"downstream classification needs at least 2 real classes, has {labels}")
    size = settings.image_size

    def arrays(records):
        return stack_grey(open_images(records), image_size=size), np.array([labels.index(r.label) for r in records])

    train_x, train_y = arrays(train_records)
    test_x, test_y = arrays(test_records)
    synth_x = stack_grey(synth_images, image_size=size)
    synth_t = np.array([labels.index(y) for y in synth_y])
    result = downstream_utility(real_train=train_x, real_train_labels=train_y, real_test=test_x, real_test_labels=test_y,
                                synthetic=synth_x, synthetic_labels=synth_t, labels=labels, settings=settings, log=log)
    return ok("see regimes", test_source=test_source, **result)


# --- plots --------------------------------------------------------------------------------------


def write_plots(report, synth_records, synth_images, real_records, real_images, out_dir: Path) -> list[str]:
    """Per-class metric bars, real-vs-synthetic sample grids and confusion matrices; returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    metrics = report["metrics"]
    labels = report["synthetic"]["labels"]

    bars = []
    for key, title in (("fd_classifier", "FD (classifier features)"), ("fid", "FID (InceptionV3)")):
        entry = metrics.get(key, {})
        if isinstance(entry, dict) and "per_class" in entry:
            bars.append((title, {k: v.get("value") for k, v in entry["per_class"].items()}))
    agreement = metrics.get("classifier_agreement", {})
    if agreement.get("status") == "ok":
        bars.append(("classifier agreement", {k: v.get("value") for k, v in agreement["per_class"].items()}))
    clip = metrics.get("clip_score", {})
    if clip.get("status") == "ok":
        bars.append(("CLIP score", {k: v.get("value") for k, v in clip["per_class"].items()}))
    if bars:
        figure, axes = plt.subplots(1, len(bars), figsize=(4 * len(bars), 3.5), squeeze=False)
        for axis, (title, values) in zip(axes[0], bars):
            names = [k for k in labels if k in values]
            heights = [values[k] if values[k] is not None else 0.0 for k in names]
            drawn = axis.bar(names, heights, color=["#4c72b0" if values[k] is not None else "#cccccc" for k in names])
            for rect, name in zip(drawn, names):
                text = "n/a" if values[name] is None else f"{values[name]:.3g}"
                axis.annotate(text, (rect.get_x() + rect.get_width() / 2, rect.get_height()), ha="center", va="bottom",
                              fontsize=8)
            axis.set_title(title)
            axis.tick_params(axis="x", rotation=30)
        figure.tight_layout()
        figure.savefig(out_dir / "per_class_metrics.png", dpi=100)
        plt.close(figure)
        written.append("per_class_metrics.png")

    for label in labels:
        real = [image for image, record in zip(real_images, real_records) if record.label == label][:8]
        synth = [image for image, record in zip(synth_images, synth_records) if record.label == label][:8]
        if not real or not synth:
            continue
        columns = max(len(real), len(synth))
        figure, axes = plt.subplots(2, columns, figsize=(1.4 * columns, 3.2), squeeze=False)
        for row, (name, images) in enumerate((("real", real), ("synthetic", synth))):
            for column in range(columns):
                axis = axes[row][column]
                axis.axis("off")
                if column < len(images):
                    axis.imshow(grey_uint8(images[column]), cmap="gray", vmin=0, vmax=255)
            axes[row][0].set_title(name, fontsize=9, loc="left")
        figure.suptitle(f"{label}: real (top) vs synthetic (bottom)", fontsize=10)
        figure.tight_layout()
        name = f"samples_{label}.png"
        figure.savefig(out_dir / name, dpi=100)
        plt.close(figure)
        written.append(name)

    matrices = []
    if agreement.get("status") == "ok":
        matrices.append(("confusion_classifier.png", "classifier on synthetic (requested vs predicted)",
                         agreement["confusion_matrix"], agreement["labels"]))
    downstream = metrics.get("downstream", {})
    if downstream.get("status") == "ok":
        for regime, entry in downstream["regimes"].items():
            if entry["runs"]:
                matrices.append((f"confusion_downstream_{regime}.png", f"{regime} on real test (seed {entry['runs'][0]['seed']})",
                                 entry["runs"][0]["confusion_matrix"], downstream["labels"]))
    for name, title, matrix, names in matrices:
        matrix = np.asarray(matrix)
        figure, axis = plt.subplots(figsize=(1.2 * len(names) + 2, 1.2 * len(names) + 1.5))
        axis.imshow(matrix, cmap="Blues")
        for (i, j), value in np.ndenumerate(matrix):
            axis.text(j, i, str(value), ha="center", va="center",
                      color="white" if value > matrix.max() / 2 else "black", fontsize=9)
        axis.set_xticks(range(len(names)), names, rotation=30)
        axis.set_yticks(range(len(names)), names)
        axis.set_xlabel("predicted")
        axis.set_ylabel("true / requested")
        axis.set_title(title, fontsize=9)
        figure.tight_layout()
        figure.savefig(out_dir / name, dpi=100)
        plt.close(figure)
        written.append(name)
    return written


# --- markdown -----------------------------------------------------------------------------------


def _fmt(metric: Any, digits: int = 4) -> str:
    if not isinstance(metric, dict):
        return "n/a"
    if metric.get("status") == "not_computable":
        return f"not computable: {metric.get('reason')}"
    value = metric.get("value")
    if isinstance(value, float):
        text = f"{value:.{digits}g}"
        if metric.get("ci_low") is not None:
            text += f" (95% CI {metric['ci_low']:.3f} to {metric['ci_high']:.3f}, n={metric['n']})"
        elif metric.get("std") is not None:
            text += f" (std {metric['std']:.3g})"
        return text
    return str(value)


def render_markdown(report: dict[str, Any]) -> str:
    """``report.md``: the figures of ``report.json`` as tables, with every not-computable reason."""
    metrics = report["metrics"]
    synth, real = report["synthetic"], report["real"]
    lines = [
        "# clinisynth evaluation report",
        "",
        f"- synthetic: `{synth['dir']}`, {synth['n']} images, classes {json.dumps(synth['per_class'])}, "
        f"modes {synth['modes']}, sizes {synth['sizes']}",
        f"- real: `{real['dir']}`, {real['n']} images ({real['n_sampled']} sampled for distribution metrics, "
        f"at most {real['max_per_class']} per class), modes {real['modes']}, sizes {real['sizes']}",
    ]
    if "classifier" in report:
        lines.append(f"- classifier: `{report['classifier']['dir']}` ({report['classifier']['name']})")
    lines += [f"- note: {note}" for note in report.get("notes", [])]
    lines += ["", "## Fidelity", "", "| metric | overall | " + " | ".join(synth["labels"]) + " |",
              "|---" * (len(synth["labels"]) + 2) + "|"]
    for key, title in (("fd_classifier", "FD, classifier features"), ("fid", "FID, InceptionV3")):
        entry = metrics.get(key, {})
        if "overall" in entry:
            cells = [_fmt(entry["per_class"].get(label)) for label in synth["labels"]]
            lines.append(f"| {title} | {_fmt(entry['overall'])} | " + " | ".join(cells) + " |")
        else:
            lines.append(f"| {title} | {_fmt(entry)} |" + " |" * len(synth["labels"]))
    agreement = metrics.get("classifier_agreement", {})
    cells = [_fmt(agreement.get("per_class", {}).get(label)) for label in synth["labels"]]
    lines.append(f"| classifier agreement | {_fmt(agreement)} | " + " | ".join(cells) + " |")
    clip = metrics.get("clip_score", {})
    cells = [_fmt(clip.get("per_class", {}).get(label)) for label in synth["labels"]]
    lines.append(f"| CLIP score | {_fmt(clip)} | " + " | ".join(cells) + " |")
    lines += ["", f"- Inception Score (InceptionV3): {_fmt(metrics.get('inception_score'))}",
              f"- Inception Score over the classifier's classes: {_fmt(metrics.get('inception_score_classifier'))}"]
    diversity = metrics.get("diversity", {})
    lines += ["", "## Diversity (MS-SSIM, lower is more diverse)", "",
              f"- synthetic, mean over {diversity.get('grouped_by', 'groups')}: {_fmt(diversity.get('mean_ms_ssim'))}"]
    for prompt, entry in list(diversity.get("per_prompt", {}).items())[:20]:
        lines.append(f"  - `{prompt[:80]}`: {_fmt(entry)}")
    for label, entry in metrics.get("diversity_real_reference", {}).items():
        lines.append(f"- real reference, random images of `{label}`: {_fmt(entry)}")
    memorisation = metrics.get("memorisation", {})
    lines += ["", "## Privacy", ""]
    if memorisation.get("status") == "ok":
        lines += [
            f"- memorisation rate (nearest training image similarity >= {memorisation['threshold']}, {memorisation['embedder']}, "
            f"{memorisation['n_training_images']} training images): {memorisation['value']:.4f}",
            f"- nearest-neighbour similarity: mean {memorisation['mean_similarity']:.4f}, 95th percentile "
            f"{memorisation['p95_similarity']:.4f}, max {memorisation['max_similarity']:.4f}",
            f"- duplicates inside the synthetic set: {memorisation['within_set_duplicate_rate']:.4f}",
        ]
    else:
        lines.append(f"- memorisation: {_fmt(memorisation)}")
    downstream = metrics.get("downstream", {})
    lines += ["", "## Downstream utility", ""]
    if downstream.get("status") == "ok":
        settings = downstream["settings"]
        lines += [
            f"Classifier `{settings['arch']}` at {settings['image_size']} px, real data cut to {settings['real_fraction']:.0%} "
            f"of {downstream['n_real_train_pool']} images, {downstream['n_synthetic']} synthetic, seeds {settings['seeds']}; "
            f"tested on {downstream['n_real_test']} held-out real images ({downstream['test_source']}).",
            "",
            "| regime | accuracy | balanced accuracy | AUROC |",
            "|---|---|---|---|",
        ]
        for regime, entry in downstream["regimes"].items():
            lines.append(f"| {regime} | {_fmt(entry['accuracy'])} | {_fmt(entry['balanced_accuracy'])} | {_fmt(entry['auroc'])} |")
    else:
        lines.append(f"- {_fmt(downstream)}")
    lines += ["", "## Plots", ""] + [f"![{name}]({name})" for name in report.get("plots", [])]
    lines += ["", f"Timings (s): {json.dumps(report.get('timings_s', {}))}", ""]
    return "\n".join(lines)


__all__ = ["REPORT_JSON", "REPORT_MD", "evaluate_dataset", "render_markdown", "write_plots"]
