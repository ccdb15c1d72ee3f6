"""Embeddings: OpenAI's /v1/embeddings, Ollama's /api/embed and its older /api/embeddings.

Vectors come from one embedding context of the served model (``bridge.Embedder``: the mean
of the last hidden state over a text's tokens), on the weights the chat sessions share. It
is opened on first use, serves one request at a time (others wait in a bounded queue, as a
session's do), runs in the pool's worker threads and stops when its client leaves. It
touches no session's memory.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from localsym.runtime.bridge import Cancelled, Embedder, Model
from localsym.server.errors import ApiError, ClientGone
from localsym.server.inputs import integer, read_json
from localsym.server.sessions import POLL_S, Gone, SessionPool, _lock, settle
from localsym.server.settings import DEFAULT_EMBED_CTX, ServerSettings

if TYPE_CHECKING:
    from localsym.server.state import ServerState

T = TypeVar("T")
MAX_INPUTS = 2048  # OpenAI's bound on inputs per request
MAX_TOKENS = 300_000  # OpenAI's bound on tokens per request, all inputs together
Item = str | list[int]  # a text, or a text as token ids


class EmbedService:
    """The served model's embedding context, opened on first use."""

    def __init__(self, settings: ServerSettings, pool: SessionPool) -> None:
        self.settings, self.pool = settings, pool
        self.embedder: Embedder | None = None
        self.admitted = 0  # requests running or waiting
        self._lock: asyncio.Lock | None = None

    @property
    def lock(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    def _open(self) -> Embedder:
        """(worker thread) The context, on the weights the sessions use: the loaded copy when
        one is, else loaded where a session would place it (so a session opened later finds
        it: ``Model.shared`` keys on the placement)."""
        from localsym.model_store import resolve
        from localsym.runtime.engine import make_plan, planned_windows
        from localsym.runtime.model_info import model_info

        path = resolve(self.settings.model)
        model = Model.loaded(path)
        if model is None:
            info = model_info(path)
            usage = None
            if info.is_moe:
                from localsym.experts.live import learned_usage
                from localsym.model_store import identity

                usage = learned_usage(identity(path), info.n_layer, info.n_expert)
            # planned as the sessions' engines are (--parallel N windows; one for a MoE model,
            # whose sessions watch its routing), so that both choose one placement and share
            # one copy of the weights
            parallel = planned_windows(self.settings.opts, routed=info.is_moe)
            plan = make_plan(info, self.settings.opts, usage, parallel=parallel)
            model = Model.shared(path, n_gpu_layers=plan.n_gpu_layers, n_cpu_moe=plan.cpu_moe_layers or plan.n_cpu_moe)
        n_ctx = self.settings.embed_ctx or DEFAULT_EMBED_CTX
        return Embedder(model, n_ctx, n_threads=self.settings.opts.n_threads)

    async def run(self, work: Callable[[Embedder], T], gone: Gone) -> tuple[T, float]:
        """``work(embedder)`` in a worker thread once every earlier request is done; with
        the seconds spent opening the context first (0 when it was open). Raises ApiError
        (503 when too many wait) or ClientGone (the client left: the work is stopped)."""
        # one request runs and ``queue`` wait, counted from admission to the end: the lock
        # alone misses a request granted it but not yet resumed (a burst refused one too many)
        if self.admitted > self.settings.queue:
            raise self.pool.busy("the embedding context is busy")
        self.admitted += 1
        try:
            return await self._run(work, gone)
        finally:
            self.admitted -= 1

    async def _run(self, work: Callable[[Embedder], T], gone: Gone) -> tuple[T, float]:
        await _lock(self.lock, gone)
        try:
            loop = asyncio.get_running_loop()
            load_s = 0.0
            if self.embedder is None:
                t0 = time.monotonic()
                self.embedder = await settle(loop.run_in_executor(self.pool.executor, self._open))
                load_s = time.monotonic() - t0
            emb = self.embedder
            job = loop.run_in_executor(self.pool.executor, work, emb)
            try:
                while not job.done():
                    done, _ = await asyncio.wait({job}, timeout=POLL_S)
                    if not done and await gone():
                        emb.cancel()  # the decode stops at its next graph split
                return job.result(), load_s
            except Cancelled:
                raise ClientGone() from None
            except BaseException:
                if not job.done():  # this request was cancelled: stop the work, wait for it
                    emb.cancel()
                    with anyio.CancelScope(shield=True):
                        await asyncio.wait({job})
                raise
        finally:
            self.lock.release()

    async def close_idle(self) -> bool:
        """Ollama's ``keep_alive: 0``: free the context (and its use of the weights) unless
        a request holds or waits for it. Whether it was closed."""
        if self.embedder is None or self.admitted:
            return False
        async with self.lock:
            emb, self.embedder = self.embedder, None
            if emb is not None:
                await settle(asyncio.get_running_loop().run_in_executor(self.pool.executor, emb.close))
        return emb is not None

    def close(self) -> None:
        """At shutdown, after the workers are done."""
        emb, self.embedder = self.embedder, None
        if emb is not None:
            emb.close()


# -- reading requests -----------------------------------------------------------------------------
def _is_ids(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in v)


def openai_input(v: Any) -> list[Item]:
    """OpenAI's ``input``: a string, a list of strings, a list of token ids, or a list of
    lists of token ids."""
    shapes = "a string, a list of strings, a list of token ids or a list of lists of token ids"
    if isinstance(v, str):
        items: list[Item] = [v]
    elif isinstance(v, list) and v and all(isinstance(x, str) for x in v):
        items = list(v)
    elif isinstance(v, list) and v and _is_ids(v):
        items = [list(v)]
    elif isinstance(v, list) and v and all(isinstance(x, list) and _is_ids(x) for x in v):
        items = [list(x) for x in v]
    elif isinstance(v, list) and not v:
        raise ApiError(400, "input must not be empty", param="input")
    else:
        raise ApiError(400, f"input must be {shapes}", param="input")
    _bound(items)
    for i, it in enumerate(items):
        if not it:
            raise ApiError(400, f"input[{i}] is empty", param="input")
    return items


def ollama_input(v: Any) -> list[Item]:
    """Ollama's ``input``: a string or a list of strings; none (or "") loads the model only."""
    if v is None or v == "":
        return []
    if isinstance(v, str):
        return [v]
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ApiError(400, "input must be a string or a list of strings")
    _bound(v)
    return list(v)


def _bound(items: list[Any]) -> None:
    if len(items) > MAX_INPUTS:
        raise ApiError(400, f"{len(items)} inputs: at most {MAX_INPUTS} per request", param="input")


def _flag(body: dict[str, Any], key: str, default: bool) -> bool:
    v = body.get(key)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise ApiError(400, f"{key} must be true or false", param=key)
    return v


def _dimensions(body: dict[str, Any], n_embd: int) -> None:
    d = integer(body, "dimensions", 1, 1 << 20)
    if d is not None and d != n_embd:
        raise ApiError(
            400, f"dimensions must be {n_embd}: this model's vectors cannot be shortened", param="dimensions"
        )


def _tokens(emb: Embedder, items: list[Item], truncate: bool) -> list[list[int]]:
    """(worker thread) Each input as the token ids the context embeds: a text tokenized as
    the model frames it (its BOS when it adds one); past the context, cut (``truncate``) or
    refused."""
    out = []
    total = 0
    for i, it in enumerate(items):
        toks = emb.model.tokenize(it, add_special=True) if isinstance(it, str) else it
        if len(toks) > emb.n_ctx:
            if not truncate:
                raise ApiError(
                    400,
                    f"input[{i}] is {len(toks)} tokens, longer than the embedding context "
                    f"({emb.n_ctx} tokens): shorten it",
                    "context_length_exceeded",
                    param="input",
                )
            toks = toks[: emb.n_ctx]
        if not toks:
            raise ApiError(400, f"input[{i}] is empty", param="input")
        if isinstance(it, list):
            lo, hi = min(toks), max(toks)
            if lo < 0 or hi >= emb.n_vocab:
                raise ApiError(
                    400,
                    f"input[{i}]: token id {lo if lo < 0 else hi} is outside the vocabulary (0 to {emb.n_vocab - 1})",
                    param="input",
                )
        total += len(toks)
        if total > MAX_TOKENS:
            raise ApiError(400, f"the inputs hold more than {MAX_TOKENS} tokens: send fewer at once", param="input")
        out.append(toks)
    return out


def _embed(items: list[Item], truncate: bool, n_embd_check: Callable[[int], None] | None = None):
    def work(emb: Embedder) -> tuple[np.ndarray, int]:
        if n_embd_check is not None:
            n_embd_check(emb.n_embd)
        toks = _tokens(emb, items, truncate)
        return (emb.embed(toks) if toks else np.zeros((0, emb.n_embd), np.float32)), sum(map(len, toks))

    return work


def unit(vectors: np.ndarray) -> np.ndarray:
    """Each row scaled to length 1 (a zero row stays zero)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


# -- routes ---------------------------------------------------------------------------------------
async def openai_embeddings(request: Request) -> Response:
    st: ServerState = request.app.state.server
    body = await read_json(request, st.settings.max_body)
    st.check_model(body.get("model"))
    items = openai_input(body.get("input"))
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise ApiError(400, 'encoding_format must be "float" or "base64"', param="encoding_format")
    integer(body, "dimensions", 1, 1 << 20)  # its type, before any work

    def check(n_embd: int) -> None:
        _dimensions(body, n_embd)

    try:
        (vectors, n_tokens), _ = await st.embeddings.run(_embed(items, False, check), request.is_disconnected)
    except ClientGone:
        return Response(status_code=499)
    vectors = unit(vectors)

    def encoded(v: np.ndarray) -> Any:
        return base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") if fmt == "base64" else v.tolist()

    data = [{"object": "embedding", "index": i, "embedding": encoded(v)} for i, v in enumerate(vectors)]
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "model": st.card.name,
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
        }
    )


def _ollama_common(body: dict[str, Any]) -> None:
    opts = body.get("options")
    if opts is not None and not isinstance(opts, dict):
        raise ApiError(400, "options must be an object")


async def _keep_alive(st: ServerState, body: dict[str, Any]) -> None:
    from localsym.server.ollama_api import _keep_alive_zero  # it imports the state, which imports this

    if _keep_alive_zero(body.get("keep_alive")):
        await st.embeddings.close_idle()


async def ollama_embed(request: Request) -> Response:
    """``{model, input, truncate, options, keep_alive, dimensions}``: unit vectors, as Ollama's."""
    t0 = time.monotonic()
    st: ServerState = request.app.state.server
    body = await read_json(request, st.settings.max_body)
    st.check_model(body.get("model"))
    items = ollama_input(body.get("input"))
    truncate = _flag(body, "truncate", True)
    _ollama_common(body)
    integer(body, "dimensions", 1, 1 << 20)

    def check(n_embd: int) -> None:
        _dimensions(body, n_embd)

    try:
        (vectors, n_tokens), load_s = await st.embeddings.run(_embed(items, truncate, check), request.is_disconnected)
    except ClientGone:
        return Response(status_code=499)
    await _keep_alive(st, body)
    return JSONResponse(
        {
            "model": body.get("model") or st.card.name,
            "embeddings": unit(vectors).tolist(),
            "total_duration": int((time.monotonic() - t0) * 1e9),
            "load_duration": int(load_s * 1e9),
            "prompt_eval_count": n_tokens,
        }
    )


async def ollama_embeddings(request: Request) -> Response:
    """The older ``{model, prompt}`` -> ``{embedding}``: one vector, not normalized (as Ollama's)."""
    st: ServerState = request.app.state.server
    body = await read_json(request, st.settings.max_body)
    st.check_model(body.get("model"))
    prompt = body.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise ApiError(400, "prompt must be a string")
    _ollama_common(body)
    items: list[Item] = [prompt] if prompt else []
    try:
        (vectors, _n), _ = await st.embeddings.run(
            _embed(items, _flag(body, "truncate", True)), request.is_disconnected
        )
    except ClientGone:
        return Response(status_code=499)
    await _keep_alive(st, body)
    return JSONResponse({"embedding": vectors[0].tolist() if len(vectors) else []})
