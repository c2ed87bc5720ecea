"""The verifier inside the graph: per-slot refinement from the failure, best-of-N, memorisation, duplicates
against the dataset already on disk, thumbnails and consistent metadata."""

from __future__ import annotations

import json

import numpy as np
from _graph_helpers import REQUEST, ScriptedGenerator, structured
from PIL import Image

from clinisynth.agents.runner import run_generation
from clinisynth.agents.verifier import Verifier
from clinisynth.evaluation.memorisation import MemorisationIndex, ThumbnailEmbedder
from clinisynth.generation.storage import OrderedStorage


class QueuedClassifier:
    """Returns the next queued probability of 'pneumothorax' per image (then the last one forever)."""

    name = "queued"
    labels = ("normal", "pneumothorax")

    def __init__(self, probabilities):
        self.queue = list(probabilities)
        self.seen = 0

    def predict_proba(self, images):
        rows = []
        for _ in images:
            p = self.queue[min(self.seen, len(self.queue) - 1)]
            self.seen += 1
            rows.append([1.0 - p, p])
        return np.asarray(rows)


def run(planner, out, generator, *, verifier=None, n=2, best_of=1, max_rounds=3, seed=100, exact_seed=False):
    return run_generation(planner=planner, generator=generator, storage=OrderedStorage(out), request=REQUEST,
                          n_images=n, seed=seed, steps=10, guidance=5.0, max_rounds=max_rounds, profile="scripted",
                          verifier=verifier, best_of=best_of, exact_seed=exact_seed)


def metadata_rows(out):
    return [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]


def test_wrong_finding_raises_guidance_emphasises_and_negates_the_confused_class(planner, tmp_path):
    classifier = QueuedClassifier([0.2, 0.9, 0.9])  # slot 0 fails in round 1, slot 1 passes
    verifier = Verifier(classifiers={"chest_xray": classifier})
    generator = ScriptedGenerator(lambda round_, seed: "good")
    result = run(planner, tmp_path / "out", generator, verifier=verifier)
    assert result.status == "complete"
    first, retry = generator.calls
    assert retry["seeds"] == [100 + 0 + 1_000_003]  # only slot 0, with a new seed
    assert retry["guidance"] == first["guidance"] + 1.5 and retry["steps"] == first["steps"]
    assert retry["negative_prompt"].endswith(", normal") and retry["prompt"].startswith("pneumothorax, ")
    rejected = [a for a in result.trace["attempts"] if a["verdict"] == "rejected"]
    assert len(rejected) == 1 and rejected[0]["failure"] == "finding" and rejected[0]["confused_label"] == "normal"
    assert "guidance 5 -> 6.5" in rejected[0]["action"] and "negative prompt + 'normal'" in rejected[0]["action"]
    rows = metadata_rows(tmp_path / "out")
    refined = next(row for row in rows if row["round"] == 2)
    assert refined["guidance"] == 6.5 and refined["prompt"] == retry["prompt"]
    assert refined["scores"]["classifier_label_probability"] == 0.9


def test_best_of_keeps_the_most_confident_candidate_per_slot(planner, tmp_path):
    classifier = QueuedClassifier([0.6, 0.95, 0.7, 0.4, 0.3, 0.8])  # slot 0: c1 best; slot 1: only c2 passes
    verifier = Verifier(classifiers={"chest_xray": classifier})
    generator = ScriptedGenerator(lambda round_, seed: "good")
    result = run(planner, tmp_path / "out", generator, verifier=verifier, best_of=3)
    assert result.status == "complete" and len(generator.calls) == 1
    assert len(generator.calls[0]["seeds"]) == 6 and len(set(generator.calls[0]["seeds"])) == 6
    verdicts = {(a["slot"], a["candidate"]): a["verdict"] for a in result.trace["attempts"]}
    assert verdicts == {(0, 0): "passed_not_chosen", (0, 1): "accepted", (0, 2): "passed_not_chosen",
                        (1, 0): "rejected", (1, 1): "rejected", (1, 2): "accepted"}
    probabilities = [row["scores"]["classifier_label_probability"] for row in metadata_rows(tmp_path / "out")]
    assert probabilities == [0.95, 0.8]


