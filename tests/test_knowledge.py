"""Schema, loader and referential integrity of the knowledge base."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest
import yaml

from clinisynth.knowledge import DEFAULT_DATA_DIR, KnowledgeError, content_hash, load_knowledge

MODALITY_LABELS = {"chest_xray", "chest_ct", "brain_mri", "oct", "fundus", "dermoscopy", "breast_ultrasound"}


def _write(folder: Path, records: list[dict], name: str = "extra.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump({"version": "0.1.0", "records": records}), encoding="utf-8")
    return path


@pytest.fixture
def data_copy(tmp_path) -> Path:
    folder = tmp_path / "data"
    shutil.copytree(DEFAULT_DATA_DIR, folder)
    return folder


def test_packaged_knowledge_is_valid_and_covers_every_modality(knowledge):
    labels = {record.label for record in knowledge.modalities}
    assert labels == MODALITY_LABELS
    assert len({record.id for record in knowledge.records}) == len(knowledge.records)


def test_every_covered_modality_has_findings_and_a_normal_record(knowledge):
    counts = Counter(m for record in knowledge.of_kind("finding") for m in record.modalities)
    for modality in knowledge.modalities:
        assert counts[modality.id] >= 3, f"{modality.id} has only {counts[modality.id]} findings"
        normal = knowledge.normal_finding_for(modality.id)
        assert normal is not None and normal.label == "normal", modality.id


def test_chest_radiograph_covers_the_chexpert_and_chestxray14_observations(knowledge):
    labels = {record.label for record in knowledge.findings_for("modality.chest_xray")}
    expected = {"atelectasis", "cardiomegaly", "pleural_effusion", "infiltration", "mass", "nodule", "pneumonia",
                "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis", "pleural_thickening", "hernia",
                "enlarged_cardiomediastinum", "lung_lesion", "lung_opacity", "fracture", "support_devices"}
    assert expected <= labels, f"missing: {sorted(expected - labels)}"


def test_findings_describe_how_they_look_in_each_of_their_modalities(knowledge):
    for record in knowledge.of_kind("finding"):
        for modality in record.modalities:
            assert len(record.visual.get(modality, "")) >= 10, f"{record.id} lacks a visual description for {modality}"


def test_knowledge_base_is_large_enough(knowledge):
    assert len(knowledge.records) >= 400


def test_duplicate_id_across_files_is_reported_with_both_files(data_copy):
    original = load_knowledge(data_copy).records[0].model_dump(exclude_defaults=True)
    _write(data_copy, [original])
    with pytest.raises(KnowledgeError, match=rf"{original['id']}.*defined 2 times"):
        load_knowledge(data_copy)


def test_unresolved_reference_names_the_record_and_the_target(data_copy):
    _write(data_copy, [{"id": "finding.test_thing", "kind": "finding", "term": "test thing", "label": "test_thing",
                        "modalities": ["modality.chest_xray"], "locations": ["anatomy.does_not_exist"],
                        "visual": {"modality.chest_xray": "a round test opacity"}}])
    with pytest.raises(KnowledgeError, match=r"finding.test_thing: locations refers to unknown id 'anatomy.does_not_exist'"):
        load_knowledge(data_copy)


def test_reference_to_wrong_kind_is_reported(data_copy):
    _write(data_copy, [{"id": "finding.test_thing", "kind": "finding", "term": "test thing", "label": "test_thing",
                        "modalities": ["modality.chest_xray"], "signs": ["modality.chest_ct"],
                        "visual": {"modality.chest_xray": "a round test opacity"}}])
    with pytest.raises(KnowledgeError, match=r"signs 'modality.chest_ct' is a modality, expected a sign"):
        load_knowledge(data_copy)


@pytest.mark.parametrize(
    "record, message",
    [
        ({"id": "Finding.bad", "kind": "finding", "term": "x"}, "must look like"),
        ({"id": "anatomy.x", "kind": "finding", "term": "x", "label": "x", "modalities": ["modality.oct"]}, "prefix"),
        ({"id": "finding.x", "kind": "finding", "term": "x", "modalities": ["modality.oct"]}, "needs a label"),
        ({"id": "finding.x", "kind": "finding", "term": "x", "label": "Bad Label", "modalities": ["modality.oct"]},
         "snake_case"),
        ({"id": "finding.x", "kind": "finding", "term": "x", "label": "x", "colour": "red",
          "modalities": ["modality.oct"]}, "Extra inputs"),
        ({"id": "finding.x", "kind": "finding", "term": "x", "label": "x", "modalities": ["modality.oct"],
          "family": "ct"}, "only modalities can name a family"),
        ({"id": "modality.knee_mri", "kind": "modality", "term": "knee MRI", "label": "knee_mri", "regions": ["knee"]},
         "names no family"),
        ({"id": "modality.knee_mri", "kind": "modality", "term": "knee MRI", "label": "knee_mri", "family": "mri",
          "regions": ["Knee"]}, "lower-case words"),
    ],
)
def test_schema_errors_name_file_record_and_problem(data_copy, record, message):
    path = _write(data_copy, [record])
    with pytest.raises(KnowledgeError, match=message) as caught:
        load_knowledge(data_copy)
    assert path.name in str(caught.value)


def test_packaged_modalities_cover_each_family_and_region_once(knowledge):
    covered = Counter((m.family, region) for m in knowledge.modalities for region in m.regions)
    assert covered and max(covered.values()) == 1
    defaults = Counter(m.family for m in knowledge.modalities if m.default_for_family)
    assert defaults and max(defaults.values()) == 1


def test_a_family_and_region_or_family_default_claimed_twice_is_reported(data_copy):
    _write(data_copy, [{"id": "modality.chest_tomosynthesis", "kind": "modality", "term": "chest tomosynthesis",
                        "label": "chest_tomosynthesis", "family": "xray", "regions": ["chest"], "default_for_family": True}])
    with pytest.raises(KnowledgeError) as caught:
        load_knowledge(data_copy)
    message = str(caught.value)
    assert "xray of the chest is already covered by" in message
    assert "is already the default for the family 'xray'" in message
    assert "modality.chest_xray" in message and "modality.chest_tomosynthesis" in message


def test_not_yaml_is_a_clear_error(data_copy):
    (data_copy / "broken.yaml").write_text("records: [unclosed", encoding="utf-8")
    with pytest.raises(KnowledgeError, match=r"broken.yaml: not valid YAML"):
        load_knowledge(data_copy)


def test_content_hash_changes_with_an_edit_and_only_then(data_copy):
    before = content_hash(data_copy)
    assert content_hash(data_copy) == before
    target = sorted(data_copy.glob("*.yaml"))[0]
    target.write_text(target.read_text(encoding="utf-8") + "\n# reviewed\n", encoding="utf-8")
    assert content_hash(data_copy) != before


def test_missing_or_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(KnowledgeError, match="does not exist"):
        load_knowledge(tmp_path / "nope")
    with pytest.raises(KnowledgeError, match=r"holds no \*.yaml"):
        load_knowledge(tmp_path)
