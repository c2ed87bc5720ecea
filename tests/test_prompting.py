"""Training captions and inference prompts come from one builder."""

from __future__ import annotations

import pytest

from clinisynth.agents.plan import Finding


def _label_of(knowledge, record_id):
    return knowledge.get(record_id).label


def test_caption_equals_the_inference_prompt_for_one_present_finding(knowledge):
    from clinisynth.agents.prompting import build_prompt, caption_for_label

    record = knowledge.get("finding.pneumothorax")
    caption = caption_for_label(knowledge=knowledge, modality_id="modality.chest_xray", label=record.label)
    finding = Finding(id=record.id, term=record.term, label=record.label, status="present", evidence="x", start=0, end=1)
    bundle = build_prompt(knowledge=knowledge, modality_id="modality.chest_xray", findings=[finding], normal_study=False)
    assert caption == bundle.prompt
    assert caption.startswith("chest radiograph, pneumothorax")
    assert record.visual["modality.chest_xray"].rstrip(".") in caption


def test_caption_for_normal_uses_the_normal_record(knowledge):
    from clinisynth.agents.prompting import caption_for_label

    normal = knowledge.normal_finding_for("modality.oct")
    caption = caption_for_label(knowledge=knowledge, modality_id="modality.oct", label=normal.label)
    assert caption.startswith("optical coherence tomography, normal study")
    if normal.visual.get("modality.oct"):
        assert normal.visual["modality.oct"].rstrip(".") in caption


def test_caption_rejects_unknown_labels_and_modalities(knowledge):
    from clinisynth.agents.prompting import caption_for_label

    with pytest.raises(ValueError, match="labels of that modality: .*pneumothorax"):
        caption_for_label(knowledge=knowledge, modality_id="modality.chest_xray", label="meniscal_tear")
    with pytest.raises(ValueError, match="covered modalities"):
        caption_for_label(knowledge=knowledge, modality_id="modality.knee_mri", label="normal")


def test_every_finding_label_of_every_modality_captions(knowledge):
    from clinisynth.agents.prompting import caption_for_label

    for modality in knowledge.modalities:
        for label in {r.label for r in knowledge.findings_for(modality.id)}:
            caption = caption_for_label(knowledge=knowledge, modality_id=modality.id, label=label)
            assert caption.startswith(modality.term)


def test_absent_findings_only_in_negative_prompt(knowledge):
    from clinisynth.agents.prompting import build_prompt

    findings = [
        Finding(id="finding.pleural_effusion", term="pleural effusion", label=_label_of(knowledge, "finding.pleural_effusion"),
                status="present", laterality="left", severity="moderate", evidence="e", start=0, end=1),
        Finding(id="finding.pneumothorax", term="pneumothorax", label=_label_of(knowledge, "finding.pneumothorax"),
                status="absent", evidence="p", start=5, end=6),
    ]
    bundle = build_prompt(knowledge=knowledge, modality_id="modality.chest_xray", findings=findings, normal_study=False)
    assert "moderate left pleural effusion" in bundle.prompt
    assert "pneumothorax" not in bundle.prompt.lower()
    assert bundle.negative_prompt.startswith(knowledge.get("modality.chest_xray").negative_prompt)
    assert bundle.negative_prompt.endswith("pneumothorax")
    assert bundle.label == _label_of(knowledge, "finding.pleural_effusion")


def test_caption_variants_cover_the_words_a_plan_adds(knowledge):
    from clinisynth.agents.prompting import caption_for_label, caption_variants_for_label
    from clinisynth.api import plan

    variants = caption_variants_for_label(knowledge=knowledge, modality_id="modality.chest_xray", label="pneumonia")
    assert variants[0] == caption_for_label(knowledge=knowledge, modality_id="modality.chest_xray", label="pneumonia")
    assert len(variants) == len(set(variants)) and 16 <= len(variants) <= 64
    heads = [v.split(". ")[0] for v in variants]
    for words in ("left pneumonia", "right pneumonia", "bilateral pneumonia", "PA projection", "AP projection",
                  "in the right lower lobe", "severe", "mild"):
        assert any(words in head for head in heads), words
    # The plan of a typical request words its prompt the way one of the variants does.
    asked = plan("right lower lobe pneumonia, PA chest radiograph").prompt
    closest = max(variants, key=lambda v: len(set(v.split()) & set(asked.split())) / len(set(v.split()) | set(asked.split())))
    assert set(asked.split()) - set(closest.split()) <= {"PA", "projection,"}
    assert all(v.endswith(variants[0].split(". ", 1)[1]) for v in variants)  # same visual description


def test_caption_variants_of_a_normal_study_vary_the_technique_only(knowledge):
    from clinisynth.agents.prompting import caption_variants_for_label

    variants = caption_variants_for_label(knowledge=knowledge, modality_id="modality.chest_xray", label="normal")
    techniques = [r for r in knowledge.of_kind("technique") if "modality.chest_xray" in r.modalities]
    assert len(variants) == 1 + len(techniques)
    assert all("normal study, no abnormality" in v for v in variants)
    assert caption_variants_for_label(knowledge=knowledge, modality_id="modality.chest_xray", label="pneumonia",
                                      max_variants=5).__len__() == 5
    with pytest.raises(ValueError, match="max_variants must be at least 1, got 0"):
        caption_variants_for_label(knowledge=knowledge, modality_id="modality.chest_xray", label="normal",
                                   max_variants=0)
