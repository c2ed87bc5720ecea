"""Rich rendering of plans, traces and generation progress for people (JSON is for programs)."""

from __future__ import annotations

import json

from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table


def show_plan(plan, console: Console | None = None) -> None:
    console = console or Console()
    modality = f"{plan.modality.term} ({plan.modality.id})" if plan.modality else "unknown"
    if plan.modality_inferred:
        modality += " [inferred from the findings]"
    console.print(f"[bold]modality[/bold] {modality}   [bold]label[/bold] {plan.label}")
    table = Table("finding", "status", "side", "location", "severity", "evidence", title="findings")
    for finding in plan.findings:
        table.add_row(finding.term, finding.status, finding.laterality or "", ", ".join(c.term for c in finding.location),
                      finding.severity or "", finding.evidence)
    console.print(table)
    report = plan.report
    console.print(Panel(f"[bold]History[/bold] {report.history}\n[bold]Technique[/bold] {report.technique}\n"
                        f"[bold]Findings[/bold] {report.findings}\n[bold]Impression[/bold] {report.impression}",
                        title="report"))
    console.print(f"[bold]prompt[/bold] {plan.prompt}\n[bold]negative[/bold] {plan.negative_prompt}")
    for line in [*plan.conflicts]:
        console.print(f"[yellow]conflict[/yellow] {line}")
    for line in plan.notes:
        console.print(f"[dim]note[/dim] {line}")


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

    console.print(f"[bold]run[/bold] {trace['run_id']}  {trace.get('created_at', '')}  status {run_state(trace)}")
    for resumed in trace.get("resumed", []):
        console.print(f"[bold]resumed[/bold] {resumed.get('at')} after {resumed.get('after_status')}"
                      + (f" ({resumed['error']})" if resumed.get("error") else ""))
    console.print(f"[bold]request[/bold] {trace.get('request')}")
    console.print(f"[bold]parameters[/bold] {_short(trace.get('parameters'), 400)}")
    if trace.get("error"):
        console.print(f"[red]error[/red] {trace['error']}")
    if trace.get("adapters"):
        chosen = ", ".join(f"{a['name']}:{a['weight']:g}" for a in trace["adapters"].get("chosen", [])) or "none"
        console.print(f"[bold]adapters[/bold] {chosen} ({trace['adapters'].get('mode')}): "
                      f"{trace['adapters'].get('reason')}", soft_wrap=True)
    for number, event in enumerate(trace.get("events", []), start=1):
        console.print(f"\n[bold cyan]{number}. {event['node']}[/bold cyan]  round {event.get('round', '')}  "
                      f"{event['elapsed_ms']:.1f} ms  started {event.get('started_at', '')}")
        for direction in ("input", "output"):
            for key, value in (event.get(direction) or {}).items():
                console.print(f"   {direction:6s} [bold]{key}[/bold]: {_short(value, 300)}", soft_wrap=True)
    if trace.get("verifier"):
        console.print(f"[bold]verifier[/bold] {_short(trace['verifier'], 400)}")
    attempts = Table("slot", "round", "seed", "steps", "guidance", "verdict", "scores", "reasons", "action", "candidate",
                     title="attempts")
    styles = {"accepted": "green", "passed_not_chosen": "yellow"}
    for attempt in trace.get("attempts", []):
        style = styles.get(attempt["verdict"], "red")
        attempts.add_row(str(attempt["slot"]), str(attempt["round"]), str(attempt["seed"]), str(attempt["steps"]),
                         f"{attempt['guidance']:g}", f"[{style}]{attempt['verdict']}[/{style}]",
                         _score_line(attempt.get("scores") or {}), "; ".join(attempt.get("reasons", [])),
                         attempt.get("action") or "", attempt["path"])
    console.print(attempts)
    for name in trace.get("stored", []):
        console.print(f"stored {name}")


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
