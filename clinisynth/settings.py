"""Settings: defaults < TOML file < ``CLINISYNTH_*`` environment variables < explicit arguments.

The TOML file is ``$CLINISYNTH_CONFIG`` when set, else ``./clinisynth.toml`` when present, else
``~/.config/clinisynth/config.toml`` when present. Only this module reads settings; the packages
below it take explicit arguments.
"""

from __future__ import annotations

import os
import re
import tomllib
import typing
from pathlib import Path

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource
from pydantic_settings import SettingsError as _SourceError

from clinisynth.agents.reasoning.engine import DEFAULT_RETRIEVAL_THRESHOLD
from clinisynth.generation.limits import MAX_BEST_OF, MAX_ROUNDS, MIN_BEST_OF, MIN_ROUNDS
from clinisynth.retrieval.embedder import PACKAGED_MINILM


def _default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "clinisynth"


ENV_PREFIX = "CLINISYNTH_"


class SettingsError(ValueError):
    """A setting (TOML file or ``CLINISYNTH_*`` variable) that cannot be read: one line naming the setting, where
    it came from and the accepted form."""


def config_file() -> Path | None:
    """The TOML settings file in use, or ``None``.

    Raises:
        SettingsError: ``CLINISYNTH_CONFIG`` is set to something that is not a file.
    """
    explicit = os.environ.get("CLINISYNTH_CONFIG")
    if explicit is not None:
        path = Path(explicit)
        if not explicit.strip() or not path.is_file():
            raise SettingsError(f"CLINISYNTH_CONFIG is {explicit!r}, which is not a file; point it at a TOML "
                                "settings file or unset it")
        return path
    for candidate in (Path("clinisynth.toml"), Path.home() / ".config" / "clinisynth" / "config.toml"):
        if candidate.is_file():
            return candidate
    return None


class Settings(BaseSettings):
    """Every setting clinisynth reads, each overridable by ``CLINISYNTH_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    def __init__(self, **values) -> None:
        """Read the settings; every way they can be wrong is one :class:`SettingsError` (the one place that
        turns pydantic's and the TOML reader's errors into a line naming the setting and the accepted form)."""
        try:
            super().__init__(**values)
        except ValidationError as error:
            raise SettingsError(_validation_message(error, given=values)) from None
        except _SourceError as error:  # a CLINISYNTH_* value that is not JSON where JSON is expected
            raise SettingsError(_source_message(error)) from None
        except tomllib.TOMLDecodeError as error:
            raise SettingsError(f"the settings file {config_file()} is not valid TOML ({error}); fix it, or point "
                                "CLINISYNTH_CONFIG at another file") from None
        except (OSError, UnicodeDecodeError) as error:
            raise SettingsError(f"the settings file {config_file()} cannot be read ({error}); fix it, or point "
                                "CLINISYNTH_CONFIG at another file") from None

    cache_dir: Path = Field(default_factory=_default_cache_dir, description="built models and retrieval indexes")
    knowledge_dir: Path | None = Field(default=None, description="knowledge YAML folder; the packaged one when unset")
    embedder: str = Field(default=PACKAGED_MINILM, description="sentence-transformers model id or local dir")
    retrieval_threshold: float = Field(default=DEFAULT_RETRIEVAL_THRESHOLD, ge=0.0, le=1.0, description="cosine similarity to accept a match")
    profile: str = Field(default="demo", description="model profile: tiny, demo or full")
    demo_generator: Path | None = Field(default=None, description="directory of the demo generator pipeline")
    full_generator: str | None = Field(default=None, description="hub id or dir of the SD 1.x/2.x pipeline (full)")
    full_text_encoder: str | None = Field(default=None, description="hub id or dir of the BERT-family encoder (full)")
    max_request_chars: int = Field(default=4000, ge=1, description="longest accepted description")
    max_rounds: int = Field(default=3, ge=MIN_ROUNDS, le=MAX_ROUNDS, description="generate/verify/refine rounds before giving up")
    max_images: int = Field(default=1000, ge=1, description="largest -n for one request")
    best_of: int = Field(default=1, ge=MIN_BEST_OF, le=MAX_BEST_OF, description="candidates per image and round; the best that passes is kept")
    classifiers_dir: Path | None = Field(
        default=None, description="folder of verifier classifiers, one sub-folder per modality; the shipped ones when unset")
    adapters_dir: Path | None = Field(
        default=None, description="folder of LoRA adapters, one sub-folder each; the plan's modality and label choose "
        "one; the shipped clinisynth.models adapters folder when unset")
    clip_model: str | None = Field(
        default=None, description="open_clip model (local dir or hf-hub: id) for the CLIP score; BiomedCLIP in full")
    memorisation_data: dict[str, Path] = Field(
        default_factory=dict, description="per modality, the prepared dataset the generator was trained on")
    verifier_thresholds: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="per modality, ModalityThresholds fields overriding the defaults")

    @field_validator("cache_dir", "knowledge_dir", "demo_generator", "classifiers_dir", "adapters_dir", mode="before")
    @classmethod
    def _no_empty_path(cls, value):
        if isinstance(value, str) and not value.strip():  # Path("") is the current folder: never what was meant
            raise ValueError("an empty path is not a folder; unset the setting or name a folder")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = config_file()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    def profile_overrides(self) -> dict[str, str]:
        """The model locations set for the generator profiles, for :func:`resolve_profile`."""
        overrides = {}
        if self.demo_generator is not None:
            overrides["demo_generator"] = str(self.demo_generator)
        if self.full_generator is not None:
            overrides["full_generator"] = self.full_generator
        if self.full_text_encoder is not None:
            overrides["full_text_encoder"] = self.full_text_encoder
        return overrides


def _where(name: str, *, given: dict) -> str:
    """Where a setting's value came from, for the message: the argument, the variable or the TOML file."""
    if name in given:
        return "the argument"
    variable = f"{ENV_PREFIX}{name.upper()}"
    if any(key.upper() == variable for key in os.environ):
        return variable
    path = config_file()
    return str(path) if path is not None else "the default"


