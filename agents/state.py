"""Graph state. Only JSON-native values live here (plans as dicts, images as file paths), so every
checkpoint round-trips through the SQLite checkpointer without custom serialisers."""

from __future__ import annotations

import operator
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

RunStatus = Literal["planning", "generating", "complete", "partial", "failed", "cancelled"]
#: ``passed_not_chosen``: passed every check, but another best-of-N candidate of its slot scored higher.
AttemptVerdict = Literal["pending", "accepted", "rejected", "passed_not_chosen"]


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
    candidate: int = 0
    elapsed_s: float = 0.0
    verdict: AttemptVerdict = "pending"
    # The verifier's verdict, stored whole (``Verdict.to_dict()``; ``Verdict.from_dict(attempt)`` reads it back).
    accepted: bool | None = None
    reasons: list[str] = Field(default_factory=list)
    failure: str | None = None
    failures: list[str] = Field(default_factory=list)
    confused_label: str | None = None
    verify_s: float = 0.0
    scores: dict[str, Any] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)
    thumbnail: str | None = None
    action: str | None = None
    #: Where the verify node filed it (``OUT``-relative) when it was the slot's accepted candidate.
    stored_as: str | None = None


class SlotSettings(BaseModel):
    """How the next attempt of one slot is drawn (refine changes these per slot, from that slot's failures)."""

    steps: int
    guidance: float
    prompt: str
    negative_prompt: str


class GraphState(BaseModel):
    """What flows between the nodes.

    Args:
        request: the user's description.
        n_images: how many accepted images are wanted.
        seed: base seed; slot ``i`` starts at ``seed + i``.
        steps, guidance: sampler settings of the first round.
        max_rounds: generate -> verify rounds before the remaining slots are given up.
        best_of: candidates drawn per slot and round; the best that passes is kept.
        round: the round being run (1-based once generation starts).
        localization, pathology, plan: reasoning results as plain dicts.
        slot_settings: per slot (key ``str(slot)``), the refined settings of its next attempt; slots not
            listed use ``steps``, ``guidance`` and the plan's prompts.
        attempts: every candidate ever generated, with its verdict.
        stored: ordered-storage file names of the accepted images, in the order they were filed (as they passed).
        events: one trace event per node run (appended, never replaced).
    """

    request: str
    run_id: str
    n_images: int = 1
    seed: int = 0
    steps: int = 20
    guidance: float = 7.5
    max_rounds: int = 3
    best_of: int = 1
    round: int = 0
    status: RunStatus = "planning"
    localization: dict[str, Any] | None = None
    pathology: dict[str, Any] | None = None
    visual_features: list[dict[str, Any]] = Field(default_factory=list)
    plan: dict[str, Any] | None = None
    slot_settings: dict[str, dict[str, Any]] = Field(default_factory=dict)
    attempts: list[dict[str, Any]] = Field(default_factory=list)
    stored: list[str] = Field(default_factory=list)
    events: Annotated[list[dict[str, Any]], operator.add] = Field(default_factory=list)

    def pending_slots(self) -> list[int]:
        """Slots with no accepted attempt yet."""
        accepted = {a["slot"] for a in self.attempts if a["verdict"] == "accepted"}
        return [slot for slot in range(self.n_images) if slot not in accepted]

    def settings_for(self, slot: int) -> SlotSettings:
        """The settings of ``slot``'s next attempt: refined ones, else the run's first-round settings."""
        refined = self.slot_settings.get(str(slot))
        if refined is not None:
            return SlotSettings.model_validate(refined)
        plan = self.plan or {}
        return SlotSettings(steps=self.steps, guidance=self.guidance, prompt=plan.get("prompt", ""),
                            negative_prompt=plan.get("negative_prompt", ""))
