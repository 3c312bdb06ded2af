"""Model weights as plain numpy arrays: what travels through the store.

Numpy (not torch) so that the aggregator, the strategies and the stores need no framework: they
import without torch. Conversion to and from a torch model lives in
:mod:`proxyflox.models.weights`.
"""

from __future__ import annotations

import numpy as np

#: Parameter and buffer name -> array, in the model's ``state_dict`` order.
Weights = dict[str, np.ndarray]


def weights_nbytes(weights: Weights) -> int:
    """Bytes of array data (what a transfer moves, before serialization overhead)."""
    return sum(int(array.nbytes) for array in weights.values())
