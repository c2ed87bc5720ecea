"""``clinisynth train lora | scratch | vae``: adapters and small generators from prepared data.

The lead mounts ``app`` as ``clinisynth train``. Only typer is imported here (``--help`` stays fast); torch,
diffusers and accelerate load inside the commands. Bad input (a manifest with missing files, a checkpoint of
another run, an out-of-range option) is one ``error:`` line and exit code 2, before anything is written.
Multi-GPU / multi-node: run the same command under ``accelerate launch``.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer

from clinisynth.cli.errors import USAGE_EXIT_CODE, fail
from clinisynth.cli.options import check_at_least, check_output, check_seed, path_parser

app = typer.Typer(help="Train LoRA adapters and small from-scratch generators on prepared data.",
                  no_args_is_help=True)

DataOpt = Annotated[Path, typer.Option("--data", help="dataset folder prepared by `clinisynth prepare` (manifest.csv)",
                                       parser=path_parser("--data"))]
OutOpt = Annotated[Path, typer.Option("--output", help="run folder: metrics, loss_curve.png, samples.png, checkpoints",
                                      parser=path_parser("--output"))]
StepsOpt = Annotated[int, typer.Option("--steps", help="optimizer steps")]
ResumeOpt = Annotated[Optional[str], typer.Option("--resume", help="'latest' or a checkpoint folder of this run")]
MinutesOpt = Annotated[Optional[float], typer.Option("--max-minutes", help="stop cleanly after this wall time")]
CaptionVariantsOpt = Annotated[int, typer.Option(
    help="caption each image with one of up to N wordings of its class (technique, side, severity, location) "
         "instead of the manifest text; 0: the manifest text")]


@contextlib.contextmanager
def _train_errors() -> Iterator[None]:
    """User mistakes -> one line + exit 2; bugs keep their traceback."""
    from clinisynth.cli.errors import user_error_types
    from clinisynth.generation.adapters import AdapterError
    from clinisynth.training.checkpoints import CheckpointError
    from clinisynth.training.data import ManifestError

    try:
        yield
    except (ManifestError, CheckpointError, AdapterError, FileNotFoundError, FileExistsError, ValueError,
            *user_error_types()) as error:
        from clinisynth.agents.requests import printable

        typer.echo(f"error: {printable(error, one_line=True)}", err=True)
        sys.stderr.flush()
        raise typer.Exit(code=USAGE_EXIT_CODE) from None


def _check_run_options(*, output: Path, steps: int, batch_size: int, seed: int, learning_rate: float,
                       extra_outputs: tuple = ()) -> None:
    """The options every training command shares, checked before torch loads or a byte is written."""
    check_at_least(steps, 1, option="--steps")  # 0 would save an untrained model as if trained
    check_at_least(batch_size, 1, option="--batch-size")
    if not 0 < learning_rate < 1:
        fail(f"--lr must be between 0 and 1 (exclusive), got {learning_rate}")
    check_seed(seed)
    # --mixed-precision is checked by LoopSettings.check (fp16 without a GPU too), before anything is written.
    for path, option in ((output, "--output"), *extra_outputs):
        if path is not None:
            check_output(path, option=option)


def _labels(value: Optional[str]) -> Optional[list[str]]:
    return [x.strip() for x in value.split(",") if x.strip()] if value else None


def _channels(value: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(x) for x in value.split(","))
    except ValueError:
        raise ValueError(f"--channels must be comma-separated integers such as 32,64,64, got {value!r}") from None
    if len(widths) < 2 or any(w < 16 or w % 16 for w in widths):
        raise ValueError(f"--channels needs at least two widths, each a multiple of 16 (the group norm), got {value!r}")
    return widths


def _knowledge_if_needed(dataset: Path):
    """The knowledge base, loaded only when some manifest row has no caption text."""
    import csv

    path = dataset / "manifest.csv"
    if not path.is_file():
        return None
    with path.open(newline="", encoding="utf-8") as handle:
        if all((row.get("text") or "").strip() for row in csv.DictReader(handle)):
            return None
    from clinisynth.knowledge import load_knowledge

    return load_knowledge()


def _loop_settings(**values) -> dict:
    """The training loop's settings from the options, checked (``LoopSettings.check``) before anything loads."""
    from clinisynth.training.engine import LoopSettings

    if values.get("snr_gamma") is not None and values["snr_gamma"] <= 0:
        values["snr_gamma"] = None  # 0 switches min-SNR weighting off
    LoopSettings(output_dir=Path("."), **values).check()
    return values


