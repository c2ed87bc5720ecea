"""``clinisynth evaluate SYNTH_DIR --real REAL_DIR``: the evaluation report of a synthetic dataset.

A plain typer-annotated function; the main app registers it. Heavy libraries load inside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from clinisynth.cli.errors import fail, user_errors
from clinisynth.cli.options import (check_at_least, check_device, check_fraction, check_output, check_seed,
                                    path_parser)


def evaluate(
    synth_dir: Annotated[Path, typer.Argument(help="synthetic dataset (output dir of 'clinisynth generate')",
                                              parser=path_parser("SYNTH_DIR"))],
    real: Annotated[Path, typer.Option("--real", help="real dataset prepared by 'clinisynth prepare' (also the "
                                                     "generator's training images, for memorisation)",
                                       parser=path_parser("--real"))],
    out: Annotated[Optional[Path], typer.Option(help="report folder (default SYNTH_DIR/evaluation)",
                                                parser=path_parser("--out"))] = None,
    classifier: Annotated[Optional[Path], typer.Option(help="trained classifier dir: agreement, FD in its features")] = None,
    clip_model: Annotated[Optional[str], typer.Option(help="open_clip model dir or hf-hub:ID for CLIP scores")] = None,
    inception_weights: Annotated[Optional[Path], typer.Option(
        help="InceptionV3 FID weights file (default: torch hub cache); FID / IS are 'not computable' without it")] = None,
    real_test: Annotated[Optional[Path], typer.Option(help="held-out real images for downstream utility")] = None,
    downstream: Annotated[bool, typer.Option(help="train the downstream-utility classifiers (slow)")] = True,
    real_fraction: Annotated[float, typer.Option(help="scarce share of real training images for downstream")] = 0.1,
    seeds: Annotated[int, typer.Option(help="downstream runs per regime (confidence intervals need 2+)")] = 3,
    downstream_epochs: Annotated[int, typer.Option(help="epochs of each downstream training run")] = 6,
    image_size: Annotated[int, typer.Option(help="downstream classifier input side in pixels")] = 64,
    max_real_per_class: Annotated[int, typer.Option(help="real images per class sampled for distribution metrics")] = 1000,
    memorisation_threshold: Annotated[Optional[float], typer.Option(
        help="nearest-training-image similarity counted as memorised (default 0.985)")] = None,
    cache_dir: Annotated[Optional[Path], typer.Option(help="memorisation index cache (default: settings cache_dir)",
                                                      parser=path_parser("--cache-dir"))] = None,
    device: Annotated[str, typer.Option(help="torch device")] = "cpu",
    seed: Annotated[int, typer.Option(help="seed of samples and splits")] = 0,
) -> None:
    """Fidelity (FID / FD per class), diversity (MS-SSIM), CLIP score, classifier agreement, memorisation and
    downstream utility of a synthetic dataset; writes report.json, report.md and plots."""
    from rich.console import Console

    from clinisynth.evaluation.classifier import ClassifierError
    from clinisynth.evaluation.downstream import DownstreamSettings
    from clinisynth.evaluation.memorisation import MemorisationError
    from clinisynth.evaluation.metrics import DatasetError
    from clinisynth.evaluation.report import REPORT_MD, evaluate_dataset

    console = Console(stderr=True)
    if seeds < 1:
        fail(f"--seeds must be at least 1, got {seeds}")
    if not 0.0 < real_fraction <= 1.0:
        fail(f"--real-fraction must be in (0, 1], got {real_fraction}")
    for value, minimum, option in ((downstream_epochs, 1, "--downstream-epochs"), (image_size, 8, "--image-size"),
                                   (max_real_per_class, 1, "--max-real-per-class")):
        check_at_least(value, minimum, option=option)
    check_fraction(memorisation_threshold, option="--memorisation-threshold")
    check_seed(seed)
    for folder, option in ((synth_dir, "SYNTH_DIR"), (real, "--real")):
        if not folder.is_dir():
            fail(f"{option} {folder} is not a folder; give a dataset folder")
    out = out or synth_dir / "evaluation"
    check_output(out, option="--out")
    check_device(device)
    if cache_dir is None:
        with user_errors():
            from clinisynth.settings import Settings

            cache_dir = Settings().cache_dir
    settings = DownstreamSettings(real_fraction=real_fraction, seeds=tuple(range(seeds)), epochs=downstream_epochs,
                                  image_size=image_size, device=device)
    try:
        evaluate_dataset(
            synth_dir, real, out, classifier_dir=classifier, clip_model=clip_model, inception_weights=inception_weights,
            cache_dir=cache_dir, memorisation_threshold=memorisation_threshold, max_real_per_class=max_real_per_class,
            downstream=downstream, downstream_settings=settings, real_test_dir=real_test, device=device, seed=seed,
            log=lambda line: console.print(f"[dim]{line}[/dim]"),
        )
    except (DatasetError, ClassifierError, MemorisationError) as error:
        fail(str(error))
    console.print(f"report: {out / REPORT_MD}")
    typer.echo(str(out / "report.json"))
