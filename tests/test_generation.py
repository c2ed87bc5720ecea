"""generation/: tiny profile build + reload, seeded sampling, text encoding, profile errors (offline, tiny models)."""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from clinisynth.generation import tiny
from clinisynth.generation.pipeline import Generator
from clinisynth.generation.profiles import (
    PROFILE_NAMES,
    ModelNotFoundError,
    ProfileError,
    resolve_profile,
)
from clinisynth.generation.text_encoding import PromptTruncatedWarning, encode_text

PROMPT = "PA chest radiograph, moderate right pleural effusion with basal atelectasis"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def generator(cache_dir) -> Generator:
    profile = resolve_profile("tiny", cache_dir=cache_dir)
    return Generator.from_profile(profile, device="cpu")


def _pixels(generated) -> np.ndarray:
    return np.asarray(generated.image, dtype=np.int16)


# --- tiny pipeline build ------------------------------------------------------------------------------------


def test_tiny_pipeline_is_built_once_and_identically(cache_dir, tmp_path, monkeypatch):
    first = tiny.ensure_tiny_pipeline(cache_dir)
    assert first.parent == cache_dir / "models" and first.name.startswith("tiny-")
    assert (first / "model_index.json").is_file()

    # A second call in the same cache must not build again.
    def fail(*args, **kwargs):
        raise AssertionError("tiny pipeline rebuilt although it was in the cache")

    with monkeypatch.context() as patch:
        patch.setattr(tiny, "_build_into", fail)
        assert tiny.ensure_tiny_pipeline(cache_dir) == first

    # A build in another cache gives the same folder name and byte-identical weights (fixed seed).
    other = tiny.ensure_tiny_pipeline(tmp_path / "other-cache")
    assert other.name == first.name
    weights = sorted(p.relative_to(first) for p in first.rglob("*.safetensors"))
    assert len(weights) == 3  # unet, vae, text_encoder
    for relative in weights:
        assert (first / relative).read_bytes() == (other / relative).read_bytes(), relative
    assert not list((tmp_path / "other-cache" / "models").glob(".*tmp*")), "staging folder left behind"

    # Another seed is another model.
    assert tiny.tiny_pipeline_dir(cache_dir, seed=1) != first


def _slow_fake_build(directory: Path, *, seed: int) -> None:
    import time

    # Stands in for the real build (covered above) so the race, not model building, takes the time.
    assert directory.is_dir() and not any(directory.iterdir())  # staged_directory hands over an empty folder
    (directory / "model_index.json").write_text(json.dumps({"builder_pid": os.getpid()}))
    time.sleep(0.5)
    (directory / tiny._BUILD_RECORD).write_text(json.dumps({"seed": seed}))


def _race_to_build(cache: str, barrier, results) -> None:
    tiny._build_into = _slow_fake_build
    barrier.wait()  # both processes find no pipeline and build at the same time
    path = tiny.ensure_tiny_pipeline(Path(cache))
    results.put((os.getpid(), str(path)))


def test_two_processes_building_the_tiny_pipeline_leave_one_valid_copy(tmp_path):
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    processes = [context.Process(target=_race_to_build, args=(str(tmp_path), barrier, results)) for _ in range(2)]
    for process in processes:
        process.start()
    answers = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    assert [process.exitcode for process in processes] == [0, 0]
    target = tiny.tiny_pipeline_dir(tmp_path)
    assert {path for _, path in answers} == {str(target)}
    assert [p.name for p in (tmp_path / "models").iterdir()] == [target.name]  # the loser's staging copy is gone
    winner = json.loads((target / "model_index.json").read_text())["builder_pid"]
    assert winner in {pid for pid, _ in answers}
    assert (target / tiny._BUILD_RECORD).is_file()


def test_tiny_profile_loads_saved_weights_through_from_pretrained(generator):
    from safetensors.torch import load_file

    profile_dir = Path(generator.profile.generator)
    saved = load_file(profile_dir / "unet" / "diffusion_pytorch_model.safetensors")
    loaded = generator.pipeline.unet.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(np.array_equal(saved[k].numpy(), loaded[k].numpy()) for k in saved)
    assert generator.pipeline.text_encoder is None  # prompts are encoded by encode_text, not by diffusers
    assert not generator.text_encoder.training
    assert generator.pipeline.scheduler.config.steps_offset == 1
    assert generator.text_encoder.config.hidden_size == generator.pipeline.unet.config.cross_attention_dim
    # The real MiniLM WordPiece vocabulary: clinical words are not [UNK].
    ids = generator.tokenizer("pleural effusion atelectasis")["input_ids"]
    assert generator.tokenizer.unk_token_id not in ids
    assert generator.model_ids == {
        "profile": "tiny",
        "text_encoder": generator.profile.text_encoder,
        "generator": generator.profile.generator,
    }


# --- sampling -----------------------------------------------------------------------------------------------


