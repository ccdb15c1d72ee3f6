"""The semantic signal: a question's meaning against each block's, by static word embeddings.

A question in words often shares no word with the code it is about ("write the bytecode
to a file" asked of ``dump``), where the lexical signal cannot see it. A transformer
embedding model would, but costs a model run per block on a CPU; WordLlama's static
embeddings (token vectors distilled from large LLMs' embedding codebooks, averaged)
cost a table lookup: ~0.25 ms a block, a 256-dim f16 vector each (512 bytes; 2 MB at
1M tokens), one matrix product a question. On `bench code` they found 70% of the asked
functions alone, and fused beside BM25 (weight 0.5) took source hit from 0.825 to 0.925
(ranking-only, 40 questions; README).

The weights and tokenizer ship inside the ``wordllama`` wheel; they are read from its
folder directly (its own loader tries the network first for its tokenizer file).

Code is not English: averaged, a block's identifiers and punctuation sit apart from the
sentence that describes them. A linear map learned from (docstring sentence, block of code)
pairs of other packages (``code_map.npz``, made by ``tools/train_code_map.py``; the bench's
packages never among them) moves a code block's vector toward its description; a block of
prose keeps its own. Stored vectors stay the plain averages: the map is applied when a
session's matrix is built, so a new map needs no rebuild.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np

from localsym.memory.lexical import STOP

log = logging.getLogger("localsym.retrieval")
T = TypeVar("T")

DIM = 256
WEIGHTS_FILE = "weights/l2_supercat_256.safetensors"
TOKENIZER_FILE = "tokenizers/l2_supercat_tokenizer_config.json"
POOL = 64  # candidates a question's vector brings to fusion
# a strong match, above the median block: on bench code's functions the best block sits
# 0.25-0.3 above (measured: on this absolute scale fused source hit 0.911, divided by the
# best 0.919), a sentence of a page of filler 0.53, the filler itself at most 0.04
STRONG = 0.3
MAX_CHARS = 20_000  # of a block's text embedded: a block is ~256 model tokens, this is slack

CODE_MAP_FILE = Path(__file__).with_name("code_map.npz")
CODE_MAP_VERSION = 1

_WORD = re.compile(r"[A-Za-z][A-Za-z'_]*|[0-9]+")
# words about the question, not its subject, beyond the lexical stop list
_ASKING = frozenset({"function's", "name", "names", "which", "what"})


class Embedder:
    """Mean of a text's WordLlama token vectors, unit length. Thread-safe (read-only)."""

    def __init__(self, folder: Path) -> None:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        self.table = load_file(str(folder / WEIGHTS_FILE))["embedding.weight"]  # [vocab, DIM] f16
        if self.table.ndim != 2 or self.table.shape[1] != DIM:
            raise ValueError(f"unexpected embedding table {self.table.shape}")
        self.tok = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
        self.tok.no_padding()
        self.tok.no_truncation()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """[len(texts), DIM] f32, unit rows (a text with no tokens: zeros)."""
        out = np.zeros((len(texts), DIM), np.float32)
        if not texts:
            return out
        encs = self.tok.encode_batch([t[:MAX_CHARS] for t in texts], add_special_tokens=False)
        n = len(self.table)
        for i, e in enumerate(encs):
            ids = np.clip(np.asarray(e.ids, np.int64), 0, n - 1)
            if len(ids):
                v = self.table[ids].astype(np.float32).mean(axis=0)
                norm = float(np.linalg.norm(v))
                if norm > 0:
                    out[i] = v / norm
        return out


class _Once(Generic[T]):
    """A value loaded on first use, or None, with one warning, where loading fails: a
    missing or broken part of this signal never fails a question."""

    def __init__(self, load: Callable[[], T], off: str) -> None:
        self._load, self._off = load, off
        self._lock = threading.Lock()
        self._value: T | None = None
        self._failed = False

    def get(self) -> T | None:
        if self._value is not None or self._failed:
            return self._value
        with self._lock:
            if self._value is None and not self._failed:
                try:
                    self._value = self._load()
                except Exception as e:  # tokenizers raises a bare Exception on a bad file
                    log.warning("%s: %s", self._off, e)
                    self._failed = True
        return self._value


