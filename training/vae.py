"""``train vae``: a small latent autoencoder (diffusers ``AutoencoderKL``) trained from scratch at low resolution.

The scratch generator (:mod:`clinisynth.training.scratch`) diffuses in this VAE's latent space, like Stable
Diffusion. The saved folder loads with ``AutoencoderKL.from_pretrained``; its ``scaling_factor`` is set to
1 / (standard deviation of the training latents), as SD does, so latents have unit variance.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from clinisynth.generation.files import staged_directory, write_atomically
from clinisynth.generation.plots import contact_sheet, plot_loss_curve
from clinisynth.training.checkpoints import (
    list_checkpoints,
    load_checkpoint,
    resolve_resume,
    run_fingerprint,
    save_checkpoint,
)
from clinisynth.training.data import load_images, read_manifest, split_records


#: Learning-rate schedules ``train_vae`` accepts (diffusers' ``get_scheduler`` names).
LR_SCHEDULES = ("constant", "cosine")


def small_vae_config(*, resolution: int, channels: tuple[int, ...] = (16, 32, 64), latent_channels: int = 4,
                     layers_per_block: int = 1) -> dict:
    """An ``AutoencoderKL`` config that downsamples by ``2 ** (len(channels) - 1)``."""
    if resolution % (2 ** (len(channels) - 1)):
        raise ValueError(f"resolution {resolution} is not divisible by the VAE factor {2 ** (len(channels) - 1)}")
    for name, value in (("layers_per_block", layers_per_block), ("latent_channels", latent_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int of at least 1, got {value!r}")
    return {
        "in_channels": 3, "out_channels": 3, "latent_channels": latent_channels, "layers_per_block": layers_per_block,
        "block_out_channels": list(channels), "down_block_types": ["DownEncoderBlock2D"] * len(channels),
        "up_block_types": ["UpDecoderBlock2D"] * len(channels), "norm_num_groups": 16, "sample_size": resolution,
    }


def train_vae(*, dataset_dir: Path, output_dir: Path, resolution: int = 64, max_steps: int = 1000,
              batch_size: int = 16, learning_rate: float = 5e-4, kl_weight: float = 1e-6,
              validation_fraction: float = 0.05, validation_every: int = 100, checkpoint_every: int = 200,
              seed: int = 0, resume: str | None = None, max_minutes: float | None = None,
              labels: list[str] | None = None, limit: int | None = None,
              channels: tuple[int, ...] = (16, 32, 64), layers_per_block: int = 1, latent_channels: int = 4,
              crop: int | None = None,
              lr_schedule: str = "constant", finetune_decoder_of: Path | None = None,
              log: Callable[[str], None] = print) -> Path:
    """Train a small VAE on a prepared manifest; return ``output_dir/vae`` (an ``AutoencoderKL`` folder).

    Args:
        dataset_dir: folder with ``manifest.csv`` (``clinisynth prepare``).
        output_dir: run folder (``metrics.json``, ``loss_curve.png``, ``reconstructions.png``, ``checkpoints/``,
            and the final ``vae/``, renamed into place when complete).
        resolution: image side, a multiple of 4.
        max_steps, batch_size, learning_rate: optimisation.
        kl_weight: weight of the KL term (small: the latents only need to be smooth, not N(0, 1)).
        validation_fraction: held-out share for the validation reconstruction loss.
        validation_every, checkpoint_every: in steps (0: off).
        seed: split, initialisation and sampling seed.
        resume: ``None``, ``"latest"`` or a checkpoint folder of this run.
        max_minutes: wall-clock budget; stops cleanly.
        labels, limit: subset of the manifest.
        channels: encoder block widths (multiples of 16); the VAE downsamples by ``2 ** (len(channels) - 1)``.
        layers_per_block: ResNet blocks per encoder level (the decoder has one more), as in ``AutoencoderKL``.
        latent_channels: channels of the latent (4 as in Stable Diffusion); more keep more detail through the
            round trip; only the convolutions next to the latent widen, and `train scratch` builds its U-Net for them.
        lr_schedule: ``"constant"``, or ``"cosine"``: one warm-up of 2 % of ``max_steps``, then a cosine decay to 0
            at ``max_steps`` (the last steps at a small rate settle the reconstruction a constant rate leaves noisy).
        crop: train on random ``crop`` x ``crop`` windows of the images (a multiple of the downsampling factor,
            at most ``resolution``): the VAE is convolutional, so it learns the same local statistics at a
            fraction of the cost per step; validation always reconstructs whole images. ``None``: whole images.
        finetune_decoder_of: an ``AutoencoderKL`` folder whose decoder is trained further, its encoder and
            ``scaling_factor`` frozen: the latent space stays the same, so a U-Net and adapters trained on it keep
            working and draw through the retrained decoder (Stable Diffusion's ft-MSE decoder was made this way).
            ``channels`` are then the folder's; ``resolution`` must be its ``sample_size``.
        log: progress sink.
    """
    for name, value in (("max_steps", max_steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:  # 0 steps would save an untrained VAE
            raise ValueError(f"{name} must be an int of at least 1, got {value!r}")
    if not 0 < learning_rate < 1:
        raise ValueError(f"learning_rate must be in (0, 1), got {learning_rate!r}")
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {lr_schedule!r}")
    import torch
    from diffusers import AutoencoderKL
    from diffusers.optimization import get_scheduler

    records = read_manifest(dataset_dir, labels=labels, limit=limit)  # fails before anything is written
    train_records, val_records = split_records(records, validation_fraction=validation_fraction, seed=seed)
    source = _decoder_source(finetune_decoder_of, resolution=resolution) if finetune_decoder_of is not None else None
    config = dict(source.config) if source is not None else small_vae_config(
        resolution=resolution, channels=tuple(channels), layers_per_block=layers_per_block,
        latent_channels=latent_channels)
    factor = 2 ** (len(config["block_out_channels"]) - 1)
    if crop is not None and (crop % factor or not factor <= crop <= resolution):
        raise ValueError(f"crop {crop} must be a multiple of the VAE factor {factor} between {factor} and the "
                         f"resolution {resolution}")
    identity = {"kind": "vae", "dataset": str(Path(dataset_dir).resolve()), "n_images": len(records),
                "resolution": resolution, "config": config, "seed": seed, "kl_weight": kl_weight,
                **({"crop": crop} if crop is not None else {}),
                **({"lr_schedule": lr_schedule} if lr_schedule != "constant" else {}),
                **({"finetune_decoder_of": str(Path(finetune_decoder_of).resolve())} if source is not None else {})}
    fingerprint = run_fingerprint(identity)
    out = Path(output_dir)
    checkpoint = resolve_resume(resume, output_dir=out)
    if checkpoint is not None:
        load_checkpoint(checkpoint, fingerprint=fingerprint)  # refuse another run's checkpoint before writing
    out.mkdir(parents=True, exist_ok=True)

    images = load_images(train_records, resolution=resolution)
    val_images = load_images(val_records, resolution=resolution) if val_records else images[:8]
    torch.manual_seed(seed)
    if source is not None:
        vae = source
        vae.encoder.requires_grad_(False)
        vae.quant_conv.requires_grad_(False)
    else:
        vae = AutoencoderKL(**config)
    optimizer = torch.optim.AdamW([p for p in vae.parameters() if p.requires_grad], lr=learning_rate)
    lr_scheduler = get_scheduler(lr_schedule, optimizer=optimizer, num_warmup_steps=max(1, max_steps // 50),
                                 num_training_steps=max_steps)
    step, train_loss, val_loss = 0, [], []
    if checkpoint is not None:
        step, state = load_checkpoint(checkpoint, fingerprint=fingerprint)
        vae.load_state_dict(state["trainable"])
        optimizer.load_state_dict(state["optimizer"])
        if "lr_scheduler" in state:
            lr_scheduler.load_state_dict(state["lr_scheduler"])
        train_loss, val_loss = state["train_loss"], state["validation_loss"]
        log(f"resumed from {checkpoint} at step {step}")
    generator = torch.Generator().manual_seed(seed + step)

    def validate(at: int) -> None:
        vae.eval()
        with torch.no_grad():
            posterior = vae.encode(val_images[:64]).latent_dist
            recon = vae.decode(posterior.mean).sample
            val_loss.append([at, float(torch.nn.functional.mse_loss(recon, val_images[:64]))])
            pairs = []
            for original, rebuilt in zip(val_images[:8], recon[:8]):
                pairs += [_to_pil(original), _to_pil(rebuilt)]
        contact_sheet(out / "reconstructions.png", pairs, columns=4, labels=["original", "VAE"] * 8)
        plot_loss_curve(out / "loss_curve.png", train=[tuple(x) for x in train_loss],
                        validation=[tuple(x) for x in val_loss], title=f"VAE step {at} (reconstruction MSE)")
        log(f"vae step {at}: validation reconstruction MSE {val_loss[-1][1]:.5f}")
        vae.train()

    def checkpoint_now() -> None:
        state = {"trainable": vae.state_dict(), "optimizer": optimizer.state_dict(),
                 "lr_scheduler": lr_scheduler.state_dict(), "train_loss": train_loss,
                 "validation_loss": val_loss}
        save_checkpoint(out, step=step, state=state, fingerprint=fingerprint, identity=identity)

    began = time.perf_counter()
    vae.train()
    while step < max_steps:
        if max_minutes is not None and time.perf_counter() - began > max_minutes * 60:
            log(f"stopping at step {step}: the {max_minutes} min budget is spent")
            break
        batch = images[torch.randint(0, images.shape[0], (batch_size,), generator=generator)]
        if crop is not None and crop < resolution:
            top, left = (int(x) for x in torch.randint(0, resolution - crop + 1, (2,), generator=generator))
            batch = batch[:, :, top:top + crop, left:left + crop]
        with torch.set_grad_enabled(source is None):  # a frozen encoder needs no graph
            posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = torch.nn.functional.mse_loss(recon, batch)
        if source is None:  # the KL term shapes the encoder only
            loss = loss + kl_weight * posterior.kl().mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"VAE loss became {float(loss)} at step {step}; lower the learning rate")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        train_loss.append([step, float(loss.detach())])
        if step % 10 == 0:
            log(f"vae step {step}/{max_steps} loss {float(loss.detach()):.5f}")
        if validation_every and step % validation_every == 0:
            validate(step)
        if checkpoint_every and step % checkpoint_every == 0:
            checkpoint_now()
    if checkpoint_every and not list_checkpoints(out)[-1:] == [out / "checkpoints" / f"step_{step:06d}"]:
        checkpoint_now()
    validate(step)

    # SD's convention: scale latents to unit variance (measured on the training posterior means); a fine-tuned
    # decoder keeps its encoder's factor, or the U-Net trained on those latents would see them rescaled.
    vae.eval()
    if source is None:
        with torch.no_grad():
            sample = images[: min(256, images.shape[0])]
            std = float(vae.encode(sample).latent_dist.mean.std())
        vae.register_to_config(scaling_factor=1.0 / std)
    scaling_factor = float(vae.config.scaling_factor)
    final = out / "vae"
    with staged_directory(final) as staging:
        vae.save_pretrained(str(staging), safe_serialization=True)
        metrics = {"steps": step, "final_validation_mse": val_loss[-1][1], "scaling_factor": scaling_factor,
                   "train_images": len(train_records), "validation_images": len(val_records),
                   "seconds": round(time.perf_counter() - began, 1)}
        (staging / "clinisynth_vae.json").write_text(json.dumps({**metrics, "identity": identity}, indent=2) + "\n")
    write_atomically(out / "metrics.json", json.dumps({**metrics, "train_loss": train_loss, "validation_loss": val_loss},
                                                      indent=2) + "\n")
    log(f"VAE saved to {final} (scaling_factor {scaling_factor:.4f})")
    return final


def _decoder_source(path: Path, *, resolution: int):
    """The ``AutoencoderKL`` whose decoder ``finetune_decoder_of`` names, checked against ``resolution``."""
    from diffusers import AutoencoderKL

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"--finetune-decoder {path}: not an AutoencoderKL folder (no config.json); give a "
                                "`train vae` output (RUN/vae) or a generator's vae/ folder")
    vae = AutoencoderKL.from_pretrained(str(path))
    if int(vae.config.sample_size) != resolution:
        raise ValueError(f"--finetune-decoder {path} was trained at {vae.config.sample_size} px, --resolution is "
                         f"{resolution}; use --resolution {vae.config.sample_size}")
    return vae


def reconstruct(vae, images: list, *, batch_size: int = 32) -> list:
    """``images`` (PIL, grey or RGB) through ``vae`` and back (posterior mean), as grey PIL images of the same size.

    What the generator's decoder can show at best: a classifier that cannot tell the class of a real image after
    this round trip cannot tell it in a generated one either.
    """
    import numpy as np
    import torch
    from PIL import Image

    rebuilt = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            chunk = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1
                              for image in images[start:start + batch_size]])
            pixels = torch.from_numpy(chunk).permute(0, 3, 1, 2).to(vae.device, vae.dtype)
            decoded = vae.decode(vae.encode(pixels).latent_dist.mean).sample.float().clamp(-1, 1).mean(dim=1)
            rebuilt += [Image.fromarray(((plane + 1) * 127.5).round().byte().cpu().numpy(), mode="L")
                        for plane in decoded]
    return rebuilt


def _to_pil(tensor):
    from PIL import Image

    array = ((tensor.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)
