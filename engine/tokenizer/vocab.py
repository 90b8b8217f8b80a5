"""The vocabulary as llama.cpp sees it: tokens, attributes, special ids, flags, EOG set.

Follows llama.cpp `llama_vocab::impl::load` (src/llama-vocab.cpp); spec: gguf-and-models.md
sections 6.1-6.3 and 6.8. Only `tokenizer.ggml.*` (plus `general.name`/`general.architecture`
for the per-model strip attributes) is read; no tensor data is touched.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.errors import TokenizerError
from engine.tokenizer.pretokenizers import PreTokenizer, pre_tokenizer

log = logging.getLogger(__name__)


class TokenType(enum.IntEnum):
    """`tokenizer.ggml.token_type` values (llama.h `llama_token_type`)."""

    UNDEFINED = 0
    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


class Attr(enum.IntFlag):
    """llama.cpp's per-token attribute bits (llama.h `llama_token_attr`)."""

    UNDEFINED = 0
    UNKNOWN = 1 << 0
    UNUSED = 1 << 1
    NORMAL = 1 << 2
    CONTROL = 1 << 3
    USER_DEFINED = 1 << 4
    BYTE = 1 << 5
    LSTRIP = 1 << 7
    RSTRIP = 1 << 8


# Attributes are kept as plain ints in the per-token lists: IntFlag arithmetic on 262k tokens
# costs a noticeable part of the build time.
_ATTR_BY_TYPE = {
    TokenType.UNDEFINED: Attr.UNDEFINED,
    TokenType.NORMAL: Attr.NORMAL,
    TokenType.UNKNOWN: Attr.UNKNOWN,
    TokenType.CONTROL: Attr.CONTROL,
    TokenType.USER_DEFINED: Attr.USER_DEFINED,
    TokenType.UNUSED: Attr.UNUSED,
    TokenType.BYTE: Attr.BYTE,
}
_ATTR_OF_TYPE = [int(_ATTR_BY_TYPE[t]) for t in sorted(TokenType)]  # indexed by type value
SPACE_MARK = "\u2581"  # ▁, SentencePiece's visible space (SPM, WPM and Gemma 4 pieces)
SPECIAL = int(Attr.CONTROL | Attr.UNKNOWN)  # hidden unless rendered/parsed "special"
SPLIT_OUT = int(Attr.CONTROL | Attr.USER_DEFINED | Attr.UNKNOWN)  # matched before the model

# FIM tokens auto-detected by text when the GGUF key is absent (the first match, here by id,
# is forced to CONTROL); pad / repo / file-separator also end generation.
_FIM_TEXTS = {
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>")
    + ("▁<PRE>", "<|code_prefix|>", "<|prefix|>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>")
    + ("▁<SUF>", "<|code_suffix|>", "<|suffix|>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>")
    + ("▁<MID>", "<|code_middle|>", "<|middle|>"),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}
_FIM_EOG = ("fim_pad", "fim_rep", "fim_sep")
# Every token with one of these texts ends generation (llama.cpp `special_eog_ids`).
EOG_TEXTS = frozenset(
    (
        *("<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>"),
        *("<|calls|>", "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>"),
        *("_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>", "<end_of_utterance>", "<eos>"),
        *("<turn|>", "<|tool_response>", "<｜end▁of▁sentence｜>", "[e~["),
    )
)
_ALWAYS_RENDERED = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")  # gpt-oss

# Defaults per tokenizer model: (bos, eos, unk, sep, add_bos, add_eos, add_space_prefix).
_DEFAULTS: dict[str, tuple[int | None, int | None, int | None, int | None, bool, bool, bool]] = {
    "llama": (1, 2, 0, None, True, False, True),
    "bert": (101, None, 100, 102, True, False, False),
    "gpt2": (11, 11, None, None, False, False, False),
    "gemma4": (None, None, None, None, True, False, False),
}


@dataclass(frozen=True)
class Vocab:
    """Everything the tokenizer needs from the metadata, resolved as llama.cpp resolves it."""

    model: str  # tokenizer.ggml.model: "gpt2" (BPE), "llama" (SPM) or "bert" (WPM)
    pre: str  # tokenizer.ggml.pre ("default" when absent)
    tokens: list[str]  # text by id
    ids: dict[str, int]  # id by text
    scores: np.ndarray | None  # (V,) float32, SPM merge priority
    attrs: list[int]  # Attr bits by id, after llama.cpp's text-based overrides
    merges: list[tuple[str, str]]  # BPE merges in rank order (empty for SPM/WPM)
    bos_id: int | None
    eos_id: int | None
    unk_id: int | None
    sep_id: int | None
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool
    lowercase: bool  # WPM normalizer
    strip_accents: bool  # WPM normalizer
    eog_ids: frozenset[int]
    pre_tokenizer: PreTokenizer | None  # BPE only

    @property
    def special_ids(self) -> list[int]:
        """CONTROL, USER_DEFINED and UNKNOWN tokens: split out of the text before the model."""
        return [i for i, a in enumerate(self.attrs) if a & SPLIT_OUT]


