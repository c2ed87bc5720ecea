"""LoRA adapter registry: list, choose, load (checked), combine with weights, fuse, unload.

An adapter is a directory (DESIGN.md)::

    adapter_model.safetensors     PEFT weights (keys ``base_model.model.<module>.lora_A.weight``)
    adapter_config.json           PEFT ``LoraConfig`` (rank, alpha, target modules)
    pytorch_lora_weights.safetensors   the same weights in diffusers' format (keys ``unet.<module>...``)
    clinisynth_adapter.json       the card as data: base model, text encoder, modality, labels, rank, steps, data,
                                  metrics, and signatures of the base U-Net and encoder it was trained on
    README.md                     the card for people
    text_projection.*             only when the encoder width differs from the U-Net's cross-attention width
    text_encoder/adapter_model.safetensors, text_encoder/adapter_config.json
                                  only when the text encoder was trained too (``train lora --train-text-encoder``):
                                  a PEFT LoRA on its attention (``query``, ``key``, ``value``)

Loading checks every key and shape against the U-Net before anything changes (diffusers' own loaders
silently load nothing from keys with the wrong prefix, see PITFALLS.md), and refuses an adapter whose
recorded base model or text encoder signature differs from the loaded ones.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clinisynth.generation.files import staged_directory

PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
DIFFUSERS_WEIGHTS = "pytorch_lora_weights.safetensors"
CARD_DATA = "clinisynth_adapter.json"
CARD_TEXT = "README.md"
REQUIRED_FILES = (PEFT_WEIGHTS, PEFT_CONFIG, DIFFUSERS_WEIGHTS, CARD_DATA)
PEFT_PREFIX = "base_model.model."
DIFFUSERS_PREFIX = "unet."
#: U-Net attention projections LoRA is injected into.
DEFAULT_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
#: The ResNet blocks' two 3x3 convolutions: LoRA there changes texture at every resolution, which attention alone
#: (only at the smallest resolution in the demo U-Net) cannot; needed to add a modality the base never saw.
RESNET_TARGET_MODULES = ("conv1", "conv2")
#: Every U-Net module name an adapter may target.
LORA_TARGET_MODULES = DEFAULT_TARGET_MODULES + RESNET_TARGET_MODULES
#: BERT-family self-attention projections of the optional text-encoder LoRA, and where it is saved.
TEXT_ENCODER_TARGET_MODULES = ("query", "key", "value")
TEXT_ENCODER_DIR = "text_encoder"
#: Relative tolerance of signature comparison: survives fp16 / bf16 loading, not a different model.
SIGNATURE_RTOL = 2e-2


class AdapterError(ValueError):
    """An adapter cannot be listed, chosen or loaded (message names the adapter and the fix)."""


@dataclass(frozen=True)
class AdapterCard:
    """What an adapter is for, read from ``clinisynth_adapter.json``.

    Args:
        name: the folder name (how it is chosen by name).
        path: the adapter folder.
        base_model: where the base generator came from (hub id or dir), for people.
        text_encoder: where the text encoder came from, for people.
        modality: modality id the adapter was trained on (``modality.chest_xray``).
        labels: class labels it was trained on.
        rank, alpha: LoRA rank and alpha.
        steps: optimizer steps trained.
        base_signature, text_encoder_signature: numbers that identify the weights it was trained on.
        max_length: token length used at training.
        projection: carries a text projection.
        text_encoder_lora: carries a LoRA of the text encoder (``text_encoder/``).
        prompts: a typical training caption per label.
        data, metrics: free-form provenance.
        card_sha256: SHA-256 of the card file as read: names this exact adapter in metadata and traces.
    """

    name: str
    path: Path
    base_model: str
    text_encoder: str
    modality: str
    labels: tuple[str, ...]
    rank: int
    alpha: float
    steps: int
    base_signature: tuple[float, ...]
    text_encoder_signature: tuple[float, ...]
    max_length: int = 128
    projection: bool = False
    text_encoder_lora: bool = False
    prompts: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    card_sha256: str = ""

    def describe(self, *, weight: float) -> dict[str, Any]:
        """What metadata and traces record of this adapter at ``weight``."""
        return {"name": self.name, "weight": float(weight), "card_sha256": self.card_sha256,
                "modality": self.modality, "labels": list(self.labels)}


# --- signatures ----------------------------------------------------------------------------------------------


def unet_signature(unet) -> tuple[float, ...]:
    """Per-channel means and stds of the U-Net's first convolution plus its widths: identifies the base weights.

    No adapter targets ``conv_in`` (attention and ResNet ``conv1`` / ``conv2`` only), so the signature is the same
    before and after loading or fusing adapters.
    """
    weight = unet.conv_in.weight.detach().float().cpu().flatten(1)[:16]
    config = unet.config
    return tuple([float(config.cross_attention_dim), float(config.in_channels), float(sum(config.block_out_channels))]
                 + [round(float(v), 6) for v in weight.mean(1)] + [round(float(v), 6) for v in weight.std(1)])


def encoder_signature(text_encoder) -> tuple[float, ...]:
    """Widths plus the means and stds of the first word-embedding rows: identifies the text encoder's weights."""
    rows = text_encoder.get_input_embeddings().weight.detach().float().cpu()[1000:1016]
    config = text_encoder.config
    return tuple([float(config.hidden_size), float(config.vocab_size)]
                 + [round(float(v), 6) for v in rows.mean(1)] + [round(float(v), 6) for v in rows.std(1)])


