"""``train lora``: LoRA on the U-Net attention layers (optionally the ResNet convolutions too) of a profile's
generator; the text encoder is frozen unless
``train_text_encoder`` adds a LoRA to its self-attention too.

The adapter is trained on the exact components :class:`clinisynth.generation.pipeline.Generator` samples from
(:func:`clinisynth.generation.pipeline.load_components`), with captions encoded by the one ``encode_text``, and
saved in the format :mod:`clinisynth.generation.adapters` loads (PEFT files, diffusers file, card). When the
encoder's width differs from the U-Net's cross-attention width a linear text projection is trained with it
and saved alongside.
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from pathlib import Path
from typing import Callable

from clinisynth.evaluation.memorisation import SHIPPED_INDEX_DIR, write_shipped_indexes
from clinisynth.generation.adapters import DEFAULT_TARGET_MODULES, LORA_TARGET_MODULES, TEXT_ENCODER_TARGET_MODULES
from clinisynth.generation.files import write_atomically
from clinisynth.training.checkpoints import load_checkpoint, resolve_resume, run_fingerprint
from clinisynth.training.data import load_images, read_manifest, split_records
from clinisynth.training.engine import (
    LoopSettings,
    TrainingData,
    class_balanced_weights,
    encode_captions,
    encode_latents,
    make_caption_encoder,
    make_conditioned_unet,
    run_training,
)

ADAPTER_NAME = "default"


def check_lora_options(*, rank: int, alpha: float | None, dropout: float, target_modules) -> None:
    """Raise ``ValueError`` naming the bad LoRA option."""
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= 512:
        raise ValueError(f"rank must be an int from 1 to 512, got {rank!r}")
    if alpha is not None and not (isinstance(alpha, (int, float)) and alpha > 0):
        raise ValueError(f"alpha must be positive (or None for alpha = rank), got {alpha!r}")
    if not (isinstance(dropout, (int, float)) and 0 <= dropout < 1):
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    unknown = sorted(set(target_modules) - set(LORA_TARGET_MODULES))
    if not target_modules or unknown:
        raise ValueError(f"target_modules must be a non-empty subset of {list(LORA_TARGET_MODULES)}, got "
                         f"{list(target_modules)!r}")


def add_lora(unet, *, rank: int, alpha: float | None = None, dropout: float = 0.0,
             target_modules=DEFAULT_TARGET_MODULES, adapter_name: str = ADAPTER_NAME, seed: int = 0):
    """Freeze ``unet`` and inject a trainable LoRA (initialised from ``seed``); return the ``peft.LoraConfig``."""
    import torch
    from peft import LoraConfig

    check_lora_options(rank=rank, alpha=alpha, dropout=dropout, target_modules=target_modules)
    config = LoraConfig(r=rank, lora_alpha=float(alpha if alpha is not None else rank), lora_dropout=float(dropout),
                        init_lora_weights="gaussian", target_modules=list(target_modules))
    unet.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):  # same initial LoRA on every run and every process
        torch.manual_seed(seed)
        unet.add_adapter(config, adapter_name=adapter_name)
    return config


def add_text_encoder_lora(text_encoder, *, rank: int, alpha: float | None = None, dropout: float = 0.0,
                          adapter_name: str = ADAPTER_NAME, seed: int = 0):
    """Inject a trainable LoRA into a BERT-family encoder's self-attention (``query``, ``key``, ``value``); the
    rest of the encoder stays frozen. Returns the ``peft.LoraConfig``."""
    import torch
    from peft import LoraConfig

    config = LoraConfig(r=rank, lora_alpha=float(alpha if alpha is not None else rank), lora_dropout=float(dropout),
                        init_lora_weights="gaussian", target_modules=list(TEXT_ENCODER_TARGET_MODULES))
    text_encoder.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        text_encoder.add_adapter(config, adapter_name=adapter_name)
    missing = [name for name, p in text_encoder.named_parameters() if "lora_" in name and not p.requires_grad]
    if missing or not any("lora_" in name for name, _ in text_encoder.named_parameters()):
        raise ValueError(f"the text encoder has no trainable {list(TEXT_ENCODER_TARGET_MODULES)} layers to adapt; "
                         "train_text_encoder needs a BERT-family encoder")
    return config


def _manifest_sha256(dataset_dir: Path) -> str:
    return hashlib.sha256((Path(dataset_dir) / "manifest.csv").read_bytes()).hexdigest()


def train_lora(*, profile, dataset_dir: Path, output_dir: Path, adapter_dir: Path | None = None,
               labels: list[str] | None = None, modality: str | None = None, limit: int | None = None,
               rank: int = 8, alpha: float | None = None, dropout: float = 0.0,
               target_modules=DEFAULT_TARGET_MODULES, settings_overrides: dict | None = None,
               validation_fraction: float = 0.05, class_prompt: str | None = None, num_class_images: int = 0,
               class_image_steps: int | None = None, train_text_encoder: bool = False,
               knowledge=None, caption_variants: int = 0, balance_classes: bool = False, num_sample_seeds: int = 2,
               sample_steps: int | None = None,
               guidance: float | None = None, accelerator=None, log: Callable[[str], None] = print) -> Path:
    """Train a LoRA adapter on a prepared manifest; return the adapter folder.

    Args:
        profile: the :class:`clinisynth.generation.profiles.ModelProfile` whose generator is adapted.
        dataset_dir: folder with ``manifest.csv`` (``clinisynth prepare``).
        output_dir: run folder (metrics, ``loss_curve.png``, ``samples.png``, ``checkpoints/``).
        adapter_dir: the adapter folder to write (renamed into place when complete); ``output_dir/adapter`` if None.
        labels, modality, limit: manifest subset; the card records the labels and modality trained on.
        rank, alpha, dropout, target_modules: LoRA options (alpha defaults to rank).
        settings_overrides: fields of :class:`clinisynth.training.engine.LoopSettings`.
        validation_fraction: held-out share per label for the validation loss.
        class_prompt: DreamBooth-style prior preservation: images of this prompt are sampled from the frozen base
            model (``num_class_images`` of them, cached in ``output_dir/class_images``) and trained on alongside.
        num_class_images: how many class images (required > 0 with ``class_prompt``).
        class_image_steps: sampling steps of the class images (the profile's default when ``None``).
        train_text_encoder: also train a LoRA (same rank, alpha, dropout) on the text encoder's self-attention;
            captions are then encoded every step instead of once, and the adapter carries ``text_encoder/``.
        knowledge: knowledge base for rows without caption text (and for ``caption_variants``).
        caption_variants: when above 0, each image is captioned with one of up to this many wordings of its class
            (:func:`clinisynth.training.captions.varied_captions`, as ``train scratch`` does), so the adapter
            answers the prompts a run writes, whatever technique, side or severity they name; 0: the manifest text.
        balance_classes: draw every label equally often instead of every image (BreastMNIST has 348 benign and
            150 malignant training images: drawn by image, the adapter learns malignant from 30 % of its steps).
        num_sample_seeds: validation images per label.
        sample_steps, guidance: validation sampling (profile defaults when ``None``).
        accelerator: an ``accelerate.Accelerator`` (made from the settings when ``None``).
        log: progress sink.
    """
    import torch
    from accelerate import Accelerator
    from diffusers import DDPMScheduler

    from clinisynth.generation.adapters import encoder_signature, save_adapter, unet_signature
    from clinisynth.generation.pipeline import Generator, load_components
    from clinisynth.generation.projection import make_projection
    from clinisynth.training.captions import captions_for, typical_captions, varied_captions

    if isinstance(caption_variants, bool) or not isinstance(caption_variants, int) or caption_variants < 0:
        raise ValueError(f"caption_variants must be 0 (the manifest text) or a positive number of wordings, "
                         f"got {caption_variants!r}")
    if caption_variants and knowledge is None:
        raise ValueError("caption_variants needs the knowledge base (knowledge=clinisynth.knowledge.load_knowledge())")
    out = Path(output_dir)
    settings = LoopSettings(output_dir=out, **(settings_overrides or {}))
    settings.check()
    check_lora_options(rank=rank, alpha=alpha, dropout=dropout, target_modules=target_modules)
    if class_prompt is not None and (not class_prompt.strip() or num_class_images < 1):
        raise ValueError("prior preservation needs a non-empty class_prompt and num_class_images >= 1")
    records = read_manifest(dataset_dir, labels=labels, modality=modality, limit=limit)
    modalities = sorted({r.modality for r in records})
    if len(modalities) != 1:
        raise ValueError(f"an adapter is trained on one modality; the selection has {modalities}: pass modality=")
    captions = (varied_captions(records, knowledge=knowledge, max_variants=caption_variants) if caption_variants
                else captions_for(records, knowledge=knowledge))
    caption_of = {r.path: c for r, c in zip(records, captions)}
    train_records, val_records = split_records(records, validation_fraction=validation_fraction, seed=settings.seed)
    identity = {"kind": "lora", "generator": profile.generator, "text_encoder": profile.text_encoder,
                "dataset": str(Path(dataset_dir).resolve()), "manifest_sha256": _manifest_sha256(dataset_dir),
                "n_images": len(records), "labels": sorted({r.label for r in records}), "modality": modalities[0],
                "rank": rank, "alpha": alpha, "dropout": dropout, "targets": list(target_modules),
                "resolution": profile.resolution, "max_length": profile.max_length, "seed": settings.seed,
                "class_prompt": class_prompt, "num_class_images": num_class_images,
                "train_text_encoder": train_text_encoder,
                **({"caption_variants": caption_variants} if caption_variants else {}),
                **({"balance_classes": True} if balance_classes else {})}
    fingerprint = run_fingerprint(identity)
    checkpoint = resolve_resume(settings.resume, output_dir=out)
    if checkpoint is not None:
        load_checkpoint(checkpoint, fingerprint=fingerprint)  # refuse another run's checkpoint before writing

    if accelerator is None:
        accelerator = Accelerator(mixed_precision=settings.mixed_precision,
                                  gradient_accumulation_steps=settings.gradient_accumulation_steps)
    device = str(accelerator.device)
    tokenizer, text_encoder, pipeline, _, _ = load_components(profile, device=device, dtype="float32")
    unet, vae = pipeline.unet, pipeline.vae
    vae.requires_grad_(False).eval()
    base_signature, text_signature = unet_signature(unet), encoder_signature(text_encoder)
    hidden, cross = int(text_encoder.config.hidden_size), int(unet.config.cross_attention_dim)
    projection = make_projection(in_dim=hidden, out_dim=cross, seed=settings.seed).to(device) \
        if hidden != cross else None
    out.mkdir(parents=True, exist_ok=True)

    side = profile.resolution
    log(f"encoding {len(train_records)} training + {len(val_records)} validation images at {side} px")
    mean, std = encode_latents(vae, load_images(train_records, resolution=side))
    val_mean, val_std = (encode_latents(vae, load_images(val_records, resolution=side)) if val_records
                         else (mean[:0], std[:0]))
    all_captions = [caption_of[r.path] for r in train_records + val_records]
    prior_mean = prior_std = None
    if class_prompt is not None:
        prior_images = _class_images(out / "class_images", profile=profile, tokenizer=tokenizer,
                                     text_encoder=text_encoder, pipeline=pipeline, device=device,
                                     projection=projection, prompt=class_prompt, count=num_class_images,
                                     steps=class_image_steps or profile.default_steps, log=log)
        prior_mean, prior_std = encode_latents(vae, prior_images)
        all_captions += [class_prompt]
    index, embeds, distinct = encode_captions(tokenizer=tokenizer, text_encoder=text_encoder,
                                              captions=all_captions + [""], max_length=profile.max_length)
    index = index[:-1]  # the empty prompt is encoded for caption dropout only
    n_train, n_val = len(train_records), len(val_records)
    data = TrainingData(
        latent_mean=mean, latent_std=std, caption_index=index[:n_train], caption_embeds=embeds,
        val_latent_mean=val_mean, val_latent_std=val_std, val_caption_index=index[n_train:n_train + n_val],
        scaling_factor=float(vae.config.scaling_factor),
        prior_latent_mean=prior_mean, prior_latent_std=prior_std,
        prior_caption_index=(index[-1:].repeat(prior_mean.shape[0]) if prior_mean is not None else None),
        empty_caption_row=distinct.index(""),
        sample_weights=class_balanced_weights([r.label for r in train_records]) if balance_classes else None,
    )

    lora_config = add_lora(unet, rank=rank, alpha=alpha, dropout=dropout, target_modules=target_modules,
                           seed=settings.seed)
    trainable = {name: p for name, p in unet.named_parameters() if p.requires_grad}
    if projection is not None:
        trainable.update({f"projection.{name}": p for name, p in projection.named_parameters()})
    text_lora_config = caption_encoder = None
    if train_text_encoder:
        text_lora_config = add_text_encoder_lora(text_encoder, rank=rank, alpha=alpha, dropout=dropout,
                                                 seed=settings.seed)
        trainable.update({f"text_encoder.{name}": p for name, p in text_encoder.named_parameters()
                          if p.requires_grad})
        caption_encoder = make_caption_encoder(tokenizer=tokenizer, text_encoder=text_encoder, captions=distinct,
                                               max_length=profile.max_length)
    model = make_conditioned_unet(unet, projection, caption_encoder)
    total = (sum(p.numel() for p in unet.parameters()) + (projection.weight.numel() if projection is not None else 0)
             + (sum(p.numel() for p in text_encoder.parameters()) if train_text_encoder else 0))
    n_trainable = sum(p.numel() for p in trainable.values())
    log(f"trainable parameters: {n_trainable:,} of {total:,} ({100 * n_trainable / total:.3f} %)")

    sample_prompts = typical_captions(train_records, caption_of)
    steps = sample_steps or profile.default_steps
    scale = profile.default_guidance if guidance is None else guidance

    def sample_images() -> list:
        generator = Generator(profile=profile, tokenizer=tokenizer, text_encoder=text_encoder, pipeline=pipeline,
                              device=device, dtype=torch.float32, projection=projection)
        images = []
        for prompt in sample_prompts.values():
            images += [g.image for g in generator.generate(prompt=prompt, negative_prompt="",
                                                           seeds=list(range(num_sample_seeds)), steps=steps,
                                                           guidance=scale, batch_size=num_sample_seeds)]
        return images

    metrics = run_training(settings=settings, model=model, trainable=trainable, data=data,
                           noise_scheduler=DDPMScheduler.from_config(pipeline.scheduler.config),
                           fingerprint=fingerprint, identity=identity, sample_images=sample_images,
                           sample_labels=[label for label in sample_prompts for _ in range(num_sample_seeds)],
                           accelerator=accelerator, log=log)
    final = Path(adapter_dir) if adapter_dir is not None else out / "adapter"
    if accelerator.is_main_process:
        card = {
            "base_model": profile.generator, "text_encoder": profile.text_encoder, "modality": modalities[0],
            "labels": sorted(sample_prompts), "rank": rank, "alpha": float(lora_config.lora_alpha),
            "dropout": dropout, "target_modules": list(target_modules), "steps": metrics["steps"],
            "max_length": profile.max_length, "resolution": side, "base_signature": list(base_signature),
            "text_encoder_signature": list(text_signature), "prompts": sample_prompts,
            "data": {"dataset": str(Path(dataset_dir).resolve()), "manifest_sha256": identity["manifest_sha256"],
                     "train_images": n_train, "validation_images": n_val,
                     "images_per_label": dict(Counter(r.label for r in train_records)),
                     "class_prompt": class_prompt, "class_images": num_class_images if class_prompt else 0,
                     "caption_variants": caption_variants, "balance_classes": balance_classes},
            "metrics": {"final_train_loss": metrics["final_train_loss"],
                        "final_validation_loss": metrics["final_validation_loss"], "seconds": metrics["seconds"],
                        "trainable_parameters": n_trainable, "trainable_share": n_trainable / total,
                        "ema_decay": settings.ema_decay, "snr_gamma": settings.snr_gamma,
                        "processes": metrics["processes"]},
            "train_text_encoder": train_text_encoder,
        }
        save_adapter(final, unet=accelerator.unwrap_model(model).unet, adapter_name=ADAPTER_NAME,
                     lora_config=lora_config, card=card, projection=projection,
                     text_encoder=text_encoder if train_text_encoder else None, text_encoder_lora_config=text_lora_config,
                     write_extra=lambda staging: write_shipped_indexes(  # the verifier's check where data is absent
                         train_records, dataset_dir=Path(dataset_dir), directory=staging / SHIPPED_INDEX_DIR))
        log(f"adapter saved to {final}")
    accelerator.wait_for_everyone()
    return final


def _class_images(folder: Path, *, profile, tokenizer, text_encoder, pipeline, device, projection, prompt: str,
                  count: int, steps: int, log):
    """Prior-preservation images of ``prompt`` from the frozen base model, cached as PNGs (tensor in [-1, 1])."""
    import numpy as np
    import torch
    from PIL import Image

    from clinisynth.generation.pipeline import Generator

    folder.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(f"{prompt}|{profile.generator}|{profile.resolution}|{steps}".encode()).hexdigest()[:12]
    paths = [folder / f"{key}_{i:05d}.png" for i in range(count)]
    todo = [i for i, p in enumerate(paths) if not p.is_file()]
    if todo:
        log(f"sampling {len(todo)} class images of {prompt!r} from the base model")
        generator = Generator(profile=profile, tokenizer=tokenizer, text_encoder=text_encoder, pipeline=pipeline,
                              device=device, dtype=torch.float32, projection=projection)
        for item in generator.generate(prompt=prompt, negative_prompt="", seeds=[10_000 + i for i in todo],
                                       steps=steps, guidance=profile.default_guidance):
            target = paths[item.seed - 10_000]
            encoded = io.BytesIO()
            item.image.save(encoded, format="PNG")
            write_atomically(target, encoded.getvalue())
    arrays = [np.asarray(Image.open(p).convert("RGB").resize((profile.resolution,) * 2), dtype=np.uint8)
              for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
