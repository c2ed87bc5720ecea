"""The :class:`Reasoner`: term matching, assertion status (medspaCy ConText), laterality, location,
severity, retrieval of paraphrases, modality naming / inference, conflicts.

Everything heavy (spaCy tokenizer, phrase matchers, ConText rules) is built once in ``__init__``;
a call parses the text once and caches the analysis, so ``localize`` then ``assess_pathology`` on
the same text does the work once.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field

from clinisynth.agents.plan import Concept, Finding, Reference
from clinisynth.agents.prompting import HEDGED_DIAGNOSIS_CUES, STATED_DIAGNOSIS_CUES
from clinisynth.agents.reasoning import vocab
from clinisynth.agents.reasoning.lexicon import KIND_PRIORITY, Lexicon
from clinisynth.agents.reasoning.models import Localization, Pathology
from clinisynth.knowledge import KnowledgeBase

#: Cosine similarity a retrieved record needs to count. Chosen on the dev set with the retriever on:
#: 0.60 let "upper lobe predominant" become lobar collapse; 0.68 keeps recall and drops such hits.
DEFAULT_RETRIEVAL_THRESHOLD = 0.68

_SENTENCE_END = {".", "!", ";", "。"}
_CLAUSE_BREAK = {",", ";", ":", "(", ")", "[", "]", "and", "but", "or", "with", "without", "plus", "also", "nor", "versus", "vs", "vs.", "/", "-", "--", "while", "whereas", "however", "although"}
_CHUNK_BREAK = {",", ";", "and", "but", "with", "while", "whereas", "plus", "also", "however", "although", "&", "as"}
_PREPOSITIONS = {"in", "at", "within", "of", "involving", "on", "over", "into", "along", "near", "affecting", "from", "throughout", "posterior", "inferior", "superior"}
_MAX_RETRIEVAL_QUERIES = 6
#: How far below the threshold the query without its anatomy words may score for the same record.
_CONTENT_MARGIN = 0.1
#: After a comma these words open a new positive statement ("no evidence of malignancy, benign nevus").
_LIST_RESTART = vocab.RESTART_WORDS | {"benign", "consistent", "compatible", "probable", "likely", "but"}
_CACHE_SIZE = 64


@dataclass
class _Mention:
    """A span of the text resolved to one or more candidate records."""

    start: int
    end: int
    kind: str
    ids: list[str]
    source: str = "lexicon"
    score: float | None = None
    status: str = "present"
    cue: str | None = None
    chosen: str | None = None
    query: str | None = None  # the retrieval query, to search again once the modality is known
    diagnosis: str | None = None  # the phrase stating it as the conclusion ("consistent with", "impression")
    bare_head: bool = False  # a bare head word ("metastasis") standing for "<organ> <head>" records
    historical: bool = False  # old, healed or past disease ("healed rib fracture", "history of ...")


@dataclass
class _Item:
    """A modifier token span: a side, a severity, a grade or an anatomy mention."""

    start: int
    end: int
    what: str  # side | severity | grade | anatomy | rsev
    value: str
    extra: str | None = None


@dataclass
class _Analysis:
    text: str
    doc: object
    mentions: list[_Mention]
    items: list[_Item]
    families: list[tuple[int, int, str]]
    regions: list[tuple[int, int, str]]
    normal_spans: list[tuple[int, int]]
    references: list[Reference] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Reasoner:
    """Reads a clinical description into a :class:`Localization` and a :class:`Pathology`.

    Args:
        knowledge: the reference records; terms, synonyms and abbreviations become matchers.
        retriever: optional object with ``search(query, *, k, kinds, modality) -> list[Hit]``
            (``Hit.id``, ``Hit.score`` as cosine similarity); used only for stretches of text the
            lexicon did not resolve (paraphrases, misspellings).
        retrieval_threshold: the cosine similarity a retrieved record needs to count.
    """

    def __init__(self, *, knowledge: KnowledgeBase, retriever=None, retrieval_threshold: float = DEFAULT_RETRIEVAL_THRESHOLD) -> None:
        import spacy
        from medspacy.context import ConText, ConTextRule

        if not 0.0 < retrieval_threshold <= 1.0:
            raise ValueError(f"retrieval_threshold must be in (0, 1], got {retrieval_threshold}")
        self.knowledge = knowledge
        self.retriever = retriever
        self.retrieval_threshold = retrieval_threshold
        self.nlp = spacy.blank("en")
        self.lexicon = Lexicon.build(nlp=self.nlp, knowledge=knowledge, normalize=_normalize_doc)
        # A cue inside another finding's words modifies that finding only ("old granulomatous disease and ...").
        self.context = ConText(self.nlp, rules=None, span_attrs=None, phrase_matcher_attr="LOWER", prune_on_target_overlap=True)
        self.context.add(_context_rules(ConTextRule))
        # Findings without an explicit flag still take a side when no record uses the flag at all.
        self._any_lateralized = any(r.lateralized for r in knowledge.records if r.kind == "finding")
        self._sign_findings: dict[str, list[str]] = {}
        for record in knowledge.records:
            if record.kind == "finding":
                for sign_id in record.signs:
                    self._sign_findings.setdefault(sign_id, []).append(record.id)
        self._modality_by_label = {r.label: r for r in knowledge.modalities}
        self._anatomy_sides = {r.id: r.side for r in knowledge.records if r.kind == "anatomy" and r.side}
        # Bare head word -> findings named "<organ> <head>" ("metastasis" -> brain / pulmonary metastasis),
        # matched on otherwise unresolved words; the study's modality (named or inferred) picks one.
        organ_words = self._organ_words = {vocab.normalize_word(w) for w in vocab.ORGAN_WORDS}
        self._organ_heads: dict[str, list[str]] = {}
        self._organ_tails: dict[tuple[str, str], list[str]] = {}
        for phrase, ids in sorted(self.lexicon.phrase_ids.items()):
            words = phrase.split()
            findings = [i for i in sorted(ids) if knowledge.by_id[i].kind == "finding" and not knowledge.by_id[i].normal]
            # Every tail left after leading organ words ("intracranial metastatic disease" -> "metastatic
            # disease"), per modality: what a mention naming another modality's finding means here.
            for cut in range(1, len(words)):
                if words[cut - 1] not in organ_words:
                    break
                for record_id in findings:
                    for modality_id in self.knowledge.by_id[record_id].modalities:
                        bucket = self._organ_tails.setdefault((modality_id, " ".join(words[cut:])), [])
                        if record_id not in bucket:
                            bucket.append(record_id)
            if len(words) == 2 and words[0] in organ_words and words[1] not in organ_words:
                for record_id in findings:
                    if record_id not in self._organ_heads.get(words[1], []):
                        self._organ_heads.setdefault(words[1], []).append(record_id)
        self._parents = {r.id: r.parent for r in knowledge.records if r.parent}
        self._enlargement = {a: r.id for r in knowledge.records for a in r.enlargement_of}
        self._cache: OrderedDict[str, _Analysis] = OrderedDict()
        self._retrieval_cache: OrderedDict[tuple, list] = OrderedDict()

    # ------------------------------------------------------------------ public steps

    def localize(self, text: str) -> Localization:
        """Modality, technique, anatomy and sides named in ``text``."""
        analysis = self._analyze(text)
        notes = list(analysis.notes)
        modality, unsupported = self._named_modality(analysis, notes)
        technique = _concepts(self.knowledge, [m.chosen for m in analysis.mentions if m.kind == "technique"])
        anatomy = _concepts(self.knowledge, [m.chosen for m in analysis.mentions if m.kind == "anatomy"])
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
        modality = localization.modality
        inferred = False
        if modality is None and not localization.unsupported_modality:
            modality = self._infer_modality(analysis, notes)
            inferred = modality is not None
        modality_id = modality.id if modality else None
        self._choose_ids(analysis, modality_id, notes)
        findings = self._findings(analysis, notes)
        if modality_id:
            for finding in findings:
                record = self.knowledge.by_id.get(finding.id)
                if record is not None and modality_id not in record.modalities:
                    notes.append(
                        f"{finding.term!r} is not described for {modality.term} in the knowledge base; "
                        "the generator has no reference appearance for it"
                    )
        signs = _concepts(self.knowledge, [
            m.chosen for m in analysis.mentions
            if m.kind == "sign" and m.status != "absent" and (modality_id is None or modality_id in self.knowledge.by_id[m.chosen].modalities)
        ])
        conflicts = _conflicts(findings)
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

    def _analyze(self, text: str) -> _Analysis:
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

    def _parse(self, text: str) -> _Analysis:
        clean = _clean(text)
        doc = self.nlp.make_doc(clean)
        _normalize_doc(doc)
        _set_sentences(doc)
        mentions, items, families, regions, normal_spans = self._match(doc)
        analysis = _Analysis(text=clean, doc=doc, mentions=mentions, items=items, families=families, regions=regions, normal_spans=normal_spans)
        if self.retriever is not None:
            self._retrieve(analysis)
        self._assert(analysis)
        _mark_diagnoses(doc, analysis.mentions)
        return analysis

    def _match(self, doc):
        by_span: dict[tuple[int, int], set[str]] = {}
        items: list[_Item] = []
        families, regions, normal_spans = [], [], []
        matches = [*self.lexicon.norm_matcher(doc), *self.lexicon.orth_matcher(doc)]
        for match_id, start, end in matches:
            key = self.nlp.vocab.strings[match_id]
            tag, _, value = key.partition("|")
            if tag == "REC":
                by_span.setdefault((start, end), set()).add(value)
            elif tag == "SIDE":
                items.append(_Item(start, end, "side", value))
            elif tag == "SEV":
                if end < len(doc) and (doc[end - 1].norm_, doc[end].norm_) in vocab.SIZE_WORD_COMPOUNDS:
                    continue  # "small vessel disease" is not small
                items.append(_Item(start, end, "severity", value))
            elif tag == "RSEV":
                record_id, level, word = value.split("|", 2)
                if word.lower() in vocab.DISTRIBUTION_WORDS and record_id not in vocab.DISTRIBUTION_GRADES:
                    continue  # "patchy opacity": a distribution, not a severity
                items.append(_Item(start, end, "rsev", level, extra=f"{record_id}|{word}"))
            elif tag == "FAM":
                families.append((start, end, value))
            elif tag == "REG":
                regions.append((start, end, value))
            elif tag == "NORMAL":
                normal_spans.append((start, end))
        for match in vocab.GRADE_RE.finditer(doc.text):
            span = doc.char_span(match.start(), match.end(), alignment_mode="expand")
            if span is not None:
                items.append(_Item(span.start, span.end, "grade", match.group(2).lower(), extra=match.group(0)))

        # Longest match wins; on equal spans the kind priority decides.
        candidates = []
        for (start, end), ids in by_span.items():
            kinds = {self.lexicon.kinds[i] for i in ids}
            kind = next(k for k in KIND_PRIORITY if k in kinds)
            candidates.append(_Mention(start, end, kind, sorted(i for i in ids if self.lexicon.kinds[i] == kind)))
        candidates.sort(key=lambda m: (-(m.end - m.start), KIND_PRIORITY.index(m.kind), m.start))
        taken = [False] * len(doc)
        mentions = []
        for mention in candidates:
            if any(taken[mention.start : mention.end]):
                continue
            for i in range(mention.start, mention.end):
                taken[i] = True
            mentions.append(mention)
        for token in doc:
            if not taken[token.i] and token.is_alpha and token.norm_ in self._organ_heads and token.norm_ not in vocab.GENERIC_HEADS:
                mentions.append(_Mention(token.i, token.i + 1, "finding", list(self._organ_heads[token.norm_]), bare_head=True))
                taken[token.i] = True
        mentions.sort(key=lambda m: m.start)
        for mention in mentions:
            mention.chosen = mention.ids[0]
        for mention, item in _size_statements(doc, mentions, taken, self._enlargement):
            mentions.append(mention)
            # "large" in "the heart is large" says that it is enlarged, not how much.
            items = [it for it in items if not (it.what == "severity" and mention.start <= it.start < mention.end)]
            if item is not None:
                items.append(item)
        mentions.sort(key=lambda m: m.start)
        for mention in mentions:
            if mention.kind == "anatomy":
                items.append(_Item(mention.start, mention.end, "anatomy", mention.ids[0]))
        # Side and severity words inside an anatomy or modality span belong to it ("right lower lobe").
        covered = {i for m in mentions if m.kind in ("anatomy", "modality", "technique") for i in range(m.start, m.end)}
        items = [it for it in items if it.what in ("anatomy", "rsev") or not (set(range(it.start, it.end)) & covered)]
        items = _prefer_longest_items(items)
        families = [f for f in families if not (set(range(f[0], f[1])) & covered)]
        return mentions, items, families, regions, normal_spans

    # ------------------------------------------------------------------ retrieval

    def _retrieve(self, analysis: _Analysis) -> None:
        doc = analysis.doc
        resolved = {i for m in analysis.mentions if m.kind in ("finding", "sign", "normal", "modality", "technique") for i in range(m.start, m.end)}
        normal = {i for s, e in analysis.normal_spans for i in range(s, e)}
        anatomy = {i for m in analysis.mentions if m.kind == "anatomy" for i in range(m.start, m.end)}
        modifier = {i for it in analysis.items if it.what != "anatomy" for i in range(it.start, it.end)}
        modifier |= {i for s, e, _ in analysis.families for i in range(s, e)} | {i for s, e, _ in analysis.regions for i in range(s, e)}
        queries = 0
        # Search within the modality the text names, so "enlarged ventricles" on a brain MRI cannot
        # come back as a cardiac finding.
        named, _ = self._named_modality(analysis, [])
        modality_id = named.id if named else None
        for clause in _clauses(doc):
            if any(i in resolved or i in normal for i in clause):
                continue
            content = [
                i for i in clause
                if i not in anatomy and i not in modifier and _is_content(doc[i])
            ]
            if not content or sum(len(doc[i].text) for i in content) < 5:
                continue
            span_tokens = [i for i in clause if i in anatomy or i in content]
            start, end = span_tokens[0], span_tokens[-1] + 1
            if queries >= _MAX_RETRIEVAL_QUERIES:
                analysis.notes.append(f"retrieval skipped for {doc[start:end].text!r}: more than {_MAX_RETRIEVAL_QUERIES} unresolved phrases")
                continue
            queries += 1
            query = self._expand(doc[start:end])
            hits = self._search(query, modality_id)
            best = next((h for h in hits if h.id in self.knowledge.by_id), None)
            if best is None or best.score < self.retrieval_threshold:
                if best is not None:
                    analysis.notes.append(
                        f"{query!r} not resolved: best retrieved record {best.id} scored {best.score:.2f}, "
                        f"below the threshold {self.retrieval_threshold}"
                    )
                continue
            record = self.knowledge.by_id[best.id]
            content_query = self._expand_tokens([doc[i] for i in content])
            if content_query != query and not self._carried_by_content(best.id, content_query, modality_id):
                analysis.notes.append(
                    f"{query!r} not resolved: {record.term!r} (score {best.score:.2f}) comes from the anatomy named, "
                    f"not from {content_query!r}"
                )
                continue
            analysis.references.append(Reference(id=record.id, term=record.term, score=round(float(best.score), 4), query=query))
            kind = self.lexicon.kinds[record.id]
            if kind not in ("finding", "sign", "normal"):
                continue
            analysis.mentions.append(
                _Mention(start, end, kind, [record.id], source="retrieval", score=round(float(best.score), 4), chosen=record.id, query=query)
            )
            analysis.notes.append(f"{doc[start:end].text!r} resolved by retrieval to {record.term!r} (score {best.score:.2f})")
        analysis.mentions.sort(key=lambda m: m.start)

    def _expand(self, span) -> str:
        """Abbreviations to their terms before embedding (MiniLM confuses LLL with RUL)."""
        return self._expand_tokens(list(span))

    def _expand_tokens(self, tokens) -> str:
        parts = []
        for token in tokens:
            expansion = self.lexicon.expansions.get(token.text) or self.lexicon.expansions.get(token.text.rstrip("s"))
            parts.append((expansion or token.text) + " ")
        return "".join(parts).strip()

    def _carried_by_content(self, record_id: str, content_query: str, modality_id: str | None) -> bool:
        """Whether the words that are not anatomy still point at ``record_id``: "configuration of the cardiac
        silhouette" embeds close to cardiomegaly through "cardiac silhouette" alone."""
        hits = self._search(content_query, modality_id)
        return any(h.id == record_id and h.score >= self.retrieval_threshold - _CONTENT_MARGIN for h in hits)

    def _search(self, query: str, modality_id: str | None) -> list:
        key = (query.lower(), modality_id)
        if key in self._retrieval_cache:
            self._retrieval_cache.move_to_end(key)
            return self._retrieval_cache[key]
        hits = list(self.retriever.search(query, k=3, kinds={"finding", "sign"}, modality=modality_id))
        self._retrieval_cache[key] = hits
        if len(self._retrieval_cache) > 512:
            self._retrieval_cache.popitem(last=False)
        return hits

    # ------------------------------------------------------------------ assertion status

    def _assert(self, analysis: _Analysis) -> None:
        from spacy.tokens import Span

        doc = analysis.doc
        targets = [m for m in analysis.mentions if m.kind in ("finding", "sign")]
        spans = [Span(doc, m.start, m.end, label=m.kind.upper()) for m in targets]
        doc.ents = spans
        self.context(doc)
        finding_spans = [(m.start, m.end) for m in targets]
        for mention, span in zip(targets, doc.ents):
            categories = {}
            for modifier in span._.modifiers:
                m_start, m_end = modifier.modifier_span
                if modifier.direction.upper() in ("FORWARD", "BIDIRECTIONAL") and m_end <= mention.start:
                    if _scope_restarted(doc, m_end, mention.start, finding_spans):
                        continue
                    if _list_item_cue(doc, m_start, m_end, mention.start, modifier.category):
                        continue
                categories.setdefault(modifier.category.upper(), doc[m_start:m_end].text)
            if "NEGATED_EXISTENCE" in categories or "RESOLVED" in categories:
                mention.status = "absent"
                mention.cue = categories.get("NEGATED_EXISTENCE") or categories.get("RESOLVED")
            elif "POSSIBLE_EXISTENCE" in categories or "HYPOTHETICAL" in categories:
                mention.status = "uncertain"
                mention.cue = categories.get("POSSIBLE_EXISTENCE") or categories.get("HYPOTHETICAL")
            elif "PROBABLE_EXISTENCE" in categories:
                mention.cue = categories["PROBABLE_EXISTENCE"]
            if "HISTORICAL" in categories and mention.status != "absent" and not self._post_procedural(mention):
                mention.historical = True
                mention.cue = mention.cue or categories["HISTORICAL"]

    def _post_procedural(self, mention: _Mention) -> bool:
        return any(self.knowledge.by_id[i].post_procedural for i in mention.ids)

    # ------------------------------------------------------------------ modality

    def _named_modality(self, analysis: _Analysis, notes: list[str]) -> tuple[Concept | None, str | None]:
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
                    label = vocab.COVERED.get((family, region))
                    if label and label in self._modality_by_label:
                        record = self._modality_by_label[label]
                        notes.append(f"{words!r} read as {record.term}")
                        return Concept(id=record.id, term=record.term), None
                return None, words
            label = vocab.FAMILY_DEFAULT.get(family)
            if label and label in self._modality_by_label:
                record = self._modality_by_label[label]
                notes.append(f"{doc[start:end].text!r} names no body part; read as {record.term}, the only one of its kind covered")
                return Concept(id=record.id, term=record.term), None
        return None, None

    def _infer_modality(self, analysis: _Analysis, notes: list[str]) -> Concept | None:
        votes: dict[str, float] = {}
        order: dict[str, int] = {}
        evidence: dict[str, list[str]] = {}
        spanning: list[str] = []
        for mention in analysis.mentions:
            if mention.kind not in ("finding", "sign", "normal", "technique", "anatomy"):
                continue
            weight = {"finding": 1.0, "sign": 0.8, "normal": 0.6, "technique": 0.8, "anatomy": 0.3}[mention.kind]
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
                order.setdefault(modality_id, len(order) * 10 + rank)
                evidence.setdefault(modality_id, []).append(analysis.doc[mention.start : mention.end].text)
        for _, _, region in analysis.regions:
            for label in [lab for (fam, reg), lab in vocab.COVERED.items() if reg == region]:
                if label in self._modality_by_label:
                    modality_id = self._modality_by_label[label].id
                    votes[modality_id] = votes.get(modality_id, 0.0) + 0.5
                    order.setdefault(modality_id, len(order) * 10)
        if not votes:
            return None
        ranked = sorted(votes, key=lambda m: (-votes[m], order[m]))
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

    def _choose_ids(self, analysis: _Analysis, modality_id: str | None, notes: list[str]) -> None:
        """Pick, per mention, the candidate record of the study's modality.

        A finding word that only names a finding of another modality ("abscess" on a brain MRI when
        only the breast record says plain "abscess") is read as the finding of this modality with the
        same head word ("brain abscess"); with none, it is dropped with a note (the generator could
        not draw it in this modality anyway).
        """
        for mention in analysis.mentions:
            if mention.kind not in ("finding", "sign", "normal") or modality_id is None:
                mention.chosen = mention.ids[0]
                continue
            fitting = [i for i in mention.ids if modality_id in self.knowledge.by_id[i].modalities]
            if fitting:
                mention.chosen = fitting[0]
                continue
            text = analysis.doc[mention.start : mention.end].text
            if mention.source == "retrieval" and mention.query and self.retriever is not None:
                # Retrieved before the modality was known (it was inferred): search again within it.
                hits = self._search(mention.query, modality_id)
                best = next((h for h in hits if h.id in self.knowledge.by_id), None)
                if best is not None and best.score >= self.retrieval_threshold and self.lexicon.kinds.get(best.id) == mention.kind:
                    mention.ids, mention.chosen, mention.score = [best.id], best.id, round(float(best.score), 4)
                    notes.append(f"{text!r} searched again within {self.knowledge.by_id[modality_id].term}: "
                                 f"{self.knowledge.by_id[best.id].term!r} (score {best.score:.2f})")
                    continue
            if mention.bare_head:
                # "metastasis" on a study whose modality has no "<organ> metastasis": nothing is meant.
                mention.kind = "dropped"
                continue
            if mention.kind == "finding":
                # Only an organ word may be added: "abscess" is the brain abscess on a brain MRI, but
                # "dry AMD" is not the OCT's "wet AMD" although both end in "AMD".
                phrase = " ".join(t.norm_ for t in analysis.doc[mention.start : mention.end])
                options = self._organ_tails.get((modality_id, phrase), [])
                words = phrase.split()
                if not options and len(words) > 1 and all(w in self._organ_words or w in vocab.PLACE_MODIFIERS for w in words[:-1]):
                    options = self._organ_tails.get((modality_id, words[-1]), [])  # "hilar mass" -> lung mass
                if options:
                    mention.chosen = options[0]
                    notes.append(f"{text!r} read as {self.knowledge.by_id[mention.chosen].term}, the {phrase!r} of this modality")
                    continue
            mention.kind = "dropped"
            notes.append(
                f"{text!r} names {', '.join(mention.ids)}, not described for {self.knowledge.by_id[modality_id].term}; ignored"
            )

    # ------------------------------------------------------------------ findings

    def _is_normal(self, record_id: str) -> bool:
        return self.lexicon.kinds.get(record_id) == "normal"

    def _finding_record(self, mention: _Mention, notes: list[str], doc):
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

    def _findings(self, analysis: _Analysis, notes: list[str]) -> list[Finding]:
        doc = analysis.doc
        targets = [m for m in analysis.mentions if m.kind in ("finding", "sign", "normal")]
        records = {}
        for mention in targets:
            record = self._finding_record(mention, notes, doc) if mention.kind != "normal" else self.knowledge.by_id[mention.chosen]
            if record is not None:
                records[id(mention)] = record
        targets = [m for m in targets if id(m) in records]
        explained = self._explained_observations(doc, targets, notes)
        attributes = _attribute(doc, targets, analysis.items)
        by_id = {id(m): m for m in targets}
        for observation_id, diagnosis_id in explained.items():
            # The diagnosis names the lesion just described: it takes the side and place said of it.
            own = {it.what for it in attributes.get(diagnosis_id, [])}
            moved = [it for it in attributes.get(observation_id, []) if it.what in ("side", "anatomy") and it.what not in own]
            if moved and by_id[diagnosis_id].status != "absent":
                attributes.setdefault(diagnosis_id, []).extend(moved)
        study_side = _study_side(doc, analysis, self._anatomy_sides)
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
            attached = attributes.get(id(mention), [])
            side, location, severity, grade = self._resolve_attributes(record, mention, attached, doc)
            if side is None and study_side and (record.lateralized or not self._any_lateralized) and not record.normal:
                if mention.status != "absent":
                    side = study_side
            if mention.status == "absent":
                severity, grade = None, None  # "no large effusion" denies the finding, whatever its size
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
                and (record.lateralized or not self._any_lateralized)
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

    def _explained_observations(self, doc, targets: list[_Mention], notes: list[str]) -> dict[int, int]:
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
                if self._is_appearance(doc, observation) or self._is_ancestor(observation.chosen, diagnosis.chosen):
                    explained.setdefault(id(observation), id(diagnosis))
                    notes.append(
                        f"{doc[observation.start:observation.end].text!r} is explained by "
                        f"{doc[diagnosis.start:diagnosis.end].text!r} ({diagnosis.diagnosis}); not kept as a finding of its own"
                    )
        return explained

    @staticmethod
    def _is_appearance(doc, mention: _Mention) -> bool:
        span = doc[mention.start : mention.end]
        return span.text in vocab.APPEARANCE_ABBREVIATIONS or any(t.norm_ in vocab.APPEARANCE_WORDS or t.lower_ in vocab.APPEARANCE_WORDS for t in span)

    def _is_ancestor(self, ancestor: str | None, record_id: str | None) -> bool:
        seen = set()
        parent = self._parents.get(record_id)
        while parent and parent not in seen:
            if parent == ancestor:
                return True
            seen.add(parent)
            parent = self._parents.get(parent)
        return False

    def _resolve_attributes(self, record, mention: _Mention, attached: list[_Item], doc):
        sides: set[str] = set()
        location: list[Concept] = []
        levels: list[str] = []
        implied: list[str] = []
        grade = None
        for item in attached:
            if item.what == "side":
                sides.add(item.value)
            elif item.what == "anatomy":
                anatomy = self.knowledge.by_id[item.value]
                if all(c.id != anatomy.id for c in location):
                    location.append(Concept(id=anatomy.id, term=anatomy.term))
                if anatomy.side:
                    sides.add(anatomy.side)
            elif item.what == "severity":
                levels.append(item.value)
            elif item.what == "grade":
                levels.append(vocab.GRADE_SEVERITY[item.value])
                grade = item.extra.lower()
            elif item.what == "rsev":
                record_id, word = item.extra.split("|", 1)
                if record_id == record.id:
                    implied.append(item.value)
                    if word.lower() not in vocab.SEVERITY_WORDS:
                        grade = word
        lateralized = record.lateralized or not self._any_lateralized
        side = None
        if sides and lateralized:
            side = "bilateral" if "bilateral" in sides or {"left", "right"} <= sides else sides.pop()
        # Severity only where the record has a scale: "early SCC" or "large glioblastoma" are not grades.
        # An explicit size word ("mild interstitial oedema") wins over the grade a record phrase implies.
        levels = levels or implied
        graded = bool(record.severity) and record.kind == "finding" and not record.normal
        severity = max(levels, key=lambda level: vocab.SEVERITY_RANK[level]) if levels and graded else None
        return side, location, severity, grade


