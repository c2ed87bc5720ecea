"""Clinical reasoning over free text: localization, pathology with assertion status, report and prompt.

Importing this package is cheap; spaCy and medspaCy load when a :class:`Reasoner` is built.
"""

from __future__ import annotations

from clinisynth.agents.prompting import PromptBundle, build_prompt, caption_for_label
from clinisynth.agents.reasoning.models import Localization, Pathology
from clinisynth.agents.reasoning.report import build_report, map_visual_features


def __getattr__(name: str):
    # The engine imports spaCy at construction only, but keep even its module out of a bare import.
    if name == "Reasoner":
        from clinisynth.agents.reasoning.engine import Reasoner

        return Reasoner
    raise AttributeError(f"module 'clinisynth.agents.reasoning' has no attribute {name!r}")


__all__ = [
    "Localization",
    "Pathology",
    "PromptBundle",
    "Reasoner",
    "build_prompt",
    "build_report",
    "caption_for_label",
    "map_visual_features",
]
