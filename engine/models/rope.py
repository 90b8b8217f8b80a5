"""Rotary position embeddings as ggml computes them (`ggml/src/ggml-cpu/ops.cpp`, `rope_yarn`).

A `Rope` holds one layer's frequency settings (spec: gguf-and-models.md section 4.3): base,
linear `freq_scale`, optional per-pair frequency factors (`rope_freqs.weight`, Llama 3 scaling),
YaRN ramp, and which dims form a pair: adjacent `(x[2k], x[2k+1])` ("normal", llama) or half split
`(x[k], x[k + n_rot/2])` ("neox", qwen2/qwen3/gemma3). Angles and their cos/sin are computed in
float64 and rounded once to float32 (ggml multiplies in float32, which differs in the last bits).
They are the same bits on every machine: the frequencies base**(-2k/n) come from Python's decimal
module (NumPy's float64 power differs between its AVX512 and AVX2 paths), the angles from IEEE
products, and a cos/sin whose float64 value lies within 2**-40 (relative) of a float32 rounding
midpoint, where libm's last bit could decide, is rounded from a 40-digit decimal evaluation.
The model uses it on fresh q/k; the KV cache uses it to re-rotate cached keys on a context shift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal, localcontext
from functools import cache

import numpy as np
import numpy.typing as npt

# ggml's YaRN defaults; llama.cpp does not read the GGUF's yarn_beta_* keys for these archs.
YARN_BETA_FAST = 32.0
YARN_BETA_SLOW = 1.0


@dataclass(frozen=True)
class Rope:
    n_rot: int  # rotated dims per head (<= head dim; the rest pass through)
    base: float
    neox: bool
    freq_scale: float = 1.0  # 1 / rope.scaling.factor
    factors: tuple[float, ...] | None = None  # (n_rot/2,) divisors of each pair's frequency
    yarn: bool = False  # rope.scaling.type == "yarn" (ggml ext_factor = 1)
    n_ctx_orig: int = 0  # YaRN original context length
    attn_factor: float = 1.0  # extra multiplier on cos and sin

    def _corr_dims(self) -> tuple[float, float]:
        # ggml_rope_yarn_corr_dims: the pair indices where the YaRN ramp starts and ends.
        def corr(beta: float) -> float:
            return (
                self.n_rot
                * math.log(self.n_ctx_orig / (beta * 2 * math.pi))
                / (2 * math.log(self.base))
            )

        low = max(0.0, math.floor(corr(YARN_BETA_FAST)))
        high = min(self.n_rot - 1.0, math.ceil(corr(YARN_BETA_SLOW)))
        return low, high

    def cos_sin(
        self, positions: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """cos and sin of every pair's angle at `positions` (P,): two (P, n_rot/2) arrays."""
        k = np.arange(self.n_rot // 2, dtype=np.float64)  # pair index
        freqs = np.array(_inverse_frequencies(self.base, self.n_rot))  # (n_rot/2,)
        theta_extrap = positions.astype(np.float64)[:, None] * freqs
        if self.factors is not None:
            theta_extrap = theta_extrap / np.asarray(self.factors, dtype=np.float64)
        theta = self.freq_scale * theta_extrap
        mscale = self.attn_factor
        if self.yarn:
            low, high = self._corr_dims()
            ramp = 1.0 - np.clip((k - low) / max(0.001, high - low), 0.0, 1.0)  # (n_rot/2,)
            theta = theta * (1.0 - ramp) + theta_extrap * ramp
            mscale *= 1.0 + 0.1 * math.log(1.0 / self.freq_scale)
        return _round_trig(theta, mscale, cos=True), _round_trig(theta, mscale, cos=False)

    def apply(
        self,
        x: npt.NDArray[np.float32],
        cos: npt.NDArray[np.float32],
        sin: npt.NDArray[np.float32],
    ) -> npt.NDArray[np.float32]:
        """Rotate the first n_rot dims of `x` (..., Dh); cos/sin broadcast to (..., n_rot/2)."""
        half = self.n_rot // 2
        out = x.copy()
        if self.neox:
            x0, x1 = x[..., :half], x[..., half : self.n_rot]
            out[..., :half] = x0 * cos - x1 * sin
            out[..., half : self.n_rot] = x0 * sin + x1 * cos
        else:
            x0, x1 = x[..., 0 : self.n_rot : 2], x[..., 1 : self.n_rot : 2]
            out[..., 0 : self.n_rot : 2] = x0 * cos - x1 * sin
            out[..., 1 : self.n_rot : 2] = x0 * sin + x1 * cos
        return out


@cache
def _inverse_frequencies(base: float, n_rot: int) -> tuple[float, ...]:
    """base ** (-2k / n_rot) for each pair k, correctly rounded to float64 (decimal, 40 digits)."""
    with localcontext() as ctx:
        ctx.prec = 40
        b = Decimal(base)
        return tuple(float(b ** (Decimal(-2 * k) / Decimal(n_rot))) for k in range(n_rot // 2))


_PI_40 = Decimal("3.141592653589793238462643383279502884197")
_NEAR_MIDPOINT = 2.0**-40  # relative distance below which libm's last bit could matter


def _round_trig(
    theta: npt.NDArray[np.float64], mscale: float, cos: bool
) -> npt.NDArray[np.float32]:
    """float32 of cos/sin(theta) * mscale, with near-midpoint values decided in decimal."""
    v = (np.cos(theta) if cos else np.sin(theta)) * mscale
    f = v.astype(np.float32)
    lo = np.where(f.astype(np.float64) <= v, f, np.nextafter(f, np.float32(-np.inf)))
    mid = (lo.astype(np.float64) + np.nextafter(lo, np.float32(np.inf)).astype(np.float64)) / 2
    near = np.abs(v - mid) <= np.abs(v) * _NEAR_MIDPOINT
    for idx in zip(*np.nonzero(near), strict=True):
        exact = _decimal_trig(float(theta[idx]), cos) * Decimal(mscale)
        f[idx] = lo[idx] if exact < Decimal(float(mid[idx])) else np.nextafter(lo[idx], np.inf)
    return f


def _decimal_trig(x: float, cos: bool) -> Decimal:
    """cos or sin of the float64 `x` to ~35 digits: reduce by 2*pi, then the Taylor series."""
    with localcontext() as ctx:
        ctx.prec = 45
        t = Decimal(x)
        t -= (t / (2 * _PI_40)).to_integral_value() * 2 * _PI_40
        term = Decimal(1) if cos else t
        total, k = term, 1 if cos else 2
        while abs(term) > Decimal(10) ** -42:
            term = (
                -term * t * t / ((2 * k - 1) * (2 * k))
                if cos
                else -term * t * t / ((2 * k - 2) * (2 * k - 1))
            )
            total += term
            k += 1
        return +total
