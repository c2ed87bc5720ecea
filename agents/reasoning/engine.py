"""The :class:`Reasoner`: reads a clinical description through its stages, each in its own module:

1. :class:`~clinisynth.agents.reasoning.matching.TermMatcher`: lexicon matches -> mentions and modifiers;
2. :class:`~clinisynth.agents.reasoning.fallback.RetrievalFallback`: paraphrases the lexicon missed (with a retriever);
3. :class:`~clinisynth.agents.reasoning.context.AssertionContext`: status with medspaCy ConText;
4. :class:`~clinisynth.agents.reasoning.modality.ModalityResolver`: the modality named or inferred;
5. :class:`~clinisynth.agents.reasoning.findings.FindingAssembler` with the
   :class:`~clinisynth.agents.reasoning.attributes.AttributeResolver`: findings with side, place, severity.

Everything heavy (spaCy tokenizer, phrase matchers, ConText rules) is built once in ``__init__``;
a call parses the text once and caches the analysis, so ``localize`` then ``assess_pathology`` on
the same text does the work once.
"""

from __future__ import annotations

from collections import OrderedDict

from clinisynth.agents.reasoning.analysis import Analysis, clean_text, normalize_doc, set_sentences
from clinisynth.agents.reasoning.attributes import AttributeResolver
from clinisynth.agents.reasoning.context import AssertionContext
from clinisynth.agents.reasoning.fallback import RetrievalFallback
from clinisynth.agents.reasoning.findings import FindingAssembler, concepts_of, conflicts_among
from clinisynth.agents.reasoning.lexicon import Lexicon, load_or_build_lexicon
from clinisynth.agents.reasoning.matching import TermMatcher
from clinisynth.agents.reasoning.modality import ModalityResolver
from clinisynth.agents.reasoning.models import Localization, Pathology
from clinisynth.knowledge import KnowledgeBase

#: Cosine similarity a retrieved record needs to count. Chosen on the dev set with the retriever on:
#: 0.60 let "upper lobe predominant" become lobar collapse; 0.68 keeps recall and drops such hits.
DEFAULT_RETRIEVAL_THRESHOLD = 0.68

_CACHE_SIZE = 64

#: The token normaliser the lexicon is built with, under its former name here.
_normalize_doc = normalize_doc