@app.command("lora")
def lora(
    data: DataOpt,
    output: OutOpt,
    profile: Annotated[str, typer.Option(help="model profile whose generator is adapted: tiny, demo, full")] = "demo",
    adapter_dir: Annotated[Optional[Path], typer.Option(help="adapter folder (default OUTPUT/adapter)",
                                                        parser=path_parser("--adapter-dir"))] = None,
    labels: Annotated[Optional[str], typer.Option(help="comma-separated labels to train on (default: all)")] = None,
    modality: Annotated[Optional[str], typer.Option(help="modality id, e.g. modality.chest_xray")] = None,
    limit: Annotated[Optional[int], typer.Option(help="use at most this many manifest rows")] = None,
    rank: Annotated[int, typer.Option(help="LoRA rank")] = 8,
    alpha: Annotated[Optional[float], typer.Option(help="LoRA alpha (default: rank)")] = None,
    dropout: Annotated[float, typer.Option(help="LoRA dropout")] = 0.0,
    target_modules: Annotated[str, typer.Option(
        help="comma-separated U-Net modules the LoRA goes into: attention to_q,to_k,to_v,to_out.0 and the ResNet "
             "blocks' conv1,conv2 (a modality the base never saw needs the convolutions)")] = "to_q,to_k,to_v,to_out.0",
    steps: StepsOpt = 500,
    batch_size: Annotated[int, typer.Option(help="images per process per micro-batch")] = 4,
    learning_rate: Annotated[float, typer.Option("--lr", help="AdamW learning rate")] = 1e-4,
    gradient_accumulation: Annotated[int, typer.Option(help="micro-batches per optimizer step")] = 1,
    mixed_precision: Annotated[str, typer.Option(help="no, fp16 (GPU) or bf16")] = "no",
    gradient_checkpointing: Annotated[bool, typer.Option(help="save memory in the U-Net")] = False,
    snr_gamma: Annotated[float, typer.Option(help="min-SNR-gamma weighting; 0 for plain MSE")] = 5.0,
    ema_decay: Annotated[Optional[float], typer.Option(help="EMA of the LoRA weights, e.g. 0.999")] = None,
    caption_dropout: Annotated[float, typer.Option(
        help="share of captions replaced by the empty prompt (trains the unconditional branch of guidance)")] = 0.0,
    class_prompt: Annotated[Optional[str], typer.Option(help="prior preservation: class prompt")] = None,
    num_class_images: Annotated[int, typer.Option(help="prior preservation: class images from the base")] = 0,
    prior_loss_weight: Annotated[float, typer.Option(help="weight of the prior loss")] = 1.0,
    train_text_encoder: Annotated[bool, typer.Option(
        help="also train a LoRA on the text encoder's self-attention (query, key, value)")] = False,
    caption_variants: CaptionVariantsOpt = 0,
    balance_classes: Annotated[bool, typer.Option(
        help="draw every label equally often, not every image (a small class is otherwise rarely seen)")] = False,
    validation_every: Annotated[int, typer.Option(help="steps between validation loss + images")] = 100,
    checkpoint_every: Annotated[int, typer.Option(help="steps between checkpoints (0: none)")] = 100,
    resume: ResumeOpt = None,
    max_minutes: MinutesOpt = None,
    seed: Annotated[int, typer.Option(help="seed")] = 0,
) -> None:
    """LoRA on the U-Net attention (to_q, to_k, to_v, to_out.0; --target-modules adds the ResNet convolutions) of a
    profile's generator; text encoder frozen unless --train-text-encoder."""
    _check_run_options(output=output, steps=steps, batch_size=batch_size, seed=seed, learning_rate=learning_rate,
                       extra_outputs=((adapter_dir, "--adapter-dir"),))
    with _train_errors():
        from clinisynth.generation.profiles import resolve_profile
        from clinisynth.knowledge import load_knowledge
        from clinisynth.settings import Settings
        from clinisynth.training.lora import train_lora

        overrides = _loop_settings(  # checked before the profile loads
            max_steps=steps, batch_size=batch_size, learning_rate=learning_rate,
            gradient_accumulation_steps=gradient_accumulation, mixed_precision=mixed_precision,
            gradient_checkpointing=gradient_checkpointing, snr_gamma=snr_gamma, ema_decay=ema_decay,
            caption_dropout=caption_dropout,
            prior_loss_weight=prior_loss_weight, validation_every=validation_every,
            checkpoint_every=checkpoint_every, resume=resume, max_minutes=max_minutes, seed=seed)
        settings = Settings()
        resolved = resolve_profile(profile, cache_dir=settings.cache_dir, overrides=settings.profile_overrides())
        path = train_lora(
            profile=resolved, dataset_dir=data, output_dir=output, adapter_dir=adapter_dir, labels=_labels(labels),
            modality=modality, limit=limit, rank=rank, alpha=alpha, dropout=dropout,
            target_modules=tuple(_labels(target_modules) or ()),
            settings_overrides=overrides,
            class_prompt=class_prompt, num_class_images=num_class_images, train_text_encoder=train_text_encoder,
            knowledge=load_knowledge() if caption_variants else _knowledge_if_needed(data),
            caption_variants=caption_variants, balance_classes=balance_classes, log=typer.echo)
    typer.echo(str(path))


