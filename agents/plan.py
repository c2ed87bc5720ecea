"""The structured plan: the contract of ``clinisynth plan --json`` and ``clinisynth.plan()``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Status = Literal["present", "absent", "uncertain"]
Temporality = Literal["current", "historical"]
Laterality = Literal["left", "right", "bilateral"]
Severity = Literal["mild", "moderate", "severe"]


class Concept(BaseModel):
    """A reference to a knowledge record."""

    model_config = ConfigDict(extra="forbid")

    id: str
    term: str


class Finding(BaseModel):
    """One finding stated in the request, with its assertion status and where / how bad it is.

    Args:
        evidence: the exact span of the input text the finding was read from.
        start, end: character offsets of ``evidence`` in the request.
        source: ``lexicon`` for a direct term match, ``retrieval`` for a FAISS match of a
            paraphrase or misspelling (then ``score`` is the cosine similarity).
        cue: the phrase that set ``status`` (a negation / uncertainty / historical cue) or, for a present
            finding, that made it the conclusion (``consistent with``, ``impression``).
        grade: a named grade when the text gave one (``proliferative``, ``grade 3``).
        temporality: ``historical`` for old, healed or past disease ("healed rib fracture", "history of
            lung cancer"): part of the story, not a current finding to draw.
    """

    model_config = ConfigDict(extra="forbid")

    id: str
    term: str
    label: str
    status: Status
    laterality: Laterality | None = None
    location: list[Concept] = Field(default_factory=list)
    severity: Severity | None = None
    grade: str | None = None
    evidence: str
    start: int
    end: int
    source: Literal["lexicon", "retrieval"] = "lexicon"
    score: float | None = None
    cue: str | None = None
    temporality: Temporality = "current"

    @property
    def drawn(self) -> bool:
        """Whether the image should show it: stated or hedged, and current."""
        return self.status in ("present", "uncertain") and self.temporality == "current"


class VisualFeature(BaseModel):
    model_config = ConfigDict(extra="forbid")

    finding_id: str
    description: str


class Report(BaseModel):
    """Structured radiology report sections."""

    model_config = ConfigDict(extra="forbid")

    history: str
    technique: str
    findings: str
    impression: str


class Reference(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    term: str
    score: float
    query: str


class Plan(BaseModel):
    """Everything the generator and the storage need, and what a reviewer reads.

    ``modality_inferred`` is true when the text did not name a modality and it was told from the
    findings; ``conflicts`` lists contradictory statements, reported and never silently resolved.
    """

    model_config = ConfigDict(extra="forbid")

    request: str
    modality: Concept | None
    modality_inferred: bool = False
    technique: list[Concept] = Field(default_factory=list)
    findings: list[Finding] = Field(default_factory=list)
    normal_study: bool = False
    anatomy: list[Concept] = Field(default_factory=list)
    visual_features: list[VisualFeature] = Field(default_factory=list)
    report: Report
    prompt: str
    negative_prompt: str
    label: str
    references: list[Reference] = Field(default_factory=list)
    conflicts: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    knowledge_version: str
