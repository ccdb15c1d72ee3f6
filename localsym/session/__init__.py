"""The session floor: the one API every face (CLI, TUI, server) and benchmark stands on.

Faces import from here (plus ``localsym.config``, ``localsym.paths`` and
``localsym.errors``), never from ``memory``, ``runtime`` or ``kernels_numba``.
"""

from localsym import model_store as models
from localsym.catalog import default_model, load_catalog
from localsym.memory.kv_quant import mix_summary
from localsym.runtime.bridge import Cancelled, cancel_all
from localsym.runtime.chat_template import ChatTemplate
from localsym.runtime.engine import GenParams, GenStats, RunOptions
from localsym.runtime.grammar import json_grammar, tool_call_grammar
from localsym.runtime.limits import MIN_CTX, check_ctx, check_threads, raised_note, session_min_ctx
from localsym.session._catalog import (
    delete_session,
    is_set_aside,
    list_sessions,
    open_sessions,
    rename_session,
    session_dir,
    session_exists,
    session_settings,
    set_aside,
)
from localsym.session._config import DEFAULT_SYSTEM, SessionConfig, check_value, resolve_config
from localsym.session._conversation import ConversationTurn
from localsym.session._oneshot import OneShot, PlainModel, Tokenizer, describe_model, model_card
from localsym.session._remote import ChatSession, ChatTurn, InProcess, Sessions, cancel_remote, connect, gen_stats
from localsym.session._reports import LoadReport, Progress, SessionStatus, TurnStats, source_label
from localsym.session._session import Session, SessionBusy, Turn
from localsym.session._storage import prune_blocks, remove_model

__all__ = [
    "Cancelled",
    "cancel_all",
    "cancel_remote",
    "ChatSession",
    "ChatTurn",
    "connect",
    "gen_stats",
    "InProcess",
    "Sessions",
    "ChatTemplate",
    "ConversationTurn",
    "json_grammar",
    "tool_call_grammar",
    "DEFAULT_SYSTEM",
    "GenParams",
    "default_model",
    "load_catalog",
    "models",
    "GenStats",
    "LoadReport",
    "OneShot",
    "PlainModel",
    "Progress",
    "RunOptions",
    "Session",
    "SessionBusy",
    "SessionConfig",
    "SessionStatus",
    "Tokenizer",
    "Turn",
    "TurnStats",
    "check_value",
    "delete_session",
    "describe_model",
    "list_sessions",
    "mix_summary",
    "model_card",
    "open_sessions",
    "prune_blocks",
    "remove_model",
    "rename_session",
    "resolve_config",
    "session_dir",
    "session_exists",
    "source_label",
    "session_settings",
    "is_set_aside",
    "set_aside",
    "MIN_CTX",
    "check_ctx",
    "check_threads",
    "raised_note",
    "session_min_ctx",
]
