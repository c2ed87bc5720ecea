"""The bodies the API accepts: unknown fields are refused, every number is range-checked before any work."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from clinisynth.generation.limits import MAX_BEST_OF, MAX_ROUNDS, MIN_BEST_OF, MIN_ROUNDS

#: Longest description the API reads (the planner's own ``max_request_chars`` applies as well).
MAX_TEXT_CHARS = 4000
#: Most images one job may ask for over the API (the CLI's ``max_images`` applies as well).
MAX_JOB_IMAGES = 64
MAX_COMMENT_CHARS = 2000
#: Longest campaign file (YAML text) a job may carry.
MAX_CAMPAIGN_CHARS = 64_000
#: What a campaign job may not set: the campaign file says them.
RUN_ONLY_FIELDS = ("text", "n", "seed", "steps", "guidance", "max_rounds", "best_of", "adapters")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PlanRequest(_Strict):
    """``POST /api/plan``."""

    text: str = Field(max_length=MAX_TEXT_CHARS, description="free-text clinical description")
    adapters: list[str] = Field(default_factory=list, max_length=4,
                                description="adapter names NAME[:WEIGHT] of the server's adapters folder")

    @field_validator("adapters")
    @classmethod
    def _names_only(cls, specs: list[str]) -> list[str]:
        from clinisynth.generation.adapters import looks_like_path

        for spec in specs:
            if looks_like_path(spec.split(":", 1)[0]):
                raise ValueError(f"{spec!r} is a path; name an adapter of the server's adapters folder")
        return specs


class JobRequest(PlanRequest):
    """``POST /api/jobs``: a run (what :func:`clinisynth.api.generate` takes, bounded for a shared server) or a
    campaign (the text of a campaign file, run by :func:`clinisynth.curate` into the server's output dir)."""

    text: str | None = Field(default=None, max_length=MAX_TEXT_CHARS,
                             description="free-text clinical description (a run; not with campaign)")
    campaign: str | None = Field(default=None, max_length=MAX_CAMPAIGN_CHARS,
                                 description="a campaign file's YAML, items inline (a campaign; not with text)")
    n: int = Field(default=4, ge=1, le=MAX_JOB_IMAGES, description="accepted images wanted")
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1,
                             description="base seed (unset: a fresh one is drawn, as the CLI does)")
    steps: int | None = Field(default=None, ge=1, le=1000, description="sampler steps (profile default when unset)")
    guidance: float | None = Field(default=None, ge=0.0, le=30.0)
    max_rounds: int | None = Field(default=None, ge=MIN_ROUNDS, le=MAX_ROUNDS)
    best_of: int | None = Field(default=None, ge=MIN_BEST_OF, le=MAX_BEST_OF)

    @field_validator("campaign")
    @classmethod
    def _inline_campaign(cls, text: str | None) -> str | None:
        import yaml

        if text is None:
            return None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ValueError(f"not valid YAML ({str(error).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise ValueError("a campaign file is a YAML mapping (profile, seed, items, ...)")
        if "items_file" in loaded:
            raise ValueError("items_file names a file on the server; list the items inline under items")
        return text


class ReviewRequest(_Strict):
    """``POST /api/runs/{run_id}/reviews``: a reviewer's decision on one stored image."""

    file_name: str = Field(max_length=512, description="the image's file_name in metadata.jsonl")
    decision: Literal["approved", "rejected"]
    comment: str = Field(default="", max_length=MAX_COMMENT_CHARS)
    reviewer: str = Field(default="", max_length=128)
