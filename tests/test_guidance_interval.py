"""Guidance in a limited interval of the steps: which steps are guided, the sampler's switch, the profile's record."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from clinisynth.generation.guidance_interval import FULL_INTERVAL, check_interval, is_guided
from clinisynth.generation.pipeline import Generator
from clinisynth.generation.profiles import GENERATOR_RECORD, ModelNotFoundError, resolve_profile

PROMPT = "PA chest radiograph, right lower lobe pneumonia"
NEGATIVE = "colour, text"


@pytest.fixture(scope="module")
def generator(tmp_path_factory) -> Generator:
    return Generator.from_profile(resolve_profile("tiny", cache_dir=tmp_path_factory.mktemp("cache")), device="cpu")


def _pixels(generated) -> np.ndarray:
    return np.asarray(generated.image, dtype=np.int16)


def _unet_batch_sizes(generator, **request) -> tuple[list[int], object]:
    """The batch size of every U-Net call while sampling (2 per image on a guided step, 1 on an unguided one)."""
    unet = generator.pipeline.unet
    sizes = []
    handle = unet.register_forward_pre_hook(lambda module, args: sizes.append(int(args[0].shape[0])))
    try:
        image = generator.generate(prompt=PROMPT, negative_prompt=NEGATIVE, seeds=[3], **request)[0]
    finally:
        handle.remove()
    return sizes, image


def test_is_guided_counts_steps_from_the_noisiest():
    assert [is_guided((0.2, 1.0), step=i, steps=10) for i in range(10)] == [False, False] + [True] * 8
    assert [is_guided((0.25, 0.75), step=i, steps=4) for i in range(4)] == [False, True, True, False]
    assert all(is_guided(FULL_INTERVAL, step=i, steps=7) for i in range(7))
    assert not any(is_guided((0.0, 0.0), step=i, steps=7) for i in range(7))


@pytest.mark.parametrize("bad", [(0.5, 0.2), (-0.1, 1.0), (0.0, 1.5), (0.2,), "0.2,1", (0.1, float("nan")), (True, 1)])
def test_check_interval_names_the_bad_value(bad):
    with pytest.raises(ValueError, match="guidance_interval"):
        check_interval(bad)


def test_the_switch_guides_exactly_the_steps_of_the_interval(generator):
    sizes, _ = _unet_batch_sizes(generator, steps=4, guidance=5.0, guidance_interval=(0.5, 1.0))
    assert sizes == [1, 1, 2, 2]
    sizes, _ = _unet_batch_sizes(generator, steps=4, guidance=5.0, guidance_interval=(0.25, 0.75))
    assert sizes == [1, 2, 2, 1]
    sizes, _ = _unet_batch_sizes(generator, steps=4, guidance=5.0, guidance_interval=FULL_INTERVAL)
    assert sizes == [2, 2, 2, 2]


def test_the_ends_of_the_interval_are_plain_guidance_and_no_guidance(generator):
    request = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "seeds": [3], "steps": 4}
    guided = generator.generate(**request, guidance=5.0)[0]
    assert np.array_equal(_pixels(generator.generate(**request, guidance=5.0, guidance_interval=(0.0, 1.0))[0]),
                          _pixels(guided))
    unguided = generator.generate(**request, guidance=1.0)[0]
    never = generator.generate(**request, guidance=5.0, guidance_interval=(0.0, 0.0))[0]
    assert np.abs(_pixels(never) - _pixels(unguided)).max() <= 1  # the same sampler path, float noise at most
    partly = generator.generate(**request, guidance=5.0, guidance_interval=(0.5, 1.0))[0]
    assert not np.array_equal(_pixels(partly), _pixels(guided))
    assert not np.array_equal(_pixels(partly), _pixels(unguided))


def test_the_profile_s_interval_is_the_default_and_a_call_can_override_it(generator):
    from dataclasses import replace

    limited = Generator(profile=replace(generator.profile, guidance_interval=(0.5, 1.0)),
                        tokenizer=generator.tokenizer, text_encoder=generator.text_encoder,
                        pipeline=generator.pipeline, device="cpu", dtype=generator.dtype)
    assert limited.guidance_interval == (0.5, 1.0)
    sizes, by_default = _unet_batch_sizes(limited, steps=4, guidance=5.0)
    assert sizes == [1, 1, 2, 2]
    sizes, _ = _unet_batch_sizes(limited, steps=4, guidance=5.0, guidance_interval=FULL_INTERVAL)
    assert sizes == [2, 2, 2, 2]
    _, explicit = _unet_batch_sizes(generator, steps=4, guidance=5.0, guidance_interval=(0.5, 1.0))
    assert np.array_equal(_pixels(by_default), _pixels(explicit))
    with pytest.raises(ValueError, match="start 0.9 and end 0.1"):
        generator.generate(prompt=PROMPT, negative_prompt="", seeds=[1], steps=2, guidance=3.0,
                           guidance_interval=(0.9, 0.1))


def test_a_demo_generator_record_sets_the_interval(tmp_path):
    folder = tmp_path / "generator"
    folder.mkdir()
    record = folder / GENERATOR_RECORD
    record.write_text(json.dumps({"resolution": 128, "default_guidance_interval": [0.2, 1.0]}))
    assert resolve_profile("demo", cache_dir=tmp_path, overrides={"demo_generator": str(folder)}).guidance_interval \
        == (0.2, 1.0)
    record.write_text(json.dumps({"resolution": 128}))  # an older generator: guidance at every step
    assert resolve_profile("demo", cache_dir=tmp_path,
                           overrides={"demo_generator": str(folder)}).guidance_interval == FULL_INTERVAL
    record.write_text(json.dumps({"default_guidance_interval": [0.8, 0.2]}))
    with pytest.raises(ModelNotFoundError, match=f"{GENERATOR_RECORD}.*start 0.8 and end 0.2"):
        resolve_profile("demo", cache_dir=tmp_path, overrides={"demo_generator": str(folder)})
