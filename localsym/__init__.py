"""localsym: a local, offline LLM runtime whose context grows without bound."""

__version__ = "0.1.0"
