"""``clinisynth trace list | show``: what each node received, decided and how long it took."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from clinisynth.cli.errors import fail

app = typer.Typer(help="Review the traces of generation runs.", no_args_is_help=True)


def _traces(directory: Path) -> list[tuple[Path, dict]]:
    runs = directory / "runs"
    if not directory.is_dir():
        fail(f"{directory} is not a directory; give the output dir of a 'clinisynth generate' run")
    found = []
    # Generated run ids sort in creation order (agents.runner.new_run_id): list oldest first by id.
    for path in sorted(runs.glob("*/trace.json"), key=lambda path: path.parent.name):
        try:
            found.append((path, json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, json.JSONDecodeError) as error:
            typer.echo(f"warning: unreadable trace {path}: {error}", err=True)
    return found


@app.command("list")
def list_runs(directory: Annotated[Path, typer.Argument(help="output dir of generate runs")] = Path(".")) -> None:
    """One line per run: id, time, status (``interrupted``: killed, resume it with ``clinisynth generate
    --resume RUN_ID``), stored / requested, rejected attempts, request."""
    from clinisynth.generation.storage import run_state

    traces = _traces(directory)
    if not traces:
        typer.echo(f"no runs in {directory / 'runs'}")
        return
    typer.echo(f"{'run id':32s}  {'created':29s}  {'status':11s}  {'stored':>7s}  {'rejected':>8s}  request")
    for _, trace in traces:
        summary = trace.get("summary", {})
        requested = summary.get("requested", trace.get("parameters", {}).get("n_images", "?"))
        stored = f"{summary.get('stored', 0)}/{requested}"
        status = run_state(trace) + ("*" if trace.get("resumed") else "")
        typer.echo(f"{trace['run_id']:32s}  {trace.get('created_at', ''):29s}  {status:11s}  "
                   f"{stored:>7s}  {summary.get('rejected', 0):>8}  {trace.get('request', '')[:70]}")


def _find_trace(run_id: str, directory: Path) -> Path:
    given = Path(run_id)
    for candidate in (given, given / "trace.json", directory / "runs" / run_id / "trace.json"):
        if candidate.is_file():
            return candidate
    known = [path.parent.name for path, _ in _traces(directory)] if directory.is_dir() else []
    fail(f"no run {run_id!r} in {directory / 'runs'}" + (f"; known runs: {', '.join(known[-5:])}" if known else
                                                         "; pass --dir OUT_DIR"))
    raise AssertionError  # unreachable: fail() exits


@app.command()
def show(
    run_id: Annotated[str, typer.Argument(help="run id (or a path to its folder or trace.json)")],
    directory: Annotated[Path, typer.Option("--dir", help="output dir that holds runs/")] = Path("."),
    as_json: Annotated[bool, typer.Option("--json", help="print the whole trace as JSON")] = False,
) -> None:
    """Every node's input, output and timing, and every attempt with its verdict."""
    path = _find_trace(run_id, directory)
    trace = json.loads(path.read_text(encoding="utf-8"))
    if as_json:
        typer.echo(json.dumps(trace, indent=2))
        return
    from clinisynth.cli.display import show_trace

    show_trace(trace)
