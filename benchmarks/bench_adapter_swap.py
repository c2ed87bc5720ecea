"""Adapter swaps in one process: the base is never reloaded and memory does not grow (issue 12).

Two LoRA adapters are built with PEFT on the tiny profile's U-Net (random non-zero weights: a swap costs the same
whatever the weights learned). Two measurements, both in one process:

- ``generator``: ``Generator.use_adapters`` alternating A, B, A + B at 0.5 each, and none, with one 64 px image
  drawn after each swap; per swap its time, and the process RSS after it.
- ``api``: ``clinisynth.generate`` requests (n=1, tiny, into one output dir) alternating the adapters as named
  adapters: the path the web app and campaigns take (plan, verifier, storage, trace included).

With ``--profile demo`` the shipped 128 px demo generator and its shipped adapters (``breast_ultrasound``,
``brain_meningioma``) are swapped instead: the generator part cycles breast, meningioma, none; the API part sends
a breast, a meningioma and a chest request in turn and lets the plan choose each adapter from the shipped
folder (the run path a web app or campaign takes, choice included).

Reports RSS at the start and end of the measured swaps and the least-squares slope over them, what a reload of
the base would cost instead, and checks that the base U-Net object never changes and that with no adapter
its output equals the base's exactly.

    python benchmarks/bench_adapter_swap.py [--profile tiny|demo] [--swaps 50] [--api-swaps 50] [--warmup 10]
        [--rank 8] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from _common import machine, percentile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REQUEST = "moderate right pleural effusion with basal atelectasis, PA chest radiograph"
#: ``--profile demo``: requests whose plans choose the shipped adapters (breast, meningioma) and none (chest).
DEMO_REQUESTS = ("benign breast mass, breast ultrasound", "meningioma, axial T1 post-contrast brain MRI",
                 "right lower lobe pneumonia, PA chest radiograph")


def rss_mib() -> float:
    """Resident set size of this process now (``/proc/self/status`` VmRSS)."""
    with open("/proc/self/status", encoding="utf-8") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def slope(values: list[float]) -> float:
    """Least-squares change per step."""
    if len(values) < 2:
        return 0.0
    xs = range(len(values))
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(values)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, values)) / sum((x - mean_x) ** 2 for x in xs)


def build_adapter(directory: Path, generator, *, seed: int, labels: list[str], rank: int) -> Path:
    import torch
    from diffusers import UNet2DConditionModel

    from clinisynth.generation import adapters
    from clinisynth.training.lora import add_lora

    unet = UNet2DConditionModel.from_pretrained(str(Path(generator.profile.generator) / "unet"))
    config = add_lora(unet, rank=rank, alpha=rank, target_modules=("to_q", "to_k", "to_v", "to_out.0"))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, parameter in unet.named_parameters():
            if "lora_" in name:
                parameter.normal_(0, 0.3)
    card = {"base_model": generator.profile.generator, "text_encoder": generator.profile.text_encoder,
            "modality": "modality.chest_xray", "labels": labels, "rank": rank, "alpha": rank, "steps": 0,
            "max_length": generator.profile.max_length, "base_signature": list(adapters.unet_signature(unet)),
            "text_encoder_signature": list(adapters.encoder_signature(generator.text_encoder)),
            "data": {"note": "random weights (bench_adapter_swap)"}, "metrics": {}}
    return adapters.save_adapter(directory, unet=unet, adapter_name="default", lora_config=config, card=card)


def unet_output(generator):
    import torch

    embeds, _ = generator.encode([REQUEST])
    torch.manual_seed(0)
    config = generator.pipeline.unet.config
    latents = torch.randn(1, config.in_channels, config.sample_size, config.sample_size)
    with torch.no_grad():
        return generator.pipeline.unet(latents, torch.tensor([500]), encoder_hidden_states=embeds).sample


def summary(rss: list[float], times: list[float], *, warmup: int) -> dict:
    measured = rss[warmup:]
    return {"swaps": len(measured), "rss_start_mib": round(measured[0], 1), "rss_end_mib": round(measured[-1], 1),
            "rss_max_mib": round(max(measured), 1), "rss_growth_mib": round(measured[-1] - measured[0], 1),
            "rss_slope_kib_per_swap": round(slope(measured) * 1024, 1),
            "swap_ms_median": round(statistics.median(times[warmup:]) * 1000, 2),
            "swap_ms_p95": round(percentile(times[warmup:], 95) * 1000, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--profile", choices=("tiny", "demo"), default="tiny",
                        help="tiny: two random adapters built here; demo: the shipped generator and adapters")
    parser.add_argument("--swaps", type=int, default=50, help="measured generator-level swaps")
    parser.add_argument("--api-swaps", type=int, default=50, help="measured clinisynth.generate requests (0: skip)")
    parser.add_argument("--warmup", type=int, default=10, help="swaps before measuring (allocator warm-up)")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import warnings

    import torch

    # PEFT warns at each second adapter that a peft_config is already there: that is what combining means.
    warnings.filterwarnings("ignore", message="Already found a `peft_config`")
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    from clinisynth import api
    from clinisynth.generation.pipeline import Generator
    from clinisynth.generation.profiles import resolve_profile
    from clinisynth.settings import Settings

    work = Path(tempfile.mkdtemp(prefix="bench-adapter-swap-"))
    cache_dir = args.cache_dir or work / "cache"
    profile = resolve_profile(args.profile, cache_dir=cache_dir)
    api.quiet_model_loading()
    started = time.perf_counter()
    generator = Generator.from_profile(profile, device="cpu")
    reload_s = time.perf_counter() - started
    if args.profile == "demo":
        from clinisynth.models import ADAPTERS_DIR

        library = ADAPTERS_DIR
        first, second = ADAPTERS_DIR / "breast_ultrasound", ADAPTERS_DIR / "brain_meningioma"
        # Adapters of two modalities do not combine; the cycle is one, the other, none.
        cycle = [[first], [second], []]
        prompts = list(DEMO_REQUESTS)
    else:
        library = work / "adapters"
        first = build_adapter(library / "chest_a", generator, seed=1, labels=["pleural_effusion"], rank=args.rank)
        second = build_adapter(library / "chest_b", generator, seed=2, labels=["pleural_effusion", "normal"],
                               rank=args.rank)
        cycle = [[first], [second], [(first, 0.5), (second, 0.5)], []]
        prompts = [REQUEST] * len(cycle)
    steps = 2 if args.profile == "tiny" else 25

    base_unet, base_parameters = id(generator.pipeline.unet), sum(p.numel() for p in generator.pipeline.unet.parameters())
    plain = unet_output(generator)
    rss, times = [], []
    for swap in range(args.warmup + args.swaps):
        started = time.perf_counter()
        generator.use_adapters(cycle[swap % len(cycle)])
        times.append(time.perf_counter() - started)
        generator.generate(prompt=prompts[swap % len(cycle)], negative_prompt="", seeds=[swap], steps=steps,
                           guidance=3.0)
        assert id(generator.pipeline.unet) == base_unet
        rss.append(rss_mib())
    generator.use_adapters([])
    exact = torch.equal(unet_output(generator), plain)
    back = sum(p.numel() for p in generator.pipeline.unet.parameters()) == base_parameters
    result = {"machine": machine(), "profile": args.profile, "rank": args.rank if args.profile == "tiny" else None,
              "reload_base_ms": round(reload_s * 1000, 1),
              "generator": {**summary(rss, times, warmup=args.warmup), "base_unet_object_unchanged": True,
                            "no_adapter_output_equals_base_exactly": exact, "parameter_count_back_to_base": back}}

    settings = Settings(cache_dir=cache_dir, profile=args.profile)
    if args.profile == "demo":
        # The control: only the chest request, for which the plan chooses no adapter; then all three in turn.
        parts = (("api_without_adapters", [prompts[2]]), ("api", prompts))
    else:
        named = [[str(first)], [str(second)], [f"{first}:0.5", f"{second}:0.5"], []]
        parts = (("api_without_adapters", [[]]), ("api", named))
    # The control first: the same requests with no adapter, so what the swaps add can be told apart.
    for part, choices in parts:
        if not args.api_swaps:
            break
        out = work / part
        rss, times, generators = [], [], set()
        for swap in range(args.warmup + args.api_swaps):
            started = time.perf_counter()
            if args.profile == "demo":  # the plan chooses the adapter from the shipped folder
                api.generate(choices[swap % len(choices)], out=out, n=1, seed=swap, settings=settings,
                             adapters_dir=library)
            else:
                api.generate(REQUEST, out=out, n=1, seed=swap, settings=settings,
                             adapters=choices[swap % len(choices)], adapters_dir=library)
            times.append(time.perf_counter() - started)
            generators.update(id(g.pipeline.unet) for key, g in api._generators.items() if key[0] == args.profile)
            rss.append(rss_mib())
        measured = summary(rss, times, warmup=args.warmup)
        measured["request_ms_median"] = measured.pop("swap_ms_median")
        measured["request_ms_p95"] = measured.pop("swap_ms_p95")
        measured["swaps" if part == "api" else "requests"] = measured.pop("swaps")
        result[part] = {**measured, "base_unets_loaded": len(generators)}

    if args.json:
        print(json.dumps(result, indent=2))
        return
    adapters_line = (f"two rank-{args.rank} adapters" if args.profile == "tiny"
                     else "the shipped breast_ultrasound and brain_meningioma adapters")
    print(f"machine: {result['machine']}; {args.profile} profile, {adapters_line}; a base reload costs "
          f"{result['reload_base_ms']} ms")
    for part in ("generator", "api_without_adapters", "api"):
        if part in result:
            print(part, json.dumps(result[part]))


if __name__ == "__main__":
    main()
