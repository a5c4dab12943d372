"""Numba kernels behind `lrcn.models.dropout`: random masks made and applied in one pass.

Imported on first use only (importing numba takes ~0.4 s). Each kernel runs over flat,
contiguous arrays in chunks spread over numba's threads; on Linux numba's OpenMP layer runs
them on torch's own OpenMP threads (both use the libgomp torch loaded), which is what makes
them fast between torch's operators: a separate pool would compete with torch's threads while
they spin-wait. Results do not depend on the number of threads: element i's random number is
a function of (seed, gamma, i) alone.

Element i keeps its value when ``z_i >= threshold``, where ``z_i`` is the i-th output of a
SplitMix64 stream (Steele, Lea & Flood, "Fast splittable pseudorandom number generators",
OOPSLA 2014; the generator behind Java's ``SplittableRandom``):

    z_i = mix64(seed + (i + 1) * gamma)      (arithmetic mod 2^64)

``mix64`` is SplitMix64's finaliser (Stafford's variant 13). Each call draws its own seed and
gamma (`stream_parameters`), as ``SplittableRandom.split`` does, so two calls are distinct
streams rather than shifted copies of one. Why not numba's own ``np.random``: it is a Mersenne
Twister per thread, sequential and ~8x slower here, and it cannot recompute element i's draw in
the backward pass; a counter-based stream can, so the mask is never stored.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

_U64 = np.uint64
_C1, _C2 = _U64(0xBF58476D1CE4E5B9), _U64(0x94D049BB133111EB)
_S27, _S30, _S31 = _U64(27), _U64(30), _U64(31)
_CHUNK = 1 << 15  # elements per parallel task


@njit(inline="always")
def _mix64(z):
    z = (z ^ (z >> _S30)) * _C1
    z = (z ^ (z >> _S27)) * _C2
    return z ^ (z >> _S31)


def stream_parameters(seed: int, gamma: int) -> tuple[np.uint64, np.uint64]:
    """A SplitMix64 stream from two random 64-bit integers, as ``SplittableRandom`` splits one:
    the gamma is mixed, made odd, and given enough 01/10 bit transitions (>= 24) that
    consecutive counters differ in many bits."""
    mask = (1 << 64) - 1
    z = gamma & mask
    z = ((z ^ (z >> 33)) * 0xFF51AFD7ED558CCD) & mask  # mixGamma: MurmurHash3's fmix64
    z = ((z ^ (z >> 33)) * 0xC4CEB9FE1A85EC53) & mask
    z = (z ^ (z >> 33)) | 1
    if bin(z ^ (z >> 1)).count("1") < 24:
        z ^= 0xAAAAAAAAAAAAAAAA
    return _U64(seed & mask), _U64(z)


@njit(parallel=True, nogil=True, cache=True, boundscheck=False, error_model="numpy")
def scale_kept(x, out, seed, gamma, threshold, scale, relu):
    """out[i] = x[i] * scale where element i is kept, else x[i] * 0 (so NaN stays NaN, as in
    ``F.dropout``); with `relu`, x[i] is first ``max(x[i], 0)`` (NaN stays NaN, as ``F.relu``).
    Element i is kept when its random number is >= threshold."""
    n = x.size
    zero = x.dtype.type(0)
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        for i in range(c * _CHUNK, min((c + 1) * _CHUNK, n)):
            z = _mix64(seed + _U64(i + 1) * gamma)
            v = x[i]
            if relu and v <= zero:
                v = zero
            out[i] = v * (scale if z >= threshold else zero)


@njit(parallel=True, nogil=True, cache=True, boundscheck=False, error_model="numpy")
def scale_where_positive(grad, out, grad_in, scale):
    """grad_in[i] = grad[i] * scale where out[i] > 0, else 0: the gradient of ReLU then
    dropout, read off their output (positive exactly where x > 0 and the element was kept)."""
    n = grad.size
    zero = grad.dtype.type(0)
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        for i in range(c * _CHUNK, min((c + 1) * _CHUNK, n)):
            grad_in[i] = grad[i] * scale if out[i] > zero else zero