@app.command("scratch")
def scratch(
    data: DataOpt,
    output: OutOpt,
    vae: Annotated[Path, typer.Option(help="VAE folder from `clinisynth train vae` (OUTPUT/vae)",
                                      parser=path_parser("--vae"))],
    text_encoder: Annotated[Optional[str], typer.Option(help="BERT dir / hub id (default: packaged MiniLM)")] = None,
    pipeline_dir: Annotated[Optional[Path], typer.Option(
        help="where the pipeline goes (default: <cache_dir>/models/demo-generator, the demo profile's)",
        parser=path_parser("--pipeline-dir"))] = None,
    labels: Annotated[Optional[str], typer.Option(help="comma-separated labels (default: all)")] = None,
    limit: Annotated[Optional[int], typer.Option(help="use at most this many manifest rows")] = None,
    steps: StepsOpt = 2000,
    batch_size: Annotated[int, typer.Option(help="images per process per micro-batch")] = 16,
    learning_rate: Annotated[float, typer.Option("--lr", help="AdamW learning rate")] = 5e-4,
    mixed_precision: Annotated[str, typer.Option(help="no, fp16 (GPU) or bf16")] = "no",
    snr_gamma: Annotated[float, typer.Option(help="min-SNR-gamma weighting; 0 for plain MSE")] = 5.0,
    ema_decay: Annotated[Optional[float], typer.Option(help="EMA of the U-Net weights, e.g. 0.99")] = 0.99,
    caption_dropout: Annotated[float, typer.Option(
        help="share of captions replaced by the empty prompt (trains the unconditional branch of guidance)")] = 0.1,
    max_length: Annotated[int, typer.Option(help="caption token length (kept for inference)")] = 64,
    channels: Annotated[str, typer.Option(help="U-Net block widths, comma-separated (multiples of 16)")] = "32,64,64",
    caption_variants: CaptionVariantsOpt = 0,
    balance_classes: Annotated[bool, typer.Option(
        help="draw every (modality, label) class equally often, not every image")] = False,
    validation_every: Annotated[int, typer.Option(help="steps between validation loss + images")] = 200,
    checkpoint_every: Annotated[int, typer.Option(help="steps between checkpoints (0: none)")] = 200,
    data_attribution: Annotated[str, typer.Option(help="dataset licence / citation for the model card")] = "",
    guidance: Annotated[float, typer.Option(
        help="classifier-free guidance of the validation samples, and the generator's default at inference")] = 3.0,
    guidance_interval: Annotated[str, typer.Option(
        help="START,END: shares of the sampling steps, from the noisiest, that are guided (validation samples, "
        "and the generator's default at inference); 0,1 guides every step")] = "0,1",
    init_unet: Annotated[Optional[Path], typer.Option(
        help="start the U-Net from this generator folder's weights (same --channels / --vae), not random ones",
        parser=path_parser("--init-unet"))] = None,
    zero_terminal_snr: Annotated[bool, typer.Option(
        help="zero terminal SNR noise schedule with v-prediction (the model sets overall brightness and contrast)",
    )] = False,
    resume: ResumeOpt = None,
    max_minutes: MinutesOpt = None,
    seed: Annotated[int, typer.Option(help="seed")] = 0,
) -> None:
    """A small text-conditioned U-Net from scratch in a small VAE's latent space, saved as an SD pipeline."""
    _check_run_options(output=output, steps=steps, batch_size=batch_size, seed=seed, learning_rate=learning_rate,
                       extra_outputs=((pipeline_dir, "--pipeline-dir"),))
    with _train_errors():
        from clinisynth.generation.guidance_interval import parse_interval
        from clinisynth.generation.profiles import packaged_minilm_dir
        from clinisynth.knowledge import load_knowledge
        from clinisynth.settings import Settings
        from clinisynth.training.scratch import train_scratch

        overrides = _loop_settings(
            max_steps=steps, batch_size=batch_size, learning_rate=learning_rate, mixed_precision=mixed_precision,
            snr_gamma=snr_gamma, ema_decay=ema_decay, caption_dropout=caption_dropout,
            validation_every=validation_every,
            checkpoint_every=checkpoint_every, resume=resume, max_minutes=max_minutes, seed=seed)
        settings = Settings()
        path = train_scratch(
            dataset_dir=data, output_dir=output, vae_dir=vae,
            text_encoder=text_encoder or str(packaged_minilm_dir()),
            pipeline_dir=pipeline_dir or settings.cache_dir / "models" / "demo-generator",
            labels=_labels(labels), limit=limit, max_length=max_length, channels=_channels(channels),
            caption_variants=caption_variants, balance_classes=balance_classes,
            knowledge=load_knowledge() if caption_variants else _knowledge_if_needed(data),
            data_attribution=data_attribution, init_unet=init_unet, guidance=guidance,
            guidance_interval=parse_interval(guidance_interval, what="--guidance-interval"),
            zero_terminal_snr=zero_terminal_snr, settings_overrides=overrides,
            log=typer.echo)
    typer.echo(str(path))