def _load_embedder() -> Embedder:
    spec = importlib.util.find_spec("wordllama")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the wordllama package is not installed")
    return Embedder(Path(spec.origin).parent)


def _load_code_map() -> np.ndarray:
    with np.load(CODE_MAP_FILE) as f:  # a damaged file raises (zip, npy or JSON errors): the map is off
        meta = json.loads(str(f["meta"]))
        w = f["w"].astype(np.float32)
    if meta.get("version") != CODE_MAP_VERSION or w.shape != (DIM, DIM) or not np.isfinite(w).all():
        raise ValueError(f"{CODE_MAP_FILE.name} is not a version {CODE_MAP_VERSION} map of {DIM} x {DIM}")
    return w


_EMBEDDER = _Once(_load_embedder, "semantic signal off")
_CODE_MAP = _Once(_load_code_map, "semantic code map off")


def embedder() -> Embedder | None:
    """The process's embedder; None where the ``wordllama`` files are missing or unreadable:
    the other signals rank alone."""
    return _EMBEDDER.get()


def code_map() -> np.ndarray | None:
    """The code map W [DIM, DIM] f32; None where its file is missing, damaged or not this
    version's: code blocks then go by their plain vectors."""
    return _CODE_MAP.get()


def matrix(rows: np.ndarray, code: np.ndarray) -> np.ndarray:
    """Blocks' rows [n, DIM] as a question is scored against them: the rows of code blocks
    (``code``, a bool mask) through the code map and back to unit length."""
    m = rows.astype(np.float32)
    w = code_map()
    if w is not None and code.any():
        mapped = m[code] @ w
        norm = np.linalg.norm(mapped, axis=1, keepdims=True)
        m[code] = np.divide(mapped, norm, out=np.zeros_like(mapped), where=norm > 0)
    return m


def question_text(text: str) -> str:
    """A question's words that say what it is about: the words that ask ("which function
    in this code does the following") pull every question toward the same blocks."""
    return " ".join(w for w in _WORD.findall(text) if w.lower() not in STOP and w.lower() not in _ASKING)


def vectors(texts: Sequence[str]) -> np.ndarray | None:
    """Blocks' vectors as f16 [n, DIM], or None when the signal is off."""
    e = embedder()
    if e is None:
        return None
    try:
        return e.embed(texts).astype(np.float16)
    except Exception as err:  # a tokenizer error on odd text: this signal stays silent, the rest rank
        log.warning("semantic signal skipped: %s", err)
        return None


def scores(
    matrix: np.ndarray, query: np.ndarray, pool: int = POOL, code: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The ``pool`` best rows of ``matrix`` [n, DIM] for unit ``query``: (rows, scores in
    [0, 1]), best first. A score is the cosine above the median block's (cosines of averaged
    word vectors all sit high, 0.3-0.6), over ``STRONG``: on a scale of its own, not divided
    by the best, so that where nothing matches (a page of filler beside one fact: at most
    0.04 above the median) nothing scores high. With ``code`` (a bool mask: rows through the
    code map) the median is each kind's own: mapped and plain cosines sit at other levels."""
    if not len(matrix):
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    sims = matrix.astype(np.float32) @ query.astype(np.float32)
    base = np.full(len(sims), float(np.median(sims)), np.float32)
    if code is not None and code.any() and not code.all():
        base[code], base[~code] = np.median(sims[code]), np.median(sims[~code])
    top = np.argsort(-sims, kind="stable")[:pool]
    s = np.minimum(np.maximum(sims[top] - base[top], 0.0) / STRONG, 1.0)
    keep = s > 0
    return top[keep].astype(np.int64), s[keep].astype(np.float32)
