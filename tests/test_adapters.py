"""generation/adapters.py: registry, checked loading, weighted combination, fuse, unload (tiny models, offline)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from _adapter_helpers import MODALITY, make_adapter

from clinisynth.generation import adapters as adapters_module
from clinisynth.generation.adapters import AdapterError, AdapterRegistry, read_card
from clinisynth.generation.pipeline import Generator
from clinisynth.generation.profiles import resolve_profile

@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def generator(cache_dir) -> Generator:
    return Generator.from_profile(resolve_profile("tiny", cache_dir=cache_dir), device="cpu")


@pytest.fixture(scope="module")
def library(tmp_path_factory, generator) -> Path:
    root = tmp_path_factory.mktemp("adapters")
    make_adapter(root / "chest_pneumonia", generator, seed=1, labels=["pneumonia"])
    make_adapter(root / "chest_all", generator, seed=2, labels=["normal", "pneumonia", "pleural_effusion"])
    make_adapter(root / "brain_glioma", generator, seed=3, labels=["glioma"], modality="modality.brain_mri")
    return root


def _unet_out(generator: Generator):
    """One deterministic U-Net forward through the generator's conditioning path."""
    import torch

    embeds, _ = generator.encode(["chest radiograph, right lower lobe pneumonia"])
    torch.manual_seed(0)
    latents = torch.randn(1, 4, 32, 32)
    with torch.no_grad():
        return generator.pipeline.unet(latents, torch.tensor([500]), encoder_hidden_states=embeds).sample


def test_registry_lists_and_chooses_by_modality_label_and_name(library):
    registry = AdapterRegistry(library)
    assert [c.name for c in registry.cards()] == ["brain_glioma", "chest_all", "chest_pneumonia"]
    card = registry.get("chest_all")
    assert card.modality == MODALITY and card.rank == 4 and "pleural_effusion" in card.labels
    # The most specific adapter that knows the label wins; a plan dict works the same way.
    assert registry.choose(modality=MODALITY, label="pneumonia").name == "chest_pneumonia"
    assert registry.choose(modality={"id": MODALITY, "term": "chest radiograph"}, label="normal").name == "chest_all"
    assert registry.for_plan({"modality": {"id": MODALITY}, "label": "pleural_effusion"}).name == "chest_all"
    assert registry.choose(modality="modality.ct_abdomen", label="normal") is None  # no adapters: base model
    with pytest.raises(AdapterError, match="label 'fracture'.*normal, pleural_effusion, pneumonia"):
        registry.choose(modality=MODALITY, label="fracture")
    with pytest.raises(AdapterError, match="not trained on label 'normal'.*pneumonia"):
        registry.select(name="chest_pneumonia", label="normal")
    with pytest.raises(AdapterError, match="no adapter named 'chest'.*chest_all"):
        registry.get("chest")
    with pytest.raises(AdapterError, match="does not exist"):
        AdapterRegistry(library / "missing")


def test_a_half_written_adapter_folder_is_an_error_not_skipped(library, tmp_path):
    root = tmp_path / "lib"
    shutil.copytree(library / "chest_all", root / "chest_all")
    (root / "broken").mkdir()
    shutil.copy(library / "chest_all" / "adapter_config.json", root / "broken")
    with pytest.raises(AdapterError, match="broken lacks adapter_model.safetensors"):
        AdapterRegistry(root).cards()


def test_loaded_adapter_matches_diffusers_loader_and_unloads_to_the_base(generator, library):
    import torch
    from safetensors.torch import load_file

    base = _unet_out(generator)
    generator.load_adapter(library / "chest_pneumonia")
    try:
        ours = _unet_out(generator)
        assert (ours - base).abs().mean() > 1e-3  # the adapter changes the U-Net
        assert generator.adapters[0]["name"] == "chest_pneumonia"
    finally:
        generator.unload_adapters()
    assert torch.equal(_unet_out(generator), base)  # unloading restores the base exactly
    assert not any("lora" in name for name, _ in generator.pipeline.unet.named_parameters())

    # The same file through diffusers' own loader (prefix=None, PITFALLS.md) gives the same U-Net.
    unet = generator.pipeline.unet
    state = load_file(str(library / "chest_pneumonia" / "pytorch_lora_weights.safetensors"))
    unet.load_lora_adapter({k[len("unet."):]: v for k, v in state.items()}, prefix=None, adapter_name="ref",
                           network_alphas=None)
    try:
        assert torch.allclose(_unet_out(generator), ours, atol=1e-5)
    finally:
        unet.unload_lora()


