"""The outer ASGI layer, before any route runs, errors in the API's own shape:

- web pages: a browser page on another site must not drive a local server (a text/plain
  POST needs no CORS preflight, and DNS rebinding makes a page look same-origin). So a
  request whose ``Origin`` is not a local address is refused unless the server has an API
  key, and a server listening on localhost answers only requests addressed to localhost
  (the ``Host`` header). Local pages (a web UI on localhost, an editor's webview, an
  Electron or Tauri app) get CORS, with the headers browser SDKs send.
- the API key (``Authorization: Bearer KEY`` or ``x-api-key: KEY``);
- the body size limit (413), by Content-Length and while reading a chunked body."""

from __future__ import annotations

import hmac
import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from localsym.server.errors import ApiError, error_response

_LOCAL = re.compile(r"^(localhost|127\.0\.0\.1|\[::1\])(:\d+)?$", re.IGNORECASE)
_LOCAL_ORIGIN = re.compile(r"^https?://(localhost|127\.0\.0\.1|\[::1\])(:\d+)?$", re.IGNORECASE)
# pages of desktop apps on this machine: editor webviews (VS Code and its forks, where Continue,
# Cline and Copilot's chat run), Electron and Tauri apps. No web site can send these origins
# (a browser sets Origin from the page's own scheme), so they are as local as localhost;
# ``null`` (file:// pages, but also any site's sandboxed iframe) is not among them
_APP_ORIGIN = re.compile(r"^(vscode-webview|vscode-file|app|tauri)://[^/\s]+$", re.IGNORECASE)
# what browser clients send: the openai SDK's browser build adds x-stainless-* headers (any
# of them is allowed, as new ones appear), the ollama one its user agent
_ALLOW_HEADERS = (
    "authorization, content-type, accept, user-agent, x-requested-with, x-api-key, x-localsym-session, "
    "openai-beta, openai-organization, openai-project, x-stainless-arch, x-stainless-async, "
    "x-stainless-custom-poll-interval, x-stainless-helper-method, x-stainless-lang, x-stainless-os, "
    "x-stainless-package-version, x-stainless-poll-helper, x-stainless-retry-count, x-stainless-runtime, "
    "x-stainless-runtime-version, x-stainless-timeout"
)
CORS_HEADERS = [
    (b"access-control-allow-methods", b"GET, POST, DELETE, OPTIONS"),
    (b"access-control-allow-headers", _ALLOW_HEADERS.encode()),
    (
        b"access-control-expose-headers",
        b"x-localsym-session, x-localsym-mode, x-localsym-restored-blocks, x-localsym-recomputed-blocks, "
        b"x-localsym-reinjected-blocks, x-localsym-history-reused-blocks, x-localsym-history-computed-blocks, "
        b"x-localsym-previous-session, x-request-id",
    ),
    (b"access-control-max-age", b"600"),
]


_TOKEN = re.compile(r"^[a-z0-9-]{1,64}$")


def _stainless_asked(requested: str | None) -> list[str]:
    """The x-stainless-* headers a preflight asks for that the fixed list lacks."""
    known = {h.strip() for h in _ALLOW_HEADERS.split(",")}
    asked = (h.strip().lower() for h in (requested or "").split(","))
    return [h for h in asked if h.startswith("x-stainless-") and h not in known and _TOKEN.match(h)]


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
    def __init__(self, app: ASGIApp, api_key: str | None, max_body: int, local: bool = True) -> None:
        """``local``: the server listens on localhost only (the Host header is checked)."""
        self.app, self.api_key, self.max_body, self.local = app, api_key, max_body, local

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        rid = new_request_id()
        scope.setdefault("state", {})["request_id"] = rid
        outer = send

        async def with_id(msg: Message) -> None:  # every answer names its request
            if msg["type"] == "http.response.start":
                msg = {**msg, "headers": [*msg.get("headers", []), (b"x-request-id", rid.encode())]}
            await outer(msg)

        send = with_id

        async def refuse(err: ApiError) -> None:
            await error_response(path, err)(scope, receive, send)

        if self.local and not _LOCAL.match(_header(scope, b"host") or ""):
            await refuse(ApiError(403, "this server answers requests addressed to localhost only", "host_not_allowed"))
            return
        origin = _header(scope, b"origin")
        local_origin = origin is not None and bool(_LOCAL_ORIGIN.match(origin) or _APP_ORIGIN.match(origin))
        if origin is not None and not local_origin and self.api_key is None:
            await refuse(ApiError(403, f"requests from web pages of {origin} are refused", "origin_not_allowed"))
            return
        cors = [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"origin")] if origin else []
        if scope["method"] == "OPTIONS" and origin is not None:  # a CORS preflight: no key sent with it
            headers = [*cors, *CORS_HEADERS]
            asked = _stainless_asked(_header(scope, b"access-control-request-headers"))
            if asked:  # x-stainless-* headers newer than our list
                headers[len(cors) + 1] = (b"access-control-allow-headers", ", ".join([_ALLOW_HEADERS, *asked]).encode())
            await send({"type": "http.response.start", "status": 204, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        if cors:
            inner = send

            async def send(msg: Message) -> None:
                if msg["type"] == "http.response.start":
                    msg = {**msg, "headers": [*msg.get("headers", []), *cors, CORS_HEADERS[2]]}
                await inner(msg)

        if self.api_key is not None:
            got = presented_key(scope)
            if got is None or not hmac.compare_digest(got.encode(), self.api_key.encode()):
                msg = "missing or wrong API key (send Authorization: Bearer KEY or x-api-key: KEY)"
                await refuse(ApiError(401, msg, "invalid_api_key", headers={"WWW-Authenticate": "Bearer"}))
                return
        length = _header(scope, b"content-length")
        try:
            too_big = length is not None and int(length) > self.max_body
        except ValueError:
            await refuse(ApiError(400, "bad Content-Length"))
            return
        if too_big:
            await refuse(too_large(self.max_body))
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


def new_request_id() -> str:
    return f"req-{uuid.uuid4().hex[:20]}"


def request_id(scope: Scope) -> str:
    """The id ``Guard`` gave this request (its X-Request-Id header and log lines)."""
    return str(scope.get("state", {}).get("request_id", "req-unknown"))


def too_large(limit: int) -> ApiError:
    return ApiError(413, f"request body larger than {limit / 2**20:g} MiB", "request_too_large")
