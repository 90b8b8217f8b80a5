"""Inspection of a forward pass: per-layer hidden states, attention weights, the logit lens.

Built only on engine/models/decoder.py's `Probe` hook, so the numbers of the normal path are the
ones computed (tests/engine/test_inspection.py checks the logits are bit-identical to a plain
`Model.eval`). Attention weights are recomputed from the probed q and the cache's keys (after
RoPE, as attention.py reads them): softmax(scale * q.k) over the visible keys, in float64. They are
for looking at, not bit-equal to the F16-rounded probabilities attention.py multiplies with v.
The logit lens sends a layer's output through the output norm and decoder's own `output_logits`,
so the last layer's lens is exactly the model's logits.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from engine.models.decoder import DEFAULT_NUM_BATCH, Model, output_logits, rms_norm

F32 = np.float32
Array = npt.NDArray[np.float32]


class Capture:
    """A `Probe` that keeps every array it is given, rows of successive calls concatenated."""

    def __init__(self) -> None:
        self._parts: dict[tuple[int, str], list[Array]] = defaultdict(list)

    def __call__(self, layer: int, name: str, value: Array) -> None:
        self._parts[(layer, name)].append(np.array(value, copy=True))

    def get(self, layer: int, name: str) -> Array:
        """All rows probed at (layer, name): (T, ...)."""
        parts = self._parts[(layer, name)]
        if not parts:
            raise KeyError(f"nothing was probed at layer {layer} as {name!r}")
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


@dataclass(frozen=True)
class LayerView:
    """One layer's output and what it says about the next token."""

    layer: int
    hidden: Array  # (T, D): the residual stream after this layer
    attn_norm: npt.NDArray[np.float64]  # (T,): |attention output| added to the residual
    ffn_norm: npt.NDArray[np.float64]  # (T,): |FFN output| added to the residual
    lens_top: npt.NDArray[np.int64]  # (T, k): logit-lens token ids, most likely first
    lens_prob: npt.NDArray[np.float64]  # (T, k): their softmax probabilities


@dataclass(frozen=True)
class Inspection:
    """A prompt's forward pass opened up: see `inspect`."""

    tokens: tuple[int, ...]
    pieces: tuple[str, ...]  # each token's text
    logits: Array  # (T, V): bit-identical to Model.eval's
    embedding_norm: npt.NDArray[np.float64]  # (T,)
    layers: tuple[LayerView, ...]
    attention: dict[tuple[int, int], npt.NDArray[np.float64]]  # (layer, head) -> (T, T)
    lens_pieces: dict[int, str]  # the text of every token id in a layer's lens_top


def attention_weights(
    q: Array, k_cache: Array, pos0: int, window: int, scale: float, head: int
) -> npt.NDArray[np.float64]:
    """Softmax probabilities of query head `head` for T queries at positions pos0..: (T, pos0+T).

    q: (T, H, Dh) as probed; k_cache: (Hkv, S, Dh) of one layer, holding positions 0..pos0+T-1.
    Masked keys (future, or outside a sliding `window`) get exactly 0.
    """
    T, H, _ = q.shape
    S = pos0 + T
    Hkv = k_cache.shape[0]
    k = k_cache[head // (H // Hkv), :S].astype(np.float64)  # (S, Dh)
    scores = q[:, head].astype(np.float64) @ k.T * scale  # (T, S)
    q_pos = np.arange(pos0, S)[:, None]
    k_pos = np.arange(S)[None, :]
    visible = k_pos <= q_pos
    if window:
        visible &= q_pos - k_pos < window
    scores = np.where(visible, scores, -np.inf)
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def logit_lens(model: Model, hidden: Array) -> Array:
    """(T, D) residual stream -> (T, V) logits, through the output norm and output matrix."""
    weights = model.weights
    cfg = model.config
    normed = rms_norm(hidden, weights.output_norm, cfg.norm_eps)
    return output_logits(weights, cfg, normed, model.numerics)


def _top(logits: Array, k: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    x = logits.astype(np.float64)
    p = np.exp(x - x.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    top = np.argsort(-x, axis=1, kind="stable")[:, :k]  # (T, k)
    return top.astype(np.int64), np.take_along_axis(p, top, axis=1)


def inspect(
    model: Model,
    tokens: Sequence[int],
    *,
    heads: Sequence[tuple[int, int]] = (),
    top: int = 5,
    num_batch: int = DEFAULT_NUM_BATCH,
) -> Inspection:
    """Evaluate `tokens` as a fresh sequence and capture what each layer does.

    heads: (layer, head) pairs whose attention weights to recompute. top: logit-lens tokens kept
    per layer and position. num_batch: the prefill chunk size, as in Model.eval.
    """
    cfg = model.config
    for il, h in heads:
        if not (0 <= il < cfg.n_layer and 0 <= h < cfg.n_head):
            raise ValueError(
                f"head ({il}, {h}) does not exist: {cfg.n_layer} layers of {cfg.n_head} heads"
            )
    capture = Capture()
    cache = model.new_cache(max(len(tokens), 1))
    logits = model.eval(tokens, cache, num_batch, probe=capture)
    layers = []
    for il in range(cfg.n_layer):
        hidden = capture.get(il, "residual")
        ids, probs = _top(logit_lens(model, hidden), top)
        layers.append(
            LayerView(
                layer=il,
                hidden=hidden,
                attn_norm=np.linalg.norm(capture.get(il, "attn_out").astype(np.float64), axis=1),
                ffn_norm=np.linalg.norm(capture.get(il, "ffn_out").astype(np.float64), axis=1),
                lens_top=ids,
                lens_prob=probs,
            )
        )
    scale = 1.0 if cfg.traits.prescale_q else cfg.attention_scale  # gemma3's q is pre-scaled
    attention = {}
    for il, h in heads:
        window = cfg.sliding_window if cfg.swa_layers[il] else 0
        q = capture.get(il, "q")
        attention[(il, h)] = attention_weights(q, cache.k[il], 0, window, scale, h)
    embedding = capture.get(-1, "embedding").astype(np.float64)
    lens_ids = np.unique(np.concatenate([v.lens_top.ravel() for v in layers]))
    return Inspection(
        tokens=tuple(int(t) for t in tokens),
        pieces=tuple(model.detokenize([int(t)]) for t in tokens),
        logits=logits,
        embedding_norm=np.linalg.norm(embedding, axis=1),
        layers=tuple(layers),
        attention=attention,
        lens_pieces={int(i): model.detokenize([int(i)]) for i in lens_ids},
    )
