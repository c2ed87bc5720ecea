"""Attributes of findings: which side, place, severity and grade words belong to which finding, and
what they resolve to for each finding's record."""

from __future__ import annotations

from typing import NamedTuple

from clinisynth.agents.plan import Concept
from clinisynth.agents.reasoning import vocab
from clinisynth.agents.reasoning.analysis import Analysis, Item, Mention
from clinisynth.knowledge import KnowledgeBase

#: Words that cut a sentence into the chunks within which an item modifies a finding.
_CHUNK_BREAK = {",", ";", "and", "but", "with", "while", "whereas", "plus", "also", "however", "although", "&", "as"}
#: Words that introduce an item as modifying the finding before it ("consolidation in the RLL").
_PREPOSITIONS = {"in", "at", "within", "of", "involving", "on", "over", "into", "along", "near", "affecting", "from", "throughout", "posterior", "inferior", "superior"}


class Attributes(NamedTuple):
    """What a finding's words say of it: side (``left | right | bilateral``), places, severity and grade."""

    side: str | None
    location: list[Concept]
    severity: str | None
    grade: str | None


class AttributeResolver:
    """Gives each side / severity / grade / anatomy item to one finding and resolves them per record.

    A side goes only to a record that can take one (:meth:`takes_side`); a severity only to a record
    with a scale; the study's side (an eye, a side in the header) applies to findings that state none;
    a denied finding has no severity or grade.

    Args:
        knowledge: the reference records (anatomy terms and sides, which findings are lateralized).
    """

    def __init__(self, *, knowledge: KnowledgeBase) -> None:
        self.knowledge = knowledge
        # Findings without an explicit flag still take a side when no record uses the flag at all.
        self._any_lateralized = any(r.lateralized for r in knowledge.records if r.kind == "finding")
        self._anatomy_sides = {r.id: r.side for r in knowledge.records if r.kind == "anatomy" and r.side}

    def takes_side(self, record) -> bool:
        """Whether ``record`` can be left, right or bilateral."""
        return record.lateralized or not self._any_lateralized

    def resolve(self, analysis: Analysis, targets: list[Mention], records: dict, explained: dict[int, int]) -> dict[int, Attributes]:
        """The attributes of every target that ``explained`` does not set aside.

        Args:
            analysis: the parsed text (its doc and items).
            targets: the finding, sign and normal mentions, in text order.
            records: ``id(mention)`` -> the record the mention is read as (a sign's finding).
            explained: ``id(observation)`` -> ``id(diagnosis)``: the diagnosis takes the side and place
                said of the observation it explains, unless it states its own.

        Returns:
            ``id(mention)`` -> :class:`Attributes`.
        """
        doc = analysis.doc
        attached = self._assign(doc, targets, analysis.items)
        by_id = {id(m): m for m in targets}
        for observation_id, diagnosis_id in explained.items():
            # The diagnosis names the lesion just described: it takes the side and place said of it.
            own = {it.what for it in attached.get(diagnosis_id, [])}
            moved = [it for it in attached.get(observation_id, []) if it.what in ("side", "anatomy") and it.what not in own]
            if moved and by_id[diagnosis_id].status != "absent":
                attached.setdefault(diagnosis_id, []).extend(moved)
        study_side = self._study_side(doc, analysis)
        resolved: dict[int, Attributes] = {}
        for mention in targets:
            if id(mention) in explained:
                continue
            record = records[id(mention)]
            side, location, severity, grade = self._of_record(record, attached.get(id(mention), []))
            if side is None and study_side and self.takes_side(record) and not record.normal:
                if mention.status != "absent":
                    side = study_side
            if mention.status == "absent":
                severity, grade = None, None  # "no large effusion" denies the finding, whatever its size
            resolved[id(mention)] = Attributes(side, location, severity, grade)
        return resolved

    def _assign(self, doc, targets: list[Mention], items: list[Item]) -> dict[int, list[Item]]:
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
        assigned: dict[int, list[Item]] = {}
        unassigned: list[Item] = []
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

    def _of_record(self, record, attached: list[Item]) -> Attributes:
        """What the items given to a mention say of ``record``."""
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
        side = None
        if sides and self.takes_side(record):
            side = "bilateral" if "bilateral" in sides or {"left", "right"} <= sides else sides.pop()
        # Severity only where the record has a scale: "early SCC" or "large glioblastoma" are not grades.
        # An explicit size word ("mild interstitial oedema") wins over the grade a record phrase implies.
        levels = levels or implied
        graded = bool(record.severity) and record.kind == "finding" and not record.normal
        severity = max(levels, key=lambda level: vocab.SEVERITY_RANK[level]) if levels and graded else None
        return Attributes(side, location, severity, grade)

    def _study_side(self, doc, analysis: Analysis) -> str | None:
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
                side = self._anatomy_sides.get(mention.chosen)
                if side:
                    sides.add(side)
        if not sides:
            return None
        return "bilateral" if "bilateral" in sides or {"left", "right"} <= sides else sides.pop()


def prefer_longest_items(items: list[Item]) -> list[Item]:
    """Overlapping modifier items of one type keep the longest ("right and left" over "right")."""
    items = sorted(items, key=lambda it: (-(it.end - it.start), it.start))
    kept: list[Item] = []
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


def _inside_item(i: int, items: list[Item]) -> bool:
    return any(it.start <= i < it.end for it in items)
