"""glibc's binary32 `expf` and `logf`, elementwise and bit for bit, as llama.cpp calls them.

NumPy's float32 exp/log differ from glibc in many last bits (spec/sampling.md §4), and llama.cpp's
softmax, min-p and typical sampling depend on those bits. glibc's expf is within 0.502 ulp, so it
returns the correctly rounded value unless the exact result lies within 0.002 ulp of a rounding
midpoint: float64 exp rounded to float32 is used everywhere else, and libm is called (through
ctypes) only for the ~2% of inputs near a midpoint. logf (0.818 ulp) always goes to libm.
"""

from __future__ import annotations

import ctypes
import ctypes.util

import numpy as np
import numpy.typing as npt

F32 = np.float32
FloatArray = npt.NDArray[np.float32]

_LIBM = ctypes.CDLL(ctypes.util.find_library("m"))
_LIBM.expf.restype = ctypes.c_float
_LIBM.expf.argtypes = [ctypes.c_float]
_LIBM.logf.restype = ctypes.c_float
_LIBM.logf.argtypes = [ctypes.c_float]
_libm_expf = np.frompyfunc(_LIBM.expf, 1, 1)
_libm_logf = np.frompyfunc(_LIBM.logf, 1, 1)
_MIDPOINT_BAND = 0.01  # in float32 ulps; measured glibc disagreements all lie within 0.0016


def expf(x: FloatArray) -> FloatArray:
    """glibc `expf`, elementwise, bit for bit. (n,) float32 -> (n,) float32."""
    x = np.asarray(x, dtype=F32)
    e = np.exp(x.astype(np.float64))
    f = e.astype(F32)
    lo = np.where(f.astype(np.float64) <= e, f, np.nextafter(f, F32(-np.inf)))
    hi = np.nextafter(lo, F32(np.inf))
    ulp = hi.astype(np.float64) - lo.astype(np.float64)
    with np.errstate(invalid="ignore"):
        dist = np.abs(e - (lo.astype(np.float64) + hi.astype(np.float64)) / 2) / ulp
    near = ~(dist > _MIDPOINT_BAND)  # also catches NaN and infinities
    if near.any():
        with np.errstate(over="ignore", under="ignore", invalid="ignore"):
            f[near] = _libm_expf(x[near]).astype(F32)
    return f


def logf(x: FloatArray) -> FloatArray:
    """glibc `logf`, elementwise, bit for bit. (n,) float32 -> (n,) float32."""
    x = np.asarray(x, dtype=F32)
    with np.errstate(divide="ignore", invalid="ignore"):  # logf(0) = -inf, as in C
        return _libm_logf(x).astype(F32).reshape(x.shape)
