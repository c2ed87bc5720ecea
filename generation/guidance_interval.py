"""Classifier-free guidance applied in a limited interval of the sampling steps.

Guidance at the noisiest steps pulls every sample of a prompt towards one layout and contrast (the samples are
less varied than real images, and a class is drawn as its caricature); at the last steps it only sharpens noise.
Kynkäänniemi et al. (2024), "Applying guidance in a limited interval improves sample and distribution quality in
diffusion models", keep it for the middle of the schedule. Ending it early cost the demo generator class
agreement (BENCHMARKS.md), so it guides from 10 % of the steps to the end. A generator records its interval as
``default_guidance_interval`` (``[start, end]``, shares of the steps counted from the noisiest): step ``i`` of
``N`` is guided when ``start * N <= i < end * N``; the other steps use the conditional prediction alone, at the
cost of one U-Net pass instead of two. ``[0, 1]`` is plain guidance at every step.
"""

from __future__ import annotations

import math

#: Guidance at every step (what Stable Diffusion does).
FULL_INTERVAL: tuple[float, float] = (0.0, 1.0)


def check_interval(interval, *, what: str = "guidance_interval") -> tuple[float, float]:
    """``interval`` as a ``(start, end)`` pair of floats, ``0 <= start <= end <= 1``.

    Args:
        interval: a pair of numbers.
        what: the name the error message uses for it.

    Raises:
        ValueError: not a pair of finite numbers in that order and range (naming both values).
    """
    if isinstance(interval, (str, bytes)) or not hasattr(interval, "__len__") or len(interval) != 2:
        raise ValueError(f"{what} must be a pair [start, end] of shares of the steps, got {interval!r}")
    start, end = interval
    for value in (start, end):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{what} must hold two numbers from 0 to 1, got {interval!r}")
    if not 0.0 <= start <= end <= 1.0:
        raise ValueError(f"{what} must satisfy 0 <= start <= end <= 1, got start {start!r} and end {end!r}")
    return float(start), float(end)


def parse_interval(text: str, *, what: str = "guidance_interval") -> tuple[float, float]:
    """``"START,END"`` (a command-line value such as ``0.1,1``) as a checked ``(start, end)`` pair.

    Raises:
        ValueError: not two comma-separated numbers, or not a valid interval (:func:`check_interval`).
    """
    try:
        pair = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"{what} must be START,END such as 0.2,1, got {text!r}") from None
    return check_interval(pair, what=what)


def is_guided(interval: tuple[float, float], *, step: int, steps: int) -> bool:
    """Whether step ``step`` (0 = the noisiest) of ``steps`` is guided: ``start * steps <= step < end * steps``."""
    start, end = interval
    return start * steps <= step < end * steps


class IntervalGuidance:
    """A diffusers ``callback_on_step_end`` that turns guidance on and off between steps.

    The pipeline is called with ``guidance_scale`` of :meth:`initial_scale` (1 when the first step is unguided:
    the pipeline then runs on the conditional ``prompt_embeds`` alone). Before each following step this callback
    sets the pipeline's guidance scale and ``prompt_embeds`` (``[negative, prompt]`` while guided, ``prompt`` alone
    otherwise), the way the pipeline itself builds them. Steps are counted over the scheduler's timesteps, so a
    second-order sampler's interval covers the same share of the schedule.

    Args:
        scale: the guidance scale inside the interval (above 1).
        interval: from :func:`check_interval`.
        prompt_embeds: the conditional embeddings of the batch.
        negative_prompt_embeds: the unconditional (negative prompt) embeddings of the batch.
    """

    tensor_inputs = ["prompt_embeds"]

    def __init__(self, *, scale: float, interval: tuple[float, float], prompt_embeds, negative_prompt_embeds) -> None:
        if scale <= 1:
            raise ValueError(f"an interval of guidance needs a guidance scale above 1, got {scale!r}")
        self.scale = float(scale)
        self.interval = check_interval(interval)
        self.prompt_embeds = prompt_embeds
        self.negative_prompt_embeds = negative_prompt_embeds

    def initial_scale(self) -> float:
        """The ``guidance_scale`` the pipeline starts with: step 0 is guided only when the interval starts at 0."""
        start, end = self.interval
        return self.scale if start == 0 and end > 0 else 1.0

    def __call__(self, pipeline, step: int, timestep, tensors: dict) -> dict:
        import torch

        steps = len(pipeline.scheduler.timesteps)
        if step + 1 >= steps:
            return tensors
        now, following = (is_guided(self.interval, step=i, steps=steps) for i in (step, step + 1))
        if following == now:
            return tensors
        if following:
            pipeline._guidance_scale = self.scale
            tensors["prompt_embeds"] = torch.cat([self.negative_prompt_embeds, self.prompt_embeds])
        else:
            pipeline._guidance_scale = 1.0
            tensors["prompt_embeds"] = self.prompt_embeds
        return tensors


__all__ = ["FULL_INTERVAL", "IntervalGuidance", "check_interval", "is_guided", "parse_interval"]
