"""llama.cpp's random numbers: std::mt19937 plus libstdc++'s uniform_real_distribution<double>.

NumPy's MT19937 bit generator, put into the state of the legacy `RandomState(seed)` seeding
(MT's reference `init_genrand`), produces std::mt19937(seed)'s 32-bit stream. One double takes
two 32-bit outputs, low word first, as libstdc++'s generate_canonical<double, 53> does
(spec/sampling.md §5). `np.random.default_rng` and `np.random.MT19937(seed)` do not match.
"""

from __future__ import annotations

import secrets

import numpy as np

RANDOM_SEED = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: "draw a fresh seed", as JSON seed -1 becomes
_TWO_32 = 4294967296.0
_TWO_64 = 18446744073709551616.0
_BELOW_ONE = 1.0 - 2.0**-53  # nextafter(1.0, 0.0): libstdc++ clamps a draw that rounded up to 1


def resolve_seed(seed: int | None) -> int:
    """The 32-bit seed llama.cpp uses: `seed` modulo 2**32, or a fresh one for -1/None.

    llama-server reads the JSON seed as uint32 (so -2 is the fixed seed 4294967294), and
    0xFFFFFFFF means "random" (one std::random_device output).
    """
    if seed is None or seed & 0xFFFFFFFF == RANDOM_SEED:
        return secrets.randbits(32)
    return seed & 0xFFFFFFFF


class StdMT19937:
    """std::mt19937(seed) with libstdc++'s uniform_real_distribution<double>(0, 1)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed & 0xFFFFFFFF
        state = np.random.RandomState(self.seed).get_state(legacy=False)["state"]
        self._bits = np.random.MT19937()
        self._bits.state = {"bit_generator": "MT19937", "state": state}

    def next_u32(self) -> int:
        return int(self._bits.random_raw())

    def uniform_double(self) -> float:
        """One draw in [0, 1): (lo + hi * 2**32) / 2**64 with the first output as `lo`."""
        lo = float(self.next_u32())
        hi = float(self.next_u32())
        u = (lo + hi * _TWO_32) / _TWO_64  # hi * 2**32 is exact; the sum rounds once
        return u if u < 1.0 else _BELOW_ONE
