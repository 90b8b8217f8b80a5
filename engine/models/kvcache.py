"""One sequence's key/value cache: arrays that grow with the sequence, its tokens, context shift.

Keys are stored after RoPE, values as computed. With `f16` (llama.cpp's default F16 cache, see
engine/models/numerics.py) the model writes F16-rounded values and the arrays are float16, half
the memory of float32 and the same numbers (an F16-rounded float32 converts to float16 exactly);
shift() rounds re-rotated keys again, as llama.cpp writes them back into its F16 cache. Without
`f16` the arrays are float32. Cache index == position: position p of the sequence lives at index
p of every layer. The arrays hold whole
`KEY_BLOCK`s, because attention sums its softmax denominator in fixed-size key blocks
(engine/models/attention.py); `reserve` grows them (doubling, up to `num_ctx` rounded up to a
block), so a short request on a large num_ctx holds only what it uses. Slots at or past `n_past`
are never read unmasked. This is the only mutable object in the forward pass.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from engine.errors import ContextOverflow
from engine.models.blockmatmul import Spans, norms_and_spans
from engine.models.numerics import round_f16
from engine.models.rope import Rope

KEY_BLOCK = 128  # keys per attention block; fixed so every row's arithmetic is batch-independent


@dataclass(frozen=True)
class KeyStats:
    """What attention's exactly rounded products need to know of one layer's keys and values,
    kept beside them so that a decode step does not measure the whole cache again. Each is a
    bound only: any larger value gives the same results (engine/models/blockmatmul.py)."""

    k_norm: npt.NDArray[np.float64]  # (Hkv, S) Euclidean norm of each key
    k_span: Spans  # (Hkv, S) `exact_spans` of each key
    v_max: npt.NDArray[np.float64]  # (Hkv, S / KEY_BLOCK, Dv) max |v| in each key block


def key_stats(k: np.ndarray, v: np.ndarray) -> KeyStats:
    """KeyStats of keys (Hkv, S, Dh) and values (Hkv, S, Dv), S whole key blocks."""
    norm, span = norms_and_spans(k.astype(np.float64))
    Hkv, S, Dv = v.shape
    v_max = np.abs(v.reshape(Hkv, S // KEY_BLOCK, KEY_BLOCK, Dv)).max(axis=2)
    return KeyStats(norm, span, v_max.astype(np.float64))


class KVCache:
    """Keys (after RoPE) and values of every layer for positions 0 .. n_past-1 of one sequence."""

    def __init__(
        self,
        *,
        num_ctx: int,
        n_head_kv: int,
        head_dim_k: int,
        head_dim_v: int,
        ropes: tuple[Rope, ...],
        f16: bool = False,
    ) -> None:
        if num_ctx < 1:
            raise ContextOverflow(f"num_ctx must be at least 1, got {num_ctx}")
        n_layer = len(ropes)
        self.num_ctx = num_ctx
        self.max_capacity = _blocks(num_ctx)
        self.ropes = ropes  # per layer, used to re-rotate keys on shift()
        self.f16 = f16  # values are F16-rounded (llama.cpp's F16 cache) and stay so on shift()
        dtype = np.float16 if f16 else np.float32
        self.k = np.zeros((n_layer, n_head_kv, KEY_BLOCK, head_dim_k), dtype)  # (L, Hkv, S, Dh)
        self.v = np.zeros((n_layer, n_head_kv, KEY_BLOCK, head_dim_v), dtype)  # (L, Hkv, S, Dv)
        # KeyStats of every layer, kept up to date by write() and shift(); zeros are the stats
        # of the zero slots
        self.k_norm = np.zeros((n_layer, n_head_kv, KEY_BLOCK))
        self.k_span = np.zeros((n_layer, n_head_kv, KEY_BLOCK), np.int16)
        self.v_max = np.zeros((n_layer, n_head_kv, 1, head_dim_v))
        self.tokens: list[int] = []  # the token at each cached position
        # Positions 0 .. n_fresh-1 have not moved since they were computed, so they hold exactly
        # what a fresh evaluation of those tokens computes (rows do not depend on how they were
        # batched, engine/models/decoder.py); positions moved by shift() hold re-rotated keys.
        self.n_fresh = 0

    @property
    def capacity(self) -> int:
        """Positions the arrays hold now (whole key blocks, at most num_ctx rounded up)."""
        return self.k.shape[2]

    @property
    def nbytes(self) -> int:
        arrays = (self.k, self.v, self.k_norm, self.k_span, self.v_max)
        return sum(a.nbytes for a in arrays)

    def write(self, layer: int, pos0: int, k: np.ndarray, v: np.ndarray) -> None:
        """Store keys (n, Hkv, Dh) and values (n, Hkv, Dv) of positions pos0 .. pos0+n-1.

        Their norms and spans are measured; a block's v_max becomes the larger of what it was
        and the new values' |v|: still a bound for the block, whatever its other slots hold.
        """
        n = len(k)
        at = (layer, slice(None), slice(pos0, pos0 + n))
        self.k[at], self.v[at] = k.transpose(1, 0, 2), v.transpose(1, 0, 2)  # (Hkv, n, D)
        self.k_norm[at], self.k_span[at] = norms_and_spans(self.k[at].astype(np.float64))
        for b in range(pos0 // KEY_BLOCK, (pos0 + n - 1) // KEY_BLOCK + 1):
            lo, hi = max(pos0, b * KEY_BLOCK), min(pos0 + n, (b + 1) * KEY_BLOCK)
            new_max = np.abs(self.v[layer, :, lo:hi]).max(axis=1)
            np.maximum(self.v_max[layer, :, b], new_max, out=self.v_max[layer, :, b])

    def stats(self, layer: int) -> KeyStats:
        """The KeyStats of one layer's arrays (views)."""
        return KeyStats(self.k_norm[layer], self.k_span[layer], self.v_max[layer])

    def _measure(self, layer: int, lo: int, hi: int) -> None:
        """Measure again the stats of positions lo .. hi-1 and of the key blocks holding them."""
        b0, b1 = lo // KEY_BLOCK * KEY_BLOCK, _blocks(hi)
        fresh = key_stats(self.k[layer, :, b0:b1], self.v[layer, :, b0:b1])
        self.k_norm[layer, :, lo:hi] = fresh.k_norm[:, lo - b0 : hi - b0]
        self.k_span[layer, :, lo:hi] = fresh.k_span[:, lo - b0 : hi - b0]
        self.v_max[layer, :, b0 // KEY_BLOCK : b1 // KEY_BLOCK] = fresh.v_max

    @property
    def n_past(self) -> int:
        return len(self.tokens)

    @property
    def n_free(self) -> int:
        return self.num_ctx - self.n_past

    def truncate(self, n: int) -> None:
        """Keep the first `n` positions (prompt-prefix reuse); later slots become free."""
        if not 0 <= n <= self.n_past:
            raise ValueError(f"truncate({n}): expected 0 <= n <= n_past = {self.n_past}")
        del self.tokens[n:]
        self.n_fresh = min(self.n_fresh, n)

    def append(self, tokens: Iterable[int | np.integer]) -> None:
        """Record the tokens whose keys and values the model has just written."""
        fresh_prefix = self.n_fresh == self.n_past
        self.tokens.extend(int(t) for t in tokens)
        if fresh_prefix:
            self.n_fresh = self.n_past

    def shift(self, n_keep: int, n_discard: int) -> None:
        """llama-server's context shift: drop positions [n_keep, n_keep + n_discard).

        Later positions move down by `n_discard`, and their cached keys are rotated by RoPE for
        the position delta -n_discard, as llama.cpp's K-shift does (`build_rope_shift`: the
        cached K goes through rope_ext again with the delta as position). Values do not move
        through RoPE. spec: sampling.md section 6.7.
        """
        n_past = self.n_past
        if n_keep < 0 or n_discard < 0 or n_keep + n_discard > n_past:
            raise ValueError(
                f"shift(n_keep={n_keep}, n_discard={n_discard}): expected non-negative values "
                f"with n_keep + n_discard <= n_past = {n_past}"
            )
        if n_discard == 0:
            return
        src, dst, n_moved = n_keep + n_discard, n_keep, n_past - n_keep - n_discard
        # Overlapping slice assignment: NumPy copies through a temporary, so order is safe.
        self.k[:, :, dst : dst + n_moved] = self.k[:, :, src:n_past]
        self.v[:, :, dst : dst + n_moved] = self.v[:, :, src:n_past]
        delta = np.array([-n_discard], dtype=np.int64)
        for layer, rope in enumerate(self.ropes):
            cos, sin = rope.cos_sin(delta)  # (1, n_rot/2): the same delta for every moved key
            moved = self.k[layer, :, dst : dst + n_moved].astype(np.float32)  # (Hkv, n_moved, Dh)
            rotated = rope.apply(moved, cos, sin)
            if self.f16:
                rotated = round_f16(rotated)
            self.k[layer, :, dst : dst + n_moved] = rotated
            self._measure(layer, dst, n_past)  # the stale slots past the moved ones too
        del self.tokens[n_keep : n_keep + n_discard]
        self.n_fresh = min(self.n_fresh, n_keep)  # moved keys were re-rotated

    def reserve(self, n_new: int) -> None:
        """Make room for `n_new` more positions; ContextOverflow unless they fit in num_ctx."""
        if n_new > self.n_free:
            raise ContextOverflow(
                f"{n_new} new tokens do not fit: {self.n_past} of num_ctx={self.num_ctx} "
                "positions are in use"
            )
        needed = self.n_past + n_new
        if needed <= self.capacity:
            return
        capacity = min(self.max_capacity, max(_blocks(needed), 2 * self.capacity))
        self.k, self.v = _resized(self.k, capacity), _resized(self.v, capacity)
        self.k_norm, self.k_span = _resized(self.k_norm, capacity), _resized(self.k_span, capacity)
        self.v_max = _resized(self.v_max, capacity // KEY_BLOCK)


def cache_bytes(
    n_layer: int, n_head_kv: int, head_dim_k: int, head_dim_v: int, capacity: int, f16: bool
) -> int:
    """What a KVCache of `capacity` positions (whole key blocks) holds: keys and values, and
    their KeyStats (8 + 2 bytes a key, 8 bytes a value dimension per key block)."""
    heads = n_layer * n_head_kv
    kv = heads * capacity * (head_dim_k + head_dim_v) * (2 if f16 else 4)
    return kv + heads * capacity * 10 + heads * (capacity // KEY_BLOCK) * head_dim_v * 8


def _blocks(n: int) -> int:
    """`n` rounded up to whole key blocks."""
    return -(-n // KEY_BLOCK) * KEY_BLOCK


def _resized(a: np.ndarray, capacity: int) -> np.ndarray:
    """A copy of (L, Hkv, S, ...) `a` with S = `capacity`, the new slots zero."""
    out = np.zeros((*a.shape[:2], capacity, *a.shape[3:]), a.dtype)
    out[:, :, : a.shape[2]] = a
    return out