# ---------------------------------------------------------------------- helpers


def _context_rules(ConTextRule) -> list:
    import json
    from pathlib import Path

    import medspacy

    path = Path(medspacy.__file__).resolve().parent.parent / "resources" / "en" / "context_rules.json"
    rules = []
    if path.is_file():
        raw = json.loads(path.read_text(encoding="utf-8"))["context_rules"]
        for item in raw:
            if item["literal"].lower() in vocab.DROPPED_DEFAULT_LITERALS:
                continue
            rules.append(ConTextRule.from_dict(item))
    seen = {(r.literal.lower(), r.category.upper(), r.direction.upper()) for r in rules}
    for literal, category, direction in vocab.EXTRA_CONTEXT_RULES:
        if (literal, category, direction) not in seen:
            seen.add((literal, category, direction))
            rules.append(ConTextRule(literal=literal, category=category, direction=direction,
                                     max_scope=vocab.SHORT_SCOPE_CUES.get(literal),
                                     max_targets=1 if literal in vocab.SINGLE_TARGET_CUES else None))
    return rules


def _clean(text: str) -> str:
    """Control characters become spaces; the length is kept so that offsets point into the input."""
    return "".join(ch if (ch.isprintable() or ch in "\n\t") else " " for ch in text)


def _normalize_doc(doc) -> None:
    for token in doc:
        token.norm_ = vocab.normalize_word(token.text)


