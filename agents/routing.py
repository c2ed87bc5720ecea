"""Typed routers between nodes."""

from __future__ import annotations

from typing import Literal

from clinisynth.agents.state import GraphState


def after_verify(state: GraphState) -> Literal["store", "refine"]:
    """Refine while slots are still unfilled and rounds remain; otherwise store what passed."""
    if not state.pending_slots() or state.round >= state.max_rounds:
        return "store"
    return "refine"
