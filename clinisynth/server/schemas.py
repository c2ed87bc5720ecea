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
    """``POST /api/jobs``: what :func:`clinisynth.api.generate` takes, bounded for a shared server."""

    n: int = Field(default=4, ge=1, le=MAX_JOB_IMAGES, description="accepted images wanted")
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    steps: int | None = Field(default=None, ge=1, le=1000, description="sampler steps (profile default when unset)")
    guidance: float | None = Field(default=None, ge=0.0, le=30.0)
    max_rounds: int | None = Field(default=None, ge=MIN_ROUNDS, le=MAX_ROUNDS)
    best_of: int | None = Field(default=None, ge=MIN_BEST_OF, le=MAX_BEST_OF)


class ReviewRequest(_Strict):
    """``POST /api/runs/{run_id}/reviews``: a reviewer's decision on one stored image."""

    file_name: str = Field(max_length=512, description="the image's file_name in metadata.jsonl")
    decision: Literal["approved", "rejected"]
    comment: str = Field(default="", max_length=MAX_COMMENT_CHARS)
    reviewer: str = Field(default="", max_length=128)
