"""Samplers by name, built from the loaded pipeline's own scheduler config (so the noise schedule is the model's)."""

from __future__ import annotations

#: name -> (diffusers class, extra config); the first name of each family is the canonical one.
SCHEDULERS: dict[str, tuple[str, dict]] = {
    "ddim": ("DDIMScheduler", {}),
    "dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpm++_karras": ("DPMSolverMultistepScheduler",
                     {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
}
#: Other spellings people use.
ALIASES = {"dpmpp": "dpm++", "dpm-solver++": "dpm++", "dpmsolver++": "dpm++", "euler-a": "euler_a",
           "euler_ancestral": "euler_a", "dpm++-karras": "dpm++_karras"}
SCHEDULER_NAMES = tuple(SCHEDULERS)


def canonical_scheduler_name(name: str) -> str:
    """``name`` in canonical form; raises ``ValueError`` listing the known names when unknown."""
    if not isinstance(name, str):
        raise ValueError(f"scheduler name must be a string, got {name!r}")
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; known: {', '.join(SCHEDULER_NAMES)}")
    return key


def make_scheduler(name: str, *, config):
    """A new scheduler of kind ``name`` with the noise schedule of ``config`` (another scheduler's ``config``).

    Args:
        name: one of :data:`SCHEDULER_NAMES` (or an alias such as ``dpmpp``).
        config: the model's scheduler config (``pipeline.scheduler.config``): betas, timesteps, prediction type.
    """
    import diffusers

    class_name, extra = SCHEDULERS[canonical_scheduler_name(name)]
    cls = getattr(diffusers, class_name)
    return cls.from_config(dict(config), **extra)
