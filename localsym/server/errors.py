"""Errors as each API spells them: OpenAI's ``{"error": {"message", "type", "code"}}`` under
``/v1`` and ``/localsym``, Ollama's ``{"error": "..."}`` under ``/api``. A client that only
knows one of them reads our errors like the real server's."""

from __future__ import annotations

import errno
import json
import sqlite3
from typing import Any

from starlette.responses import Response

# status -> OpenAI's error type for it
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    503: "server_overloaded",
    507: "server_error",
    500: "server_error",
    501: "invalid_request_error",
}


class ApiError(Exception):
    """An error meant for the client as it stands, with its HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers or {}


class ClientGone(Exception):
    """The client disconnected while its request waited or ran: nobody to answer."""


def flavour(path: str) -> str:
    """Which API's error shape a path speaks."""
    return "ollama" if path == "/api" or path.startswith("/api/") else "openai"


def error_body(kind: str, status: int, message: str, code: str | None = None, param: str | None = None) -> dict:
    if kind == "ollama":
        return {"error": message}
    return {
        "error": {
            "message": message,
            "type": _OPENAI_TYPES.get(status, "invalid_request_error"),
            "param": param,
            "code": code,
        }
    }


def error_response(path: str, err: ApiError) -> Response:
    body: Any = error_body(flavour(path), err.status, err.message, err.code, err.param)
    return Response(json.dumps(body), err.status, headers=err.headers, media_type="application/json")


def classify(exc: BaseException) -> ApiError | None:
    """An exception that reached a route, as the client should read it; None for our own
    bug (a 500). Library errors name their cause in one line."""
    from localsym.errors import BudgetError, LocalsymError, ModelNotFound
    from localsym.session import SessionBusy

    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, SessionBusy):
        return ApiError(409, str(exc), "session_busy")
    if isinstance(exc, ModelNotFound):
        return ApiError(404, str(exc), "model_not_found")
    if isinstance(exc, BudgetError):
        return ApiError(503, str(exc), "out_of_memory", headers={"Retry-After": "5"})
    if isinstance(exc, LocalsymError):
        return ApiError(400, str(exc))
    if isinstance(exc, RecursionError):
        return ApiError(400, "request nests too deeply", "invalid_json")
    if isinstance(exc, UnicodeError):
        return ApiError(400, f"text is not valid Unicode ({exc.__class__.__name__})", "invalid_text")
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ApiError(507, f"the server's disk is full ({exc.strerror})", "disk_full")
    if isinstance(exc, OSError):
        return ApiError(500, f"the server could not read or write a file: {exc.strerror or exc}", "storage_error")
    if isinstance(exc, sqlite3.Error):
        return ApiError(500, f"a session database failed: {exc}", "storage_error")
    return None