def _set_sentences(doc) -> None:
    for i, token in enumerate(doc):
        if i == 0:
            token.is_sent_start = True
            continue
        previous = doc[i - 1]
        token.is_sent_start = bool(
            previous.text in _SENTENCE_END or "\n" in previous.text or "\n" in previous.whitespace_ or (previous.is_space and "\n" in previous.text)
        )


def _clauses(doc):
    clause: list[int] = []
    for token in doc:
        if token.is_sent_start and clause:
            yield clause
            clause = []
        if token.lower_ in _CLAUSE_BREAK or token.is_punct or token.is_space:
            if clause:
                yield clause
            clause = []
            continue
        clause.append(token.i)
    if clause:
        yield clause


_STOP = None


def _is_content(token) -> bool:
    global _STOP
    if _STOP is None:
        from spacy.lang.en.stop_words import STOP_WORDS

        _STOP = STOP_WORDS
    word = token.lower_
    return (
        token.is_alpha and len(word) >= 3 and word not in _STOP and word not in vocab.NON_IMAGING_WORDS
        and word not in vocab.SIDE_WORDS and word not in vocab.SEVERITY_WORDS and re.search(r"[aeiouy]", word) is not None
        # How a finding is spread or sized is not the finding ("patchy", "increased peripheral").
        and word not in vocab.DISTRIBUTION_WORDS and word not in vocab.ENLARGEMENT_WORDS
    )


