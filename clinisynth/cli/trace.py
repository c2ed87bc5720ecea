"""``clinisynth trace list | show``: what each node received, decided and how long it took."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from clinisynth.agents.requests import printable
from clinisynth.cli.errors import fail
from clinisynth.cli.options import path_parser

app = typer.Typer(help="Review the traces of generation runs.", no_args_is_help=True)


def _check_directory(directory: Path) -> None:
    if not directory.exists():
        fail(f"{directory} does not exist; give the output dir of a 'clinisynth generate' run")
    if not directory.is_dir():
        fail(f"{directory} is not a directory; give the output dir of a 'clinisynth generate' run")


def _read_trace(path: Path) -> dict:
    """The trace in ``path``; raises ``ValueError`` naming what is wrong with the file."""
    try:
        trace = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as error:
        raise ValueError(f"cannot be read ({error.strerror})") from None
    except UnicodeDecodeError:
        raise ValueError("is not text (not UTF-8)") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"is not valid JSON ({error})") from None
    if not isinstance(trace, dict) or not isinstance(trace.get("run_id"), str):
        raise ValueError("is not a run trace (no run_id)")
    return trace


def _traces(directory: Path) -> list[tuple[Path, dict]]:
    _check_directory(directory)
    found = []
    # Generated run ids sort in creation order (agents.runner.new_run_id): list oldest first by id.
    for path in sorted((directory / "runs").glob("*/trace.json"), key=lambda path: path.parent.name):
        try:
            found.append((path, _read_trace(path)))
        except ValueError as error:
            typer.echo(f"warning: trace {printable(str(path), one_line=True)} {error}; skipped", err=True)
    return found


@app.command("list")
def list_runs(directory: Annotated[Path, typer.Argument(help="output dir of generate runs",
                                                       parser=path_parser("DIR"))] = Path(".")) -> None:
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
        # What a trace holds is shown escaped: a request or id with terminal escapes must not rewrite the screen.
        row = [printable(value, one_line=True) for value in (trace["run_id"], trace.get("created_at", ""), status,
                                                              stored, summary.get("rejected", 0),
                                                              trace.get("request", ""))]
        typer.echo(f"{row[0]:32s}  {row[1]:29s}  {row[2]:11s}  {row[3]:>7s}  {row[4]:>8}  {row[5][:70]}")


def _find_trace(run_id: str, directory: Path) -> Path:
    if not run_id.strip():
        fail("the run id is empty; give one that 'clinisynth trace list DIR' shows")
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
    directory: Annotated[Path, typer.Option("--dir", help="output dir that holds runs/",
                                            parser=path_parser("--dir"))] = Path("."),
    as_json: Annotated[bool, typer.Option("--json", help="print the whole trace as JSON")] = False,
) -> None:
    """Every node's input, output and timing, and every attempt with its verdict."""
    path = _find_trace(run_id, directory)
    try:
        trace = _read_trace(path)
    except ValueError as error:
        fail(f"{path} {error}; give a run id, its folder or its trace.json")
    if as_json:
        typer.echo(json.dumps(trace, indent=2))
        return
    from clinisynth.cli.display import show_trace

    show_trace(trace)
