"""Schema of the reference records kept as YAML data files under ``knowledge/data``.

Every record has a stable id of the form ``<kind>.<snake_case_name>`` (for example
``finding.pleural_effusion`` or ``anatomy.right_lower_lobe``). References between records are by id
and are checked by :mod:`clinisynth.knowledge.validate`.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

RecordKind = Literal["anatomy", "finding", "sign", "modality", "technique"]
Severity = Literal["mild", "moderate", "severe"]
Side = Literal["left", "right", "bilateral"]

ID_PATTERN = re.compile(r"^(anatomy|finding|sign|modality|technique)\.[a-z0-9]+(?:_[a-z0-9]+)*$")
LABEL_PATTERN = re.compile(r"^[a-z0-9]+(?:_[a-z0-9]+)*$")
#: Lower-case words separated by single spaces: a modality's family and regions ("nuclear medicine").
WORDS_PATTERN = re.compile(r"^[a-z0-9]+(?: [a-z0-9]+)*$")
#: A DICOM Modality code (VR CS, defined terms of PS3.3 C.7.3.1.1.1).
DICOM_MODALITY_PATTERN = re.compile(r"^[A-Z0-9]{2,16}$")


class Codes(BaseModel):
    """External codes, filled only where the code is known for certain."""

    model_config = ConfigDict(extra="forbid")

    snomed_ct: str | None = Field(default=None, pattern=r"^\d{6,18}$")
    radlex: str | None = Field(default=None, pattern=r"^RID\d+$")


class Record(BaseModel):
    """One reference concept: an anatomical structure, finding, imaging sign, modality or technique.

    Args:
        id: stable id ``<kind>.<name>``; the prefix must equal ``kind``.
        kind: what the record describes.
        term: preferred term, as a radiologist would write it.
        synonyms: other words for the same concept (lower-case matching is applied at load time).
        abbreviations: short forms (``RLL``, ``PTX``); matched case-sensitively when 2 letters or
            fewer, case-insensitively otherwise.
        modalities: ids of the modalities the concept appears in (empty for a modality record).
        locations: for findings and signs, ids of the anatomy where it typically occurs.
        signs: for findings, ids of the imaging signs that show it.
        enlargement_of: for findings, ids of the anatomy whose stated enlargement asserts the finding
            ("the heart is large", "borderline heart size" -> cardiomegaly).
        post_procedural: for findings, a device or the lasting result of a procedure (sternotomy wires,
            lobectomy): "prior sternotomy" states what the image shows now, so words that date it do not
            make it historical.
        parent: id of a broader record of the same kind (``anatomy.right_lung`` for a lobe).
        side: for anatomy that is intrinsically one-sided (``anatomy.right_lower_lobe``).
        lateralized: whether the concept can be left, right or bilateral.
        visual: per modality id, a description of how the concept looks in that modality; used for
            the generator prompt.
        severity: severity level -> words that express it for this finding (``small`` -> mild).
        label: class label used for storage folders and classifiers (findings and modalities).
        normal: true for the "no finding" record of a modality.
        definition: one-sentence definition for reviewers.
        codes: SNOMED CT / RadLex codes, only where certain.
        technique_text: for modality / technique records, the sentence used in the report's
            Technique section.
        negative_prompt: for modality records, what the generator must avoid.
        family: for modality records, the family of study it is (``xray``, ``ct``, ``mri``, ``us``: the
            family words the reasoner recognises, such as "CT" or "ultrasound"). A study named by its
            family and a region ("CT abdomen") is covered only by the record listing both.
        regions: for modality records with a ``family``, the body regions it covers (``chest``,
            ``brain``); a region named without a study's name also votes for these records when the
            modality is inferred.
        default_for_family: for modality records with a ``family``, the record a bare family word
            with no region ("an ultrasound") is read as; one per family at most.
        dicom_modalities: for modality records, the DICOM Modality (0008,0060) codes (CID 29: ``CR``,
            ``DX``, ``CT``, ``MR``, ``US``, ...) of the files the record accepts; ``clinisynth prepare``
            quarantines (or with ``--strict`` refuses) a DICOM filed under this modality whose tag names another.
    """

    model_config = ConfigDict(extra="forbid")

    id: str
    kind: RecordKind
    term: str = Field(min_length=1)
    synonyms: list[str] = Field(default_factory=list)
    abbreviations: list[str] = Field(default_factory=list)
    modalities: list[str] = Field(default_factory=list)
    locations: list[str] = Field(default_factory=list)
    signs: list[str] = Field(default_factory=list)
    enlargement_of: list[str] = Field(default_factory=list)
    post_procedural: bool = False
    parent: str | None = None
    side: Side | None = None
    lateralized: bool = False
    visual: dict[str, str] = Field(default_factory=dict)
    severity: dict[Severity, list[str]] = Field(default_factory=dict)
    label: str | None = None
    normal: bool = False
    definition: str | None = None
    codes: Codes = Field(default_factory=Codes)
    technique_text: str | None = None
    negative_prompt: str | None = None
    family: str | None = Field(default=None, pattern=WORDS_PATTERN.pattern)
    regions: list[str] = Field(default_factory=list)
    default_for_family: bool = False
    dicom_modalities: list[str] = Field(default_factory=list)

    @field_validator("id")
    @classmethod
    def _id_shape(cls, value: str) -> str:
        if not ID_PATTERN.match(value):
            raise ValueError(
                f"id {value!r} must look like '<kind>.<snake_case_name>' with kind one of "
                "anatomy, finding, sign, modality, technique"
            )
        return value

    @field_validator("label")
    @classmethod
    def _label_shape(cls, value: str | None) -> str | None:
        if value is not None and not LABEL_PATTERN.match(value):
            raise ValueError(f"label {value!r} must be snake_case ascii (it becomes a folder name)")
        return value

    @field_validator("synonyms", "abbreviations")
    @classmethod
    def _no_blank_terms(cls, values: list[str]) -> list[str]:
        for value in values:
            if not value.strip():
                raise ValueError("synonyms and abbreviations must not contain blank strings")
        return values

    @field_validator("regions")
    @classmethod
    def _region_shape(cls, values: list[str]) -> list[str]:
        for value in values:
            if not WORDS_PATTERN.match(value):
                raise ValueError(f"region {value!r} must be lower-case words separated by single spaces")
        if len(set(values)) != len(values):
            raise ValueError(f"regions {values} name a region twice")
        return values

    @field_validator("dicom_modalities")
    @classmethod
    def _dicom_code_shape(cls, values: list[str]) -> list[str]:
        for value in values:
            if not DICOM_MODALITY_PATTERN.match(value):
                raise ValueError(f"DICOM modality code {value!r} must be 2 to 16 upper-case letters or digits, like 'CR' or 'MR'")
        if len(set(values)) != len(values):
            raise ValueError(f"dicom_modalities {values} name a code twice")
        return values

    @model_validator(mode="after")
    def _kind_rules(self) -> "Record":
        prefix = self.id.split(".", 1)[0]
        if prefix != self.kind:
            raise ValueError(f"id {self.id!r} has prefix {prefix!r} but kind is {self.kind!r}")
        if self.kind == "finding" and self.label is None:
            raise ValueError(f"finding {self.id!r} needs a label (the storage / classifier class)")
        if self.kind == "modality" and self.label is None:
            raise ValueError(f"modality {self.id!r} needs a label (the storage folder name)")
        if self.kind in ("finding", "sign") and not self.modalities:
            raise ValueError(f"{self.kind} {self.id!r} must list at least one modality")
        if self.post_procedural and self.kind != "finding":
            raise ValueError(f"only findings can be post_procedural, not {self.id!r}")
        if self.enlargement_of and self.kind != "finding":
            raise ValueError(f"only findings can name enlargement_of anatomy, not {self.id!r}")
        if self.normal and self.kind != "finding":
            raise ValueError(f"only findings can be marked normal, not {self.id!r}")
        if (self.family or self.regions or self.default_for_family) and self.kind != "modality":
            raise ValueError(f"only modalities can name a family, regions or default_for_family, not {self.id!r}")
        if (self.regions or self.default_for_family) and self.family is None:
            raise ValueError(f"modality {self.id!r} lists regions or default_for_family but names no family")
        if self.dicom_modalities and self.kind != "modality":
            raise ValueError(f"only modalities can list dicom_modalities, not {self.id!r}")
        return self


class KnowledgeFile(BaseModel):
    """One YAML data file: a header plus its records."""

    model_config = ConfigDict(extra="forbid")

    version: str = Field(pattern=r"^\d+\.\d+\.\d+$")
    description: str = ""
    records: list[Record]
