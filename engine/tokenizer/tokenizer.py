"""`Tokenizer`: llama.cpp-identical tokenize/detokenize built from GGUF metadata.

Encoding runs on HF `tokenizers` (engine/tokenizer/hf.py), which for SPM vocabularies only
splits the text at special tokens, the fragments then tokenized by engine/tokenizer/spm.py;
decoding uses a table of the bytes each token contributes, computed here exactly as llama.cpp's
`token_to_piece` computes them.
Spec: gguf-and-models.md section 6; sources: llama.cpp `src/llama-vocab.cpp`.

Detokenization is the concatenation of the token pieces (llama-server's `/detokenize` and the
text Ollama and llama-server stream), decoded as UTF-8 with U+FFFD for invalid bytes. With
`special=True` (the default) CONTROL and UNKNOWN tokens render as their text, with
`special=False` as nothing; USER_DEFINED tokens always render. It does not apply the two
whole-sequence fix-ups of the C function `llama_detokenize`: `clean_spaces` (BPE pre-types that
keep it, e.g. gpt-2, llama3) and stripping the first piece's leading space for SPM models with
add_space_prefix; nor llama-cpp-python's removal of a leading space after BOS. None of the three
applies to SmolLM2 or Gemma 3, and without them streamed pieces always add up to `decode(ids)`.
"""

from __future__ import annotations

import codecs
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from engine.errors import TokenizerError
from engine.gguf.reader import GGUFFile
from engine.tokenizer import hf
from engine.tokenizer.spm import Spm
from engine.tokenizer.vocab import SPACE_MARK, SPECIAL, Attr, Vocab, load_vocab

# Texts this long are encoded with encode_batch, which gives the same ids but lets other
# threads (the server's event loop) run meanwhile; plain encode holds the GIL throughout.
_GIL_FREE_CHARS = 1 << 16


def _gpt2_byte_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-in character for every byte, inverted: char -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in printable]
    table = {chr(b): b for b in printable}
    table.update({chr(0x100 + n): b for n, b in enumerate(others)})
    return table


_GPT2_BYTES = _gpt2_byte_alphabet()
# Fast path of _gpt2_piece: alphabet characters become their byte as a latin-1 character; the
# latin-1 characters outside the alphabet become U+FFFF so that encoding fails for them too.
_GPT2_TRANSLATE = str.maketrans(
    {chr(c): "\uffff" for c in range(256) if chr(c) not in _GPT2_BYTES}
    | {c: chr(b) for c, b in _GPT2_BYTES.items()}
)


def _gpt2_piece(text: str) -> bytes:
    """llama.cpp `llama_decode_text`: map each character back to its byte."""
    try:
        return text.translate(_GPT2_TRANSLATE).encode("latin-1")
    except UnicodeEncodeError:
        out = bytearray()
        for c in text:
            if c in _GPT2_BYTES:
                out.append(_GPT2_BYTES[c])
            else:  # llama.cpp's marker, which quotes the whole token text
                out += f"[UNK_BYTE_0x{c.encode().hex()}{text}]".encode()
        return bytes(out)


def _byte_piece(token_id: int, text: str) -> bytes:
    """The byte of a BYTE token, spelled `<0xXX>`."""
    if len(text) != 6 or not text.startswith("<0x") or not text.endswith(">"):
        raise TokenizerError(f"byte token {token_id} is {text!r}, expected the form <0xXX>")
    try:
        return bytes([int(text[3:5], 16)])
    except ValueError:
        raise TokenizerError(f"byte token {token_id} is {text!r}, expected <0xXX>") from None


def _pieces(vocab: Vocab) -> list[bytes]:
    """(V,) the bytes each token contributes when rendered with special=True."""
    tokens, attrs = vocab.tokens, vocab.attrs
    # Decode every token as NORMAL in one pass, then redo the few that are not.
    if vocab.model == "gpt2":
        pieces = [_gpt2_piece(t) for t in tokens]
    else:
        pieces = [t.replace(SPACE_MARK, " ").encode() for t in tokens]
    # plain int masks: int & int, ~10x faster than Attr's own & over a 262k-token vocabulary
    verbatim, normal = int(SPECIAL | Attr.USER_DEFINED), int(Attr.NORMAL)
    for i in [i for i, a in enumerate(attrs) if a & verbatim or not a & normal]:
        if attrs[i] & verbatim:
            pieces[i] = tokens[i].encode()
        elif attrs[i] & Attr.BYTE:
            pieces[i] = _byte_piece(i, tokens[i])
        else:  # UNUSED / UNDEFINED: llama.cpp renders nothing
            pieces[i] = b""
    return pieces


def _added_by_add_special(vocab: Vocab) -> tuple[list[int], list[int]]:
    """The ids `encode(add_special=True)` puts before and after the text."""
    if vocab.model == "bert":  # llama.cpp's WPM always wraps: [CLS] text [SEP]
        if vocab.bos_id is None or vocab.sep_id is None:
            raise TokenizerError("the bert (WPM) tokenizer needs bos ([CLS]) and sep ([SEP]) ids")
        return [vocab.bos_id], [vocab.sep_id]
    # load_vocab has checked that the ids exist when the flags are set.
    prefix = [vocab.bos_id] if vocab.add_bos and vocab.bos_id is not None else []
    suffix = [vocab.eos_id] if vocab.add_eos and vocab.eos_id is not None else []
    return prefix, suffix


