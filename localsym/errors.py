"""User-facing errors: the CLI prints these as one line, never a traceback."""


class LocalsymError(Exception):
    """An error whose message is meant for the user as it stands."""


class ModelNotFound(LocalsymError):
    """No model by that name or path is known or present."""


class BadModelFile(LocalsymError):
    """A file that is not a usable GGUF (truncated, wrong magic, unreadable)."""


class BudgetError(LocalsymError):
    """A request that does not fit the RAM/VRAM/disk budget."""
