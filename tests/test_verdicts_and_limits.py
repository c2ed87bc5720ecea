"""Verdicts stored whole in the graph state, the verifier built complete by one factory, run limits defined once."""

from __future__ import annotations

import json

import pytest
from _graph_helpers import REQUEST, ScriptedGenerator

from clinisynth.agents.runner import run_generation, validate_run_arguments
from clinisynth.agents.state import Attempt
from clinisynth.agents.verifier import Verdict, build_verifier, refinement_for
from clinisynth.generation import limits
from clinisynth.generation.storage import OrderedStorage


def verdict(**changes) -> Verdict:
    fields = dict(accepted=False, scores={"sanity": {"std": 0.0}}, reasons=["quality: flat"], failure="quality",
                  failures=("quality",), confused_label=None, notes=["clip_score unavailable: none"], elapsed_s=0.25)
    return Verdict(**{**fields, **changes})


def test_a_verdict_is_an_attempts_verdict_fields_whole_and_comes_back_from_json():
    original = verdict(failures=("quality", "finding"), confused_label="normal")
    record = original.to_dict()
    assert set(record) <= set(Attempt.model_fields)  # every key has its place in an attempt
    attempt = {**json.loads(json.dumps({"slot": 0, "round": 1, "elapsed_s": 9.0})), **record, "verdict": "rejected"}
    assert Verdict.from_dict(attempt) == original and attempt["elapsed_s"] == 9.0  # generation time kept apart


def test_merged_verdict_of_a_slot_counts_every_failure_and_refuses_accepted_ones():
    merged = Verdict.merged([verdict(), verdict(failure="finding", failures=("finding",), confused_label="normal",
                                                reasons=["finding: p=0.1"])])
    assert merged.failures == ("quality", "finding") and merged.confused_label == "normal"
    assert merged.reasons == ["quality: flat", "finding: p=0.1"] and merged.elapsed_s == 0.5
    with pytest.raises(ValueError, match="rejected"):
        Verdict.merged([verdict(accepted=True, failure=None, failures=())])


def test_the_graph_stores_each_verdict_whole(planner, tmp_path):
    generator = ScriptedGenerator(lambda round_, seed: "noise" if (round_ == 1 and seed == 101) else "good")
    result = run_generation(planner=planner, generator=generator, storage=OrderedStorage(tmp_path / "out"),
                            request=REQUEST, n_images=2, seed=100, steps=10, guidance=5.0, max_rounds=3,
                            profile="scripted")
    for attempt in result.trace["attempts"]:
        restored = Verdict.from_dict(attempt)
        assert restored.accepted == (attempt["verdict"] == "accepted")
        assert restored.to_dict() == {key: attempt[key] for key in restored.to_dict()}


def test_the_factory_builds_the_verifier_complete_with_the_callers_reasons():
    verifier = build_verifier(unavailable={"classifier": "random-weights generator"})
    assert verifier.unavailable == {"clip_score": "no CLIP model configured", "classifier": "random-weights generator"}
    # The caller's reason wins over the one found.
    assert build_verifier(unavailable={"clip_score": "turned off"}).unavailable["clip_score"] == "turned off"


def test_run_limits_are_the_same_everywhere():
    from clinisynth.agents.nodes import CANDIDATE_SEED_STRIDE, ROUND_SEED_STRIDE
    from clinisynth.agents.planner import PlanError
    from clinisynth.generation import pipeline
    from clinisynth.settings import Settings

    ok = dict(n_images=1, steps=None, guidance=None, max_rounds=1, max_images=10, best_of=1)
    validate_run_arguments(**{**ok, "steps": limits.MAX_STEPS, "guidance": limits.MAX_GUIDANCE,
                              "max_rounds": limits.MAX_ROUNDS, "best_of": limits.MAX_BEST_OF})
    validate_run_arguments(**{**ok, "steps": limits.MIN_STEPS, "guidance": limits.MIN_GUIDANCE})
    for bad in ({"steps": limits.MAX_STEPS + 1}, {"steps": limits.MIN_STEPS - 1},
                {"guidance": limits.MAX_GUIDANCE + 0.5}, {"guidance": limits.MIN_GUIDANCE - 0.5},
                {"max_rounds": limits.MAX_ROUNDS + 1}, {"best_of": limits.MAX_BEST_OF + 1}):
        with pytest.raises(PlanError):
            validate_run_arguments(**{**ok, **bad})
    for field, top in (("max_rounds", limits.MAX_ROUNDS), ("best_of", limits.MAX_BEST_OF)):
        Settings(**{field: top})
        with pytest.raises(ValueError):
            Settings(**{field: top + 1})
    assert (pipeline.MAX_STEPS, pipeline.MAX_GUIDANCE) == (limits.MAX_STEPS, limits.MAX_GUIDANCE)
    # Refinement stops at the same ceilings.
    stepped = refinement_for(verdict(), steps=limits.MAX_STEPS, guidance=1.0, negative_prompt="")
    assert stepped.steps == limits.MAX_STEPS
    weak = verdict(failure="finding", failures=("finding",))
    assert refinement_for(weak, steps=10, guidance=limits.MAX_GUIDANCE, negative_prompt="").guidance == limits.MAX_GUIDANCE
    # Seeds stay distinct for every (slot, round, candidate) the limits allow.
    assert CANDIDATE_SEED_STRIDE > limits.MAX_ROUNDS * ROUND_SEED_STRIDE
