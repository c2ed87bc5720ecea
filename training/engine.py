"""The diffusion training loop that ``train lora`` and ``train scratch`` share (accelerate; CPU, GPU, multi-node).

Noise-prediction loss on VAE latents with optional min-SNR weighting, gradient accumulation, mixed precision,
gradient checkpointing, EMA of the trainable weights, DreamBooth-style prior preservation, a held-out
validation loss with fixed noise (comparable across steps), validation images, loss-curve and contact-sheet
PNGs, and write-then-rename checkpoints that ``--resume`` continues from.

Latents and caption embeddings are computed once before the loop: the VAE and the text encoder are frozen, and
re-encoding them every step would cost more than the U-Net step on a CPU.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from clinisynth.training.checkpoints import list_checkpoints, load_checkpoint, resolve_resume, save_checkpoint
from clinisynth.generation.files import write_atomically
from clinisynth.generation.plots import contact_sheet, plot_loss_curve

MIXED_PRECISION = ("no", "fp16", "bf16")


@dataclass
class LoopSettings:
    """How long and how to train.

    Args:
        output_dir: where metrics, plots, samples and checkpoints go.
        max_steps: optimizer steps in total (a resumed run continues up to this).
        batch_size: images per process per micro-batch.
        learning_rate: AdamW learning rate.
        gradient_accumulation_steps: micro-batches per optimizer step.
        mixed_precision: ``no``, ``fp16`` (GPU) or ``bf16``.
        gradient_checkpointing: trade compute for memory in the U-Net.
        snr_gamma: min-SNR-gamma loss weighting (Hang et al. 2023); ``None`` for plain MSE.
        ema_decay: keep an exponential moving average of the trainable weights (used for samples and the saved
            model); ``None`` for no EMA.
        prior_loss_weight: weight of the class-prompt prior loss when prior preservation is on.
        validation_every: steps between validation loss + images (0: only at the end).
        checkpoint_every: steps between checkpoints (0: none).
        keep_checkpoints: how many checkpoints to keep.
        max_grad_norm: gradient clipping norm.
        seed: seeds noise, timesteps and shuffling.
        resume: ``None``, ``"latest"`` or a checkpoint folder.
        log_every: steps between log lines.
        max_minutes: stop early (cleanly: validation, checkpoint, save) after this much wall time; ``None`` for no
            limit. For short runs on shared machines.
        caption_dropout: share of training images whose caption is replaced by the empty prompt, so the model
            also learns the unconditional prediction classifier-free guidance subtracts (0.1 is usual when
            training from scratch; an adapter on a pretrained base can leave it at 0).
    """

    output_dir: Path
    max_steps: int
    batch_size: int = 8
    learning_rate: float = 1e-4
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    snr_gamma: float | None = 5.0
    ema_decay: float | None = None
    prior_loss_weight: float = 1.0
    validation_every: int = 100
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    max_grad_norm: float = 1.0
    seed: int = 0
    resume: str | None = None
    log_every: int = 10
    max_minutes: float | None = None
    caption_dropout: float = 0.0

    def check(self) -> None:
        """Raise ``ValueError`` naming the first bad setting."""
        positive = {"max_steps": self.max_steps, "batch_size": self.batch_size,
                    "gradient_accumulation_steps": self.gradient_accumulation_steps, "log_every": self.log_every}
        for name, value in positive.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int of at least 1, got {value!r}")
        for name in ("validation_every", "checkpoint_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int of at least 0, got {value!r}")
        if not (isinstance(self.learning_rate, (int, float)) and 0 < self.learning_rate < 1):
            raise ValueError(f"learning_rate must be in (0, 1), got {self.learning_rate!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        if self.mixed_precision == "fp16":
            import torch

            if not torch.cuda.is_available():  # accelerate would train in fp32 without a word
                raise ValueError("mixed_precision fp16 needs a CUDA GPU and this machine has none; use bf16 or no")
        if self.snr_gamma is not None and not self.snr_gamma > 0:
            raise ValueError(f"snr_gamma must be positive (or None for plain MSE), got {self.snr_gamma!r}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1) (or None for no EMA), got {self.ema_decay!r}")
        if self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be at least 1, got {self.keep_checkpoints}")
        if not (isinstance(self.caption_dropout, (int, float)) and 0 <= self.caption_dropout < 1):
            raise ValueError(f"caption_dropout must be in [0, 1), got {self.caption_dropout!r}")


@dataclass
class TrainingData:
    """Everything the loop reads, encoded once.

    Args:
        latent_mean, latent_std: VAE posterior per training image, ``(N, C, h, w)``; a latent is
            ``(mean + std * noise) * scaling_factor``.
        caption_index: ``(N,)`` row of ``caption_embeds`` per image.
        caption_embeds: ``(C, L, H)`` encoder output per distinct caption (from ``encode_text``).
        val_*: the same for held-out images (may be empty).
        prior_*: class images and their one caption for prior preservation (``None`` when off).
        empty_caption_row: row of the empty prompt in ``caption_embeds`` (needed when ``caption_dropout`` > 0).
        scaling_factor: the VAE's latent scaling factor.
        sample_weights: ``(N,)`` relative chance of each training image per draw (``None``: uniform), e.g. from
            :func:`class_balanced_weights` so a 500-image class is drawn as often as a 3,850-image one.
    """

    latent_mean: Any
    latent_std: Any
    caption_index: Any
    caption_embeds: Any
    val_latent_mean: Any
    val_latent_std: Any
    val_caption_index: Any
    scaling_factor: float
    prior_latent_mean: Any = None
    prior_latent_std: Any = None
    prior_caption_index: Any = None
    empty_caption_row: int | None = None
    sample_weights: Any = None


def class_balanced_weights(classes: list[str]):
    """Per-image draw weights ``1 / count(class)``: every class drawn equally often, its images uniformly.

    Args:
        classes: the class of each training image, in ``latent_mean`` order.
    """
    import torch
    from collections import Counter

    counts = Counter(classes)
    return torch.tensor([1.0 / counts[c] for c in classes], dtype=torch.float64)


class EMA:
    """Exponential moving average of named parameters (float32 shadow copies)."""

    def __init__(self, named_parameters: dict, *, decay: float) -> None:
        self.decay = decay
        self.shadow = {name: p.detach().float().clone() for name, p in named_parameters.items()}

    def decay_at(self, step: int | None) -> float:
        """The decay used after optimizer step ``step``: warmed up as ``(1 + step) / (10 + step)``, at most
        ``decay`` (as diffusers' ``EMAModel``), so early averages are not dominated by the initial weights; a
        constant ``decay`` when ``step`` is ``None``."""
        return self.decay if step is None else min(self.decay, (1 + step) / (10 + step))

    def update(self, named_parameters: dict, *, step: int | None = None) -> None:
        import torch

        decay = self.decay_at(step)
        with torch.no_grad():
            for name, p in named_parameters.items():
                self.shadow[name].mul_(decay).add_(p.detach().float(), alpha=1 - decay)

    @contextlib.contextmanager
    def applied(self, named_parameters: dict):
        """Swap the averaged weights in for the duration of the block."""
        import torch

        backup = {name: p.detach().clone() for name, p in named_parameters.items()}
        with torch.no_grad():
            for name, p in named_parameters.items():
                p.copy_(self.shadow[name].to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in named_parameters.items():
                    p.copy_(backup[name])


def make_conditioned_unet(unet, projection=None, caption_encoder=None):
    """A module wrapping the U-Net (and the optional text projection and caption encoder) so accelerate prepares
    them as one model.

    Args:
        unet: the diffusers ``UNet2DConditionModel``.
        projection: a text projection applied to the encoder output, or ``None``.
        caption_encoder: a :class:`CaptionEncoder` when the text encoder is trained; the model is then called with
            caption rows (``TrainingData.caption_index`` values) instead of cached embeddings.
    """
    import torch

    class _Conditioned(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.unet = unet
            self.projection = projection
            self.caption_encoder = caption_encoder

        def forward(self, noisy, timesteps, conditioning):
            embeds = self.caption_encoder(conditioning) if self.caption_encoder is not None else conditioning
            if self.projection is not None:
                embeds = self.projection(embeds)
            return self.unet(noisy, timesteps, encoder_hidden_states=embeds).sample

    return _Conditioned()


def make_caption_encoder(*, tokenizer, text_encoder, captions: list[str], max_length: int):
    """A module that encodes caption rows with ``encode_text`` under the caller's grad mode (for encoder training).

    Args:
        tokenizer, text_encoder: the profile's; the encoder holds the trainable LoRA.
        captions: the distinct captions (``encode_captions``' third value); row ``i`` is ``captions[i]``.
        max_length: the profile's token length.
    """
    import torch

    from clinisynth.generation.text_encoding import encode_text

    class CaptionEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.text_encoder = text_encoder

        def forward(self, rows):
            prompts = [captions[int(row)] for row in rows.tolist()]
            embeds, _ = encode_text(tokenizer=tokenizer, text_encoder=self.text_encoder, prompts=prompts,
                                    max_length=max_length, device=rows.device)
            return embeds

    return CaptionEncoder()


def _conditioning(model, caption_embeds, rows):
    """What the wrapped model is called with: caption rows when it encodes captions itself, else cached embeddings."""
    return rows if getattr(model, "caption_encoder", None) is not None else caption_embeds[rows]


def make_optimizer(parameters: list, *, learning_rate: float, device):
    """AdamW, fused into one kernel per step where torch supports it (CPU and CUDA, floating-point parameters).

    LoRA has hundreds of small tensors; the default per-tensor update loop costs more than the math.
    """
    import torch

    fused = torch.device(device).type in ("cpu", "cuda") and all(p.is_floating_point() for p in parameters)
    return torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=1e-2, fused=fused)


def min_snr_weights(alphas_cumprod, timesteps, *, gamma: float, prediction_type: str):
    """Per-sample loss weights ``min(SNR, gamma) / SNR`` (epsilon) or ``/ (SNR + 1)`` (v-prediction)."""
    alpha = alphas_cumprod[timesteps]
    snr = alpha / (1 - alpha)
    clipped = snr.clamp(max=gamma)
    return clipped / (snr + 1) if prediction_type == "v_prediction" else clipped / snr


def diffusion_loss(*, model, noise_scheduler, latents, embeds, noise, timesteps, snr_gamma):
    """Mean noise-prediction loss of ``model`` on ``latents`` (per-sample min-SNR weights when ``snr_gamma``)."""
    import torch.nn.functional as F

    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise ValueError(f"unsupported prediction_type {prediction_type!r}; use epsilon or v_prediction")
    prediction = model(noisy, timesteps, embeds)
    per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if snr_gamma is not None:
        weights = min_snr_weights(noise_scheduler.alphas_cumprod.to(latents.device), timesteps, gamma=snr_gamma,
                                  prediction_type=prediction_type)
        per_sample = per_sample * weights
    return per_sample.mean()


def _sample_latents(mean, std, index, scaling_factor, generator=None):
    import torch

    m, s = mean[index], std[index]
    return (m + s * torch.randn(m.shape, generator=generator, dtype=m.dtype).to(m.device)) * scaling_factor


def validation_loss(*, model, noise_scheduler, data: TrainingData, device, seed: int, batch_size: int) -> float | None:
    """Unweighted noise-prediction MSE on the held-out images with fixed latents, noise and timesteps."""
    import torch

    count = int(data.val_latent_mean.shape[0]) if data.val_latent_mean is not None else 0
    if count == 0:
        return None
    generator = torch.Generator().manual_seed(seed + 7919)
    total = 0.0
    with torch.no_grad():
        for start in range(0, count, batch_size):
            index = torch.arange(start, min(count, start + batch_size))
            latents = _sample_latents(data.val_latent_mean, data.val_latent_std, index, data.scaling_factor,
                                      generator).to(device)
            noise = torch.randn(latents.shape, generator=generator).to(device)
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(index),),
                                      generator=generator).to(device)
            embeds = _conditioning(model, data.caption_embeds.to(device), data.val_caption_index[index].to(device))
            loss = diffusion_loss(model=model, noise_scheduler=noise_scheduler, latents=latents, embeds=embeds,
                                  noise=noise, timesteps=timesteps, snr_gamma=None)
            total += float(loss) * len(index)
    return total / count


def run_training(*, settings: LoopSettings, model, trainable: dict, data: TrainingData, noise_scheduler,
                 fingerprint: str, identity: dict, sample_images: Callable[[], list] | None = None,
                 sample_labels: list[str] | None = None, accelerator=None, log: Callable[[str], None] = print) -> dict:
    """Train ``trainable`` parameters of ``model`` and return the metrics.

    Args:
        settings: :class:`LoopSettings`.
        model: from :func:`make_conditioned_unet`.
        trainable: ``{name: parameter}`` to optimise (LoRA weights, projection, or the whole U-Net).
        data: :class:`TrainingData`.
        noise_scheduler: a diffusers ``DDPMScheduler`` with the base model's training schedule.
        fingerprint, identity: from :func:`clinisynth.training.checkpoints.run_fingerprint`.
        sample_images: draws validation images from the current weights (called on the main process).
        sample_labels: a caption per validation image for the contact sheet.
        accelerator: an ``accelerate.Accelerator``; one is made from ``settings`` when ``None``.
        log: where progress lines go.

    Returns:
        ``{"train_loss": [[step, loss]...], "validation_loss": [[step, loss]...], "steps": n, "seconds": s, ...}``
    """
    import torch
    from accelerate import Accelerator

    settings.check()
    if settings.caption_dropout and data.empty_caption_row is None:
        raise ValueError("caption_dropout needs the empty prompt among the encoded captions (TrainingData.empty_caption_row)")
    out = Path(settings.output_dir)
    if accelerator is None:
        accelerator = Accelerator(mixed_precision=settings.mixed_precision,
                                  gradient_accumulation_steps=settings.gradient_accumulation_steps)
    if settings.gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
    torch.manual_seed(settings.seed + accelerator.process_index)
    optimizer = make_optimizer(list(trainable.values()), learning_rate=settings.learning_rate,
                               device=accelerator.device)
    ema = EMA(trainable, decay=settings.ema_decay) if settings.ema_decay else None

    train_loss: list[list[float]] = []
    val_loss: list[list[float]] = []
    step = 0
    checkpoint = resolve_resume(settings.resume, output_dir=out)
    if checkpoint is not None:
        step, state = load_checkpoint(checkpoint, fingerprint=fingerprint)
        with torch.no_grad():
            for name, p in trainable.items():
                p.copy_(state["trainable"][name])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None and state.get("ema") is not None:
            ema.shadow = state["ema"]
        train_loss, val_loss = state["train_loss"], state["validation_loss"]
        torch.set_rng_state(state["rng"])
        log(f"resumed from {checkpoint} at step {step}")
        if step >= settings.max_steps:
            log(f"checkpoint is already at step {step} >= max_steps {settings.max_steps}: nothing to train")

    model, optimizer = accelerator.prepare(model, optimizer)
    device = accelerator.device
    count = int(data.latent_mean.shape[0])
    if data.sample_weights is not None and tuple(data.sample_weights.shape) != (count,):
        raise ValueError(f"sample_weights has shape {tuple(data.sample_weights.shape)}, the training images are {count}")
    latent_mean, latent_std = data.latent_mean.to(device), data.latent_std.to(device)
    caption_embeds = data.caption_embeds.to(device)
    caption_index = data.caption_index.to(device)
    prior = data.prior_latent_mean is not None
    if prior:
        prior_mean, prior_std = data.prior_latent_mean.to(device), data.prior_latent_std.to(device)
        prior_index = data.prior_caption_index.to(device)
    timesteps_total = noise_scheduler.config.num_train_timesteps
    # Each process draws its own images (seeded per rank and resume point), so N processes see N x batch_size.
    shard = torch.Generator().manual_seed(settings.seed * 100_003 + accelerator.process_index * 1009 + step)

    def unwrapped():
        return accelerator.unwrap_model(model)

    encodes = unwrapped()  # has a caption_encoder when the text encoder is trained

    def evaluate_and_plot(at_step: int) -> None:
        if not accelerator.is_main_process:
            return
        inner = unwrapped()
        context = ema.applied(trainable) if ema is not None else contextlib.nullcontext()
        with context:
            inner.eval()
            value = validation_loss(model=inner, noise_scheduler=noise_scheduler, data=data, device=device,
                                    seed=settings.seed, batch_size=settings.batch_size)
            if value is not None:
                val_loss.append([at_step, value])
            if sample_images is not None:
                images = sample_images()
                sheet = out / "samples" / f"step_{at_step:06d}.png"
                sheet.parent.mkdir(parents=True, exist_ok=True)
                contact_sheet(sheet, images, columns=min(4, len(images)), labels=sample_labels)
                contact_sheet(out / "samples.png", images, columns=min(4, len(images)), labels=sample_labels)
            inner.train()
        plot_loss_curve(out / "loss_curve.png", train=[tuple(x) for x in train_loss],
                        validation=[tuple(x) for x in val_loss], title=f"{out.name}: step {at_step}",
                        train_label=("train, min-SNR weighted" if settings.snr_gamma else "train MSE"))
        log(f"step {at_step}: validation loss {value if value is None else round(value, 5)}")

    began = time.perf_counter()
    model.train()
    running: list[float] = []
    step_seconds: list[float] = []  # optimizer-step wall times, validation and checkpoints excluded
    step_began = time.perf_counter()
    while step < settings.max_steps:
        if settings.max_minutes is not None and _out_of_time(accelerator, began, settings.max_minutes):
            log(f"stopping at step {step}: the {settings.max_minutes} min budget is spent")
            break
        with accelerator.accumulate(model):
            if data.sample_weights is None:
                index = torch.randint(0, count, (settings.batch_size,), generator=shard)
            else:
                index = torch.multinomial(data.sample_weights, settings.batch_size, replacement=True, generator=shard)
            index = index.to(device)
            latents = _sample_latents(latent_mean, latent_std, index, data.scaling_factor)
            rows = caption_index[index]
            if settings.caption_dropout:
                dropped = torch.rand(rows.shape, generator=shard) < settings.caption_dropout
                rows = torch.where(dropped.to(device), torch.full_like(rows, data.empty_caption_row), rows)
            embeds = _conditioning(encodes, caption_embeds, rows)
            if prior:
                p_index = torch.randint(0, int(prior_mean.shape[0]), (settings.batch_size,)).to(device)
                latents = torch.cat([latents, _sample_latents(prior_mean, prior_std, p_index, data.scaling_factor)])
                embeds = torch.cat([embeds, _conditioning(encodes, caption_embeds, prior_index[p_index])])
            noise = torch.randn_like(latents)
            timesteps = torch.randint(0, timesteps_total, (latents.shape[0],), device=device)
            with accelerator.autocast():
                if prior:  # instance half and class half of one batch, weighted separately
                    half = settings.batch_size
                    loss_instance = diffusion_loss(model=model, noise_scheduler=noise_scheduler,
                                                   latents=latents[:half], embeds=embeds[:half],
                                                   noise=noise[:half], timesteps=timesteps[:half],
                                                   snr_gamma=settings.snr_gamma)
                    loss_prior = diffusion_loss(model=model, noise_scheduler=noise_scheduler,
                                                latents=latents[half:], embeds=embeds[half:],
                                                noise=noise[half:], timesteps=timesteps[half:],
                                                snr_gamma=settings.snr_gamma)
                    loss = loss_instance + settings.prior_loss_weight * loss_prior
                else:
                    loss = diffusion_loss(model=model, noise_scheduler=noise_scheduler, latents=latents,
                                          embeds=embeds, noise=noise, timesteps=timesteps,
                                          snr_gamma=settings.snr_gamma)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {float(loss)} at step {step}; lower the learning rate")
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(list(trainable.values()), settings.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        running.append(float(loss.detach()))
        if not accelerator.sync_gradients:
            continue
        if device.type == "cuda":
            torch.cuda.synchronize()
        step_seconds.append(time.perf_counter() - step_began)
        step += 1
        mean_loss = sum(running) / len(running)
        if accelerator.num_processes > 1:
            mean_loss = float(accelerator.gather(torch.tensor([mean_loss], device=device)).mean())
        running.clear()
        train_loss.append([step, mean_loss])
        if ema is not None:
            ema.update(trainable, step=step)
        if step % settings.log_every == 0 and accelerator.is_main_process:
            rate = sum(step_seconds[-settings.log_every:]) / len(step_seconds[-settings.log_every:])
            log(f"step {step}/{settings.max_steps} loss {mean_loss:.4f} ({rate:.2f} s/step)")
        if settings.validation_every and step % settings.validation_every == 0 and step < settings.max_steps:
            evaluate_and_plot(step)
        if settings.checkpoint_every and step % settings.checkpoint_every == 0:
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                state = {"trainable": {k: v.detach().cpu() for k, v in trainable.items()},
                         "optimizer": optimizer.state_dict(), "ema": ema.shadow if ema else None,
                         "train_loss": train_loss, "validation_loss": val_loss, "rng": torch.get_rng_state()}
                save_checkpoint(out, step=step, state=state, fingerprint=fingerprint, identity=identity,
                                keep=settings.keep_checkpoints)
        step_began = time.perf_counter()
    accelerator.wait_for_everyone()
    if settings.checkpoint_every and accelerator.is_main_process and not list_checkpoints(out)[-1:] == [
            out / "checkpoints" / f"step_{step:06d}"]:
        # A run stopped by its time budget can be resumed from exactly here.
        state = {"trainable": {k: v.detach().cpu() for k, v in trainable.items()},
                 "optimizer": optimizer.state_dict(), "ema": ema.shadow if ema else None,
                 "train_loss": train_loss, "validation_loss": val_loss, "rng": torch.get_rng_state()}
        save_checkpoint(out, step=step, state=state, fingerprint=fingerprint, identity=identity,
                        keep=settings.keep_checkpoints)
    evaluate_and_plot(step)
    if ema is not None:  # the saved model is the averaged one
        with torch.no_grad():
            for name, p in trainable.items():
                p.copy_(ema.shadow[name].to(p.dtype))
    metrics = {
        "steps": step,
        "seconds": round(time.perf_counter() - began, 2),
        "train_loss": train_loss,
        "validation_loss": val_loss,
        "final_train_loss": (sum(x[1] for x in train_loss[-20:]) / len(train_loss[-20:])) if train_loss else None,
        "final_validation_loss": val_loss[-1][1] if val_loss else None,
        "processes": accelerator.num_processes,
        "step_seconds": [round(x, 5) for x in step_seconds],
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()},
    }
    if accelerator.is_main_process:
        write_atomically(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


def _out_of_time(accelerator, began: float, minutes: float) -> bool:
    import torch

    # Decided on the main process and broadcast, so every process stops at the same step.
    flag = torch.tensor([1.0 if time.perf_counter() - began > minutes * 60 else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="sum") > 0)


def encode_latents(vae, images, *, batch_size: int = 32):
    """``(mean, std)`` of the VAE posterior of ``images`` (in [-1, 1]), float32 on the CPU."""
    import torch

    means, stds = [], []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            chunk = images[start:start + batch_size].to(vae.device, vae.dtype)
            dist = vae.encode(chunk).latent_dist
            means.append(dist.mean.float().cpu())
            stds.append(dist.std.float().cpu())
    return torch.cat(means), torch.cat(stds)


def encode_captions(*, tokenizer, text_encoder, captions: list[str], max_length: int, batch_size: int = 32):
    """``(index, embeds)``: distinct captions encoded once with ``encode_text``; ``index[i]`` is caption ``i``'s row."""
    import torch

    from clinisynth.generation.text_encoding import encode_text

    distinct = sorted(set(captions))
    position = {caption: i for i, caption in enumerate(distinct)}
    chunks = []
    with torch.no_grad():
        for start in range(0, len(distinct), batch_size):
            embeds, _ = encode_text(tokenizer=tokenizer, text_encoder=text_encoder,
                                    prompts=distinct[start:start + batch_size], max_length=max_length)
            chunks.append(embeds.float().cpu())
    return torch.tensor([position[c] for c in captions], dtype=torch.long), torch.cat(chunks), distinct


