"""What every array codec implements, and the exact one that every other falls back to."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

#: A codec's parameters for one array as they travel in the header (plain JSON values).
Params = dict[str, Any]


def as_bytes(array: np.ndarray) -> memoryview:
    """The array's memory as bytes, without a copy where it is contiguous already."""
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8).data


class ArrayCodec(Protocol):
    """Turns one float array into bytes and back; lossy codecs say what they lose."""

    #: Its name in settings and in the wire header.
    name: str
    #: ``False``: decode(encode(x)) == x bit for bit, so error feedback has nothing to keep.
    lossy: bool

    def encode(self, array: np.ndarray) -> tuple[Params, list[bytes | memoryview]]:
        """The array's parameters and its payload buffers (concatenated on the wire)."""
        ...

    def decode(
        self, params: Params, payload: memoryview, dtype: np.dtype, shape: tuple[int, ...]
    ) -> np.ndarray:
        """The array, from what :meth:`encode` wrote (a writable array of ``dtype``)."""
        ...


class Exact:
    """The array's own bytes: integer buffers, and every array of an uncompressed stage."""

    name = "exact"
    lossy = False

    def encode(self, array: np.ndarray) -> tuple[Params, list[bytes | memoryview]]:
        """The array's bytes, as they are in memory (C order)."""
        return {}, [as_bytes(array)]

    def decode(
        self, params: Params, payload: memoryview, dtype: np.dtype, shape: tuple[int, ...]
    ) -> np.ndarray:
        """The bytes as an array: a view of the payload, no copy (writable where it is)."""
        return np.frombuffer(payload, dtype=dtype).reshape(shape)
