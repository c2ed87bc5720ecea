"""Training checkpoints: written to a temporary folder and renamed into place, tied to one run.

A checkpoint folder ``OUT/checkpoints/step_000100`` holds ``state.pt`` (trainable weights, optimizer, EMA, RNG,
losses) and ``checkpoint.json`` (step, run fingerprint). A crash while writing leaves only a hidden temporary
folder, never a half-written ``step_*``. ``--resume`` refuses a checkpoint whose fingerprint (the settings that
define the run: base model, data, LoRA rank, resolution, ...) differs from the current run's.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from clinisynth.generation.files import staged_directory

CHECKPOINTS_DIR = "checkpoints"
STATE_NAME = "state.pt"
META_NAME = "checkpoint.json"


class CheckpointError(ValueError):
    """A checkpoint is missing, damaged or belongs to another run."""


def run_fingerprint(identity: dict) -> str:
    """Short stable hash of the settings that make a run this run (JSON-serialisable values)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_checkpoint(output_dir: Path, *, step: int, state: dict, fingerprint: str, identity: dict,
                    keep: int = 2) -> Path:
    """Write ``state`` as checkpoint ``step`` and keep the newest ``keep`` checkpoints.

    Args:
        output_dir: the run's output folder.
        step: optimizer steps done.
        state: anything ``torch.save`` takes.
        fingerprint: :func:`run_fingerprint` of ``identity``.
        identity: the settings that define the run (stored for the error message of a refused resume).
        keep: checkpoints to keep, at least 1.
    """
    import torch

    root = Path(output_dir) / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    # The same step saved again (resume at a checkpoint step) replaces the old one as a whole.
    with staged_directory(final) as staging:
        torch.save(state, staging / STATE_NAME)
        meta = {"step": step, "fingerprint": fingerprint, "identity": identity}
        (staging / META_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    for old in list_checkpoints(output_dir)[:-max(1, keep)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints of ``output_dir``, oldest first."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step_*") if (p / META_NAME).is_file() and (p / STATE_NAME).is_file())


def resolve_resume(resume: str | Path | None, *, output_dir: Path) -> Path | None:
    """The checkpoint ``--resume`` names: ``None``, ``"latest"`` (newest in ``output_dir``, or none yet) or a path."""
    if resume is None:
        return None
    if str(resume) == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / META_NAME).is_file() or not (path / STATE_NAME).is_file():
        raise CheckpointError(f"--resume {path}: not a checkpoint folder (needs {META_NAME} and {STATE_NAME})")
    return path


def load_checkpoint(path: Path, *, fingerprint: str) -> tuple[int, dict]:
    """``(step, state)`` of the checkpoint at ``path``, refused when it belongs to another run.

    Raises:
        CheckpointError: unreadable, or its fingerprint differs (the message names the differing settings).
    """
    import torch

    path = Path(path)
    try:
        meta = json.loads((path / META_NAME).read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {error}") from error
    if meta.get("fingerprint") != fingerprint:
        raise CheckpointError(
            f"checkpoint {path} belongs to another run (fingerprint {meta.get('fingerprint')} != {fingerprint}); "
            f"its settings were {meta.get('identity')}; resume with the same settings or start a new output dir"
        )
    state = torch.load(path / STATE_NAME, map_location="cpu", weights_only=False)
    return int(meta["step"]), state
