"""Graph state. Only JSON-native values live here (plans as dicts, images as file paths), so every
checkpoint round-trips through the SQLite checkpointer without custom serialisers."""

from __future__ import annotations

import operator
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

RunStatus = Literal["planning", "generating", "complete", "partial", "failed"]


class Attempt(BaseModel):
    """One generated candidate for one requested image slot."""

    slot: int
    round: int
    seed: int
    steps: int
    guidance: float
    prompt: str
    negative_prompt: str
    path: str
    elapsed_s: float = 0.0
    verdict: Literal["pending", "accepted", "rejected"] = "pending"
    reasons: list[str] = Field(default_factory=list)
    scores: dict[str, Any] = Field(default_factory=dict)
    action: str | None = None


class GraphState(BaseModel):
    """What flows between the nodes.

    Args:
        request: the user's description.
        n_images: how many accepted images are wanted.
        seed: base seed; slot ``i`` starts at ``seed + i``.
        steps, guidance: sampler settings of the first round (refine may change them).
        max_rounds: generate -> verify rounds before the remaining slots are given up.
        round: the round being run (1-based once generation starts).
        localization, pathology, plan: reasoning results as plain dicts.
        attempts: every candidate ever generated, with its verdict.
        stored: ordered-storage file names of the accepted images, in slot order.
        events: one trace event per node run (appended, never replaced).
    """

    request: str
    run_id: str
    n_images: int = 1
    seed: int = 0
    steps: int = 20
    guidance: float = 7.5
    max_rounds: int = 3
    round: int = 0
    status: RunStatus = "planning"
    localization: dict[str, Any] | None = None
    pathology: dict[str, Any] | None = None
    visual_features: list[dict[str, Any]] = Field(default_factory=list)
    plan: dict[str, Any] | None = None
    attempts: list[dict[str, Any]] = Field(default_factory=list)
    stored: list[str] = Field(default_factory=list)
    events: Annotated[list[dict[str, Any]], operator.add] = Field(default_factory=list)

    def pending_slots(self) -> list[int]:
        """Slots with no accepted attempt yet."""
        accepted = {a["slot"] for a in self.attempts if a["verdict"] == "accepted"}
        return [slot for slot in range(self.n_images) if slot not in accepted]
