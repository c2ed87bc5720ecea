"""Term matching: the lexicon's phrase matches on a parsed doc become an :class:`~clinisynth.agents.reasoning.analysis.Analysis`
(record mentions, modifier items, modality families and regions, normal-study spans)."""

from __future__ import annotations

from dataclasses import dataclass, field

from clinisynth.agents.reasoning import vocab
from clinisynth.agents.reasoning.analysis import Analysis, Item, Mention
from clinisynth.agents.reasoning.attributes import prefer_longest_items
from clinisynth.agents.reasoning.lexicon import KIND_PRIORITY, Lexicon
from clinisynth.agents.reasoning.spelling import SpellingCorrector
from clinisynth.knowledge import KnowledgeBase

#: How many tokens after a structure its size word may stand ("the heart is mildly large").
_SIZE_WINDOW = 6


@dataclass
class OrganPhrases:
    """Findings named "<organ> <head>", looked up by what is left without the organ words.

    Args:
        words: normalised organ words (:data:`~clinisynth.agents.reasoning.vocab.ORGAN_WORDS`).
        heads: bare head word -> findings named "<organ> <head>" ("metastasis" -> brain / pulmonary
            metastasis), matched on otherwise unresolved words; the study's modality picks one.
        tails: ``(modality id, tail)`` -> findings of that modality whose phrase is an organ word or
            more followed by ``tail`` ("intracranial metastatic disease" -> "metastatic disease"):
            what a mention naming another modality's finding means in this one.
    """

    words: set[str]
    heads: dict[str, list[str]] = field(default_factory=dict)
    tails: dict[tuple[str, str], list[str]] = field(default_factory=dict)

    @classmethod
    def build(cls, *, knowledge: KnowledgeBase, lexicon: Lexicon) -> "OrganPhrases":
        organs = cls(words={vocab.normalize_word(w) for w in vocab.ORGAN_WORDS})
        for phrase, ids in sorted(lexicon.phrase_ids.items()):
            words = phrase.split()
            findings = [i for i in sorted(ids) if knowledge.by_id[i].kind == "finding" and not knowledge.by_id[i].normal]
            for cut in range(1, len(words)):
                if words[cut - 1] not in organs.words:
                    break
                for record_id in findings:
                    for modality_id in knowledge.by_id[record_id].modalities:
                        bucket = organs.tails.setdefault((modality_id, " ".join(words[cut:])), [])
                        if record_id not in bucket:
                            bucket.append(record_id)
            if len(words) == 2 and words[0] in organs.words and words[1] not in organs.words:
                for record_id in findings:
                    if record_id not in organs.heads.get(words[1], []):
                        organs.heads.setdefault(words[1], []).append(record_id)
        return organs


class TermMatcher:
    """Reads the lexicon's matches on a doc: mentions of records, modifier items, families, regions,
    normal-study spans, bare organ heads and size statements.

    Overlapping record matches keep the longest span (on equal spans the kind priority decides);
    side and severity words inside an anatomy, modality or technique span belong to that span.

    Args:
        knowledge: the reference records (for ``enlargement_of``).
        lexicon: the phrase matchers and record kinds.
        nlp: the spaCy pipeline the matchers were built on (its string store names the matches).
    """

    def __init__(self, *, knowledge: KnowledgeBase, lexicon: Lexicon, nlp) -> None:
        self.lexicon = lexicon
        self.nlp = nlp
        self.organs = OrganPhrases.build(knowledge=knowledge, lexicon=lexicon)
        self._enlargement = {a: r.id for r in knowledge.records for a in r.enlargement_of}
        self.speller = SpellingCorrector(lexicon=lexicon)

    def match(self, doc) -> Analysis:
        """The :class:`Analysis` of ``doc`` (normalised and cut into sentences) before retrieval and assertion."""
        corrections = self.speller.correct(doc, matcher=self.lexicon.norm_matcher)
        by_span: dict[tuple[int, int], set[str]] = {}
        items: list[Item] = []
        families, regions, normal_spans = [], [], []
        matches = [*self.lexicon.norm_matcher(doc), *self.lexicon.orth_matcher(doc)]
        for match_id, start, end in matches:
            key = self.nlp.vocab.strings[match_id]
            tag, _, value = key.partition("|")
            if tag == "REC":
                by_span.setdefault((start, end), set()).add(value)
            elif tag == "SIDE":
                items.append(Item(start, end, "side", value))
            elif tag == "SEV":
                if end < len(doc) and (doc[end - 1].norm_, doc[end].norm_) in vocab.SIZE_WORD_COMPOUNDS:
                    continue  # "small vessel disease" is not small
                items.append(Item(start, end, "severity", value))
            elif tag == "RSEV":
                record_id, level, word = value.split("|", 2)
                if word.lower() in vocab.DISTRIBUTION_WORDS and record_id not in vocab.DISTRIBUTION_GRADES:
                    continue  # "patchy opacity": a distribution, not a severity
                items.append(Item(start, end, "rsev", level, extra=f"{record_id}|{word}"))
            elif tag == "FAM":
                families.append((start, end, value))
            elif tag == "REG":
                regions.append((start, end, value))
            elif tag == "NORMAL":
                normal_spans.append((start, end))
        for match in vocab.GRADE_RE.finditer(doc.text):
            span = doc.char_span(match.start(), match.end(), alignment_mode="expand")
            if span is not None:
                items.append(Item(span.start, span.end, "grade", match.group(2).lower(), extra=match.group(0)))

        # Longest match wins; on equal spans the kind priority decides.
        candidates = []
        for (start, end), ids in by_span.items():
            kinds = {self.lexicon.kinds[i] for i in ids}
            kind = next(k for k in KIND_PRIORITY if k in kinds)
            candidates.append(Mention(start, end, kind, sorted(i for i in ids if self.lexicon.kinds[i] == kind)))
        candidates.sort(key=lambda m: (-(m.end - m.start), KIND_PRIORITY.index(m.kind), m.start))
        taken = [False] * len(doc)
        mentions = []
        for mention in candidates:
            if any(taken[mention.start : mention.end]):
                continue
            for i in range(mention.start, mention.end):
                taken[i] = True
            mentions.append(mention)
        heads = self.organs.heads
        for token in doc:
            if not taken[token.i] and token.is_alpha and token.norm_ in heads and token.norm_ not in vocab.GENERIC_HEADS:
                mentions.append(Mention(token.i, token.i + 1, "finding", list(heads[token.norm_]), bare_head=True))
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
                items.append(Item(mention.start, mention.end, "anatomy", mention.ids[0]))
        # Side and severity words inside an anatomy or modality span belong to it ("right lower lobe").
        covered = {i for m in mentions if m.kind in ("anatomy", "modality", "technique") for i in range(m.start, m.end)}
        items = [it for it in items if it.what in ("anatomy", "rsev") or not (set(range(it.start, it.end)) & covered)]
        items = prefer_longest_items(items)
        families = [f for f in families if not (set(range(f[0], f[1])) & covered)]
        return Analysis(text=doc.text, doc=doc, mentions=mentions, items=items, families=families, regions=regions,
                        normal_spans=normal_spans, notes=corrections)


def _size_statements(doc, mentions: list[Mention], taken: list[bool], enlargement: dict[str, str]):
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
            item = Item(i, end, "severity", "mild") if borderline else None
            yield Mention(i, end, "finding", [finding_id], chosen=finding_id), item
            break
