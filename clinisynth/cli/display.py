"""Rich rendering of plans, traces and generation progress for people (JSON is for programs)."""

from __future__ import annotations

import json

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table


def safe(value, *, one_line: bool = True) -> str:
    """``value`` as text to interpolate into rich markup: terminal escapes and control characters shown as escapes
    (:func:`~clinisynth.agents.requests.printable`), square brackets not read as markup."""
    from clinisynth.agents.requests import printable

    return escape(printable(value, one_line=one_line))


def show_plan(plan, console: Console | None = None) -> None:
    console = console or Console()
    modality = f"{safe(plan.modality.term)} ({safe(plan.modality.id)})" if plan.modality else "unknown"
    if plan.modality_inferred:
        modality += " \\[inferred from the findings]"
    console.print(f"[bold]modality[/bold] {modality}   [bold]label[/bold] {safe(plan.label)}")
    table = Table("finding", "status", "side", "location", "severity", "evidence", title="findings")
    for finding in plan.findings:
        table.add_row(*(safe(value) for value in (finding.term, finding.status, finding.laterality or "",
                                                  ", ".join(c.term for c in finding.location), finding.severity or "",
                                                  finding.evidence)))
    console.print(table)
    report = plan.report
    console.print(Panel(f"[bold]History[/bold] {safe(report.history)}\n[bold]Technique[/bold] {safe(report.technique)}\n"
                        f"[bold]Findings[/bold] {safe(report.findings)}\n[bold]Impression[/bold] "
                        f"{safe(report.impression)}", title="report"))
    console.print(f"[bold]prompt[/bold] {safe(plan.prompt)}\n[bold]negative[/bold] {safe(plan.negative_prompt)}")
    for line in [*plan.conflicts]:
        console.print(f"[yellow]conflict[/yellow] {safe(line)}")
    for line in plan.notes:
        console.print(f"[dim]note[/dim] {safe(line)}")


def _short(value, limit: int = 160) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _score_line(scores: dict) -> str:
    """The verifier's numbers of one attempt, short: classifier p, CLIP, nearest training image, duplicate."""
    from clinisynth.agents.verifier import metadata_scores

    flat = metadata_scores(scores)
    parts = [f"{name} {flat[key]:.3f}" for name, key in (("p", "classifier_label_probability"), ("clip", "clip_score"),
                                                          ("mem", "memorisation_similarity"),
                                                          ("dup", "duplicate_similarity")) if flat[key] is not None]
    return " ".join(parts)


def show_trace(trace: dict, console: Console | None = None) -> None:
    console = console or Console()
    from clinisynth.generation.storage import run_state

    # Everything a trace holds is shown through safe(): a trace may come from an older version or another tool.
    console.print(f"[bold]run[/bold] {safe(trace['run_id'])}  {safe(trace.get('created_at', ''))}  "
                  f"status {safe(run_state(trace))}")
    for resumed in trace.get("resumed", []):
        console.print(f"[bold]resumed[/bold] {safe(resumed.get('at'))} after {safe(resumed.get('after_status'))}"
                      + (f" ({safe(resumed['error'])})" if resumed.get("error") else ""))
    console.print(f"[bold]request[/bold] {safe(trace.get('request'), one_line=False)}")
    console.print(f"[bold]parameters[/bold] {safe(_short(trace.get('parameters'), 400))}")
    if trace.get("error"):
        console.print(f"[red]error[/red] {safe(trace['error'], one_line=False)}")
    if trace.get("adapters"):
        chosen = ", ".join(f"{a['name']}:{a['weight']:g}" for a in trace["adapters"].get("chosen", [])) or "none"
        console.print(f"[bold]adapters[/bold] {safe(chosen)} ({safe(trace['adapters'].get('mode'))}): "
                      f"{safe(trace['adapters'].get('reason'))}", soft_wrap=True)
    for number, event in enumerate(trace.get("events", []), start=1):
        console.print(f"\n[bold cyan]{number}. {safe(event['node'])}[/bold cyan]  round {safe(event.get('round', ''))}  "
                      f"{event['elapsed_ms']:.1f} ms  started {safe(event.get('started_at', ''))}")
        for direction in ("input", "output"):
            for key, value in (event.get(direction) or {}).items():
                console.print(f"   {direction:6s} [bold]{safe(key)}[/bold]: {safe(_short(value, 300))}", soft_wrap=True)
    if trace.get("verifier"):
        console.print(f"[bold]verifier[/bold] {safe(_short(trace['verifier'], 400))}")
    attempts = Table("slot", "round", "seed", "steps", "guidance", "verdict", "scores", "reasons", "action", "candidate",
                     title="attempts")
    styles = {"accepted": "green", "passed_not_chosen": "yellow"}
    for attempt in trace.get("attempts", []):
        style = styles.get(attempt["verdict"], "red")
        attempts.add_row(safe(attempt["slot"]), safe(attempt["round"]), safe(attempt["seed"]), safe(attempt["steps"]),
                         f"{attempt['guidance']:g}", f"[{style}]{safe(attempt['verdict'])}[/{style}]",
                         _score_line(attempt.get("scores") or {}), safe("; ".join(attempt.get("reasons", []))),
                         safe(attempt.get("action") or ""), safe(attempt["path"]))
    console.print(attempts)
    for name in trace.get("stored", []):
        console.print(f"stored {safe(name)}")


class GenerationProgress:
    """Progress of a run: which node is running and how many images of this round are done.

    The bar appears with the first event of the run, so a request refused before any work prints
    only its error.
    """

    def __init__(self, *, console: Console, total: int) -> None:
        self._console = console
        self._total = total
        self._progress: Progress | None = None
        self._task = None

    def __enter__(self) -> "GenerationProgress":
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def _started(self) -> Progress:
        if self._progress is None:
            self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                      MofNCompleteColumn(), TimeElapsedColumn(), console=self._console)
            self._progress.__enter__()
            self._task = self._progress.add_task("planning", total=self._total)
        return self._progress

    def update(self, event: str, info: dict) -> None:
        progress = self._started()
        if event == "node":
            progress.update(self._task, description=f"{info['node']} done ({info['elapsed_ms']:.0f} ms)")
        elif event == "image":
            progress.update(self._task, description=f"round {info['round']}: generating",
                            completed=info["done"], total=info["total"])
        elif event == "verifier":
            progress.update(self._task, description=f"verifier: {info['message']}")
