"""llama.cpp's candidate sorts, reproduced including the order of tied keys.

llama.cpp sorts candidates with libstdc++'s std::partial_sort and std::sort (introsort), and
above 128 kept entries with its own 128-bucket partial sort (src/llama-sampler.cpp,
llama_token_data_array_partial_sort). None of them is stable, so among equal logits the order
is whatever those algorithms produce, and the sampled token depends on it. The algorithms are
written out in spec/sampling.md §2.3; this module follows that text line by line.

Every function takes `keys` where *smaller sorts first* (pass -logits for a descending-logit
sort) and returns indices into `keys`. When the keys that decide the result are all distinct,
any correct sort gives the same order, so a NumPy fast path is used; otherwise the emulation runs
in pure Python on a list of (key, index) records.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

_THRESHOLD = 16  # libstdc++ _S_threshold: introsort hands runs this short to insertion sort
_PREFILTER_BLOCK = 4096  # partial_sort's heap scan is pre-filtered in blocks of this size
_N_BUCKETS = 128
_BUCKET_SCALE = np.float32(6.4)  # 128 / (10 - (-10)) as a float constant
_BUCKET_INTER = np.float32(64.0)  # -(-10) * 6.4f, rounded to float

Record = tuple[float, int]
Indices = npt.NDArray[np.int64]


def _sift_down(a: list[Record], base: int, hole: int, n: int, v: Record) -> None:
    """libstdc++ __adjust_heap + __push_heap; the root is the record that sorts LAST."""
    top = hole
    child = hole
    while child < (n - 1) // 2:
        child = 2 * child + 2
        if a[base + child][0] < a[base + child - 1][0]:
            child -= 1
        a[base + hole] = a[base + child]
        hole = child
    if n % 2 == 0 and child == (n - 2) // 2:
        child = 2 * child + 2
        a[base + hole] = a[base + child - 1]
        hole = child - 1
    parent = (hole - 1) // 2
    while hole > top and a[base + parent][0] < v[0]:
        a[base + hole] = a[base + parent]
        hole = parent
        parent = (hole - 1) // 2
    a[base + hole] = v


def _partial_sort(
    a: list[Record], f: int, m: int, last: int, keys: npt.NDArray[np.floating] | None = None
) -> None:
    """std::partial_sort(a+f, a+m, a+last): heap select, then heap sort of [f, m).

    `keys`, if given, are the original keys of a[m:last] (aligned with `a`); they let the heap
    scan skip records that cannot beat the current root without a Python-level comparison.
    """
    n = m - f
    if n >= 2:
        for p in range((n - 2) // 2, -1, -1):
            _sift_down(a, f, p, n, a[f + p])
    i = m
    while i < last:
        end = min(i + _PREFILTER_BLOCK, last)
        if keys is None:
            scan: list[int] | range = range(i, end)
        else:
            # the root's key never decreases, so a record that does not beat it now never will
            scan = (np.flatnonzero(keys[i:end] < a[f][0]) + i).tolist()
        for j in scan:
            if a[j][0] < a[f][0]:
                v = a[j]
                a[j] = a[f]
                _sift_down(a, f, 0, n, v)
        i = end
    for end in range(m - 1, f, -1):
        v = a[end]
        a[end] = a[f]
        _sift_down(a, f, 0, end - f, v)


def _median_to_first(a: list[Record], r: int, x: int, y: int, z: int) -> None:
    kx, ky, kz = a[x][0], a[y][0], a[z][0]
    if kx < ky:
        if ky < kz:
            s = y
        elif kx < kz:
            s = z
        else:
            s = x
    elif kx < kz:
        s = x
    elif ky < kz:
        s = z
    else:
        s = y
    a[r], a[s] = a[s], a[r]


def _partition(a: list[Record], lo: int, hi: int, pivot: int) -> int:
    """libstdc++ __unguarded_partition around a[pivot]."""
    kp = a[pivot][0]
    while True:
        while a[lo][0] < kp:
            lo += 1
        hi -= 1
        while kp < a[hi][0]:
            hi -= 1
        if not lo < hi:
            return lo
        a[lo], a[hi] = a[hi], a[lo]
        lo += 1


def _introsort(a: list[Record], f: int, last: int, depth: int) -> None:
    while last - f > _THRESHOLD:
        if depth == 0:
            _partial_sort(a, f, last, last)
            return
        depth -= 1
        mid = f + (last - f) // 2
        _median_to_first(a, f, f + 1, mid, last - 1)
        cut = _partition(a, f + 1, last, f)
        _introsort(a, cut, last, depth)
        last = cut


def _linear_insert(a: list[Record], i: int) -> None:
    v = a[i]
    j = i - 1
    while v[0] < a[j][0]:
        a[j + 1] = a[j]
        j -= 1
    a[j + 1] = v


def _insertion_sort(a: list[Record], f: int, last: int) -> None:
    for i in range(f + 1, last):
        if a[i][0] < a[f][0]:
            v = a[i]
            a[f + 1 : i + 1] = a[f:i]
            a[f] = v
        else:
            _linear_insert(a, i)


def _std_sort(a: list[Record], f: int, last: int) -> None:
    """std::sort(a+f, a+last): introsort with depth 2*floor(log2(n)), then insertion sort."""
    if last - f < 2:
        return
    _introsort(a, f, last, 2 * int(math.log2(last - f)))
    if last - f > _THRESHOLD:
        _insertion_sort(a, f, f + _THRESHOLD)
        for i in range(f + _THRESHOLD, last):
            _linear_insert(a, i)
    else:
        _insertion_sort(a, f, last)


def _records(keys: npt.NDArray[np.floating], idx: Indices) -> list[Record]:
    return list(zip(keys[idx].tolist(), idx.tolist(), strict=True))


def _distinct_sorted(keys: npt.NDArray[np.floating], idx: Indices) -> Indices | None:
    """`idx` ordered by key if those keys are all distinct and not NaN, else None."""
    order = idx[np.argsort(keys[idx], kind="stable")]
    k = keys[order]
    if np.isnan(k).any() or (k.size > 1 and not bool(np.all(k[1:] > k[:-1]))):
        return None
    return order


def sort(keys: npt.NDArray[np.floating]) -> Indices:
    """Indices of `keys` in the order std::sort with `a < b` leaves them. keys: (n,)."""
    idx = np.arange(keys.size, dtype=np.int64)
    fast = _distinct_sorted(keys, idx)
    if fast is not None:
        return fast
    a = _records(keys, idx)
    _std_sort(a, 0, len(a))
    return np.array([r[1] for r in a], dtype=np.int64)


def partial_sort(keys: npt.NDArray[np.floating], m: int) -> Indices:
    """First `m` indices after std::partial_sort(first, first + m, last). keys: (n,) -> (m,)."""
    n = keys.size
    m = min(m, n)
    kept = np.arange(n, dtype=np.int64) if m == n else np.argpartition(keys, m - 1)[:m]
    # a tie across the boundary makes the kept set itself depend on the algorithm
    boundary_tie = m < n and np.count_nonzero(keys <= keys[kept].max()) != m
    if not boundary_tie and not np.isnan(keys).any():
        fast = _distinct_sorted(keys, kept.astype(np.int64))
        if fast is not None:
            return fast
    return partial_sort_full(keys, m)[:m]


def partial_sort_full(keys: npt.NDArray[np.floating], m: int) -> Indices:
    """The whole array order std::partial_sort(first, first + m, last) leaves, tail included."""
    a = _records(keys, np.arange(keys.size, dtype=np.int64))
    _partial_sort(a, 0, min(m, len(a)), len(a), keys)
    return np.array([r[1] for r in a], dtype=np.int64)


def _buckets(logits: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
    """int(6.4f * logit + 64.0f) clamped to [0, 127], in float32 without FMA.

    x86's float->int conversion turns NaN and out-of-range values into INT_MIN, which clamps to
    bucket 0: even +inf lands in the lowest bucket.
    """
    x = (_BUCKET_SCALE * logits.astype(np.float32)) + _BUCKET_INTER  # float32 throughout
    x64 = x.astype(np.float64)
    valid = (x64 >= -(2.0**31)) & (x64 < 2.0**31)  # False for NaN as well
    ib = np.where(valid, np.trunc(np.where(valid, x64, 0.0)), float(np.iinfo(np.int32).min))
    return np.clip(ib, 0, _N_BUCKETS - 1).astype(np.int64)


def bucket_partial_sort(logits: npt.NDArray[np.float32], m: int) -> Indices:
    """llama.cpp's 128-bucket partial sort: (n,) logits -> (nhave,) indices, the first m sorted.

    Buckets are walked from the highest down until they hold >= m records; their records are
    scattered in bucket order (keeping array order within a bucket), every full bucket is
    std::sort-ed and the last one std::partial_sort-ed.
    """
    keys = -logits.astype(np.float32)
    ib = _buckets(logits)
    histo = np.bincount(ib, minlength=_N_BUCKETS)
    above = np.cumsum(histo[::-1])  # above[j]: records in buckets 127 .. 127 - j
    last_bucket = _N_BUCKETS - 1 - int(min(np.searchsorted(above, m), _N_BUCKETS - 1))
    parts: list[Indices] = []
    n_done = 0
    for b in range(_N_BUCKETS - 1, last_bucket - 1, -1):
        region = np.flatnonzero(ib == b)
        if b > last_bucket:
            parts.append(region[sort(keys[region])])
            n_done += region.size
        else:
            parts.append(region[partial_sort_with_tail(keys[region], m - n_done)])
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def partial_sort_with_tail(keys: npt.NDArray[np.floating], m: int) -> Indices:
    """std::partial_sort's first m sorted, followed by the remaining indices (any order).

    The bucket sort keeps the whole last bucket, but only its first m entries are ever read.
    """
    head = partial_sort(keys, m)
    rest = np.setdiff1d(np.arange(keys.size, dtype=np.int64), head, assume_unique=True)
    return np.concatenate([head, rest])


def top_order(logits: npt.NDArray[np.float32], m: int) -> Indices:
    """llama_token_data_array_partial_sort_inplace: the m highest logits, sorted. (n,) -> (m,)."""
    if m <= 128:
        return partial_sort(-logits.astype(np.float32), m)
    return bucket_partial_sort(logits, m)[:m]
