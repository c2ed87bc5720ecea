"""``clinisynth curate CAMPAIGN.yaml --out DIR``: a campaign file to a verified dataset, with rich progress."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from clinisynth.cli.errors import user_errors
from clinisynth.cli.options import path_parser

#: Item bars kept on screen; older finished ones are hidden (the overall bar stays).
VISIBLE_ITEMS = 8


class CampaignProgress:
    """An overall bar (slots decided of all, with ETA) and one bar per item as it runs.

    Nothing is drawn before the first event, so a campaign refused by its checks prints only its error.
    """

    def __init__(self, console) -> None:
        self._console = console
        self._progress = None
        self._overall = None
        self._items: dict[str, int] = {}

    def __enter__(self) -> "CampaignProgress":
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            if exc[0] is not None:  # refused or stopped: the error line alone, no half-drawn bars
                for task in self._progress.task_ids:
                    self._progress.update(task, visible=False)
                self._progress.live.transient = True
                self._progress.live.stop()  # Progress.stop would add an empty line when not on a terminal
                return
            self._progress.__exit__(*exc)

    def _started(self):
        if self._progress is None:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                      MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA"),
                                      TimeRemainingColumn(), console=self._console)
            self._progress.__enter__()
            self._overall = self._progress.add_task("planning items", total=None)
        return self._progress

    def update(self, event: str, info: dict) -> None:
        progress = self._started()
        if event == "planned":
            progress.update(self._overall, description="planning items", completed=info["done"], total=info["total"])
        elif event == "campaign":
            progress.update(self._overall, description=f"campaign ({info['items']} items)", completed=info["done"],
                            total=info["total"])
        elif event == "item":
            task = self._items.get(info["item"])
            if task is None:
                task = progress.add_task(f"  item {info['item']} ({info['label']})", total=info["count"],
                                         completed=info["done"])
                self._items[info["item"]] = task
                for old in list(self._items.values())[:-VISIBLE_ITEMS]:
                    progress.update(old, visible=False)
        elif event == "slot":
            progress.update(self._items[info["item"]], completed=info["done"])
            progress.update(self._overall, completed=info["campaign_done"])
        elif event == "chunk":
            progress.update(self._items[info["item"]], completed=info["done"])
            progress.update(self._overall, completed=info["campaign_done"])
        elif event == "requeued":
            progress.console.print(f"a worker died ({info['error']}); run {info['run_id']} sent to another",
                                   soft_wrap=True)


def curate(
    campaign: Annotated[Path, typer.Argument(help="campaign file (YAML): items with counts, an items file, or a "
                                                  "balance target; see the README's Curation campaigns",
                                             parser=path_parser("CAMPAIGN"))],
    out: Annotated[Path, typer.Option(help="output dataset directory; the journal is DIR/campaign/journal.sqlite",
                                      parser=path_parser("--out"))],
    skip_invalid: Annotated[bool, typer.Option(
        "--skip-invalid", help="write rows that cannot be run to DIR/campaign/rejected.csv and run the others")] = False,
    workers: Annotated[Optional[int], typer.Option(
        help="Ray workers, each holding its own generator and verifier (1 GPU each when there are GPUs); above 1 "
             "starts a local Ray; default 1: in this process (with --ray-address: one per GPU of the cluster). "
             'Needs pip install "clinisynth[ray]"')] = None,
    ray_address: Annotated[Optional[str], typer.Option(
        help="join this Ray cluster (auto, or ray://HEAD:10001) instead of a local one; this machine still "
             "writes the dataset")] = None,
) -> None:
    """Run a curation campaign: plan every item, then generate, verify and file its images, resumable.

    The same command after a kill, Ctrl-C or a reboot continues where it stopped; once complete, it only
    rewrites the report.
    """
    from rich.console import Console

    console = Console(stderr=True)
    with user_errors():
        from clinisynth.campaigns import curate as run

        with CampaignProgress(console) as progress:
            result = run(campaign, out=out, skip_invalid=skip_invalid, on_progress=progress.update, workers=workers,
                         ray_address=ray_address)
    counts = result.counts
    state = "complete" if result.complete else "not complete"
    console.print(f"campaign {state}: {counts['stored']} of {counts['total']} image(s) stored, {counts['given_up']} "
                  f"given up, in {out} ({result.runs} run(s) this time, {result.resumed} resumed; "
                  f"{result.seconds:.1f} s)", soft_wrap=True)
    if result.workers:
        console.print(f"on {len(result.workers)} Ray worker(s); {result.requeued} chunk(s) sent again after a worker "
                      "died", soft_wrap=True)
    if result.rejected:
        console.print(f"{result.rejected} row(s) skipped: {Path(out) / 'campaign' / 'rejected.csv'}", soft_wrap=True)
    typer.echo(str(result.report))
