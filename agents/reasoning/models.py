"""Outputs of the reasoning steps; pydantic so that they round-trip through the graph state as JSON."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from clinisynth.agents.plan import Concept, Finding, Reference


class Localization(BaseModel):
    """Where and how the image was taken, as named in the text.

    Args:
        modality: the modality the text names (``None`` when it names none we cover).
        technique: projections, sequences, planes named in the text.
        anatomy: anatomical structures named in the text, in text order.
        sides: patient sides mentioned anywhere (``left``, ``right``, ``bilateral``).
        unsupported_modality: the words naming a modality the knowledge base does not cover
            (``knee MRI``, ``mammogram``); the planner turns it into an error listing covered ones.
        notes: how decisions were made (ambiguities, assumptions), for the trace.
        references: records resolved through retrieval, with their scores.
    """

    model_config = ConfigDict(extra="forbid")

    modality: Concept | None = None
    technique: list[Concept] = Field(default_factory=list)
    anatomy: list[Concept] = Field(default_factory=list)
    sides: list[str] = Field(default_factory=list)
    unsupported_modality: str | None = None
    notes: list[str] = Field(default_factory=list)
    references: list[Reference] = Field(default_factory=list)


class Pathology(BaseModel):
    """What the text says is (or is not) in the image.

    Args:
        findings: one entry per finding and status, in text order (several mentions of the same
            finding with the same status are merged; opposite statuses are kept apart and reported
            in ``conflicts``).
        signs: imaging signs the text names and does not deny ("ring-enhancing", "dural tail",
            "posterior shadowing"), of the study's modality: they say what to draw.
        normal_study: no present or uncertain finding and the text calls the study normal or
            only denies findings.
        modality: the modality named in the text, or inferred from the findings.
        modality_inferred: the text named no modality and ``modality`` was told from the findings.
        conflicts: contradictory statements, each naming both spans.
        notes: how decisions were made, for the trace.
        references: records resolved through retrieval, with their scores.
    """

    model_config = ConfigDict(extra="forbid")

    findings: list[Finding] = Field(default_factory=list)
    signs: list[Concept] = Field(default_factory=list)
    normal_study: bool = False
    modality: Concept | None = None
    modality_inferred: bool = False
    conflicts: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    references: list[Reference] = Field(default_factory=list)
