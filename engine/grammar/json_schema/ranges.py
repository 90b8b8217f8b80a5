"""Decimal integer ranges as GBNF (the digit-by-digit construction of llama.cpp's
`_generate_min_max_int`, written independently): `integer_range(lo, hi)` matches exactly the
integers in [lo, hi] written without leading zeros, and no `-0`.
"""

from __future__ import annotations

from engine.errors import GrammarError

MAX_DIGITS = 16  # an unbounded side stops at 16 digits, as the `integer` primitive does


def _same_length_range(lo: str, hi: str) -> str:
    """GBNF matching digit strings of len(lo) between lo and hi inclusive (lo <= hi)."""
    if lo == hi:
        return f'"{lo}"'
    i = 0
    while lo[i] == hi[i]:
        i += 1
    prefix = f'"{lo[:i]}" ' if i else ""
    x, y, m = lo[i], hi[i], len(lo) - i - 1
    if m == 0:
        return f"{prefix}[{x}-{y}]"
    lo_rest, hi_rest = lo[i + 1 :], hi[i + 1 :]
    alts = []
    first_full = x if lo_rest == "0" * m else chr(ord(x) + 1)
    last_full = y if hi_rest == "9" * m else chr(ord(y) - 1)
    if lo_rest != "0" * m:
        alts.append(f'"{x}" ({_same_length_range(lo_rest, "9" * m)})')
    if first_full <= last_full:
        alts.append(f"[{first_full}-{last_full}] [0-9]{{{m}}}")
    if hi_rest != "9" * m:
        alts.append(f'"{y}" ({_same_length_range("0" * m, hi_rest)})')
    return f"{prefix}({' | '.join(alts)})"


def _natural_range(lo: int, hi: int) -> str:
    """GBNF for decimal integers in [lo, hi], 0 <= lo <= hi, without leading zeros."""
    alts = []
    for n_digits in range(len(str(lo)), len(str(hi)) + 1):
        a = max(lo, 10 ** (n_digits - 1) if n_digits > 1 else 0)
        b = min(hi, 10**n_digits - 1)
        alts.append(_same_length_range(str(a), str(b)))
    return " | ".join(alts)


def integer_range(lo: int | None, hi: int | None) -> str:
    """GBNF for decimal integers in [lo, hi]; a missing side stops at 16 digits."""
    limit = 10**MAX_DIGITS - 1
    lo = -limit if lo is None else lo
    hi = limit if hi is None else hi
    if lo > hi:
        raise GrammarError(f"integer range [{lo}, {hi}] is empty")
    alts = []
    if lo < 0:
        alts.append(f'"-" ({_natural_range(-min(hi, -1), -lo)})')
    if hi >= 0:
        alts.append(_natural_range(max(lo, 0), hi))
    return " | ".join(alts)
