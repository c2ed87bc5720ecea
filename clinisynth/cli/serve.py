"""``clinisynth serve``: the web app and HTTP API (``clinisynth.server``) under uvicorn."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from clinisynth.cli.errors import fail, user_errors


def serve(
    host: Annotated[str, typer.Option(help="address to bind; anything but 127.0.0.1 / localhost / ::1 needs --token")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0: any free one)", min=0, max=65535)] = 8000,
    out: Annotated[Path, typer.Option(help="output dataset directory jobs write into and runs are listed from")]
    = Path("clinisynth-out"),
    profile: Annotated[Optional[str], typer.Option(help="model profile of every job: tiny, demo or full")] = None,
    token: Annotated[Optional[str], typer.Option(
        envvar="CLINISYNTH_API_TOKEN", show_envvar=True,
        help="API token: every /api route and /docs then needs 'Authorization: Bearer TOKEN'")] = None,
    queue_size: Annotated[int, typer.Option(help="jobs that may wait for the worker", min=1, max=1000)] = 8,
    max_jobs_per_token: Annotated[int, typer.Option(help="queued or running jobs one token may have", min=1)] = 2,
) -> None:
    """Serve the web app (Generate and Review pages) and the HTTP API (OpenAPI at /docs)."""
    from clinisynth.server.security import check_bind, check_port_free

    try:
        check_bind(host=host, token=token)
        check_port_free(host=host, port=port)
    except ValueError as error:
        fail(str(error))
    with user_errors():
        import uvicorn

        from clinisynth.generation.profiles import PROFILE_NAMES, ProfileError
        from clinisynth.server import create_app
        from clinisynth.settings import Settings

        settings = Settings()
        chosen = profile or settings.profile
        if chosen not in PROFILE_NAMES:
            raise ProfileError(f"unknown profile {chosen!r}; known profiles: {', '.join(PROFILE_NAMES)}")
        app = create_app(out=out, settings=settings, profile=chosen, token=token, queue_size=queue_size,
                         max_running_per_token=max_jobs_per_token)
        typer.echo(f"clinisynth serving {out} with the {chosen} profile on http://{host}:{port}/ "
                   f"(API docs: /docs{', token required' if token else ''})", err=True)
        uvicorn.run(app, host=host, port=port, log_level="warning")
