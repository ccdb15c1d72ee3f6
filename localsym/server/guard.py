"""The outer ASGI layer: the API key and the body size limit, checked before any route runs
and answered in the API's own error shape."""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from localsym.server.errors import ApiError, error_response


class BodyTooLarge(Exception):
    """A body sent without a Content-Length (chunked) ran past the limit while being read."""


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", []):
        if k.lower() == name:
            return v.decode("latin-1")
    return None


def presented_key(scope: Scope) -> str | None:
    """The key as OpenAI clients send it (Authorization: Bearer) or as others do (x-api-key)."""
    auth = _header(scope, b"authorization")
    if auth and auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return _header(scope, b"x-api-key")


class Guard:
    def __init__(self, app: ASGIApp, api_key: str | None, max_body: int) -> None:
        self.app, self.api_key, self.max_body = app, api_key, max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if self.api_key is not None:
            got = presented_key(scope)
            if got is None or not hmac.compare_digest(got.encode(), self.api_key.encode()):
                err = ApiError(401, "missing or wrong API key (send Authorization: Bearer KEY or x-api-key: KEY)",
                               "invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
                await error_response(path, err)(scope, receive, send)
                return
        length = _header(scope, b"content-length")
        try:
            too_big = length is not None and int(length) > self.max_body
        except ValueError:
            await error_response(path, ApiError(400, "bad Content-Length"))(scope, receive, send)
            return
        if too_big:
            await error_response(path, too_large(self.max_body))(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_body:
                    raise BodyTooLarge()
            return msg

        await self.app(scope, limited, send)


def too_large(limit: int) -> ApiError:
    return ApiError(413, f"request body larger than {limit / 2**20:g} MiB", "request_too_large")
