"""The verifier's decision: does a generated image show what was asked, and is it safe to keep?

Decision logic only (no LangGraph): the graph's verify node calls :meth:`Verifier.verify` per
candidate and its refine node calls :func:`refinement_for` on a rejected verdict. Every scorer is
the one in ``clinisynth.evaluation`` that the evaluation report uses too.

Signals, in order (a failed sanity check skips the rest: scores of a broken image mean nothing):

1. ``sanity``: non-finite, blank, constant, pure noise, out of range -> failure ``quality``.
2. ``memorisation``: nearest training image (FAISS over image embeddings) too similar -> ``memorised``.
3. ``duplicate``: too similar to an image already accepted in this dataset -> ``duplicate``.
4. ``classifier``: calibrated probability of the requested label too low -> ``finding``.
5. ``clip_score``: image-prompt CLIP score too low -> ``finding``.

A signal that is not available (no classifier for the modality, a label the classifier does not
know, no CLIP weights, no training index) is recorded as ``"unavailable"`` with its reason in
``Verdict.notes`` and skipped; it never counts as a pass or a fail. An image is accepted when every
available signal passes.
"""

from __future__ import annotations

import base64
import io
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from clinisynth.evaluation.memorisation import (
    DEFAULT_DUPLICATE_THRESHOLD,
    DEFAULT_MEMORISATION_THRESHOLD,
    ThumbnailEmbedder,
    max_similarity,
)
from clinisynth.evaluation.images import grey_image
from clinisynth.evaluation.sanity import SanityThresholds, check_image
from clinisynth.generation.limits import MAX_GUIDANCE, MAX_STEPS

Failure = Literal["finding", "quality", "memorised", "duplicate"]
#: When several signals fail, the verdict's ``failure`` is the first of these present.
FAILURE_PRIORITY: tuple[Failure, ...] = ("quality", "finding", "memorised", "duplicate")
UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class ModalityThresholds:
    """Pass thresholds of one modality.

    Args:
        min_label_probability: calibrated classifier probability of the requested label needed to pass.
        min_clip_score: CLIP score (0-100) needed to pass. 25 is a starting point for BiomedCLIP
            (image-caption cosine about 0.25 and up for matching pairs); tune it on accepted images.
        max_memorisation_similarity: nearest-training-image similarity at or above which an image is
            rejected as memorised.
        max_duplicate_similarity: similarity to an already accepted image at or above which it is a duplicate.
        sanity: thresholds of the sanity check (``SanityThresholds()`` when ``None``).
    """

    min_label_probability: float = 0.5
    min_clip_score: float = 25.0
    max_memorisation_similarity: float = DEFAULT_MEMORISATION_THRESHOLD
    max_duplicate_similarity: float = DEFAULT_DUPLICATE_THRESHOLD
    sanity: SanityThresholds | None = None

    def __post_init__(self) -> None:
        for name in ("min_label_probability", "max_memorisation_similarity", "max_duplicate_similarity"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value!r}")
        if not 0.0 <= self.min_clip_score <= 100.0:
            raise ValueError(f"min_clip_score must be between 0 and 100, got {self.min_clip_score!r}")


#: Defaults per storage modality. Memorisation similarities were measured on the shared data with the
#: 32 x 32 thumbnail embedder: distinct chest radiographs stay below 0.98 (99.9th percentile of the
#: nearest-neighbour similarity between different files is 0.97-0.98; copies score 1.0); the brain MRI
#: set holds augmented copies of one slice from 0.93 up, so anything from 0.95 is treated as a copy.
DEFAULT_THRESHOLDS: dict[str, ModalityThresholds] = {
    "chest_xray": ModalityThresholds(max_memorisation_similarity=0.985, max_duplicate_similarity=0.985),
    "brain_mri": ModalityThresholds(max_memorisation_similarity=0.95, max_duplicate_similarity=0.95),
}


