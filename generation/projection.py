"""A trained linear projection from the text encoder's width to the U-Net's cross-attention width.

Used when the two differ (MiniLM 384 -> SD 1.x 768, PubMedBERT 768 -> SD 2.x 1024). It is trained with the LoRA
adapter and saved next to it as ``text_projection.safetensors`` + ``text_projection.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

PROJECTION_WEIGHTS = "text_projection.safetensors"
PROJECTION_CONFIG = "text_projection.json"


def make_projection(*, in_dim: int, out_dim: int, seed: int = 0):
    """A ``torch.nn.Linear(in_dim, out_dim)``, initialised with a fixed seed (Xavier, zero bias)."""
    import torch

    for name, value in (("in_dim", in_dim), ("out_dim", out_dim)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    generator = torch.Generator().manual_seed(seed)
    layer = torch.nn.Linear(in_dim, out_dim)
    with torch.no_grad():
        bound = (6.0 / (in_dim + out_dim)) ** 0.5
        layer.weight.copy_(torch.empty(out_dim, in_dim).uniform_(-bound, bound, generator=generator))
        layer.bias.zero_()
    return layer


def save_projection(layer, directory: Path) -> None:
    """Write the projection's weights and shape into ``directory``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    state = {k: v.detach().float().cpu().contiguous() for k, v in layer.state_dict().items()}
    save_file(state, str(directory / PROJECTION_WEIGHTS))
    config = {"in_dim": int(layer.in_features), "out_dim": int(layer.out_features)}
    (directory / PROJECTION_CONFIG).write_text(json.dumps(config, indent=2) + "\n")


def has_projection(directory: Path) -> bool:
    """True when ``directory`` holds a saved projection."""
    return (Path(directory) / PROJECTION_WEIGHTS).is_file()


def load_projection(directory: Path, *, in_dim: int, out_dim: int):
    """The projection saved in ``directory``, checked against the encoder and U-Net widths.

    Raises:
        ValueError: the saved shape is not ``in_dim -> out_dim``, or keys are missing / unexpected.
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    config = json.loads((directory / PROJECTION_CONFIG).read_text())
    if (config.get("in_dim"), config.get("out_dim")) != (in_dim, out_dim):
        raise ValueError(
            f"text projection in {directory} maps {config.get('in_dim')} -> {config.get('out_dim')}, but this "
            f"text encoder has width {in_dim} and the U-Net expects {out_dim}; use an adapter trained for this pair"
        )
    layer = make_projection(in_dim=in_dim, out_dim=out_dim)
    state = load_file(str(directory / PROJECTION_WEIGHTS))
    result = layer.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"text projection in {directory}: missing keys {result.missing_keys}, unexpected keys "
                         f"{result.unexpected_keys}")
    return layer.eval().requires_grad_(False)
