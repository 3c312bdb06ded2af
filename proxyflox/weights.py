"""Model weights as plain numpy arrays: what travels through the store.

Numpy (not torch) so that the aggregator and the stores need no framework-specific code and the
serialized form is compact; conversion to and from torch is lossless.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

#: Parameter and buffer name -> array, in the model's ``state_dict`` order.
Weights = dict[str, np.ndarray]


def weights_of(model: nn.Module) -> Weights:
    """A detached copy of the model's parameters and buffers."""
    return OrderedDict(
        (name, tensor.detach().cpu().numpy().copy()) for name, tensor in model.state_dict().items()
    )


def load_weights(model: nn.Module, weights: Weights) -> None:
    """Copy ``weights`` into ``model`` (strict: names and shapes must match)."""
    model.load_state_dict({name: torch.from_numpy(np.asarray(a)) for name, a in weights.items()})


def weights_nbytes(weights: Weights) -> int:
    """Bytes of array data (what a transfer moves, before serialization overhead)."""
    return sum(int(array.nbytes) for array in weights.values())


def save_weights(weights: Weights, path: str) -> None:
    """Write weights as a torch ``state_dict`` file, atomically (temp file + rename)."""
    import os

    tmp = f"{path}.tmp"
    torch.save(OrderedDict((k, torch.from_numpy(np.asarray(v))) for k, v in weights.items()), tmp)
    os.replace(tmp, path)
