"""Images per second through clinisynth's Generator vs a bare diffusers pipeline of the same components.

Both sample the same prompt, seeds, steps, guidance and batch, with the same text encoder (BERT, attention mask
on, 128 tokens), VAE, U-Net and scheduler, alternating in one process so machine load hits both alike.

    python benchmarks/bench_generation.py [--profile tiny|demo] [--n 8] [--batch 4] [--steps 20] [--rounds 5]
        [--device cpu|cuda] [--dtype float32|float16] [--generator DIR] [--adapter DIR]
        [--baseline-generator DIR]

``--generator`` replaces the demo profile's generator folder; ``--adapter`` loads a LoRA adapter into the U-Net
both contenders share (so both run with it); ``--baseline-generator`` also times clinisynth on a second generator
folder in the same rounds (e.g. the 64 px v1 model against the 128 px v2).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from _common import machine

os.environ.setdefault("HF_HUB_OFFLINE", "1")
PROMPT = "PA chest radiograph, right lower lobe consolidation"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--n", type=int, default=8, help="images per round")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--generator", type=Path, default=None, help="demo generator folder to use instead")
    parser.add_argument("--adapter", type=Path, default=None, help="LoRA adapter folder to load")
    parser.add_argument("--baseline-generator", type=Path, default=None, help="also time this generator folder")
    args = parser.parse_args()

    import torch
    from diffusers import StableDiffusionPipeline

    from clinisynth.generation.guidance_interval import FULL_INTERVAL
    from clinisynth.generation.pipeline import Generator
    from clinisynth.generation.profiles import resolve_profile

    cache_dir = args.cache_dir or Path(tempfile.mkdtemp(prefix="bench-gen-"))
    overrides = {"demo_generator": str(args.generator)} if args.generator else {}
    profile = resolve_profile(args.profile, cache_dir=cache_dir, overrides=overrides)
    ours = Generator.from_profile(profile, device=args.device, dtype=args.dtype,
                                  adapters=[args.adapter] if args.adapter else None)
    baseline = None
    if args.baseline_generator:
        baseline_profile = resolve_profile("demo", cache_dir=cache_dir,
                                           overrides={"demo_generator": str(args.baseline_generator)})
        baseline = Generator.from_profile(baseline_profile, device=args.device, dtype=args.dtype)
    # The bare pipeline: the very same modules, diffusers' own prompt encoding (mask on, same token length).
    ours.text_encoder.config.use_attention_mask = True
    ours.tokenizer.model_max_length = profile.max_length
    bare = StableDiffusionPipeline(vae=ours.pipeline.vae, text_encoder=ours.text_encoder, tokenizer=ours.tokenizer,
                                   unet=ours.pipeline.unet, scheduler=ours.pipeline.scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    bare.set_progress_bar_config(disable=True)
    seeds = list(range(args.n))
    side = profile.resolution

    def run_ours() -> float:
        began = time.perf_counter()
        # Guidance at every step, as the bare pipeline does: the ratio measures clinisynth's overhead on the same
        # work (the demo generator's own interval skips guidance at the first steps; see demo_quality.py).
        ours.generate(prompt=PROMPT, negative_prompt="", seeds=seeds, steps=args.steps, guidance=3.0,
                      batch_size=args.batch, guidance_interval=FULL_INTERVAL)
        return time.perf_counter() - began

    def run_bare() -> float:
        began = time.perf_counter()
        for start in range(0, args.n, args.batch):
            batch = seeds[start:start + args.batch]
            with torch.inference_mode():
                bare(prompt=[PROMPT] * len(batch), negative_prompt=[""] * len(batch), num_inference_steps=args.steps,
                     guidance_scale=3.0, height=side, width=side, output_type="pil",
                     generator=[torch.Generator("cpu").manual_seed(s) for s in batch])
        return time.perf_counter() - began

    def run_baseline() -> float:
        began = time.perf_counter()
        baseline.generate(prompt=PROMPT, negative_prompt="", seeds=seeds, steps=args.steps, guidance=3.0,
                          batch_size=args.batch, guidance_interval=FULL_INTERVAL)
        return time.perf_counter() - began

    run_ours(), run_bare()  # warm-up
    if baseline is not None:
        run_baseline()
    ours_times, bare_times, baseline_times = [], [], []
    for _ in range(args.rounds):
        ours_times.append(run_ours())
        bare_times.append(run_bare())
        if baseline is not None:
            baseline_times.append(run_baseline())
    ours_ips = args.n / statistics.median(ours_times)
    bare_ips = args.n / statistics.median(bare_times)
    extra = {}
    if baseline is not None:
        baseline_ips = args.n / statistics.median(baseline_times)
        extra = {"baseline_generator": str(args.baseline_generator), "baseline_resolution": baseline.resolution,
                 "baseline_images_per_s": round(baseline_ips, 3),
                 "images_per_s_vs_baseline": round(ours_ips / baseline_ips, 3)}
    print(json.dumps({
        "benchmark": "generation images/s", "profile": args.profile, "device": ours.device, "dtype": str(ours.dtype),
        "resolution": side, "steps": args.steps, "batch": args.batch, "images_per_round": args.n,
        "rounds": args.rounds, "clinisynth_images_per_s": round(ours_ips, 3),
        "bare_diffusers_images_per_s": round(bare_ips, 3), "ratio": round(ours_ips / bare_ips, 3),
        "adapters": [entry["name"] for entry in ours.adapters], **extra, "machine": machine(),
    }, indent=2))


if __name__ == "__main__":
    main()
