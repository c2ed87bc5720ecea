"""What every API route depends on: the caller's token and the app's services."""

from __future__ import annotations

from fastapi import Request

from clinisynth.server.security import check_token


def caller(request: Request) -> str:
    """The caller's identity (its token, or ``local``); 401 without the right token."""
    return check_token(request, expected=request.app.state.token)


def jobs(request: Request):
    """The app's :class:`~clinisynth.server.jobs.JobManager`."""
    return request.app.state.jobs
