"""Between a torch model and :data:`~proxyflox.weights.Weights` (numpy arrays), losslessly."""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from proxyflox.weights import Weights


def weights_of(model: nn.Module) -> Weights:
    """A detached copy of the model's parameters and buffers."""
    return OrderedDict(
        (name, tensor.detach().cpu().numpy().copy()) for name, tensor in model.state_dict().items()
    )


def load_weights(model: nn.Module, weights: Weights) -> None:
    """Copy ``weights`` into ``model`` (strict: names and shapes must match)."""
    model.load_state_dict({name: _tensor(a) for name, a in weights.items()})


def save_weights(weights: Weights, path: str) -> None:
    """Write weights as a torch ``state_dict`` file, atomically (temp file + rename)."""
    tmp = f"{path}.tmp"
    torch.save(OrderedDict((k, _tensor(v)) for k, v in weights.items()), tmp)
    os.replace(tmp, path)


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor sharing the array's memory, also where it is a read-only view of stored bytes.

    Torch warns about read-only arrays since its tensors could write to them; here they are
    only copied from (into a model's parameters, or into a file).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.asarray(array))
