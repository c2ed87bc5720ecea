"""training/lora.py (+ engine, checkpoints, data, captions): LoRA training on the tiny profile, offline."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from _training_helpers import CAPTIONS, make_dataset

from clinisynth.generation.adapters import AdapterRegistry, read_card
from clinisynth.generation.pipeline import Generator
from clinisynth.generation.profiles import resolve_profile
from clinisynth.training.checkpoints import CheckpointError, list_checkpoints
from clinisynth.training.data import ManifestError, read_manifest, split_records
from clinisynth.training.lora import train_lora

FAST = {"batch_size": 2, "learning_rate": 1e-2, "validation_every": 0, "log_every": 1}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "prep", per_label=4)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir, dataset):
    """Two steps with a checkpoint, then resumed to three: the adapter and its run folder."""
    run = tmp_path_factory.mktemp("run") / "lora"
    profile = resolve_profile("tiny", cache_dir=cache_dir)
    common = dict(profile=profile, dataset_dir=dataset, output_dir=run, rank=4, num_sample_seeds=1, sample_steps=1,
                  validation_fraction=0.25, log=lambda _: None)
    train_lora(**common, settings_overrides={**FAST, "max_steps": 2, "checkpoint_every": 2})
    first = json.loads((run / "metrics.json").read_text())
    adapter = train_lora(**common, settings_overrides={**FAST, "max_steps": 3, "checkpoint_every": 2,
                                                       "resume": "latest", "ema_decay": 0.5})
    return {"run": run, "adapter": adapter, "first": first, "profile": profile, "common": common}


@pytest.mark.slow
def test_adapter_folder_has_peft_diffusers_files_and_card(trained):
    from safetensors.torch import load_file

    adapter = trained["adapter"]
    peft = load_file(str(adapter / "adapter_model.safetensors"))
    diffusers_state = load_file(str(adapter / "pytorch_lora_weights.safetensors"))
    assert peft and all(k.startswith("base_model.model.") for k in peft)
    assert all(k.startswith("unet.") for k in diffusers_state)
    assert {k.split("unet.", 1)[1] for k in diffusers_state} == {k.split("base_model.model.", 1)[1] for k in peft}
    targets = {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in diffusers_state}
    assert targets <= {"to_q", "to_k", "to_v", "0"}  # to_out.0 ends in "0"
    assert any(".to_out.0.lora_A" in k for k in diffusers_state)
    assert any(float(v.abs().max()) > 0 for k, v in diffusers_state.items() if "lora_B" in k)  # it learned
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 4 and sorted(config["target_modules"]) == sorted(["to_q", "to_k", "to_v", "to_out.0"])
    card = read_card(adapter)
    assert card.modality == "modality.chest_xray" and card.labels == ("normal", "pneumonia")
    assert card.rank == 4 and card.steps == 3
    assert card.prompts == CAPTIONS
    data = json.loads((adapter / "clinisynth_adapter.json").read_text())
    assert data["data"]["train_images"] + data["data"]["validation_images"] == 8
    assert 0 < data["metrics"]["trainable_share"] < 0.05
    assert "rank" in (adapter / "README.md").read_text()


@pytest.mark.slow
def test_run_folder_has_curves_samples_and_resumed_history(trained):
    from PIL import Image

    run = trained["run"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert trained["first"]["steps"] == 2 and metrics["steps"] == 3
    # The resumed run continued the first run's loss history instead of starting over.
    assert [s for s, _ in metrics["train_loss"]] == [1, 2, 3]
    assert metrics["train_loss"][:2] == trained["first"]["train_loss"]
    assert metrics["validation_loss"] and all(v > 0 for _, v in metrics["validation_loss"])
    for name in ("loss_curve.png", "samples.png"):
        with Image.open(run / name) as image:
            assert image.format == "PNG" and image.size[0] > 16
    assert [p.name for p in list_checkpoints(run)][-1] == "step_000003"
    assert not list((run / "checkpoints").glob(".tmp*")), "staging folder left behind"


@pytest.mark.slow
def test_trained_adapter_loads_into_the_generator_and_changes_it(trained, cache_dir):
    import numpy as np

    profile = trained["profile"]
    base = Generator.from_profile(profile, device="cpu")
    before = np.asarray(base.generate(prompt=CAPTIONS["pneumonia"], negative_prompt="", seeds=[1], steps=2,
                                      guidance=3.0)[0].image, dtype=np.int16)
    registry = AdapterRegistry(trained["adapter"].parent)
    card = registry.choose(modality={"id": "modality.chest_xray"}, label="pneumonia")
    assert card.name == "adapter"
    base.load_adapter(card)
    after = np.asarray(base.generate(prompt=CAPTIONS["pneumonia"], negative_prompt="", seeds=[1], steps=2,
                                     guidance=3.0)[0].image, dtype=np.int16)
    assert np.abs(after - before).mean() > 0.1


@pytest.mark.slow
def test_resnet_conv_lora_is_saved_checked_loaded_and_unloaded_exactly(trained, tmp_path):
    import numpy as np
    from safetensors.torch import load_file, save_file

    from clinisynth.generation.adapters import AdapterError, DIFFUSERS_WEIGHTS

    adapter = train_lora(**{**trained["common"], "output_dir": tmp_path / "run", "adapter_dir": tmp_path / "conv"},
                         target_modules=("to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"),
                         settings_overrides={**FAST, "max_steps": 2})
    state = load_file(str(adapter / DIFFUSERS_WEIGHTS))
    conv_a = [k for k in state if k.endswith("conv1.lora_A.weight")]
    assert conv_a and all(state[k].ndim == 4 and state[k].shape[-2:] == (3, 3) for k in conv_a)
    assert all(state[k.replace("lora_A", "lora_B")].shape[-2:] == (1, 1) for k in conv_a)
    card = json.loads((adapter / "clinisynth_adapter.json").read_text())
    assert card["target_modules"] == ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"]

    generator = Generator.from_profile(trained["profile"], device="cpu")
    draw = lambda: np.asarray(generator.generate(prompt=CAPTIONS["pneumonia"], negative_prompt="", seeds=[1],
                                                 steps=2, guidance=3.0)[0].image, dtype=np.int16)
    before = draw()
    generator.use_adapters([adapter])
    assert any("conv1.lora_A" in name for name, _ in generator.pipeline.unet.named_parameters())
    assert np.abs(draw() - before).mean() > 0.1
    generator.use_adapters([])
    assert np.array_equal(draw(), before)

    # A conv kernel of the wrong shape is refused by name before the U-Net changes.
    broken = tmp_path / "broken"
    shutil.copytree(adapter, broken)
    bad = {k: (v[:, :, :1, :1].contiguous() if k == conv_a[0] else v) for k, v in state.items()}
    save_file(bad, str(broken / DIFFUSERS_WEIGHTS))
    with pytest.raises(AdapterError, match=r"conv1.lora_A.weight has shape .*1, 1\), this U-Net needs .*3, 3\)"):
        generator.load_adapter(broken)
    assert np.array_equal(draw(), before)


@pytest.mark.slow
def test_resume_from_another_runs_checkpoint_is_refused_without_outputs(trained, tmp_path):
    run = tmp_path / "other"
    shutil.copytree(trained["run"] / "checkpoints", run / "checkpoints")
    adapter_before = sorted(p.name for p in trained["adapter"].iterdir())
    with pytest.raises(CheckpointError, match="another run.*'rank': 4"):
        train_lora(**{**trained["common"], "output_dir": run, "rank": 2},
                   settings_overrides={**FAST, "max_steps": 4, "resume": "latest"})
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints"]  # nothing else was written
    assert sorted(p.name for p in trained["adapter"].iterdir()) == adapter_before
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        train_lora(**{**trained["common"], "output_dir": run},
                   settings_overrides={**FAST, "max_steps": 4, "resume": str(tmp_path)})


def test_bad_manifests_and_options_fail_before_writing(dataset, tmp_path, cache_dir):
    profile = resolve_profile("tiny", cache_dir=cache_dir)
    broken = tmp_path / "broken"
    shutil.copytree(dataset, broken)
    (broken / "pneumonia" / "pneumonia_001.png").unlink()
    out = tmp_path / "out"
    with pytest.raises(ManifestError, match="1 image file.*pneumonia_001.png.*clinisynth prepare"):
        train_lora(profile=profile, dataset_dir=broken, output_dir=out, settings_overrides={"max_steps": 1})
    with pytest.raises(ManifestError, match="label\\(s\\) \\['fracture'\\].*normal"):
        train_lora(profile=profile, dataset_dir=dataset, output_dir=out, labels=["fracture"],
                   settings_overrides={"max_steps": 1})
    with pytest.raises(ManifestError, match="no manifest.csv"):
        read_manifest(tmp_path)
    for bad, message in (({"rank": 0}, "rank"), ({"dropout": 1.5}, "dropout"),
                         ({"target_modules": ["conv_in"]}, "target_modules"),
                         ({"caption_variants": -1}, "caption_variants must be 0"),
                         ({"caption_variants": 3}, "caption_variants needs the knowledge base")):
        with pytest.raises(ValueError, match=message):
            train_lora(profile=profile, dataset_dir=dataset, output_dir=out, settings_overrides={"max_steps": 1},
                       **bad)
    for bad, message in (({"max_steps": 0}, "max_steps"), ({"mixed_precision": "fp8"}, "mixed_precision"),
                         ({"learning_rate": 2.0}, "learning_rate"), ({"ema_decay": 1.0}, "ema_decay")):
        with pytest.raises(ValueError, match=message):
            train_lora(profile=profile, dataset_dir=dataset, output_dir=out,
                       settings_overrides={"max_steps": 1, **bad})
    assert not out.exists()


def test_split_is_stratified_and_stable(dataset):
    records = read_manifest(dataset)
    train, validation = split_records(records, validation_fraction=0.25, seed=3)
    assert sorted(r.label for r in validation) == ["normal", "pneumonia"]
    assert {r.path for r in train}.isdisjoint({r.path for r in validation})
    assert split_records(records, validation_fraction=0.25, seed=3) == (train, validation)


def test_captions_fall_back_to_the_reasoning_prompt_for_rows_without_text(tmp_path):
    from clinisynth.agents.prompting import caption_for_label
    from clinisynth.knowledge import load_knowledge
    from clinisynth.training.captions import captions_for

    records = read_manifest(make_dataset(tmp_path / "notext", per_label=1, text=False))
    with pytest.raises(ValueError, match="no caption text"):
        captions_for(records)
    knowledge = load_knowledge()
    captions = captions_for(records, knowledge=knowledge)
    assert captions == [caption_for_label(knowledge=knowledge, modality_id="modality.chest_xray", label=r.label)
                        for r in records]
    assert captions[0] != captions[1] and all(captions)


def test_varied_captions_draw_each_image_one_stable_variant_of_its_class(tmp_path, knowledge):
    from clinisynth.agents.prompting import caption_variants_for_label
    from clinisynth.training.captions import varied_captions

    records = read_manifest(make_dataset(tmp_path / "varied", per_label=12, size=16))
    captions = varied_captions(records, knowledge=knowledge, max_variants=8)
    assert captions == varied_captions(records, knowledge=knowledge, max_variants=8)  # reproducible
    for label in ("normal", "pneumonia"):
        allowed = caption_variants_for_label(knowledge=knowledge, modality_id="modality.chest_xray", label=label,
                                             max_variants=8)
        used = {c for r, c in zip(records, captions) if r.label == label}
        assert used <= set(allowed) and len(used) >= 3  # 12 images spread over the variants
        assert all(r.text not in used or r.text == allowed[0] for r in records if r.label == label)


def test_min_snr_weights_and_ema():
    import torch

    from clinisynth.training.engine import EMA, min_snr_weights

    alphas = torch.linspace(0.999, 0.001, 1000)
    weights = min_snr_weights(alphas, torch.tensor([0, 999]), gamma=5.0, prediction_type="epsilon")
    snr0 = 0.999 / 0.001
    assert torch.allclose(weights, torch.tensor([5.0 / snr0, 1.0]), rtol=1e-4)  # clean steps down-weighted
    parameter = torch.nn.Parameter(torch.zeros(3))
    ema = EMA({"p": parameter}, decay=0.5)
    with torch.no_grad():
        parameter.fill_(2.0)
    ema.update({"p": parameter})
    assert torch.allclose(ema.shadow["p"], torch.ones(3))
    with ema.applied({"p": parameter}):
        assert torch.allclose(parameter, torch.ones(3))
    assert torch.allclose(parameter, torch.full((3,), 2.0))
    # Warm-up: right after the first steps the average follows the weights, not their random initial values.
    warm = EMA({"p": torch.nn.Parameter(torch.zeros(3))}, decay=0.999)
    assert warm.decay_at(1) == pytest.approx(2 / 11) and warm.decay_at(10_000) == 0.999
    warm.update({"p": parameter}, step=1)
    assert torch.allclose(warm.shadow["p"], torch.full((3,), 2.0 * 9 / 11))


def test_caption_dropout_feeds_the_empty_prompt_to_the_loop(tmp_path):
    import torch
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from clinisynth.training.engine import LoopSettings, TrainingData, make_conditioned_unet, run_training

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 16), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=8,
                                attention_head_dim=4, norm_num_groups=8)
    table = torch.randn(3, 5, 8)  # row 0: the empty prompt, rows 1-2: two captions
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, rows):
            seen.extend(rows.tolist())
            return table[rows]

    latents = torch.randn(8, 4, 8, 8)
    data = TrainingData(latent_mean=latents, latent_std=torch.zeros_like(latents),
                        caption_index=torch.tensor([1, 2] * 4), caption_embeds=table, val_latent_mean=latents[:0],
                        val_latent_std=latents[:0], val_caption_index=torch.zeros(0, dtype=torch.long),
                        scaling_factor=1.0, empty_caption_row=0)

    def train(dropout: float, out: str) -> list[int]:
        seen.clear()
        (tmp_path / out).mkdir()
        settings = LoopSettings(output_dir=tmp_path / out, max_steps=6, batch_size=4, validation_every=0,
                                caption_dropout=dropout, log_every=100)
        run_training(settings=settings, model=make_conditioned_unet(unet, caption_encoder=Recorder()),
                     trainable=dict(unet.named_parameters()), data=data,
                     noise_scheduler=DDPMScheduler(num_train_timesteps=100), fingerprint="t", identity={},
                     log=lambda _: None)
        return list(seen)

    assert 0 not in train(0.0, "plain")
    with_dropout = train(0.5, "dropout")
    assert 0 < with_dropout.count(0) < len(with_dropout) and {1, 2} & set(with_dropout)
    with pytest.raises(ValueError, match="caption_dropout must be in"):
        LoopSettings(output_dir=tmp_path, max_steps=1, caption_dropout=1.0).check()
    with pytest.raises(ValueError, match="empty_caption_row"):
        run_training(settings=LoopSettings(output_dir=tmp_path / "x", max_steps=1, caption_dropout=0.1),
                     model=make_conditioned_unet(unet), trainable=dict(unet.named_parameters()),
                     data=TrainingData(**{**data.__dict__, "empty_caption_row": None}),
                     noise_scheduler=DDPMScheduler(num_train_timesteps=100), fingerprint="t", identity={})


@pytest.mark.slow
def test_projection_and_prior_preservation(tmp_path, cache_dir, dataset):
    """MiniLM (384) driving the tiny U-Net (32): a projection is trained, saved, and used at inference."""
    from clinisynth.generation import tiny

    profile = resolve_profile("demo", cache_dir=tmp_path,
                              overrides={"demo_generator": str(tiny.ensure_tiny_pipeline(cache_dir))})
    with pytest.raises(ValueError, match="hidden size 384"):
        Generator.from_profile(profile, device="cpu")
    adapter = train_lora(profile=profile, dataset_dir=dataset, output_dir=tmp_path / "run", rank=2,
                         labels=["pneumonia"], class_prompt="chest radiograph", num_class_images=2,
                         class_image_steps=1, num_sample_seeds=1, sample_steps=1,
                         settings_overrides={**FAST, "max_steps": 1}, log=lambda _: None)
    assert (adapter / "text_projection.safetensors").is_file() and read_card(adapter).projection
    assert len(list((tmp_path / "run" / "class_images").glob("*.png"))) == 2
    assert json.loads((adapter / "clinisynth_adapter.json").read_text())["data"]["class_prompt"] == "chest radiograph"
    generator = Generator.from_profile(profile, device="cpu", adapters=[adapter])
    embeds, _ = generator.encode(["chest radiograph"])
    assert embeds.shape[-1] == 32
    image = generator.generate(prompt="chest radiograph", negative_prompt="", seeds=[0], steps=1, guidance=2.0)[0]
    assert image.image.size == (64, 64)


@pytest.mark.slow
def test_text_encoder_lora_is_trained_saved_loaded_alone_and_unloaded(tmp_path, cache_dir, dataset, trained):
    import torch
    from safetensors.torch import load_file

    from clinisynth.generation.adapters import AdapterError

    profile = resolve_profile("tiny", cache_dir=cache_dir)
    adapter = train_lora(profile=profile, dataset_dir=dataset, output_dir=tmp_path / "run", rank=4,
                         num_sample_seeds=1, sample_steps=1, validation_fraction=0.25, train_text_encoder=True,
                         settings_overrides={**FAST, "max_steps": 3, "checkpoint_every": 0}, log=lambda _: None)
    card = read_card(adapter)
    assert card.text_encoder_lora and (adapter / "text_encoder" / "adapter_config.json").is_file()
    text_state = load_file(str(adapter / "text_encoder" / "adapter_model.safetensors"))
    assert any(".query.lora_B" in key for key in text_state)
    # lora_B starts at zero: non-zero values mean the encoder LoRA was trained.
    assert max(float(v.abs().max()) for k, v in text_state.items() if "lora_B" in k) > 0

    generator = Generator.from_profile(profile, device="cpu")
    base_embeds, _ = generator.encode([CAPTIONS["pneumonia"]])
    generator.load_adapter(card)
    adapted, _ = generator.encode([CAPTIONS["pneumonia"]])
    assert not torch.allclose(adapted, base_embeds)
    assert generator.adapters[0]["text_encoder_lora"] is True
    with pytest.raises(AdapterError, match="used alone"):
        generator.load_adapter(trained["adapter"])
    with pytest.raises(AdapterError, match="weight 1"):
        generator.set_adapter_weights({card.name: 0.5})
    generator.unload_adapters()
    restored, _ = generator.encode([CAPTIONS["pneumonia"]])
    assert torch.equal(restored, base_embeds)


@pytest.mark.slow
def test_caption_variants_train_on_the_run_path_wordings_of_each_class(dataset, tmp_path, cache_dir, knowledge,
                                                                       monkeypatch):
    import clinisynth.training.lora as lora

    seen = []
    encode = lora.encode_captions

    def recording(*, captions, **kwargs):
        seen.extend(captions)
        return encode(captions=captions, **kwargs)

    monkeypatch.setattr(lora, "encode_captions", recording)
    profile = resolve_profile("tiny", cache_dir=cache_dir)
    adapter = train_lora(profile=profile, dataset_dir=dataset, output_dir=tmp_path / "run", rank=2, knowledge=knowledge,
                         caption_variants=3, num_sample_seeds=1, sample_steps=1, validation_fraction=0.25,
                         settings_overrides={**FAST, "max_steps": 1, "checkpoint_every": 0}, log=lambda _: None)
    manifest_texts = {row.text for row in read_manifest(dataset)}
    trained_on = {caption for caption in seen if caption}
    assert trained_on and not trained_on & manifest_texts  # the class wordings, not the manifest's text
    assert 1 < len(trained_on) <= 3 * 2  # up to 3 wordings for each of the 2 labels
    card = json.loads((adapter / "clinisynth_adapter.json").read_text())
    assert card["data"]["caption_variants"] == 3


def test_balance_classes_draws_each_label_equally_and_is_on_the_card(trained, tmp_path, monkeypatch):
    import clinisynth.training.lora as lora_module

    seen = {}
    real_run_training = lora_module.run_training

    def recording_run_training(**kwargs):
        seen["weights"] = kwargs["data"].sample_weights
        return real_run_training(**kwargs)

    monkeypatch.setattr(lora_module, "run_training", recording_run_training)
    adapter = train_lora(**{**trained["common"], "output_dir": tmp_path / "run", "adapter_dir": tmp_path / "balanced"},
                         balance_classes=True, settings_overrides={**FAST, "max_steps": 1})
    card = json.loads((adapter / "clinisynth_adapter.json").read_text())
    assert card["data"]["balance_classes"] is True
    counts = card["data"]["images_per_label"]
    weights = seen["weights"].tolist()
    # each image weighs 1 / (images of its label): every label's total chance is the same
    assert sorted(set(round(w, 9) for w in weights)) == sorted(set(round(1 / n, 9) for n in counts.values()))
    assert abs(sum(weights) - len(counts)) < 1e-9
