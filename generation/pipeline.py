"""Load a profile's models and sample images from them, one seed per image.

The Stable Diffusion pipeline is loaded without its own text encoder: prompts are encoded by
:func:`clinisynth.generation.text_encoding.encode_text` (the function training uses too) and passed as
``prompt_embeds`` / ``negative_prompt_embeds``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

from clinisynth.generation.profiles import (
    ModelNotFoundError,
    ModelProfile,
    check_profile_available,
    missing_model_message,
)
from clinisynth.generation.text_encoding import encode_text

MAX_STEPS = 1000
MAX_GUIDANCE = 30.0
#: ``torch.Generator.manual_seed`` takes 64-bit seeds; JSON readers of the metadata are safer below 2**63.
MAX_SEED = 2**63 - 1

_DTYPES = {
    "float32": "float32", "fp32": "float32",
    "float16": "float16", "fp16": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
}


@dataclass(frozen=True)
class GeneratedImage:
    """One sampled image and everything needed to sample it again.

    Args:
        image: the ``PIL.Image.Image``.
        seed: the seed of this image's own ``torch.Generator``.
        steps: sampling steps.
        guidance: classifier-free guidance scale.
        prompt: the prompt text.
        negative_prompt: the negative prompt text.
        elapsed_s: this image's share of its batch's sampling time, in seconds.
    """

    image: Any
    seed: int
    steps: int
    guidance: float
    prompt: str
    negative_prompt: str
    elapsed_s: float


def _resolve_device_and_dtype(device: str | None, dtype: Any):
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = str(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but torch sees no CUDA device; use device='cpu'")
    if dtype is None:
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
    elif isinstance(dtype, str):
        name = _DTYPES.get(dtype.lower())
        if name is None:
            raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(set(_DTYPES.values()))}")
        dtype = getattr(torch, name)
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype!r}")
    if dtype == torch.float16 and device == "cpu":
        raise ValueError("float16 is not supported on CPU here; use dtype='float32' or 'bfloat16' on CPU")
    return device, dtype


def _load(profile: ModelProfile, role: str, location: str, loader: Callable[[], Any]):
    """Run ``loader``; turn every 'model not there' failure into a :class:`ModelNotFoundError`."""
    from pathlib import Path

    from clinisynth.generation.profiles import looks_local

    if looks_local(location) and not Path(location).expanduser().is_dir():
        raise ModelNotFoundError(missing_model_message(profile, role=role, location=location))
    try:
        return loader()
    except OSError as error:
        # Offline hub misses (LocalEntryNotFoundError is a FileNotFoundError) and folders without weights land here.
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelNotFoundError(missing_model_message(profile, role=role, location=location, detail=detail)) from error


class Generator:
    """A loaded profile: tokenizer, text encoder and Stable Diffusion pipeline on one device.

    Build it with :meth:`from_profile`. Args of the constructor are the loaded parts, for callers (training,
    benchmarks) that already hold them.

    Args:
        profile: the profile the parts came from.
        tokenizer: the text encoder's tokenizer.
        text_encoder: a BERT-family ``transformers`` model in eval mode.
        pipeline: a diffusers ``StableDiffusionPipeline`` loaded with ``text_encoder=None``.
        device: torch device string.
        dtype: the ``torch.dtype`` the models run in.
    """

    def __init__(self, *, profile: ModelProfile, tokenizer, text_encoder, pipeline, device: str, dtype) -> None:
        hidden = int(text_encoder.config.hidden_size)
        cross = int(pipeline.unet.config.cross_attention_dim)
        if hidden != cross:
            raise ValueError(
                f"profile {profile.name!r}: text encoder {profile.text_encoder!r} has hidden size {hidden} but the "
                f"generator's U-Net {profile.generator!r} expects cross_attention_dim {cross}; pair models of the "
                "same width (a projection layer is not supported yet)"
            )
        self.profile = profile
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.pipeline = pipeline
        self.device = device
        self.dtype = dtype

    @classmethod
    def from_profile(cls, profile: ModelProfile, *, device: str | None = None, dtype=None) -> "Generator":
        """Load every model of ``profile`` with ``from_pretrained``.

        Args:
            profile: from :func:`clinisynth.generation.profiles.resolve_profile`.
            device: ``"cuda"``, ``"cpu"``, ...; CUDA when available when ``None``.
            dtype: ``torch.dtype`` or its name; float16 on CUDA and float32 on CPU when ``None``.

        Raises:
            ModelNotFoundError: a model is missing (naming profile, model and how to supply it).
            ValueError: bad device / dtype, or encoder and U-Net widths differ.
        """
        from diffusers import StableDiffusionPipeline
        from transformers import AutoModel, AutoTokenizer

        device, dtype = _resolve_device_and_dtype(device, dtype)
        check_profile_available(profile)
        # Encoder first: it is small, so a missing model fails fast before the large U-Net loads.
        tokenizer = _load(
            profile,
            "text_encoder",
            profile.tokenizer_source,
            lambda: AutoTokenizer.from_pretrained(profile.tokenizer_source),
        )
        text_encoder = _load(
            profile,
            "text_encoder",
            profile.text_encoder,
            lambda: AutoModel.from_pretrained(profile.text_encoder, dtype=dtype),
        )
        pipeline = _load(
            profile,
            "generator",
            profile.generator,
            lambda: StableDiffusionPipeline.from_pretrained(
                profile.generator,
                text_encoder=None,
                tokenizer=None,
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
                dtype=dtype,
            ),
        )
        text_encoder.eval().requires_grad_(False)
        pipeline.set_progress_bar_config(disable=True)
        pipeline = pipeline.to(device)
        text_encoder = text_encoder.to(device)
        return cls(profile=profile, tokenizer=tokenizer, text_encoder=text_encoder, pipeline=pipeline, device=device,
                   dtype=dtype)

    @property
    def model_ids(self) -> dict[str, str]:
        """What produced the images, for metadata: ``profile``, ``text_encoder``, ``generator``."""
        return {
            "profile": self.profile.name,
            "text_encoder": self.profile.text_encoder,
            "generator": self.profile.generator,
        }

    @property
    def resolution(self) -> int:
        """Image side in pixels."""
        return self.profile.resolution

    def encode(self, prompts: list[str]):
        """``(embeds, attention_mask)`` for ``prompts`` with this profile's ``max_length``, in the pipeline's dtype."""
        import torch

        with torch.inference_mode():
            embeds, mask = encode_text(
                tokenizer=self.tokenizer,
                text_encoder=self.text_encoder,
                prompts=prompts,
                max_length=self.profile.max_length,
                device=self.device,
            )
        return embeds.to(dtype=self.pipeline.unet.dtype), mask

    def generate(
        self,
        *,
        prompt: str,
        negative_prompt: str,
        seeds: list[int],
        steps: int,
        guidance: float,
        batch_size: int = 4,
        callback: Callable[[int, int], None] | None = None,
    ) -> list[GeneratedImage]:
        """Sample one image per seed, in the order of ``seeds``.

        Each image has its own ``torch.Generator`` (on the CPU, so a seed means the same starting noise on any
        device), so image ``i`` can be sampled again alone from its seed, whatever its place in a batch.

        Args:
            prompt: non-empty prompt text.
            negative_prompt: text to steer away from under guidance; may be empty.
            seeds: one int per image, 0..2**63-1.
            steps: sampling steps, 1..1000.
            guidance: classifier-free guidance scale, 0..30 (at most 1 means no guidance).
            batch_size: images per diffusion call, at least 1.
            callback: called as ``callback(done, total)`` after each batch.
        """
        import torch

        _validate_request(prompt=prompt, negative_prompt=negative_prompt, seeds=seeds, steps=steps,
                          guidance=guidance, batch_size=batch_size)
        embeds, _ = self.encode([prompt, negative_prompt])
        prompt_embeds, negative_embeds = embeds[0:1], embeds[1:2]
        side = self.profile.resolution
        results: list[GeneratedImage] = []
        total = len(seeds)
        for start in range(0, total, batch_size):
            batch = list(seeds[start:start + batch_size])
            generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in batch]
            began = time.perf_counter()
            with torch.inference_mode():
                output = self.pipeline(
                    prompt_embeds=prompt_embeds.expand(len(batch), -1, -1),
                    negative_prompt_embeds=negative_embeds.expand(len(batch), -1, -1),
                    num_inference_steps=steps,
                    guidance_scale=float(guidance),
                    generator=generators,
                    height=side,
                    width=side,
                    output_type="pil",
                )
            share = (time.perf_counter() - began) / len(batch)
            for seed, image in zip(batch, output.images):
                results.append(
                    GeneratedImage(image=image, seed=seed, steps=steps, guidance=float(guidance), prompt=prompt,
                                   negative_prompt=negative_prompt, elapsed_s=share)
                )
            if callback is not None:
                callback(len(results), total)
        return results


def _validate_request(*, prompt, negative_prompt, seeds, steps, guidance, batch_size) -> None:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")
    if not isinstance(negative_prompt, str):
        raise ValueError(f"negative_prompt must be a string (may be empty), got {negative_prompt!r}")
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, (list, tuple)) or not seeds:
        raise ValueError(f"seeds must be a non-empty list of ints, got {seeds!r}")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise ValueError(f"every seed must be an int from 0 to {MAX_SEED}, got {seed!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be an int from 1 to {MAX_STEPS}, got {steps!r}")
    if (isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance)
            or not 0 <= guidance <= MAX_GUIDANCE):
        raise ValueError(f"guidance must be a number from 0 to {MAX_GUIDANCE:g}, got {guidance!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int of at least 1, got {batch_size!r}")