def _prefer_longest_items(items: list[_Item]) -> list[_Item]:
    """Overlapping modifier items of one type keep the longest ("right and left" over "right")."""
    items = sorted(items, key=lambda it: (-(it.end - it.start), it.start))
    kept: list[_Item] = []
    for item in items:
        group = "anatomy" if item.what == "anatomy" else ("side" if item.what == "side" else "sev")
        clash = any(
            ("anatomy" if k.what == "anatomy" else ("side" if k.what == "side" else "sev")) == group
            and k.start < item.end and item.start < k.end and not (item.what == "rsev" or k.what == "rsev")
            for k in kept
        )
        if not clash:
            kept.append(item)
    return sorted(kept, key=lambda it: it.start)


def _scope_restarted(doc, cue_end: int, target_start: int, finding_spans) -> bool:
    """A forward cue stops at a new positive statement after an earlier finding ("no A, large B").

    A size or side word inside a denied list is not a new statement: when the list goes on to an
    "or" / "nor" / "/" after that word ("no consolidation, large effusion, or pneumothorax"), the
    cue covers every item, and two items set side by side with no separator ("no pneumothorax
    large effusion") are one list too.
    """
    sentence_end = doc[target_start].sent.end

    def list_continues(after: int) -> bool:
        return any(t.lower_ in ("or", "nor", "/") or t.text == "/" for t in doc[after:sentence_end])

    window = doc[cue_end:target_start]
    for token in window:
        if token.text in (",", ";") and token.i + 1 < len(doc) and doc[token.i + 1].lower_ in _LIST_RESTART:
            if token.text == "," and list_continues(token.i + 2):
                continue
            return True
    for start, end in finding_spans:
        if cue_end <= start and end <= target_start:
            window = [t.lower_ for t in doc[end:target_start]]
            if any(w in ("or", "nor", "/") for w in window):
                continue
            if all(w in vocab.RESTART_WORDS for w in window):
                continue  # "no pneumothorax large effusion": items set side by side, one list
            restart = next((i for i, w in enumerate(window) if w in vocab.RESTART_WORDS), None)
            if restart is not None and not ("," in window[:restart] and list_continues(end + restart + 1)):
                return True
    return False