def test_generate_is_seeded_per_image_and_independent_of_batch_position(generator):
    progress = []
    images = generator.generate(
        prompt=PROMPT, negative_prompt="lateral view", seeds=[11, 12, 13], steps=3, guidance=3.0, batch_size=2,
        callback=lambda done, total: progress.append((done, total)),
    )
    assert progress == [(2, 3), (3, 3)]
    assert [image.seed for image in images] == [11, 12, 13]
    side = generator.profile.resolution
    for image in images:
        assert image.image.size == (side, side)
        assert (image.steps, image.guidance, image.prompt) == (3, 3.0, PROMPT)
        assert image.elapsed_s > 0
    # Different seeds, different pictures.
    assert np.abs(_pixels(images[0]) - _pixels(images[1])).mean() > 1.0

    # Seed 13 was the last, lone image of the run above: asked for alone it is the same picture, bit for bit.
    alone = generator.generate(prompt=PROMPT, negative_prompt="lateral view", seeds=[13], steps=3, guidance=3.0)
    assert np.array_equal(_pixels(alone[0]), _pixels(images[2]))
    # Inside a batch of two its noise is still its own; CPU kernels may round differently for another batch
    # shape, so the picture agrees to within a couple of grey levels (another seed differs by tens).
    first_of_batch = generator.generate(
        prompt=PROMPT, negative_prompt="lateral view", seeds=[13, 99], steps=3, guidance=3.0, batch_size=2
    )
    difference = np.abs(_pixels(first_of_batch[0]) - _pixels(images[2]))
    assert difference.max() <= 2 and difference.mean() < 0.1


