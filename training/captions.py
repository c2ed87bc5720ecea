"""Training captions: the manifest's text, or the reasoning's own prompt for the label when it has none.

Inference prompts come from ``clinisynth.agents.prompting``; captioning unlabelled text with the same builder
keeps training and inference speaking alike.
"""

from __future__ import annotations

from collections import Counter

from clinisynth.training.data import ManifestRecord


def captions_for(records: list[ManifestRecord], *, knowledge=None) -> list[str]:
    """One caption per record.

    Args:
        records: manifest rows.
        knowledge: a ``clinisynth.knowledge.KnowledgeBase``; needed only when some row has no text.

    Raises:
        ValueError: a row has no text and ``knowledge`` is ``None``, or its label is unknown to the knowledge base.
    """
    captions: list[str] = []
    cache: dict[tuple[str, str], str] = {}
    for record in records:
        if record.text:
            captions.append(record.text)
            continue
        if knowledge is None:
            raise ValueError(
                f"{record.path} has no caption text and no knowledge base was given to write one for label "
                f"{record.label!r}; pass knowledge=clinisynth.knowledge.load_knowledge()"
            )
        key = (record.modality, record.label)
        if key not in cache:
            from clinisynth.agents.prompting import caption_for_label  # lazy: only rows without text need it

            cache[key] = caption_for_label(knowledge=knowledge, modality_id=record.modality, label=record.label)
        captions.append(cache[key])
    return captions


def class_key(record: ManifestRecord) -> str:
    """``"<modality>/<label>"``, e.g. ``"brain_mri/normal"``: one class of a generator that draws several
    modalities (``normal`` is a class of each)."""
    return f"{record.modality.removeprefix('modality.')}/{record.label}"


def typical_captions(records, caption_of, *, key=lambda record: record.label) -> dict[str, str]:
    """The most common caption per ``key(record)`` (the label, or :func:`class_key` for a generator of several
    modalities): what validation images and the card use."""
    by_key: dict[str, Counter] = {}
    for record in records:
        by_key.setdefault(key(record), Counter())[caption_of[record.path]] += 1
    return {name: counts.most_common(1)[0][0] for name, counts in sorted(by_key.items())}


def varied_captions(records: list[ManifestRecord], *, knowledge, max_variants: int) -> list[str]:
    """One caption per record, drawn from its class's wording variants (``caption_variants_for_label``).

    Each image keeps one variant, chosen from a hash of its path, so a run is reproducible and every variant of
    a class is used about equally.

    Args:
        records: manifest rows (their modality and label pick the variants; their own text is not used).
        knowledge: a ``clinisynth.knowledge.KnowledgeBase``.
        max_variants: variants per class, at most.
    """
    import hashlib

    from clinisynth.agents.prompting import caption_variants_for_label

    variants: dict[tuple[str, str], list[str]] = {}
    captions = []
    for record in records:
        key = (record.modality, record.label)
        if key not in variants:
            variants[key] = caption_variants_for_label(knowledge=knowledge, modality_id=record.modality,
                                                       label=record.label, max_variants=max_variants)
        choices = variants[key]
        digest = int.from_bytes(hashlib.sha256(str(record.path).encode()).digest()[:8], "big")
        captions.append(choices[digest % len(choices)])
    return captions
