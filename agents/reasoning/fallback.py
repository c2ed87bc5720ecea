"""Retrieval fallback: stretches of text the lexicon did not resolve (paraphrases, misspellings) are
searched in the reference index, and a hit above the threshold becomes a mention."""

from __future__ import annotations

from collections import OrderedDict

from clinisynth.agents.plan import Reference
from clinisynth.agents.reasoning.analysis import Analysis, Mention, clauses, is_content
from clinisynth.agents.reasoning.lexicon import Lexicon
from clinisynth.knowledge import KnowledgeBase

_MAX_RETRIEVAL_QUERIES = 6
#: How far below the threshold the query without its anatomy words may score for the same record.
_CONTENT_MARGIN = 0.1
_SEARCH_CACHE_SIZE = 512


class RetrievalFallback:
    """Searches the unresolved clauses of a text and adds what is found as ``retrieval`` mentions.

    A clause is searched when no finding, sign, normal phrase, modality or technique was matched in it
    and its content words (not anatomy, modifiers, stop words) are at least 5 letters; abbreviations
    are expanded first. A hit counts when it scores at least ``threshold`` and still points at the
    same record without the anatomy words (within a margin of 0.1). At most 6 clauses are searched per
    text; searches are cached (512, least recently used first out).

    Args:
        knowledge: the reference records.
        lexicon: record kinds and abbreviation expansions.
        retriever: object with ``search(query, *, k, kinds, modality) -> list[Hit]`` (``Hit.id``,
            ``Hit.score`` as cosine similarity).
        threshold: the cosine similarity a retrieved record needs to count.
    """

    def __init__(self, *, knowledge: KnowledgeBase, lexicon: Lexicon, retriever, threshold: float) -> None:
        self.knowledge = knowledge
        self.lexicon = lexicon
        self.retriever = retriever
        self.threshold = threshold
        self.cache: OrderedDict[tuple, list] = OrderedDict()

    def resolve(self, analysis: Analysis, modality_id: str | None) -> None:
        """Add retrieved mentions, references and notes to ``analysis``, searching within ``modality_id``
        (the modality the text names, so "enlarged ventricles" on a brain MRI cannot come back as a
        cardiac finding)."""
        doc = analysis.doc
        resolved = {i for m in analysis.mentions if m.kind in ("finding", "sign", "normal", "modality", "technique") for i in range(m.start, m.end)}
        normal = {i for s, e in analysis.normal_spans for i in range(s, e)}
        anatomy = {i for m in analysis.mentions if m.kind == "anatomy" for i in range(m.start, m.end)}
        modifier = {i for it in analysis.items if it.what != "anatomy" for i in range(it.start, it.end)}
        modifier |= {i for s, e, _ in analysis.families for i in range(s, e)} | {i for s, e, _ in analysis.regions for i in range(s, e)}
        queries = 0
        for clause in clauses(doc):
            if any(i in resolved or i in normal for i in clause):
                continue
            content = [
                i for i in clause
                if i not in anatomy and i not in modifier and is_content(doc[i])
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
            if best is None or best.score < self.threshold:
                if best is not None:
                    analysis.notes.append(
                        f"{query!r} not resolved: best retrieved record {best.id} scored {best.score:.2f}, "
                        f"below the threshold {self.threshold}"
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
                Mention(start, end, kind, [record.id], source="retrieval", score=round(float(best.score), 4), chosen=record.id, query=query)
            )
            analysis.notes.append(f"{doc[start:end].text!r} resolved by retrieval to {record.term!r} (score {best.score:.2f})")
        analysis.mentions.sort(key=lambda m: m.start)

    def search_again(self, mention: Mention, modality_id: str, text: str, notes: list[str]) -> bool:
        """Search a mention retrieved before the modality was known (it was inferred) again within it.

        Returns:
            whether a hit of the mention's kind replaced its candidates (a note says so).
        """
        if mention.source != "retrieval" or not mention.query:
            return False
        hits = self._search(mention.query, modality_id)
        best = next((h for h in hits if h.id in self.knowledge.by_id), None)
        if best is not None and best.score >= self.threshold and self.lexicon.kinds.get(best.id) == mention.kind:
            mention.ids, mention.chosen, mention.score = [best.id], best.id, round(float(best.score), 4)
            notes.append(f"{text!r} searched again within {self.knowledge.by_id[modality_id].term}: "
                         f"{self.knowledge.by_id[best.id].term!r} (score {best.score:.2f})")
            return True
        return False

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
        return any(h.id == record_id and h.score >= self.threshold - _CONTENT_MARGIN for h in hits)

    def _search(self, query: str, modality_id: str | None) -> list:
        key = (query.lower(), modality_id)
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        hits = list(self.retriever.search(query, k=3, kinds={"finding", "sign"}, modality=modality_id))
        self.cache[key] = hits
        if len(self.cache) > _SEARCH_CACHE_SIZE:
            self.cache.popitem(last=False)
        return hits
