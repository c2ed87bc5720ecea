"""Every error the app answers is JSON ``{"error": MESSAGE, "field": NAME}``: no stack trace ever leaves it."""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("clinisynth.server")


class ApiError(Exception):
    """An error answered as ``status`` with ``message`` naming what is wrong and how to fix it.

    Args:
        status: HTTP status code (4xx for the caller's mistakes).
        message: one line.
        field: the request field at fault, when one is.
    """

    def __init__(self, status: int, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


def json_error_body(message: str, *, field: str | None = None) -> bytes:
    return json.dumps({"error": message, "field": field}).encode("utf-8")


def _error(status: int, message: str, field: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "field": field}, status_code=status, headers=headers)


def _field_name(location: tuple) -> str | None:
    parts = [str(part) for part in location if part not in ("body", "query", "path")]
    return ".".join(parts) or None


def _validation_message(error: dict) -> tuple[int, str, str | None]:
    field = _field_name(tuple(error.get("loc", ())))
    kind = error.get("type", "")
    if kind == "json_invalid":
        reason = (error.get("ctx") or {}).get("error", "not valid JSON")
        return 400, f"malformed JSON body ({reason}); send a JSON object", "body"
    if kind == "extra_forbidden":
        return 422, f"unknown field {field!r}; see the API docs at /docs for the fields this route takes", field
    if kind == "missing":
        return 422, f"missing field {field!r}", field
    if kind in ("model_attributes_type", "dict_type") and field is None:
        return 422, "the body must be a JSON object", "body"
    message = error.get("msg", "invalid value").removeprefix("Value error, ")  # our validators' own words
    return 422, f"{field or 'body'}: {message}", field


def install_error_handlers(app: FastAPI) -> None:
    """Answer validation errors, HTTP errors, user errors and bugs as JSON errors."""
    from clinisynth.cli.errors import user_error_types

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError):
        headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
        return _error(error.status, error.message, error.field, headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError):
        errors = error.errors()
        status, message, field = _validation_message(errors[0]) if errors else (422, "invalid request", None)
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more problem(s))"
        return _error(status, message, field)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        message = error.detail if isinstance(error.detail, str) else "request refused"
        if error.status_code == 404 and message == "Not Found":
            message = f"no route {request.url.path}; see /docs"
        if error.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}; see /docs"
        return _error(error.status_code, message)

    async def user_error(request: Request, error: Exception):
        lines = str(error).strip().splitlines()
        return _error(422, lines[0] if lines else type(error).__name__)

    for error_type in user_error_types():  # bad input or a missing model: the CLI's exit-2 errors
        app.add_exception_handler(error_type, user_error)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error(500, "internal error; the server log has the details")
