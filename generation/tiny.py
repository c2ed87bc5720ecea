"""The ``tiny`` profile's pipeline: a small StableDiffusionPipeline with a BERT text encoder, built from configs.

It is built once per configuration with a fixed seed (identical weights every time), saved with
``save_pretrained`` and afterwards only loaded with ``from_pretrained``, so tests and the walking skeleton
run the same loading path as real checkpoints. Its images are noise: the weights are untrained.
"""

from __future__ import annotations

import hashlib
import json
from importlib import metadata as importlib_metadata
from pathlib import Path

from clinisynth.generation.files import staged_directory

#: Bump when the build below changes in a way the configs do not show.
TINY_FORMAT_VERSION = 2

#: Latent side; the VAE below halves the image side once, so images are 64 px.
_LATENT_SIZE = 32
_TEXT_HIDDEN = 32

TINY_UNET_CONFIG = {
    "sample_size": _LATENT_SIZE,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 1,
    "block_out_channels": [32, 64],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
    "cross_attention_dim": _TEXT_HIDDEN,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}

TINY_VAE_CONFIG = {
    "sample_size": _LATENT_SIZE * 2,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 1,
    "block_out_channels": [32, 64],
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
    "norm_num_groups": 32,
}

#: ``vocab_size`` is filled in from the MiniLM WordPiece vocabulary.
TINY_BERT_CONFIG = {
    "hidden_size": _TEXT_HIDDEN,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "pad_token_id": 0,
    # diffusers' own encode_prompt passes the attention mask only when this is set (PITFALLS.md), so a bare
    # diffusers pipeline loaded from this folder encodes prompts the way clinisynth does.
    "use_attention_mask": True,
}

TINY_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    # Config-built schedulers default to 0; SD checkpoints use 1 (PITFALLS.md).
    "steps_offset": 1,
}

_BUILD_RECORD = "clinisynth_tiny.json"


def _vocab_file() -> Path:
    from clinisynth.generation.profiles import packaged_minilm_dir

    return packaged_minilm_dir() / "vocab.txt"


def _library_versions() -> dict[str, str]:
    # Initialisation code can change between releases; a new version gets a new folder, never stale weights.
    return {name: importlib_metadata.version(name) for name in ("torch", "diffusers", "transformers")}


def tiny_config_hash(*, seed: int = 0) -> str:
    """Short hash of everything that determines the tiny pipeline's files (configs, seed, vocab, library versions)."""
    vocab_digest = hashlib.sha256(_vocab_file().read_bytes()).hexdigest()
    payload = {
        "format": TINY_FORMAT_VERSION,
        "seed": seed,
        "unet": TINY_UNET_CONFIG,
        "vae": TINY_VAE_CONFIG,
        "bert": TINY_BERT_CONFIG,
        "scheduler": TINY_SCHEDULER_CONFIG,
        "vocab_sha256": vocab_digest,
        "versions": _library_versions(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def tiny_pipeline_dir(cache_dir: Path, *, seed: int = 0) -> Path:
    """Where :func:`ensure_tiny_pipeline` puts (or finds) the pipeline for ``seed``; builds nothing."""
    return Path(cache_dir) / "models" / f"tiny-{tiny_config_hash(seed=seed)}"


def ensure_tiny_pipeline(cache_dir: Path, *, seed: int = 0) -> Path:
    """Build the tiny pipeline into the cache once and return its directory.

    The pipeline is written to a temporary folder next to the target and renamed into place, so a reader never
    sees a half-written folder and two processes racing leave one valid copy.

    Args:
        cache_dir: cache root; the pipeline goes to ``<cache_dir>/models/tiny-<config hash>``.
        seed: weight-initialisation seed; the same seed gives identical weights.
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    target = tiny_pipeline_dir(cache_dir, seed=seed)
    if (target / _BUILD_RECORD).is_file():
        return target
    def complete(existing: Path) -> None:
        if not (existing / _BUILD_RECORD).is_file():
            raise RuntimeError(f"cannot place the tiny pipeline at {existing}: a folder without {_BUILD_RECORD} is "
                               f"in the way; delete {existing} and run again")

    # Another process may publish its copy first: keep theirs (replace=False).
    with staged_directory(target, replace=False, check_existing=complete) as staging:
        _build_into(staging, seed=seed)
    return target


def _build_into(directory: Path, *, seed: int) -> None:
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import AutoTokenizer, BertConfig, BertModel

    from clinisynth.generation.profiles import packaged_minilm_dir

    # The real MiniLM WordPiece tokenizer, so prompts split into proper sub-words.
    tokenizer = AutoTokenizer.from_pretrained(str(packaged_minilm_dir()))
    vocab_size = len(tokenizer)

    # One seed per component: each component's weights do not depend on the build order.
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY_UNET_CONFIG)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**TINY_VAE_CONFIG)
    torch.manual_seed(seed + 2)
    # With its (unused) pooler, like real BERT checkpoints, so every encoder loads the same way without key reports.
    text_encoder = BertModel(BertConfig(vocab_size=vocab_size, **TINY_BERT_CONFIG))
    scheduler = DDIMScheduler(**TINY_SCHEDULER_CONFIG)
    if scheduler.config.steps_offset != 1:
        raise RuntimeError(f"tiny scheduler steps_offset is {scheduler.config.steps_offset}, expected 1")

    pipeline = StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(str(directory), safe_serialization=True)
    record = {"seed": seed, "config_hash": tiny_config_hash(seed=seed), "versions": _library_versions()}
    # Written last: its presence marks a complete folder.
    (directory / _BUILD_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
