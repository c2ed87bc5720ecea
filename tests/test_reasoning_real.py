"""Regressions found by reading real-report phrasing (issue 3): bare head words after modality
inference, never "normal" without the text saying so, the stated diagnosis as the label, imaging
signs as descriptors, distribution words that are not severities, device removal."""

from __future__ import annotations

import pytest

from clinisynth.agents.plan import Finding


def read(reasoner, text):
    localization, pathology = reasoner.analyze(text)
    return localization, pathology, {f.id: f for f in pathology.findings}


def bundle_for(reasoner, knowledge, text):
    """What the planner builds from a text, with the signs passed on (see README: signs)."""
    from clinisynth.agents.reasoning import build_prompt, map_visual_features

    localization, pathology = reasoner.analyze(text)
    modality_id = pathology.modality.id if pathology.modality else None
    bundle = build_prompt(
        knowledge=knowledge,
        modality_id=modality_id,
        findings=pathology.findings,
        normal_study=pathology.normal_study,
        technique=localization.technique,
        signs=pathology.signs,
        anatomy=localization.anatomy,
    )
    features = map_visual_features(knowledge=knowledge, modality_id=modality_id, findings=pathology.findings, signs=pathology.signs)
    return pathology, bundle, features


# 1 ---------------------------------------------------------------- bare head words, inferred modality


def test_bare_metastasis_resolves_after_modality_inference(reasoner):
    text = "ring-enhancing lesion in the right frontal lobe suspicious for metastasis"
    _, pathology, found = read(reasoner, text)
    assert pathology.modality.id == "modality.brain_mri"
    assert pathology.modality_inferred
    metastasis = found["finding.brain_metastasis"]
    assert metastasis.status == "uncertain"
    assert metastasis.laterality == "right"
    assert [c.id for c in metastasis.location] == ["anatomy.right_frontal_lobe"]
    assert metastasis.evidence == "metastasis"
    # the generic word "lesion" is not read as some "<organ> lesion" record
    assert set(found) == {"finding.brain_metastasis"}


def test_bare_head_word_follows_the_named_modality(reasoner):
    _, pathology, found = read(reasoner, "CT chest: several small nodules, likely metastases.")
    assert pathology.modality.id == "modality.chest_ct"
    assert "finding.brain_metastasis" not in found
    assert found["finding.pulmonary_metastases"].status == "uncertain"


def test_head_word_fallback_only_adds_organ_words(reasoner):
    # "dry AMD" is a fundus record; OCT's "wet AMD" (CNV) ends in the same word but means the opposite.
    _, _, found = read(reasoner, "OCT both eyes: soft drusen, compatible with dry AMD. No subretinal fluid.")
    assert "finding.choroidal_neovascularisation" not in found
    assert found["finding.drusen"].status == "present"


# 2 ---------------------------------------------------------------- never "normal" unless said


def test_nothing_named_is_unspecified_not_normal(knowledge, reasoner):
    from clinisynth.agents.prompting import UNSPECIFIED_LABEL, build_prompt

    bundle = build_prompt(knowledge=knowledge, modality_id="modality.brain_mri", findings=[], normal_study=False)
    assert bundle.label == UNSPECIFIED_LABEL == "unspecified"
    assert "normal" not in bundle.prompt.lower()
    assert bundle.prompt.startswith(knowledge.get("modality.brain_mri").term)

    pathology, bundle, _ = bundle_for(reasoner, knowledge, "MRI brain, axial FLAIR through the left temporal lobe.")
    assert not pathology.findings and not pathology.normal_study
    assert bundle.label == "unspecified"
    assert "normal" not in bundle.prompt.lower()
    assert "left temporal lobe" in bundle.prompt.lower()


def test_normal_study_keeps_the_normal_label(knowledge, reasoner):
    pathology, bundle, _ = bundle_for(reasoner, knowledge, "Normal chest radiograph.")
    assert pathology.normal_study
    assert bundle.label == knowledge.normal_finding_for("modality.chest_xray").label
    assert "normal study" in bundle.prompt


# 3 ---------------------------------------------------------------- the stated diagnosis is the label


def test_consistent_with_diagnosis_is_the_label(knowledge, reasoner):
    pathology, bundle, _ = bundle_for(reasoner, knowledge, "OCT right eye: subretinal fluid and PED, consistent with active CNV")
    found = {f.id: f for f in pathology.findings}
    assert found["finding.choroidal_neovascularisation"].status == "present"
    assert found["finding.subretinal_fluid"].status == "present"  # supporting findings stay in the plan
    assert bundle.label == knowledge.get("finding.choroidal_neovascularisation").label


def test_hyperintensities_attributed_to_demyelination_are_not_small_vessel_disease(knowledge, reasoner):
    text = "Periventricular white matter hyperintensities, some ovoid, consistent with demyelination."
    pathology, bundle, _ = bundle_for(reasoner, knowledge, text)
    assert {f.id for f in pathology.findings} == {"finding.demyelination"}
    assert bundle.label == knowledge.get("finding.demyelination").label
    # with a hedged attribution to small vessel disease it is uncertain, not present
    _, _, found = read(reasoner, "Periventricular white matter hyperintensities, likely chronic microvascular ischemic change.")
    assert found["finding.small_vessel_disease"].status == "uncertain"


