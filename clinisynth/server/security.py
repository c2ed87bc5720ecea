"""Who may call the app, how much they may send, and which files they may read."""

from __future__ import annotations

import hmac
from pathlib import Path

from fastapi import Request

from clinisynth.server.errors import ApiError

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
#: Largest request body accepted (a description and its options fit many times over).
DEFAULT_MAX_BODY_BYTES = 64 * 1024


def check_bind(*, host: str, token: str | None) -> None:
    """Refuse to serve beyond this machine without a token.

    Raises:
        ValueError: ``host`` is not a loopback address and no token is set.
    """
    if host not in LOCAL_HOSTS and not token:
        raise ValueError(f"--host {host} serves beyond this machine: set a token with --token or "
                         "CLINISYNTH_API_TOKEN (clients send it as 'Authorization: Bearer TOKEN')")


def check_port_free(*, host: str, port: int) -> None:
    """Refuse a port another program holds, before any model loads (uvicorn would fail only after).

    Raises:
        ValueError: the address cannot be bound.
    """
    import socket

    if port == 0:
        return
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as error:
        raise ValueError(f"cannot listen on {host}:{port} ({error.strerror}); choose another --port or --host") from None


def bearer_token(request: Request) -> str | None:
    """The token of ``Authorization: Bearer TOKEN``, or ``None``."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def check_token(request: Request, *, expected: str | None) -> str:
    """The caller's identity for per-token limits: its token, or ``"local"`` when the app has none.

    Raises:
        ApiError: 401 when the token is missing or wrong (compared in constant time).
    """
    if not expected:
        return "local"
    given = bearer_token(request)
    if given is None:
        raise ApiError(401, "missing token: send 'Authorization: Bearer TOKEN' (the server's --token)",
                       field="authorization")
    if not hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8")):
        raise ApiError(401, "wrong token: send the token the server was started with (--token)",
                       field="authorization")
    return given


def inside(root: Path, relative: str, *, what: str) -> Path:
    """``root / relative`` resolved, refusing any path that leaves ``root`` (``..``, absolute, symlinks out).

    Raises:
        ApiError: 400 for a path that leaves ``root``; 404 when it names no file.
    """
    root = Path(root).resolve()
    if not relative or relative.startswith(("/", "\\")) or "\x00" in relative:
        raise ApiError(400, f"{what} {relative!r} must be a path relative to the output dir", field="path")
    target = (root / relative).resolve()
    if not target.is_relative_to(root):
        raise ApiError(400, f"{what} {relative!r} leaves the output dir; give a path inside it", field="path")
    if not target.is_file():
        raise ApiError(404, f"no {what} {relative!r} in the output dir", field="path")
    return target


class BodyLimit:
    """ASGI middleware: a request whose body is over ``max_bytes`` gets a 413 JSON error, and is never read whole.

    Args:
        app: the wrapped ASGI app.
        max_bytes: the largest body accepted.
    """

    def __init__(self, app, *, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send)
        seen = 0
        refused = False

        async def limited_receive():
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    refused = True
                    raise _TooLarge()
            return message

        async def guarded_send(message):
            if not refused:  # the app's answer to a body it could not read whole is replaced by the 413
                await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _TooLarge:
            pass
        if refused:
            await self._refuse(send)

    async def _refuse(self, send) -> None:
        from clinisynth.server.errors import json_error_body

        body = json_error_body(f"request body over {self.max_bytes} bytes; send a smaller body", field="body")
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass
