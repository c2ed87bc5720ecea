"""Dataset-level metrics and the readers of the image folders they are computed on.

A metric that cannot be computed (too few images, missing weights, mixed sizes) is returned as
``{"status": "not_computable", "reason": ...}``, never as a made-up number. Computed ones are
``{"status": "ok", "value": ..., ...}``.

Folders read by :func:`read_image_set`:

- prepared by ``clinisynth prepare``: ``DIR/manifest.csv`` with ``path`` (relative to DIR) and ``label``;
- ordered storage written by ``clinisynth generate``: ``DIR/metadata.jsonl`` (``file_name``, ``label``, ``prompt``);
- a plain image folder ``DIR/<label>/*.png|jpg|jpeg`` (no manifest; a sub-folder holding an evaluation
  ``report.json`` is skipped).
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from collections import Counter
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from clinisynth.evaluation.images import grey_unit

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: Fewest images per side for a Frechet distance (a 2-image covariance is all noise; below 10 it is not reported).
MIN_FD_IMAGES = 10
#: Fewest images per prompt for the MS-SSIM diversity (the issue asks for at least 4).
MIN_DIVERSITY_IMAGES = 4
#: Fewest images for the Inception Score (one split).
MIN_IS_IMAGES = 10
#: Standard MS-SSIM scale weights (Wang et al. 2003); fewer scales are used for small images (see below).
MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


class DatasetError(ValueError):
    """An image folder cannot be read as a labelled image set; the message says why and what is expected."""


@dataclass(frozen=True)
class ImageRecord:
    """One image of a set.

    Args:
        path: absolute file path.
        label: class label (folder name).
        prompt: the generator prompt (synthetic sets), else ``None``.
        modality: modality name when the manifest has one.
        group: images that must not be split apart (the prepared manifest's ``source_sha256``).
    """

    path: Path
    label: str
    prompt: str | None = None
    modality: str | None = None
    group: str | None = None


def not_computable(reason: str, **extra: Any) -> dict[str, Any]:
    return {"status": "not_computable", "reason": reason, **extra}


def ok(value: Any, **extra: Any) -> dict[str, Any]:
    return {"status": "ok", "value": value, **extra}


def read_image_set(directory: Path | str) -> list[ImageRecord]:
    """The labelled images of a prepared folder, an ordered-storage folder or a ``<label>/`` image folder.

    Raises:
        DatasetError: the folder does not exist, is empty, or its manifest is malformed / names missing files.
    """
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise DatasetError(f"image folder {directory} does not exist or is not a directory")
    manifest = directory / "manifest.csv"
    metadata = directory / "metadata.jsonl"
    if manifest.is_file() and "path" in _csv_columns(manifest):
        records = _read_prepared(directory, manifest)
    elif metadata.is_file():
        records = _read_storage(directory, metadata)
    else:
        records = _read_plain(directory)
    if not records:
        raise DatasetError(
            f"image folder {directory} holds no images; expected a prepared dataset (manifest.csv with path,label), "
            "ordered storage (metadata.jsonl) or <label>/<image>.png sub-folders"
        )
    missing = [str(record.path) for record in records if not record.path.is_file()]
    if missing:
        raise DatasetError(f"{len(missing)} image(s) listed in {directory} are missing, e.g. {missing[:3]}")
    return records


def _csv_columns(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as stream:
        return next(csv.reader(stream), [])


#: The manifest ``clinisynth prepare`` writes (``path,text,modality,label,source_sha256,width,height``).
MANIFEST_NAME = "manifest.csv"


def read_manifest_rows(directory: Path | str, *, required: Sequence[str] = ("path", "label")) -> list[dict[str, Any]]:
    """The rows of a prepared dataset's ``manifest.csv``: the one reader of prepared manifests.

    :func:`read_image_set` here and ``clinisynth.training.data.read_manifest`` build their records from it.
    Every value is stripped, ``path`` is made absolute (it is relative to ``directory`` in the file) and
    ``line`` is the row's line number in the file.

    Args:
        directory: the prepared dataset folder.
        required: columns the header must have.

    Raises:
        DatasetError: no manifest, a required column missing, or a row with an empty ``path`` or ``label``.
    """
    directory = Path(directory)
    manifest = directory / MANIFEST_NAME
    if not manifest.is_file():
        raise DatasetError(f"no {MANIFEST_NAME} in {directory}: prepare the data first with `clinisynth prepare`")
    rows = []
    with manifest.open(newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        missing = [column for column in required if column not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(f"{manifest} lacks column(s) {missing}; expected {', '.join(required)}")
        for number, row in enumerate(reader, start=2):
            row = {key: (value or "").strip() for key, value in row.items() if key is not None}
            if not row.get("path") or not row.get("label"):
                raise DatasetError(f"{manifest} line {number}: empty 'path' or 'label'")
            rows.append({**row, "path": (directory / row["path"]).resolve(), "line": number})
    return rows


def _read_prepared(directory: Path, manifest: Path) -> list[ImageRecord]:
    return [ImageRecord(path=row["path"], label=row["label"], modality=row.get("modality") or None,
                        group=row.get("source_sha256") or None) for row in read_manifest_rows(directory)]


def _read_storage(directory: Path, metadata: Path) -> list[ImageRecord]:
    records = []
    with metadata.open(encoding="utf-8") as stream:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as error:
                raise DatasetError(f"{metadata} line {number} is not JSON: {error}") from error
            if "file_name" not in entry:
                raise DatasetError(f"{metadata} line {number} has no 'file_name'")
            path = (directory / entry["file_name"]).resolve()
            label = entry.get("label") or path.parent.name
            records.append(ImageRecord(path=path, label=label, prompt=entry.get("prompt"), modality=entry.get("modality")))
    return records


def _read_plain(directory: Path) -> list[ImageRecord]:
    records = []
    # A folder holding report.json is an evaluation report written next to the images, not a class.
    label_dirs = [p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and not (p / "report.json").is_file()]
    for label_dir in sorted(label_dirs):
        for path in sorted(label_dir.iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
                records.append(ImageRecord(path=path.resolve(), label=label_dir.name))
    return records


def grouped_stratified_split(records: Sequence, *, fraction: float, seed: int,
                             group: Callable[[Any], str | None] = lambda record: record.group,
                             ) -> tuple[list[int], list[int]]:
    """Indices ``(kept, split_off)``: about ``fraction`` of each label's groups go to ``split_off``.

    The one train / held-out splitter (the classifier, the downstream evaluation and diffusion training
    use it). A group is the records sharing ``group(record)`` (the prepared manifest's ``source_sha256``:
    frames and copies of one source file; a record without one is its own group) and is never split, even
    when its copies carry different labels (it is stratified under its first record's label). Every label
    with at least two groups keeps at least one group on each side. Records need a ``label``.
    """
    if not 0.0 < fraction < 1.0:
        raise DatasetError(f"split fraction must be between 0 and 1 (exclusive), got {fraction}")
    rng = np.random.default_rng(seed)
    groups: dict[str, list[int]] = {}
    for index, record in enumerate(records):
        groups.setdefault(group(record) or f"#{index}", []).append(index)
    by_label: dict[str, list[list[int]]] = {}
    for members in groups.values():
        by_label.setdefault(records[members[0]].label, []).append(members)
    kept, split_off = [], []
    for label in sorted(by_label):
        label_groups = by_label[label]
        order = rng.permutation(len(label_groups))
        n_off = int(round(len(label_groups) * fraction))
        if len(label_groups) >= 2:
            n_off = min(max(n_off, 1), len(label_groups) - 1)
        for rank, g in enumerate(order):
            (split_off if rank < n_off else kept).extend(label_groups[g])
    return sorted(kept), sorted(split_off)


def open_images(records: Sequence[ImageRecord]) -> list:
    """Load every image fully into memory (PIL images, original mode and size)."""
    from PIL import Image

    images = []
    for record in records:
        with Image.open(record.path) as image:
            image.load()
            images.append(image.copy())
    return images


def describe_images(images: Sequence) -> dict[str, Any]:
    """Modes and sizes present (the report says what it converted)."""
    return {
        "modes": dict(Counter(image.mode for image in images)),
        "sizes": {f"{w}x{h}": n for (w, h), n in Counter(image.size for image in images).items()},
    }


# --- Frechet distance -------------------------------------------------------------------------


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray, *, eps: float = 1e-6) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of two feature sets (Heusel et al. 2017).

    A small ``eps`` is added to the diagonals when the product is singular (as pytorch-fid does).

    Raises:
        ValueError: fewer than 2 rows on a side, or feature widths differ.
    """
    from scipy import linalg

    a = np.asarray(features_a, dtype=np.float64)
    b = np.asarray(features_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be (N, D) with the same D, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"a Frechet distance needs at least 2 feature rows per side, got {len(a)} and {len(b)}")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    sigma_a, sigma_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    sigma_a, sigma_b = np.atleast_2d(sigma_a), np.atleast_2d(sigma_b)
    with warnings.catch_warnings():
        # Singular products (fewer images than feature dims) are handled just below, as pytorch-fid does.
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma_a @ sigma_b)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(sigma_a)) * eps
        covmean = linalg.sqrtm((sigma_a + offset) @ (sigma_b + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    diff = mu_a - mu_b
    value = float(diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * np.trace(covmean))
    return max(value, 0.0)


def frechet_per_class(
    synth_features: np.ndarray,
    synth_labels: Sequence[str],
    real_features: np.ndarray,
    real_labels: Sequence[str],
    *,
    min_images: int = MIN_FD_IMAGES,
) -> dict[str, Any]:
    """Frechet distance overall and for every label present in the synthetic set.

    Returns ``{"overall": metric, "per_class": {label: metric}}``; a class with fewer than ``min_images``
    images on either side is not computable (the reason says how many it has).
    """
    synth_labels = np.asarray(synth_labels)
    real_labels = np.asarray(real_labels)

    def one(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
        if len(a) < min_images or len(b) < min_images:
            return not_computable(f"needs at least {min_images} images per side, has {len(a)} synthetic and {len(b)} real",
                                  n_synthetic=len(a), n_real=len(b))
        return ok(frechet_distance(a, b), n_synthetic=len(a), n_real=len(b),
                  # Fewer images than feature dims: the covariance is rank-deficient and FD is biased upward.
                  rank_deficient=bool(min(len(a), len(b)) <= a.shape[1]))

    per_class = {
        label: one(synth_features[synth_labels == label], real_features[real_labels == label])
        for label in sorted(set(synth_labels.tolist()))
    }
    return {"overall": one(synth_features, real_features), "per_class": per_class}


# --- Inception Score --------------------------------------------------------------------------


def inception_score(probabilities: np.ndarray, *, splits: int = 10, seed: int = 0) -> dict[str, Any]:
    """exp(E_x KL(p(y|x) || p(y))), mean and standard deviation over ``splits`` splits (Salimans et al. 2016).

    With fewer than ``splits * MIN_IS_IMAGES`` images the number of splits is reduced (reported);
    below :data:`MIN_IS_IMAGES` it is not computable.
    """
    probs = np.asarray(probabilities, dtype=np.float64)
    if len(probs) < MIN_IS_IMAGES:
        return not_computable(f"needs at least {MIN_IS_IMAGES} images, has {len(probs)}")
    splits = max(1, min(splits, len(probs) // MIN_IS_IMAGES))
    # Shuffled (fixed seed) before splitting: sets are often stored class by class, and a split holding one
    # class alone would score 1.
    probs = probs[np.random.default_rng(seed).permutation(len(probs))]
    scores = []
    for part in np.array_split(probs, splits):
        marginal = part.mean(axis=0, keepdims=True)
        kl = (part * (np.log(part + 1e-12) - np.log(marginal + 1e-12))).sum(axis=1)
        scores.append(math.exp(kl.mean()))
    return ok(float(np.mean(scores)), std=float(np.std(scores)), splits=splits, n=len(probs))


# --- MS-SSIM diversity ------------------------------------------------------------------------


def ms_ssim_scales(side: int, *, kernel_size: int = 11) -> int:
    """Most MS-SSIM scales (1..5) that an image of ``side`` pixels supports with an 11-pixel window.

    torchmetrics requires ``side // max(1, scales - 1) ** 2 > kernel_size - 1``: 5 scales need 161+ px,
    64 px images get 3.
    """
    for scales in range(len(MS_SSIM_BETAS), 0, -1):
        if side >= 2 ** scales and side // max(1, scales - 1) ** 2 > kernel_size - 1:
            return scales
    return 0


def mean_pairwise_ms_ssim(images: Sequence, *, max_images: int = 16, seed: int = 0) -> dict[str, Any]:
    """Mean MS-SSIM over all pairs of ``images`` (grey, one size); higher means more alike (less diverse).

    Args:
        images: PIL images or arrays; colour is averaged to grey.
        max_images: at most this many images are compared (a fixed random subset), so pairs stay few.
        seed: picks that subset.
    """
    import torch
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as ms_ssim

    if len(images) < 2:
        return not_computable(f"needs at least 2 images, has {len(images)}")
    arrays = [grey_unit(image) for image in images]
    shapes = sorted({array.shape for array in arrays})
    if len(shapes) > 1:
        return not_computable(f"images differ in size {shapes}; MS-SSIM compares images of one size")
    height, width = shapes[0]
    scales = ms_ssim_scales(min(height, width))
    if scales == 0:
        return not_computable(f"images of {width}x{height} are too small for MS-SSIM (needs at least 11 pixels a side)")
    if len(arrays) > max_images:
        chosen = np.random.default_rng(seed).choice(len(arrays), size=max_images, replace=False)
        arrays = [arrays[i] for i in sorted(chosen)]
    betas = np.array(MS_SSIM_BETAS[:scales])
    betas = tuple(float(b) for b in betas / betas.sum())
    stack = torch.from_numpy(np.stack(arrays)).float().unsqueeze(1)
    pairs = list(combinations(range(len(arrays)), 2))
    first = stack[[i for i, _ in pairs]]
    second = stack[[j for _, j in pairs]]
    if scales == 1:
        from torchmetrics.functional.image import structural_similarity_index_measure as ssim

        values = ssim(first, second, data_range=1.0, reduction="none")
    else:
        values = ms_ssim(first, second, data_range=1.0, betas=betas, normalize="relu", reduction="none")
    return ok(float(values.mean()), n_images=len(arrays), n_pairs=len(pairs), scales=scales)


def diversity_by_prompt(groups: dict[str, Sequence], *, min_images: int = MIN_DIVERSITY_IMAGES,
                        max_images: int = 16) -> dict[str, Any]:
    """MS-SSIM diversity per prompt (groups with fewer than ``min_images`` are listed as not computable).

    Returns ``{"mean_ms_ssim": metric over computable prompts, "per_prompt": {prompt: metric}}``;
    lower MS-SSIM means more diverse images for one prompt.
    """
    per_prompt = {}
    for prompt, images in groups.items():
        if len(images) < min_images:
            per_prompt[prompt] = not_computable(f"needs at least {min_images} images per prompt, has {len(images)}")
        else:
            per_prompt[prompt] = mean_pairwise_ms_ssim(images, max_images=max_images)
    values = [m["value"] for m in per_prompt.values() if m["status"] == "ok"]
    if not values:
        overall = not_computable(f"no prompt has at least {min_images} images of one size")
    else:
        overall = ok(float(np.mean(values)), n_prompts=len(values))
    return {"mean_ms_ssim": overall, "per_prompt": per_prompt}


# --- classifier agreement and memorisation ----------------------------------------------------


def classifier_agreement(probabilities: np.ndarray, requested: Sequence[str], classifier_labels: Sequence[str]) -> dict[str, Any]:
    """How often the classifier's top class is the requested label, overall and per class, plus the confusion matrix.

    Images whose requested label the classifier does not know are counted apart (``unknown_labels``).
    """
    classifier_labels = list(classifier_labels)
    requested = list(requested)
    known = [i for i, label in enumerate(requested) if label in classifier_labels]
    unknown = Counter(label for label in requested if label not in classifier_labels)
    if not known:
        return not_computable(
            f"none of the requested labels {sorted(unknown)} is a class of the classifier ({classifier_labels})",
            unknown_labels=dict(unknown),
        )
    probs = np.asarray(probabilities)[known]
    truth = np.array([classifier_labels.index(requested[i]) for i in known])
    predicted = probs.argmax(axis=1)
    matrix = np.zeros((len(classifier_labels), len(classifier_labels)), dtype=int)
    for t, p in zip(truth, predicted):
        matrix[t, p] += 1
    per_class = {}
    for index, label in enumerate(classifier_labels):
        mask = truth == index
        if mask.any():
            per_class[label] = ok(float((predicted[mask] == index).mean()), n=int(mask.sum()),
                                  mean_probability=float(probs[mask, index].mean()))
    return ok(
        float((predicted == truth).mean()),
        n=len(known),
        per_class=per_class,
        confusion_matrix=matrix.tolist(),
        labels=classifier_labels,
        unknown_labels=dict(unknown),
    )


def memorisation_rate(similarities: Sequence[float], *, threshold: float) -> dict[str, Any]:
    """Fraction of images whose nearest training image is at least ``threshold`` similar."""
    values = np.asarray(similarities, dtype=np.float64)
    if len(values) == 0:
        return not_computable("no images")
    return ok(float((values >= threshold).mean()), threshold=threshold, n=len(values),
              max_similarity=float(values.max()), mean_similarity=float(values.mean()),
              p95_similarity=float(np.percentile(values, 95)))
