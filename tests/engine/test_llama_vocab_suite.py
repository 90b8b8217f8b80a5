"""llama.cpp's own tokenizer suite: every case of every `ggml-vocab-*.gguf` with `.inp`/`.out`.

The files come from the pinned llama-cpp-python sdist (engine.gguf.fetch.llama_cpp_models_dir). As
in llama.cpp's `tests/test-tokenizer-0.cpp`, the `.inp` file holds texts separated by
`\\n__ggml_vocab_test__\\n` and the `.out` file one line of ids per text, tokenized without
BOS/EOS and with special tokens read as plain text.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.gguf.reader import GGUFFile
from engine.tokenizer import Tokenizer

_SEPARATOR = "\n__ggml_vocab_test__\n"
# The vocabularies of the sdist with test cases (aquila, baichuan, gpt-neox, nomic-bert-moe
# ship none); the test below checks this list is the whole set.
VOCABS = (
    "bert-bge", "command-r", "deepseek-coder", "deepseek-llm", "falcon", "gemma-4", "gpt-2",
    "llama-bpe", "llama-spm", "mpt", "phi-3", "qwen2", "qwen35", "refact", "starcoder",
)  # fmt: skip


def _cases(gguf: Path) -> list[tuple[str, list[int]]]:
    """(text, ids) pairs split as test-tokenizer-0.cpp splits them: no empty piece after a
    final separator, and the same number of texts and id lines."""
    raw = Path(f"{gguf}.inp").read_text(encoding="utf-8")
    texts = raw.split(_SEPARATOR)
    if raw.endswith(_SEPARATOR):
        texts.pop()
    lines = Path(f"{gguf}.out").read_text(encoding="utf-8").splitlines()
    assert len(texts) == len(lines)
    return [(t, [int(x) for x in line.split()]) for t, line in zip(texts, lines, strict=True)]


def test_every_vocab_with_cases_is_listed(llama_cpp_models: Path) -> None:
    found = sorted(
        p.name[len("ggml-vocab-") : -len(".gguf.inp")]
        for p in llama_cpp_models.glob("ggml-vocab-*.gguf.inp")
    )
    assert found == sorted(VOCABS)


@pytest.mark.parametrize("vocab", VOCABS)
def test_llama_cpp_vocab_cases(llama_cpp_models: Path, vocab: str) -> None:
    gguf = llama_cpp_models / f"ggml-vocab-{vocab}.gguf"
    tok = Tokenizer.from_gguf(GGUFFile(gguf))
    cases = _cases(gguf)
    assert len(cases) >= 46  # every suite here has at least 46 cases
    wrong = [
        (text, got, want)
        for text, want in cases
        if (got := tok.encode(text, add_special=False, parse_special=False)) != want
    ]
    assert wrong == []
