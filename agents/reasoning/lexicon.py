"""Phrase matchers built once from the knowledge records and the general vocabulary.

Matching is on a normalised token form (:func:`~clinisynth.agents.reasoning.vocab.normalize_word`:
lower case, singular, American spelling) so that "Pleural Effusions" and "oedema" match their
records; abbreviations are matched as written (``RLL``, ``PTX``), so that "Oct 12" is not OCT.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from spacy.lang.en.stop_words import STOP_WORDS

from clinisynth.agents.reasoning import vocab
from clinisynth.knowledge import KnowledgeBase

#: When one span matches records of several kinds, the earlier kind wins.
KIND_PRIORITY = ("modality", "finding", "normal", "sign", "anatomy", "technique")

#: Lower-cased abbreviations that are also ordinary words: matched only as written.
_WORD_LIKE = {"oct", "bus", "cat", "mass", "pet", "aid", "ace", "art", "cap", "cut", "hip", "leg", "mri", "ms", "dr", "pe", "us", "ct", "ad", "am"}


def variants(phrase: str) -> set[str]:
    """Spelling variants of a phrase: hyphens as spaces or joined, two-word phrases hyphenated."""
    phrase = " ".join(phrase.strip().split())
    out = {phrase}
    if "-" in phrase:
        out.add(phrase.replace("-", " "))
        out.add(phrase.replace("-", ""))
    words = phrase.split(" ")
    if len(words) == 2:
        out.add("-".join(words))
    return {v for v in out if v}


@dataclass
class Lexicon:
    """Matchers and lookup tables; build with :meth:`build`.

    Args:
        norm_matcher: spaCy PhraseMatcher on the normalised form (records' terms, synonyms, vocabulary).
        orth_matcher: spaCy PhraseMatcher on the exact form (abbreviations, R / L, OD / OS).
        kinds: record id -> matching kind (``normal`` for a modality's normal record).
        expansions: abbreviation as written -> preferred term, used before embedding a query.
        phrase_ids: normalised phrase -> record ids, to resolve built-in abbreviations.
    """

    norm_matcher: object
    orth_matcher: object
    kinds: dict[str, str] = field(default_factory=dict)
    expansions: dict[str, str] = field(default_factory=dict)
    phrase_ids: dict[str, set[str]] = field(default_factory=dict)

    @classmethod
    def build(cls, *, nlp, knowledge: KnowledgeBase, normalize) -> "Lexicon":
        from spacy.matcher import PhraseMatcher

        norm_matcher = PhraseMatcher(nlp.vocab, attr="NORM")
        orth_matcher = PhraseMatcher(nlp.vocab, attr="ORTH")
        lexicon = cls(norm_matcher=norm_matcher, orth_matcher=orth_matcher)
        norm_patterns: dict[str, set[str]] = {}
        orth_patterns: dict[str, set[str]] = {}

        def add_norm(key: str, phrase: str) -> None:
            norm_patterns.setdefault(key, set()).update(variants(phrase))

        def add_orth(key: str, phrase: str) -> None:
            orth_patterns.setdefault(key, set()).update({phrase, phrase + "s"} if phrase[-1].isupper() else {phrase})

        for record in knowledge.records:
            kind = "normal" if record.normal else record.kind
            lexicon.kinds[record.id] = kind
            key = f"REC|{record.id}"
            for phrase in [record.term, *record.synonyms]:
                if phrase.strip():
                    add_norm(key, phrase)
                    lexicon.phrase_ids.setdefault(_norm_phrase(nlp, normalize, phrase), set()).add(record.id)
            for abbreviation in record.abbreviations:
                abbreviation = abbreviation.strip()
                add_orth(key, abbreviation)
                if abbreviation.upper() != abbreviation.lower():
                    add_orth(key, abbreviation.upper())
                if len(abbreviation) > 2 and abbreviation.lower() not in _WORD_LIKE and abbreviation.lower() not in STOP_WORDS:
                    add_norm(key, abbreviation)
                lexicon.expansions.setdefault(abbreviation, record.term)
            for level, words in record.severity.items():
                for word in words:
                    add_norm(f"RSEV|{record.id}|{level}|{word}", word)

        # Built-in abbreviations resolve to records through their expansion, when a record has it.
        for abbreviation, expansion in vocab.BUILTIN_ABBREVIATIONS.items():
            ids = lexicon.phrase_ids.get(_norm_phrase(nlp, normalize, expansion), set())
            lexicon.expansions.setdefault(abbreviation, expansion)
            for record_id in sorted(ids):
                add_orth(f"REC|{record_id}", abbreviation)

        for phrase, side in vocab.SIDE_WORDS.items():
            add_norm(f"SIDE|{side}", phrase)
        for phrase, side in vocab.SIDE_PHRASES.items():
            add_norm(f"SIDE|{side}", phrase)
        for phrase, side in vocab.SIDE_ORTH.items():
            add_orth(f"SIDE|{side}", phrase)
        for phrase, level in vocab.SEVERITY_WORDS.items():
            add_norm(f"SEV|{level}", phrase)
        for phrase, family in vocab.FAMILY_WORDS.items():
            if phrase not in ("us", "mr", "xr", "pet", "ct", "mri"):
                add_norm(f"FAM|{family}", phrase)
        add_norm("FAM|ct", "ct")
        add_norm("FAM|mri", "mri")
        for phrase, family in vocab.FAMILY_ORTH.items():
            add_orth(f"FAM|{family}", phrase)
        for phrase, region in vocab.REGION_WORDS.items():
            add_norm(f"REG|{region}", phrase)
        for phrase in vocab.NORMAL_PHRASES:
            add_norm("NORMAL|generic", phrase)

        for key, phrases in norm_patterns.items():
            docs = [_norm_doc(nlp, normalize, p) for p in sorted(phrases)]
            norm_matcher.add(key, [d for d in docs if len(d)])
        for key, phrases in orth_patterns.items():
            orth_matcher.add(key, [nlp.make_doc(p) for p in sorted(phrases) if p])
        return lexicon


def _norm_doc(nlp, normalize, text: str):
    doc = nlp.make_doc(text)
    normalize(doc)
    return doc


def _norm_phrase(nlp, normalize, text: str) -> str:
    return " ".join(token.norm_ for token in _norm_doc(nlp, normalize, " ".join(text.replace("-", " ").split())))
