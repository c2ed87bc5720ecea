"""The ``clinisynth`` command. Only typer is imported here: ``--help`` stays fast, models load per command."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from clinisynth.cli import knowledge as knowledge_commands
from clinisynth.cli import trace as trace_commands
from clinisynth.cli import train as train_commands
from clinisynth.cli.curate import curate
from clinisynth.cli.doctor import doctor
from clinisynth.cli.errors import fail, user_errors
from clinisynth.cli.evaluate import evaluate
from clinisynth.cli.options import path_parser
from clinisynth.cli.prepare import prepare
from clinisynth.cli.serve import serve
from clinisynth.cli.train_classifier import train_classifier

app = typer.Typer(
    name="clinisynth",
    help="Free-text clinical descriptions to verified, labelled synthetic medical images, with an auditable trace.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(knowledge_commands.app, name="knowledge")
app.add_typer(trace_commands.app, name="trace")
app.command("prepare", help="Raw medical image folder / CSV / MedMNIST npz -> clean, de-identified PNG dataset.")(prepare)
app.command("evaluate", help="Realism, diversity, faithfulness and downstream utility of a synthetic dataset.")(evaluate)
train_commands.app.command("classifier", help="Train the verifier's classifier on a prepared dataset.")(train_classifier)
app.add_typer(train_commands.app, name="train")
app.command("curate")(curate)
app.command("doctor")(doctor)
app.command("serve")(serve)


@app.command()
def plan(
    text: Annotated[Optional[str], typer.Argument(help="free-text clinical description")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the plan as JSON (the documented contract)")] = False,
    jsonl: Annotated[
        Optional[Path], typer.Option(help="file with one description per line; writes one JSON object per line",
                                     parser=path_parser("--jsonl"))
    ] = None,
) -> None:
    """Show the structured plan (findings, report, prompt, label) of a description."""
    if (text is None) == (jsonl is None):
        fail("give either a description TEXT or --jsonl FILE, not both and not neither")
    with user_errors():
        from clinisynth.agents.requests import check_request
        from clinisynth.settings import Settings

        settings = Settings()
        # Text and file checks before spaCy and the planner load (seconds).
        lines = _read_lines(jsonl) if jsonl is not None else None
        if text is not None:
            check_request(text, max_chars=settings.max_request_chars)
        from clinisynth.agents.reasoning.cache import import_nlp_libraries

        # First, before anything imports spaCy the plain way (which drags in torch and scipy): the
        # reasoning modules that clinisynth.api imports through the settings may import it at module level.
        import_nlp_libraries()
        from clinisynth.api import get_planner

        if lines is not None:
            _plan_lines(jsonl, lines, settings=settings)
            return
        result = get_planner(settings).plan(text)
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
    else:
        from clinisynth.cli.display import show_plan

        show_plan(result)


def _read_lines(path: Path) -> list[str]:
    """The lines of a ``--jsonl`` file; a missing, unreadable or binary file is one ``error:`` line."""
    if not path.is_file():
        fail(f"--jsonl file {path} does not exist" if not path.exists() else f"--jsonl {path} is not a file")
    try:
        data = path.read_bytes()
    except OSError as error:
        fail(f"--jsonl file {path} cannot be read ({error.strerror})")
    nul = data.find(b"\0")
    if nul >= 0:
        fail(f"--jsonl file {path} is binary (a NUL byte at offset {nul}), not text with one description per line")
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark is not part of the first description
    except UnicodeDecodeError as error:
        fail(f"--jsonl file {path} is not UTF-8 text (byte 0x{data[error.start]:02x} at offset {error.start}); "
             "convert it to UTF-8 (e.g. iconv -t UTF-8)")
        raise AssertionError from None  # unreachable: fail() exits
    # Lines end at \n, \r\n or \r only (as a text file reads): other separators are control characters in a line.
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _plan_lines(path: Path, lines: list[str], *, settings) -> None:
    from clinisynth.agents.planner import PlanError
    from clinisynth.api import get_planner

    planner = get_planner(settings)
    failures = 0
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            record = planner.plan(text).model_dump(mode="json")
        except PlanError as error:
            failures += 1
            record = {"request": text, "line": number, "error": str(error)}
        sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()
    if failures:
        typer.echo(f"error: {failures} line(s) of {path} could not be planned (see their 'error' field)", err=True)
        raise typer.Exit(code=2)


@app.command()
def generate(
    text: Annotated[Optional[str], typer.Argument(help="free-text clinical description")] = None,
    n: Annotated[Optional[int], typer.Option("-n", "--n", help="number of accepted images wanted [default: 4]")] = None,
    out: Annotated[Path, typer.Option(help="output dataset directory (ordered storage)",
                                      parser=path_parser("--out"))] = Path("clinisynth-out"),
    seed: Annotated[Optional[int], typer.Option(
        help="base seed; image i uses seed + i. Not given: a fresh one is drawn. Seeds earlier runs in --out drew "
             "are never drawn again (the run continues with unused ones)")] = None,
    steps: Annotated[Optional[int], typer.Option(help="sampler steps (profile default when unset)")] = None,
    guidance: Annotated[Optional[float], typer.Option(help="classifier-free guidance scale")] = None,
    max_rounds: Annotated[Optional[int], typer.Option(help="generate/verify/refine rounds before giving up")] = None,
    profile: Annotated[Optional[str], typer.Option(help="model profile: tiny, demo or full")] = None,
    best_of: Annotated[Optional[int], typer.Option(help="candidates per image and round; the best that passes is kept")] = None,
    resume: Annotated[Optional[str], typer.Option(
        help="continue the interrupted run RUN_ID in --out from its checkpoint, with its own description and settings",
        metavar="RUN_ID")] = None,
    adapter: Annotated[Optional[list[str]], typer.Option(
        "--adapter", metavar="NAME_OR_PATH[:WEIGHT]",
        help="LoRA adapter to draw with (repeatable; weight 1 by default); none named: the plan chooses one from "
             "--adapters-dir")] = None,
    adapters_dir: Annotated[Optional[Path], typer.Option(
        help="folder of adapter folders (default: setting adapters_dir, else the shipped one)")] = None,
) -> None:
    """Plan, generate, verify and file images (each as it passes); every step is traced under OUT/runs/<run_id>/."""
    from rich.console import Console

    if resume is None and text is None:
        fail("give a description TEXT (or --resume RUN_ID to continue an interrupted run)")
    if resume is not None:
        given = [name for name, value in (("-n", n), ("--seed", seed), ("--steps", steps), ("--guidance", guidance),
                                          ("--max-rounds", max_rounds), ("--profile", profile),
                                          ("--best-of", best_of), ("--adapter", adapter or None),
                                          ("--adapters-dir", adapters_dir)) if value is not None]
        if given:
            fail(f"--resume continues the run with its own settings; leave out {', '.join(given)}")
    console = Console(stderr=True)
    with user_errors():
        from clinisynth.api import generate as run
        from clinisynth.cli.display import GenerationProgress

        with GenerationProgress(console=console, total=n or 4) as progress:
            result = run(text or "", out=out, n=4 if n is None else n, seed=seed, steps=steps,
                         guidance=guidance, max_rounds=max_rounds, best_of=best_of, profile=profile,
                         on_progress=progress.update, resume=resume, adapters=adapter or None,
                         adapters_dir=adapters_dir)
    requested = result.trace.get("parameters", {}).get("n_images", n)
    resumed = " (resumed)" if resume else ""
    parameters = result.trace.get("parameters", {})
    if parameters.get("seed_note") and not resume:
        console.print(f"note: {parameters['seed_note']}")
    drawn = " (drawn)" if parameters.get("seed_requested", 0) is None else ""
    console.print(f"run {result.run_id}{resumed}: {result.status}, stored {len(result.stored)} of {requested} image(s) "
                  f"in {out}; base seed {parameters.get('seed')}{drawn}")
    for name in result.stored:
        typer.echo(str(Path(out) / name))
    console.print(f"trace: {result.trace_path}")
    if result.status == "failed":
        raise typer.Exit(code=1)


if __name__ == "__main__":
    app()