def _study_side(doc, analysis: _Analysis, anatomy_sides: dict[str, str]) -> str | None:
    """The side of the whole study: an eye (OD, OS, "left eye") or a side in the header before the
    first colon ("OCT OS:", "Right breast US:"); it applies to findings that state no side."""
    sides = set()
    header_end = next((t.i for t in doc if t.text == ":"), None)
    for item in analysis.items:
        if item.what != "side":
            continue
        words = doc[item.start : item.end].text
        if "eye" in words.lower() or words in ("OD", "OS", "OU") or (header_end is not None and item.end <= header_end):
            sides.add(item.value)
    for mention in analysis.mentions:
        in_header = header_end is not None and mention.end <= header_end
        if mention.kind == "anatomy" and (in_header or "eye" in doc[mention.start : mention.end].text.lower()):
            side = anatomy_sides.get(mention.chosen)
            if side:
                sides.add(side)
    if not sides:
        return None
    return "bilateral" if "bilateral" in sides or {"left", "right"} <= sides else sides.pop()


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


_SIZE_WINDOW = 6


def _size_statements(doc, mentions: list[_Mention], taken: list[bool], enlargement: dict[str, str]):
    """Findings stated as a structure's size: "the heart is large", "borderline heart size", "heart size
    upper limits of normal". The size word (not the structure) becomes the finding's mention, so that
    "the heart is not enlarged" is denied by its own cue; borderline sizes are mild.

    Yields:
        ``(mention, severity item or None)`` for each statement.
    """
    anatomy = [m for m in mentions if m.kind == "anatomy" and m.chosen in enlargement]
    for subject in anatomy:
        sentence = doc[subject.start].sent
        candidates = [*range(subject.end, min(subject.end + _SIZE_WINDOW, sentence.end)),
                      *range(max(subject.start - 3, sentence.start), subject.start)]
        for i in candidates:
            if taken[i]:
                continue
            words = tuple(t.lower_ for t in doc[i : i + 4])
            borderline = next((p for p in vocab.BORDERLINE_PHRASES if words[: len(p)] == p), None)
            if borderline is None and doc[i].lower_ not in vocab.ENLARGEMENT_WORDS:
                continue
            low, high = sorted((i, subject.start))
            between = doc[min(i, subject.end) : max(i, subject.start)]
            # The statement must be about this structure: no clause break or other finding in between.
            if any(t.text in (",", ";", ":") or t.lower_ in ("and", "but", "with", "without") for t in between):
                continue
            if any(taken[j] and not (subject.start <= j < subject.end) for j in range(low, high)):
                continue
            end = i + (len(borderline) if borderline else 1)
            for j in range(i, end):
                taken[j] = True
            finding_id = enlargement[subject.chosen]
            item = _Item(i, end, "severity", "mild") if borderline else None
            yield _Mention(i, end, "finding", [finding_id], chosen=finding_id), item
            break


