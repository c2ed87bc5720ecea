"""Bad input never crashes the reasoning: garbled, mixed-language, all-caps, long, arbitrary strings."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def _check(reasoner, knowledge, text):
    from clinisynth.agents.reasoning import build_prompt, build_report

    localization, pathology = reasoner.analyze(text)
    for finding in pathology.findings:
        assert finding.status in ("present", "absent", "uncertain")
        assert text[finding.start : finding.end] == finding.evidence
        assert finding.id in knowledge.by_id
    if pathology.normal_study:
        assert not [f for f in pathology.findings if f.status == "present"]
    modality = pathology.modality
    build_report(knowledge=knowledge, request=text, modality=modality, technique=localization.technique,
                 findings=pathology.findings, normal_study=pathology.normal_study)
    bundle = build_prompt(knowledge=knowledge, modality_id=modality.id if modality else None, findings=pathology.findings,
                          normal_study=pathology.normal_study, technique=localization.technique)
    assert bundle.label


_WORDS = st.sampled_from(
    ["no", "not", "possible", "pneumothorax", "RLL", "left", "right", "bilateral", "large", "small", "effusion", ",", ".", ";",
     "but", "?", "CXR", "OCT", "drusen", "MRI", "knee", "normal", "resolved", "cannot", "exclude", "\n", "grade 3", "PDR", "OD"]
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=300))
def test_arbitrary_strings_never_crash(reasoner, knowledge, text):
    _check(reasoner, knowledge, text)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(words=st.lists(_WORDS, max_size=40))
def test_shuffled_clinical_words_never_crash(reasoner, knowledge, words):
    _check(reasoner, knowledge, " ".join(words))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \n\t ",
        "\x00\x01\ufffd\ud800 pneumothorax",
        "ÉPANCHEMENT PLEURAL DROIT, kein Pneumothorax, derrame pleural",
        "NO PTX!!! LG EFFUSION??? ;;;",
        "no pneumothorax " * 2000,
        "asdfgh qwerty zxcvb",
        "no pneumothorax but large pneumothorax, no pneumothorax",
    ],
)
def test_bad_inputs_give_a_result(reasoner, knowledge, text):
    _check(reasoner, knowledge, text)


def test_non_string_is_a_clear_error(reasoner):
    with pytest.raises(TypeError, match="must be a string"):
        reasoner.analyze(None)
