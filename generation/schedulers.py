"""Samplers by name, built from the loaded pipeline's own scheduler config (so the noise schedule is the model's)."""

from __future__ import annotations

import inspect

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

    canonical = canonical_scheduler_name(name)
    class_name, extra = SCHEDULERS[canonical]
    cls = getattr(diffusers, class_name)
    if config.get("rescale_betas_zero_snr") and "rescale_betas_zero_snr" not in inspect.signature(cls).parameters:
        # Such a sampler would silently use the unrescaled betas: images of another noise schedule.
        able = [n for n, (c, _) in SCHEDULERS.items()
                if "rescale_betas_zero_snr" in inspect.signature(getattr(diffusers, c)).parameters]
        raise ValueError(f"scheduler {canonical!r} cannot sample a model trained with zero terminal SNR "
                         f"(rescale_betas_zero_snr); use one of: {', '.join(able)}")
    return cls.from_config(dict(config), **extra)