def _list_item_cue(doc, cue_start: int, cue_end: int, target_start: int, category: str) -> bool:
    """In "no A, no B, C" each cue covers its own list item only, so C is not negated."""
    if cue_start == 0 or doc[cue_start - 1].text not in (",", ";"):
        return False
    if not any(t.text in (",", ";") for t in doc[cue_end:target_start]):
        return False
    sentence_start = doc[cue_start].sent.start
    earlier = {t.lower_ for t in doc[sentence_start : cue_start - 1]}
    cue_words = {t.lower_ for t in doc[cue_start:cue_end]}
    return bool(cue_words & earlier)


def _attribute(doc, targets: list[_Mention], items: list[_Item]) -> dict[int, list[_Item]]:
    """Give each side / severity / grade / anatomy item to one finding in its sentence.

    Within a chunk (a sentence cut at commas and conjunctions) an item before a finding modifies
    the next finding ("large right effusion"), an item after the last finding or introduced by a
    preposition modifies the previous one ("consolidation in the RLL", "effusion is small"). A chunk
    without a finding after a comma hands its items to the finding before ("effusion, right-sided").
    """
    chunk_of = [0] * len(doc)
    sent_of = [0] * len(doc)
    chunk = 0
    sentence = 0
    for token in doc:
        if token.is_sent_start and token.i:
            chunk += 1
            sentence += 1
        elif token.lower_ in _CHUNK_BREAK and not _inside_item(token.i, items):
            # "consistent with X" continues the statement about X.
            if not (token.lower_ == "with" and token.i and doc[token.i - 1].lower_ in ("consistent", "compatible", "c")):
                chunk += 1
        chunk_of[token.i] = chunk
        sent_of[token.i] = sentence
    assigned: dict[int, list[_Item]] = {}
    unassigned: list[_Item] = []
    for item in items:
        if item.what == "rsev":
            # A record's own severity phrase goes to the nearest mention of that record in the sentence.
            record_id = item.extra.split("|", 1)[0]
            same = [
                m for m in targets
                if m.chosen == record_id and sent_of[m.start] == sent_of[item.start]
                and (chunk_of[m.start] == chunk_of[item.start] or m.start - item.end in (0, 1) or item.start - m.end in (0, 1))
            ]
            if same:
                owner = min(same, key=lambda m: min(abs(m.start - item.end), abs(item.start - m.end)))
                assigned.setdefault(id(owner), []).append(item)
            continue
        # Items overlapping a finding span belong to that finding ("PDR", "bilateral effusions").
        inside = [m for m in targets if m.start <= item.start and item.end <= m.end]
        if inside:
            assigned.setdefault(id(inside[0]), []).append(item)
            continue
        overlapping = [m for m in targets if m.start < item.end and item.start < m.end]
        if overlapping:
            # "mild NPDR": a record's own severity phrase overlapping its finding belongs to it.
            assigned.setdefault(id(overlapping[0]), []).append(item)
            continue
        c = chunk_of[item.start]
        same = [m for m in targets if chunk_of[m.start] == c]
        owner = None
        if same:
            after = [m for m in same if m.start >= item.end]
            before = [m for m in same if m.end <= item.start]
            introduced = item.start > 0 and (doc[item.start - 1].lower_ in _PREPOSITIONS or (item.start > 1 and doc[item.start - 2].lower_ in _PREPOSITIONS and doc[item.start - 1].lower_ in ("the", "a", "both")))
            if before and (introduced or not after):
                owner = before[-1]
            elif after:
                owner = after[0]
        else:
            # Hand over to the previous finding in the same sentence across a comma.
            previous = [m for m in targets if m.end <= item.start and sent_of[m.start] == sent_of[item.start]]
            if previous:
                between = [t.text for t in doc[previous[-1].end : item.start]]
                tail = [t for t in doc[item.end : len(doc)] if chunk_of[t.i] == chunk_of[item.start] and not t.is_punct]
                lead = between[between.index(",") + 1 :] if "," in between else between
                # Only a short trailing remark ("effusion, large", "effusion, right-sided") refers back.
                if ("," in between or ":" in between or "-" in between) and len(lead) <= 2 and len(tail) <= 3:
                    owner = previous[-1]
        if owner is not None:
            assigned.setdefault(id(owner), []).append(item)
        elif item.what in ("side", "anatomy"):
            unassigned.append(item)
    # Sides and places left over go to the nearest finding of their sentence that has none yet
    # ("mass with spiculated margins ... in the left breast").
    for item in unassigned:
        same = [m for m in targets if sent_of[m.start] == sent_of[item.start] and m.kind != "normal"]
        same = [m for m in same if not any(it.what == item.what for it in assigned.get(id(m), []))]
        if same:
            owner = min(same, key=lambda m: min(abs(m.start - item.end), abs(item.start - m.end)))
            assigned.setdefault(id(owner), []).append(item)
    return assigned