def signatures_match(a, b) -> bool:
    """Same widths exactly, same statistics within :data:`SIGNATURE_RTOL`."""
    import math

    if len(a) != len(b):
        return False
    return all(math.isclose(x, y, rel_tol=SIGNATURE_RTOL, abs_tol=1e-4) for x, y in zip(a, b))


# --- the registry ---------------------------------------------------------------------------------------------


def read_card(directory: Path) -> AdapterCard:
    """The card of the adapter in ``directory``.

    Raises:
        AdapterError: a required file is missing or the card is malformed.
    """
    directory = Path(directory)
    missing = [name for name in REQUIRED_FILES if not (directory / name).is_file()]
    if missing:
        raise AdapterError(f"adapter {directory} lacks {', '.join(missing)}; an adapter folder needs "
                           f"{', '.join(REQUIRED_FILES)} (as `clinisynth train lora` writes)")
    try:
        card_bytes = (directory / CARD_DATA).read_bytes()
        raw = json.loads(card_bytes)
        card = AdapterCard(
            name=directory.name, path=directory, base_model=str(raw["base_model"]),
            text_encoder=str(raw["text_encoder"]), modality=str(raw["modality"]),
            labels=tuple(str(x) for x in raw["labels"]), rank=int(raw["rank"]), alpha=float(raw["alpha"]),
            steps=int(raw["steps"]), base_signature=tuple(float(x) for x in raw["base_signature"]),
            text_encoder_signature=tuple(float(x) for x in raw["text_encoder_signature"]),
            max_length=int(raw.get("max_length", 128)), projection=bool(raw.get("projection", False)),
            text_encoder_lora=bool(raw.get("text_encoder_lora", False)),
            prompts=dict(raw.get("prompts", {})), data=dict(raw.get("data", {})),
            metrics=dict(raw.get("metrics", {})), card_sha256=hashlib.sha256(card_bytes).hexdigest(),
        )
    except (ValueError, KeyError, TypeError) as error:
        raise AdapterError(f"adapter card {directory / CARD_DATA} is malformed ({type(error).__name__}: {error})") \
            from error
    if card.text_encoder_lora:
        missing = [name for name in (PEFT_WEIGHTS, PEFT_CONFIG) if not (directory / TEXT_ENCODER_DIR / name).is_file()]
        if missing:
            raise AdapterError(f"adapter {directory} says it trained the text encoder but lacks "
                               f"{', '.join(TEXT_ENCODER_DIR + '/' + m for m in missing)}; retrain or restore it")
    return card


def _modality_id(modality) -> str | None:
    if modality is None:
        return None
    if isinstance(modality, dict):
        return modality.get("id")
    return getattr(modality, "id", modality)


