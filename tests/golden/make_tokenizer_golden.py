"""Write tests/golden/tokenizer_golden.json by running llama.cpp (llama-cpp-python) as the oracle.

For SmolLM2 and Gemma 3 it records, for every string of tests/golden/tokenizer_corpus.json,
the ids of `llama_tokenize(text, add_special=True, parse_special=True/False)` and
`llama_detokenize(ids, remove_special=False, unparse_special=True/False)` of the first ones, plus
the vocabulary facts (BOS/EOS, add flags, EOG set, a hash of every token piece).

"Variants" re-use those vocabularies under other settings, written to temporary vocab-only GGUF
files: SmolLM2's BPE vocabulary under each supported `tokenizer.ggml.pre`, Gemma 3's SPM
vocabulary with add_space_prefix on, and a tiny hand-made WordPiece (bert) vocabulary.

Run: .venv/bin/python tests/golden/make_tokenizer_golden.py  (needs llama_cpp importable; with
an older checkout, /opt/oracle/venv/bin/python works too).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
from gguf import GGUFValueType, GGUFWriter

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from engine.gguf.fetch import model_path  # noqa: E402
from engine.gguf.reader import GGUFFile  # noqa: E402

GOLDEN = Path(__file__).with_name("tokenizer_golden.json")
CORPUS = Path(__file__).with_name("tokenizer_corpus.json")

# SmolLM2's vocabulary under these pre-tokenizers (one per regex family llama.cpp has).
BPE_VARIANTS = ("default", "gpt-2", "llama-bpe", "qwen2", "deepseek-llm", "deepseek-coder")
BPE_VARIANTS += ("starcoder", "falcon", "command-r", "dbrx")

# A tiny WordPiece vocabulary in GGUF's "phantom space" form (▁ = word start).
BERT_CONTROL = {0: "[PAD]", 1: "[UNK]", 2: "[CLS]", 3: "[SEP]", 4: "[MASK]"}
BERT_WORDS = (
    "the quick brown fox jump over lazy dog hello world un aff able cafe naive to be or not "
    "token izer play i am you we , . ! ? ' - ( ) $ 東 京 a b c d e 1 2 3"
).split()
BERT_PIECES = "s ing ed er ly able ##x a b c d e 1 2 3 izer ize 京".split()
BERT_TEXTS = [
    "",
    "hello world",
    "Hello, World!",
    "The quick brown fox jumps over the lazy dog.",
    "unaffable",
    "tokenizer tokenize tokenizing",
    "Café naïve",
    "CAFÉ NAÏVE",
    "東京",
    "東京 hello 東",
    "to be, or not to be?",
    "I'm you're we'd",
    "$1.23 (a-b)",
    "  spaces   and\ttabs\nnewlines\r\n",
    "xyz unknownword hello",
    "ab abc abcde e1 3d",
    "hello[MASK]world",
    "[CLS] hello [SEP]",
    "[UNK]",
    "hello\x00world\x01",
    "a\u0301e\u0300",
    "€uro ©",
    "hello\u00a0world\u3000東",
    "played playing player",
]


def tokenize(llm: llama_cpp.Llama, text: str, add_special: bool, parse_special: bool) -> list[int]:
    return list(llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=parse_special))


def detokenize(llm: llama_cpp.Llama, ids: list[int], unparse_special: bool) -> str:
    """llama.cpp's own `llama_detokenize` (remove_special=False)."""
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    size = 64 + 8 * len(ids)
    while True:
        buf = ctypes.create_string_buffer(size)
        arr = (llama_cpp.llama_token * max(1, len(ids)))(*ids)
        n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, size, False, unparse_special)
        if n >= 0:
            return buf.raw[:n].decode("utf-8")
        size = -n + 1


def piece(llm: llama_cpp.Llama, token: int, special: bool) -> bytes:
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    buf = ctypes.create_string_buffer(256)
    n = llama_cpp.llama_token_to_piece(vocab, token, buf, 256, 0, special)
    if n < 0:
        buf = ctypes.create_string_buffer(-n)
        n = llama_cpp.llama_token_to_piece(vocab, token, buf, -n, 0, special)
    return buf.raw[:n]


def vocab_facts(llm: llama_cpp.Llama) -> dict[str, Any]:
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    n = llama_cpp.llama_vocab_n_tokens(vocab)

    def opt(i: int) -> int | None:
        return None if i < 0 else i

    facts: dict[str, Any] = {
        "n_vocab": n,
        "bos_id": opt(llama_cpp.llama_vocab_bos(vocab)),
        "eos_id": opt(llama_cpp.llama_vocab_eos(vocab)),
        "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
        "add_eos": bool(llama_cpp.llama_vocab_get_add_eos(vocab)),
        "eog_ids": [i for i in range(n) if llama_cpp.llama_vocab_is_eog(vocab, i)],
    }
    for special in (True, False):
        h = hashlib.sha256()
        for i in range(n):
            p = piece(llm, i, special)
            h.update(len(p).to_bytes(4, "little") + p)
        facts[f"pieces_sha256_{'special' if special else 'plain'}"] = h.hexdigest()
    return facts


def load(path: Path) -> llama_cpp.Llama:
    return llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)


