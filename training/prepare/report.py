"""Rebuild OUT's tables, reports and contact sheets from the journal records.

Every file here is written atomically and holds no source name or DICOM header value; the one
table that maps ids back to sources goes to ``OUT/_sensitive/``.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from clinisynth.generation.files import write_atomically
from clinisynth.training.prepare.state import (CONTACT_DIR, JOURNAL, LEGACY_CONTACT_DIR, MARKER, SENSITIVE_DIR,
                                               SENSITIVE_FILE_MODE, SOURCE_MAP)

MANIFEST_COLUMNS = ("path", "text", "modality", "label", "source_sha256", "width", "height")
QUARANTINE_COLUMNS = ("id", "label", "reason", "value", "detail", "source_sha256")
DUPLICATE_COLUMNS = ("id", "label", "duplicate_of", "duplicate_of_label", "kind", "distance", "correlation", "source_sha256")
CONTACT_TILE = 64
CONTACT_COLUMNS = 8
CONTACT_MAX = 64
_TOP_SIZES = 15


def _csv_text(columns, rows) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _rows(records: dict[str, dict], size: int):
    manifest, quarantine, duplicates, source_map = [], [], [], []
    for record in records.values():
        base = {"label": record["label"], "source_sha256": record["sha256"]}
        if record["error"] is not None:
            error = record["error"]
            quarantine.append({"id": record["id"], **base, "reason": error["reason"], "value": error["value"], "detail": error["detail"]})
            source_map.append({"id": record["id"], "source": record["key"], "frame": "", "status": "quarantined", "output": ""})
            continue
        for frame in record["frames"]:
            status = frame["status"]
            output = ""
            if status == "kept":
                output = frame["path"]
                manifest.append(
                    {"path": output, "text": record["text"], "modality": record["modality"], "label": record["label"],
                     "source_sha256": record["sha256"], "width": size, "height": size}
                )
            elif status == "quarantined":
                quarantine.append({"id": frame["id"], **base, "reason": frame["reason"], "value": frame["value"], "detail": frame["detail"]})
            else:
                duplicates.append(
                    {"id": frame["id"], **base, "duplicate_of": frame["of"], "duplicate_of_label": frame["of_label"],
                     "kind": frame["kind"], "distance": frame["distance"], "correlation": frame["correlation"]}
                )
            source_map.append({"id": frame["id"], "source": record["key"], "frame": frame["i"], "status": status, "output": output})
    manifest.sort(key=lambda row: row["path"])
    quarantine.sort(key=lambda row: (row["reason"], row["id"]))
    duplicates.sort(key=lambda row: row["id"])
    source_map.sort(key=lambda row: (row["source"], str(row["frame"])))
    return manifest, quarantine, duplicates, source_map


def build_report(records: dict[str, dict], *, context: dict, run: dict, manifest, quarantine, duplicates) -> dict:
    """Counts per class before / after, quarantine by reason, duplicates, size / mode / format histograms."""
    config, discovery = context["config"], context["discovery"]
    per_class: dict[str, Counter] = defaultdict(Counter)
    sizes, modes, formats = Counter(), Counter(), Counter()
    for record in records.values():
        counts = per_class[record["label"]]
        counts["sources"] += 1
        if record["format"]:
            formats[record["format"]] += 1
            modes[record["mode"]] += 1
        if record["error"] is not None:
            counts["quarantined"] += 1
            counts["frames"] += 1
            continue
        for frame in record["frames"]:
            counts["frames"] += 1
            sizes[f"{frame['w']}x{frame['h']}"] += 1
            counts[{"kept": "kept", "quarantined": "quarantined", "duplicate": "duplicates"}[frame["status"]]] += 1
    by_reason = Counter(row["reason"] for row in quarantine)
    by_class_reason: dict[str, Counter] = defaultdict(Counter)
    for row in quarantine:
        by_class_reason[row["label"]][row["reason"]] += 1
    examples: dict[str, list[str]] = defaultdict(list)
    for row in quarantine:
        if len(examples[row["reason"]]) < 5:
            examples[row["reason"]].append(row["id"])
    top_sizes = dict(sizes.most_common(_TOP_SIZES))
    if len(sizes) > _TOP_SIZES:
        top_sizes["other"] = sum(sizes.values()) - sum(top_sizes.values())
    classes = {
        label: {key: counts.get(key, 0) for key in ("sources", "frames", "kept", "quarantined", "duplicates")}
        for label, counts in sorted(per_class.items())
    }
    return {
        "tool": "clinisynth prepare",
        "complete": run.get("complete", False),
        "source_kind": context["kind"],
        "options": {
            "size": config.size, "mode": config.mode, "modality": config.modality, "labels_from": config.labels_from,
            "pages": config.pages, "label_level": config.label_level, "near_max_distance": config.near_max_distance,
            "near_min_correlation": config.near_min_correlation, "text_check": config.text_check, "strict": config.strict,
        },
        "privacy": {
            "burned_in_text_check": "on: morphological text lines confirmed by Tesseract OCR" if config.text_check
            else "OFF (--no-text-check): images may carry identifiers burned into the pixels",
            "dicom_modality_check": "quarantine (--strict refuses the run instead)" if not config.strict else "strict: a contradicting Modality tag refuses the run",
        },
        "label_map": context["label_map"],
        "unused_label_map_keys": discovery.unused_map_keys,
        "label_sources": {label: sorted(names) for label, names in sorted(discovery.source_names.items())},
        "totals": {
            "sources": len(records),
            "frames": sum(c["frames"] for c in classes.values()),
            "kept": len(manifest),
            "quarantined": len(quarantine),
            "duplicates": len(duplicates),
        },
        "per_class": classes,
        "quarantined_by_reason": dict(by_reason.most_common()),
        "quarantined_by_class": {label: dict(c.most_common()) for label, c in sorted(by_class_reason.items())},
        "quarantine_examples": dict(examples),
        "duplicates": {
            "exact": sum(1 for row in duplicates if row["kind"] == "exact"),
            "near": sum(1 for row in duplicates if row["kind"] == "near"),
            "across_labels": sum(1 for row in duplicates if row["label"] != row["duplicate_of_label"]),
        },
        "native_sizes": top_sizes,
        "native_modes": dict(modes.most_common()),
        "formats": dict(formats.most_common()),
        "ignored_files": dict(discovery.ignored.most_common()),
        "run": run,
        "files": {
            "images": "<label>/<id>.png",
            "manifest": "manifest.csv",
            "quarantine": "quarantine.csv",
            "duplicates": "duplicates.csv",
            "contact_sheets": f"{CONTACT_DIR}/<label>.png",
            "sensitive": [f"{SENSITIVE_DIR}/{SOURCE_MAP}", f"{SENSITIVE_DIR}/{JOURNAL}", f"{SENSITIVE_DIR}/{MARKER}"],
        },
    }


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(report: dict) -> str:
    totals = report["totals"]
    status = "complete" if report["complete"] else "INCOMPLETE (interrupted or in progress; re-run to resume)"
    parts = [
        "# Dataset preparation report",
        "",
        f"Status: {status}. Source kind: {report['source_kind']}. Options: "
        + ", ".join(f"{k}={v}" for k, v in report["options"].items()) + ".",
        "",
        f"Burned-in text check: {report['privacy']['burned_in_text_check']}. "
        f"DICOM Modality tag check: {report['privacy']['dicom_modality_check']}.",
        "",
        f"Sources {totals['sources']}, frames {totals['frames']}: kept {totals['kept']}, "
        f"quarantined {totals['quarantined']}, duplicates {totals['duplicates']}.",
        "",
        "## Per class (before -> after)",
        "",
        _table(["label", "from", "sources", "frames", "kept", "quarantined", "duplicates"],
               [[label, ", ".join(report["label_sources"].get(label, [])), c["sources"], c["frames"], c["kept"], c["quarantined"], c["duplicates"]]
                for label, c in report["per_class"].items()]),
        "",
        "## Quarantined by reason",
        "",
        _table(["reason", "count", "example ids"],
               [[reason, count, ", ".join(report["quarantine_examples"].get(reason, []))] for reason, count in report["quarantined_by_reason"].items()])
        if report["quarantined_by_reason"] else "None.",
        "",
        "Every row, with the failing check's value, is in `quarantine.csv`.",
        "",
        "## Duplicates (kept out; the first in source order is kept)",
        "",
        f"Exact (same pixels): {report['duplicates']['exact']}. Near (perceptual hash + thumbnail correlation): "
        f"{report['duplicates']['near']}. Across different labels: {report['duplicates']['across_labels']}. "
        "Pairs are in `duplicates.csv`.",
        "",
        "## Native sizes, modes and formats",
        "",
        _table(["size", "frames"], [[k, v] for k, v in report["native_sizes"].items()]),
        "",
        _table(["mode", "sources"], [[k, v] for k, v in report["native_modes"].items()]),
        "",
        _table(["format", "sources"], [[k, v] for k, v in report["formats"].items()]),
        "",
    ]
    if report["ignored_files"]:
        parts += ["Files ignored (not images): " + ", ".join(f"{k} {v}" for k, v in report["ignored_files"].items()) + ".", ""]
    if report["unused_label_map_keys"]:
        parts += ["Label map entries that matched nothing: " + ", ".join(report["unused_label_map_keys"]) + ".", ""]
    run = report["run"]
    parts += [
        "## Run",
        "",
        f"{run['processed_this_run']} source(s) processed this run in {run['seconds']} s "
        f"({run['sources_per_second']} per s, {run['workers']} worker(s)); {run['sources_total']} in the source.",
        "",
        "## Sensitive files",
        "",
        f"**`{SENSITIVE_DIR}/` is SENSITIVE**: `{SOURCE_MAP}` maps each opaque id back to its source file name, "
        f"`{JOURNAL}` and `{MARKER}` hold source paths and the key that makes the ids. Do not share that folder; "
        "everything else in OUT carries no source names and no DICOM header values.",
        "",
    ]
    return "\n".join(parts)


def write_contact_sheets(out: Path, manifest: list[dict], *, mode: str) -> list[Path]:
    """One grid per class of up to 64 kept images, spread evenly over the class; no text on them."""
    from PIL import Image

    by_label: dict[str, list[str]] = defaultdict(list)
    for row in manifest:
        by_label[row["label"]].append(row["path"])
    written = []
    for label, paths in sorted(by_label.items()):
        picks = [paths[i] for i in np.linspace(0, len(paths) - 1, num=min(CONTACT_MAX, len(paths))).round().astype(int)]
        rows = (len(picks) + CONTACT_COLUMNS - 1) // CONTACT_COLUMNS
        sheet = Image.new(mode, (CONTACT_COLUMNS * CONTACT_TILE, rows * CONTACT_TILE), 0)
        for index, path in enumerate(picks):
            with Image.open(out / path) as image:
                tile = image.convert(mode).resize((CONTACT_TILE, CONTACT_TILE), Image.Resampling.BILINEAR)
            sheet.paste(tile, ((index % CONTACT_COLUMNS) * CONTACT_TILE, (index // CONTACT_COLUMNS) * CONTACT_TILE))
        target = out / CONTACT_DIR / f"{label}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        sheet.save(buffer, format="PNG")
        write_atomically(target, buffer.getvalue())
        written.append(target)
    return written


def write_outputs(out: Path, records: dict[str, dict], *, context: dict, run: dict, final: bool) -> dict:
    """Write manifest, quarantine, duplicates, source map and reports (and contact sheets when ``final``)."""
    config = context["config"]
    manifest, quarantine, duplicates, source_map = _rows(records, config.size)
    write_atomically(out / "manifest.csv", _csv_text(MANIFEST_COLUMNS, manifest))
    write_atomically(out / "quarantine.csv", _csv_text(QUARANTINE_COLUMNS, quarantine))
    write_atomically(out / "duplicates.csv", _csv_text(DUPLICATE_COLUMNS, duplicates))
    write_atomically(out / SENSITIVE_DIR / SOURCE_MAP, _csv_text(("id", "source", "frame", "status", "output"), source_map), mode=SENSITIVE_FILE_MODE)
    report = build_report(records, context=context, run={**run, "complete": final}, manifest=manifest, quarantine=quarantine, duplicates=duplicates)
    report["complete"] = final
    if final:
        write_contact_sheets(out, manifest, mode=config.mode)
        shutil.rmtree(out / LEGACY_CONTACT_DIR, ignore_errors=True)  # an older run's sheets: a class to loaders
    write_atomically(out / "report.json", json.dumps(report, indent=2))
    write_atomically(out / "report.md", render_markdown(report))
    return report
