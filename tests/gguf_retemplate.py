"""A real model with another chat template: a copy of a GGUF whose ``tokenizer.chat_template``
is replaced (gguf's own ``gguf_new_metadata`` copy: every other key and every tensor as they
were), e.g. SmolLM2 with Qwen 2.5's template, which can express tools and shares its ChatML
markup. ``with_metadata`` does the same for any keys (SmolLM2 naming three of its control
tokens as fill-in-the-middle markers)."""

from __future__ import annotations

import logging
from pathlib import Path

import gguf
from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata


def with_metadata(src: Path, dst: Path, new: dict[str, MetadataDetails]) -> Path:
    logging.getLogger("gguf-new-metadata").setLevel(logging.WARNING)
    reader = gguf.GGUFReader(src, "r")
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(str(dst), arch=arch, endianess=reader.endianess)
    copy_with_new_metadata(reader, writer, new, [])
    return dst


def with_template(src: Path, dst: Path, template: str) -> Path:
    return with_metadata(
        src, dst, {gguf.Keys.Tokenizer.CHAT_TEMPLATE: MetadataDetails(gguf.GGUFValueType.STRING, template)}
    )
