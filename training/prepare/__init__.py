"""Data preparation: raw medical images (folders, CSV, MedMNIST .npz; raster or DICOM) to a clean,
de-identified, deduplicated training set with a manifest, a quarantine and a report."""

from clinisynth.training.prepare.discover import PrepareInputError
from clinisynth.training.prepare.pipeline import PrepareConfig, PrepareInterrupted, PrepareSummary, prepare_dataset

__all__ = ["PrepareConfig", "PrepareInputError", "PrepareInterrupted", "PrepareSummary", "prepare_dataset"]
