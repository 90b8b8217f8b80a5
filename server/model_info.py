"""What /api/tags and /api/show report about a model's GGUF: capabilities, `model_info`,
tensors (spec/ollama-api.md §11.1, §11.2). Facts are cached per blob, which never changes."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFValueType

from engine.chat.templates import load_template
from engine.errors import TemplateError
from engine.gguf.reader import GGUFFile
from server.store import ModelRecord


@dataclass(frozen=True)
class GGUFFacts:
    """The few GGUF values /api/tags needs, cached per blob (blobs never change)."""

    has_pooling: bool
    has_vision: bool
    has_audio: bool
    context_length: int
    embedding_length: int
    file_type: int
    chat_template: str | None


@functools.lru_cache(maxsize=128)
def gguf_facts(path: Path) -> GGUFFacts:
    meta = GGUFFile(path).metadata
    arch = str(meta.get("general.architecture", ""))
    template = meta.get("tokenizer.chat_template")

    def integer(key: str) -> int:
        value = meta.get(key, 0)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    return GGUFFacts(
        has_pooling=f"{arch}.pooling_type" in meta,
        has_vision=f"{arch}.vision.block_count" in meta,
        has_audio=f"{arch}.audio.block_count" in meta,
        context_length=integer(f"{arch}.context_length"),
        embedding_length=integer(f"{arch}.embedding_length"),
        file_type=integer("general.file_type"),
        chat_template=template if isinstance(template, str) and template else None,
    )


@functools.lru_cache(maxsize=128)
def template_capabilities(go_template: str | None, jinja_template: str | None) -> tuple[str, ...]:
    """`tools`, `insert`, `thinking` from the template the model is served with (§11.2.3, 5).

    That is the TEMPLATE layer, else the GGUF's Jinja chat template (engine/chat/templates.py).
    """
    try:
        return load_template(go_template, jinja_template).capabilities
    except TemplateError:
        return ()


def capabilities(record: ModelRecord) -> list[str]:
    """The model's capabilities in Ollama's order, without duplicates (§11.2.3)."""
    caps: list[str] = [str(c) for c in record.config.get("capabilities") or []]
    facts = gguf_facts(record.gguf_path)
    caps.append("embedding" if facts.has_pooling else "completion")
    if facts.has_vision:
        caps.append("vision")
    if facts.has_audio:
        caps.append("audio")
    if record.projectors:
        caps.append("vision")
    caps += template_capabilities(record.template, facts.chat_template)
    return list(dict.fromkeys(caps))


def _metadata_value(value: Any, vtype: Any, verbose: bool) -> Any:
    if vtype.type == GGUFValueType.ARRAY:
        if len(value) and not verbose:
            return None
        items = value.tolist() if isinstance(value, np.ndarray) else list(value)
        if vtype.element == GGUFValueType.FLOAT32:
            items = [_float32(x) for x in items]
        return items
    if vtype.type == GGUFValueType.FLOAT32:
        return _float32(value)
    return value


def _float32(x: float) -> float | None:
    # Go marshals a float32 with its own shortest digits: 9.999999747378752e-06 prints 1e-05.
    return float(str(np.float32(x))) if math.isfinite(x) else None


def model_info(gguf: GGUFFile, verbose: bool) -> dict[str, Any]:
    """/api/show `model_info`: GGUF metadata minus the name and chat template (§11.2.2)."""
    info = {
        key: _metadata_value(value, gguf.metadata_types[key], verbose)
        for key, value in gguf.metadata.items()
        if key not in ("general.name", "tokenizer.chat_template")
    }
    info["general.parameter_count"] = sum(t.n_elements for t in gguf.tensors.values())
    return info


def tensor_list(gguf: GGUFFile) -> list[dict[str, Any]]:
    return [
        {"name": t.name, "type": t.ggml_type.name, "shape": list(reversed(t.shape))}
        for t in gguf.tensors.values()
    ]
