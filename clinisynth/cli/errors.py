"""Turn the errors users cause into one clear line on stderr and exit code 2."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

import typer

USAGE_EXIT_CODE = 2


def user_error_types() -> tuple[type[BaseException], ...]:
    """Errors that mean bad input or a missing model, not a bug (imported lazily)."""
    from clinisynth.agents.planner import PlanError
    from clinisynth.curation.spec import CampaignError
    from clinisynth.generation.adapters import AdapterError
    from clinisynth.generation.files import OutputDirError
    from clinisynth.generation.owner import OwnerError
    from clinisynth.generation.profiles import ModelNotFoundError, ProfileError
    from clinisynth.generation.storage import StorageError
    from clinisynth.knowledge import KnowledgeError
    from clinisynth.retrieval.embedder import EmbedderError
    from clinisynth.settings import SettingsError
    from clinisynth.verifier_setup import VerifierSetupError

    return (PlanError, KnowledgeError, EmbedderError, ProfileError, ModelNotFoundError, StorageError,
            VerifierSetupError, CampaignError, AdapterError, SettingsError, OutputDirError, OwnerError)


def fail(message: str) -> None:
    """Print ``error: message`` (control characters escaped: it may quote what the user typed) and exit 2."""
    from clinisynth.agents.requests import printable

    typer.echo(f"error: {printable(message, one_line=True)}", err=True)
    raise typer.Exit(code=USAGE_EXIT_CODE)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Run the body; report a user error as one line and exit 2, let bugs raise with a traceback."""
    try:
        yield
    except typer.Exit:
        raise
    except Exception as error:  # noqa: BLE001 - filtered just below
        if isinstance(error, user_error_types()):
            from clinisynth.agents.requests import printable

            message = [printable(line, one_line=True) for line in str(error).strip().splitlines()]
            typer.echo(f"error: {message[0] if message else type(error).__name__}", err=True)
            for extra in message[1:]:
                typer.echo(f"  {extra}", err=True)
            sys.stderr.flush()
            raise typer.Exit(code=USAGE_EXIT_CODE) from None
        raise
