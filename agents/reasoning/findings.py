"""Findings of the plan: the finding, sign and normal mentions, once their modality records are
chosen, become :class:`~clinisynth.agents.plan.Finding` objects, merged per record."""

from __future__ import annotations

from clinisynth.agents.plan import Concept, Finding
from clinisynth.agents.prompting import HEDGED_DIAGNOSIS_CUES, STATED_DIAGNOSIS_CUES
from clinisynth.agents.reasoning import vocab
from clinisynth.agents.reasoning.analysis import Analysis, Mention
from clinisynth.agents.reasoning.attributes import AttributeResolver
from clinisynth.knowledge import KnowledgeBase


class FindingAssembler:
    """Builds the findings of an analysis.

    A sign stands for its finding when it belongs to exactly one and the text does not name that
    finding itself. An observation that a later diagnosis of the same sentence explains ("white matter
    hyperintensities, consistent with demyelination") is not a finding of its own. A finding with no
    side or place of its own, right after one with them in the same sentence ("RLL consolidation
    concerning for pneumonia"), takes them. Mentions of one record merge (sides into bilateral, the
    highest severity, all places); present and absent statements of it stay apart (see
    :func:`conflicts_among`).

    Args:
        knowledge: the reference records (signs' findings, parents).
        attributes: the attribute stage giving each mention its side, place, severity and grade.
    """

    def __init__(self, *, knowledge: KnowledgeBase, attributes: AttributeResolver) -> None:
        self.knowledge = knowledge
        self.attributes = attributes
        self._sign_findings: dict[str, list[str]] = {}
        for record in knowledge.records:
            if record.kind == "finding":
                for sign_id in record.signs:
                    self._sign_findings.setdefault(sign_id, []).append(record.id)
        self._parents = {r.id: r.parent for r in knowledge.records if r.parent}

    def assemble(self, analysis: Analysis, notes: list[str]) -> list[Finding]:
        """The findings of ``analysis`` (normal records included), in text order; notes say what was set aside."""
        doc = analysis.doc
        targets = [m for m in analysis.mentions if m.kind in ("finding", "sign", "normal")]
        records = {}
        for mention in targets:
            record = self._finding_record(mention, notes, doc) if mention.kind != "normal" else self.knowledge.by_id[mention.chosen]
            if record is not None:
                records[id(mention)] = record
        targets = [m for m in targets if id(m) in records]
        explained = self._explained_observations(doc, targets, notes)
        attributes = self.attributes.resolve(analysis, targets, records, explained)
        merged: list[Finding] = []
        # A sign ("blue-white veil") stands for its finding only when the text does not name the finding itself.
        named = {m.chosen for m in targets if m.kind != "sign"}
        last_drawn: dict[int, tuple[int, Finding]] = {}
        for mention in targets:
            record = records[id(mention)]
            if id(mention) in explained:
                continue
            if mention.kind == "sign":
                if record.id in named:
                    continue
                notes.append(f"{doc[mention.start:mention.end].text!r} is a sign of {record.term}; read as that finding")
            side, location, severity, grade = attributes[id(mention)]
            start_char, end_char = doc[mention.start].idx, doc[mention.end - 1].idx + len(doc[mention.end - 1])
            cue = mention.cue
            # The phrase that states it as the conclusion is kept as its cue: the label prefers such a finding.
            if mention.diagnosis in STATED_DIAGNOSIS_CUES and mention.status == "present" and cue is None:
                cue = mention.diagnosis
            elif mention.diagnosis in HEDGED_DIAGNOSIS_CUES and mention.status == "uncertain":
                cue = mention.diagnosis
            finding = Finding(
                id=record.id,
                term=record.term,
                label=record.label or record.id.split(".", 1)[1],
                status=mention.status,
                temporality="historical" if mention.historical else "current",
                laterality=side,
                location=location,
                severity=severity,
                grade=grade,
                evidence=doc.text[start_char:end_char],
                start=start_char,
                end=end_char,
                source=mention.source,
                score=mention.score,
                cue=cue,
            )
            previous = last_drawn.get(doc[mention.start].sent.start)
            if (
                previous is not None and finding.status != "absent" and finding.laterality is None and not finding.location
                and self.attributes.takes_side(record)
                and (
                    not any(t.text in (",", ";", ".") for t in doc[previous[0] : mention.start])
                    # "LUL nodule ..., concerning for lung cancer": a hedged diagnosis names the lesion just described.
                    or mention.diagnosis in HEDGED_DIAGNOSIS_CUES | (STATED_DIAGNOSIS_CUES - {"impression"})
                )
                and not any(it.what == "side" and previous[0] <= it.start < mention.start for it in analysis.items)
            ):
                # "RLL consolidation concerning for pneumonia", "left atelectasis versus pneumonia".
                finding = finding.model_copy(update={"laterality": previous[1].laterality, "location": list(previous[1].location)})
            if finding.status != "absent" and (finding.laterality or finding.location):
                last_drawn[doc[mention.start].sent.start] = (mention.end, finding)
            _merge_into(merged, finding)
        return merged

    def _finding_record(self, mention: Mention, notes: list[str], doc):
        record = self.knowledge.by_id[mention.chosen]
        if record.kind != "sign":
            return record
        owners = self._sign_findings.get(record.id, [])
        if len(owners) == 1:
            return self.knowledge.by_id[owners[0]]
        notes.append(
            f"sign {doc[mention.start:mention.end].text!r} ({record.term}) "
            + (f"points to several findings ({', '.join(owners)}); not drawn as one" if owners else "belongs to no finding; ignored")
        )
        return None

    def _explained_observations(self, doc, targets: list[Mention], notes: list[str]) -> dict[int, int]:
        """Observations that a later diagnosis in the same sentence explains, not kept as findings of their own.

        "Periventricular white matter hyperintensities, consistent with demyelination": the hyperintensities
        are an appearance (the knowledge base lists them under small vessel disease), attributed here to
        demyelination, so small vessel disease is not also stated. "Dural-based mass, compatible with
        meningioma": the generic parent (brain tumour) is the meningioma, not a second finding.

        Returns:
            ``id(observation) -> id(diagnosis)`` for the mentions not to keep.
        """
        explained: dict[int, int] = {}
        for diagnosis in targets:
            if diagnosis.kind != "finding" or diagnosis.status == "absent":
                continue
            if diagnosis.diagnosis in (None, "impression"):
                continue  # any attribution counts here, plain hedges too ("WMH, likely small vessel change")
            sentence = doc[diagnosis.start].sent.start
            for observation in targets:
                if (
                    observation is diagnosis or observation.kind != "finding" or observation.status != "present"
                    or observation.start >= diagnosis.start or doc[observation.start].sent.start != sentence
                    or observation.diagnosis not in (None, "impression")
                ):
                    continue
                if _is_appearance(doc, observation) or self._is_ancestor(observation.chosen, diagnosis.chosen):
                    explained.setdefault(id(observation), id(diagnosis))
                    notes.append(
                        f"{doc[observation.start:observation.end].text!r} is explained by "
                        f"{doc[diagnosis.start:diagnosis.end].text!r} ({diagnosis.diagnosis}); not kept as a finding of its own"
                    )
        return explained

    def _is_ancestor(self, ancestor: str | None, record_id: str | None) -> bool:
        seen = set()
        parent = self._parents.get(record_id)
        while parent and parent not in seen:
            if parent == ancestor:
                return True
            seen.add(parent)
            parent = self._parents.get(parent)
        return False