class AdapterRegistry:
    """The adapters in one directory (each sub-folder with a card is an adapter).

    Args:
        directory: folder of adapter folders; it must exist.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise AdapterError(f"adapter directory {self.directory} does not exist; train one with "
                               "`clinisynth train lora --output DIR/<name>` or point the setting at the right folder")

    def cards(self) -> list[AdapterCard]:
        """Every adapter, sorted by name. A folder with some adapter files but not all is an error, not skipped."""
        cards = []
        for child in sorted(self.directory.iterdir()):
            if not child.is_dir() or child.name.startswith("."):
                continue
            if any((child / name).exists() for name in REQUIRED_FILES):
                cards.append(read_card(child))
        return cards

    def get(self, name: str) -> AdapterCard:
        """The adapter called ``name``; the error lists the known names."""
        for card in self.cards():
            if card.name == name:
                return card
        known = ", ".join(c.name for c in self.cards()) or "none"
        raise AdapterError(f"no adapter named {name!r} in {self.directory}; adapters there: {known}")

    def select(self, *, name: str, label: str | None = None) -> AdapterCard:
        """The adapter ``name``, checked to know ``label`` when one is given."""
        card = self.get(name)
        if label is not None and label not in card.labels:
            raise AdapterError(f"adapter {name!r} was not trained on label {label!r}; it knows "
                               f"{', '.join(card.labels)}")
        return card

    def choose(self, *, modality, label: str | None, usable=None) -> AdapterCard | None:
        """The adapter for ``modality`` (an id or ``{id, term}``) and ``label``, or ``None`` when the modality has none.

        Among adapters of the modality that know the label, the one trained on the fewest labels (most specific)
        wins, ties by name.

        Args:
            usable: ``card -> bool``; adapters it refuses (trained on another base model, say) are not considered.

        Raises:
            AdapterError: the modality has adapters but none knows ``label`` (the message lists their labels).
        """
        modality_id = _modality_id(modality)
        if modality_id is None:
            return None
        of_modality = [c for c in self.cards() if c.modality == modality_id and (usable is None or usable(c))]
        if not of_modality:
            return None
        if label is None:
            return min(of_modality, key=lambda c: (-len(c.labels), c.name))  # the broadest one
        fitting = [c for c in of_modality if label in c.labels]
        if not fitting:
            known = sorted({x for c in of_modality for x in c.labels})
            raise AdapterError(f"no adapter for {modality_id} knows label {label!r}; labels covered there: "
                               f"{', '.join(known)}")
        return min(fitting, key=lambda c: (len(c.labels), c.name))

    def for_plan(self, plan, *, usable=None) -> AdapterCard | None:
        """:meth:`choose` with the plan's ``modality`` and ``label`` (a dict or an object with those fields)."""
        get = plan.get if isinstance(plan, dict) else (lambda key: getattr(plan, key, None))
        return self.choose(modality=get("modality"), label=get("label"), usable=usable)


# --- what a run asks for, checked before any model loads ------------------------------------------------------

#: Adapter weights a run accepts (the generator's own bound).
MIN_WEIGHT, MAX_WEIGHT = -4.0, 4.0


def parse_adapter_spec(spec: str) -> tuple[str, float]:
    """``PATH_OR_NAME[:WEIGHT]`` -> ``(path_or_name, weight)``; weight 1 when none is given.

    Raises:
        AdapterError: empty, or a weight that is not a number from -4 to 4.
    """
    text = str(spec).strip()
    reference, weight = text, 1.0
    head, colon, tail = text.rpartition(":")
    if colon and not Path(text).exists():
        try:
            weight = float(tail)
        except ValueError:
            raise AdapterError(f"--adapter {text!r}: the weight after ':' must be a number, got {tail!r} "
                               "(write NAME_OR_PATH[:WEIGHT], e.g. chest_pneumonia:0.8)") from None
        reference = head.strip()
    if not reference:
        raise AdapterError(f"--adapter {text!r} names no adapter; write NAME_OR_PATH[:WEIGHT]")
    if not math.isfinite(weight) or not MIN_WEIGHT <= weight <= MAX_WEIGHT:
        raise AdapterError(f"--adapter {text!r}: the weight must be from {MIN_WEIGHT:g} to {MAX_WEIGHT:g}, got {weight:g}")
    return reference, weight


def looks_like_path(reference: str) -> bool:
    """A reference with a path separator, or one that exists on disk, is a folder; else an adapter name."""
    return "/" in reference or "\\" in reference or reference.startswith((".", "~")) or Path(reference).exists()


