"""Adapters in campaigns: the campaign-wide ``adapters:`` and an item's own, on the run path's adapter support.

An item draws with its own ``adapters`` when it names some, else the campaign's, else the adapter the run path
would choose by its modality and label from the adapters folder (``generation.adapters.AdapterRequest``), else
none. Named adapters are checked against every item's plan before anything is generated (:func:`adapter_problem`);
a worker sets its generator to the chunk's adapters before the run (:func:`use_campaign_adapters`) and the choice
goes into the run's trace and every image's metadata, as for ``clinisynth generate --adapter``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path


def modality_id(knowledge, storage_modality: str) -> str | None:
    """The knowledge id (``modality.chest_xray``) of a storage modality folder name (``chest_xray``)."""
    for record in knowledge.modalities:
        if record.label == storage_modality:
            return record.id
    return None


def adapter_request(specs: list[str] | tuple[str, ...] | None, *, adapters_dir: Path | None):
    """The run path's :class:`~clinisynth.generation.adapters.AdapterRequest` for ``specs`` (cached per folder and
    specs: reading cards once per campaign, not per chunk).

    Raises:
        AdapterError: an unknown name or missing folder, a bad weight, a broken card, adapters that cannot combine.
    """
    return _request(tuple(specs or ()), None if adapters_dir is None else str(adapters_dir))


@lru_cache(maxsize=64)
def _request(specs: tuple[str, ...], adapters_dir: str | None):
    from clinisynth.generation.adapters import AdapterError, AdapterRequest
    from clinisynth.models import ADAPTERS_DIR

    request = AdapterRequest(list(specs), directory=Path(adapters_dir) if adapters_dir else ADAPTERS_DIR,
                             directory_given=adapters_dir is not None)
    for card, _ in request.named:
        if card.projection:
            raise AdapterError(f"adapter {card.name!r} carries a text projection, which needs a generator of its own; "
                               "campaigns run one generator per worker: use it with `clinisynth generate --adapter`")
    return request


def adapter_problem(specs: list[str] | None, *, adapters_dir: Path | None, modality: str | None,
                    label: str) -> str | None:
    """Why the named adapters cannot draw this item's plan (``None`` when they can, or none are named)."""
    from clinisynth.generation.adapters import AdapterError

    if not specs:
        return None
    try:
        adapter_request(specs, adapters_dir=adapters_dir).check_plan(modality=modality, label=label)
    except AdapterError as error:
        return str(error)
    return None


def adapters_cover(specs: list[str] | None, *, adapters_dir: Path | None, modality: str | None, label: str) -> bool:
    """Whether a named adapter was trained on this modality and label (then the base model need not cover it)."""
    if not specs:
        return False
    return any(card.modality == modality and label in card.labels
               for card, _ in adapter_request(specs, adapters_dir=adapters_dir).named)


def use_campaign_adapters(generator, *, specs: list[str] | None, adapters_dir: Path | None, knowledge,
                          modality: str, label: str) -> dict:
    """Set ``generator`` to a chunk's adapters (swapped in place) and return the choice's trace record.

    Args:
        specs: the item's or the campaign's adapters; ``None``: the run path's choice by modality and label.
        modality: the storage modality (``chest_xray``).
    """
    request = adapter_request(specs, adapters_dir=adapters_dir)
    choice = request.choose(modality=modality_id(knowledge, modality), label=label,
                            problem=generator.adapter_problem)
    generator.use_adapters(choice.entries)
    return choice.record()