def test_generic_parent_is_not_a_second_finding_and_hands_over_its_side(reasoner):
    _, _, found = read(reasoner, "MRI brain: dural-based enhancing mass along the left convexity with a dural tail, compatible with meningioma.")
    assert "finding.brain_tumour" not in found
    assert found["finding.meningioma"].status == "present"
    assert found["finding.meningioma"].laterality == "left"


def test_impression_section_gives_the_label(knowledge, reasoner):
    text = "FINDINGS: Patchy opacity in the left lower lobe. No effusion. IMPRESSION: Left lower lobe pneumonia."
    _, bundle, _ = bundle_for(reasoner, knowledge, text)
    assert bundle.label == knowledge.get("finding.pneumonia").label


def test_hedged_diagnosis_of_the_lesion_beats_a_secondary_finding_but_not_a_certain_observation(knowledge, reasoner):
    text = "MRI brain: ring-enhancing lesion in the right frontal lobe suspicious for metastasis, with surrounding vasogenic oedema."
    _, bundle, _ = bundle_for(reasoner, knowledge, text)
    assert bundle.label == knowledge.get("finding.brain_metastasis").label
    _, bundle, _ = bundle_for(reasoner, knowledge, "Chest radiograph: right lower lobe consolidation, concerning for pneumonia.")
    assert bundle.label == knowledge.get("finding.consolidation").label


def test_choose_label_reads_cues_in_text_order(knowledge):
    from clinisynth.agents.prompting import choose_label

    def finding(record_id, status, start, cue=None):
        record = knowledge.get(record_id)
        return Finding(id=record.id, term=record.term, label=record.label, status=status, evidence="x", start=start, end=start + 1, cue=cue)

    plain = [finding("finding.pleural_effusion", "present", 0), finding("finding.pneumonia", "uncertain", 10, cue="likely")]
    # a plain hedge ("likely") is not a diagnosis: the present finding before it keeps the label
    assert choose_label(knowledge=knowledge, modality_id="modality.chest_xray", findings=plain, normal_study=False) == knowledge.get("finding.pleural_effusion").label
    stated = [*plain, finding("finding.cardiomegaly", "present", 20, cue="consistent with")]
    assert choose_label(knowledge=knowledge, modality_id="modality.chest_xray", findings=stated, normal_study=False) == knowledge.get("finding.cardiomegaly").label


# 4 ---------------------------------------------------------------- signs are drawn


@pytest.mark.parametrize(
    ("text", "sign_ids"),
    [
        (
            "Right breast US: irregular hypoechoic mass with spiculated margins and posterior shadowing, BI-RADS 5.",
            {"sign.breast_margin_spiculated", "sign.breast_posterior_shadowing"},
        ),
        ("MRI brain: extra-axial mass with a dural tail, compatible with meningioma.", {"sign.brain_dural_tail"}),
        ("Chest radiograph: right lower lobe consolidation with air bronchograms.", {"sign.air_bronchogram"}),
        ("ring-enhancing lesion in the right frontal lobe suspicious for metastasis", {"sign.brain_ring_enhancement"}),
    ],
)
def test_signs_named_become_descriptors_and_visual_features(knowledge, reasoner, text, sign_ids):
    pathology, bundle, features = bundle_for(reasoner, knowledge, text)
    assert sign_ids <= {c.id for c in pathology.signs}
    for sign_id in sign_ids:
        record = knowledge.get(sign_id)
        assert record.term.lower() in bundle.prompt.lower()
        assert sign_id in {f.finding_id for f in features}


def test_denied_sign_is_not_drawn(reasoner):
    _, pathology, _ = read(reasoner, "Chest radiograph: right lower lobe consolidation without air bronchograms.")
    assert "sign.air_bronchogram" not in {c.id for c in pathology.signs}


# 5 ---------------------------------------------------------------- distribution is not severity


@pytest.mark.parametrize(
    ("text", "finding_id"),
    [
        ("Patchy opacity at the left lung base.", "finding.lung_opacity"),
        ("Scattered patchy airspace opacities in both lungs.", "finding.lung_opacity"),
        ("MRI brain: chronic small vessel ischemic changes.", "finding.small_vessel_disease"),
        ("Right pleural effusion tracking into the minor fissure.", "finding.pleural_effusion"),
        ("MRI brain: acute infarct with intermediate T2 signal in the left frontal lobe.", "finding.acute_infarct"),
    ],
)
def test_words_that_are_not_sizes_give_no_severity(reasoner, text, finding_id):
    _, _, found = read(reasoner, text)
    assert found[finding_id].severity is None


def test_real_severity_words_still_count(reasoner):
    _, _, found = read(reasoner, "Large patchy opacity in the right lung.")
    assert found["finding.lung_opacity"].severity == "severe"


# devices ---------------------------------------------------------------------------------------


def test_device_removed_is_absent_and_tip_not_seen_is_not_negation(reasoner):
    _, _, found = read(reasoner, "Interval removal of the endotracheal tube. Right IJ catheter has been removed.")
    assert found["finding.endotracheal_tube"].status == "absent"
    assert found["finding.central_venous_catheter"].status == "absent"
    _, _, found = read(reasoner, "Nasogastric tube courses below the diaphragm, tip not seen. No pneumothorax.")
    assert found["finding.nasogastric_tube"].status == "present"
    assert found["finding.pneumothorax"].status == "absent"
