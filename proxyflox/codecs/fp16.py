"""``fp16``: every float entry as an IEEE half (2 bytes instead of 4), after an exact rescale.

Weight changes are small (often below 1e-4), where halves are subnormal: less precise, and slow
to convert. So each tensor is first multiplied by a power of two that puts its largest entry
between a quarter and a half of half's maximum (exact in float32, undone exactly on decode).
Every entry above ``2**-28`` times the tensor's largest then keeps a relative error of at most
``2**-11`` (round to nearest); smaller ones an absolute error below ``2**-39`` times it.
"""

from __future__ import annotations

import math

import numpy as np

from proxyflox.codecs.base import Params, as_bytes

HALF_MAX = float(np.finfo(np.float16).max)


class Fp16:
    """Half precision with a power-of-two scale per tensor, rounded to nearest."""

    name = "fp16"
    lossy = True

    def encode(self, array: np.ndarray) -> tuple[Params, list[bytes | memoryview]]:
        """The power of two (in the parameters), then the scaled entries as float16."""
        peak = float(np.abs(array).max(initial=0.0))
        exponent = 0 if peak == 0 else math.floor(math.log2(HALF_MAX / 2 / peak))
        scaled = np.ldexp(array.astype(np.float32, copy=False), exponent)
        return {"exp": exponent}, [as_bytes(scaled.astype(np.float16))]

    def decode(
        self, params: Params, payload: memoryview, dtype: np.dtype, shape: tuple[int, ...]
    ) -> np.ndarray:
        """The halves widened back to ``dtype`` and scaled back."""
        halves = np.frombuffer(payload, dtype=np.float16).reshape(shape)
        widened = halves.astype(dtype)
        return np.ldexp(widened, -int(params["exp"]), out=widened)  # in place: one array
