"""Score the reasoning on real chest radiograph reports: per-label and micro precision / recall / F1,
with a keyword + negation-word baseline measured in the same run.

    python benchmarks/bench_reports.py [--reports ../shared/data/reports/iu_cxr_dev/reports.csv]
                                       [--no-retriever] [--errors N] [--json OUT]

Input: each report's ``findings`` + ``impression`` sections joined as one description (the
``indication`` and ``comparison`` are not given: the gold labels describe the image).

Label-mapping rule (written down once, used for both systems): a report gets a gold label when
its column is 1 (the annotators coded a finding the report asserts, not one it denies or only
hedges). The plan gives a label when one of its findings with status ``present`` (and temporality
``current``) has an id in :data:`LABEL_FINDINGS` for that label, or descends (``parent`` chain
in the knowledge base) from one; ``--count-uncertain`` also counts ``uncertain`` findings. ``Hernia`` has no positive report in the dev split and is not
scored. Findings outside the 13 labels (devices, fractures, granulomas ...) are not counted
either way.

Failure classes: every false positive and false negative is sorted into one of the issue's
classes by the words around the evidence (see :func:`failure_class`), so a fix can be checked
against the class it targets.
Targets (issue 10): micro-F1 >= 0.92, precision >= 0.90, recall >= 0.92.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REPORTS = ROOT.parent / "shared" / "data" / "reports" / "iu_cxr_dev" / "reports.csv"
TARGETS = {"micro_f1": 0.92, "precision": 0.90, "recall": 0.92}

#: Gold label -> the knowledge records (and their descendants) that assert it.
LABEL_FINDINGS: dict[str, tuple[str, ...]] = {
    "Atelectasis": ("finding.atelectasis", "finding.lobar_collapse", "finding.rounded_atelectasis"),
    "Cardiomegaly": ("finding.cardiomegaly",),
    "Effusion": ("finding.pleural_effusion", "finding.loculated_pleural_effusion", "finding.hydropneumothorax"),
    "Infiltration": ("finding.pulmonary_infiltrate",),
    "Mass": ("finding.lung_mass", "finding.mediastinal_mass"),
    "Nodule": ("finding.lung_nodule",),
    "Pneumonia": ("finding.pneumonia",),
    "Pneumothorax": ("finding.pneumothorax", "finding.hydropneumothorax"),
    "Consolidation": ("finding.consolidation",),
    "Edema": ("finding.pulmonary_edema",),
    "Emphysema": ("finding.emphysema",),
    "Fibrosis": ("finding.pulmonary_fibrosis",),
    "Pleural_Thickening": ("finding.pleural_thickening",),
}
LABELS = tuple(LABEL_FINDINGS)

#: The baseline: a label's keywords, and negation words that deny it when they come earlier in the sentence.
BASELINE_KEYWORDS: dict[str, tuple[str, ...]] = {
    "Atelectasis": ("atelecta", "collapse"),
    "Cardiomegaly": ("cardiomegaly", "heart size is enlarged", "enlarged heart", "cardiac enlargement", "enlarged cardiac"),
    "Effusion": ("effusion",),
    "Infiltration": ("infiltrat",),
    "Mass": ("mass",),
    "Nodule": ("nodule", "nodular"),
    "Pneumonia": ("pneumonia",),
    "Pneumothorax": ("pneumothora",),
    "Consolidation": ("consolidat",),
    "Edema": ("edema", "oedema"),
    "Emphysema": ("emphysema",),
    "Fibrosis": ("fibrosis",),
    "Pleural_Thickening": ("pleural thickening",),
}
BASELINE_NEGATIONS = ("no ", "without", "negative for", "free of", "resolved", "clear of", "not ")

#: Words near an error's evidence that say which failure class of issue 10 it belongs to.
_CLASS_PATTERNS = (
    ("temporality", r"\b(old|healed|chronic|prior|previous|resolved|remote|stable|unchanged|again)\b"),
    ("pseudo-negation", r"\bwithout (interval )?change\b|\bno (interval )?change\b"),
    ("hedge", r"\b(may|might|possibl|probabl|likely|question|cannot|concern|suspicious|suggest|versus|vs|differential|equivocal|definite)\w*"),
    ("normal statement", r"\b(normal|within normal limits|unremarkable|clear)\b"),
    ("negation scope", r"\b(no|not|without|negative|free)\b"),
)


def load_reports(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    missing = {"findings", "impression", *LABELS} - set(rows[0] if rows else {})
    if missing:
        raise ValueError(f"{path} lacks the columns {sorted(missing)}")
    return rows


def description(row: dict) -> str:
    parts = [row.get(column, "").strip() for column in ("findings", "impression")]
    return " ".join(p for p in parts if p and p.lower() != "none")


def gold_labels(row: dict) -> set[str]:
    return {label for label in LABELS if row[label].strip() == "1"}


def finding_labels(knowledge) -> dict[str, str]:
    """Every finding id that asserts a label (the listed ids and their descendants) -> the label."""
    parents = {r.id: r.parent for r in knowledge.records if r.parent}
    owners: dict[str, set[str]] = {}
    for label, ids in LABEL_FINDINGS.items():
        for record_id in ids:
            if record_id not in knowledge.by_id:
                raise KeyError(f"LABEL_FINDINGS names {record_id!r}, which is not in the knowledge base")
            owners.setdefault(record_id, set()).add(label)
    mapping: dict[str, set[str]] = {}
    for record in knowledge.records:
        chain, seen, node = [], set(), record.id
        while node and node not in seen:
            seen.add(node)
            chain.append(node)
            node = parents.get(node)
        labels = set().union(*(owners.get(n, set()) for n in chain))
        if labels:
            mapping[record.id] = labels
    return mapping


def plan_labels(plan, mapping: dict[str, set[str]], *, count_uncertain: bool = False) -> dict[str, str]:
    """Label -> the evidence span of the first current finding that asserts it."""
    statuses = ("present", "uncertain") if count_uncertain else ("present",)
    out: dict[str, str] = {}
    for finding in plan.findings:
        if finding.status not in statuses or finding.temporality != "current":
            continue
        for label in mapping.get(finding.id, ()):
            out.setdefault(label, finding.evidence)
    return out


def baseline_labels(text: str) -> set[str]:
    found = set()
    for sentence in re.split(r"(?<=[.;])\s+", text.lower()):
        for label, keywords in BASELINE_KEYWORDS.items():
            for keyword in keywords:
                at = sentence.find(keyword)
                if at >= 0 and not any(n in sentence[:at] for n in BASELINE_NEGATIONS):
                    found.add(label)
    return found


def failure_class(text: str, evidence: str | None, *, missed: bool) -> str:
    """The issue-10 class an error most likely belongs to, from the sentence around its evidence."""
    if missed:
        return "missed (paraphrase or synonym)"
    if not evidence:
        return "other"
    lowered = text.lower()
    at = lowered.find(evidence.lower())
    sentence_start = max(lowered.rfind(".", 0, at), 0) if at >= 0 else 0
    sentence_end = lowered.find(".", at) if at >= 0 else -1
    sentence = lowered[sentence_start : sentence_end if sentence_end > 0 else None]
    for name, pattern in _CLASS_PATTERNS:
        if re.search(pattern, sentence):
            return name
    return "over-broad synonym or retrieval"


class Counts:
    def __init__(self) -> None:
        self.tp = self.fp = self.fn = 0

    def add(self, gold: set, pred: set) -> None:
        self.tp += len(gold & pred)
        self.fp += len(pred - gold)
        self.fn += len(gold - pred)

    def scores(self) -> dict[str, float]:
        p = self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0
        r = self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f, 4), "tp": self.tp, "fp": self.fp, "fn": self.fn}


def score_reports(planner, rows: list[dict], *, errors: list | None = None, count_uncertain: bool = False) -> dict:
    """Per-label and micro scores of the planner and the baseline on ``rows``."""
    from clinisynth.agents.planner import PlanError

    mapping = finding_labels(planner.knowledge)
    system = {label: Counts() for label in LABELS}
    baseline = {label: Counts() for label in LABELS}
    classes: Counter = Counter()
    refused = 0
    for row in rows:
        text = description(row)
        gold = gold_labels(row)
        try:
            predicted = plan_labels(planner.plan(text), mapping, count_uncertain=count_uncertain) if text else {}
        except PlanError:
            predicted, refused = {}, refused + 1
        base = baseline_labels(text)
        for label in LABELS:
            system[label].add(gold & {label}, set(predicted) & {label})
            baseline[label].add(gold & {label}, base & {label})
        for label in set(predicted) - gold:
            kind = failure_class(text, predicted[label], missed=False)
            classes[f"fp: {kind}"] += 1
            if errors is not None:
                errors.append({"uid": row.get("uid"), "error": "fp", "label": label, "class": kind, "evidence": predicted[label], "text": text})
        for label in gold - set(predicted):
            classes["fn: missed (paraphrase or synonym)"] += 1
            if errors is not None:
                errors.append({"uid": row.get("uid"), "error": "fn", "label": label, "class": "missed", "text": text})

    def micro(counts: dict[str, Counts]) -> dict:
        total = Counts()
        for c in counts.values():
            total.tp, total.fp, total.fn = total.tp + c.tp, total.fp + c.fp, total.fn + c.fn
        return total.scores()

    return {
        "reports": len(rows),
        "refused": refused,
        "micro": micro(system),
        "per_label": {label: c.scores() for label, c in system.items()},
        "baseline_micro": micro(baseline),
        "baseline_per_label": {label: c.scores() for label, c in baseline.items()},
        "failure_classes": dict(sorted(classes.items(), key=lambda kv: -kv[1])),
    }


def build_planner(*, retriever: bool):
    from clinisynth.agents.planner import Planner
    from clinisynth.knowledge import load_knowledge

    knowledge = load_knowledge()
    index = None
    if retriever:
        from clinisynth.retrieval import Retriever

        index = Retriever.open(knowledge=knowledge, cache_dir=ROOT / ".cache")
    return Planner(knowledge=knowledge, retriever=index)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reports", type=Path, default=DEFAULT_REPORTS)
    parser.add_argument("--no-retriever", action="store_true", help="lexicon only (no FAISS retrieval fallback)")
    parser.add_argument("--count-uncertain", action="store_true", help="count hedged findings as asserted too")
    parser.add_argument("--errors", type=int, default=0, help="print this many errors")
    parser.add_argument("--json", type=Path, help="write the scores (and every error) here")
    args = parser.parse_args(argv)
    if not args.reports.is_file():
        print(f"error: no reports at {args.reports} (the shared data folder sits beside the repository)", file=sys.stderr)
        return 2
    from _common import machine

    rows = load_reports(args.reports)
    planner = build_planner(retriever=not args.no_retriever)
    errors: list = []
    started = time.perf_counter()
    result = score_reports(planner, rows, errors=errors, count_uncertain=args.count_uncertain)
    seconds = time.perf_counter() - started
    print(f"machine: {machine()}; {len(rows)} reports in {seconds:.1f} s ({seconds / len(rows) * 1000:.1f} ms each), "
          f"retriever {'off' if args.no_retriever else 'on'}, {result['refused']} refused")
    print(f"{'label':20} {'P':>6} {'R':>6} {'F1':>6} {'tp':>4} {'fp':>4} {'fn':>4}   baseline F1")
    for label in LABELS:
        s, b = result["per_label"][label], result["baseline_per_label"][label]
        print(f"{label:20} {s['precision']:6.3f} {s['recall']:6.3f} {s['f1']:6.3f} {s['tp']:4} {s['fp']:4} {s['fn']:4}   {b['f1']:.3f}")
    m, b = result["micro"], result["baseline_micro"]
    print(f"{'micro':20} {m['precision']:6.3f} {m['recall']:6.3f} {m['f1']:6.3f} {m['tp']:4} {m['fp']:4} {m['fn']:4}   {b['f1']:.3f}")
    print(f"baseline micro: P {b['precision']:.3f} R {b['recall']:.3f} F1 {b['f1']:.3f}")
    print("errors by failure class:", ", ".join(f"{k} {v}" for k, v in result["failure_classes"].items()) or "none")
    met = m["f1"] >= TARGETS["micro_f1"] and m["precision"] >= TARGETS["precision"] and m["recall"] >= TARGETS["recall"]
    print(f"targets (F1 >= {TARGETS['micro_f1']}, P >= {TARGETS['precision']}, R >= {TARGETS['recall']}): {'met' if met else 'NOT met'}")
    for error in errors[: args.errors]:
        print(f"- {error['error']} {error['label']} [{error['class']}] uid {error['uid']}: "
              f"{error.get('evidence')!r} in {error['text'][:300]!r}")
    if args.json:
        args.json.write_text(json.dumps({**result, "errors": errors}, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    raise SystemExit(main())
