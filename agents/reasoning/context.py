"""Assertion status of findings and signs with medspaCy ConText: absent, uncertain, historical, and
the findings stated as the report's conclusion."""

from __future__ import annotations

from clinisynth.agents.reasoning import vocab
from clinisynth.agents.reasoning.analysis import Analysis, Mention
from clinisynth.knowledge import KnowledgeBase

#: After a comma these words open a new positive statement ("no evidence of malignancy, benign nevus").
_LIST_RESTART = vocab.RESTART_WORDS | {"benign", "consistent", "compatible", "probable", "likely", "but"}
_DIAGNOSIS_PHRASES = sorted({tuple(p.split()) for p in vocab.DIAGNOSIS_PHRASES}, key=len, reverse=True)


class AssertionContext:
    """Sets each finding and sign mention's status (``present | absent | uncertain``), cue and
    ``historical`` flag, and marks the findings stated as a conclusion (``diagnosis``).

    The ConText rules are medspaCy's defaults (less
    :data:`~clinisynth.agents.reasoning.vocab.DROPPED_DEFAULT_LITERALS`) plus
    :data:`~clinisynth.agents.reasoning.vocab.EXTRA_CONTEXT_RULES`. A forward cue's scope ends at a new
    positive statement and covers its own list item only; a cue inside another finding's words
    modifies that finding only. Devices and results of procedures (``post_procedural`` records) stay
    current whatever dates them.

    Args:
        nlp: the spaCy pipeline the docs are made with.
        knowledge: the reference records (``post_procedural`` flags).
    """

    def __init__(self, *, nlp, knowledge: KnowledgeBase) -> None:
        from clinisynth.agents.reasoning.cache import context_classes

        ConText, ConTextRule = context_classes()

        self.knowledge = knowledge
        # A cue inside another finding's words modifies that finding only ("old granulomatous disease and ...").
        self.context = ConText(nlp, rules=None, span_attrs=None, phrase_matcher_attr="LOWER", prune_on_target_overlap=True)
        self.context.add(_context_rules(ConTextRule))

    def apply(self, analysis: Analysis) -> None:
        """Set status, cue, ``historical`` and ``diagnosis`` on the mentions of ``analysis`` in place."""
        self._assert(analysis)
        _mark_diagnoses(analysis.doc, analysis.mentions)

    def _assert(self, analysis: Analysis) -> None:
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

    def _post_procedural(self, mention: Mention) -> bool:
        return any(self.knowledge.by_id[i].post_procedural for i in mention.ids)


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


def _mark_diagnoses(doc, mentions: list[Mention]) -> None:
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