def _get(meta: Mapping[str, Any], key: str, kind: type, default: Any = None) -> Any:
    value = meta.get(key, default)
    if value is not default and not isinstance(value, kind):
        raise TokenizerError(f"{key} must be {kind.__name__}, got {type(value).__name__}")
    return value


def _tokens(meta: Mapping[str, Any]) -> list[str]:
    tokens = meta.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise TokenizerError("tokenizer.ggml.tokens is missing or not a string array")
    # llama.cpp renames empty tokens so that every text maps to one id.
    return [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]


def _array(meta: Mapping[str, Any], key: str, n: int) -> np.ndarray | None:
    value = meta.get(key)
    if value is None:
        return None
    if not isinstance(value, np.ndarray) or len(value) < n:
        raise TokenizerError(f"{key} must be a numeric array of at least {n} entries")
    return value[:n]


def _special_id(meta: Mapping[str, Any], name: str, default: int | None, n: int) -> int | None:
    """A `tokenizer.ggml.<name>_token_id`; out-of-vocabulary ids keep the default."""
    if default is not None and default >= n:
        default = None
    value = _get(meta, f"tokenizer.ggml.{name}_token_id", int)
    if value is None:
        return default
    if not 0 <= value < n:
        log.warning("bad special token %s = %d, using default %s", name, value, default)
        return default
    return value


def _first_with_text(ids: Mapping[str, int], texts: Sequence[str]) -> int | None:
    found = [ids[t] for t in texts if t in ids]
    return min(found) if found else None


