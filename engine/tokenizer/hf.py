"""HuggingFace `tokenizers` pipelines equivalent to llama.cpp's BPE and WPM tokenizers.

Spec: gguf-and-models.md sections 6.4-6.6. Each builder returns a `tokenizers.Tokenizer` whose
`encode(text, add_special_tokens=False)` gives llama.cpp's ids for one raw-text string; BOS/EOS are
added by the caller. For SPM vocabularies HF only partitions the text at the special tokens
(`_partitioner`); engine/tokenizer/spm.py tokenizes the fragments. Special tokens are HF "added
tokens", matched on the raw text before the model runs, as llama.cpp's `tokenizer_st_partition`
does: CONTROL/UNKNOWN ones are HF-special (ignored when `encode_special_tokens` is set, i.e.
parse_special off), USER_DEFINED ones are not.
HF matches all added tokens at once (leftmost, longest) where llama.cpp splits by one token at a
time in decreasing length; the two differ only for overlapping special-token texts.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from tokenizers import AddedToken, Regex, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from engine.errors import TokenizerError
from engine.tokenizer.vocab import SPACE_MARK, SPECIAL, Attr, Vocab

log = logging.getLogger(__name__)

# What the SPM partitioner gives for a raw-text fragment (its id, 0, is never read).
FRAGMENT = "<refllama:fragment>"
# Byte-level BPE: a byte whose character is missing from the vocabulary stays a symbol in
# llama.cpp (so its neighbours cannot merge across it) and is then dropped from the output.
# HF would skip it before merging, so it becomes this placeholder, with the id n_vocab, which
# Tokenizer.encode removes afterwards. (SmolLM2 lacks 21 of the 256 byte characters.)
MISSING_BYTE = "<refllama:missing-byte>"
# The CJK ideograph blocks of llama.cpp's WPM `is_chinese_char` (the same as HF's BERT ones).
_CJK_IDEOGRAPHS = (
    "[\u4e00-\u9fff\u3400-\u4dbf\U00020000-\U0002a6df\U0002a700-\U0002b73f"
    "\U0002b740-\U0002b81f\U0002b920-\U0002ceaf\uf900-\ufaff\U0002f800-\U0002fa1f]"
)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: the merge tuples of a big BPE vocabulary would
    otherwise trigger collections over every live object. Nothing built here forms reference
    cycles."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def build(vocab: Vocab) -> HFTokenizer:
    """The HF tokenizer for `vocab.model` ("gpt2", "llama" or "bert") with its added tokens."""
    with _gc_paused():
        if vocab.model == "gpt2":
            tok = _bpe(vocab)
        elif vocab.model == "gemma4":
            tok = _utf8_bpe(vocab)
        elif vocab.model == "llama":
            tok = _partitioner()
        else:
            tok = _wpm(vocab)
    tok.add_tokens(
        [
            AddedToken(
                vocab.tokens[i],
                special=bool(vocab.attrs[i] & SPECIAL),
                normalized=False,
                lstrip=bool(vocab.attrs[i] & Attr.LSTRIP),
                rstrip=bool(vocab.attrs[i] & Attr.RSTRIP),
            )
            for i in vocab.special_ids
        ]
    )
    return tok


def _bpe(vocab: Vocab) -> HFTokenizer:
    """Byte-level BPE: regex pre-split, GPT-2 byte alphabet, merges by rank (6.4)."""
    assert vocab.pre_tokenizer is not None
    ids = vocab.ids
    merges = [(a, b) for a, b in vocab.merges if a in ids and b in ids and a + b in ids]
    if len(merges) != len(vocab.merges):
        # llama.cpp would merge these and then spell the result byte by byte; HF cannot.
        log.warning(
            "dropped %d merges with out-of-vocabulary parts", len(vocab.merges) - len(merges)
        )
    model = models.BPE(
        ids | {MISSING_BYTE: len(vocab.tokens)},
        merges,
        unk_token=MISSING_BYTE,
        fuse_unk=False,
        ignore_merges=vocab.pre_tokenizer.ignore_merges,
        byte_fallback=False,
    )
    tok = HFTokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r), behavior="isolated")
            for r in vocab.pre_tokenizer.split_regexes
        ]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    return tok


def _utf8_bpe(vocab: Vocab) -> HFTokenizer:
    """Gemma 4's BPE: spaces to ▁, newline-run pieces, GGUF merges by rank on UTF-8 characters,
    `<0xXX>` byte tokens for characters outside the vocabulary."""
    assert vocab.pre_tokenizer is not None
    ids = vocab.ids
    merges = [(a, b) for a, b in vocab.merges if a in ids and b in ids and a + b in ids]
    model = models.BPE(ids, merges, byte_fallback=True, fuse_unk=False)
    tok = HFTokenizer(model)
    tok.normalizer = normalizers.Replace(" ", SPACE_MARK)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in vocab.pre_tokenizer.regexes]
    )
    return tok


def _partitioner() -> HFTokenizer:
    """For SPM, HF only splits the text at the added tokens: every raw-text fragment between
    them becomes one FRAGMENT token (id 0) whose offsets give its text, for
    engine/tokenizer/spm.py to tokenize as llama.cpp does. The added tokens then have HF's own
    ids (1, 2, ...), not the vocabulary's."""
    return HFTokenizer(models.WordLevel({FRAGMENT: 0}, unk_token=FRAGMENT))


def _wpm(vocab: Vocab) -> HFTokenizer:
    """WordPiece: GGUF stores word-initial pieces as `▁x` and continuations as `x`; HF wants
    `x` and `##x` (6.6)."""
    if vocab.unk_id is None:
        raise TokenizerError("the bert (WPM) tokenizer needs an unknown token")
    renamed: dict[str, int] = {}
    for i, (t, a) in enumerate(zip(vocab.tokens, vocab.attrs, strict=True)):
        if a & Attr.NORMAL:
            t = t[1:] if t.startswith(SPACE_MARK) else "##" + t
        renamed.setdefault(t, i)
    model = models.WordPiece(
        renamed,
        unk_token=vocab.tokens[vocab.unk_id],
        continuing_subword_prefix="##",
        max_input_chars_per_word=1 << 30,  # llama.cpp has no per-word limit
    )
    tok = HFTokenizer(model)
    # llama.cpp's own BERT preprocessing (llm_tokenizer_wpm_session::preprocess), per code point
    # and in this order; HF's BertNormalizer differs on U+0085, on spacing marks and on newer
    # Unicode punctuation.
    steps = [normalizers.NFD()] if vocab.strip_accents else []
    steps += [
        normalizers.Replace(Regex(r"\s"), " "),  # whitespace (checked first) splits words
        normalizers.Replace(Regex(r"[\x00\x{fffd}\p{Cc}\p{Cf}\p{Co}]"), ""),  # then dropped
    ]
    if vocab.strip_accents:
        steps.append(normalizers.Replace(Regex(r"\p{M}"), ""))
    if vocab.lowercase:
        steps.append(normalizers.Lowercase())
    tok.normalizer = normalizers.Sequence(steps)
    # Punctuation, ASCII symbols and CJK ideographs are words of their own.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Split(Regex(r"\p{P}|[$+<=>^`|~]|" + _CJK_IDEOGRAPHS), "isolated"),
        ]
    )
    return tok
