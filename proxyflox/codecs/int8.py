"""``int8``: every entry as a signed byte times a float32 scale (per tensor or per channel).

The scale is ``max|x| / 127`` over the tensor or over each output channel (axis 0: a conv's
filter, a linear layer's row), so the largest entry maps to +-127 and nothing clips.

Rounding is ``nearest`` by default: it bounds every entry's error by half a step
(``scale / 2``), and with error feedback (on by default) the rounding error is not lost but sent
in a later round, so the bias that nearest rounding has on its own does not accumulate.
``stochastic`` rounding (error below one step, unbiased in expectation) is the choice without
error feedback. Its draws come from a generator seeded by the caller, so runs repeat.
"""

from __future__ import annotations

import numpy as np

from proxyflox.codecs.base import Params, as_bytes

LEVELS = 127
SCALES = ("per_channel", "per_tensor")
ROUNDINGS = ("nearest", "stochastic")


class Int8:
    """Symmetric 8-bit quantization.

    Args:
        scale: ``per_channel`` (one scale per index of axis 0) or ``per_tensor``.
        rounding: ``nearest`` or ``stochastic``.
        seed: Seeds stochastic rounding.
    """

    name = "int8"
    lossy = True

    def __init__(
        self, scale: str = "per_channel", rounding: str = "nearest", seed: int = 0
    ) -> None:
        self.per_channel = scale == "per_channel"
        self.stochastic = rounding == "stochastic"
        self.rng = np.random.default_rng(seed)

    def encode(self, array: np.ndarray) -> tuple[Params, list[bytes | memoryview]]:
        """Scales (float32) then the quantized entries (int8)."""
        per_row = self.per_channel and array.ndim > 1
        rows = array.reshape(array.shape[0] if per_row else 1, -1)
        peak = np.abs(rows).max(axis=1, keepdims=True).astype(np.float32)
        # A row of subnormal changes (momentum decaying on a dead filter) would underflow
        # peak / LEVELS to zero: the smallest float32 is the finest step there is.
        scale = np.maximum(peak / LEVELS, np.finfo(np.float32).smallest_subnormal)
        steps = np.divide(rows, scale, dtype=np.float32)
        if self.stochastic:
            steps += self.rng.random(steps.shape, dtype=np.float32)
            np.floor(steps, out=steps)
        else:
            np.rint(steps, out=steps)
        # Every step is within +-LEVELS already (the largest entry maps to LEVELS); the clip
        # guards against the last float32 ulp of the division.
        np.clip(steps, -LEVELS, LEVELS, out=steps)
        quantized = steps.astype(np.int8)
        return {"rows": int(rows.shape[0])}, [as_bytes(scale), as_bytes(quantized)]

    def decode(
        self, params: Params, payload: memoryview, dtype: np.dtype, shape: tuple[int, ...]
    ) -> np.ndarray:
        """Entries times their row's scale, in ``dtype``."""
        rows = int(params["rows"])
        scale = np.frombuffer(payload[: 4 * rows], dtype=np.float32).reshape(rows, 1)
        quantized = np.frombuffer(payload[4 * rows :], dtype=np.int8).reshape(rows, -1)
        decoded = quantized.astype(dtype)
        decoded *= scale.astype(dtype)
        return decoded.reshape(shape)
