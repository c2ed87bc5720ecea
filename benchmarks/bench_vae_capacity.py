"""What a wider or deeper demo VAE costs per training step and per decoded 128 px image (issue 12).

The shipped demo VAE (``16,32,64,64``, one ResNet block per level) bounds what the demo generator can draw
(BENCHMARKS.md, "VAE ceiling"); a VAE with more capacity must be trained, and its latents encoded, in a session's
CPU time. Each candidate is built by ``small_vae_config`` with random weights (cost does not depend on them) and
runs ``--steps`` AdamW steps on a batch of ``--crop`` px windows, as ``train vae --crop`` does; the median step
after the first is reported, with the ratio to the shipped configuration measured in the same run.

    python benchmarks/bench_vae_capacity.py [--steps 6] [--batch-size 16] [--crop 64]
"""

from __future__ import annotations

import argparse
import statistics
import time

from _common import machine

CANDIDATES = (((16, 32, 64, 64), 1), ((32, 64, 128, 128), 1), ((32, 64, 128, 128), 2), ((32, 64, 64, 64), 2))


def measure(*, channels: tuple[int, ...], layers_per_block: int, steps: int, batch_size: int, crop: int) -> dict:
    import torch
    from diffusers import AutoencoderKL

    from clinisynth.training.vae import small_vae_config

    torch.manual_seed(0)
    vae = AutoencoderKL(**small_vae_config(resolution=128, channels=channels, layers_per_block=layers_per_block))
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-4)
    batch = torch.randn(batch_size, 3, crop, crop)
    seconds = []
    for _ in range(steps):
        began = time.perf_counter()
        posterior = vae.encode(batch).latent_dist
        loss = torch.nn.functional.mse_loss(vae.decode(posterior.sample()).sample, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - began)
    with torch.no_grad():
        began = time.perf_counter()
        vae.decode(torch.randn(8, 4, 16, 16))
        decode = (time.perf_counter() - began) / 8
    return {"channels": ",".join(map(str, channels)), "layers_per_block": layers_per_block,
            "parameters_m": sum(p.numel() for p in vae.parameters()) / 1e6,
            "step_s": statistics.median(seconds[1:]), "decode_ms": decode * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--crop", type=int, default=64)
    args = parser.parse_args()
    rows = [measure(channels=c, layers_per_block=n, steps=args.steps, batch_size=args.batch_size, crop=args.crop)
            for c, n in CANDIDATES]
    base = rows[0]
    print(f"{machine()}; batch {args.batch_size} of {args.crop} px windows, median of {args.steps - 1} steps")
    print("| channels | layers per block | parameters | step (s) | vs shipped | decode 128 px (ms/img) | vs shipped |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['channels']} | {row['layers_per_block']} | {row['parameters_m']:.2f} M | {row['step_s']:.3f} | "
              f"{row['step_s'] / base['step_s']:.2f}x | {row['decode_ms']:.1f} | "
              f"{row['decode_ms'] / base['decode_ms']:.2f}x |")


if __name__ == "__main__":
    main()