@dataclass(frozen=True)
class Verdict:
    """The verifier's decision on one image.

    Args:
        accepted: every available signal passed.
        scores: per signal its values, or ``"unavailable"``; JSON-friendly.
        reasons: one line per failed signal, ``"<failure>: <why>"``.
        failure: the main failure (see :data:`FAILURE_PRIORITY`), ``None`` when accepted.
        failures: every failed category, in priority order.
        confused_label: the class the classifier saw instead of the requested one (wrong finding).
        notes: why signals were unavailable or skipped.
        embedding: the image's memorisation embedding; keep the accepted ones for later duplicate checks.
        elapsed_s: time the verification took.
    """

    accepted: bool
    scores: dict[str, Any]
    reasons: list[str]
    failure: Failure | None
    failures: tuple[Failure, ...] = ()
    confused_label: str | None = None
    notes: list[str] = field(default_factory=list)
    embedding: np.ndarray | None = field(default=None, repr=False, compare=False)
    elapsed_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-native form, stored whole in an attempt of the graph state and the trace.

        The keys are the attempt's verdict fields (``verify_s`` is :attr:`elapsed_s`, named apart from the
        attempt's generation time); the embedding is left out (:meth:`Verifier.embed` remakes it).
        """
        return {"accepted": self.accepted, "scores": self.scores, "reasons": list(self.reasons), "failure": self.failure,
                "failures": list(self.failures), "confused_label": self.confused_label, "notes": list(self.notes),
                "verify_s": round(self.elapsed_s, 4)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Verdict":
        """Inverse of :meth:`to_dict` (without the embedding); extra keys (the rest of an attempt) are ignored."""
        return cls(accepted=bool(data["accepted"]), scores=dict(data["scores"]), reasons=list(data["reasons"]),
                   failure=data["failure"], failures=tuple(data.get("failures", ())),
                   confused_label=data.get("confused_label"), notes=list(data.get("notes", [])),
                   elapsed_s=float(data.get("verify_s", 0.0)))

    @classmethod
    def merged(cls, verdicts: Sequence["Verdict"]) -> "Verdict":
        """One rejected verdict for a slot whose best-of-N candidates all failed: every failure seen counts."""
        if not verdicts or any(verdict.accepted for verdict in verdicts):
            raise ValueError("Verdict.merged needs one or more rejected verdicts")
        failures = tuple(kind for kind in FAILURE_PRIORITY if any(kind in v.failures for v in verdicts))
        confused = next((v.confused_label for v in verdicts if v.confused_label), None)
        return cls(accepted=False, scores=verdicts[0].scores, reasons=[r for v in verdicts for r in v.reasons],
                   failure=failures[0], failures=failures, confused_label=confused,
                   notes=list(verdicts[0].notes),
                   elapsed_s=sum(v.elapsed_s for v in verdicts))


@dataclass(frozen=True)
class Refinement:
    """Settings of the next attempt after a rejection.

    Args:
        new_seed: sample from a new seed (always true: a rejected seed is not tried again).
        steps: sampler steps.
        guidance: classifier-free guidance scale.
        negative_prompt: the negative prompt, with the confused class added after a wrong finding.
        emphasis: the finding to emphasise in the prompt, or ``None``.
        prompt: the prompt with ``emphasis`` put first, when a prompt was given.
        action: one line for the trace.
    """

    new_seed: bool
    steps: int
    guidance: float
    negative_prompt: str
    emphasis: str | None = None
    prompt: str | None = None
    action: str = ""


def thumbnail_data_uri(image, *, size: int = 64) -> str:
    """A small PNG of ``image`` as a ``data:image/png;base64,...`` URI, for traces."""
    from PIL import Image

    thumb = grey_image(image)
    thumb.thumbnail((size, size), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    thumb.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class Verifier:
    """Scores one image with every available signal and decides.

    Args:
        thresholds: per modality (keys as the plan's storage modality, e.g. ``chest_xray``), or one
            :class:`ModalityThresholds` for all; modalities not listed use ``default_thresholds``.
        classifiers: per modality, a :class:`~clinisynth.evaluation.classifier.Classifier`.
        clip_scorer: a :class:`~clinisynth.evaluation.clip_score.ClipScorer`, or ``None``.
        memorisation: per modality, a :class:`~clinisynth.evaluation.memorisation.MemorisationIndex`
            of the training images, built with ``embedder``.
        embedder: image embedder for memorisation and duplicates (:class:`ThumbnailEmbedder` when ``None``).
        unavailable: signal name -> why it is missing (e.g. ``{"clip_score": "BiomedCLIP weights not found"}``),
            repeated in every verdict's notes.
        default_thresholds: thresholds of modalities not in ``thresholds``.
    """

    def __init__(
        self,
        thresholds: dict[str, ModalityThresholds] | ModalityThresholds | None = None,
        *,
        classifiers: dict[str, Any] | None = None,
        clip_scorer: Any | None = None,
        memorisation: dict[str, Any] | None = None,
        embedder: Any | None = None,
        unavailable: dict[str, str] | None = None,
        default_thresholds: ModalityThresholds | None = None,
    ) -> None:
        if isinstance(thresholds, ModalityThresholds):
            self.thresholds: dict[str, ModalityThresholds] = {}
            self.default_thresholds = thresholds
        else:
            self.thresholds = dict(DEFAULT_THRESHOLDS if thresholds is None else thresholds)
            self.default_thresholds = default_thresholds or ModalityThresholds()
        self.classifiers = dict(classifiers or {})
        self.clip_scorer = clip_scorer
        self.memorisation = dict(memorisation or {})
        self.embedder = embedder or ThumbnailEmbedder()
        self.unavailable = dict(unavailable or {})
        for modality, index in self.memorisation.items():
            if index.embedder_name != self.embedder.name:
                raise ValueError(
                    f"memorisation index of {modality!r} was built with {index.embedder_name!r} but the verifier embeds "
                    f"with {self.embedder.name!r}; rebuild the index or pass the matching embedder"
                )

    def describe(self) -> dict[str, Any]:
        """What this verifier checks with, for the run's trace."""
        return {
            "classifiers": {modality: classifier.name for modality, classifier in self.classifiers.items()},
            "clip_score": getattr(self.clip_scorer, "name", None),
            "memorisation": {modality: len(index) for modality, index in self.memorisation.items()},
            "embedder": self.embedder.name,
            "unavailable": dict(self.unavailable),
            "thresholds": {modality: asdict(limits) for modality, limits in self.thresholds.items()},
            "default_thresholds": asdict(self.default_thresholds),
        }

    def thresholds_for(self, modality: str) -> ModalityThresholds:
        return self.thresholds.get(modality, self.default_thresholds)

    def embed(self, image) -> np.ndarray:
        """The memorisation / duplicate embedding of one image (for images accepted in earlier runs)."""
        return self.embedder([image])[0]

    def verify(
        self,
        image,
        *,
        plan_label: str,
        modality: str,
        prompt: str | None = None,
        accepted_embeddings: np.ndarray | Sequence[np.ndarray] | None = None,
    ) -> Verdict:
        """Score ``image`` and decide.

        Args:
            image: PIL image or numpy array (the generator's output).
            plan_label: the label the plan asked for (a class folder name).
            modality: the storage modality (selects thresholds, classifier and memorisation index).
            prompt: the generator prompt, for the CLIP score (unavailable without it).
            accepted_embeddings: embeddings (:meth:`embed`) of images already accepted into the same dataset.
        """
        started = time.perf_counter()
        limits = self.thresholds_for(modality)
        scores: dict[str, Any] = {"modality": modality, "label": plan_label,
                                  "thresholds": "modality" if modality in self.thresholds else "default"}
        reasons: list[str] = []
        failures: list[Failure] = []
        notes: list[str] = []

        def fail(kind: Failure, why: str) -> None:
            failures.append(kind)
            reasons.append(f"{kind}: {why}")

        def unavailable(signal: str, why: str) -> None:
            scores[signal] = UNAVAILABLE
            notes.append(f"{signal} unavailable: {why}")

        sanity = check_image(image, thresholds=limits.sanity)
        scores["sanity"] = {name: float(value) for name, value in sanity.checks.items()}
        if not sanity.ok:
            fail("quality", f"sanity check {sanity.reason} failed (value {sanity.value:.4g})")
            for signal in ("memorisation", "duplicate", "classifier", "clip_score"):
                scores[signal] = "skipped"
            notes.append("other signals skipped: the image failed its sanity check")
            return self._verdict(scores, reasons, failures, notes, None, None, started)

        embedding = self.embed(image)
        index = self.memorisation.get(modality)
        if index is None:
            unavailable("memorisation", self.unavailable.get("memorisation", f"no training-image index for modality {modality!r}"))
        else:
            nearest = index.nearest(embedding[None, :])[0]
            scores["memorisation"] = {"similarity": nearest.similarity, "nearest": nearest.key,
                                      "threshold": limits.max_memorisation_similarity}
            if nearest.similarity >= limits.max_memorisation_similarity:
                fail("memorised", f"{nearest.similarity:.4f} similar to training image {nearest.key} "
                                  f"(limit {limits.max_memorisation_similarity})")

        similarity, row = max_similarity(embedding, accepted_embeddings)
        scores["duplicate"] = {"similarity": similarity, "accepted_index": row, "threshold": limits.max_duplicate_similarity,
                               "n_accepted": 0 if accepted_embeddings is None else len(accepted_embeddings)}
        if row is not None and similarity >= limits.max_duplicate_similarity:
            fail("duplicate", f"{similarity:.4f} similar to accepted image #{row} (limit {limits.max_duplicate_similarity})")

        confused = None
        classifier = self.classifiers.get(modality)
        if classifier is None:
            unavailable("classifier", self.unavailable.get("classifier", f"no classifier for modality {modality!r}"))
        elif plan_label not in classifier.labels:
            unavailable("classifier", f"the {modality} classifier has no class {plan_label!r} (classes: {', '.join(classifier.labels)})")
        else:
            probs = classifier.predict_proba([image])[0]
            by_label = {label: float(p) for label, p in zip(classifier.labels, probs)}
            others = sorted((p, label) for label, p in by_label.items() if label != plan_label)
            confused = others[-1][1]
            top = max(by_label, key=by_label.get)
            scores["classifier"] = {"probabilities": by_label, "label_probability": by_label[plan_label], "top": top,
                                    "threshold": limits.min_label_probability, "model": classifier.name}
            if by_label[plan_label] < limits.min_label_probability:
                fail("finding", f"classifier gives {plan_label!r} p={by_label[plan_label]:.3f} "
                                f"(needs {limits.min_label_probability}); most likely {top!r} p={by_label[top]:.3f}")

        if self.clip_scorer is None:
            unavailable("clip_score", self.unavailable.get("clip_score", "no CLIP model loaded"))
        elif not prompt:
            unavailable("clip_score", "no prompt given")
        else:
            value = float(self.clip_scorer.score([image], prompt)[0])
            scores["clip_score"] = {"value": value, "threshold": limits.min_clip_score, "model": self.clip_scorer.name}
            if value < limits.min_clip_score:
                fail("finding", f"CLIP score {value:.2f} below {limits.min_clip_score}")
        return self._verdict(scores, reasons, failures, notes, confused, embedding, started)

    @staticmethod
    def _verdict(scores, reasons, failures, notes, confused, embedding, started) -> Verdict:
        ordered = tuple(kind for kind in FAILURE_PRIORITY if kind in failures)
        elapsed = time.perf_counter() - started
        scores["elapsed_s"] = elapsed
        return Verdict(accepted=not ordered, scores=scores, reasons=reasons, failure=ordered[0] if ordered else None,
                       failures=ordered, confused_label=confused if "finding" in ordered else None, notes=notes,
                       embedding=embedding, elapsed_s=elapsed)


def _label_text(label: str) -> str:
    return label.replace("_", " ")


def emphasised_prompt(prompt: str, term: str) -> str:
    """``prompt`` with ``term`` moved to the front (early tokens weigh most in CLIP-style conditioning)."""
    if prompt.lower().startswith(term.lower()):
        return prompt
    return f"{term}, {prompt}"


def refinement_for(
    verdict: Verdict,
    *,
    steps: int,
    guidance: float,
    negative_prompt: str,
    confused_label: str | None = None,
    finding: str | None = None,
    prompt: str | None = None,
    guidance_step: float = 1.5,
    max_guidance: float = MAX_GUIDANCE,
    steps_factor: float = 1.5,
    max_steps: int = MAX_STEPS,
) -> Refinement:
    """The next attempt's settings from why ``verdict`` failed (issue 6's mapping).

    - ``finding`` (wrong or weak): guidance + ``guidance_step`` (at most ``max_guidance``), the finding
      emphasised, the confused class added to the negative prompt, new seed.
    - ``quality``: steps x ``steps_factor`` (at most ``max_steps``), new seed.
    - ``memorised`` / ``duplicate``: new seed only.

    When several categories failed, the changes of each apply (all of them include a new seed).

    Args:
        verdict: a rejected verdict.
        steps, guidance, negative_prompt: the rejected attempt's settings.
        confused_label: the class seen instead; ``verdict.confused_label`` when ``None``.
        finding: the requested finding's term, to emphasise (the plan label's words when ``None``).
        prompt: the rejected prompt; when given, :attr:`Refinement.prompt` is it with the finding emphasised.

    Raises:
        ValueError: the verdict was accepted (there is nothing to refine).
    """
    if verdict.accepted:
        raise ValueError("refinement_for needs a rejected verdict; this one was accepted")
    actions = ["new seed"]
    new_steps, new_guidance, new_negative, emphasis, new_prompt = steps, guidance, negative_prompt, None, None
    if "quality" in verdict.failures:
        new_steps = min(max_steps, max(steps + 1, int(round(steps * steps_factor))))
        actions.append(f"steps {steps} -> {new_steps}")
    if "finding" in verdict.failures:
        new_guidance = min(max_guidance, guidance + guidance_step)
        actions.append(f"guidance {guidance:g} -> {new_guidance:g}")
        confused = confused_label or verdict.confused_label
        if confused:
            term = _label_text(confused)
            present = [part.strip().lower() for part in negative_prompt.split(",")]
            if term.lower() not in present:
                new_negative = f"{negative_prompt}, {term}" if negative_prompt.strip() else term
                actions.append(f"negative prompt + {term!r}")
        emphasis = finding or _label_text(str(verdict.scores.get("label", ""))) or None
        if emphasis:
            actions.append(f"emphasise {emphasis!r}")
            if prompt:
                new_prompt = emphasised_prompt(prompt, emphasis)
    return Refinement(new_seed=True, steps=new_steps, guidance=new_guidance, negative_prompt=new_negative,
                      emphasis=emphasis, prompt=new_prompt, action=", ".join(actions))


#: Signals whose scores are flattened into ``metadata.jsonl`` (see :func:`metadata_scores`).
SIGNALS = ("memorisation", "duplicate", "classifier", "clip_score")


def metadata_scores(scores: dict[str, Any]) -> dict[str, Any]:
    """A verdict's scores with the same keys and value types on every ``metadata.jsonl`` row.

    A signal that was unavailable or skipped becomes ``None`` (never a string where other rows hold a number),
    and is named in ``unavailable``, so tables built from the metadata keep one type per column.
    """
    def value(signal: str, key: str):
        entry = scores.get(signal)
        return entry.get(key) if isinstance(entry, dict) else None

    return {
        "sanity": dict(scores.get("sanity") or {}),
        "classifier_label_probability": value("classifier", "label_probability"),
        "classifier_top": value("classifier", "top"),
        "clip_score": value("clip_score", "value"),
        "memorisation_similarity": value("memorisation", "similarity"),
        "memorisation_nearest": value("memorisation", "nearest"),
        "duplicate_similarity": value("duplicate", "similarity"),
        "unavailable": [signal for signal in SIGNALS if not isinstance(scores.get(signal), dict)],
        "thresholds": scores.get("thresholds"),
    }


def best_of(verdicts: Sequence[Verdict]) -> int | None:
    """Best-of-N: the index of the best accepted verdict, ``None`` when none was accepted.

    Best = highest classifier probability of the requested label, then highest CLIP score, then lowest
    nearest-training-image similarity (signals that are unavailable count as equal).
    """
    def key(item: tuple[int, Verdict]):
        _, verdict = item
        classifier = verdict.scores.get("classifier")
        clip = verdict.scores.get("clip_score")
        memorisation = verdict.scores.get("memorisation")
        return (
            classifier["label_probability"] if isinstance(classifier, dict) else 0.0,
            clip["value"] if isinstance(clip, dict) else 0.0,
            -memorisation["similarity"] if isinstance(memorisation, dict) else 0.0,
        )

    accepted = [(i, v) for i, v in enumerate(verdicts) if v.accepted]
    if not accepted:
        return None
    return max(accepted, key=key)[0]


def build_verifier(
    *,
    classifier_dirs: dict[str, Path | str] | None = None,
    clip_model: str | Path | None = None,
    training_images: dict[str, Sequence[Path | str]] | None = None,
    memorisation_indexes: dict[str, Any] | None = None,
    cache_dir: Path | str | None = None,
    thresholds: dict[str, ModalityThresholds] | ModalityThresholds | None = None,
    device: str = "cpu",
    unavailable: dict[str, str] | None = None,
) -> Verifier:
    """The run's verifier, complete: load what is available and record why the rest is not (never a
    random-weights stand-in). Nothing is changed on it afterwards.

    Args:
        classifier_dirs: per modality, a trained classifier directory.
        clip_model: open_clip model dir or ``hf-hub:`` id; ``None``: CLIP score unavailable.
        training_images: per modality, the training image files of the generator (memorisation index).
        memorisation_indexes: per modality, a ready :class:`~clinisynth.evaluation.memorisation.MemorisationIndex`
            (e.g. the compact one a model ships) for modalities ``training_images`` does not cover.
        cache_dir: where memorisation indexes are cached (required with ``training_images``).
        thresholds: as :class:`Verifier`.
        device: torch device of the models.
        unavailable: signal -> why the caller leaves it out (e.g. no classifier for a random-weights
            generator); these reasons win over the ones found here.

    Raises:
        ClassifierError: a named classifier directory cannot be loaded (a configuration error, not a
            missing optional signal).
    """
    from clinisynth.evaluation.classifier import Classifier

    found_unavailable: dict[str, str] = {}
    classifiers = {modality: Classifier.load(path, device=device) for modality, path in (classifier_dirs or {}).items()}
    clip_scorer = None
    if clip_model is None:
        found_unavailable["clip_score"] = "no CLIP model configured"
    else:
        from clinisynth.evaluation.clip_score import ClipScorer, ClipUnavailable

        try:
            clip_scorer = ClipScorer.from_pretrained(clip_model, device=device)
        except ClipUnavailable as error:
            found_unavailable["clip_score"] = str(error)
    memorisation = dict(memorisation_indexes or {})
    embedder = ThumbnailEmbedder()
    if training_images:
        if cache_dir is None:
            raise ValueError("build_verifier needs cache_dir to cache the memorisation indexes of training_images")
        from clinisynth.evaluation.memorisation import build_or_load_index

        for modality, paths in training_images.items():
            memorisation[modality] = build_or_load_index(list(paths), cache_dir=Path(cache_dir) / "memorisation",
                                                         embedder=embedder)
    return Verifier(thresholds, classifiers=classifiers, clip_scorer=clip_scorer, memorisation=memorisation,
                    embedder=embedder, unavailable={**found_unavailable, **(unavailable or {})})


__all__ = [
    "DEFAULT_THRESHOLDS", "FAILURE_PRIORITY", "SIGNALS", "Failure", "ModalityThresholds", "Refinement", "Verdict",
    "Verifier", "best_of", "build_verifier", "emphasised_prompt", "metadata_scores", "refinement_for",
    "thumbnail_data_uri",
]
