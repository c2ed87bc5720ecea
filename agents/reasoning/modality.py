"""The study's modality: named in the text, or inferred from what it describes; then, per mention, the
candidate record of that modality."""

from __future__ import annotations

from clinisynth.agents.plan import Concept
from clinisynth.agents.reasoning import vocab
from clinisynth.agents.reasoning.analysis import Analysis
from clinisynth.agents.reasoning.fallback import RetrievalFallback
from clinisynth.agents.reasoning.matching import OrganPhrases
from clinisynth.knowledge import KnowledgeBase

_INFERENCE_WEIGHTS = {"finding": 1.0, "sign": 0.8, "normal": 0.6, "technique": 0.8, "anatomy": 0.3}


class ModalityResolver:
    """Tells the modality a description is of and reads its mentions as records of that modality.

    The coverage comes from the knowledge's modality records: a study named by a family word and a
    region ("CT chest") is the record whose ``family`` and ``regions`` list both, a bare family word
    the family's ``default_for_family`` record; a family or region no record covers is unsupported,
    as are :data:`~clinisynth.agents.reasoning.vocab.UNCOVERED_FAMILIES`. A study named as a
    comparison or a recommendation ("unchanged since the abdomen CT") is not the one described.

    :meth:`named` serves the localization (what the text says); :meth:`resolve` the pathology (the
    modality inferred when none is named, and each mention's record chosen for it).

    Args:
        knowledge: the reference records.
        organs: organ-word phrases of the lexicon, to read another modality's finding as this one's.
        fallback: the retrieval fallback, to search a retrieved mention again once the modality is
            inferred; ``None`` without a retriever.
    """

    def __init__(self, *, knowledge: KnowledgeBase, organs: OrganPhrases, fallback: RetrievalFallback | None = None) -> None:
        self.knowledge = knowledge
        self.organs = organs
        self.fallback = fallback
        self._covered: dict[tuple[str, str], object] = {}
        self._family_default: dict[str, object] = {}
        for record in knowledge.modalities:
            for region in record.regions:
                self._covered.setdefault((record.family, region), record)
            if record.default_for_family:
                self._family_default.setdefault(record.family, record)
        self._region_modalities: dict[str, list[str]] = {}
        for (_, region), record in self._covered.items():
            self._region_modalities.setdefault(region, []).append(record.id)

    def named(self, analysis: Analysis, notes: list[str]) -> tuple[Concept | None, str | None]:
        """The modality the text names, as ``(concept, None)``; ``(None, words)`` when the words name a
        study no record covers; ``(None, None)`` when no study is named."""
        doc = analysis.doc
        named = []
        for mention in analysis.mentions:
            if mention.kind == "modality" and mention.chosen not in named and not _names_other_study(doc, mention.start, mention.end):
                named.append(mention.chosen)
        if named:
            if len(named) > 1:
                terms = ", ".join(self.knowledge.by_id[i].term for i in named)
                notes.append(f"the text names several modalities ({terms}); using the first, {self.knowledge.by_id[named[0]].term}")
            record = self.knowledge.by_id[named[0]]
            return Concept(id=record.id, term=record.term), None
        for start, end, family in analysis.families:
            if _names_other_study(doc, start, end, analysis.regions):
                notes.append(f"{doc[start:end].text!r} names another study (a comparison or a recommendation); "
                             "not the modality described")
                continue
            near = [
                (s, e, region) for s, e, region in analysis.regions
                if doc[start].sent.start == doc[s].sent.start and (0 <= s - end <= 3 or 0 <= start - e <= 2)
            ]
            words = doc[min([start, *(s for s, _, _ in near)]) : max([end, *(e for _, e, _ in near)])].text
            if family in vocab.UNCOVERED_FAMILIES:
                return None, words
            if near:
                for _, _, region in near:
                    record = self._covered.get((family, region))
                    if record is not None:
                        notes.append(f"{words!r} read as {record.term}")
                        return Concept(id=record.id, term=record.term), None
                return None, words
            record = self._family_default.get(family)
            if record is not None:
                notes.append(f"{doc[start:end].text!r} names no body part; read as {record.term}, the only one of its kind covered")
                return Concept(id=record.id, term=record.term), None
        return None, None

    def resolve(self, analysis: Analysis, modality: Concept | None, notes: list[str]) -> tuple[Concept | None, bool]:
        """The study's modality (``modality`` as named, else inferred) and whether it was inferred; each
        finding, sign and normal mention's ``chosen`` record is then one of that modality.

        A finding word that only names a finding of another modality ("abscess" on a brain MRI when
        only the breast record says plain "abscess") is read as the finding of this modality with the
        same head word ("brain abscess"); with none, it is dropped with a note (the generator could
        not draw it in this modality anyway).
        """
        inferred = False
        if modality is None:
            modality = self._infer(analysis, notes)
            inferred = modality is not None
        self._choose_ids(analysis, modality.id if modality else None, notes)
        return modality, inferred

    def _infer(self, analysis: Analysis, notes: list[str]) -> Concept | None:
        votes: dict[str, float] = {}
        found_in: set[str] = set()  # modalities with a finding or sign of the text
        order: dict[str, int] = {}
        evidence: dict[str, list[str]] = {}
        spanning: list[str] = []
        for mention in analysis.mentions:
            if mention.kind not in _INFERENCE_WEIGHTS:
                continue
            weight = _INFERENCE_WEIGHTS[mention.kind]
            if mention.kind in ("finding", "sign") and mention.status == "absent":
                weight *= 0.5
            modalities: list[str] = []
            for record_id in mention.ids:
                for modality_id in self.knowledge.by_id[record_id].modalities:
                    if modality_id not in modalities:
                        modalities.append(modality_id)
            if not modalities:
                continue
            if len(modalities) > 1 and mention.kind in ("finding", "sign"):
                spanning.append(analysis.doc[mention.start : mention.end].text)
            for rank, modality_id in enumerate(modalities):
                votes[modality_id] = votes.get(modality_id, 0.0) + weight / len(modalities)
                if mention.kind in ("finding", "sign"):
                    found_in.add(modality_id)
                order.setdefault(modality_id, len(order) * 10 + rank)
                evidence.setdefault(modality_id, []).append(analysis.doc[mention.start : mention.end].text)
        for _, _, region in analysis.regions:
            for modality_id in self._region_modalities.get(region, []):
                votes[modality_id] = votes.get(modality_id, 0.0) + 0.5
                order.setdefault(modality_id, len(order) * 10)
        if not votes:
            return None
        # A modality with a finding of the text beats one that only has its anatomy ("effusion ... knee pain").
        ranked = sorted(votes, key=lambda m: (m not in found_in, -votes[m], order[m]))
        best = ranked[0]
        record = self.knowledge.by_id[best]
        why = ", ".join(dict.fromkeys(evidence.get(best, []))) or "the body region named"
        notes.append(f"modality not named in the text; inferred {record.term} from {why}")
        runners = [m for m in ranked[1:] if votes[m] >= votes[best] * 0.999]
        if spanning or runners:
            others = ", ".join(self.knowledge.by_id[m].term for m in ranked[1:] if votes[m] > 0)
            notes.append(
                f"ambiguous modality: {', '.join(dict.fromkeys(spanning)) or 'the findings'} also appear in {others}; "
                f"chose {record.term}, the most specific for the findings named (name the modality to override)"
            )
        return Concept(id=record.id, term=record.term)

    def _choose_ids(self, analysis: Analysis, modality_id: str | None, notes: list[str]) -> None:
        """Pick, per mention, the candidate record of the study's modality (see :meth:`resolve`)."""
        organ_words, organ_tails = self.organs.words, self.organs.tails
        for mention in analysis.mentions:
            if mention.kind not in ("finding", "sign", "normal") or modality_id is None:
                mention.chosen = mention.ids[0]
                continue
            fitting = [i for i in mention.ids if modality_id in self.knowledge.by_id[i].modalities]
            if fitting:
                mention.chosen = fitting[0]
                continue
            text = analysis.doc[mention.start : mention.end].text
            # Retrieved before the modality was known (it was inferred): search again within it.
            if self.fallback is not None and self.fallback.search_again(mention, modality_id, text, notes):
                continue
            if mention.bare_head:
                # "metastasis" on a study whose modality has no "<organ> metastasis": nothing is meant.
                mention.kind = "dropped"
                continue
            if mention.kind == "finding":
                # Only an organ word may be added: "abscess" is the brain abscess on a brain MRI, but
                # "dry AMD" is not the OCT's "wet AMD" although both end in "AMD".
                phrase = " ".join(t.norm_ for t in analysis.doc[mention.start : mention.end])
                options = organ_tails.get((modality_id, phrase), [])
                words = phrase.split()
                if not options and len(words) > 1 and all(w in organ_words or w in vocab.PLACE_MODIFIERS for w in words[:-1]):
                    options = organ_tails.get((modality_id, words[-1]), [])  # "hilar mass" -> lung mass
                if options:
                    mention.chosen = options[0]
                    notes.append(f"{text!r} read as {self.knowledge.by_id[mention.chosen].term}, the {phrase!r} of this modality")
                    continue
            mention.kind = "dropped"
            notes.append(
                f"{text!r} names {', '.join(mention.ids)}, not described for {self.knowledge.by_id[modality_id].term}; ignored"
            )


def _names_other_study(doc, start: int, end: int, regions=()) -> bool:
    """Whether the study named at ``start:end`` (with any region word right before it) is another study
    than the one described: "unchanged since the abdomen CT", "a bone scan is recommended"."""
    for s, e, _ in regions:
        if 0 <= start - e <= 1:
            start = min(start, s)
    sentence = doc[start].sent
    before = [t.lower_ for t in doc[max(sentence.start, start - 4) : start]]
    after = [t.lower_ for t in doc[end : min(sentence.end, end + 3)]]
    return bool(set(before) & vocab.REFERENCE_STUDY_BEFORE or set(after) & vocab.REFERENCE_STUDY_AFTER)
