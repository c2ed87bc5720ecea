"""The campaign report: ``DIR/campaign/report.json``, ``report.md`` and plots, from the journal and the run traces.

Counts per class against the target, acceptance rate and rejection reasons per item (from each run trace's
``summary``), time per image, and a contact sheet per class (``generation.plots.contact_sheet``).
"""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

from clinisynth.curation.journal import CAMPAIGN_DIR, Journal

REPORT_JSON, REPORT_MD = "report.json", "report.md"
#: Images on one class's contact sheet, and the side of each.
SHEET_IMAGES, SHEET_SIDE = 48, 64
#: More items than this are plotted per class instead of per item.
PLOT_ITEMS = 40


def _trace_summary(storage, run_id: str) -> dict:
    try:
        return storage.read_trace(run_id).get("summary") or {}
    except Exception:  # noqa: BLE001 - a run with no trace (never created) has nothing to add
        return {}


def campaign_figures(journal: Journal, storage) -> dict:
    """Everything the report shows, JSON-native."""
    items = journal.items()
    slots = journal.slots()
    runs = journal.runs()
    by_item_state: dict[int, Counter] = {item.item: Counter() for item in items}
    for slot in slots:
        by_item_state[slot["item"]][slot["state"]] += 1
    per_item = {item.item: {"attempts": 0, "rejected": 0, "rejected_by_failure": Counter(), "wall_s": 0.0,
                            "generate_s": 0.0, "verify_s": 0.0, "runs": 0} for item in items}
    for run in runs:
        if run["state"] == "abandoned":
            continue
        figures = per_item[run["item"]]
        summary = _trace_summary(storage, run["run_id"])
        figures["runs"] += 1
        figures["attempts"] += int(summary.get("attempts", 0))
        figures["rejected"] += int(summary.get("rejected", 0))
        figures["rejected_by_failure"].update(summary.get("rejected_by_failure") or {})
        figures["generate_s"] += float(summary.get("generate_seconds", 0.0))
        figures["verify_s"] += float(summary.get("verify_seconds", 0.0))
        figures["wall_s"] += float(run["wall_s"] or 0.0)
    item_rows = []
    for item in items:
        states, figures = by_item_state[item.item], per_item[item.item]
        stored = states["stored"]
        item_rows.append({
            "id": item.key, "source": f"{item.source}:{item.line}", "description": item.description,
            "modality": item.modality, "label": item.label, "target": item.count, "stored": stored,
            "given_up": states["given_up"], "open": states["pending"] + states["running"],
            "attempts": figures["attempts"], "rejected": figures["rejected"],
            "acceptance_rate": round(stored / figures["attempts"], 4) if figures["attempts"] else None,
            "rejected_by_failure": dict(sorted(figures["rejected_by_failure"].items())),
            "runs": figures["runs"], "wall_s": round(figures["wall_s"], 3),
            "generate_s": round(figures["generate_s"], 3), "verify_s": round(figures["verify_s"], 3),
            "seconds_per_image": round(figures["wall_s"] / stored, 4) if stored else None,
        })
    classes: dict[str, dict] = {}
    for row in item_rows:
        key = f"{row['modality']}/{row['label']}"
        entry = classes.setdefault(key, {"modality": row["modality"], "label": row["label"], "target": 0,
                                         "stored": 0, "given_up": 0, "attempts": 0})
        for name in ("target", "stored", "given_up", "attempts"):
            entry[name] += row[name]
    totals = {name: sum(row[name] for row in item_rows) for name in ("target", "stored", "given_up", "open",
                                                                   "attempts", "rejected", "runs")}
    totals.update({name: round(sum(row[name] for row in item_rows), 3) for name in ("wall_s", "generate_s",
                                                                                  "verify_s")})
    totals["rejected_by_failure"] = dict(sorted(sum((Counter(r["rejected_by_failure"]) for r in item_rows),
                                                    Counter()).items()))
    totals["acceptance_rate"] = round(totals["stored"] / totals["attempts"], 4) if totals["attempts"] else None
    totals["seconds_per_image"] = round(totals["wall_s"] / totals["stored"], 4) if totals["stored"] else None
    return {"campaign": journal.name, "fingerprint": journal.fingerprint, "parameters": journal.parameters,
            "complete": totals["open"] == 0, "totals": totals, "classes": classes, "items": item_rows}


def _figure_png(path: Path, draw) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from clinisynth.generation.files import write_atomically

    figure = draw(plt)
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    write_atomically(path, buffer.getvalue())
    return path.name


