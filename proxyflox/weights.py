"""Model weights as plain numpy arrays: what travels through the store, and what they must be.

Numpy (not torch) so that the aggregator, the strategies and the stores need no framework: they
import without torch. Conversion to and from a torch model lives in
:mod:`proxyflox.models.weights`.

A model's :data:`Layout` (each array's name, dtype and shape) is what the aggregator holds every
update to before using it (:func:`check_layout`, :func:`check_finite`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from proxyflox.errors import LayoutMismatchError

#: Parameter and buffer name -> array, in the model's ``state_dict`` order.
Weights = dict[str, np.ndarray]

#: Each array's ``(name, dtype string, shape)``, in order: small enough to travel in a task.
Layout = tuple[tuple[str, str, tuple[int, ...]], ...]

#: Array kinds a weights object may hold: bool, signed and unsigned integers, floats.
ARRAY_KINDS = "biuf"

#: Names shown of a longer list of missing or extra names.
SHOWN_NAMES = 3


def weights_nbytes(weights: Weights) -> int:
    """Bytes of array data (what a transfer moves, before serialization overhead)."""
    return sum(int(array.nbytes) for array in weights.values())


def layout_of(weights: Weights) -> Layout:
    """The names, dtypes and shapes of ``weights``."""
    return tuple(
        (name, np.asarray(a).dtype.str, tuple(int(n) for n in np.shape(a)))
        for name, a in weights.items()
    )


def check_layout(
    found: Iterable[tuple[str, np.dtype[Any], tuple[int, ...]]], model: Layout
) -> None:
    """Refuse arrays whose names, shapes or dtypes are not the model's.

    ``found``: ``(name, dtype, shape)`` of each array, as read (a header, or the arrays).

    Raises:
        LayoutMismatchError: naming the first difference, e.g. ``'fc.weight' has shape (10, 64),
            the model's is (10, 128)``.
    """
    expected = {name: (np.dtype(dtype), shape) for name, dtype, shape in model}
    seen: dict[str, tuple[np.dtype[Any], tuple[int, ...]]] = {}
    for name, dtype, shape in found:
        seen[name] = (dtype, shape)
    missing = [name for name in expected if name not in seen]
    if missing:
        raise LayoutMismatchError(
            f"{_names(missing)} {'is' if len(missing) == 1 else 'are'} missing"
        )
    extra = [name for name in seen if name not in expected]
    if extra:
        raise LayoutMismatchError(
            f"{_names(extra)} {'is' if len(extra) == 1 else 'are'} not in the model"
        )
    for name, (dtype, shape) in seen.items():
        model_dtype, model_shape = expected[name]
        if shape != model_shape:
            raise LayoutMismatchError(f"{name!r} has shape {shape}, the model's is {model_shape}")
        if dtype != model_dtype:
            raise LayoutMismatchError(f"{name!r} has dtype {dtype}, the model's is {model_dtype}")


def check_finite(weights: Mapping[str, np.ndarray]) -> None:
    """Refuse NaN and infinite values.

    A float32 (or smaller) array's sum in float64 cannot overflow and is finite exactly when
    every entry is: one buffered pass, no array-sized temporary. Only a non-finite sum (or a
    float64 array's, which may overflow) is looked at entry by entry.

    Raises:
        LayoutMismatchError: naming the array and its count of NaN and infinite values.
    """
    for name, array in weights.items():
        if array.dtype.kind != "f":
            continue
        if array.dtype.itemsize <= 4 and np.isfinite(np.sum(array, dtype=np.float64)):
            continue
        if array.dtype.itemsize > 4 and np.isfinite(np.sum(array)):
            continue
        nan, inf = int(np.isnan(array).sum()), int(np.isinf(array).sum())
        if nan or inf:
            counts = [f"{nan} NaN" if nan else "", f"{inf} infinite" if inf else ""]
            raise LayoutMismatchError(
                f"{name!r} holds {' and '.join(c for c in counts if c)} "
                f"value{'s' if nan + inf > 1 else ''}"
            )


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(name) for name in names[:SHOWN_NAMES])
    return shown + (f" (+{len(names) - SHOWN_NAMES} more)" if len(names) > SHOWN_NAMES else "")


def flatten_state(state: Mapping[str, Any], prefix: str = "") -> Weights:
    """``{"m": {"conv.weight": a}}`` -> ``{"m/conv.weight": a}`` (parameter names have no '/').

    A strategy's state is stored and checkpointed flat, as weights.
    """
    flat: Weights = {}
    for key, value in state.items():
        if isinstance(value, Mapping):
            flat.update(flatten_state(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = np.asarray(value)
    return flat


def unflatten_state(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The nested state :func:`flatten_state` flattened."""
    state: dict[str, Any] = {}
    for key, value in flat.items():
        *path, name = key.split("/")
        node = state
        for part in path:
            node = node.setdefault(part, {})
        node[name] = value
    return state