_DIAGNOSIS_PHRASES = sorted({tuple(p.split()) for p in vocab.DIAGNOSIS_PHRASES}, key=len, reverse=True)


def _mark_diagnoses(doc, mentions: list[_Mention]) -> None:
    """Set ``diagnosis`` on findings stated as a conclusion: right after "consistent with", "suspicious
    for" ... (up to three plain words between, "consistent with active CNV"), or in an IMPRESSION section."""
    impression_start = None
    for token in doc:
        if token.lower_ in vocab.IMPRESSION_HEADERS and token.i + 1 < len(doc) and doc[token.i + 1].text in (":", "-"):
            impression_start = token.i + 2
    occupied = {i for m in mentions if m.kind in ("finding", "sign") for i in range(m.start, m.end)}
    for mention in mentions:
        if mention.kind != "finding":
            continue
        sentence_start = doc[mention.start].sent.start
        phrase = None
        for skip in range(0, 4):
            filler_start = mention.start - skip
            if filler_start < sentence_start:
                break
            if skip and not (doc[filler_start].is_alpha or doc[filler_start].text == "-") or filler_start in occupied and skip:
                break
            for words in _DIAGNOSIS_PHRASES:
                begin = filler_start - len(words)
                if begin >= sentence_start and tuple(t.lower_ for t in doc[begin:filler_start]) == words:
                    phrase = " ".join(words)
                    break
            if phrase:
                break
        if phrase is None and impression_start is not None and mention.start >= impression_start:
            phrase = "impression"
        mention.diagnosis = phrase


def _inside_item(i: int, items: list[_Item]) -> bool:
    return any(it.start <= i < it.end for it in items)


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
            existing = existing.model_copy(update={"status": "present", "cue": None})
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


def _conflicts(findings: list[Finding]) -> list[str]:
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


def _concepts(knowledge: KnowledgeBase, ids) -> list[Concept]:
    out: list[Concept] = []
    for record_id in ids:
        if record_id and all(c.id != record_id for c in out):
            out.append(Concept(id=record_id, term=knowledge.by_id[record_id].term))
    return out
