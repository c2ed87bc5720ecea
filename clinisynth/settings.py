"""Settings: defaults < TOML file < ``CLINISYNTH_*`` environment variables < explicit arguments.

The TOML file is ``$CLINISYNTH_CONFIG`` when set, else ``./clinisynth.toml`` when present, else
``~/.config/clinisynth/config.toml`` when present. Only this module reads settings; the packages
below it take explicit arguments.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from clinisynth.agents.reasoning.engine import DEFAULT_RETRIEVAL_THRESHOLD
from clinisynth.generation.limits import MAX_BEST_OF, MAX_ROUNDS, MIN_BEST_OF, MIN_ROUNDS
from clinisynth.retrieval.embedder import PACKAGED_MINILM


def _default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "clinisynth"


def config_file() -> Path | None:
    explicit = os.environ.get("CLINISYNTH_CONFIG")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise FileNotFoundError(f"CLINISYNTH_CONFIG points at {path}, which is not a file")
        return path
    for candidate in (Path("clinisynth.toml"), Path.home() / ".config" / "clinisynth" / "config.toml"):
        if candidate.is_file():
            return candidate
    return None


class Settings(BaseSettings):
    """Every setting clinisynth reads, each overridable by ``CLINISYNTH_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="CLINISYNTH_", extra="forbid")

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