def _plots(folder: Path, figures: dict) -> dict[str, str]:
    classes = list(figures["classes"].values())
    rows = figures["items"]
    per_class = len(rows) > PLOT_ITEMS
    if per_class:  # too many items to read one bar each: the same figures per class
        rows = [{"id": f"{c['label']}", "acceptance_rate": (c["stored"] / c["attempts"]) if c["attempts"] else 0,
                 "rejected_by_failure": dict(sum((Counter(r["rejected_by_failure"]) for r in figures["items"]
                                                  if r["label"] == c["label"] and r["modality"] == c["modality"]),
                                                 Counter())),
                 "seconds_per_image": _class_seconds(figures["items"], c)} for c in classes]
    names = [str(r["id"]) for r in rows]
    unit = "class" if per_class else "item"

    def counts(plt):
        figure, axis = plt.subplots(figsize=(max(5, 0.9 * len(classes) + 2), 4), dpi=100)
        positions = range(len(classes))
        axis.bar([p - 0.2 for p in positions], [c["target"] for c in classes], width=0.4, label="target",
                 color="lightgrey", edgecolor="grey")
        axis.bar([p + 0.2 for p in positions], [c["stored"] for c in classes], width=0.4, label="stored",
                 color="tab:green")
        axis.set_xticks(list(positions), [f"{c['modality']}\n{c['label']}" for c in classes], fontsize=8)
        axis.set_ylabel("images")
        axis.set_title("images per class against the target")
        axis.legend()
        return figure

    def acceptance(plt):
        figure, (left, right) = plt.subplots(1, 2, figsize=(11, max(3, 0.3 * len(rows) + 1.5)), dpi=100)
        left.barh(names, [r["acceptance_rate"] or 0 for r in rows], color="tab:blue")
        left.set_xlim(0, 1)
        left.set_xlabel("stored / attempts")
        left.set_title(f"acceptance rate per {unit}")
        left.invert_yaxis()
        reasons = sorted({reason for r in rows for reason in r["rejected_by_failure"]})
        offsets = [0] * len(rows)
        for reason in reasons:
            values = [r["rejected_by_failure"].get(reason, 0) for r in rows]
            right.barh(names, values, left=offsets, label=reason)
            offsets = [a + b for a, b in zip(offsets, values)]
        if not reasons:
            right.barh(names, [0] * len(rows))
            right.set_xlim(0, 1)
            right.text(0.5, 0.5, "no rejections", transform=right.transAxes, ha="center")
        else:
            right.legend(fontsize=8)
        right.set_xlabel("rejected attempts")
        right.set_title(f"rejection reasons per {unit}")
        right.invert_yaxis()
        return figure

    def timing(plt):
        figure, axis = plt.subplots(figsize=(7, max(3, 0.3 * len(rows) + 1.5)), dpi=100)
        axis.barh(names, [r["seconds_per_image"] or 0 for r in rows], color="tab:orange")
        axis.set_xlabel("wall seconds per stored image (generate + verify + file)")
        axis.set_title(f"time per image, per {unit}")
        axis.invert_yaxis()
        return figure

    return {"counts_per_class": _figure_png(folder / "counts_per_class.png", counts),
            "acceptance": _figure_png(folder / "acceptance.png", acceptance),
            "time_per_image": _figure_png(folder / "time_per_image.png", timing)}


def _class_seconds(items: list[dict], entry: dict) -> float:
    mine = [r for r in items if r["label"] == entry["label"] and r["modality"] == entry["modality"]]
    stored = sum(r["stored"] for r in mine)
    return sum(r["wall_s"] for r in mine) / stored if stored else 0.0


def _sheets(out: Path, folder: Path, journal: Journal) -> dict[str, str]:
    """One contact sheet per class of the campaign's stored images (the first :data:`SHEET_IMAGES`)."""
    from PIL import Image

    from clinisynth.generation.plots import contact_sheet

    files: dict[str, list[str]] = {}
    for _, _, file_name in journal.stored_files():
        modality, label = Path(file_name).parts[:2]
        files.setdefault(f"{modality}/{label}", []).append(file_name)
    sheets = {}
    for key, names in sorted(files.items()):
        images, labels = [], []
        for name in sorted(names)[:SHEET_IMAGES]:
            with Image.open(out / name) as image:
                images.append(image.convert("RGB").resize((SHEET_SIDE, SHEET_SIDE)))
            labels.append(Path(name).stem.rsplit("_", 1)[-1])
        path = folder / "sheets" / f"{key.replace('/', '__')}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        contact_sheet(path, images, columns=min(8, len(images)), labels=labels)
        sheets[key] = str(path.relative_to(folder))
    return sheets


