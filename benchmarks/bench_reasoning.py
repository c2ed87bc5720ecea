"""Score the reasoning on the development set: precision, recall and F1 per field and overall.

    python benchmarks/bench_reasoning.py [--devset tests/data/reasoning_devset.jsonl] [--retriever] [--errors]

Fields (micro-averaged over descriptions):
- ``modality``: the plan's modality (named or inferred) against the expected one; an expected
  ``null`` (a modality the base does not cover) counts as right when nothing is predicted.
- ``findings``: finding ids, ignoring status.
- ``findings+status``: (finding id, status) pairs.
- ``laterality`` / ``severity``: (finding id, status, value) triples for findings where the
  expected or predicted value is set.
- ``overall``: micro over modality, findings+status, laterality and severity.
Targets (issue 3): findings+status micro-F1 >= 0.90, modality >= 0.95.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from clinisynth.agents.reasoning.engine import DEFAULT_RETRIEVAL_THRESHOLD

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DEVSET = ROOT / "tests" / "data" / "reasoning_devset.jsonl"
TARGETS = {"findings+status": 0.90, "modality": 0.95}


class Counts:
    def __init__(self) -> None:
        self.tp = self.fp = self.fn = 0

    def add_sets(self, gold: set, pred: set) -> None:
        self.tp += len(gold & pred)
        self.fp += len(pred - gold)
        self.fn += len(gold - pred)

    def scores(self) -> tuple[float, float, float]:
        p = self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0
        r = self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        return p, r, f


def load_devset(path: Path) -> list[dict]:
    items = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for number, item in enumerate(items, 1):
        missing = {"text", "modality", "findings"} - set(item)
        if missing:
            raise ValueError(f"{path}:{number} lacks {sorted(missing)}")
    return items


def score(reasoner, items: list[dict], *, show_errors: bool = False) -> dict[str, Counts]:
    """Run the reasoner on every item and count matches per field."""
    fields = {name: Counts() for name in ("modality", "findings", "findings+status", "laterality", "severity", "normal_study")}
    for item in items:
        localization, pathology = reasoner.analyze(item["text"])
        modality = pathology.modality.id if pathology.modality else None
        gold_m = {item["modality"]} if item["modality"] else set()
        pred_m = {modality} if modality else set()
        fields["modality"].add_sets(gold_m, pred_m)
        gold = item["findings"]
        pred = pathology.findings
        fields["findings"].add_sets({g["id"] for g in gold}, {p.id for p in pred})
        gs = {(g["id"], g["status"]) for g in gold}
        ps = {(p.id, p.status) for p in pred}
        fields["findings+status"].add_sets(gs, ps)
        for name in ("laterality", "severity"):
            fields[name].add_sets(
                {(g["id"], g["status"], g[name]) for g in gold if g.get(name)},
                {(p.id, p.status, getattr(p, name)) for p in pred if getattr(p, name)},
            )
        if "normal_study" in item:
            fields["normal_study"].add_sets({True} if item["normal_study"] else set(), {True} if pathology.normal_study else set())
        if show_errors:
            got = {(p.id, p.status, p.laterality, p.severity) for p in pred}
            want = {(g["id"], g["status"], g.get("laterality"), g.get("severity")) for g in gold}
            if got != want or gold_m != pred_m:
                print(f"- {item['text']!r}\n    want {item['modality']} {sorted(want, key=str)}\n    got  {modality} {sorted(got, key=str)}"
                      f" unsupported={localization.unsupported_modality}")
    return fields


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devset", type=Path, default=DEFAULT_DEVSET)
    parser.add_argument("--retriever", action="store_true", help="resolve paraphrases with the FAISS retriever (MiniLM, offline)")
    parser.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("CLINISYNTH_CACHE_DIR", Path.home() / ".cache" / "clinisynth")))
    parser.add_argument("--threshold", type=float, default=DEFAULT_RETRIEVAL_THRESHOLD)
    parser.add_argument("--errors", action="store_true", help="print every description that was not read exactly")
    parser.add_argument("--no-validate", action="store_true", help="skip the knowledge integrity check (while records are being edited)")
    args = parser.parse_args(argv)

    from clinisynth.agents.reasoning import Reasoner, build_prompt, build_report
    from clinisynth.knowledge import load_knowledge

    knowledge = load_knowledge(validate=not args.no_validate)
    retriever = None
    if args.retriever:
        from clinisynth.retrieval import Retriever

        retriever = Retriever.open(knowledge=knowledge, cache_dir=args.cache_dir)
    started = time.perf_counter()
    reasoner = Reasoner(knowledge=knowledge, retriever=retriever, retrieval_threshold=args.threshold)
    build_s = time.perf_counter() - started
    items = load_devset(args.devset)
    fields = score(reasoner, items, show_errors=args.errors)

    print(f"dev set: {len(items)} descriptions, knowledge {knowledge.version} ({len(knowledge.records)} records), "
          f"retriever: {'on' if retriever else 'off'}")
    print(f"{'field':18} {'P':>6} {'R':>6} {'F1':>6}   tp/fp/fn")
    overall = Counts()
    for name, counts in fields.items():
        p, r, f = counts.scores()
        target = TARGETS.get(name)
        mark = "" if target is None else (f"  target {target:.2f} {'met' if f >= target else 'MISSED'}")
        print(f"{name:18} {p:6.3f} {r:6.3f} {f:6.3f}   {counts.tp}/{counts.fp}/{counts.fn}{mark}")
        if name in ("modality", "findings+status", "laterality", "severity"):
            overall.tp += counts.tp
            overall.fp += counts.fp
            overall.fn += counts.fn
    p, r, f = overall.scores()
    print(f"{'overall':18} {p:6.3f} {r:6.3f} {f:6.3f}   {overall.tp}/{overall.fp}/{overall.fn}")

    # Latency of the reasoning half of `plan` on a warm process (parse and retrieval caches cleared per text).
    timings = []
    for item in items:
        reasoner._cache.clear()
        reasoner._retrieval_cache.clear()
        t0 = time.perf_counter()
        localization, pathology = reasoner.analyze(item["text"])
        modality = pathology.modality
        build_report(knowledge=knowledge, request=item["text"], modality=modality, technique=localization.technique,
                     findings=pathology.findings, normal_study=pathology.normal_study)
        build_prompt(knowledge=knowledge, modality_id=modality.id if modality else None, findings=pathology.findings,
                     normal_study=pathology.normal_study, technique=localization.technique)
        timings.append((time.perf_counter() - t0) * 1000)
    timings.sort()
    print(f"reasoner build {build_s:.2f} s; per description p50 {statistics.median(timings):.1f} ms, "
          f"p95 {timings[int(0.95 * (len(timings) - 1))]:.1f} ms, max {timings[-1]:.1f} ms")
    met = all(fields[name].scores()[2] >= target for name, target in TARGETS.items())
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