def check_combinable(cards: list[AdapterCard]) -> None:
    """Refuse adapters that cannot run together, from their cards alone (before any model loads).

    Raises:
        AdapterError: the same adapter twice; more than one text projection; an adapter that trained the text
            encoder beside another; adapters trained on different base models, text encoders or token lengths.
    """
    names = [card.name for card in cards]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise AdapterError(f"adapter {twice[0]!r} is named twice; name each adapter once")
    if len(cards) < 2:
        return
    with_projection = [card.name for card in cards if card.projection]
    if len(with_projection) > 1:
        raise AdapterError(f"adapters {with_projection[0]!r} and {with_projection[1]!r} each carry a text projection, "
                           "so they cannot combine; use one of them")
    with_encoder = [card.name for card in cards if card.text_encoder_lora]
    if with_encoder:
        other = next(card.name for card in cards if card.name != with_encoder[0])
        raise AdapterError(f"adapter {with_encoder[0]!r} trained the text encoder too, so it runs alone and cannot "
                           f"combine with {other!r}; use it alone")
    first = cards[0]
    for card in cards[1:]:
        for what, mine, theirs in (("base model", first.base_signature, card.base_signature),
                                   ("text encoder", first.text_encoder_signature, card.text_encoder_signature)):
            if not signatures_match(mine, theirs):
                raise AdapterError(f"adapters {first.name!r} and {card.name!r} were trained on different {what}s, so "
                                   "they cannot combine; use adapters trained on the same one")
        if card.max_length != first.max_length:
            raise AdapterError(f"adapters {first.name!r} and {card.name!r} encode prompts with different token lengths "
                               f"({first.max_length} and {card.max_length}), so they cannot combine")


def check_fits_plan(card: AdapterCard, *, modality: str | None, label: str | None) -> None:
    """Refuse a named adapter that was not trained on the plan's modality and label.

    Raises:
        AdapterError: naming what the adapter was trained on.
    """
    if modality is not None and card.modality != modality:
        raise AdapterError(f"adapter {card.name!r} was trained on {card.modality}, not {modality}; name an adapter of "
                           "that modality or leave --adapter out")
    if label is not None and label not in card.labels:
        raise AdapterError(f"adapter {card.name!r} was not trained on label {label!r}; it knows "
                           f"{', '.join(card.labels)}")


@dataclass
class AdapterChoice:
    """The adapters one run uses and why: what the trace records and the generator is set to.

    Args:
        mode: ``named`` (the user named them), ``by plan`` (chosen from the adapters folder by the plan's modality
            and label) or ``none`` (the base model alone).
        entries: ``(card, weight)`` pairs, in order.
        reason: one sentence for the trace.
        directory: the adapters folder consulted (``None`` when there is none).
        requested: what the user asked for, as given.
        skipped: adapters of the plan's modality left out by the automatic choice, with why.
    """

    mode: str
    entries: list[tuple[AdapterCard, float]]
    reason: str
    directory: Path | None = None
    requested: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def covers(self, *, modality: str | None, label: str | None) -> bool:
        """Some chosen adapter was trained on this modality and label (so the base need not cover it)."""
        return any(card.modality == modality and label in card.labels for card, _ in self.entries)

    def record(self) -> dict[str, Any]:
        """The trace's ``adapters`` entry (``chosen`` items also carry the folder, for a resume)."""
        return {
            "mode": self.mode,
            "reason": self.reason,
            "adapters_dir": str(self.directory) if self.directory is not None else None,
            "requested": list(self.requested),
            "chosen": [{**card.describe(weight=weight), "path": str(card.path)} for card, weight in self.entries],
            "skipped": list(self.skipped),
        }


