"""Files and folders that appear whole or not at all: the one atomic writer and the one staged-folder publisher.

Every package that writes a file a reader must never see half-written (ordered storage, traces, candidates,
pictures, a prepared dataset's manifest, training metrics) uses :func:`write_atomically`; every folder that
must appear complete (a trained model, an adapter, a checkpoint, the tiny pipeline) is built inside
:func:`staged_directory`. Both fsync what they wrote and the folder that holds it, so a power cut after they
return keeps the new content. Standard library only: ``generation/`` imports nothing of ours, and
``training/``, ``agents/`` and ``clinisynth/`` may import it (DESIGN.md).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Callable, Iterator

# The process's umask, read once: mkstemp creates files 0600, but what we publish gets the usual mode.
_UMASK = os.umask(0o022)
os.umask(_UMASK)

#: Suffix of the temporary files of :func:`write_atomically` (names start with ``.``): a killed writer's leftovers.
TMP_SUFFIX = ".tmp"


class OutputDirError(ValueError):
    """An output folder that cannot be used: a file, a link that leads nowhere, or not writable."""


def check_writable_dir(root: Path, *, option: str = "--out") -> Path:
    """Check that ``root`` is, or can become, a writable directory, without creating it.

    Call it before any work, so that a bad output folder fails with nothing written.

    Args:
        root: the output folder.
        option: how the command names it, for the message (``--out``, ``--output``, ``OUT``).

    Returns:
        ``root`` made absolute.

    Raises:
        OutputDirError: ``root`` is empty, is (or lies under) a file, is a symbolic link that leads nowhere (a
            loop or a missing target), or the nearest existing folder is not writable.
    """
    if not str(root).strip():
        raise OutputDirError(f"{option} is empty; name a folder (use '.' for the current one)")
    root = Path(root).expanduser().absolute()
    try:
        root.resolve(strict=False)
    except (OSError, RuntimeError) as error:  # RuntimeError: a symlink loop on Python 3.11 / 3.12
        raise OutputDirError(f"{option} {root} cannot be followed ({error}); choose another {option}") from None
    existing = root
    while not existing.exists():
        if existing.is_symlink():  # exists() is False for a dangling link and for a loop
            try:
                os.stat(existing)
            except OSError as error:
                raise OutputDirError(f"{option} {root} cannot be created: {existing} is a symbolic link that leads "
                                     f"nowhere ({error.strerror}); remove it or choose another {option}") from None
        existing = existing.parent
    if existing == root and not root.is_dir():
        raise OutputDirError(f"{option} {root} exists and is not a directory; choose another {option}")
    if not existing.is_dir():
        raise OutputDirError(f"{option} {root} cannot be created: {existing} is a file; choose another {option}")
    try:
        # A real write, not os.access: access() says yes to root on read-only mounts and no on some ACL setups.
        descriptor, probe = tempfile.mkstemp(dir=existing, prefix=".clinisynth-write-check-")
        os.close(descriptor)
        os.unlink(probe)
    except OSError as error:
        raise OutputDirError(
            f"{option} {root} is not writable ({existing}: {error.strerror}); choose another {option}"
        ) from None
    return root


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new entry in ``directory`` durable."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def move_durably(source: Path, target: Path) -> Path:
    """Move ``source`` to ``target`` on the same file system (a rename: the bytes are kept as they are), with
    both folders synced, so that after a crash the file is in exactly one of the two places.

    Raises:
        FileExistsError: ``target`` exists (nothing is overwritten).
    """
    source, target = Path(source), Path(target)
    if target.exists():
        raise FileExistsError(f"{target} exists; not overwriting it with {source}")
    target.parent.mkdir(parents=True, exist_ok=True)
    os.rename(source, target)
    fsync_dir(target.parent)
    fsync_dir(source.parent)
    return target


def write_atomically(path: Path, data: bytes | str, *, mode: int | None = None) -> Path:
    """Write ``data`` (``str`` as UTF-8) to a temporary file beside ``path``, fsync it, rename it over ``path``
    and fsync the folder: a reader sees the old file or the new one, whole, never a part.

    The temporary file is ``.<name>.<random>.tmp`` in the same folder; it is removed when the write fails.
    The file gets the mode a plain ``open`` would give it (0666 less the umask), or ``mode`` when given
    (``0o600`` for a file only its owner may read: it has that mode before it has a name).

    Returns:
        ``path``.
    """
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        os.fchmod(descriptor, 0o666 & ~_UMASK if mode is None else mode)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    fsync_dir(path.parent)
    return path


def _fsync_tree(root: Path) -> None:
    for folder, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(folder, name), "rb") as handle:
                os.fsync(handle.fileno())
        fsync_dir(Path(folder))


@contextlib.contextmanager
def staged_directory(final: Path, *, replace: bool = True,
                     check_existing: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Build a folder under a hidden staging name beside ``final``; publish it under ``final`` when the block ends.

    On a normal exit every file is fsynced, an existing ``final`` is first checked with ``check_existing``
    (which raises when it must not be replaced), then moved aside, the staging folder is renamed to ``final``
    and the parent folder fsynced; the old copy is deleted last, so ``final`` is never half-deleted or
    half-written. When the block raises, the staging folder is removed and ``final`` is untouched.

    Args:
        final: the folder to publish.
        replace: replace an existing ``final``. ``False``: keep one that is there (e.g. another process won
            a race to build the same thing); the staged copy is dropped.
        check_existing: called with an existing ``final`` before it is replaced or kept.

    Yields:
        the staging folder, created empty.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging = final.parent / f".{final.name}.tmp-{tag}"
    aside = final.parent / f".{final.name}.old-{tag}"
    staging.mkdir()
    try:
        yield staging
        _fsync_tree(staging)
        moved_aside = False
        if final.exists():
            if check_existing is not None:
                check_existing(final)
            if not replace:
                return
            os.rename(final, aside)
            moved_aside = True
        try:
            os.rename(staging, final)
        except OSError:
            if moved_aside:  # put the old copy back rather than lose it
                os.rename(aside, final)
            # Someone else published ``final`` between the check and the rename: keep theirs when allowed.
            if replace or not final.exists():
                raise
            if check_existing is not None:
                check_existing(final)
            return
        fsync_dir(final.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(aside, ignore_errors=True)


__all__ = ["TMP_SUFFIX", "OutputDirError", "check_writable_dir", "fsync_dir", "staged_directory", "write_atomically"]
