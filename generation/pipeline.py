"""Load a profile's models and sample images from them, one seed per image.

The Stable Diffusion pipeline is loaded without its own text encoder: prompts are encoded by
:func:`clinisynth.generation.text_encoding.encode_text` (the function training uses too) and passed as
``prompt_embeds`` / ``negative_prompt_embeds``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from clinisynth.generation.adapters import AdapterError
from clinisynth.generation.limits import MAX_GUIDANCE, MAX_SEED, MAX_STEPS, MIN_GUIDANCE, MIN_STEPS
from clinisynth.generation.profiles import (
    ModelNotFoundError,
    ModelProfile,
    check_profile_available,
    missing_model_message,
)
from clinisynth.generation.text_encoding import encode_text


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


def load_components(profile: ModelProfile, *, device: str | None = None, dtype=None):
    """``(tokenizer, text_encoder, pipeline, device, dtype)`` of ``profile``, loaded with ``from_pretrained``.

    The pipeline is loaded without its own text encoder. Training uses this too, so it trains exactly what
    :meth:`Generator.from_profile` samples from. Errors as in :meth:`Generator.from_profile`.
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
    return tokenizer, text_encoder, pipeline, device, dtype


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

    def __init__(self, *, profile: ModelProfile, tokenizer, text_encoder, pipeline, device: str, dtype,
                 projection=None) -> None:
        hidden = int(text_encoder.config.hidden_size)
        cross = int(pipeline.unet.config.cross_attention_dim)
        if projection is None and hidden != cross:
            raise ValueError(
                f"profile {profile.name!r}: text encoder {profile.text_encoder!r} has hidden size {hidden} but the "
                f"generator's U-Net {profile.generator!r} expects cross_attention_dim {cross}; pair models of the "
                "same width, or load an adapter trained with a text projection (from_profile(..., adapters=[...]))"
            )
        if projection is not None and (projection.in_features, projection.out_features) != (hidden, cross):
            raise ValueError(f"text projection maps {projection.in_features} -> {projection.out_features}, the models "
                             f"need {hidden} -> {cross}")
        self.profile = profile
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.pipeline = pipeline
        self.device = device
        self.dtype = dtype
        self.projection = projection.to(device=device, dtype=dtype) if projection is not None else None
        self.scheduler_name: str | None = None
        self._base_scheduler_config = dict(pipeline.scheduler.config)
        self._initial_scheduler_class = type(pipeline.scheduler)
        self._adapters: dict[str, dict] = {}  # name -> {"card", "weight"}
        self._fused = False
        self._unfused_base: dict = {}
        self._signatures: tuple | None = None

    @classmethod
    def from_profile(cls, profile: ModelProfile, *, device: str | None = None, dtype=None, adapters=None,
                     scheduler: str | None = None) -> "Generator":
        """Load every model of ``profile`` with ``from_pretrained``.

        Args:
            profile: from :func:`clinisynth.generation.profiles.resolve_profile`.
            device: ``"cuda"``, ``"cpu"``, ...; CUDA when available when ``None``.
            dtype: ``torch.dtype`` or its name; float16 on CUDA and float32 on CPU when ``None``.
            adapters: adapters to load, each an :class:`~clinisynth.generation.adapters.AdapterCard`, an adapter
                directory, or a ``(card_or_dir, weight)`` pair. An adapter with a text projection lets an encoder
                of another width drive the U-Net.
            scheduler: sampler name (:data:`clinisynth.generation.schedulers.SCHEDULER_NAMES`); the checkpoint's
                own when ``None``.

        Raises:
            ModelNotFoundError: a model is missing (naming profile, model and how to supply it).
            AdapterError: an adapter does not fit (keys, base model, text encoder).
            ValueError: bad device / dtype / scheduler, or encoder and U-Net widths differ without a projection.
        """
        from clinisynth.generation.schedulers import canonical_scheduler_name

        if scheduler is not None:
            canonical_scheduler_name(scheduler)  # fail before loading anything
        entries = _adapter_entries(adapters)

        tokenizer, text_encoder, pipeline, device, dtype = load_components(profile, device=device, dtype=dtype)
        projection = None
        with_projection = [card for card, _ in entries if card.projection]
        if len(with_projection) > 1:
            raise AdapterError(f"adapters {[c.name for c in with_projection]} each carry a text projection; combine "
                               "adapters trained without one, or load them one at a time")
        if with_projection:
            from clinisynth.generation.projection import load_projection

            projection = load_projection(with_projection[0].path, in_dim=int(text_encoder.config.hidden_size),
                                         out_dim=int(pipeline.unet.config.cross_attention_dim))
        generator = cls(profile=profile, tokenizer=tokenizer, text_encoder=text_encoder, pipeline=pipeline,
                        device=device, dtype=dtype, projection=projection)
        for card, weight in entries:
            generator.load_adapter(card)
        if entries:
            generator.set_adapter_weights({card.name: weight for card, weight in entries})
        if scheduler is not None:
            generator.set_scheduler(scheduler)
        return generator

    # --- samplers and adapters ---------------------------------------------------------------------------------

    def set_scheduler(self, name: str | None) -> None:
        """Sample with scheduler ``name`` from now on (``None``: the checkpoint's own); same noise schedule."""
        from clinisynth.generation.schedulers import canonical_scheduler_name, make_scheduler

        if name is None:
            if self.scheduler_name is not None:
                self.pipeline.scheduler = self._initial_scheduler_class.from_config(self._base_scheduler_config)
                self.scheduler_name = None
            return
        canonical = canonical_scheduler_name(name)
        if canonical != self.scheduler_name:
            self.pipeline.scheduler = make_scheduler(canonical, config=self._base_scheduler_config)
            self.scheduler_name = canonical

    def load_adapter(self, adapter, *, name: str | None = None) -> str:
        """Load one LoRA adapter (a card or a directory), checked against this U-Net and encoder; return its name.

        It is active at weight 1 alongside those already loaded (:meth:`set_adapter_weights` changes that). An
        adapter that also trained the text encoder is used alone, at weight 1: the text encoder has one LoRA.
        """
        from clinisynth.generation.adapters import check_compatible, inject_adapter, inject_text_encoder_adapter

        card = _as_card(adapter)
        if self._fused:
            raise AdapterError("adapters are fused; call unfuse_adapters() before loading another")
        with_encoder = [n for n, e in self._adapters.items() if e["card"].text_encoder_lora]
        if self._adapters and (card.text_encoder_lora or with_encoder):
            raise AdapterError(f"adapter {(with_encoder or [card.name])[0]!r} trained the text encoder too, so it is "
                               f"used alone; unload {sorted(self._adapters)} first")
        if card.projection and self.projection is None:
            raise AdapterError(f"adapter {card.name!r} carries a text projection; load it with "
                               "Generator.from_profile(..., adapters=[...]) so the projection is used")
        check_compatible(card, unet=self.pipeline.unet, text_encoder=self.text_encoder,
                         max_length=self.profile.max_length)
        adapter_name = name or card.name
        if card.text_encoder_lora:  # checked and placed before the U-Net changes
            inject_text_encoder_adapter(self.text_encoder, card, adapter_name=adapter_name)
        try:
            inject_adapter(self.pipeline.unet, card, adapter_name=adapter_name)
        except AdapterError:
            if card.text_encoder_lora:
                self.text_encoder.delete_adapter(adapter_name)
            raise
        self._adapters[adapter_name] = {"card": card, "weight": 1.0}
        self.pipeline.unet.set_adapters(list(self._adapters), [e["weight"] for e in self._adapters.values()])
        return adapter_name

    def set_adapter_weights(self, weights: dict[str, float]) -> None:
        """Combine the loaded adapters with these weights (names not given are switched off, weight 0)."""
        unknown = sorted(set(weights) - set(self._adapters))
        if unknown:
            raise AdapterError(f"adapter(s) {unknown} are not loaded; loaded: {sorted(self._adapters) or 'none'}")
        for adapter_name, weight in weights.items():
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
                    or not -4 <= weight <= 4:
                raise ValueError(f"adapter weight of {adapter_name!r} must be a number from -4 to 4, got {weight!r}")
        if self._fused:
            raise AdapterError("adapters are fused; call unfuse_adapters() before changing weights")
        for adapter_name, entry in self._adapters.items():
            if entry["card"].text_encoder_lora and float(weights.get(adapter_name, 0.0)) != 1.0:
                raise AdapterError(f"adapter {adapter_name!r} trained the text encoder too; it runs at weight 1 "
                                   "(unload it to switch it off)")
        for adapter_name, entry in self._adapters.items():
            entry["weight"] = float(weights.get(adapter_name, 0.0))
        self.pipeline.unet.set_adapters(list(self._adapters), [e["weight"] for e in self._adapters.values()])

    def fuse_adapters(self) -> None:
        """Merge the active adapters (at their weights) into the U-Net weights: faster sampling, same images."""
        if not self._adapters:
            raise AdapterError("no adapter is loaded: nothing to fuse")
        if not self._fused:
            # Merging and un-merging leaves rounding error in the base weights; keep the exact ones to put back.
            self._unfused_base = {name: p.detach().clone() for name, p in self.pipeline.unet.named_parameters()
                                  if ".base_layer." in name}
            self.pipeline.unet.fuse_lora(lora_scale=1.0, adapter_names=list(self._adapters))
            self._fused = True

    def unfuse_adapters(self) -> None:
        """Undo :meth:`fuse_adapters`."""
        if self._fused:
            import torch

            unet = self.pipeline.unet
            unet.unfuse_lora()
            parameters = dict(unet.named_parameters())
            with torch.no_grad():
                for name, value in self._unfused_base.items():
                    parameters[name].copy_(value)
            self._unfused_base = {}
            self._fused = False

    def unload_adapters(self, names: list[str] | None = None) -> None:
        """Remove adapters (all when ``names`` is ``None``); with none left the U-Net is the base model again."""
        names = list(self._adapters) if names is None else list(names)
        unknown = sorted(set(names) - set(self._adapters))
        if unknown:
            raise AdapterError(f"adapter(s) {unknown} are not loaded; loaded: {sorted(self._adapters) or 'none'}")
        if not names:
            return
        self.unfuse_adapters()
        unet = self.pipeline.unet
        for adapter_name in names:
            if self._adapters.pop(adapter_name)["card"].text_encoder_lora:
                self.text_encoder.delete_adapter(adapter_name)
        if self._adapters:
            unet.delete_adapters(names)
            unet.set_adapters(list(self._adapters), [e["weight"] for e in self._adapters.values()])
        else:
            unet.unload_lora()  # the LoRA layers go; the base layers are back in place
            unet.enable_lora()

    def use_adapters(self, adapters) -> None:
        """Run with exactly these adapters from now on, swapping in place: the base models are never reloaded.

        Adapters already loaded (same name and card) stay, the others are unloaded and the missing ones loaded,
        then the weights are set; with none the U-Net is the base model again, exactly. An adapter that does not
        fit (keys, base model, text encoder) raises before the U-Net changes; the adapters this call loaded are
        unloaded again.

        Args:
            adapters: what :meth:`from_profile` accepts (cards, directories or ``(card_or_dir, weight)`` pairs).
        """
        entries = _adapter_entries(adapters)
        wanted = {card.name: (card, weight) for card, weight in entries}
        self.unfuse_adapters()
        stale = [name for name, entry in self._adapters.items()
                 if name not in wanted or not _same_card(entry["card"], wanted[name][0])]
        if stale:
            self.unload_adapters(stale)
        loaded = []
        try:
            for name, (card, _) in wanted.items():
                if name not in self._adapters:
                    self.load_adapter(card)
                    loaded.append(name)
            if wanted:
                self.set_adapter_weights({name: weight for name, (_, weight) in wanted.items()})
        except BaseException:
            if loaded:
                self.unload_adapters(loaded)
            raise

    def adapter_problem(self, adapter) -> str | None:
        """Why ``adapter`` cannot run on this generator's base models (``None`` when it can), without loading it."""
        from clinisynth.generation.adapters import compatibility_problem

        card = _as_card(adapter)
        base, encoder = self.signatures
        problem = compatibility_problem(card, base_signature=base, text_encoder_signature=encoder,
                                        max_length=self.profile.max_length)
        if problem is None and card.projection and self.projection is None:
            problem = f"adapter {card.name!r} carries a text projection, which this generator was not built with"
        return problem

    @property
    def signatures(self) -> tuple:
        """``(unet_signature, encoder_signature)`` of the base models (LoRA leaves both unchanged), computed once."""
        if self._signatures is None:
            from clinisynth.generation.adapters import encoder_signature, unet_signature

            self._signatures = (unet_signature(self.pipeline.unet), encoder_signature(self.text_encoder))
        return self._signatures

    @property
    def adapters(self) -> list[dict]:
        """Loaded adapters for metadata: ``[{"name", "weight", "card_sha256", "modality", "labels", "fused", ...}]``."""
        return [{**e["card"].describe(weight=e["weight"]), "name": n, "fused": self._fused,
                 "text_encoder_lora": e["card"].text_encoder_lora}
                for n, e in self._adapters.items()]

    @property
    def model_ids(self) -> dict[str, str]:
        """What produced the images, for metadata: ``profile``, ``text_encoder``, ``generator``."""
        return {
            "profile": self.profile.name,
            "text_encoder": self.profile.text_encoder,
            "generator": self.profile.generator,
        }

    @property
    def guidance_interval(self) -> tuple[float, float]:
        """The shares of the sampling steps that are guided (the profile's), for metadata."""
        return self.profile.guidance_interval

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
            if self.projection is not None:
                embeds = self.projection(embeds.to(self.projection.weight.dtype))
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
        scheduler: str | None = None,
        guidance_interval: tuple[float, float] | None = None,
    ) -> list[GeneratedImage]:
        """Sample one image per seed, in the order of ``seeds``.

        Each image has its own ``torch.Generator`` (on the CPU, so a seed means the same starting noise on any
        device), so image ``i`` can be sampled again alone from its seed, whatever its place in a batch.

        Args:
            prompt: non-empty prompt text.
            negative_prompt: text to steer away from under guidance; may be empty.
            seeds: one int per image, 0..2**63-1.
            steps: sampling steps, ``MIN_STEPS..MAX_STEPS`` (:mod:`clinisynth.generation.limits`).
            guidance: classifier-free guidance scale, ``MIN_GUIDANCE..MAX_GUIDANCE`` (at most 1 means no guidance).
            batch_size: images per diffusion call, at least 1.
            callback: called as ``callback(done, total)`` after each batch.
            scheduler: sampler name for this and later calls (see :meth:`set_scheduler`); unchanged when ``None``.
            guidance_interval: ``(start, end)`` shares of the steps, from the noisiest, that are guided
                (:mod:`clinisynth.generation.guidance_interval`); the profile's when ``None``.
        """
        import torch

        from clinisynth.generation.guidance_interval import FULL_INTERVAL, IntervalGuidance, check_interval

        _validate_request(prompt=prompt, negative_prompt=negative_prompt, seeds=seeds, steps=steps,
                          guidance=guidance, batch_size=batch_size)
        interval = check_interval(self.profile.guidance_interval if guidance_interval is None else guidance_interval)
        if scheduler is not None:
            self.set_scheduler(scheduler)
        embeds, _ = self.encode([prompt, negative_prompt])
        prompt_embeds, negative_embeds = embeds[0:1], embeds[1:2]
        side = self.profile.resolution
        results: list[GeneratedImage] = []
        total = len(seeds)
        for start in range(0, total, batch_size):
            batch = list(seeds[start:start + batch_size])
            generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in batch]
            began = time.perf_counter()
            conditional, unconditional = (e.expand(len(batch), -1, -1) for e in (prompt_embeds, negative_embeds))
            guidance_kwargs = {"guidance_scale": float(guidance)}
            if guidance > 1 and interval != FULL_INTERVAL:
                switch = IntervalGuidance(scale=guidance, interval=interval, prompt_embeds=conditional,
                                          negative_prompt_embeds=unconditional)
                guidance_kwargs = {"guidance_scale": switch.initial_scale(), "callback_on_step_end": switch,
                                   "callback_on_step_end_tensor_inputs": switch.tensor_inputs}
            with torch.inference_mode():
                output = self.pipeline(
                    prompt_embeds=conditional,
                    negative_prompt_embeds=unconditional,
                    num_inference_steps=steps,
                    generator=generators,
                    **guidance_kwargs,
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
    if isinstance(steps, bool) or not isinstance(steps, int) or not MIN_STEPS <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be an int from {MIN_STEPS} to {MAX_STEPS}, got {steps!r}")
    if (isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance)
            or not MIN_GUIDANCE <= guidance <= MAX_GUIDANCE):
        raise ValueError(f"guidance must be a number from {MIN_GUIDANCE:g} to {MAX_GUIDANCE:g}, got {guidance!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int of at least 1, got {batch_size!r}")


def _as_card(adapter):
    from pathlib import Path

    from clinisynth.generation.adapters import AdapterCard, read_card

    if isinstance(adapter, AdapterCard):
        return adapter
    if isinstance(adapter, (str, Path)):
        return read_card(Path(adapter))
    raise TypeError(f"an adapter is an AdapterCard or a directory, got {type(adapter).__name__}")


def _same_card(a, b) -> bool:
    return Path(a.path).resolve() == Path(b.path).resolve() and a.card_sha256 == b.card_sha256


def _adapter_entries(adapters) -> list:
    """``[(card, weight)]`` from the forms :meth:`Generator.from_profile` accepts."""
    entries = []
    for item in adapters or []:
        if isinstance(item, tuple):
            adapter, weight = item
        else:
            adapter, weight = item, 1.0
        entries.append((_as_card(adapter), float(weight)))
    names = [card.name for card, _ in entries]
    if len(set(names)) != len(names):
        raise AdapterError(f"the same adapter is listed twice: {names}")
    return entries
