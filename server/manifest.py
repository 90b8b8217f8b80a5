"""Ollama's manifest, layer and config formats (spec/ollama-api.md §13.2-§13.5).

A manifest names a config blob and typed layers by `sha256:<hex>` digest. Blobs Ollama writes
are byte-exact Go JSON (server/gojson.py), so identical inputs give identical digests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from engine.gguf.reader import GGUFFile
from server import gojson

MEDIA_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_MODEL = "application/vnd.ollama.image.model"
MEDIA_PROJECTOR = "application/vnd.ollama.image.projector"
MEDIA_ADAPTER = "application/vnd.ollama.image.adapter"
MEDIA_TEMPLATE = "application/vnd.ollama.image.template"
MEDIA_PROMPT = "application/vnd.ollama.image.prompt"  # legacy name for a template
MEDIA_SYSTEM = "application/vnd.ollama.image.system"
MEDIA_PARAMS = "application/vnd.ollama.image.params"
MEDIA_MESSAGES = "application/vnd.ollama.image.messages"
MEDIA_LICENSE = "application/vnd.ollama.image.license"

# GGUF general.file_type value -> Ollama's name (§13.4). 0 and absent give "unknown".
FILE_TYPES: dict[int, str] = {
    1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
    12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M",
    18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS",
    24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M",
    30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4_MOE",
    39: "NVFP4", 40: "Q1_0",
}  # fmt: skip


@dataclass(frozen=True)
class Layer:
    """One manifest entry: `from_` is Ollama's `from` (source model or file), omitted if empty."""

    media_type: str
    digest: str  # "sha256:<hex>"
    size: int
    from_: str = ""
    name: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest}
        out["size"] = self.size
        if self.from_:
            out["from"] = self.from_
        if self.name:
            out["name"] = self.name
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Layer:
        return cls(
            media_type=str(obj.get("mediaType", "")),
            digest=str(obj.get("digest", "")),
            size=int(obj.get("size", 0)),
            from_=str(obj.get("from", "") or ""),
            name=str(obj.get("name", "") or ""),
        )


@dataclass(frozen=True)
class Manifest:
    config: Layer
    layers: tuple[Layer, ...]

    @property
    def blobs(self) -> tuple[Layer, ...]:
        """Layers then config: the order pull and push walk them in (§14)."""
        return (*self.layers, self.config)

    def encode(self, newline: bool = True) -> bytes:
        """Compact JSON; stored files end in a newline, pushed bodies do not (Go's Marshal)."""
        obj = {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": self.config.to_json(),
            "layers": [layer.to_json() for layer in self.layers],
        }
        return gojson.encode_line(obj) if newline else gojson.encode(obj).encode("utf-8")

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        obj = json.loads(data)
        if not isinstance(obj, dict) or not isinstance(obj.get("config"), dict):
            raise ValueError("manifest is not a JSON object with a config")
        layers = obj.get("layers") or []
        return cls(Layer.from_json(obj["config"]), tuple(Layer.from_json(x) for x in layers))


def human_number(n: int) -> str:
    """Ollama's format.HumanNumber: 134515008 -> "134.52M", 7e9 -> "7B" (§13.4)."""
    if n >= 1_000_000_000:
        x = n / 1_000_000_000
        return f"{x:.0f}B" if x == int(x) else f"{x:.1f}B"
    if n >= 1_000_000:
        x = n / 1_000_000
        return f"{x:.0f}M" if x == int(x) else f"{x:.2f}M"
    if n >= 1_000:
        return f"{n / 1_000:.0f}K"
    return str(n)


def file_type_name(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return FILE_TYPES.get(value, "unknown")
    return "unknown"


# The config blob's keys in Ollama's struct order (§13.4); omitted when empty, except the first
# five and the last two.
CONFIG_KEYS = (
    "model_format", "model_family", "model_families", "model_type", "file_type", "renderer",
    "parser", "requires", "remote_host", "remote_model", "capabilities", "context_length",
    "embedding_length", "base_name", "draft", "architecture", "os",
)  # fmt: skip
_CONFIG_ALWAYS = ("model_format", "model_family", "model_families", "model_type", "file_type",
                  "architecture", "os")  # fmt: skip


def ordered_config(config: dict[str, Any]) -> dict[str, Any]:
    """`config` with Ollama's key order, empty optional keys dropped, unknown keys ignored."""
    return {k: config.get(k) for k in CONFIG_KEYS if k in _CONFIG_ALWAYS or config.get(k)}


def config_from_gguf(gguf: GGUFFile, inherit: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config blob's object (§13.4) for a model layer, in Ollama's key order.

    `inherit` is the source model's config when creating `from` another model: its renderer,
    parser, requires and capabilities carry over.
    """
    arch = gguf.metadata.get("general.architecture")
    family = arch if isinstance(arch, str) and arch else "unknown"
    n_params = sum(t.n_elements for t in gguf.tensors.values())
    config: dict[str, Any] = {
        "model_format": "gguf",
        "model_family": family,
        "model_families": [family],
        "model_type": human_number(n_params),
        "file_type": file_type_name(gguf.metadata.get("general.file_type")),
    }
    for key in ("renderer", "parser", "requires", "capabilities"):
        if inherit and inherit.get(key):
            config[key] = inherit[key]
    config["architecture"] = "amd64"
    config["os"] = "linux"
    return config


_MESSAGE_KEYS = ("role", "content", "thinking", "images", "tool_calls", "tool_name", "tool_call_id")


def encode_params(parameters: dict[str, Any]) -> bytes:
    """The params blob: sorted keys, Go number forms, trailing newline (§13.5)."""
    return gojson.encode_line(gojson.as_go_any(parameters))


def encode_messages(messages: list[dict[str, Any]]) -> bytes:
    """The messages blob: role and content always, other keys only when non-empty (§13.5)."""
    out = []
    for m in messages:
        obj = {"role": m.get("role", ""), "content": m.get("content", "")}
        obj.update({k: m[k] for k in _MESSAGE_KEYS[2:] if m.get(k)})
        out.append(obj)
    return gojson.encode_line(out)