def test_weights_combine_fuse_and_disable_pitfall(generator, library):
    import torch

    base = _unet_out(generator)
    generator.load_adapter(library / "chest_pneumonia")
    only_first = _unet_out(generator)
    generator.load_adapter(library / "chest_all")
    try:
        generator.set_adapter_weights({"chest_pneumonia": 1.0, "chest_all": 0.0})
        assert torch.allclose(_unet_out(generator), only_first, atol=1e-5)
        generator.set_adapter_weights({"chest_pneumonia": 0.5, "chest_all": 0.5})
        mixed = _unet_out(generator)
        assert not torch.allclose(mixed, only_first, atol=1e-3)
        generator.set_adapter_weights({"chest_pneumonia": 0.0, "chest_all": 0.0})
        assert torch.allclose(_unet_out(generator), base, atol=1e-5)
        generator.set_adapter_weights({"chest_pneumonia": 0.5, "chest_all": 0.5})
        generator.fuse_adapters()
        assert torch.allclose(_unet_out(generator), mixed, atol=1e-4)  # fused = same model, merged weights
        with pytest.raises(AdapterError, match="fused"):
            generator.set_adapter_weights({"chest_all": 1.0})
        generator.unfuse_adapters()
        assert torch.allclose(_unet_out(generator), mixed, atol=1e-4)
        with pytest.raises(AdapterError, match="not loaded"):
            generator.set_adapter_weights({"nope": 1.0})
        with pytest.raises(ValueError, match="weight"):
            generator.set_adapter_weights({"chest_all": float("nan")})
        generator.unload_adapters(["chest_all"])
        generator.set_adapter_weights({"chest_pneumonia": 1.0})
        assert torch.allclose(_unet_out(generator), only_first, atol=1e-5)
    finally:
        generator.unload_adapters()
    assert torch.equal(_unet_out(generator), base)

    # disable_lora() outlives unloads (PITFALLS.md); a new load must be active anyway.
    generator.load_adapter(library / "chest_pneumonia")
    generator.pipeline.unet.disable_lora()
    generator.unload_adapters()
    generator.load_adapter(library / "chest_pneumonia")
    try:
        assert torch.allclose(_unet_out(generator), only_first, atol=1e-5)
    finally:
        generator.unload_adapters()


def _copy(library: Path, tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copytree(library / "chest_pneumonia", target)
    return target


def test_wrong_keys_are_refused_before_the_unet_changes(generator, library, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    base = _unet_out(generator)
    for name, edit, message in (
        ("renamed", lambda s: {k.replace("to_q", "to_z"): v for k, v in s.items()}, "unexpected key"),
        ("dropped", lambda s: dict(list(s.items())[2:]), "missing key"),
        ("prefix", lambda s: {k[len("unet."):]: v for k, v in s.items()}, "lack the 'unet.' prefix"),
    ):
        adapter = _copy(library, tmp_path, name)
        path = adapter / "pytorch_lora_weights.safetensors"
        save_file(edit(load_file(str(path))), str(path))
        with pytest.raises(AdapterError, match=message):
            generator.load_adapter(adapter)
        assert generator.adapters == [] and torch.equal(_unet_out(generator), base)

    # PEFT file and diffusers file must hold the same weights.
    adapter = _copy(library, tmp_path, "disagree")
    path = adapter / "adapter_model.safetensors"
    state = load_file(str(path))
    first = sorted(state)[0]
    state[first] = state[first] + 1
    save_file(state, str(path))
    with pytest.raises(AdapterError, match="different weights"):
        generator.load_adapter(adapter)

    # A rank that does not match the config is a shape error.
    adapter = _copy(library, tmp_path, "rank")
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["r"] = 8
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterError, match="shape"):
        generator.load_adapter(adapter)
    assert generator.adapters == []


def test_adapter_for_another_base_model_or_text_encoder_is_refused(cache_dir, library, generator):
    other = Generator.from_profile(resolve_profile("tiny", cache_dir=cache_dir), device="cpu")
    # Another seed, same architecture: the keys fit, the weights are someone else's.
    from clinisynth.generation import tiny

    other_dir = tiny.ensure_tiny_pipeline(cache_dir, seed=1)
    from diffusers import UNet2DConditionModel
    from transformers import AutoModel

    other.pipeline.unet = UNet2DConditionModel.from_pretrained(str(other_dir / "unet"))
    with pytest.raises(AdapterError, match="trained on base model"):
        other.load_adapter(library / "chest_pneumonia")
    other.pipeline.unet = generator.pipeline.unet
    other.text_encoder = AutoModel.from_pretrained(str(other_dir / "text_encoder"))
    with pytest.raises(AdapterError, match="trained with text encoder"):
        other.load_adapter(library / "chest_pneumonia")
    assert read_card(library / "chest_pneumonia").labels == ("pneumonia",)


def test_from_profile_loads_adapters_with_weights(cache_dir, library):
    profile = resolve_profile("tiny", cache_dir=cache_dir)
    loaded = Generator.from_profile(profile, device="cpu", adapters=[(library / "chest_all", 0.7)])
    assert [(a["name"], a["weight"]) for a in loaded.adapters] == [("chest_all", 0.7)]
    image = loaded.generate(prompt="chest radiograph", negative_prompt="", seeds=[3], steps=2, guidance=2.0)[0]
    assert image.image.size == (profile.resolution, profile.resolution)
    with pytest.raises(AdapterError, match="twice"):
        Generator.from_profile(profile, device="cpu", adapters=[library / "chest_all", library / "chest_all"])
