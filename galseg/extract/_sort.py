"""Small in-place sorts for the numba kernels.

numba's ``np.sort`` / ``np.argsort`` each add about a second to a cold
compile of every kernel that uses them; the kernels only sort a few values
(median windows, CLEAN menus) or, once, a mesh grid.  These give the same
order as NumPy (ascending, NaN last; equal values are indistinguishable
except for the sign of zero, which no caller can see).
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["sort_inplace", "argsort_small"]


@numba.njit(cache=True, inline="always")
def _before(a, b):
    """NumPy's sort order: ``a < b``, NaN after everything."""
    return a < b or (b != b and a == a)


@numba.njit(cache=True)
def _sift(a, i, n):
    while True:
        c = 2 * i + 1
        if c >= n:
            return
        if c + 1 < n and _before(a[c], a[c + 1]):
            c += 1
        if not _before(a[i], a[c]):
            return
        a[i], a[c] = a[c], a[i]
        i = c


@numba.njit(cache=True)
def sort_inplace(a):
    """Sort a 1-D array in place (insertion sort when short, else heapsort)."""
    n = a.size
    if n <= 16:
        for i in range(1, n):
            v = a[i]
            j = i - 1
            while j >= 0 and _before(v, a[j]):
                a[j + 1] = a[j]
                j -= 1
            a[j + 1] = v
        return
    for start in range(n // 2 - 1, -1, -1):
        _sift(a, start, n)
    for end in range(n - 1, 0, -1):
        a[0], a[end] = a[end], a[0]
        _sift(a, 0, end)


@numba.njit(cache=True)
def argsort_small(a):
    """Indices that sort a short 1-D array of distinct values (insertion sort)."""
    n = a.size
    idx = np.arange(n)
    for i in range(1, n):
        k = idx[i]
        j = i - 1
        while j >= 0 and a[k] < a[idx[j]]:
            idx[j + 1] = idx[j]
            j -= 1
        idx[j + 1] = k
    return idx