@app.command("vae")
def vae(
    data: DataOpt,
    output: OutOpt,
    resolution: Annotated[int, typer.Option(help="image side in pixels (multiple of 4)")] = 32,
    steps: StepsOpt = 1000,
    batch_size: Annotated[int, typer.Option(help="images per step")] = 16,
    learning_rate: Annotated[float, typer.Option("--lr", help="AdamW learning rate")] = 1e-3,
    labels: Annotated[Optional[str], typer.Option(help="comma-separated labels (default: all)")] = None,
    limit: Annotated[Optional[int], typer.Option(help="use at most this many manifest rows")] = None,
    channels: Annotated[str, typer.Option(
        help="encoder block widths, comma-separated (multiples of 16); downsampling 2^(blocks-1): 16,32,64 is 4x, "
             "16,32,64,64 is 8x")] = "16,32,64",
    layers_per_block: Annotated[int, typer.Option(
        help="ResNet blocks per VAE level (more capacity, slower steps)")] = 1,
    latent_channels: Annotated[int, typer.Option(
        help="latent channels (more keep more detail through the VAE; `train scratch` follows them)")] = 4,
    lr_schedule: Annotated[str, typer.Option(
        help="constant, or cosine (2 % warm-up, then a decay to 0 at --steps)")] = "constant",
    crop: Annotated[Optional[int], typer.Option(
        help="train on random CROP x CROP windows (cheaper steps; validation uses whole images)")] = None,
    finetune_decoder: Annotated[Optional[Path], typer.Option(
        help="train this VAE folder's decoder further, its encoder and latent scale frozen (a generator trained "
             "on its latents keeps working, through the retrained decoder)",
        parser=path_parser("--finetune-decoder"))] = None,
    validation_every: Annotated[int, typer.Option(help="steps between validation")] = 100,
    checkpoint_every: Annotated[int, typer.Option(help="steps between checkpoints (0: none)")] = 200,
    resume: ResumeOpt = None,
    max_minutes: MinutesOpt = None,
    seed: Annotated[int, typer.Option(help="seed")] = 0,
) -> None:
    """A small latent VAE (AutoencoderKL; 4x downsampling by default, 8x with four --channels) for `train scratch`."""
    _check_run_options(output=output, steps=steps, batch_size=batch_size, seed=seed, learning_rate=learning_rate)
    with _train_errors():
        from clinisynth.training.vae import train_vae

        path = train_vae(dataset_dir=data, output_dir=output, resolution=resolution, max_steps=steps,
                         batch_size=batch_size, learning_rate=learning_rate, labels=_labels(labels), limit=limit,
                         validation_every=validation_every, checkpoint_every=checkpoint_every, resume=resume,
                         max_minutes=max_minutes, seed=seed, channels=_channels(channels),
                         layers_per_block=layers_per_block, latent_channels=latent_channels,
                         lr_schedule=lr_schedule, crop=crop,
                         finetune_decoder_of=finetune_decoder, log=typer.echo)
    typer.echo(str(path))