class AdapterRequest:
    """What a run asks for, checked before any model loads: named adapters, or the choice by plan from a folder.

    Args:
        specs: ``NAME_OR_PATH[:WEIGHT]`` strings or ``(name_or_path, weight)`` pairs; empty for the choice by plan.
        directory: the adapters folder (names are looked up there; the choice by plan reads it).
        directory_given: the user set ``directory`` (it must then be a folder); the shipped default may be absent.

    Raises:
        AdapterError: a folder that is not one, an unknown name or a missing adapter folder, a bad weight, a broken
            card, or adapters that cannot combine.
    """

    def __init__(self, specs=(), *, directory: Path | None, directory_given: bool) -> None:
        self.directory = Path(directory).expanduser() if directory is not None else None
        if self.directory is not None and not self.directory.is_dir():
            if directory_given:
                what = "a file" if self.directory.exists() else "missing"
                raise AdapterError(f"adapters_dir {self.directory} is not a folder ({what}); point --adapters-dir or "
                                   "CLINISYNTH_ADAPTERS_DIR at a folder of adapter folders")
            self.directory = None
        self.registry = AdapterRegistry(self.directory) if self.directory is not None else None
        self.requested: list[str] = []
        self.named: list[tuple[AdapterCard, float]] = []
        for spec in specs or ():
            if isinstance(spec, (tuple, list)):
                reference, weight = str(spec[0]), float(spec[1])
                parse_adapter_spec(f"x:{weight}")  # the same range check
                self.requested.append(f"{reference}:{weight:g}")
            else:
                reference, weight = parse_adapter_spec(str(spec))
                self.requested.append(str(spec))
            self.named.append((self._card(reference), weight))
        check_combinable([card for card, _ in self.named])

    def _card(self, reference: str) -> AdapterCard:
        if looks_like_path(reference):
            folder = Path(reference).expanduser()
            if not folder.is_dir():
                raise AdapterError(f"adapter folder {folder} does not exist; name an adapter of the adapters folder "
                                   "or give the path of an adapter folder")
            return read_card(folder)
        if self.registry is None:
            raise AdapterError(f"no adapter named {reference!r}: there is no adapters folder; set --adapters-dir or "
                               "give the adapter's path")
        return self.registry.get(reference)

    def check_plan(self, *, modality: str | None, label: str | None) -> None:
        """Refuse named adapters not trained on the plan's modality and label (before any model loads)."""
        for card, _ in self.named:
            check_fits_plan(card, modality=modality, label=label)

    def choose(self, *, modality: str | None, label: str | None, problem=None) -> AdapterChoice:
        """The run's adapters: the named ones, else the folder's adapter for this modality and label, else none.

        Args:
            problem: ``card -> str | None``, why an adapter cannot run on the loaded base models
                (:meth:`clinisynth.generation.pipeline.Generator.adapter_problem`); such adapters are not chosen.
        """
        where = str(self.directory) if self.directory is not None else None
        if self.named:
            self.check_plan(modality=modality, label=label)
            names = ", ".join(f"{card.name}:{weight:g}" for card, weight in self.named)
            return AdapterChoice(mode="named", entries=list(self.named), directory=self.directory,
                                 requested=self.requested, reason=f"named by the user ({names})")
        if self.registry is None:
            return AdapterChoice(mode="none", entries=[], directory=None,
                                 reason="no adapters folder: the base model draws it")
        of_modality = [card for card in self.registry.cards() if card.modality == modality]
        skipped = []
        for card in of_modality:
            why = problem(card) if problem is not None else None
            if why:
                skipped.append({"name": card.name, "why": why})
        unusable = {entry["name"] for entry in skipped}
        usable = [card for card in of_modality if card.name not in unusable]
        if not usable:
            because = (f"no adapter in {where} is for {modality}" if not of_modality else
                       f"no adapter in {where} for {modality} fits the loaded base model")
            return AdapterChoice(mode="none", entries=[], directory=self.directory, skipped=skipped,
                                 reason=f"{because}: the base model draws it")
        try:
            card = self.registry.choose(modality=modality, label=label, usable=lambda c: c.name not in unusable)
        except AdapterError:
            known = sorted({x for c in usable for x in c.labels})
            return AdapterChoice(mode="none", entries=[], directory=self.directory, skipped=skipped,
                                 reason=f"the adapters in {where} for {modality} know {', '.join(known)}, not "
                                        f"{label!r}: the base model draws it")
        fitting = [c for c in usable if label in c.labels]
        return AdapterChoice(
            mode="by plan", entries=[(card, 1.0)], directory=self.directory, skipped=skipped,
            reason=(f"chosen by the plan ({modality} / {label}): {card.name!r} is the most specific of the "
                    f"{len(fitting)} adapter(s) in {where} for {modality} that know {label!r} and fit the base model "
                    f"(it knows {len(card.labels)} label(s))"))


def resumed_choice(entries: list[dict], *, run_id: str) -> AdapterChoice:
    """The adapters a run started with (its trace's ``parameters.adapters``), each checked unchanged since.

    Raises:
        AdapterError: an adapter folder is gone or its card changed.
    """
    cards = []
    for entry in entries:
        folder = Path(entry["path"])
        if not folder.is_dir():
            raise AdapterError(f"run {run_id} ran with adapter {entry['name']!r} from {folder}, which is gone; restore "
                               "it to resume the run")
        card = read_card(folder)
        if card.card_sha256 != entry["card_sha256"]:
            raise AdapterError(f"adapter {entry['name']!r} at {folder} changed since run {run_id} started (card hash "
                               f"{card.card_sha256[:12]} vs {entry['card_sha256'][:12]}); restore it to resume the run")
        cards.append((card, float(entry["weight"])))
    return AdapterChoice(mode="resumed", entries=cards, reason=f"the adapters run {run_id} started with")


# --- loading into a U-Net --------------------------------------------------------------------------------------