def write_gguf(path: Path, arch: str, meta: dict[str, Any], types: dict[str, Any]) -> None:
    """A tensor-less GGUF holding `meta` (values typed as `types[key]` = (type, element))."""
    w = GGUFWriter(str(path), arch)
    for key, value in meta.items():
        if key in ("general.architecture", "general.alignment"):
            continue
        vtype, sub = types[key]
        if isinstance(value, np.ndarray):
            value = value.tolist()
        w.add_key_value(key, value, vtype, sub)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def gguf_meta(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    g = GGUFFile(path)
    types = {k: (t.type, t.element) for k, t in g.metadata_types.items()}
    return dict(g.metadata), types


def bert_meta() -> tuple[dict[str, Any], dict[str, Any]]:
    tokens = [BERT_CONTROL[i] for i in sorted(BERT_CONTROL)]
    tokens += ["\u2581" + w for w in BERT_WORDS] + [p for p in BERT_PIECES if p not in BERT_WORDS]
    tokens = list(dict.fromkeys(tokens))
    token_type = [3 if t in BERT_CONTROL.values() else 1 for t in tokens]
    token_type[1] = 2  # [UNK]
    u32, arr, string = GGUFValueType.UINT32, GGUFValueType.ARRAY, GGUFValueType.STRING
    f32, boolean = GGUFValueType.FLOAT32, GGUFValueType.BOOL
    meta: dict[str, Any] = {
        "general.name": "tiny-wordpiece",
        "bert.context_length": 512,
        "bert.embedding_length": 8,
        "bert.block_count": 1,
        "bert.feed_forward_length": 16,
        "bert.attention.head_count": 2,
        "bert.attention.layer_norm_epsilon": 1e-12,
        "bert.attention.causal": False,
        "bert.pooling_type": 1,
        "tokenizer.ggml.model": "bert",
        "tokenizer.ggml.token_type_count": 2,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": token_type,
        "tokenizer.ggml.unknown_token_id": 1,
        "tokenizer.ggml.cls_token_id": 2,
        "tokenizer.ggml.bos_token_id": 2,
        "tokenizer.ggml.seperator_token_id": 3,
        "tokenizer.ggml.padding_token_id": 0,
        "tokenizer.ggml.mask_token_id": 4,
    }
    types: dict[str, Any] = {k: (u32, None) for k in meta}
    types.update(
        {
            "general.name": (string, None),
            "tokenizer.ggml.model": (string, None),
            "bert.attention.layer_norm_epsilon": (f32, None),
            "bert.attention.causal": (boolean, None),
            "tokenizer.ggml.tokens": (arr, string),
            "tokenizer.ggml.token_type": (arr, GGUFValueType.INT32),
        }
    )
    return meta, types


def model_record(llm: llama_cpp.Llama, texts: list[str], modes: tuple[bool, ...]) -> dict[str, Any]:
    rec = vocab_facts(llm)
    for parse_special in modes:
        mode = "special" if parse_special else "plain"
        rec[mode] = [tokenize(llm, t, True, parse_special) for t in texts]
    if True in modes:
        rec["detok_special"] = [detokenize(llm, ids, True) for ids in rec["special"]]
        rec["detok_plain"] = [detokenize(llm, ids, False) for ids in rec["special"]]
    return rec


def main() -> None:
    corpus = json.loads(CORPUS.read_text(encoding="utf-8"))["strings"]
    out: dict[str, Any] = {
        "oracle": f"llama-cpp-python {llama_cpp.__version__}",
        "system_info": llama_cpp.llama_print_system_info().decode().strip(),
        "corpus_sha256": hashlib.sha256(CORPUS.read_bytes()).hexdigest(),
        "models": {},
        "variants": {},
    }
    for name in ("smollm2", "gemma3"):
        out["models"][name] = model_record(load(model_path(name)), corpus, (True, False))

    subset = corpus[::2]  # variants check every other corpus string
    with tempfile.TemporaryDirectory() as tmp:
        base, types = gguf_meta(model_path("smollm2"))
        for pre in BPE_VARIANTS:
            meta = {**base, "tokenizer.ggml.pre": pre}
            del meta["tokenizer.ggml.add_bos_token"]  # exercise the per-pre default
            path = Path(tmp) / f"bpe-{pre}.gguf"
            write_gguf(path, "llama", meta, types)
            out["variants"][f"smollm2/pre={pre}"] = {
                "base": "smollm2",
                "set": {"tokenizer.ggml.pre": pre},
                "drop": ["tokenizer.ggml.add_bos_token"],
                "texts": "corpus[::2]",
                **model_record(load(path), subset, (True,)),
            }
        base, types = gguf_meta(model_path("gemma3"))
        meta = {k: v for k, v in base.items() if k != "tokenizer.ggml.add_space_prefix"}
        path = Path(tmp) / "spm-space-prefix.gguf"
        write_gguf(path, "gemma3", meta, types)
        out["variants"]["gemma3/add_space_prefix"] = {
            "base": "gemma3",
            "set": {},
            "drop": ["tokenizer.ggml.add_space_prefix"],
            "texts": "corpus[::2]",
            **model_record(load(path), subset, (True,)),
        }
        meta, types = bert_meta()
        path = Path(tmp) / "wpm.gguf"
        write_gguf(path, "bert", meta, types)
        llm = load(path)
        out["variants"]["tiny-wordpiece"] = {
            "base": None,
            "metadata": meta,
            "texts": BERT_TEXTS,
            **model_record(llm, BERT_TEXTS, (True, False)),
        }
    GOLDEN.write_text(_dump(out), encoding="utf-8")


def _dump(obj: Any, indent: int = 0) -> str:
    """JSON with one line per list element of lists, so diffs stay readable."""
    pad = " " * indent
    if isinstance(obj, dict):
        items = [f"{pad}  {json.dumps(k)}: {_dump(v, indent + 2).lstrip()}" for k, v in obj.items()]
        return pad + "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list) and obj and isinstance(obj[0], (list, str)):
        items = [pad + "  " + json.dumps(v, ensure_ascii=False) for v in obj]
        return pad + "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return pad + json.dumps(obj, ensure_ascii=False)


if __name__ == "__main__":
    main()
