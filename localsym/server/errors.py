"""Errors as each API spells them: OpenAI's ``{"error": {"message", "type", "code"}}`` under
``/v1`` and ``/localsym``, Ollama's ``{"error": "..."}`` under ``/api``. A client that only
knows one of them reads our errors like the real server's."""

from __future__ import annotations

import json
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
    500: "server_error",
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
