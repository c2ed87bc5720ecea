"""``clinisynth train classifier DATA --out DIR``: the verifier's classifier, with its model card.

A plain typer-annotated function; the main app registers it. Heavy libraries load inside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from clinisynth.cli.errors import fail
from clinisynth.cli.options import (check_at_least, check_device, check_fraction, check_output, check_seed,
                                    path_parser)


def train_classifier(
    data: Annotated[Path, typer.Argument(help="dataset prepared by 'clinisynth prepare' (manifest.csv + <label>/)",
                                         parser=path_parser("DATA"))],
    out: Annotated[Path, typer.Option(help="output directory: weights, config, card.json, README.md, loss curve",
                                      parser=path_parser("--out"))],
    test_data: Annotated[Optional[Path], typer.Option(help="separate held-out folder (else --test-fraction of DATA)")] = None,
    arch: Annotated[str, typer.Option(help="timm architecture")] = "mobilenetv3_small_050",
    pretrained: Annotated[Optional[str], typer.Option(help="timm weights: hub id or local dir (default: from scratch)")] = None,
    image_size: Annotated[int, typer.Option(help="input side in pixels (grey)")] = 64,
    epochs: Annotated[int, typer.Option(help="training epochs")] = 12,
    batch_size: Annotated[int, typer.Option(help="images per step")] = 64,
    lr: Annotated[float, typer.Option(help="peak learning rate (one-cycle AdamW)")] = 1e-3,
    test_fraction: Annotated[float, typer.Option(help="held-out share of DATA without --test-data")] = 0.15,
    calibration_fraction: Annotated[float, typer.Option(help="share of training data for temperature scaling")] = 0.1,
    seed: Annotated[int, typer.Option(help="seed of splits, weights and augmentation")] = 0,
    device: Annotated[str, typer.Option(help="torch device")] = "cpu",
    threads: Annotated[Optional[int], typer.Option(help="torch CPU threads")] = None,
    name: Annotated[Optional[str], typer.Option(help="classifier name in its card (default: OUT's name)")] = None,
    modality: Annotated[Optional[str], typer.Option(help="modality written to the card, e.g. chest_xray")] = None,
    attribution: Annotated[Optional[str], typer.Option(help="data source and license for the card")] = None,
) -> None:
    """Train a timm classifier on a prepared real dataset, calibrate it and write it with its model card."""
    for value, minimum, option in ((image_size, 8, "--image-size"), (epochs, 1, "--epochs"),
                                   (batch_size, 1, "--batch-size"), (threads, 1, "--threads")):
        check_at_least(value, minimum, option=option)
    if not lr > 0:
        fail(f"--lr must be positive, got {lr}")
    check_fraction(test_fraction, option="--test-fraction")
    check_fraction(calibration_fraction, option="--calibration-fraction")
    check_seed(seed)
    check_device(device)
    check_output(out, option="--out")
    from clinisynth.evaluation.classifier import ClassifierError
    from clinisynth.evaluation.metrics import DatasetError
    from clinisynth.training.classifier import train_classifier as run

    try:
        result = run(data, out, test_data=test_data, arch=arch, pretrained=pretrained, image_size=image_size,
                     epochs=epochs, batch_size=batch_size, lr=lr, test_fraction=test_fraction,
                     calibration_fraction=calibration_fraction, seed=seed, device=device, threads=threads, name=name,
                     modality=modality, attribution=attribution)
    except (DatasetError, ClassifierError) as error:
        fail(str(error))
    test = result.card["metrics"]["test"]
    typer.echo(f"held-out accuracy {test['accuracy']:.4f}, balanced accuracy {test['balanced_accuracy']:.4f} "
               f"({test['n']} images); card: {result.out / 'README.md'}")
