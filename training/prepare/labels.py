"""Class labels: folder names to snake_case labels, user label maps, MedMNIST's integer classes."""

from __future__ import annotations

import json
import re
from pathlib import Path

LABEL_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,63}$")

# MedMNIST stores integer classes; names from the MedMNIST v2 INFO table, as knowledge labels.
MEDMNIST_LABELS: dict[str, dict[int, str]] = {
    "pneumoniamnist": {0: "normal", 1: "pneumonia"},
    "breastmnist": {0: "malignant", 1: "benign"},
}
MEDMNIST_MODALITIES: dict[str, str] = {
    "pneumoniamnist": "modality.chest_xray",
    "breastmnist": "modality.breast_ultrasound",
}


class LabelError(ValueError):
    """A label or label map is not usable; the message says which value and how to fix it."""


def to_snake_case(name: str) -> str:
    """``NORMAL`` -> ``normal``, ``Pleural Effusion`` -> ``pleural_effusion``, ``noTumor`` -> ``no_tumor``."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name.strip())
    return re.sub(r"[\s\-.]+", "_", spaced).lower().strip("_")


def is_valid_label(label: str) -> bool:
    """A label is a folder name: lower-case letter first, then ``a-z0-9_``, at most 64 characters."""
    return bool(LABEL_PATTERN.match(label))


def load_label_map(path: Path) -> dict[str, str]:
    """Read a YAML or JSON mapping ``source name -> label`` and check every target label.

    Args:
        path: a ``.yaml`` / ``.yml`` / ``.json`` file, e.g. ``notumor: normal``.

    Raises:
        LabelError: unreadable file, not a flat mapping, or a target that is not a valid label.
    """
    if not path.is_file():
        raise LabelError(f"label map {path} does not exist; give a YAML or JSON file like 'notumor: normal'")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as error:  # yaml and json raise different types
        raise LabelError(f"label map {path} is not valid {path.suffix.lstrip('.') or 'YAML'}: {error}") from None
    if not isinstance(data, dict) or not data:
        raise LabelError(f"label map {path} must be a non-empty mapping 'source name: label'")
    mapping: dict[str, str] = {}
    for key, value in data.items():
        if not isinstance(value, str) or not is_valid_label(value):
            raise LabelError(
                f"label map {path}: target {value!r} for {key!r} is not a valid label "
                "(lower-case letter first, then a-z, 0-9 or _)"
            )
        mapping[str(key)] = value
    return mapping


def resolve_label(name: str, label_map: dict[str, str] | None) -> str | None:
    """The label for a folder name (or MedMNIST class number as text): the map first, then snake_case.

    Returns ``None`` when the result is not a valid label, so the caller can list every bad name.
    """
    if label_map:
        if name in label_map:
            return label_map[name]
        snake = to_snake_case(name)
        if snake in label_map:
            return label_map[snake]
    snake = to_snake_case(name)
    return snake if is_valid_label(snake) else None
