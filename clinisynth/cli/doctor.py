"""``clinisynth doctor DIR [--repair]``: the health of a generated dataset, and its repair.

Exit codes: 0 healthy (after ``--repair``: nothing left), 1 problems found (or left), 2 bad input.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from clinisynth.cli.errors import fail, user_errors


def doctor(
    directory: Annotated[Path, typer.Argument(help="output dir of `clinisynth generate` or `clinisynth curate`",
                                              metavar="DIR")],
    repair: Annotated[bool, typer.Option(
        "--repair", help="fix what is found: damaged and orphan files go to DIR/_quarantine/ (nothing is deleted), "
                         "half and garbage lines are taken out (and kept there), the manifest and counters rebuilt")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the problems (and repairs) as JSON")] = False,
) -> None:
    """Check a generated dataset: damaged or orphan PNGs, rows without PNGs, half or garbage lines, a foreign
    manifest, temporary files, counter drift; with --repair, fix them without touching an accepted image."""
    if not directory.exists():
        fail(f"{directory} does not exist; give the output dir of `clinisynth generate`")
    if not directory.is_dir():
        fail(f"{directory} is a file; give the output dir of `clinisynth generate`")
    with user_errors():
        from clinisynth.generation import owner
        from clinisynth.generation.doctor import repair_dataset
        from clinisynth.generation.health import inspect_dataset
        from clinisynth.generation.storage import StorageError, dataset_lock

        root = directory.absolute()
        try:
            kind = owner.dataset_kind(root)
        except owner.OwnerError:
            kind = None
        if kind == "prepare":
            raise StorageError(f"{directory} is a dataset made by `clinisynth prepare`; doctor checks generated "
                               "datasets (output dirs of `clinisynth generate` / `curate`)")
        actions = repair_dataset(root) if repair else []
        with dataset_lock(root, create=False):
            problems = inspect_dataset(root)
    if as_json:
        typer.echo(json.dumps({"dir": str(root), "repaired": actions,
                               "problems": [{"kind": p.kind, "path": str(p.path), "line": p.line, "detail": p.detail,
                                             "blocking": p.blocking} for p in problems]}, indent=2))
    else:
        for action in actions:
            typer.echo(f"repaired: {action}")
        for problem in problems:
            typer.echo(f"{'blocking' if problem.blocking else 'problem'}: {problem.describe(root)}")
        if not problems:
            typer.echo(f"{directory}: healthy" + (f" ({len(actions)} repair(s))" if actions else ""))
        else:
            blocking = sum(p.blocking for p in problems)
            typer.echo(f"{directory}: {len(problems)} problem(s), {blocking} blocking (a run into it is refused)"
                       + ("" if repair else f"; `clinisynth doctor {directory} --repair` fixes them (files are moved "
                                            "to _quarantine/, never deleted)"))
    if problems:
        raise typer.Exit(code=1)
