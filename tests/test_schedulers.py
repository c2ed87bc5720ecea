"""generation/schedulers.py: samplers by name keep the model's noise schedule and change the sampling."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from clinisynth.generation.pipeline import Generator
from clinisynth.generation.profiles import resolve_profile
from clinisynth.generation.schedulers import SCHEDULER_NAMES, canonical_scheduler_name, make_scheduler

PROMPT = "PA chest radiograph, right lower lobe pneumonia"


@pytest.fixture(scope="module")
def generator(tmp_path_factory) -> Generator:
    return Generator.from_profile(resolve_profile("tiny", cache_dir=tmp_path_factory.mktemp("cache")), device="cpu")


def test_every_named_scheduler_keeps_the_models_noise_schedule(generator):
    import diffusers

    config = generator.pipeline.scheduler.config
    for name in SCHEDULER_NAMES:
        scheduler = make_scheduler(name, config=config)
        assert isinstance(scheduler, diffusers.SchedulerMixin), name
        assert scheduler.config.num_train_timesteps == config.num_train_timesteps
        assert (scheduler.config.beta_start, scheduler.config.beta_end) == (config.beta_start, config.beta_end)
        assert scheduler.config.beta_schedule == config.beta_schedule
    assert make_scheduler("dpm++", config=config).config.algorithm_type == "dpmsolver++"
    assert type(make_scheduler("euler_a", config=config)).__name__ == "EulerAncestralDiscreteScheduler"


def test_aliases_and_unknown_names():
    assert canonical_scheduler_name("DPMpp") == "dpm++"
    assert canonical_scheduler_name(" Euler-A ") == "euler_a"
    with pytest.raises(ValueError, match="unknown scheduler 'dpm3'.*ddim.*dpm\\+\\+.*euler_a"):
        canonical_scheduler_name("dpm3")


def test_scheduler_choice_changes_sampling_and_is_reversible(generator):
    def sample(scheduler=None):
        return np.asarray(generator.generate(prompt=PROMPT, negative_prompt="", seeds=[4], steps=3, guidance=3.0,
                                             scheduler=scheduler)[0].image, dtype=np.int16)

    original = sample()
    original_class = type(generator.pipeline.scheduler).__name__
    euler = sample("euler")
    assert type(generator.pipeline.scheduler).__name__ == "EulerDiscreteScheduler"
    assert generator.scheduler_name == "euler"
    assert np.array_equal(sample(), euler)  # the choice persists for later calls
    dpm = sample("dpm++")
    ancestral = sample("euler_a")
    # Euler and DDIM are both first-order deterministic solvers (close, not equal); DPM++ is second order;
    # ancestral Euler injects fresh noise every step, so it lands somewhere else.
    assert not np.array_equal(euler, original) and not np.array_equal(dpm, original)
    assert np.abs(ancestral - original).mean() > 1.0
    generator.set_scheduler(None)
    assert type(generator.pipeline.scheduler).__name__ == original_class
    assert np.array_equal(sample(), original)
    with pytest.raises(ValueError, match="unknown scheduler"):
        generator.generate(prompt=PROMPT, negative_prompt="", seeds=[4], steps=2, guidance=3.0, scheduler="nope")
    with pytest.raises(ValueError, match="unknown scheduler"):
        Generator.from_profile(generator.profile, device="cpu", scheduler="nope")
