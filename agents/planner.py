"""The reasoning half of the graph as plain steps: request check, localize, pathology, visual map, prompt.

The LangGraph nodes call these steps one by one (so each is traced); :meth:`Planner.plan` runs them in
a row for ``clinisynth plan``, so both paths produce the same :class:`~clinisynth.agents.plan.Plan`.
"""

from __future__ import annotations

from clinisynth.agents.plan import Concept, Plan, Reference
from clinisynth.agents.reasoning.engine import DEFAULT_RETRIEVAL_THRESHOLD
from clinisynth.agents.requests import PlanError, check_request
from clinisynth.knowledge import KnowledgeBase


class Planner:
    """Turns a description into a :class:`Plan`.

    Args:
        knowledge: the reference records.
        retriever: FAISS retriever for paraphrases and misspellings (``None`` disables retrieval).
        retrieval_threshold: cosine similarity a retrieved record needs to count.
        max_request_chars: longest description accepted.
        cache_dir: where the reasoner caches its built lexicon (``None``: built every time).
    """

    def __init__(
        self,
        *,
        knowledge: KnowledgeBase,
        retriever=None,
        retrieval_threshold: float = DEFAULT_RETRIEVAL_THRESHOLD,
        max_request_chars: int = 4000,
        cache_dir=None,
    ) -> None:
        from clinisynth.agents.reasoning import Reasoner

        self.knowledge = knowledge
        self.max_request_chars = max_request_chars
        self.reasoner = Reasoner(knowledge=knowledge, retriever=retriever, retrieval_threshold=retrieval_threshold,
                                 cache_dir=cache_dir)

    def covered_modalities(self) -> str:
        return ", ".join(f"{record.term} ({record.label})" for record in self.knowledge.modalities)

    def check_request(self, text: str) -> str:
        """Reject text that is not UTF-8, holds control characters, is empty or over-long, before any work
        (:func:`clinisynth.agents.requests.check_request`)."""
        return check_request(text, max_chars=self.max_request_chars)

    def localize(self, text: str):
        localization = self.reasoner.localize(text)
        unsupported = getattr(localization, "unsupported_modality", None)
        if unsupported and localization.modality is None:
            raise PlanError(
                f"the description names {unsupported!r}, which the knowledge base does not cover; "
                f"covered modalities: {self.covered_modalities()}"
            )
        return localization

    def assess(self, text: str, localization):
        pathology = self.reasoner.assess_pathology(text, localization)
        if (
            localization.modality is None
            and pathology.modality is None
            and not pathology.findings
            and not pathology.normal_study
            and not localization.anatomy
            and not localization.technique
        ):
            raise PlanError(
                f"found nothing medical in {text[:80]!r}: name a finding and a modality, "
                f"e.g. 'small left pneumothorax on a chest radiograph'; covered modalities: {self.covered_modalities()}"
            )
        return pathology

    def visual_map(self, pathology):
        from clinisynth.agents.reasoning import map_visual_features

        modality_id = pathology.modality.id if pathology.modality else None
        return map_visual_features(
            knowledge=self.knowledge, modality_id=modality_id, findings=pathology.findings, signs=pathology.signs
        )

    def compose(self, text: str, localization, pathology, visual_features) -> Plan:
        """Write the structured report and the generator prompt, and assemble the plan."""
        from clinisynth.agents.reasoning import build_prompt, build_report

        modality = pathology.modality
        report = build_report(
            knowledge=self.knowledge,
            request=text,
            modality=modality,
            technique=localization.technique,
            findings=pathology.findings,
            normal_study=pathology.normal_study,
        )
        bundle = build_prompt(
            knowledge=self.knowledge,
            modality_id=modality.id if modality else None,
            findings=pathology.findings,
            normal_study=pathology.normal_study,
            technique=localization.technique,
            signs=pathology.signs,
            anatomy=localization.anatomy,
        )
        anatomy = _unique_concepts([*localization.anatomy, *(c for f in pathology.findings for c in f.location)])
        references = _best_references([*localization.references, *pathology.references])
        return Plan(
            request=text,
            modality=modality,
            modality_inferred=pathology.modality_inferred,
            technique=list(localization.technique),
            findings=list(pathology.findings),
            normal_study=pathology.normal_study,
            anatomy=anatomy,
            visual_features=list(visual_features),
            report=report,
            prompt=bundle.prompt,
            negative_prompt=bundle.negative_prompt,
            label=bundle.label,
            references=references,
            conflicts=list(pathology.conflicts),
            notes=[*localization.notes, *pathology.notes],
            knowledge_version=self.knowledge.version,
        )

    def plan(self, text: str) -> Plan:
        text = self.check_request(text)
        localization = self.localize(text)
        pathology = self.assess(text, localization)
        return self.compose(text, localization, pathology, self.visual_map(pathology))

    def plan_for_generation(self, text: str) -> Plan:
        """:meth:`plan`, plus what drawing needs: a modality, and a finding or an explicitly normal study.

        Raises:
            PlanError: naming what is missing and how to say it.
        """
        return self.check_drawable(self.plan(text))

    def check_drawable(self, plan: Plan) -> Plan:
        """``plan`` when it can be drawn: it names a modality, and a finding to draw or an explicitly normal study.

        A generation run calls this on the plan its graph's reasoning nodes made, before anything is written.

        Raises:
            PlanError: naming what is missing and how to say it.
        """
        text = plan.request
        if plan.modality is None:
            raise PlanError(f"cannot tell the imaging modality of {text.strip()[:80]!r}; name one of: "
                            f"{self.covered_modalities()}")
        drawable = [f for f in plan.findings if f.drawn]
        if not drawable and not plan.normal_study:
            raise PlanError(f"{text.strip()[:80]!r} names no finding to draw; name one (e.g. 'small left pneumothorax') "
                            "or say 'normal study'")
        return plan


def _unique_concepts(concepts) -> list[Concept]:
    seen: dict[str, Concept] = {}
    for concept in concepts:
        seen.setdefault(concept.id, Concept(id=concept.id, term=concept.term))
    return list(seen.values())


def _best_references(references) -> list[Reference]:
    best: dict[tuple[str, str], Reference] = {}
    for reference in references:
        key = (reference.id, reference.query)
        if key not in best or reference.score > best[key].score:
            best[key] = reference
    return sorted(best.values(), key=lambda r: -r.score)