def load_vocab(meta: Mapping[str, Any]) -> Vocab:
    """Resolve the tokenizer metadata of a GGUF file the way llama.cpp does at load time."""
    model = _get(meta, "tokenizer.ggml.model", str)
    if model is None:
        raise TokenizerError("tokenizer.ggml.model is missing")
    if model not in _DEFAULTS:
        raise TokenizerError(
            f"unsupported tokenizer.ggml.model={model!r}; supported: {', '.join(_DEFAULTS)}"
        )
    pre = _get(meta, "tokenizer.ggml.pre", str) or "default"
    tokens = _tokens(meta)
    n = len(tokens)
    ids = {t: i for i, t in enumerate(tokens)}
    if len(ids) != n:
        dup = next(t for i, t in enumerate(tokens) if ids[t] != i)
        raise TokenizerError(
            f"duplicate token in vocabulary: {dup!r} has ids {tokens.index(dup)} and {ids[dup]}"
        )

    bos, eos, unk, sep, add_bos, add_eos, add_space_prefix = _DEFAULTS[model]
    pretok = None
    merges: list[tuple[str, str]] = []
    if model == "gpt2":
        pretok = pre_tokenizer(pre)
        add_bos = pretok.add_bos
        merges = _merges(meta)
    elif model == "gemma4":  # llama.cpp: BPE whose pre-tokenizer is always gemma4
        pretok = pre_tokenizer("gemma4")
        merges = _merges(meta)

    types = _array(meta, "tokenizer.ggml.token_type", n)
    if types is None:
        attrs = [int(Attr.NORMAL)] * n
    else:
        attrs = [_ATTR_OF_TYPE[t] if 0 <= t <= 6 else 0 for t in types.tolist()]
    scores = _array(meta, "tokenizer.ggml.scores", n)

    bos_id = _special_id(meta, "bos", bos, n)
    eos_id = _special_id(meta, "eos", eos, n)
    unk_id = _special_id(meta, "unknown", unk, n)
    sep_id = _special_id(meta, "seperator", sep, n)  # sic: llama.cpp's key name
    eot_id = _special_id(meta, "eot", None, n)
    eom_id = _special_id(meta, "eom", None, n)
    add_space_prefix = _get(meta, "tokenizer.ggml.add_space_prefix", bool, add_space_prefix)
    add_bos = _get(meta, "tokenizer.ggml.add_bos_token", bool, add_bos)
    add_eos = _get(meta, "tokenizer.ggml.add_eos_token", bool, add_eos)
    if model == "gemma4":
        add_bos = True  # llama.cpp overrides a false add_bos_token for Gemma 4
    if add_bos and bos_id is None:
        raise TokenizerError("tokenizer.ggml.add_bos_token is true, but bos_token_id is not set")
    if add_eos and eos_id is None:
        raise TokenizerError("tokenizer.ggml.add_eos_token is true, but eos_token_id is not set")
    lowercase = _get(meta, "tokenizer.ggml.normalizer.lowercase", bool, True)
    strip_accents = _get(meta, "tokenizer.ggml.normalizer.strip_accents", bool, lowercase)

    # Control-looking tokens are forced to CONTROL (llama.cpp: "probably a bug in the model").
    eog: set[int] = set()
    for name, texts in _FIM_TEXTS.items():
        fim_id = _special_id(meta, name, None, n)
        if fim_id is None:
            fim_id = _first_with_text(ids, texts)
            if fim_id is not None:
                attrs[fim_id] |= Attr.CONTROL
        if fim_id is not None and name in _FIM_EOG:
            eog.add(fim_id)
    for text in EOG_TEXTS & ids.keys():
        attrs[ids[text]] |= Attr.CONTROL
    eog.update(ids[t] for t in EOG_TEXTS & ids.keys())
    for text in _ALWAYS_RENDERED:
        if text in ids:
            attrs[ids[text]] = Attr.USER_DEFINED
    eog.update(i for i in (eos_id, eot_id, eom_id) if i is not None)
    eog_texts = {tokens[i] for i in eog}
    # gpt-oss / solar-open: <|end|> ends a message, not the generation.
    if "<|end|>" in eog_texts and (
        {"<|return|>", "<|call|>"} <= eog_texts or {"<|calls|>", "<|flush|>"} <= eog_texts
    ):
        eog.discard(ids["<|end|>"])
        attrs[ids["<|end|>"]] = Attr.USER_DEFINED
    if "<|tool_response>" in eog_texts and "</s>" in eog_texts:  # gemma4, paddleocr
        eog.discard(ids["</s>"])
        attrs[ids["</s>"]] = Attr.NORMAL
    _set_strip_attrs(meta, pre, ids, attrs)

    return Vocab(
        model=model,
        pre=pre,
        tokens=tokens,
        ids=ids,
        scores=scores,
        attrs=attrs,
        merges=merges,
        bos_id=bos_id,
        eos_id=eos_id,
        unk_id=unk_id,
        sep_id=sep_id,
        add_bos=add_bos,
        add_eos=add_eos,
        add_space_prefix=add_space_prefix,
        lowercase=lowercase,
        strip_accents=strip_accents,
        eog_ids=frozenset(eog),
        pre_tokenizer=pretok,
    )


def _merges(meta: Mapping[str, Any]) -> list[tuple[str, str]]:
    merges = meta.get("tokenizer.ggml.merges")
    if not isinstance(merges, list):
        raise TokenizerError("tokenizer.ggml.merges is missing or not a string array")
    out = []
    for m in merges:
        cut = m.find(" ", 1)  # the first space after position 0, as llama.cpp splits
        out.append((m[:cut], m[cut + 1 :]) if cut >= 0 else ("", ""))
    return out


def _set_strip_attrs(
    meta: Mapping[str, Any], pre: str, ids: Mapping[str, int], attrs: list[int]
) -> None:
    """llama.cpp's per-model LSTRIP/RSTRIP attributes (not stored in GGUF)."""
    name = str(meta.get("general.name", "")).lower()
    arch = str(meta.get("general.architecture", ""))
    if any(p in pre for p in ("jina-v2-de", "jina-v2-es", "jina-v2-code")) or any(
        a in arch for a in ("nomic-bert-moe", "jina-bert-v3")
    ):
        if "<mask>" in ids:
            attrs[ids["<mask>"]] |= Attr.LSTRIP
    elif "phi-3" in name or "phi3" in name:
        for i, a in enumerate(attrs):
            if a & SPLIT_OUT:
                attrs[i] |= Attr.RSTRIP
        if "</s>" in ids:
            attrs[ids["</s>"]] |= Attr.RSTRIP
        for text in ("<unk>", "<s>", "<|endoftext|>"):
            if text in ids:
                attrs[ids[text]] &= ~Attr.RSTRIP
    elif "modern-bert" in name and "[MASK]" in ids:
        attrs[ids["[MASK]"]] |= Attr.LSTRIP