def test_memorised_image_gets_a_new_seed_only(planner, tmp_path):
    embedder = ThumbnailEmbedder()
    index = MemorisationIndex.from_embeddings(embedder([structured(101)]), keys=["train/patient.png"],
                                              embedder_name=embedder.name)
    verifier = Verifier(memorisation={"chest_xray": index})
    generator = ScriptedGenerator(lambda round_, seed: "good")
    result = run(planner, tmp_path / "out", generator, verifier=verifier)
    assert result.status == "complete"
    memorised = [a for a in result.trace["attempts"] if a["failure"] == "memorised"]
    assert len(memorised) == 1 and memorised[0]["seed"] == 101 and memorised[0]["action"] == "new seed"
    assert "train/patient.png" in memorised[0]["reasons"][0]
    assert generator.calls[1]["steps"] == generator.calls[0]["steps"]
    assert generator.calls[1]["guidance"] == generator.calls[0]["guidance"]


def test_duplicates_are_checked_against_images_already_in_the_dataset(planner, tmp_path):
    out = tmp_path / "out"
    first = run(planner, out, ScriptedGenerator(lambda round_, seed: "good"), n=2)
    assert first.status == "complete"
    # The same seeds kept (as a campaign keeps its slot seeds), so the same pictures: each is a duplicate.
    second = run(planner, out, ScriptedGenerator(lambda round_, seed: "good"), n=2, exact_seed=True)
    duplicates = [a for a in second.trace["attempts"] if a["failure"] == "duplicate"]
    assert {a["seed"] for a in duplicates} == {100, 101}
    assert second.status == "complete"
    assert len(metadata_rows(out)) == 4


def test_never_passing_slots_are_not_stored_and_every_attempt_has_a_thumbnail(planner, tmp_path):
    verifier = Verifier(classifiers={"chest_xray": QueuedClassifier([0.1])})
    result = run(planner, tmp_path / "out", ScriptedGenerator(lambda round_, seed: "good"), verifier=verifier,
                 n=1, max_rounds=3)
    assert result.status == "failed" and result.stored == []
    attempts = result.trace["attempts"]
    assert [a["guidance"] for a in attempts] == [5.0, 6.5, 8.0]
    assert all(a["thumbnail"].startswith("data:image/png;base64,") for a in attempts)
    assert result.trace["summary"]["rejected_by_failure"] == {"finding": 3}
    sheet = tmp_path / "out" / "runs" / result.run_id / result.trace["contact_sheet"]
    with Image.open(sheet) as image:
        assert image.size == (3 * 96, 96 + 12)  # one labelled tile per attempt
    assert not (tmp_path / "out" / "metadata.jsonl").exists()


def test_metadata_keeps_one_type_per_column_across_verifiers(planner, tmp_path):
    out = tmp_path / "out"
    run(planner, out, ScriptedGenerator(lambda round_, seed: "good"), n=1)
    run(planner, out, ScriptedGenerator(lambda round_, seed: "good"), n=1, seed=500,
        verifier=Verifier(classifiers={"chest_xray": QueuedClassifier([0.9])}))
    rows = metadata_rows(out)
    assert len(rows) == 2
    without, with_classifier = rows[0]["scores"], rows[1]["scores"]
    assert without.keys() == with_classifier.keys()
    assert without["classifier_label_probability"] is None and with_classifier["classifier_label_probability"] == 0.9
    assert "classifier" in without["unavailable"] and "classifier" not in with_classifier["unavailable"]
    for key in without:
        assert without[key] is None or with_classifier[key] is None or type(without[key]) is type(with_classifier[key])
