"""Tiny LoRA adapters for the tiny profile's base, built with PEFT directly (random non-zero weights, no training)."""

from __future__ import annotations

import json
from pathlib import Path

MODALITY = "modality.chest_xray"


def make_adapter(directory: Path, generator, *, seed: int, labels, modality: str = MODALITY, rank: int = 4,
                 targets=("to_q", "to_k", "to_v", "to_out.0"), scale: float = 0.3, **card_fields) -> Path:
    """Write an adapter folder for ``generator``'s base U-Net and text encoder (the card's signatures are theirs).

    Args:
        card_fields: card entries to set or override (``max_length``, ``base_signature``, ...).
    """
    import torch
    from diffusers import UNet2DConditionModel

    from clinisynth.generation import adapters as adapters_module
    from clinisynth.training.lora import add_lora

    unet = UNet2DConditionModel.from_pretrained(str(Path(generator.profile.generator) / "unet"))
    config = add_lora(unet, rank=rank, alpha=rank, target_modules=targets)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, parameter in unet.named_parameters():
            if "lora_" in name:
                parameter.normal_(0, scale)
    card = {"base_model": generator.profile.generator, "text_encoder": generator.profile.text_encoder,
            "modality": modality, "labels": list(labels), "rank": rank, "alpha": rank, "steps": 0,
            "max_length": generator.profile.max_length,
            "base_signature": list(adapters_module.unet_signature(unet)),
            "text_encoder_signature": list(adapters_module.encoder_signature(generator.text_encoder)),
            "data": {"note": "random weights for tests"}, "metrics": {}}
    card.update(card_fields)
    return adapters_module.save_adapter(directory, unet=unet, adapter_name="default", lora_config=config, card=card)


def edit_card(directory: Path, **fields) -> Path:
    """Change card entries of an adapter in place (its card hash changes with them)."""
    path = Path(directory) / "clinisynth_adapter.json"
    card = json.loads(path.read_text())
    card.update(fields)
    path.write_text(json.dumps(card, indent=2) + "\n")
    return Path(directory)