def expected_lora_keys(unet, *, target_modules, rank: int) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` a LoRA of ``rank`` on ``target_modules`` of ``unet`` has (diffusers keys without ``unet.``).

    Linear layers get ``A (rank, in)`` and ``B (out, rank)``; 2-D convolutions, as PEFT builds them, ``A (rank, in,
    kh, kw)`` (the base's kernel) and ``B (out, rank, 1, 1)``.
    """
    import torch

    keys: dict[str, tuple[int, int]] = {}
    for name, module in unet.named_modules():
        if "lora_" in name or name.endswith("base_layer"):
            continue
        if not any(name == t or name.endswith("." + t) for t in target_modules):
            continue
        base = getattr(module, "base_layer", module)
        if isinstance(base, torch.nn.Linear):
            keys[f"{name}.lora_A.weight"] = (rank, base.in_features)
            keys[f"{name}.lora_B.weight"] = (base.out_features, rank)
        elif isinstance(base, torch.nn.Conv2d):
            keys[f"{name}.lora_A.weight"] = (rank, base.in_channels, *base.kernel_size)
            keys[f"{name}.lora_B.weight"] = (base.out_channels, rank, 1, 1)
    return keys


def read_adapter_weights(card: AdapterCard, *, unet) -> tuple[dict, dict]:
    """``(state_dict, lora_config_kwargs)`` of ``card``, with every key and shape checked against ``unet``.

    Raises:
        AdapterError: missing or unexpected keys, wrong shapes, or the PEFT and diffusers files disagree.
    """
    from safetensors.torch import load_file

    config = json.loads((card.path / PEFT_CONFIG).read_text())
    target_modules = config.get("target_modules") or list(DEFAULT_TARGET_MODULES)
    rank = int(config.get("r", card.rank))
    expected = expected_lora_keys(unet, target_modules=target_modules, rank=rank)
    diffusers_state = load_file(str(card.path / DIFFUSERS_WEIGHTS))
    peft_state = load_file(str(card.path / PEFT_WEIGHTS))
    for file_name, state, prefix in ((DIFFUSERS_WEIGHTS, diffusers_state, DIFFUSERS_PREFIX),
                                     (PEFT_WEIGHTS, peft_state, PEFT_PREFIX)):
        wrong_prefix = [k for k in state if not k.startswith(prefix)]
        if wrong_prefix:
            raise AdapterError(f"adapter {card.name!r}: {len(wrong_prefix)} key(s) of {file_name} lack the "
                               f"{prefix!r} prefix (e.g. {wrong_prefix[0]!r}); it was not written by clinisynth")
    state = {k[len(DIFFUSERS_PREFIX):]: v for k, v in diffusers_state.items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise AdapterError(
            f"adapter {card.name!r} does not fit this U-Net: {len(missing)} missing key(s)"
            f"{' e.g. ' + repr(missing[0]) if missing else ''}, {len(unexpected)} unexpected key(s)"
            f"{' e.g. ' + repr(unexpected[0]) if unexpected else ''}; it was trained for another model or targets"
        )
    bad_shapes = [(k, tuple(v.shape), expected[k]) for k, v in state.items() if tuple(v.shape) != expected[k]]
    if bad_shapes:
        key, got, want = bad_shapes[0]
        raise AdapterError(f"adapter {card.name!r}: {key} has shape {got}, this U-Net needs {want}")
    peft = {k[len(PEFT_PREFIX):]: v for k, v in peft_state.items()}
    if peft.keys() != state.keys() or any(not peft[k].equal(state[k]) for k in state):
        raise AdapterError(f"adapter {card.name!r}: {PEFT_WEIGHTS} and {DIFFUSERS_WEIGHTS} hold different weights; "
                           "re-export the adapter")
    kwargs = {"r": rank, "lora_alpha": float(config.get("lora_alpha", card.alpha)),
              "target_modules": list(target_modules), "lora_dropout": 0.0}
    return state, kwargs


def compatibility_problem(card: AdapterCard, *, base_signature, text_encoder_signature,
                          max_length: int | None = None) -> str | None:
    """Why ``card`` does not fit a base U-Net and text encoder with these signatures (``None`` when it fits)."""
    if not signatures_match(card.base_signature, base_signature):
        return (f"adapter {card.name!r} was trained on base model {card.base_model!r}, whose weights differ "
                "from the loaded generator's; use an adapter trained on this base model")
    if not signatures_match(card.text_encoder_signature, text_encoder_signature):
        return (f"adapter {card.name!r} was trained with text encoder {card.text_encoder!r}, which differs "
                "from the loaded text encoder; use an adapter trained with this encoder")
    if max_length is not None and card.max_length != max_length:
        return (f"adapter {card.name!r} was trained with max_length {card.max_length}, the profile encodes "
                f"with {max_length}; set the profile's max_length to {card.max_length}")
    return None


def check_compatible(card: AdapterCard, *, unet, text_encoder, max_length: int | None = None) -> None:
    """Refuse an adapter trained on another base U-Net or text encoder (by weight signature)."""
    problem = compatibility_problem(card, base_signature=unet_signature(unet),
                                    text_encoder_signature=encoder_signature(text_encoder), max_length=max_length)
    if problem:
        raise AdapterError(problem)


def inject_adapter(unet, card: AdapterCard, *, adapter_name: str) -> None:
    """Add ``card``'s LoRA to ``unet`` under ``adapter_name`` (keys checked first; nothing changes on error)."""
    from peft import LoraConfig
    from peft.utils import set_peft_model_state_dict

    if adapter_name in _adapter_names(unet):
        raise AdapterError(f"an adapter named {adapter_name!r} is already loaded; unload it first or pick another name")
    state, kwargs = read_adapter_weights(card, unet=unet)
    unet.add_adapter(LoraConfig(**kwargs), adapter_name=adapter_name)
    result = set_peft_model_state_dict(unet, state, adapter_name=adapter_name)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        unet.delete_adapters([adapter_name])
        raise AdapterError(f"adapter {card.name!r}: PEFT did not place {len(unexpected)} key(s), e.g. "
                           f"{unexpected[0]!r}")
    # `disable_lora` survives deletes and new loads (PITFALLS.md): a freshly loaded adapter must be active.
    unet.enable_lora()


def read_text_encoder_weights(card: AdapterCard, *, text_encoder) -> tuple[dict, dict]:
    """``(state_dict, lora_config_kwargs)`` of ``card``'s text-encoder LoRA, every key and shape checked.

    Raises:
        AdapterError: missing or unexpected keys or wrong shapes (an encoder of another architecture).
    """
    from safetensors.torch import load_file

    folder = card.path / TEXT_ENCODER_DIR
    config = json.loads((folder / PEFT_CONFIG).read_text())
    target_modules = config.get("target_modules") or list(TEXT_ENCODER_TARGET_MODULES)
    rank = int(config["r"])
    expected = expected_lora_keys(text_encoder, target_modules=target_modules, rank=rank)
    state = {k.removeprefix(PEFT_PREFIX): v for k, v in load_file(str(folder / PEFT_WEIGHTS)).items()}
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise AdapterError(
            f"adapter {card.name!r}: its text-encoder LoRA does not fit this encoder: {len(missing)} missing key(s)"
            f"{' e.g. ' + repr(missing[0]) if missing else ''}, {len(unexpected)} unexpected"
            f"{' e.g. ' + repr(unexpected[0]) if unexpected else ''}")
    bad = [(k, tuple(v.shape), expected[k]) for k, v in state.items() if tuple(v.shape) != expected[k]]
    if bad:
        key, got, want = bad[0]
        raise AdapterError(f"adapter {card.name!r}: text-encoder {key} has shape {got}, this encoder needs {want}")
    return state, {"r": rank, "lora_alpha": float(config.get("lora_alpha", rank)),
                   "target_modules": list(target_modules), "lora_dropout": 0.0}


def inject_text_encoder_adapter(text_encoder, card: AdapterCard, *, adapter_name: str) -> None:
    """Add ``card``'s text-encoder LoRA to ``text_encoder`` (keys checked first; nothing changes on error)."""
    from peft import LoraConfig
    from peft.utils import set_peft_model_state_dict

    state, kwargs = read_text_encoder_weights(card, text_encoder=text_encoder)
    text_encoder.add_adapter(LoraConfig(**kwargs), adapter_name=adapter_name)
    result = set_peft_model_state_dict(text_encoder, state, adapter_name=adapter_name)
    if list(getattr(result, "unexpected_keys", []) or []):
        text_encoder.delete_adapter(adapter_name)
        raise AdapterError(f"adapter {card.name!r}: PEFT did not place the text-encoder keys")
    text_encoder.set_adapter(adapter_name)
    text_encoder.requires_grad_(False)


def _adapter_names(unet) -> list[str]:
    config = getattr(unet, "peft_config", None)
    return list(config) if config else []


# --- writing --------------------------------------------------------------------------------------------------


def save_adapter(directory: Path, *, unet, adapter_name: str, lora_config, card: dict, projection=None,
                 card_text: str | None = None, text_encoder=None, text_encoder_lora_config=None,
                 write_extra=None) -> Path:
    """Write an adapter folder (all files of the module docstring), staged and renamed into place.

    Args:
        directory: the adapter folder to create (replaced as a whole when it is an adapter already).
        unet: U-Net holding the trained adapter ``adapter_name``.
        lora_config: the ``peft.LoraConfig`` it was trained with.
        card: card data (see :class:`AdapterCard`; signatures, labels, ...).
        projection: a trained text projection, or ``None``.
        card_text: the README; a summary of ``card`` when ``None``.
        text_encoder, text_encoder_lora_config: a text encoder holding a trained LoRA ``adapter_name`` and its
            ``peft.LoraConfig``, saved under ``text_encoder/``; ``None`` when the encoder was frozen.
        write_extra: ``write_extra(staging_folder)`` adds files to the adapter before it is renamed into place
            (training writes the compact memorisation index of its training images there); ``None``: nothing.
    """
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    from clinisynth.generation.projection import save_projection

    directory = Path(directory)
    state = get_peft_model_state_dict(unet, adapter_name=adapter_name)
    state = {k: v.detach().float().cpu().contiguous() for k, v in state.items()}
    config = lora_config.to_dict()
    config = {k: (sorted(v) if isinstance(v, (set, frozenset)) else v) for k, v in config.items()}
    config["base_model_name_or_path"] = card.get("base_model")
    config["peft_type"] = "LORA"
    text_state = text_config = None
    if text_encoder is not None:
        text_state = {k: v.detach().float().cpu().contiguous()
                      for k, v in get_peft_model_state_dict(text_encoder, adapter_name=adapter_name).items()}
        text_config = {k: (sorted(v) if isinstance(v, (set, frozenset)) else v)
                       for k, v in text_encoder_lora_config.to_dict().items()}
        text_config.update(base_model_name_or_path=card.get("text_encoder"), peft_type="LORA")
    def not_an_adapter(existing: Path) -> None:
        if not (existing / CARD_DATA).is_file():
            raise AdapterError(f"{existing} exists and is not an adapter; choose another output folder")

    with staged_directory(directory, check_existing=not_an_adapter) as staging:
        save_file({PEFT_PREFIX + k: v for k, v in state.items()}, str(staging / PEFT_WEIGHTS))
        save_file({DIFFUSERS_PREFIX + k: v for k, v in state.items()}, str(staging / DIFFUSERS_WEIGHTS))
        (staging / PEFT_CONFIG).write_text(json.dumps(config, indent=2, default=str) + "\n")
        if projection is not None:
            save_projection(projection, staging)
        if text_state is not None:
            (staging / TEXT_ENCODER_DIR).mkdir()
            save_file({PEFT_PREFIX + k: v for k, v in text_state.items()}, str(staging / TEXT_ENCODER_DIR / PEFT_WEIGHTS))
            (staging / TEXT_ENCODER_DIR / PEFT_CONFIG).write_text(json.dumps(text_config, indent=2, default=str) + "\n")
        (staging / CARD_DATA).write_text(json.dumps({**card, "projection": projection is not None,
                                                     "text_encoder_lora": text_state is not None}, indent=2,
                                                    default=str) + "\n")
        (staging / CARD_TEXT).write_text(card_text or card_markdown(card))
        if write_extra is not None:
            write_extra(staging)
        read_card(staging)  # what we wrote must read back
    return directory


def card_markdown(card: dict) -> str:
    """The human-readable card."""
    lines = [f"# LoRA adapter: {card.get('modality')} / {', '.join(card.get('labels', []))}", ""]
    for key in ("base_model", "text_encoder", "modality", "labels", "rank", "alpha", "steps", "max_length"):
        lines.append(f"- {key.replace('_', ' ')}: {card.get(key)}")
    lines += ["", "## Data", "", "```json", json.dumps(card.get("data", {}), indent=2), "```", "", "## Metrics", "",
              "```json", json.dumps(card.get("metrics", {}), indent=2), "```", "",
              "Load with `clinisynth.generation.adapters.AdapterRegistry` (keys, base model and text encoder are "
              "checked). Synthetic images are not for clinical use.", ""]
    return "\n".join(lines)


def adapter_summary(entries: list[dict[str, Any]]) -> str:
    """``name:weight`` list for metadata (``adapters`` column)."""
    return ";".join(f"{e['name']}:{e['weight']:g}" for e in entries)
