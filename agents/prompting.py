"""The one prompt builder that inference and training captions share.

Inference (:func:`build_prompt`, called by the planner with the findings read from a request) and
training (:func:`caption_for_label`, called by dataset preparation to caption each image from its
class label) both end in :func:`build_prompt`, so the generator is trained on the same phrasing it
is later prompted with.

Prompt layout (most important first, because text encoders truncate at 77 tokens)::

    <modality term>, <technique terms>, <finding phrases>. <visual descriptions>

A finding phrase is ``[possible ][severity ][side ]<term>[ in <locations>][ (<grade>)]``. Absent
findings never enter the prompt: they go to the negative prompt, after the modality's own
``negative_prompt``.

The ``label`` (the storage class folder) is chosen by :func:`choose_label`:

1. the first present finding the text states as its conclusion: introduced by "consistent with",
   "compatible with", "in keeping with", "diagnostic of" ... or written in an IMPRESSION section
   (the reasoner keeps that phrase, or ``impression``, as the finding's ``cue``);
2. else the first, in text order, of the present findings and the hedged diagnoses (an uncertain
   finding introduced by "suspicious for", "suggestive of", "likely represents" ...): a hedge that
   interprets the lesion just described names what is drawn ("ring-enhancing lesion suspicious for
   metastasis, with vasogenic oedema" is a metastasis image, not an oedema image), while a certain
   finding named before it keeps the label ("RLL consolidation concerning for pneumonia": the image
   shows consolidation; pneumonia is not proven by it);
3. else the first uncertain finding; else, for a normal study, the modality's normal label (or
   ``normal``); else ``unspecified``: the text neither names a finding nor calls the study normal,
   and a study is never claimed normal unless the text says so.

A plain hedge ("possible", "likely") is not a diagnosis: it keeps its place in text order under rule 3.
Imaging signs named in the text ("dural tail", "posterior shadowing") follow the findings as
descriptors, and their visual descriptions follow the findings' ones.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterable

from clinisynth.agents.plan import Concept, Finding
from clinisynth.knowledge import KnowledgeBase

#: Folder name of a normal study when the modality has no normal record.
NORMAL_LABEL = "normal"
#: Label of a plan that names no finding and is not called normal (nothing to draw; never "normal").
UNSPECIFIED_LABEL = "unspecified"
#: Cues of a present finding stated as the conclusion (``impression``: written in an IMPRESSION section).
STATED_DIAGNOSIS_CUES = frozenset({
    "consistent with", "compatible with", "in keeping with", "in keeping", "diagnostic of", "characteristic of",
    "typical of", "represents", "representing", "most consistent with", "c/w", "impression",
})
#: Cues of an uncertain finding that interprets what was just described ("lesion suspicious for metastasis").
HEDGED_DIAGNOSIS_CUES = frozenset({
    "suggestive of", "highly suggestive of", "suspicious for", "suspicious of", "concerning for", "worrisome for",
    "likely represents", "likely representing", "most likely representing", "may represent", "may reflect",
    "could represent", "likely reflecting", "favored to represent", "favoured to represent", "could reflect",
    "most concerning for", "concern for", "may indicate", "could indicate", "correlate clinically for",
    "clinically correlate for", "correlate for",
})


@dataclass(frozen=True)
class PromptBundle:
    """What the generator gets: positive prompt, negative prompt and the class label for storage."""

    prompt: str
    negative_prompt: str
    label: str


def _finding_phrase(finding: Finding) -> str:
    words: list[str] = []
    if finding.status == "uncertain":
        words.append("possible")
    if finding.severity:
        words.append(finding.severity)
    if finding.laterality:
        words.append(finding.laterality)
    words.append(finding.term)
    phrase = " ".join(words)
    if finding.location:
        # A lobe already says the side; keep the location terms as they are written in the records.
        phrase += " in the " + " and ".join(concept.term for concept in finding.location)
    if finding.grade:
        phrase += f" ({finding.grade})"
    return phrase


def _unique(items: Iterable[str]) -> list[str]:
    seen: list[str] = []
    for item in items:
        item = item.strip()
        if item and item.lower() not in (s.lower() for s in seen):
            seen.append(item)
    return seen


def choose_label(*, knowledge: KnowledgeBase, modality_id: str | None, findings: Iterable[Finding], normal_study: bool) -> str:
    """The storage class of a plan (the rules are in the module docstring).

    Args:
        knowledge: the reference records (the modality's normal record gives the normal label).
        modality_id: the modality record id, or ``None``.
        findings: findings with status and cue.
        normal_study: the text calls the study normal.

    Returns:
        A finding's label, the normal label, or :data:`UNSPECIFIED_LABEL`.
    """
    findings = sorted((f for f in findings if f.temporality == "current"), key=lambda f: f.start)
    if not normal_study:
        stated = [f for f in findings if f.status == "present" and f.cue in STATED_DIAGNOSIS_CUES]
        if stated:
            return stated[0].label
        leading = [f for f in findings if f.status == "present" or (f.status == "uncertain" and f.cue in HEDGED_DIAGNOSIS_CUES)]
        if leading:
            return leading[0].label
        uncertain = [f for f in findings if f.status == "uncertain"]
        if uncertain:
            return uncertain[0].label
        return UNSPECIFIED_LABEL
    normal = knowledge.normal_finding_for(modality_id) if modality_id else None
    return normal.label if normal is not None and normal.label else NORMAL_LABEL


def build_prompt(
    *,
    knowledge: KnowledgeBase,
    modality_id: str | None,
    findings: Iterable[Finding],
    normal_study: bool,
    technique: Iterable[Concept] = (),
    signs: Iterable[Concept] = (),
    anatomy: Iterable[Concept] = (),
) -> PromptBundle:
    """Build the generator prompt, negative prompt and storage label.

    Args:
        knowledge: the reference records (modality terms, visual descriptions, negative prompts).
        modality_id: the modality record id, or ``None`` when it cannot be told.
        findings: findings with status; present and uncertain ones are drawn, absent ones avoided.
        normal_study: the request describes a normal study (no present finding is drawn).
        technique: technique concepts (projection, sequence) to name after the modality.
        signs: imaging signs named in the text (sign records): their terms follow the findings as
            descriptors and their visual descriptions follow the findings' ones.
        anatomy: anatomy named in the text; used only when there is no finding and the study is not
            called normal, so that the prompt still says what was imaged.

    Returns:
        A :class:`PromptBundle`.

    Raises:
        KeyError: ``modality_id`` is not a record of ``knowledge``.
    """
    findings = sorted(findings, key=lambda f: f.start)
    modality = knowledge.get(modality_id) if modality_id else None
    drawn = [f for f in findings if f.drawn] if not normal_study else []
    absent = [f for f in findings if f.status == "absent"]

    signs = list(signs)
    head = _unique([modality.term if modality else "medical image", *(c.term for c in technique)])
    visuals: list[str] = []
    if drawn:
        head += _unique(_finding_phrase(f) for f in drawn)
        for finding in drawn:
            record = knowledge.by_id.get(finding.id)
            if record is not None and modality_id and record.visual.get(modality_id):
                visuals.append(record.visual[modality_id].strip().rstrip("."))
    elif normal_study:
        normal = knowledge.normal_finding_for(modality_id) if modality_id else None
        head.append("normal study, no abnormality")
        if normal is not None and modality_id and normal.visual.get(modality_id):
            visuals.append(normal.visual[modality_id].strip().rstrip("."))
    else:
        # Nothing named and not called normal: say only what was imaged, never "normal".
        head += _unique(c.term for c in anatomy)
    if not normal_study:
        head += _unique(c.term for c in signs)
        for concept in signs:
            record = knowledge.by_id.get(concept.id)
            if record is not None and modality_id and record.visual.get(modality_id):
                visuals.append(record.visual[modality_id].strip().rstrip("."))
    prompt = ", ".join(head)
    visuals = _unique(visuals)
    if visuals:
        prompt += ". " + ". ".join(visuals)

    negatives = [modality.negative_prompt] if modality is not None and modality.negative_prompt else []
    negatives += [f.term for f in absent if f.id not in {d.id for d in drawn}]
    return PromptBundle(
        prompt=prompt,
        negative_prompt=", ".join(_unique(negatives)),
        label=choose_label(knowledge=knowledge, modality_id=modality_id, findings=findings, normal_study=normal_study),
    )


def _records_for_label(knowledge: KnowledgeBase, modality_id: str, label: str) -> list:
    return [record for record in knowledge.findings_for(modality_id) if record.label == label]


def caption_for_label(*, knowledge: KnowledgeBase, modality_id: str, label: str) -> str:
    """Caption a training image of class ``label`` through the same builder as inference.

    Args:
        knowledge: the reference records.
        modality_id: modality record id (``modality.chest_xray``).
        label: the class label (a finding record's ``label``, the normal record's label, or ``normal``).

    Returns:
        The generator prompt for one present finding of that class (or a normal study).

    Raises:
        ValueError: the modality is unknown, or no finding of that modality has this label (the
            message lists the labels that exist).
    """
    if modality_id not in knowledge.by_id or knowledge.by_id[modality_id].kind != "modality":
        covered = ", ".join(record.id for record in knowledge.modalities)
        raise ValueError(f"unknown modality {modality_id!r}; covered modalities: {covered}")
    normal = knowledge.normal_finding_for(modality_id)
    if label == NORMAL_LABEL or (normal is not None and label == normal.label):
        return build_prompt(knowledge=knowledge, modality_id=modality_id, findings=[], normal_study=True).prompt
    candidates = _records_for_label(knowledge, modality_id, label)
    if not candidates:
        known = sorted({r.label for r in knowledge.findings_for(modality_id) if r.label} | {NORMAL_LABEL})
        raise ValueError(
            f"no finding of {modality_id} has label {label!r}; labels of that modality: {', '.join(known)}"
        )
    # Several records may share a class (e.g. a sign-level record); the one named like the class is canonical.
    record = next((r for r in candidates if r.id.split(".", 1)[1] == label), candidates[0])
    finding = Finding(
        id=record.id,
        term=record.term,
        label=label,
        status="present",
        evidence=record.term,
        start=0,
        end=len(record.term),
    )
    return build_prompt(knowledge=knowledge, modality_id=modality_id, findings=[finding], normal_study=False).prompt


def caption_variants_for_label(*, knowledge: KnowledgeBase, modality_id: str, label: str,
                               max_variants: int = 64) -> list[str]:
    """Captions of one class in the wordings a request can bring: technique, side, severity, location.

    Training on a single caption per class teaches a generator one embedding per class; a request
    ("right lower lobe pneumonia, PA chest radiograph") then arrives out of distribution. These variants are
    built by :func:`build_prompt`, like every inference prompt, so the words a plan adds are seen in training.
    The images of a class do not differ by these words, so the generator learns to draw the class whatever
    they say (a class-level model cannot draw a side it was never shown).

    Args:
        knowledge: the reference records.
        modality_id: modality record id (``modality.chest_xray``).
        label: the class label.
        max_variants: at most this many captions (the plain caption and a fixed-seed sample of the combinations).

    Returns:
        Distinct captions, :func:`caption_for_label`'s first.

    Raises:
        ValueError: as :func:`caption_for_label`, or ``max_variants`` below 1.
    """
    if max_variants < 1:
        raise ValueError(f"max_variants must be at least 1, got {max_variants}")
    base = caption_for_label(knowledge=knowledge, modality_id=modality_id, label=label)
    techniques = [None] + [Concept(id=r.id, term=r.term) for r in knowledge.of_kind("technique")
                           if modality_id in r.modalities]
    normal = knowledge.normal_finding_for(modality_id)
    captions = [base]
    if label == NORMAL_LABEL or (normal is not None and label == normal.label):
        for technique in techniques[1:]:
            captions.append(build_prompt(knowledge=knowledge, modality_id=modality_id, findings=[],
                                         normal_study=True, technique=[technique]).prompt)
        return _unique(captions)[:max_variants]

    candidates = _records_for_label(knowledge, modality_id, label)
    record = next((r for r in candidates if r.id.split(".", 1)[1] == label), candidates[0])
    sides = [None, "left", "right", "bilateral"] if record.lateralized else [None]
    severities = [None, *sorted(record.severity)]
    typical = [knowledge.by_id[i] for i in record.locations if i in knowledge.by_id]
    # Sided forms of the typical places ("right lower lobe" for "lower lobes") carry their own side.
    place_words = {word.lower() for place in typical for word in (place.term, *place.synonyms)}
    sided = [a for a in knowledge.of_kind("anatomy")
             if a.side and a.term.lower().removeprefix(f"{a.side} ") in place_words]
    locations = [None, *typical, *sided]
    combos = []
    for technique in techniques:
        for location in locations:
            for side in ([location.side] if location is not None and location.side else sides):
                for severity in severities:
                    combos.append((technique, location, side, severity))
    # A fixed-seed sample: reproducible, and (unlike a stride through nested loops) every factor varies.
    chosen = random.Random(0).sample(combos, min(len(combos), max_variants - 1))
    for technique, location, side, severity in chosen:
        finding = Finding(id=record.id, term=record.term, label=label, status="present", laterality=side,
                          severity=severity, evidence=record.term, start=0, end=len(record.term),
                          location=[Concept(id=location.id, term=location.term)] if location is not None else [])
        captions.append(build_prompt(knowledge=knowledge, modality_id=modality_id, findings=[finding],
                                     normal_study=False, technique=[technique] if technique else []).prompt)
    return _unique(captions)[:max_variants]