def write_report(out: Path, journal: Journal, *, storage, rejected: int = 0, timing: dict | None = None) -> Path:
    """Write ``DIR/campaign/report.json``, ``report.md``, the plots and the contact sheets; return report.md's path.

    Args:
        rejected: rows left out with ``--skip-invalid`` (listed in ``rejected.csv``).
        timing: figures of this session (e.g. total wall seconds), added under ``session``.
    """
    from clinisynth.generation.files import write_atomically

    out = Path(out)
    folder = out / CAMPAIGN_DIR
    figures = campaign_figures(journal, storage)
    figures["rejected_rows"] = rejected
    if timing:
        figures["session"] = timing
    figures["plots"] = _plots(folder, figures)
    figures["contact_sheets"] = _sheets(out, folder, journal)
    write_atomically(folder / REPORT_JSON, json.dumps(figures, indent=2, sort_keys=True) + "\n")
    return write_atomically(folder / REPORT_MD, _markdown(figures))


def _markdown(figures: dict) -> str:
    totals = figures["totals"]
    rate = "n/a" if totals["acceptance_rate"] is None else f"{totals['acceptance_rate']:.2f}"
    lines = [f"# Campaign {figures['campaign']}", "",
             f"{'Complete' if figures['complete'] else 'Not complete'}: {totals['stored']} of {totals['target']} "
             f"images stored, {totals['given_up']} slot(s) given up after every round failed, {totals['open']} "
             f"still open; {totals['runs']} run(s), {totals['attempts']} attempts, acceptance rate {rate}.",
             f"Run settings: {json.dumps(figures['parameters'], sort_keys=True)}."]
    if figures.get("rejected_rows"):
        lines.append(f"{figures['rejected_rows']} row(s) of the campaign were skipped: see rejected.csv.")
    if totals["seconds_per_image"] is not None:
        lines.append(f"Time: {totals['wall_s']:.1f} s in runs ({totals['generate_s']:.1f} s generating, "
                     f"{totals['verify_s']:.1f} s verifying), {totals['seconds_per_image']:.3f} s per stored image.")
    lines += ["", "## Images per class", "", "| modality | label | target | stored | given up |", "|---|---|---|---|---|"]
    for entry in figures["classes"].values():
        lines.append(f"| {entry['modality']} | {entry['label']} | {entry['target']} | {entry['stored']} | "
                     f"{entry['given_up']} |")
    lines += ["", f"![images per class]({figures['plots']['counts_per_class']})", "", "## Items", "",
              "| id | where | label | target | stored | given up | attempts | acceptance | rejected by reason | s / image |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for row in figures["items"]:
        reasons = ", ".join(f"{k} {v}" for k, v in row["rejected_by_failure"].items()) or "-"
        acceptance = "-" if row["acceptance_rate"] is None else f"{row['acceptance_rate']:.2f}"
        seconds = "-" if row["seconds_per_image"] is None else f"{row['seconds_per_image']:.3f}"
        lines.append(f"| {row['id']} | {row['source']} | {row['label']} | {row['target']} | {row['stored']} | "
                     f"{row['given_up']} | {row['attempts']} | {acceptance} | {reasons} | {seconds} |")
    session = figures.get("session") or {}
    if session.get("workers"):
        lines += ["", "## Ray workers (this session)", "",
                  f"{len(session['workers'])} worker(s); {session.get('requeued', 0)} chunk(s) sent again after a "
                  f"worker died, {session.get('conflicts', 0)} to check duplicates against the whole dataset.", "",
                  "| pid | host | device | RSS | chunks |", "|---|---|---|---|---|"]
        for worker in session["workers"]:
            lines.append(f"| {worker['pid']} | {worker['host']} | {worker['device']} | "
                         f"{worker['rss_bytes'] / 2**20:.0f} MiB | {worker['chunks']} |")
    lines += ["", f"![acceptance and rejection reasons]({figures['plots']['acceptance']})", "",
              f"![time per image]({figures['plots']['time_per_image']})", "", "## Contact sheets", ""]
    for key, path in figures["contact_sheets"].items():
        lines += [f"### {key}", "", f"![{key}]({path})", ""]
    return "\n".join(lines) + "\n"
