"""The one model this server runs, described once at start, and the names requests may use
for it; the session pool beside it."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localsym.errors import LocalsymError
from localsym.server.embeddings import EmbedService
from localsym.server.errors import ApiError
from localsym.server.sessions import SessionPool
from localsym.server.settings import ServerSettings
from localsym.session import describe_model, models


@dataclass
class ModelCard:
    name: str  # what clients call it
    path: Path
    size: int
    digest: str
    modified: float
    details: dict[str, Any] = field(default_factory=dict)
    n_ctx: int = 0  # the hot context each session gets
    gpu_layers: int = 0

    @classmethod
    def of(cls, model: str, settings: ServerSettings) -> ModelCard:
        """Described from its header alone: starting the server loads no weights."""
        path = models.resolve(model)
        entry = next((m for m in models.list_models() if m.name == model or Path(m.path) == path), None)
        name = entry.name if entry else path.stem
        d = describe_model(model, settings.opts)
        n = d.get("n_params") or 0
        size = f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"
        details = {
            "parent_model": "",
            "format": "gguf",
            "family": d.get("architecture", ""),
            "families": [d.get("architecture", "")],
            "parameter_size": size,
            "quantization_level": str(d.get("file_type", "")),
        }
        st = os.stat(path)
        plan = d.get("plan", {})
        return cls(
            name,
            path,
            st.st_size,
            entry.sha256 if entry else "",
            st.st_mtime,
            details,
            int(plan.get("n_ctx") or 0),
            int(plan.get("n_gpu_layers") or 0),
        )

    def names(self) -> set[str]:
        return {self.name, f"{self.name}:latest"}


class ServerState:
    def __init__(self, settings: ServerSettings, card: ModelCard) -> None:
        self.settings, self.card = settings, card
        self.pool = SessionPool(settings)
        self.embeddings = EmbedService(settings, self.pool)
        self.started = time.time()

    @classmethod
    def create(cls, settings: ServerSettings) -> ServerState:
        try:
            return cls(settings, ModelCard.of(settings.model, settings))
        except LocalsymError:
            raise
        except OSError as e:
            raise LocalsymError(f"cannot read model {settings.model!r}: {e.strerror}") from None

    def check_model(self, name: Any) -> None:
        """A request's ``model``: absent, or one of this server's names (404 otherwise)."""
        if name is None or name == "":
            return
        if not isinstance(name, str):
            raise ApiError(400, "model must be a string", param="model")
        if name not in self.card.names():
            raise ApiError(
                404,
                f"model {name!r} not found: this server runs {self.card.name!r} "
                f"(restart `localsym serve --model {name}` for another)",
                "model_not_found",
                param="model",
            )