def test_prompt_and_guidance_change_the_image(generator):
    base = generator.generate(prompt=PROMPT, negative_prompt="", seeds=[5], steps=2, guidance=5.0)[0]
    other_prompt = generator.generate(prompt="axial brain MRI", negative_prompt="", seeds=[5], steps=2, guidance=5.0)[0]
    other_guidance = generator.generate(prompt=PROMPT, negative_prompt="", seeds=[5], steps=2, guidance=1.0)[0]
    assert not np.array_equal(_pixels(base), _pixels(other_prompt))
    assert not np.array_equal(_pixels(base), _pixels(other_guidance))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"steps": 0}, "steps"),
        ({"steps": 1001}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"guidance": -0.5}, "guidance"),
        ({"guidance": 30.5}, "guidance"),
        ({"guidance": math.nan}, "guidance"),
        ({"seeds": []}, "seeds"),
        ({"seeds": [-1]}, "seed"),
        ({"prompt": "   "}, "prompt"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_generate_rejects_bad_requests(generator, changes, message):
    request = {"prompt": PROMPT, "negative_prompt": "", "seeds": [1], "steps": 2, "guidance": 3.0, **changes}
    with pytest.raises(ValueError, match=message):
        generator.generate(**request)


# --- text encoding ------------------------------------------------------------------------------------------


def test_encode_text_honours_the_attention_mask(generator):
    import torch

    tokenizer, encoder = generator.tokenizer, generator.text_encoder
    count = len(tokenizer(PROMPT)["input_ids"])
    with torch.no_grad():
        unpadded, unpadded_mask = encode_text(tokenizer=tokenizer, text_encoder=encoder, prompts=[PROMPT],
                                              max_length=count)
        padded, padded_mask = encode_text(tokenizer=tokenizer, text_encoder=encoder, prompts=[PROMPT], max_length=64)
    assert unpadded.shape == (1, count, encoder.config.hidden_size)
    assert padded.shape == (1, 64, encoder.config.hidden_size)
    assert int(unpadded_mask.sum()) == int(padded_mask.sum()) == count
    # Padding leaves the real tokens' embeddings alone because the mask reaches the encoder ...
    assert torch.allclose(padded[0, :count], unpadded[0], atol=1e-5)
    # ... which matters: without the mask the same padded ids give other embeddings.
    ids = tokenizer([PROMPT], padding="max_length", max_length=64, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        unmasked = encoder(input_ids=ids).last_hidden_state
    assert not torch.allclose(unmasked[0, :count], unpadded[0], atol=1e-3)


def test_encode_text_batches_match_single_prompts(generator):
    import torch

    kwargs = {"tokenizer": generator.tokenizer, "text_encoder": generator.text_encoder, "max_length": 48}
    with torch.no_grad():
        both, _ = encode_text(prompts=[PROMPT, "normal chest radiograph"], **kwargs)
        alone, _ = encode_text(prompts=["normal chest radiograph"], **kwargs)
    assert torch.allclose(both[1], alone[0], atol=1e-5)


def test_encode_text_warns_on_truncation_and_checks_max_length(generator):
    kwargs = {"tokenizer": generator.tokenizer, "text_encoder": generator.text_encoder}
    with pytest.warns(PromptTruncatedWarning, match="max_length=8"):
        embeds, mask = encode_text(prompts=[PROMPT], max_length=8, **kwargs)
    assert embeds.shape[1] == 8 and int(mask.sum()) == 8
    with warnings.catch_warnings():
        warnings.simplefilter("error", PromptTruncatedWarning)
        encode_text(prompts=[PROMPT], max_length=512, **kwargs)
    for bad in (0, 513, "64"):
        with pytest.raises(ValueError, match="max_length"):
            encode_text(prompts=[PROMPT], max_length=bad, **kwargs)
    with pytest.raises(TypeError, match="list of strings"):
        encode_text(prompts=PROMPT, **kwargs)


# --- profile errors -----------------------------------------------------------------------------------------


def test_unknown_profile_lists_the_known_ones(tmp_path):
    with pytest.raises(ProfileError) as caught:
        resolve_profile("huge", cache_dir=tmp_path)
    assert isinstance(caught.value, ValueError)
    assert "'huge'" in str(caught.value)
    assert all(name in str(caught.value) for name in PROFILE_NAMES)
    with pytest.raises(ProfileError, match="full_generatr"):
        resolve_profile("full", cache_dir=tmp_path, overrides={"full_generatr": "x"})


def test_missing_demo_generator_is_a_clear_error(tmp_path, monkeypatch):
    import clinisynth.models

    # As on an install without the shipped generator: the cache location is the default.
    monkeypatch.setattr(clinisynth.models, "DEMO_GENERATOR_DIR", tmp_path / "not-shipped")
    profile = resolve_profile("demo", cache_dir=tmp_path)
    assert Path(profile.text_encoder).is_dir()  # the packaged MiniLM, resolved offline
    expected_dir = tmp_path / "models" / "demo-generator"
    assert profile.generator == str(expected_dir)
    with pytest.raises(ModelNotFoundError) as caught:
        Generator.from_profile(profile, device="cpu")
    message = str(caught.value)
    for part in ("'demo'", str(expected_dir), "CLINISYNTH_DEMO_GENERATOR", "clinisynth train scratch"):
        assert part in message
    assert not expected_dir.exists()  # no fallback model was created

    # A folder that is there but holds no pipeline is refused the same way.
    empty = tmp_path / "empty-generator"
    empty.mkdir()
    profile = resolve_profile("demo", cache_dir=tmp_path, overrides={"demo_generator": empty})
    with pytest.raises(ModelNotFoundError, match="model_index.json.*CLINISYNTH_DEMO_GENERATOR"):
        Generator.from_profile(profile, device="cpu")


def test_demo_profile_prefers_the_shipped_generator(tmp_path, monkeypatch):
    import clinisynth.models

    shipped = tmp_path / "shipped"
    monkeypatch.setattr(clinisynth.models, "DEMO_GENERATOR_DIR", shipped)
    assert resolve_profile("demo", cache_dir=tmp_path).generator == str(tmp_path / "models" / "demo-generator")
    shipped.mkdir()
    (shipped / "model_index.json").write_text("{}")
    assert resolve_profile("demo", cache_dir=tmp_path).generator == str(shipped)
    # An explicit setting still wins.
    assert resolve_profile("demo", cache_dir=tmp_path, overrides={"demo_generator": "/x"}).generator == "/x"


def test_missing_full_weights_offline_are_clear_errors(tmp_path, cache_dir):
    import huggingface_hub.constants

    if not huggingface_hub.constants.HF_HUB_OFFLINE:
        pytest.skip("huggingface_hub was imported before HF_HUB_OFFLINE=1 was set; run with HF_HUB_OFFLINE=1")
    # A hub id that is in no cache: the offline miss becomes ModelNotFoundError naming it and the setting.
    overrides = {"full_text_encoder": "clinisynth-test/no-such-bert"}
    profile = resolve_profile("full", cache_dir=tmp_path, overrides=overrides)
    with pytest.raises(ModelNotFoundError) as caught:
        Generator.from_profile(profile, device="cpu")
    assert "'full'" in str(caught.value) and "clinisynth-test/no-such-bert" in str(caught.value)
    assert "CLINISYNTH_FULL_TEXT_ENCODER" in str(caught.value)

    encoder_dir = tiny.ensure_tiny_pipeline(cache_dir) / "text_encoder"
    profile = resolve_profile(
        "full", cache_dir=tmp_path,
        overrides={"full_text_encoder": str(encoder_dir), "full_generator": "clinisynth-test/no-such-sd"},
    )
    with pytest.raises(ModelNotFoundError, match="no-such-sd.*CLINISYNTH_FULL_GENERATOR"):
        Generator.from_profile(profile, device="cpu")

    profile = resolve_profile("full", cache_dir=tmp_path, overrides={"full_generator": str(tmp_path / "sd15")})
    with pytest.raises(ModelNotFoundError, match="sd15"):
        Generator.from_profile(profile, device="cpu")


def test_encoder_and_unet_widths_must_match(tmp_path, cache_dir):
    # The demo profile's MiniLM (hidden 384) with the tiny U-Net (cross-attention 32): refused, not crashed later.
    profile = resolve_profile("demo", cache_dir=tmp_path,
                              overrides={"demo_generator": str(tiny.ensure_tiny_pipeline(cache_dir))})
    with pytest.raises(ValueError, match="hidden size 384.*cross_attention_dim 32"):
        Generator.from_profile(profile, device="cpu")
