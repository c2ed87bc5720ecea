"""Run under `ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2` by tests/test_distributed.py (not a test itself).

Each process trains the tiny U-Net's LoRA for two steps with the shared loop (gradients all-reduced over gloo),
then takes its share of a batch-generation job list. Each writes what it saw to OUT/rank<N>.json.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path


def main(cache_dir: str, out_dir: str) -> None:
    import torch
    from accelerate import Accelerator
    from accelerate.utils import gather_object
    from diffusers import DDPMScheduler

    from clinisynth.generation.pipeline import Generator, load_components
    from clinisynth.generation.profiles import resolve_profile
    from clinisynth.training.distributed import assign_jobs, generate_distributed, make_jobs
    from clinisynth.training.engine import (
        LoopSettings,
        TrainingData,
        encode_captions,
        make_conditioned_unet,
        run_training,
    )
    from clinisynth.training.lora import add_lora

    out = Path(out_dir)
    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    profile = resolve_profile("tiny", cache_dir=Path(cache_dir))  # built by the test before launch
    tokenizer, encoder, pipeline, _, _ = load_components(profile, device="cpu", dtype="float32")

    # --- distributed training step ---
    generator = torch.Generator().manual_seed(0)  # the same data on every rank; each draws other rows of it
    latents = torch.randn(8, 4, 32, 32, generator=generator)
    index, embeds, _ = encode_captions(tokenizer=tokenizer, text_encoder=encoder, max_length=16,
                                       captions=["normal chest radiograph", "right lower lobe pneumonia"] * 4)
    data = TrainingData(latent_mean=latents, latent_std=torch.full_like(latents, 0.1), caption_index=index,
                        caption_embeds=embeds, val_latent_mean=latents[:2], val_latent_std=latents[:2] * 0,
                        val_caption_index=index[:2], scaling_factor=1.0)
    unet = pipeline.unet
    add_lora(unet, rank=4)
    trainable = {name: p for name, p in unet.named_parameters() if p.requires_grad}
    before = float(sum(p.detach().double().abs().sum() for p in trainable.values()))
    settings = LoopSettings(output_dir=out / "train", max_steps=2, batch_size=2, learning_rate=1e-2,
                            validation_every=0, checkpoint_every=0, log_every=1, snr_gamma=5.0)
    if accelerator.is_main_process:
        (out / "train").mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    metrics = run_training(settings=settings, model=make_conditioned_unet(unet), trainable=trainable, data=data,
                           noise_scheduler=DDPMScheduler.from_config(pipeline.scheduler.config), fingerprint="test",
                           identity={}, accelerator=accelerator, log=lambda _: None)
    after = float(sum(p.detach().double().abs().sum() for p in trainable.values()))
    unet.unload_lora()

    # --- batch generation split ---
    jobs = make_jobs(prompt="chest radiograph", negative_prompt="", seeds=[5, 6, 7, 8, 9], label="normal")
    with accelerator.split_between_processes(list(jobs), apply_padding=True) as given:
        given_ids = [job.job_id for job in given]
    mine = [job.job_id for job in assign_jobs(jobs, accelerator=accelerator)]
    sampler = Generator(profile=profile, tokenizer=tokenizer, text_encoder=encoder, pipeline=pipeline, device="cpu",
                        dtype=torch.float32)
    images = generate_distributed(sampler, jobs, accelerator=accelerator, steps=2, guidance=2.0, batch_size=2)
    for job_id, image in images.items():  # main process only: the others got {}
        (out / "images").mkdir(exist_ok=True)
        image.save(out / "images" / f"{job_id}.png")
    everyone = gather_object([rank])
    record = {
        "rank": rank, "world": accelerator.num_processes, "ranks_seen": sorted(everyone),
        "lora_before": before, "lora_after": after, "steps": metrics["steps"],
        "train_loss": metrics["train_loss"], "given": given_ids, "mine": mine,
        "images": {job_id: hashlib.sha256(image.tobytes()).hexdigest() for job_id, image in images.items()},
    }
    (out / f"rank{rank}.json").write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
