"""Checks of command-line values that several commands share, each ending in one ``error:`` line and exit 2.

They run before anything heavy loads or anything is written; only :func:`check_device` imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from clinisynth.cli.errors import fail
from clinisynth.generation.limits import MAX_SEED


def path_parser(option: str) -> Callable[[str], Path]:
    """A typer ``parser`` for a path option or argument that refuses the empty string.

    ``Path("")`` is the current folder, so ``--out ""`` (an unset shell variable) would silently write there.

    Args:
        option: how the command names the value, e.g. ``"--out"`` or ``"OUT"``.
    """

    def parse(value: str | Path) -> Path:
        if isinstance(value, str) and not value.strip():
            fail(f"{option} is empty; name a path (use '.' for the current folder)")
        return Path(value)

    return parse


def check_output(path: Path, *, option: str) -> None:
    """``path`` is, or can become, a writable folder (:func:`~clinisynth.generation.files.check_writable_dir`)."""
    from clinisynth.generation.files import OutputDirError, check_writable_dir

    try:
        check_writable_dir(path, option=option)
    except OutputDirError as error:
        fail(str(error))


def check_seed(seed: int, *, option: str = "--seed") -> None:
    if not 0 <= seed <= MAX_SEED:
        fail(f"{option} must be a whole number from 0 to {MAX_SEED}, got {seed}")


def check_at_least(value: int | float | None, minimum: int, *, option: str) -> None:
    """``value`` (``None``: unset, fine) is at least ``minimum``."""
    if value is not None and value < minimum:
        fail(f"{option} must be at least {minimum}, got {value}")


def check_fraction(value: float | None, *, option: str) -> None:
    """``value`` (``None``: unset, fine) lies in [0, 1]."""
    if value is not None and not 0.0 <= value <= 1.0:
        fail(f"{option} must be between 0 and 1, got {value}")


def check_device(device: str, *, option: str = "--device") -> None:
    """``device`` names a torch device this machine has (``cpu``, ``cuda``, ``cuda:1``, ``mps`` ...)."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        fail(f"{option} {device!r} is not a torch device; use cpu, cuda, cuda:N or mps")
    backend = getattr(torch, parsed.type, None) if parsed.type != "mps" else torch.backends.mps
    if parsed.type == "cpu":
        return
    available = backend is not None and hasattr(backend, "is_available") and backend.is_available()
    if not available:
        fail(f"{option} {device!r}: this machine has no {parsed.type} device; use cpu")
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if parsed.index is not None and parsed.index >= count:
        fail(f"{option} {device!r}: this machine has {count} {parsed.type} device(s), numbered from 0")


__all__ = ["check_at_least", "check_device", "check_fraction", "check_output", "check_seed", "path_parser"]
