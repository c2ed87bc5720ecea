"""The structured report (History / Technique / Findings / Impression) and the visual feature map."""

from __future__ import annotations

from typing import Iterable

from clinisynth.agents.plan import Concept, Finding, Report, VisualFeature
from clinisynth.knowledge import KnowledgeBase


def map_visual_features(
    *, knowledge: KnowledgeBase, modality_id: str | None, findings: Iterable[Finding], signs: Iterable[Concept] = ()
) -> list[VisualFeature]:
    """How each present or uncertain finding, and each sign named, looks in the modality (absent findings are not drawn).

    Args:
        knowledge: the reference records.
        modality_id: the modality record id, or ``None``; without it the definition stands in.
        findings: findings with status.
        signs: imaging signs named in the text (``Pathology.signs``); each gets a feature whose
            ``finding_id`` is the sign's id.

    Returns:
        One :class:`VisualFeature` per drawn finding, then per sign, from the record's ``visual``
        text for the modality, else its definition, else its term.
    """
    features: list[VisualFeature] = []
    for finding in findings:
        if not finding.drawn or any(f.finding_id == finding.id for f in features):
            continue
        record = knowledge.by_id.get(finding.id)
        description = finding.term
        if record is not None:
            description = (modality_id and record.visual.get(modality_id)) or record.definition or record.term
        features.append(VisualFeature(finding_id=finding.id, description=description))
    for sign in signs:
        if any(f.finding_id == sign.id for f in features):
            continue
        record = knowledge.by_id.get(sign.id)
        description = sign.term
        if record is not None:
            description = (modality_id and record.visual.get(modality_id)) or record.definition or record.term
        features.append(VisualFeature(finding_id=sign.id, description=description))
    return features


def _sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def _describe(finding: Finding) -> str:
    words = [w for w in (finding.severity, finding.laterality) if w]
    phrase = " ".join([*words, finding.term])
    if finding.location:
        phrase += " in the " + " and ".join(c.term for c in finding.location)
    if finding.grade:
        phrase += f" ({finding.grade})"
    return phrase


def build_report(
    *,
    knowledge: KnowledgeBase,
    request: str,
    modality: Concept | None,
    technique: Iterable[Concept],
    findings: Iterable[Finding],
    normal_study: bool,
) -> Report:
    """Write the report sections a radiologist would expect.

    Args:
        knowledge: the reference records (technique sentences, normal records).
        request: the input text; it becomes the History.
        modality: the modality concept, or ``None``.
        technique: technique concepts; their ``technique_text`` is used, else the modality's.
        findings: findings with status.
        normal_study: whether the study is normal.

    Returns:
        A :class:`~clinisynth.agents.plan.Report`.
    """
    findings = sorted(findings, key=lambda f: f.start)
    modality_record = knowledge.by_id.get(modality.id) if modality else None
    technique_lines = []
    for concept in technique:
        record = knowledge.by_id.get(concept.id)
        line = (record.technique_text if record is not None else None) or concept.term
        if line not in technique_lines:
            technique_lines.append(_sentence(line))
    if not technique_lines:
        technique_lines.append(
            _sentence(modality_record.technique_text or modality_record.term) if modality_record else "Modality not stated."
        )

    present = [f for f in findings if f.status == "present" and f.drawn]
    uncertain = [f for f in findings if f.status == "uncertain" and f.drawn]
    absent = [f for f in findings if f.status == "absent"]
    historical = [f for f in findings if f.temporality == "historical" and f.status != "absent"]
    lines = [_sentence(_describe(f)) for f in present]
    lines += [_sentence("old " + _describe(f) + ", not acute") for f in historical]
    lines += [_sentence("possible " + _describe(f)) for f in uncertain]
    lines += [_sentence("no " + f.term) for f in absent]
    normal_record = knowledge.normal_finding_for(modality.id) if modality else None
    if normal_study:
        lines.insert(0, _sentence(normal_record.term if normal_record else "no abnormality"))
    if not lines:
        lines = ["No finding described."]

    if present or uncertain:
        impression = " ".join(
            [_sentence(_describe(f)) for f in present] + [_sentence(f"possible {_describe(f)}; correlate clinically") for f in uncertain]
        )
    elif normal_study:
        impression = _sentence(normal_record.term if normal_record else "normal study")
    else:
        impression = "No finding stated."
    history = " ".join(request.split())
    return Report(
        history=history if history else "Not given.",
        technique=" ".join(technique_lines),
        findings=" ".join(lines),
        impression=impression,
    )
