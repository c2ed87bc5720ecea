"""Reasoning over clinical text: assertion status with scope, side, place, severity, modality, conflicts."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from clinisynth.agents.plan import Finding


def read(reasoner, text):
    localization, pathology = reasoner.analyze(text)
    return localization, pathology, {f.id: f for f in pathology.findings}


def test_negation_scope_stops_at_but(reasoner):
    _, _, found = read(reasoner, "No pleural effusion but large left pneumothorax.")
    assert found["finding.pleural_effusion"].status == "absent"
    assert found["finding.pleural_effusion"].cue.lower() == "no"
    assert found["finding.pneumothorax"].status == "present"
    assert found["finding.pneumothorax"].laterality == "left"
    assert found["finding.pneumothorax"].severity == "severe"


def test_negation_scope_stops_at_sentence_and_new_statement(reasoner):
    _, _, found = read(reasoner, "No pneumothorax. Small right pleural effusion")
    assert found["finding.pneumothorax"].status == "absent"
    assert found["finding.pleural_effusion"].status == "present"
    _, _, found = read(reasoner, "no effusion, large pneumothorax")
    assert found["finding.pleural_effusion"].status == "absent"
    assert found["finding.pneumothorax"].status == "present"


def test_negation_covers_a_list(reasoner):
    _, pathology, found = read(reasoner, "No focal consolidation, pleural effusion or pneumothorax.")
    assert {f.status for f in pathology.findings} == {"absent"}
    assert {"finding.consolidation", "finding.pleural_effusion", "finding.pneumothorax"} <= set(found)
    assert pathology.normal_study


@pytest.mark.parametrize(
    "text, finding_id",
    [
        ("cannot exclude pneumonia", "finding.pneumonia"),
        ("pneumonia cannot be excluded", "finding.pneumonia"),
        ("likely atelectasis", "finding.atelectasis"),
        ("opacity concerning for pneumonia", "finding.pneumonia"),
        ("? pneumothorax", "finding.pneumothorax"),
        ("rule out pneumothorax", "finding.pneumothorax"),
    ],
)
def test_uncertainty_cues(reasoner, text, finding_id):
    _, _, found = read(reasoner, text)
    assert found[finding_id].status == "uncertain"


@pytest.mark.parametrize(
    "text, finding_id",
    [
        ("without pleural effusion", "finding.pleural_effusion"),
        ("right pneumothorax has resolved", "finding.pneumothorax"),
        ("resolved pneumonia", "finding.pneumonia"),
        ("free of pneumothorax", "finding.pneumothorax"),
        ("negative for pulmonary embolism", "finding.pulmonary_embolism"),
        ("no evidence of consolidation", "finding.consolidation"),
        ("Pleural effusion: none.", "finding.pleural_effusion"),
    ],
)
def test_negation_and_resolution_cues(reasoner, text, finding_id):
    _, _, found = read(reasoner, text)
    assert found[finding_id].status == "absent"


def test_list_of_cued_items_leaves_the_last_positive(reasoner):
    _, _, found = read(reasoner, "OCT: no CNV, no SRF, no IRF, dry AMD with drusen.")
    assert found["finding.subretinal_fluid"].status == "absent"
    assert found["finding.choroidal_neovascularisation"].status == "absent"
    assert found["finding.drusen"].status == "present"


def test_laterality_words_and_lobe_abbreviations(reasoner):
    _, _, found = read(reasoner, "bibasilar atelectasis")
    assert found["finding.atelectasis"].laterality == "bilateral"
    _, _, found = read(reasoner, "RLL consolidation")
    consolidation = found["finding.consolidation"]
    assert consolidation.laterality == "right"
    assert [c.id for c in consolidation.location] == ["anatomy.right_lower_lobe"]
    _, _, found = read(reasoner, "? LLL pneumonia")
    assert found["finding.pneumonia"].laterality == "left"
    assert found["finding.pneumonia"].location[0].id == "anatomy.left_lower_lobe"


def test_attributes_go_to_the_right_finding(reasoner):
    _, _, found = read(reasoner, "Small right pleural effusion and large left pneumothorax; moderate cardiomegaly.")
    assert (found["finding.pleural_effusion"].laterality, found["finding.pleural_effusion"].severity) == ("right", "mild")
    assert (found["finding.pneumothorax"].laterality, found["finding.pneumothorax"].severity) == ("left", "severe")
    assert found["finding.cardiomegaly"].severity == "moderate"
    assert found["finding.cardiomegaly"].laterality is None
    _, _, found = read(reasoner, "pneumonia in the right lower lobe")
    assert found["finding.pneumonia"].laterality == "right"


def test_grades_and_retinopathy_stages(reasoner):
    _, _, found = read(reasoner, "Fundus photograph: severe NPDR, right eye")
    dr = found["finding.diabetic_retinopathy"]
    assert (dr.severity, dr.laterality) == ("severe", "right")
    _, _, found = read(reasoner, "OS: mild NPDR")
    assert found["finding.diabetic_retinopathy"].severity == "mild"
    assert found["finding.diabetic_retinopathy"].laterality == "left"


@pytest.mark.parametrize("text", ["normal chest radiograph", "CXR: no acute cardiopulmonary process.", "Unremarkable MRI of the brain."])
def test_normal_studies(reasoner, text):
    _, pathology, _ = read(reasoner, text)
    assert pathology.normal_study
    assert not [f for f in pathology.findings if f.status in ("present", "uncertain")]
    assert pathology.modality is not None


def test_modality_inferred_from_findings_with_note(reasoner):
    localization, pathology, _ = read(reasoner, "drusen")
    assert localization.modality is None
    assert pathology.modality_inferred
    assert pathology.modality.id in ("modality.oct", "modality.fundus")
    assert any("inferred" in note for note in pathology.notes)
    assert any("ambiguous" in note for note in pathology.notes)
    _, pathology, _ = read(reasoner, "glioblastoma with midline shift")
    assert pathology.modality.id == "modality.brain_mri" and pathology.modality_inferred


def test_named_modality_is_not_inferred(reasoner):
    localization, pathology, _ = read(reasoner, "CXR PA: small left pneumothorax")
    assert localization.modality.id == "modality.chest_xray"
    assert not pathology.modality_inferred
    assert [c.id for c in localization.technique] == ["technique.pa_projection"]


@pytest.mark.parametrize("text", ["knee MRI with a torn meniscus", "Mammogram: spiculated mass", "abdominal CT with appendicitis", "CT head: subdural"])
def test_uncovered_modality_is_flagged(reasoner, text):
    localization, pathology, _ = read(reasoner, text)
    assert localization.modality is None
    assert localization.unsupported_modality
    assert pathology.modality is None and not pathology.findings


def test_covered_studies_come_from_the_modality_records(tmp_path):
    import shutil

    from clinisynth.agents.reasoning import Reasoner, vocab
    from clinisynth.knowledge import DEFAULT_DATA_DIR, load_knowledge

    data = tmp_path / "data"
    shutil.copytree(DEFAULT_DATA_DIR, data)
    path = data / "modalities.yaml"
    text = path.read_text(encoding="utf-8")
    assert text.count("regions: [chest]") == 2 and text.count("family: us\n    regions: [breast]\n    default_for_family: true\n") == 1
    text = text.replace("family: ct\n    regions: [chest]", "family: ct\n    regions: [chest, abdomen]")
    text = text.replace("family: us\n    regions: [breast]\n    default_for_family: true\n", "family: us\n    regions: [breast]\n")
    path.write_text(text, encoding="utf-8")
    knowledge = load_knowledge(data)
    for record in knowledge.modalities:  # only words the matchers can produce
        assert record.family is None or record.family in vocab.FAMILY_WORDS.values()
        assert set(record.regions) <= set(vocab.REGION_WORDS.values())
    reasoner = Reasoner(knowledge=knowledge)
    localization = reasoner.localize("abdominal CT with consolidation")
    assert localization.modality.id == "modality.chest_ct" and localization.unsupported_modality is None
    assert "'abdominal CT' read as CT of the chest" in localization.notes
    # A bare family word with no default_for_family record is no named modality (nor an unsupported one).
    localization = reasoner.localize("ultrasound: irregular hypoechoic mass")
    assert localization.modality is None and localization.unsupported_modality is None


def test_abbreviation_case_matters(reasoner):
    localization, _, _ = read(reasoner, "chest x-ray on 3 Oct: no effusion")
    assert localization.modality.id == "modality.chest_xray"


def test_conflicts_are_reported_not_resolved(reasoner):
    _, pathology, _ = read(reasoner, "No pneumothorax. Large pneumothorax on the right.")
    statuses = sorted(f.status for f in pathology.findings if f.id == "finding.pneumothorax")
    assert statuses == ["absent", "present"]
    assert len(pathology.conflicts) == 1 and "pneumothorax" in pathology.conflicts[0].lower()
    # Different sides are not a conflict.
    _, pathology, _ = read(reasoner, "no left pleural effusion; small right pleural effusion")
    assert pathology.conflicts == []


def test_evidence_points_into_the_text(reasoner):
    text = "  Portable AP chest:  moderate RIGHT pleural effusion, no PTX"
    _, pathology, _ = read(reasoner, text)
    assert pathology.findings
    for finding in pathology.findings:
        assert text[finding.start : finding.end] == finding.evidence


def test_all_caps_telegraphic(reasoner):
    _, _, found = read(reasoner, "CXR. NO PTX. LG L EFFUSION. CARDIOMEGALY.")
    assert found["finding.pneumothorax"].status == "absent"
    assert found["finding.pleural_effusion"].status == "present"
    assert found["finding.cardiomegaly"].status == "present"


def test_models_round_trip_as_json(reasoner):
    from clinisynth.agents.reasoning import Localization, Pathology

    localization, pathology = reasoner.analyze("Small right pleural effusion, possible pneumonia")
    assert Localization.model_validate(localization.model_dump(mode="json")) == localization
    assert Pathology.model_validate(pathology.model_dump(mode="json")) == pathology


# ---------------------------------------------------------------- retrieval (fake and real)


@dataclass
class FakeHit:
    id: str
    score: float


class FakeRetriever:
    """Answers from a table of query substrings; records every query it was asked."""

    def __init__(self, table):
        self.table = table
        self.queries = []

    def search(self, query, *, k=5, kinds=None, modality=None):
        self.queries.append(query)
        return [FakeHit(record_id, score) for key, (record_id, score) in self.table.items() if key in query.lower()][:k]


def test_one_edit_misspellings_are_read_by_the_lexicon(reasoner):
    localization, pathology = reasoner.analyze("Chest radiograph: pleural efusion on the left, small pnuemothorax")
    found = {f.id: f for f in pathology.findings}
    assert found["finding.pleural_effusion"].source == "lexicon"
    assert found["finding.pleural_effusion"].evidence == "pleural efusion"
    assert found["finding.pleural_effusion"].laterality == "left"
    assert found["finding.pneumothorax"].severity == "mild"
    assert any("'efusion' read as the misspelt 'effusion'" in note for note in localization.notes)


def test_ordinary_words_near_a_record_word_are_not_corrected(reasoner):
    # "thoracotomy" is one edit from "thoracostomy", "injection" from "infection", "include" from "included"
    localization, pathology = reasoner.analyze("Chest radiograph after left thoracotomy and contrast injection; findings include no effusion.")
    assert not any("misspelt" in note for note in localization.notes)
    assert {f.id: f.status for f in pathology.findings} == {"finding.pleural_effusion": "absent"}


def test_retrieval_resolves_misspelling_above_threshold(knowledge):
    from clinisynth.agents.reasoning import Reasoner

    fake = FakeRetriever({"effuzzion": ("finding.pleural_effusion", 0.83)})
    reasoner = Reasoner(knowledge=knowledge, retriever=fake, retrieval_threshold=0.6)
    localization, pathology = reasoner.analyze("Chest radiograph: pleural effuzzion on the left")
    (finding,) = pathology.findings
    assert finding.id == "finding.pleural_effusion" and finding.source == "retrieval" and finding.score == pytest.approx(0.83)
    assert finding.laterality == "left"
    assert [r.id for r in pathology.references] == ["finding.pleural_effusion"]
    assert "effuzzion" in pathology.references[0].query


def test_retrieval_below_threshold_is_ignored_with_a_note(knowledge):
    from clinisynth.agents.reasoning import Reasoner

    fake = FakeRetriever({"wobbly": ("finding.pneumothorax", 0.41)})
    reasoner = Reasoner(knowledge=knowledge, retriever=fake, retrieval_threshold=0.6)
    _, pathology = reasoner.analyze("chest x-ray: wobbly shadow")
    assert pathology.findings == []
    assert pathology.references == []
    _, pathology = reasoner.analyze("chest x-ray: wobbly shadow")
    assert len(fake.queries) == 1  # parsed once, cached


def test_retriever_only_sees_unresolved_text_with_abbreviations_expanded(knowledge):
    from clinisynth.agents.reasoning import Reasoner

    fake = FakeRetriever({})
    reasoner = Reasoner(knowledge=knowledge, retriever=fake)
    reasoner.analyze("Small right pleural effusion. No pneumothorax.")
    assert fake.queries == []
    reasoner.analyze("LLL smudgy blotch")
    assert fake.queries and "left lower lobe" in fake.queries[0] and "LLL" not in fake.queries[0]


def test_real_retriever_resolves_a_paraphrase(retriever, knowledge):
    from clinisynth.agents.reasoning import Reasoner

    reasoner = Reasoner(knowledge=knowledge, retriever=retriever, retrieval_threshold=0.6)
    _, pathology = reasoner.analyze("chest x-ray: air leak around the lung")
    assert [f.id for f in pathology.findings] == ["finding.pneumothorax"]
    assert pathology.findings[0].source == "retrieval"
    assert pathology.references[0].score >= 0.6


# ---------------------------------------------------------------- report, visual map, prompt


def test_report_visual_map_and_prompt(reasoner, knowledge):
    from clinisynth.agents.reasoning import build_prompt, build_report, map_visual_features

    text = "PA chest radiograph: moderate right pleural effusion. No pneumothorax."
    localization, pathology = reasoner.analyze(text)
    report = build_report(knowledge=knowledge, request=text, modality=pathology.modality, technique=localization.technique,
                          findings=pathology.findings, normal_study=pathology.normal_study)
    assert "Posteroanterior" in report.technique
    assert "Moderate right pleural effusion" in report.findings and "No pneumothorax" in report.findings
    assert "pleural effusion" in report.impression.lower() and "pneumothorax" not in report.impression.lower()
    features = map_visual_features(knowledge=knowledge, modality_id="modality.chest_xray", findings=pathology.findings)
    assert [f.finding_id for f in features] == ["finding.pleural_effusion"]
    assert features[0].description == knowledge.get("finding.pleural_effusion").visual["modality.chest_xray"]
    bundle = build_prompt(knowledge=knowledge, modality_id="modality.chest_xray", findings=pathology.findings,
                          normal_study=False, technique=localization.technique)
    assert bundle.prompt.startswith("chest radiograph, PA projection, moderate right pleural effusion")
    assert "pneumothorax" not in bundle.prompt.lower()
    assert "pneumothorax" in bundle.negative_prompt
    assert bundle.label == knowledge.get("finding.pleural_effusion").label


def test_label_is_first_present_finding_or_normal(reasoner, knowledge):
    from clinisynth.agents.reasoning import build_prompt

    _, pathology = reasoner.analyze("CXR: possible pneumonia. Small left pneumothorax. Cardiomegaly.")
    bundle = build_prompt(knowledge=knowledge, modality_id=pathology.modality.id, findings=pathology.findings, normal_study=False)
    assert bundle.label == knowledge.get("finding.pneumothorax").label
    assert "possible pneumonia" in bundle.prompt
    _, pathology = reasoner.analyze("normal chest radiograph")
    bundle = build_prompt(knowledge=knowledge, modality_id=pathology.modality.id, findings=pathology.findings, normal_study=True)
    assert bundle.label == knowledge.normal_finding_for("modality.chest_xray").label


def test_report_without_modality(knowledge):
    from clinisynth.agents.reasoning import build_report

    finding = Finding(id="finding.pneumothorax", term="pneumothorax", label="pneumothorax", status="uncertain", evidence="ptx", start=0, end=3)
    report = build_report(knowledge=knowledge, request="ptx?", modality=None, technique=[], findings=[finding], normal_study=False)
    assert report.technique == "Modality not stated."
    assert "Possible pneumothorax" in report.findings