class Reasoner:
    """Reads a clinical description into a :class:`Localization` and a :class:`Pathology`.

    Args:
        knowledge: the reference records; terms, synonyms and abbreviations become matchers.
        retriever: optional object with ``search(query, *, k, kinds, modality) -> list[Hit]``
            (``Hit.id``, ``Hit.score`` as cosine similarity); used only for stretches of text the
            lexicon did not resolve (paraphrases, misspellings).
        retrieval_threshold: the cosine similarity a retrieved record needs to count.
        cache_dir: where the built lexicon is cached, keyed by the knowledge and vocabulary
            (:func:`~clinisynth.agents.reasoning.lexicon.load_or_build_lexicon`); ``None`` builds it.
    """

    def __init__(
        self,
        *,
        knowledge: KnowledgeBase,
        retriever=None,
        retrieval_threshold: float = DEFAULT_RETRIEVAL_THRESHOLD,
        cache_dir=None,
    ) -> None:
        from clinisynth.agents.reasoning.cache import blank_nlp

        if not 0.0 < retrieval_threshold <= 1.0:
            raise ValueError(f"retrieval_threshold must be in (0, 1], got {retrieval_threshold}")
        self.knowledge = knowledge
        self.retriever = retriever
        self.retrieval_threshold = retrieval_threshold
        self._cache: OrderedDict[str, Analysis] = OrderedDict()
        # Start-up: the tokenizer and the lexicon's phrase matchers (the costly part, cached), then the stages.
        self.nlp = blank_nlp("en")
        self.lexicon = load_or_build_lexicon(nlp=self.nlp, knowledge=knowledge, normalize=normalize_doc, cache_dir=cache_dir)
        self.context = AssertionContext(nlp=self.nlp, knowledge=knowledge)
        self.attributes = AttributeResolver(knowledge=knowledge)
        self.findings = FindingAssembler(knowledge=knowledge, attributes=self.attributes)

    @property
    def lexicon(self) -> Lexicon:
        """The phrase matchers; setting it rebuilds the stages that read it and forgets every analysis."""
        return self._lexicon

    @lexicon.setter
    def lexicon(self, lexicon: Lexicon) -> None:
        self._lexicon = lexicon
        self.matcher = TermMatcher(knowledge=self.knowledge, lexicon=lexicon, nlp=self.nlp)
        self.fallback = None
        if self.retriever is not None:
            self.fallback = RetrievalFallback(knowledge=self.knowledge, lexicon=lexicon, retriever=self.retriever,
                                              threshold=self.retrieval_threshold)
        self.modality = ModalityResolver(knowledge=self.knowledge, organs=self.matcher.organs, fallback=self.fallback)
        self._cache.clear()

    @property
    def _retrieval_cache(self) -> OrderedDict:
        """The retrieval fallback's search cache (empty without a retriever)."""
        return self.fallback.cache if self.fallback is not None else OrderedDict()

    # ------------------------------------------------------------------ public steps

    def localize(self, text: str) -> Localization:
        """Modality, technique, anatomy and sides named in ``text``."""
        analysis = self._analyze(text)
        notes = list(analysis.notes)
        modality, unsupported = self.modality.named(analysis, notes)
        technique = concepts_of(self.knowledge, [m.chosen for m in analysis.mentions if m.kind == "technique"])
        anatomy = concepts_of(self.knowledge, [m.chosen for m in analysis.mentions if m.kind == "anatomy"])
        sides = []
        for item in analysis.items:
            if item.what == "side" and item.value not in sides:
                sides.append(item.value)
        for concept in anatomy:
            side = self.knowledge.by_id[concept.id].side
            if side and side not in sides:
                sides.append(side)
        return Localization(
            modality=modality,
            technique=technique,
            anatomy=anatomy,
            sides=sides,
            unsupported_modality=unsupported,
            notes=notes,
            references=[r for r in analysis.references if self.lexicon.kinds.get(r.id) not in ("finding", "sign", "normal")],
        )

    def assess_pathology(self, text: str, localization: Localization) -> Pathology:
        """Findings with status, side, location and severity; normal study; modality (named or inferred); conflicts."""
        analysis = self._analyze(text)
        notes: list[str] = []
        if localization.unsupported_modality and localization.modality is None:
            # Terms of our modalities read in another modality's report would be misread ("meniscus" on a knee MRI).
            notes.append(
                f"{localization.unsupported_modality!r} is not a covered modality; findings were not read. Covered: "
                + ", ".join(f"{r.term} ({r.label})" for r in self.knowledge.modalities)
            )
            return Pathology(notes=notes)
        modality, inferred = self.modality.resolve(analysis, localization.modality, notes)
        modality_id = modality.id if modality else None
        findings = self.findings.assemble(analysis, notes)
        if modality_id:
            for finding in findings:
                record = self.knowledge.by_id.get(finding.id)
                if record is not None and modality_id not in record.modalities:
                    notes.append(
                        f"{finding.term!r} is not described for {modality.term} in the knowledge base; "
                        "the generator has no reference appearance for it"
                    )
        signs = concepts_of(self.knowledge, [
            m.chosen for m in analysis.mentions
            if m.kind == "sign" and m.status != "absent" and (modality_id is None or modality_id in self.knowledge.by_id[m.chosen].modalities)
        ])
        conflicts = conflicts_among(findings)
        drawn = [f for f in findings if f.drawn and not self._is_normal(f.id)]
        findings = [f for f in findings if not self._is_normal(f.id)]
        said_normal = bool(analysis.normal_spans) or any(m.kind == "normal" for m in analysis.mentions)
        normal_study = not drawn and (said_normal or any(f.status == "absent" for f in findings))
        if said_normal and drawn:
            notes.append("the text calls part of the study normal but also states findings; treated as abnormal")
        if not findings and not said_normal:
            notes.append("no finding named in the text")
        return Pathology(
            findings=findings,
            signs=signs,
            normal_study=normal_study,
            modality=modality,
            modality_inferred=inferred,
            conflicts=conflicts,
            notes=notes,
            references=[r for r in analysis.references if self.lexicon.kinds.get(r.id) in ("finding", "sign", "normal")],
        )

    def analyze(self, text: str) -> tuple[Localization, Pathology]:
        """Both steps in a row."""
        localization = self.localize(text)
        return localization, self.assess_pathology(text, localization)

    def forget(self, text: str) -> None:
        """Drop the cached analysis of ``text`` so the next step parses it again (and its time is real)."""
        self._cache.pop(text, None)

    # ------------------------------------------------------------------ parsing

    def _analyze(self, text: str) -> Analysis:
        if not isinstance(text, str):
            raise TypeError(f"the description must be a string, got {type(text).__name__}")
        cached = self._cache.get(text)
        if cached is not None:
            self._cache.move_to_end(text)
            return cached
        analysis = self._parse(text)
        self._cache[text] = analysis
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return analysis

    def _parse(self, text: str) -> Analysis:
        doc = self.nlp.make_doc(clean_text(text))
        normalize_doc(doc)
        set_sentences(doc)
        analysis = self.matcher.match(doc)
        if self.fallback is not None:
            named, _ = self.modality.named(analysis, [])
            self.fallback.resolve(analysis, named.id if named else None)
        self.context.apply(analysis)
        return analysis

    def _is_normal(self, record_id: str) -> bool:
        return self.lexicon.kinds.get(record_id) == "normal"
