"""What the :class:`~clinisynth.agents.reasoning.engine.Reasoner`'s stages read and write: the parsed
text (:class:`Analysis`) with its :class:`Mention` and :class:`Item` spans, and the document helpers
(cleaning, token normalisation, sentence and clause boundaries).

Importing this module is cheap: spaCy is imported only when :func:`is_content` first runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from clinisynth.agents.plan import Reference
from clinisynth.agents.reasoning import vocab

SENTENCE_END = {".", "!", ";", "。"}
CLAUSE_BREAK = {",", ";", ":", "(", ")", "[", "]", "and", "but", "or", "with", "without", "plus", "also", "nor", "versus", "vs", "vs.", "/", "-", "--", "while", "whereas", "however", "although"}


@dataclass
class Mention:
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
class Item:
    """A modifier token span: a side, a severity, a grade or an anatomy mention."""

    start: int
    end: int
    what: str  # side | severity | grade | anatomy | rsev
    value: str
    extra: str | None = None


@dataclass
class Analysis:
    """One parsed description: the cleaned text, its spaCy doc and every span the stages found.

    Args:
        text: the input with control characters blanked (:func:`clean_text`), offsets unchanged.
        doc: the spaCy doc of ``text``, normalised and cut into sentences.
        mentions: record mentions, in text order.
        items: modifier spans (sides, severities, grades, anatomy).
        families: ``(start, end, family)`` of modality family words ("CT", "ultrasound").
        regions: ``(start, end, region)`` of body-region words ("chest", "abdomen").
        normal_spans: ``(start, end)`` of normal-study phrases ("lungs are clear").
        references: records retrieved for unresolved stretches, with their scores.
        notes: what the parse decided, for the plan's notes.
    """

    text: str
    doc: object
    mentions: list[Mention]
    items: list[Item]
    families: list[tuple[int, int, str]]
    regions: list[tuple[int, int, str]]
    normal_spans: list[tuple[int, int]]
    references: list[Reference] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def clean_text(text: str) -> str:
    """Control characters become spaces; the length is kept so that offsets point into the input."""
    return "".join(ch if (ch.isprintable() or ch in "\n\t") else " " for ch in text)


def normalize_doc(doc) -> None:
    """Set every token's ``norm_`` to :func:`~clinisynth.agents.reasoning.vocab.normalize_word` of its text."""
    for token in doc:
        token.norm_ = vocab.normalize_word(token.text)


def set_sentences(doc) -> None:
    """Sentence starts after ``.``, ``!``, ``;`` and line breaks (the reports' own layout)."""
    for i, token in enumerate(doc):
        if i == 0:
            token.is_sent_start = True
            continue
        previous = doc[i - 1]
        token.is_sent_start = bool(
            previous.text in SENTENCE_END or "\n" in previous.text or "\n" in previous.whitespace_ or (previous.is_space and "\n" in previous.text)
        )


def clauses(doc):
    """Token indices of each clause: sentences cut at punctuation and conjunctions (:data:`CLAUSE_BREAK`)."""
    clause: list[int] = []
    for token in doc:
        if token.is_sent_start and clause:
            yield clause
            clause = []
        if token.lower_ in CLAUSE_BREAK or token.is_punct or token.is_space:
            if clause:
                yield clause
            clause = []
            continue
        clause.append(token.i)
    if clause:
        yield clause


_STOP = None


def is_content(token) -> bool:
    """Whether ``token`` can carry a finding: a real word, not a stop, side, size or spread word."""
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