def _is_appearance(doc, mention: Mention) -> bool:
    span = doc[mention.start : mention.end]
    return span.text in vocab.APPEARANCE_ABBREVIATIONS or any(t.norm_ in vocab.APPEARANCE_WORDS or t.lower_ in vocab.APPEARANCE_WORDS for t in span)


def _compatible(a: str | None, b: str | None) -> bool:
    return a is None or b is None or a == b or "bilateral" in (a, b)


def _merge_into(merged: list[Finding], finding: Finding) -> None:
    for index, existing in enumerate(merged):
        if existing.id != finding.id:
            continue
        statuses = {existing.status, finding.status}
        if existing.status != finding.status and statuses != {"present", "uncertain"}:
            continue
        if statuses == {"present", "uncertain"} and existing.status == "uncertain":
            # Seen, with a hedge about its nature elsewhere ("enlarged ventricles ... suggestive of NPH"): present.
            # The statement that asserts it keeps its cue ("IMPRESSION: pneumonia" is the conclusion).
            existing = existing.model_copy(update={"status": "present", "cue": finding.cue if finding.status == "present" else None})
            merged[index] = existing
        update = {}
        if finding.laterality and finding.laterality != existing.laterality:
            if existing.laterality is None:
                update["laterality"] = finding.laterality
            else:
                update["laterality"] = "bilateral"
        if finding.severity and (existing.severity is None or vocab.SEVERITY_RANK[finding.severity] > vocab.SEVERITY_RANK[existing.severity]):
            update["severity"] = finding.severity
        if finding.grade and not existing.grade:
            update["grade"] = finding.grade
        extra = [c for c in finding.location if all(c.id != e.id for e in existing.location)]
        if extra:
            update["location"] = [*existing.location, *extra]
        if update:
            merged[index] = existing.model_copy(update=update)
        return
    merged.append(finding)


def conflicts_among(findings: list[Finding]) -> list[str]:
    """One line per finding stated both present and absent on compatible sides."""
    conflicts = []
    for i, a in enumerate(findings):
        for b in findings[i + 1 :]:
            if a.id != b.id or {a.status, b.status} != {"present", "absent"}:
                continue
            if not _compatible(a.laterality, b.laterality):
                continue
            first, second = (a, b) if a.start <= b.start else (b, a)
            conflicts.append(
                f"{first.term}: {first.evidence!r} at {first.start} reads {first.status}, "
                f"but {second.evidence!r} at {second.start} reads {second.status}"
            )
    return conflicts


def concepts_of(knowledge: KnowledgeBase, ids) -> list[Concept]:
    """``{id, term}`` of each distinct record id in ``ids``, in order (empty ids skipped)."""
    out: list[Concept] = []
    for record_id in ids:
        if record_id and all(c.id != record_id for c in out):
            out.append(Concept(id=record_id, term=knowledge.by_id[record_id].term))
    return out
