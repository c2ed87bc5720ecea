"""The verifier of a generation run, built from settings: which signals it has and why the others are missing."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from clinisynth.settings import Settings


class VerifierSetupError(ValueError):
    """A verifier setting (``classifiers_dir``, ``verifier_thresholds``, ``memorisation_data``) cannot be used.

    A user error: the CLI reports it as one ``error:`` line and exit code 2.
    """


def check_verifier_settings(settings: Settings) -> None:
    """The cheap checks of the verifier's settings, for before anything is loaded or written (any profile).

    Raises:
        VerifierSetupError: ``classifiers_dir`` is not a folder, a threshold field does not exist or is out of
            range, or a ``memorisation_data`` folder has no ``manifest.csv``.
    """
    classifier_dirs(settings)
    thresholds(settings)
    for modality, folder in settings.memorisation_data.items():
        folder = Path(folder).expanduser()
        if not (folder / "manifest.csv").is_file():
            raise VerifierSetupError(f"memorisation_data.{modality}: no manifest.csv in {folder}; point it at a "
                                     "dataset prepared with `clinisynth prepare`")


def classifier_dirs(settings: Settings) -> dict[str, Path]:
    """Per storage modality, the classifier folder in ``settings.classifiers_dir`` (the shipped ones when unset).

    Raises:
        VerifierSetupError: ``classifiers_dir`` is set but is not a folder.
    """
    from clinisynth.evaluation.classifier import CONFIG_NAME
    from clinisynth.models import CLASSIFIERS_DIR

    root = Path(settings.classifiers_dir or CLASSIFIERS_DIR).expanduser()
    if settings.classifiers_dir is not None and not root.is_dir():
        raise VerifierSetupError(f"classifiers_dir {root} is not a folder; point CLINISYNTH_CLASSIFIERS_DIR at the "
                                 "folder holding one classifier per modality (e.g. chest_xray/)")
    if not root.is_dir():
        return {}
    return {child.name: child for child in sorted(root.iterdir()) if (child / CONFIG_NAME).is_file()}


def thresholds(settings: Settings) -> dict:
    """The default per-modality thresholds with the settings' overrides applied.

    Raises:
        VerifierSetupError: a field that does not exist, or a value out of its range.
    """
    from dataclasses import fields, replace

    from clinisynth.agents.verifier import DEFAULT_THRESHOLDS, ModalityThresholds

    merged = dict(DEFAULT_THRESHOLDS)
    known = {f.name for f in fields(ModalityThresholds)} - {"sanity"}
    for modality, overrides in settings.verifier_thresholds.items():
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise VerifierSetupError(f"verifier_thresholds.{modality} has unknown field(s) {unknown}; "
                                     f"known: {sorted(known)}")
        try:
            merged[modality] = replace(merged.get(modality, ModalityThresholds()), **overrides)
        except ValueError as error:
            raise VerifierSetupError(f"verifier_thresholds.{modality}: {error}") from None
    return merged


def training_images(settings: Settings, profile) -> dict[str, list[Path]]:
    """Per storage modality, the generator's training images for the memorisation index.

    From ``settings.memorisation_data`` (prepared dataset folders), else, for a generator trained by
    ``clinisynth train scratch``, the dataset its card names when that folder exists on this machine.
    """
    from clinisynth.generation.profiles import generator_record
    from clinisynth.training.data import ManifestError, read_manifest

    images: dict[str, list[Path]] = {}
    for modality, folder in settings.memorisation_data.items():
        try:
            images[modality] = [record.path for record in read_manifest(Path(folder).expanduser())]
        except ManifestError as error:
            raise VerifierSetupError(f"memorisation_data.{modality}: {error}") from None
    if images or profile.name == "tiny":
        return images
    dataset = (generator_record(profile.generator).get("data") or {}).get("dataset")
    if dataset and (Path(dataset) / "manifest.csv").is_file():
        for record in read_manifest(Path(dataset)):
            images.setdefault(record.modality.removeprefix("modality."), []).append(record.path)
    return images


def build_run_verifier(*, settings: Settings, profile, device: str = "cpu",
                       on_progress: Callable[[str, dict], None] | None = None):
    """The :class:`~clinisynth.agents.verifier.Verifier` for a run with ``profile``, built complete by
    :func:`~clinisynth.agents.verifier.build_verifier` (the signals left out and why are passed in).

    Classifiers are not applied to the ``tiny`` profile: its generator has random weights, so a class
    probability of its output says nothing (the trace names the signal unavailable with this reason).
    """
    from clinisynth.agents.verifier import build_verifier
    from clinisynth.evaluation.classifier import ClassifierError
    from clinisynth.evaluation.clip_score import BIOMEDCLIP_ID

    check_verifier_settings(settings)
    clip_model = settings.clip_model or (BIOMEDCLIP_ID if profile.name == "full" else None)
    images = training_images(settings, profile)
    if on_progress is not None and images:
        on_progress("verifier", {"message": "memorisation index of " + ", ".join(
            f"{modality} ({len(paths)} images)" for modality, paths in images.items())})
    left_out: dict[str, str] = {}
    if profile.name == "tiny":
        left_out["classifier"] = ("not applied to the tiny profile: its generator has random weights "
                                  "(use --profile demo or full for class-checked images)")
    if not images:
        left_out["memorisation"] = _no_training_images_reason(profile)
    try:
        return build_verifier(
            classifier_dirs=classifier_dirs(settings) if profile.name != "tiny" else None,
            clip_model=clip_model, training_images=images or None, cache_dir=settings.cache_dir,
            thresholds=thresholds(settings), device=device, unavailable=left_out)
    except ClassifierError as error:
        raise VerifierSetupError(f"a verifier classifier cannot be loaded: {error}") from None


def _no_training_images_reason(profile) -> str:
    """Why the memorisation index is missing, and how to give it the generator's training images."""
    from clinisynth.generation.profiles import generator_record

    how = ("set memorisation_data to a prepared copy of them (env CLINISYNTH_MEMORISATION_DATA="
           "'{\"chest_xray\": \"DIR\"}', DIR from `clinisynth prepare`)")
    data = {} if profile.name == "tiny" else (generator_record(profile.generator).get("data") or {})
    if data.get("dataset"):
        options = data.get("prepared_with")
        prepared = (" with " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in options.items())
                    if isinstance(options, dict) else "")
        return (f"the generator's training images are not at {data['dataset']} on this machine; {how}"
                + (f"; they were prepared{prepared}" if prepared else ""))
    return f"no training images known for this generator; {how}"
