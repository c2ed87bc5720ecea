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


def shipped_indexes(profile, *, adapters=(), skip=()) -> dict:
    """The compact memorisation indexes the run's models ship (``memorisation/<modality>/`` of the generator
    folder and of each adapter), per modality, leaving out the modalities in ``skip``.

    Args:
        profile: the run's resolved profile (the ``tiny`` one ships none).
        adapters: the run's :class:`~clinisynth.generation.adapters.AdapterCard` objects.
        skip: modalities whose training images are on this machine (their exact index wins).
    """
    from clinisynth.evaluation.memorisation import MemorisationError, load_shipped_indexes

    folders = ([] if profile.name == "tiny" else [Path(profile.generator)]) + [Path(card.path) for card in adapters]
    found: dict = {}
    for folder in folders:
        try:
            indexes = load_shipped_indexes(folder)
        except (MemorisationError, OSError, ValueError) as error:
            raise VerifierSetupError(f"the memorisation index shipped in {folder} cannot be read ({error}); "
                                     "restore the model folder") from None
        for modality, index in indexes.items():
            if modality in skip:
                continue
            found[modality] = index if modality not in found else _merged(found[modality], index)
    return found


def _merged(first, second):
    """One index over two models' training sets (a base generator and an adapter of the same modality)."""
    from clinisynth.evaluation.memorisation import MemorisationIndex

    import numpy as np

    vectors = [index.index.reconstruct_n(0, len(index)) for index in (first, second)]
    return MemorisationIndex.from_embeddings(np.concatenate(vectors), keys=first.keys + second.keys,
                                             embedder_name=first.embedder_name)


def build_run_verifier(*, settings: Settings, profile, device: str = "cpu",
                       on_progress: Callable[[str, dict], None] | None = None, adapters=()):
    """The :class:`~clinisynth.agents.verifier.Verifier` for a run with ``profile``, built complete by
    :func:`~clinisynth.agents.verifier.build_verifier` (the signals left out and why are passed in).

    Classifiers are not applied to the ``tiny`` profile: its generator has random weights, so a class
    probability of its output says nothing (the trace names the signal unavailable with this reason).

    The memorisation index of a modality is built from its training images where they are on this machine,
    else it is the compact one the generator or an adapter of the run ships (:func:`shipped_indexes`).

    Args:
        adapters: the run's adapter cards (their shipped indexes join the generator's).
    """
    from clinisynth.agents.verifier import build_verifier
    from clinisynth.evaluation.classifier import ClassifierError
    from clinisynth.evaluation.clip_score import BIOMEDCLIP_ID

    check_verifier_settings(settings)
    clip_model = settings.clip_model or (BIOMEDCLIP_ID if profile.name == "full" else None)
    images = training_images(settings, profile)
    shipped = shipped_indexes(profile, adapters=adapters, skip=set(images))
    if on_progress is not None and (images or shipped):
        on_progress("verifier", {"message": "memorisation index of " + ", ".join(
            [f"{modality} ({len(paths)} images)" for modality, paths in images.items()]
            + [f"{modality} ({len(index)} images, shipped)" for modality, index in shipped.items()])})
    left_out: dict[str, str] = {}
    if profile.name == "tiny":
        left_out["classifier"] = ("not applied to the tiny profile: its generator has random weights "
                                  "(use --profile demo or full for class-checked images)")
    if not images and not shipped:
        left_out["memorisation"] = _no_training_images_reason(profile)
    try:
        return build_verifier(
            classifier_dirs=classifier_dirs(settings) if profile.name != "tiny" else None,
            clip_model=clip_model, training_images=images or None, memorisation_indexes=shipped or None,
            cache_dir=settings.cache_dir,
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
