"""LoRA training step time: clinisynth's loop vs a minimal hand-written loop, same model, batch and LoRA.

Both train rank-r LoRA on the U-Net attention (to_q, to_k, to_v, to_out.0) of one profile's generator with
AdamW on the same cached latents and caption embeddings; steps alternate in blocks in one process. Also
reports the trainable parameter share and peak memory (CUDA: max allocated; CPU: peak RSS growth).

    python benchmarks/bench_lora.py [--profile tiny] [--batch 4] [--steps 10] [--rounds 3] [--rank 8]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

from _common import machine

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per timed block")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rank", type=int, default=8)
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from diffusers import DDPMScheduler

    from clinisynth.generation.pipeline import load_components
    from clinisynth.generation.profiles import resolve_profile
    from clinisynth.training.engine import (
        LoopSettings,
        TrainingData,
        encode_captions,
        make_conditioned_unet,
        run_training,
    )
    from clinisynth.training.lora import add_lora

    cache_dir = args.cache_dir or Path(tempfile.mkdtemp(prefix="bench-lora-"))
    profile = resolve_profile(args.profile, cache_dir=cache_dir)
    tokenizer, encoder, pipeline, device, _ = load_components(profile, dtype="float32")
    unet = pipeline.unet
    add_lora(unet, rank=args.rank)
    trainable = {n: p for n, p in unet.named_parameters() if p.requires_grad}
    share = sum(p.numel() for p in trainable.values()) / sum(p.numel() for p in unet.parameters())
    latent_side = profile.resolution // 2 ** (len(pipeline.vae.config.block_out_channels) - 1)
    channels = unet.config.in_channels
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(64, channels, latent_side, latent_side, generator=generator)
    index, embeds, _ = encode_captions(tokenizer=tokenizer, text_encoder=encoder, max_length=profile.max_length,
                                       captions=["normal chest radiograph", "right lower lobe pneumonia"] * 32)
    data = TrainingData(latent_mean=latents, latent_std=torch.zeros_like(latents), caption_index=index,
                        caption_embeds=embeds, val_latent_mean=latents[:0], val_latent_std=latents[:0],
                        val_caption_index=index[:0], scaling_factor=1.0)
    noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
    out = Path(tempfile.mkdtemp(prefix="bench-lora-run-"))
    accelerator = Accelerator()
    model = make_conditioned_unet(unet)

    def ours() -> float:
        settings = LoopSettings(output_dir=out, max_steps=args.steps, batch_size=args.batch, learning_rate=1e-4,
                                snr_gamma=None, validation_every=0, checkpoint_every=0, log_every=10**9)
        # A fresh AdamW per block, as in the bare loop. The loop times each optimizer step itself; the once-per-run
        # setup and the final plot / metrics file are not steps.
        metrics = run_training(settings=settings, model=model, trainable=trainable, data=data,
                               noise_scheduler=noise_scheduler, fingerprint="bench", identity={},
                               accelerator=accelerator, log=lambda _: None)
        return sum(metrics["step_seconds"]) / len(metrics["step_seconds"])

    def bare() -> float:
        optimizer = torch.optim.AdamW(list(trainable.values()), lr=1e-4, weight_decay=1e-2)
        lat, emb = latents.to(device), embeds.to(device)
        began = time.perf_counter()  # the loop only, as for ours
        for _ in range(args.steps):
            rows = torch.randint(0, lat.shape[0], (args.batch,))
            x = lat[rows]
            noise = torch.randn_like(x)
            t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (args.batch,), device=device)
            prediction = unet(noise_scheduler.add_noise(x, noise, t), t, encoder_hidden_states=emb[index[rows]]).sample
            loss = F.mse_loss(prediction.float(), noise.float())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(trainable.values()), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return (time.perf_counter() - began) / args.steps

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    bare(), ours()  # warm-up
    ours_times, bare_times = [], []
    for _ in range(args.rounds):
        bare_times.append(bare())
        ours_times.append(ours())
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    ours_s, bare_s = statistics.median(ours_times), statistics.median(bare_times)
    print(json.dumps({
        "benchmark": "LoRA training step", "profile": args.profile, "device": device, "batch": args.batch,
        "rank": args.rank, "steps_per_block": args.steps, "rounds": args.rounds,
        "clinisynth_s_per_step": round(ours_s, 4), "bare_loop_s_per_step": round(bare_s, 4),
        "ratio_bare_over_ours": round(bare_s / ours_s, 3),
        "trainable_parameters": sum(p.numel() for p in trainable.values()), "trainable_share": round(share, 5),
        "peak_memory_mib": round(peak, 1), "peak_rss_at_start_mib": round(rss_before / 1024, 1),
        "machine": machine(),
    }, indent=2))


if __name__ == "__main__":
    main()