class Tokenizer:
    """Tokenizer for one GGUF vocabulary; ids and text identical to llama.cpp's.

    Attributes: `n_vocab`, `bos_id`, `eos_id` (None when the model has none), `add_bos`,
    `add_eos` (what `encode(add_special=True)` adds), `eog_ids` (tokens that end generation).
    """

    def __init__(self, vocab: Vocab) -> None:
        self.vocab = vocab
        self.n_vocab = len(vocab.tokens)
        self.bos_id = vocab.bos_id
        self.eos_id = vocab.eos_id
        self.add_bos = vocab.add_bos
        self.add_eos = vocab.add_eos
        self.eog_ids: frozenset[int] = vocab.eog_ids
        self._prefix, self._suffix = _added_by_add_special(vocab)
        self._hf = hf.build(vocab)
        self._spm = Spm(vocab) if vocab.model == "llama" else None
        # the SPM partitioner numbers the added tokens itself (hf._partitioner)
        self._vocab_id = (
            {self._hf.token_to_id(vocab.tokens[i]): i for i in vocab.special_ids}
            if self._spm
            else {}
        )
        # HF's switch for "special tokens are plain text" is state on the tokenizer object.
        self._hf_lock = threading.Lock()
        self._special_pieces = _pieces(vocab)
        self._plain_pieces = [
            b"" if a & SPECIAL else p
            for p, a in zip(self._special_pieces, vocab.attrs, strict=True)
        ]

    @classmethod
    def from_gguf(cls, gguf: GGUFFile) -> Tokenizer:
        """Build from a parsed GGUF file's metadata (tensor data is never read)."""
        return cls.from_metadata(gguf.metadata)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> Tokenizer:
        """Build from a `tokenizer.ggml.*` metadata mapping (as `GGUFFile.metadata`)."""
        return cls(load_vocab(metadata))

    def encode(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Token ids of `text`, as llama.cpp's `llama_tokenize(text, add_special, parse_special)`.

        add_special: add BOS/EOS as the model's add_bos/add_eos say ([CLS] ... [SEP] for WPM).
        parse_special: CONTROL tokens written in the text (`<|im_start|>`) become their ids;
        when off they are tokenized as plain text. USER_DEFINED tokens are always matched.
        """
        try:
            with self._hf_lock:
                self._hf.encode_special_tokens = not parse_special
                if len(text) < _GIL_FREE_CHARS:
                    encoding = self._hf.encode(text, add_special_tokens=False)
                else:  # same ids; encode_batch releases the GIL while Rust works
                    encoding = self._hf.encode_batch([text], add_special_tokens=False)[0]
        except Exception as e:  # the Rust side raises plain Exception subclasses
            raise TokenizerError(f"cannot tokenize text: {e}") from e
        ids: list[int] = encoding.ids
        if self._spm is not None:
            ids = self._spm_fragments(text, ids, encoding.offsets)
        elif self.vocab.model == "gpt2" and self.n_vocab in ids:
            ids = [i for i in ids if i != self.n_vocab]  # hf.MISSING_BYTE: dropped as llama.cpp
        if not add_special:
            return ids
        return [*self._prefix, *ids, *self._suffix]

    def _spm_fragments(
        self, text: str, hf_ids: list[int], offsets: list[tuple[int, int]]
    ) -> list[int]:
        """The partitioner's output (hf._partitioner) with each raw fragment tokenized."""
        ids: list[int] = []
        for hf_id, (start, end) in zip(hf_ids, offsets, strict=True):
            if hf_id:
                ids.append(self._vocab_id[hf_id])
            else:
                ids += self._spm.encode(text[start:end])  # type: ignore[union-attr]
        return ids

    def _check(self, token: int) -> None:
        if not 0 <= token < self.n_vocab:
            raise TokenizerError(f"token id {token} is outside the vocabulary [0, {self.n_vocab})")

    def token_bytes(self, token: int, special: bool = True) -> bytes:
        """The raw bytes `token` contributes to the text (llama.cpp `token_to_piece`).

        May be part of a UTF-8 character (byte tokens, byte-level BPE). With special=False
        CONTROL/UNKNOWN tokens give b"".
        """
        self._check(token)
        return (self._special_pieces if special else self._plain_pieces)[token]

    def decode(self, ids: Iterable[int], special: bool = True) -> str:
        """The text of `ids`: their pieces concatenated, invalid UTF-8 replaced by U+FFFD."""
        return b"".join(self.token_bytes(i, special) for i in ids).decode("utf-8", "replace")

    def stream(self, special: bool = True) -> StreamDetokenizer:
        """A fresh incremental detokenizer for one generated sequence."""
        return StreamDetokenizer(self, special)


class StreamDetokenizer:
    """Turns a stream of token ids into text pieces that never split a UTF-8 character.

    `push` returns the text completed by one more token (possibly ""), `flush` whatever is
    still held back (an incomplete character at the end becomes U+FFFD). The pieces of one
    stream always concatenate to exactly `tokenizer.decode(all ids, special)`.
    """

    def __init__(self, tokenizer: Tokenizer, special: bool = True) -> None:
        self._tokenizer = tokenizer
        self._special = special
        # Python's incremental UTF-8 decoder buffers incomplete sequences and replaces invalid
        # ones exactly as a one-shot bytes.decode(errors="replace") would.
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        return self._utf8.decode(self._tokenizer.token_bytes(token, self._special))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)
