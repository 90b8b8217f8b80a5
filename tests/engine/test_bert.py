"""engine/models/bert.py: the bert and nomic-bert encoders against llama.cpp's embeddings.

Tiny random encoders (tests/tiny_bert.py) are compared with llama.cpp live; nomic-embed-text-v1.5
(F16) with tests/golden/embed_nomic.json (tests/golden/make_embed_golden.py), re-checked live.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine import BertModel, load
from engine.errors import Cancelled
from engine.gguf.fetch import model_path
from tests.conftest import HAVE_LLAMA_CPP, needs_oracle
from tests.golden.oracle_build import isa_mismatch
from tests.tiny_bert import ARCHS, write_tiny_bert

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "embed_nomic.json"
TINY_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "hello world",
    "Tiny models embed texts, quickly!",
    "zzz unknownword ## [CLS]",
    "a",
)
# Measured on this machine (AMD EPYC, AVX512 llama.cpp 0.3.36): tiny encoders max |diff| 1.7e-5
# (bert) and 6e-7 (nomic-bert); nomic-embed-text worst cosine 0.99999948 over the 50 golden texts.
TINY_MAX_DIFF = 1e-4
MIN_COSINE = 0.99999


def pooled(model: BertModel, ids: list[int]) -> np.ndarray:
    hidden = model.embed(ids)  # (T, D)
    if model.config.pooling_type == 1:
        return hidden.mean(axis=0, dtype=np.float32)
    assert model.config.pooling_type == 2
    return hidden[0]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture(scope="module", params=ARCHS)
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("bert") / f"{request.param}.gguf", request.param)


@pytest.fixture(scope="module")
def nomic() -> BertModel:
    model = load(model_path("nomic-embed-text"))
    assert isinstance(model, BertModel)
    return model


@pytest.fixture(scope="module")
def golden() -> dict:
    with open(GOLDEN) as f:
        return json.load(f)


def test_load_dispatches_on_architecture(tiny: Path):
    model = load(tiny)
    assert isinstance(model, BertModel)
    assert model.config.n_embd == 32 and model.config.n_layer == 2
    ids = model.tokenize("hello world")
    assert ids[0] == model.tokenizer.bos_id and len(ids) == 4  # [CLS] hello world [SEP]
    assert model.embed(ids).shape == (4, 32)


def test_embed_rejects_bad_input_and_stops_when_cancelled(tiny: Path):
    model = load(tiny)
    with pytest.raises(ValueError, match="at least one token"):
        model.embed([])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.embed([2, model.n_vocab])
    with pytest.raises(ValueError, match="exceed the trained context"):
        model.embed([2] * (model.n_ctx_train + 1))
    with pytest.raises(Cancelled):
        model.embed([2, 3], cancelled=lambda: True)


def test_attention_sees_later_tokens(tiny: Path):
    # bidirectional: the first row changes when a later token does (a causal model's would not)
    model = load(tiny)
    a = model.embed([2, 10, 11, 3])
    b = model.embed([2, 10, 12, 3])
    assert not np.array_equal(a[0], b[0])


def test_batched_rows_equal_solo_rows(tiny: Path):
    model = load(tiny)
    seqs = [model.tokenize(t, parse_special=False) for t in TINY_TEXTS]
    batched = model.embed_many(seqs)
    assert [b.shape[0] for b in batched] == [len(s) for s in seqs]
    for ids, rows in zip(seqs, batched, strict=True):
        assert np.array_equal(rows, model.embed(ids))  # bit for bit
    assert model.embed_many([]) == []


@pytest.mark.oracle
@needs_oracle
def test_tiny_matches_llama_cpp(tiny: Path):
    import llama_cpp

    model = load(tiny)
    llm = llama_cpp.Llama(str(tiny), embedding=True, n_ctx=64, verbose=False)
    for text in TINY_TEXTS:
        ids = llm.tokenize(text.encode(), add_bos=True, special=False)
        assert model.tokenize(text, parse_special=False) == ids, text
        expected = np.array(llm.embed(text, normalize=False), dtype=np.float32)
        np.testing.assert_allclose(pooled(model, ids), expected, atol=TINY_MAX_DIFF, rtol=0)


@pytest.mark.slow
def test_nomic_matches_golden(nomic: BertModel, golden: dict):
    assert golden["header"]["pooling_type"] == nomic.config.pooling_type == 1
    worst = 1.0
    for case in golden["cases"]:
        ids = nomic.tokenize(case["text"], parse_special=False)
        assert ids == case["ids"], case["text"]
        worst = min(worst, cosine(pooled(nomic, ids), case["embedding"]))
    assert len(golden["cases"]) == 50
    assert worst >= MIN_COSINE


@pytest.mark.slow
@pytest.mark.oracle
@pytest.mark.skipif(not HAVE_LLAMA_CPP, reason="llama_cpp is not importable")
def test_nomic_golden_live(nomic: BertModel, golden: dict):
    import llama_cpp

    from tests.golden.make_embed_golden import N_CTX

    llm = llama_cpp.Llama(
        str(nomic.path), embedding=True, n_ctx=N_CTX, n_batch=N_CTX, n_ubatch=N_CTX,
        n_threads=2, verbose=False,
    )  # fmt: skip
    # The golden's bits are its build's: another ISA's llama.cpp sums in another order (an AVX2
    # build gave cosine 0.9999996 against the AVX512 golden), so only a same-ISA oracle must
    # reproduce them; ours is compared with whichever runs here.
    same_build = isa_mismatch(golden["header"]["oracle"]["isa"]) is None
    for case in golden["cases"][::10]:
        live = llm.embed(case["text"], normalize=False)
        if same_build:
            assert cosine(live, case["embedding"]) >= 1 - 1e-12, case["text"]
        assert cosine(pooled(nomic, case["ids"]), live) >= MIN_COSINE
