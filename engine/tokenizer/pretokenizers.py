"""Byte-level BPE pre-tokenizers, keyed by the GGUF `tokenizer.ggml.pre` value.

Copied from llama.cpp `src/llama-vocab.cpp` (`llm_tokenizer_bpe` regex lists and the
`tokenizer_pre` switch in `llama_vocab::impl::load`); spec: gguf-and-models.md section 6.4.
Several regexes are applied one after another, each splitting the pieces left by the previous
one and keeping the text between matches ("isolated" split). llama.cpp's ECMAScript `$` (end of
input) is written `\\z` here, because Oniguruma's `$` also matches before a newline.
The regexes are written with \\p{L}, \\p{N} and \\p{P}; `split_regexes` swaps those for
llama.cpp's own Unicode tables (unicode_classes.py), whose Unicode version is newer than
Oniguruma's, so a code point is a letter exactly when llama.cpp says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import TokenizerError
from engine.tokenizer import unicode_classes

# Oniguruma nests a bracketed class inside another, so each may stand inside [...] or alone.
_LLAMA_CATEGORIES = {
    r"\p{L}": unicode_classes.LETTER,
    r"\p{N}": unicode_classes.NUMBER,
    r"\p{P}": unicode_classes.PUNCTUATION,
}

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
# llama.cpp spells HF's (?i:'s|'t|...) as an explicit-case alternation; both are equivalent.
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_LLAMA3 = (
    _CONTRACTIONS
    + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = _CONTRACTIONS + (
    r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen 3.5 counts combining marks as letters: \p{M} joins the letter runs and leaves the symbols.
_QWEN35 = _CONTRACTIONS + (
    r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
# llama.cpp runs regexes with literal non-ASCII classes through std::wregex on a copy of the text
# where every non-ASCII whitespace character is U+000B, so such classes never match those
# characters (U+3000 and U+2000-U+200A lie inside these ranges): hence the `&&[^\s]`.
_CJK = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff" r"&&[^\s]]+"
# deepseek-llm's letter class, codepoint for codepoint as in llama.cpp.
_DEEPSEEK_LETTERS = (
    r"\s?[A-Za-z"
    "\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af"
    "\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1"
    "\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5"
    "\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a"
    "\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d"
    "\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3"
    "\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115"
    "\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f"
    "\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3"
    "\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf"
    "\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f"
    "\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2"
    "\U000118a0-\U000118df\U0001e900-\U0001e943]+"
)
_DEEPSEEK_PUNCT = r"\s?[!-/:-~" "\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002" r"&&[^\s]]+"


@dataclass(frozen=True)
class PreTokenizer:
    """One llama.cpp pre-tokenizer type and the vocabulary flags it implies."""

    regexes: tuple[str, ...]
    ignore_merges: bool = False  # a piece that is a whole vocabulary token skips the merges
    add_bos: bool = False  # llama.cpp's add_bos default for this type (the GGUF key overrides)

    @property
    def split_regexes(self) -> tuple[str, ...]:
        """The regexes with llama.cpp's Unicode categories in place of Oniguruma's."""
        out = []
        for regex in self.regexes:
            for name, cls in _LLAMA_CATEGORIES.items():
                regex = regex.replace(name, cls)
            out.append(regex)
        return tuple(out)


_TYPES: dict[str, PreTokenizer] = {
    "default": PreTokenizer((r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]")),
    "llama3": PreTokenizer((_LLAMA3,), ignore_merges=True, add_bos=True),
    "dbrx": PreTokenizer((_LLAMA3,)),
    "gpt2": PreTokenizer((_GPT2,)),
    "qwen2": PreTokenizer((_QWEN2,)),
    "qwen35": PreTokenizer((_QWEN35,)),
    # Gemma 4's BPE works on raw UTF-8 with spaces as ▁ and splits only at newline runs; a run
    # of newlines that is a vocabulary token is taken whole.
    "gemma4": PreTokenizer((r"[^\n]+|[\n]+",)),
    "starcoder": PreTokenizer((r"\p{N}", _GPT2)),
    "falcon": PreTokenizer((r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, r"[0-9][0-9][0-9]")),
    "deepseek-llm": PreTokenizer(
        (r"[\r\n]", _DEEPSEEK_LETTERS, _DEEPSEEK_PUNCT, r"\s+\z", _CJK, r"\p{N}+")
    ),
    "deepseek-coder": PreTokenizer((r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK, r"\p{N}")),
}

# `tokenizer.ggml.pre` value -> pre-tokenizer type, as in llama_vocab::impl::load.
PRE_TYPES: dict[str, str] = {
    "default": "default",
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1"), "llama3"),
    **dict.fromkeys(("pixtral", "midm-2.0", "lfm2", "jina-v5-nano"), "llama3"),
    **dict.fromkeys(("dbrx", "smaug-bpe"), "dbrx"),
    "deepseek-llm": "deepseek-llm",
    "deepseek-coder": "deepseek-coder",
    "falcon": "falcon",
    **dict.fromkeys(("starcoder", "refact", "codeshell", "exaone", "minerva-7b"), "starcoder"),
    "mellum2": "starcoder",
    **dict.fromkeys(("smollm", "command-r"), "starcoder"),
    **dict.fromkeys(("gpt-2", "phi-2", "mpt", "olmo", "jais", "exaone4", "gigachat"), "gpt2"),
    **dict.fromkeys(("jina-es", "jina-de", "jina-v2-es", "jina-v2-de", "a.x-4.0"), "gpt2"),
    **dict.fromkeys(("mellum", "modern-bert", "jina-v1-en", "jina-v2-code", "roberta-bpe"), "gpt2"),
    **dict.fromkeys(("trillion", "granite-docling"), "gpt2"),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2"), "qwen2"),
    **dict.fromkeys(("hunyuan", "solar-open"), "qwen2"),
    **dict.fromkeys(("stablelm2", "megrez"), "qwen2"),
    "qwen35": "qwen35",
    **dict.fromkeys(("gemma4", "granite-embed-multi-311m"), "gemma4"),
}


def pre_tokenizer(pre: str) -> PreTokenizer:
    """The pre-tokenizer for a `tokenizer.ggml.pre` value; unknown values raise TokenizerError."""
    kind = PRE_TYPES.get(pre)
    if kind is None:
        raise TokenizerError(
            f"unknown pre-tokenizer tokenizer.ggml.pre={pre!r}; supported: "
            + ", ".join(sorted(PRE_TYPES))
        )
    return _TYPES[kind]
