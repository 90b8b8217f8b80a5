"""engine/models/inspection.py: capture never changes the numbers; weights checked by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader
from gguf.quants import dequantize

import engine
from engine.models.inspection import inspect
from engine.models.numerics import FLOAT32
from tests.tiny_model import write_tiny_model

PROMPT = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("inspect") / "tiny.gguf", "llama")


@pytest.mark.parametrize("num_batch", [512, 3])
def test_capture_keeps_tiny_logits_bit_identical(tiny_path: Path, num_batch: int) -> None:
    model = engine.load(tiny_path)
    ids = model.tokenize(PROMPT)
    plain = model.eval(ids, model.new_cache(len(ids)), num_batch)
    seen = inspect(model, ids, heads=[(0, 0), (1, 3)], num_batch=num_batch)
    assert seen.logits.tobytes() == plain.tobytes()
    # the last layer's lens goes through the same output norm and matrix as the model
    top = np.argsort(-plain.astype(np.float64), axis=1, kind="stable")[:, :5]
    assert np.array_equal(seen.layers[-1].lens_top, top)


@pytest.mark.slow
def test_capture_keeps_smollm2_logits_bit_identical(smollm2_path: Path) -> None:
    model = engine.load(smollm2_path)
    ids = model.tokenize(PROMPT)
    plain = model.eval(ids, model.new_cache(len(ids)))
    seen = inspect(model, ids, heads=[(0, 0), (29, 8)])
    assert seen.logits.tobytes() == plain.tobytes()
    assert len(seen.layers) == 30 and seen.layers[0].hidden.shape == (len(ids), 576)
    assert seen.attention[(29, 8)].shape == (len(ids), len(ids))


def test_gemma3_sliding_window_weights(tmp_path: Path) -> None:
    """Gemma 3 (pre-scaled q, sliding layers with window 4): logits unchanged, window masked."""
    model = engine.load(write_tiny_model(tmp_path / "gemma3.gguf", "gemma3"))
    ids = model.tokenize(PROMPT)
    plain = model.eval(ids, model.new_cache(len(ids)))
    seen = inspect(model, ids, heads=[(0, 0), (5, 1)])
    assert seen.logits.tobytes() == plain.tobytes()
    T = len(ids)
    q_pos, k_pos = np.arange(T)[:, None], np.arange(T)[None, :]
    sliding = (k_pos <= q_pos) & (q_pos - k_pos < 4)
    assert np.all(seen.attention[(0, 0)][~sliding] == 0)  # layer 0 slides
    assert np.all(seen.attention[(5, 1)][k_pos > q_pos] == 0)  # layer 5 is global
    assert np.all(seen.attention[(5, 1)][(k_pos <= q_pos) & ~sliding] > 0)
    np.testing.assert_allclose(seen.attention[(0, 0)].sum(axis=1), 1)


def _rope_normal(x: np.ndarray, base: float) -> np.ndarray:
    """Adjacent pairs (x[2i], x[2i+1]) rotated by pos * base^(-2i/Dh): (T, H, Dh)."""
    T, _, Dh = x.shape
    theta = np.arange(T)[:, None] * base ** (-np.arange(0, Dh, 2) / Dh)  # (T, Dh/2)
    cos, sin = np.cos(theta)[:, None], np.sin(theta)[:, None]
    out = np.empty_like(x)
    out[..., 0::2] = x[..., 0::2] * cos - x[..., 1::2] * sin
    out[..., 1::2] = x[..., 0::2] * sin + x[..., 1::2] * cos
    return out


def test_attention_weights_match_hand_computation(tiny_path: Path) -> None:
    """Layer 0 of the tiny llama, from gguf-py's dequantized tensors in float64 by hand."""
    model = engine.load(tiny_path, numerics=FLOAT32)
    ids = model.tokenize(PROMPT)
    seen = inspect(model, ids, heads=[(0, h) for h in range(4)])
    t = {x.name: dequantize(x.data, x.tensor_type) for x in GGUFReader(tiny_path).tensors}
    x = t["token_embd.weight"].astype(np.float64)[ids]  # (T, D)
    h = x / np.sqrt(np.mean(x * x, axis=1, keepdims=True) + 1e-5) * t["blk.0.attn_norm.weight"]
    q = (h @ t["blk.0.attn_q.weight"].T).reshape(len(ids), 4, 16)
    k = (h @ t["blk.0.attn_k.weight"].T).reshape(len(ids), 2, 16)
    q, k = _rope_normal(q, 10000.0), _rope_normal(k, 10000.0)
    causal = np.tril(np.ones((len(ids), len(ids)), bool))
    for head in range(4):
        s = q[:, head] @ k[:, head // 2].T / 4.0  # 1/sqrt(Dh)
        s = np.where(causal, s, -np.inf)
        p = np.exp(s - s.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        np.testing.assert_allclose(seen.attention[(0, head)], p, atol=1e-5)
        assert np.all(seen.attention[(0, head)][~causal] == 0)


def test_unknown_head_is_rejected(tiny_path: Path) -> None:
    model = engine.load(tiny_path)
    with pytest.raises(ValueError, match=r"head \(2, 0\) does not exist: 2 layers of 4 heads"):
        inspect(model, [5, 6], heads=[(2, 0)])