def accepted_form(name: str) -> str:
    """How a value of the setting ``name`` is written, from its type and bounds (for error messages)."""
    field = Settings.model_fields[name]
    bounds = {name: getattr(item, name.lower()) for item in field.metadata for name in ("Ge", "Le")
              if getattr(item, name.lower(), None) is not None}
    annotation = field.annotation
    arguments = [argument for argument in typing.get_args(annotation) if argument is not type(None)]
    base = arguments[0] if arguments and typing.get_origin(annotation) is not dict else annotation
    if base in (int, float):
        kind = "a whole number" if base is int else "a number"
        low, high = bounds.get("Ge"), bounds.get("Le")
        if low is not None and high is not None:
            return f"{kind} from {low:g} to {high:g}"
        return f"{kind} of at least {low:g}" if low is not None else kind
    if typing.get_origin(annotation) is dict:
        example = ('{"chest_xray": {"min_label_probability": 0.7}}' if name == "verifier_thresholds"
                   else '{"chest_xray": "path/to/prepared"}')
        return f"a JSON object (TOML table) such as {example}"
    if base is Path:
        return "a path"
    return "text"


def _validation_message(error: ValidationError, *, given: dict) -> str:
    problems = []
    for item in error.errors():
        name = str(item["loc"][0]) if item["loc"] else "?"
        if item["type"] == "extra_forbidden":
            problems.append(f"unknown setting {name!r} in {_where(name, given=given)}; the known ones: "
                            f"{', '.join(Settings.model_fields)}")
            continue
        detail = ".".join(str(part) for part in item["loc"][1:])
        field = f"{name}{'.' + detail if detail else ''}"
        shown = repr(item.get("input"))
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        accepted = accepted_form(name) if name in Settings.model_fields else "see the README's settings"
        message = item["msg"].removeprefix("Value error, ")
        problems.append(f"setting {field} ({_where(name, given=given)}) is {shown}: {message[0].lower()}"
                        f"{message[1:]}; give {accepted}")
    return "; ".join(problems)


def _source_message(error: Exception) -> str:
    found = re.search(r'field "([^"]+)"', str(error))
    name = found.group(1) if found else None
    if name is None or name not in Settings.model_fields:
        return f"the settings cannot be read: {error}"
    return f"setting {name} ({_where(name, given={})}) is not valid JSON; give {accepted_form(name)}"
