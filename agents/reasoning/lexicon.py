"""Phrase matchers built once from the knowledge records and the general vocabulary.

Matching is on a normalised token form (:func:`~clinisynth.agents.reasoning.vocab.normalize_word`:
lower case, singular, American spelling) so that "Pleural Effusions" and "oedema" match their
records; abbreviations are matched as written (``RLL``, ``PTX``), so that "Oct 12" is not OCT.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
        # spaCy is imported here, not with the module: importing this module must stay cheap (settings
        # import the engine), and the Reasoner imports spaCy its own, lighter way first.
        from spacy.lang.en.stop_words import STOP_WORDS
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


# ---------------------------------------------------------------------- cache

#: Bump when the cache file's layout changes.
LEXICON_CACHE_FORMAT = 1
#: Cache files kept in ``<cache_dir>/lexicon/`` (one per knowledge content and vocabulary seen).
_CACHE_KEEP = 8


def lexicon_cache_key(*, nlp, knowledge: KnowledgeBase, normalize) -> str | None:
    """What a built lexicon depends on, hashed: the knowledge content, the source of this module, of
    :mod:`~clinisynth.agents.reasoning.vocab` and of the module defining ``normalize``, the spaCy version
    and the tokenizer's rules. ``None`` when ``normalize``'s source file cannot be found (nothing is cached)."""
    import hashlib
    import inspect

    import spacy

    try:
        normalize_file = inspect.getsourcefile(normalize)
    except TypeError:
        normalize_file = None
    if not normalize_file:
        return None
    digest = hashlib.sha256(f"{LEXICON_CACHE_FORMAT}\0{knowledge.content_hash}\0spacy {spacy.__version__}\0"
                            f"{nlp.lang}\0{getattr(normalize, '__qualname__', '')}\0".encode())
    for source in dict.fromkeys([__file__, vocab.__file__, normalize_file]):
        with open(source, "rb") as handle:
            digest.update(handle.read())
        digest.update(b"\0")
    digest.update(nlp.tokenizer.to_bytes(exclude=["vocab"]))
    return digest.hexdigest()[:24]


def load_or_build_lexicon(*, nlp, knowledge: KnowledgeBase, normalize, cache_dir) -> Lexicon:
    """:meth:`Lexicon.build`, reusing ``<cache_dir>/lexicon/<key>.json`` when nothing it depends on changed.

    The cache holds the matchers' patterns as the token-attribute hashes spaCy matches on (plus the
    lookup tables), so loading re-adds them to fresh matchers bound to ``nlp.vocab`` without tokenizing
    and normalising every phrase again (about 0.1 s instead of 0.5 s here). A missing, unreadable or
    mismatching cache file is ignored, removed and rewritten; an unwritable cache folder only costs the
    build. ``cache_dir=None`` always builds.

    Args:
        nlp: the spaCy pipeline the matchers match on (its vocab is shared).
        knowledge: the records; their content hash is part of the cache key.
        normalize: ``normalize(doc)`` setting each token's ``norm_`` (the source of its module is part
            of the key, as are those of this module and of the vocabulary).
        cache_dir: root cache folder, or ``None``.
    """
    import json
    from pathlib import Path

    key = lexicon_cache_key(nlp=nlp, knowledge=knowledge, normalize=normalize) if cache_dir is not None else None
    if key is None:
        return Lexicon.build(nlp=nlp, knowledge=knowledge, normalize=normalize)
    path = Path(cache_dir) / "lexicon" / f"{key}.json"
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        payload = None
    except (OSError, ValueError):
        _discard(path)
        payload = None
    if payload is not None:
        lexicon = _from_payload(nlp, payload, key)
        if lexicon is not None:
            return lexicon
        _discard(path)
    lexicon = Lexicon.build(nlp=nlp, knowledge=knowledge, normalize=normalize)
    _write_atomically(path, json.dumps(_to_payload(lexicon, key), separators=(",", ":")))
    return lexicon


def _patterns(matcher) -> tuple[int, dict[str, list[list[int]]]]:
    # A PhraseMatcher pickles as (vocab, {key: {pattern as attribute hashes}}, callbacks, attr); spaCy's
    # own unpickler re-adds those hash tuples with ``add``, as ``_matcher`` does below.
    _vocab, docs, _callbacks, attr = matcher.__reduce__()[1]
    return int(attr), {key: sorted(list(p) for p in patterns) for key, patterns in docs.items()}


def _to_payload(lexicon: Lexicon, key: str) -> dict:
    norm_attr, norm = _patterns(lexicon.norm_matcher)
    orth_attr, orth = _patterns(lexicon.orth_matcher)
    return {
        "format": LEXICON_CACHE_FORMAT,
        "key": key,
        "norm": {"attr": norm_attr, "patterns": norm},
        "orth": {"attr": orth_attr, "patterns": orth},
        "kinds": lexicon.kinds,
        "expansions": lexicon.expansions,
        "phrase_ids": {phrase: sorted(ids) for phrase, ids in lexicon.phrase_ids.items()},
    }


def _from_payload(nlp, payload, key: str) -> Lexicon | None:
    try:
        if payload["format"] != LEXICON_CACHE_FORMAT or payload["key"] != key:
            return None
        return Lexicon(
            norm_matcher=_matcher(nlp, payload["norm"]),
            orth_matcher=_matcher(nlp, payload["orth"]),
            kinds={str(k): str(v) for k, v in payload["kinds"].items()},
            expansions={str(k): str(v) for k, v in payload["expansions"].items()},
            phrase_ids={str(k): {str(i) for i in ids} for k, ids in payload["phrase_ids"].items()},
        )
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
        return None


def _matcher(nlp, part: dict):
    from spacy.matcher import PhraseMatcher

    matcher = PhraseMatcher(nlp.vocab, attr=int(part["attr"]))
    for key, patterns in part["patterns"].items():
        matcher.add(str(key), [tuple(int(h) for h in pattern) for pattern in patterns])
    return matcher


def _write_atomically(path, text: str) -> None:
    """Write the cache file with the one atomic writer, keep the newest few, and never fail the plan for it."""
    from clinisynth.generation.files import write_atomically

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, text)
        stale = sorted((p for p in path.parent.glob("*.json") if p != path), key=lambda p: p.stat().st_mtime,
                       reverse=True)
        for old in stale[_CACHE_KEEP - 1:]:
            _discard(old)
    except OSError:
        pass


def _discard(path) -> None:
    import os

    try:
        os.unlink(path)
    except OSError:
        pass
