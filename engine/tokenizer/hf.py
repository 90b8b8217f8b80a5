"""HuggingFace `tokenizers` pipelines equivalent to llama.cpp's BPE, SPM and WPM tokenizers.

Spec: gguf-and-models.md sections 6.4-6.6. Each builder returns a `tokenizers.Tokenizer` whose
`encode(text, add_special_tokens=False)` gives llama.cpp's ids for one raw-text string; BOS/EOS are
added by the caller. Special tokens are HF "added tokens", matched on the raw text before the
model runs, as llama.cpp's `tokenizer_st_partition` does: CONTROL/UNKNOWN ones are HF-special
(ignored when `encode_special_tokens` is set, i.e. parse_special off), USER_DEFINED ones are not.
HF matches all added tokens at once (leftmost, longest) where llama.cpp splits by one token at a
time in decreasing length; the two differ only for overlapping special-token texts.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import numpy.typing as npt
from tokenizers import AddedToken, Regex, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from engine.errors import TokenizerError
from engine.tokenizer.vocab import SPECIAL, Attr, Vocab

log = logging.getLogger(__name__)

SPACE_MARK = "\u2581"  # ▁, SentencePiece's visible space
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
    """Pause the cyclic garbage collector: the half-million merge tuples of a big SPM vocabulary
    would otherwise trigger hundreds of collections over every live object (about 40% of the
    build time). Nothing built here forms reference cycles."""
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
            tok = _spm(vocab)
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


def spm_merges(vocab: Vocab) -> list[tuple[str, str]]:
    """SentencePiece-BPE merges derived from the scores: every split `t = a + b` of a token
    into two vocabulary tokens, ordered by score(t) descending (ties: lower id, shorter a).

    llama.cpp's SPM merges the adjacent pair whose concatenation is the best-scoring token; a
    BPE whose merge ranks follow those scores makes the same choices. Two differences remain,
    neither reachable with Gemma 3's vocabulary: llama.cpp also merges a character that is not
    itself a token into a neighbour (HF needs both halves in the vocabulary), and it breaks
    equal scores by position where the ranks here break them by id.

    Gemma 3's 262,144 tokens have 1.8M splits; testing each in Python took 1.8 s of its load.
    `_SplitFinder` tests them all as arrays, and only the 515K that are merges become strings.
    """
    if vocab.scores is None:
        raise TokenizerError("tokenizer.ggml.scores is missing; the llama (SPM) model needs it")
    tokens = vocab.tokens
    order = np.argsort(-vocab.scores.astype(np.float64), kind="stable")  # (V,) best first
    rank = np.empty(len(tokens), np.int64)
    rank[order] = np.arange(len(tokens))
    token, at = _SplitFinder(tokens).splits()
    by_rank = np.lexsort((at, rank[token]))  # by score, then by split position
    return [
        (t[:k], t[k:])
        for t, k in zip(
            map(tokens.__getitem__, token[by_rank].tolist()), at[by_rank].tolist(), strict=True
        )
    ]


_HASH_MUL = np.uint64(0x9E3779B97F4A7C15)  # odd: h -> h * _HASH_MUL + c mixes modulo 2**64


class _SplitFinder:
    """Which splits `t[:k] + t[k:]` of the tokens have both halves in the vocabulary.

    The tokens of each length L are an (n, L) array of code points, and `prefix[L][:, j]` the
    polynomial hash of their first j + 1 code points (uint64 arithmetic wraps modulo 2**64), so
    that every prefix's and suffix's hash is one array operation away:
    hash(t[k:]) = hash(t) - hash(t[:k]) * _HASH_MUL**(L - k). A half is looked up among the
    hashes of the tokens of its length, and a hit is then confirmed by comparing the code points
    themselves, so the answer is exact: a hash collision can only make a lookup miss, and a
    length whose tokens collide with each other is searched by `_slow_splits` instead.
    """

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        lengths = np.fromiter(map(len, tokens), np.int64, len(tokens))
        self.ids: dict[int, npt.NDArray[np.int64]] = {}  # L -> token ids of that length
        self.codes: dict[int, npt.NDArray[np.uint32]] = {}  # L -> (n, L) code points
        self.prefix: dict[int, npt.NDArray[np.uint64]] = {}  # L -> (n, L) prefix hashes
        self.sorted: dict[int, tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64]]] = {}
        self.colliding: set[int] = set()
        for L in np.unique(lengths[lengths > 0]).tolist():
            ids = np.flatnonzero(lengths == L)
            group = [tokens[i] for i in ids.tolist()]
            codes = np.array(group, dtype=f"<U{L}").view(np.uint32).reshape(len(ids), L)
            prefix = np.empty((len(ids), L), np.uint64)
            h = np.zeros(len(ids), np.uint64)
            for j in range(L):
                h = h * _HASH_MUL + codes[:, j] + np.uint64(1)  # + 1: code point 0 counts too
                prefix[:, j] = h
            rows = np.argsort(h, kind="stable")
            same = h[rows][1:] == h[rows][:-1]
            if (same & (codes[rows][1:] != codes[rows][:-1]).any(axis=1)).any():
                self.colliding.add(L)
            self.ids[L], self.codes[L], self.prefix[L] = ids, codes, prefix
            self.sorted[L] = h[rows], rows
        self.power = np.cumprod(np.full(max(self.ids, default=1), _HASH_MUL))  # _HASH_MUL**(i+1)

    def _find(
        self, L: int, h: npt.NDArray[np.uint64], codes: npt.NDArray[np.uint32]
    ) -> npt.NDArray[np.bool_]:
        """Which of the strings with hashes h and code points codes (n, L) are tokens."""
        if L not in self.sorted:
            return np.zeros(len(h), bool)
        keys, rows = self.sorted[L]
        at = np.searchsorted(keys, h).clip(max=len(keys) - 1)
        found = keys[at] == h
        found[found] = (self.codes[L][rows[at[found]]] == codes[found]).all(axis=1)
        return found

    def splits(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """(token id, k) of every split whose halves are both tokens."""
        if self.colliding:
            return self._slow_splits()
        found_ids, found_at = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        for L, ids in self.ids.items():
            codes, prefix = self.codes[L], self.prefix[L]
            for k in range(1, L):
                head = prefix[:, k - 1]
                tail = prefix[:, L - 1] - head * self.power[L - k - 1]
                ok = self._find(k, head, codes[:, :k])
                ok[ok] = self._find(L - k, tail[ok], codes[ok, k:])
                found_ids.append(ids[ok])
                found_at.append(np.full(int(ok.sum()), k))
        return np.concatenate(found_ids), np.concatenate(found_at)

    def _slow_splits(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """`splits` one string at a time, for a vocabulary with colliding hashes."""
        known = set(self.tokens)
        pairs = [
            (i, k)
            for i, t in enumerate(self.tokens)
            for k in range(1, len(t))
            if t[:k] in known and t[k:] in known
        ]
        found = np.array(pairs, np.int64).reshape(-1, 2)
        return found[:, 0], found[:, 1]


def _spm(vocab: Vocab) -> HFTokenizer:
    """SentencePiece BPE: spaces to ▁, score-ordered merges, byte fallback `<0xXX>` (6.5)."""
    unk = vocab.tokens[vocab.unk_id] if vocab.unk_id is not None else None
    model = models.BPE(
        vocab.ids, spm_merges(vocab), unk_token=unk, byte_fallback=True, fuse_unk=True
    )
    tok = HFTokenizer(model)
    steps = [normalizers.Replace(" ", SPACE_MARK)]
    if vocab.add_space_prefix:
        # HF normalizes each segment between added tokens separately, which is llama.cpp's
        # "prefix a space to the first fragment and to every fragment after a special token".
        steps.insert(0, normalizers.Prepend(SPACE_MARK))
    tok.normalizer = normalizers.Sequence(steps)
    return tok


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
