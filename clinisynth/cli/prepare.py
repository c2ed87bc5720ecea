"""``clinisynth prepare``: a raw medical image folder to a clean, de-identified training set.

The lead registers it with ``app.command("prepare")(prepare)``. Heavy imports happen inside the
function so ``clinisynth --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from clinisynth.cli.options import check_at_least, check_output, path_parser


def prepare(
    source: Annotated[Path, typer.Argument(help="ImageFolder-style folder (SOURCE/<class>/<image>), the folder a --csv's paths are relative to, or a MedMNIST .npz.", parser=path_parser("SOURCE"))],
    out: Annotated[Path, typer.Argument(help="Output folder: new or empty, or a previous run of the same preparation (it resumes). Must not be inside SOURCE.", parser=path_parser("OUT"))],
    size: Annotated[int, typer.Option(help="Output side in pixels; the aspect ratio is kept and the rest padded with black.")] = 256,
    mode: Annotated[str, typer.Option(help="Channel policy: L (grey, colour becomes luma) or RGB (grey is repeated).")] = "L",
    modality: Annotated[str | None, typer.Option(help="Modality of every image, e.g. chest_xray or modality.brain_mri (a CSV 'modality' column overrides it per row).")] = None,
    labels_from: Annotated[str, typer.Option(help="Where labels come from: folders (class folder names) or csv (--csv).")] = "folders",
    csv: Annotated[Path | None, typer.Option(help="CSV with columns path,text,modality,label (text and modality optional); paths relative to SOURCE.", parser=path_parser("--csv"))] = None,
    workers: Annotated[int, typer.Option(help="Decoding processes (1: decode in this process).")] = 2,
    label_map: Annotated[Path | None, typer.Option(help="YAML/JSON mapping of folder names (or npz class numbers) to labels, e.g. 'notumor: normal'. brain_mri needs one for the knowledge base's labels.", parser=path_parser("--label-map"))] = None,
    pages: Annotated[str, typer.Option(help="Multi-page TIFF / multi-frame DICOM: all pages, or the first.")] = "all",
    label_level: Annotated[int, typer.Option(help="Which parent folder names the class: -1 the innermost (train/glioma/x.png -> glioma), 0 the outermost.")] = -1,
    text_check: Annotated[bool, typer.Option(help="Quarantine images with text burned into the pixels (needs the tesseract program). --no-text-check turns it off; the report says so.")] = True,
    strict: Annotated[bool, typer.Option(help="Refuse the run (exit 2, nothing written) when a DICOM's Modality tag contradicts the modality it is filed under, instead of quarantining it.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Decode, check, de-identify, deduplicate and standardize a raw image dataset into OUT."""
    import sys

    check_at_least(workers, 1, option="--workers")
    check_output(out, option="OUT")  # a read-only or looping OUT fails here, not after decoding
    from clinisynth.training.prepare.discover import PrepareInputError
    from clinisynth.training.prepare.pipeline import PrepareConfig, PrepareInterrupted, prepare_dataset

    config = PrepareConfig(
        source=source,
        out=out,
        size=size,
        mode=mode,
        modality=modality,
        labels_from=labels_from,
        csv=csv,
        workers=workers,
        label_map=label_map,
        pages=pages,
        label_level=label_level,
        text_check=text_check,
        strict=strict,
    )
    try:
        summary = prepare_dataset(config, progress=progress)
    except PrepareInputError as error:
        from clinisynth.cli.errors import fail

        fail(str(error))
    except PrepareInterrupted as error:
        print(f"interrupted: {error}", file=sys.stderr)
        raise typer.Exit(code=130) from None
    print(
        f"kept {summary.kept}, quarantined {summary.quarantined}, duplicates {summary.duplicates} "
        f"({summary.processed} processed, {summary.skipped} already done, {summary.seconds:.1f} s); "
        f"report: {out / 'report.md'}; {out / '_sensitive'} is SENSITIVE (maps ids to source names)"
    )
