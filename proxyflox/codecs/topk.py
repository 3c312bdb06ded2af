"""``topk``: per tensor, only the ``ratio`` largest-magnitude entries, the rest sent as zero.

A tensor of n entries keeps ``ceil(ratio * n)`` (at least one): exactly the largest by
magnitude (ties broken by position). Their positions travel as the gaps between sorted indices
in the narrowest unsigned type that holds the largest gap (2 bytes at 1% of a large tensor), the
values as float32: about 6 bytes per kept entry against 4 per entry of the dense tensor.
Without error feedback the dropped mass is lost; with it (the default) it is sent later.
"""

from __future__ import annotations

import math

import numpy as np

from proxyflox.codecs.base import Params, as_bytes

_GAP_TYPES = (np.uint8, np.uint16, np.uint32, np.uint64)


class TopK:
    """Top-k sparsification.

    Args:
        ratio: The fraction of each tensor's entries that is sent, in (0, 1].
    """

    name = "topk"
    lossy = True

    def __init__(self, ratio: float = 0.01) -> None:
        self.ratio = ratio

    def kept(self, size: int) -> int:
        """How many of ``size`` entries are sent."""
        return min(size, max(1, math.ceil(self.ratio * size)))

    def encode(self, array: np.ndarray) -> tuple[Params, list[bytes | memoryview]]:
        """The gaps between kept positions, then the kept values (float32)."""
        flat = array.reshape(-1)
        k = self.kept(flat.size)
        positions = np.sort(largest(np.abs(flat), k))
        gaps = np.diff(positions, prepend=0)
        gap_type = next(t for t in _GAP_TYPES if int(gaps.max(initial=0)) <= np.iinfo(t).max)
        values = flat[positions].astype(np.float32)
        params = {"k": int(k), "gap": np.dtype(gap_type).str}
        return params, [as_bytes(gaps.astype(gap_type)), as_bytes(values)]

    def decode(
        self, params: Params, payload: memoryview, dtype: np.dtype, shape: tuple[int, ...]
    ) -> np.ndarray:
        """Zeros with the kept values put back at their positions."""
        k = int(params["k"])
        gap_type = np.dtype(params["gap"])
        gaps = np.frombuffer(payload[: k * gap_type.itemsize], dtype=gap_type)
        values = np.frombuffer(payload[k * gap_type.itemsize :], dtype=np.float32)
        dense = np.zeros(math.prod(shape), dtype=dtype)
        dense[np.cumsum(gaps, dtype=np.int64)] = values
        return dense.reshape(shape)


#: Below this many entries a full selection is as fast as narrowing it down first.
_NARROW_FROM = 1 << 16


def largest(magnitudes: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` largest magnitudes (ties at the boundary: any of them).

    Large tensors are narrowed first: a threshold from a seeded sample of 8192 entries keeps
    about twice k candidates (one pass), and the exact selection runs on those. Should the
    sample have overestimated the threshold, the full selection runs instead: the result is
    exact either way.
    """
    size = magnitudes.size
    if k >= size:
        return np.arange(size)
    if size >= _NARROW_FROM and 2 * k < size // 4:
        sample = magnitudes[np.random.default_rng(size).integers(0, size, 8192)]
        threshold = np.quantile(sample, 1 - 2 * k / size)
        candidates = np.flatnonzero(magnitudes >= threshold)
        if candidates.size >= k:
            chosen = np.argpartition(magnitudes[candidates], candidates.size - k)
            return candidates[chosen[candidates.size - k :]]
    return np.argpartition(magnitudes, size - k)[size - k :]
