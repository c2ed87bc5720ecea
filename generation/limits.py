"""The numbers a run may use, defined once: the CLI, the settings, the run's argument check, the refine step
and the sampler all read them from here (standard library only, cheap to import)."""

from __future__ import annotations

#: Sampler steps of one image.
MIN_STEPS, MAX_STEPS = 1, 1000
#: Classifier-free guidance scale (at most 1 means no guidance).
MIN_GUIDANCE, MAX_GUIDANCE = 0.0, 30.0
#: ``torch.Generator.manual_seed`` takes 64-bit seeds; JSON readers of the metadata are safer below 2**63.
MAX_SEED = 2**63 - 1
#: Generate -> verify -> refine rounds of one run.
MIN_ROUNDS, MAX_ROUNDS = 1, 20
#: Best-of-N candidates per slot and round (seeds stay distinct up to this many, see agents.nodes.attempt_seed).
MIN_BEST_OF, MAX_BEST_OF = 1, 16

__all__ = ["MAX_BEST_OF", "MAX_GUIDANCE", "MAX_ROUNDS", "MAX_SEED", "MAX_STEPS", "MIN_BEST_OF", "MIN_GUIDANCE",
           "MIN_ROUNDS", "MIN_STEPS"]
