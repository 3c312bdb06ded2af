r"""The bytes of a weights object in the store: a JSON header, then raw array bytes; no pickle.

Layout (version 2)::

    b"PFXW\x02" | header length (u32, little-endian) | header (JSON) | zeros to a multiple of 64
    | payload

The header is ``{"lossless": "none" | "zstd", "arrays": [[name, codec, dtype, shape, params,
offset, nbytes], ...]}``: each array's codec, numpy dtype string, shape, codec parameters, and
where its bytes are in the (decompressed) payload. Uncompressed arrays start at multiples of 64
there, so that they are read as aligned views of the bytes the store returned.

Reading trusts nothing of the bytes: whoever can write to the store writes them. Anything that is
not this layout, or any value in it that does not add up (an unknown codec, a dtype that is not a
number, an array outside the payload, a decompressed size other than announced), is a
:class:`~proxyflox.errors.WeightsFormatError`; a reader that knows the model's layout refuses other
names, shapes and dtypes before it decodes or allocates anything.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from proxyflox.codecs.base import ArrayCodec, Params
from proxyflox.errors import LayoutMismatchError, WeightsFormatError
from proxyflox.weights import ARRAY_KINDS, Layout, Weights, check_layout

MAGIC = b"PFXW"
VERSION = 2
_PREFIX = MAGIC + bytes([VERSION])
_HEADER_LENGTH = struct.Struct("<I")
#: Payload and uncompressed arrays start at multiples of this many bytes.
ALIGNMENT = 64
#: More dimensions than any model's array has: a header claiming more is damaged.
MAX_DIMENSIONS = 32


@dataclass(frozen=True, slots=True)
class Entry:
    """One array as the header describes it."""

    name: str
    codec: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    params: Params
    offset: int
    nbytes: int


def aligned(offset: int) -> int:
    """``offset`` rounded up to a multiple of :data:`ALIGNMENT`."""
    return -(-offset // ALIGNMENT) * ALIGNMENT


def write(
    arrays: Sequence[tuple[str, str, np.dtype[Any], tuple[int, ...], Params, list[Any]]],
    lossless: str,
    compress: Any = None,
) -> bytearray:
    """The object's bytes, written into one buffer of their final size.

    ``arrays``: ``(name, codec, dtype, shape, params, payload parts)`` per array.
    ``compress``: turns the payload into its lossless stage's bytes (``lossless`` not ``none``).
    A single allocation the size of the object: putting a model costs one model of memory.
    """
    entries: list[list[Any]] = []
    offset = 0
    for name, codec, dtype, shape, params, parts in arrays:
        nbytes = sum(memoryview(part).nbytes for part in parts)
        offset = aligned(offset)
        entries.append([name, codec, dtype.str, list(shape), params, offset, nbytes])
        offset += nbytes
    header = json.dumps({"lossless": lossless, "arrays": entries}, separators=(",", ":")).encode()
    start = aligned(len(_PREFIX) + _HEADER_LENGTH.size + len(header))
    compressed = None
    if lossless != "none":
        plain = bytearray(offset)
        _fill(plain, 0, arrays, entries)
        compressed = compress(plain)
        del plain
    out = bytearray(start + (len(compressed) if compressed is not None else offset))
    view = memoryview(out)
    view[: len(_PREFIX)] = _PREFIX
    _HEADER_LENGTH.pack_into(out, len(_PREFIX), len(header))
    view[len(_PREFIX) + _HEADER_LENGTH.size : len(_PREFIX) + _HEADER_LENGTH.size + len(header)] = (
        header
    )
    if compressed is not None:
        view[start:] = compressed
    else:
        _fill(out, start, arrays, entries)
    return out


def _fill(out: bytearray, start: int, arrays: Sequence[Any], entries: list[list[Any]]) -> None:
    view = memoryview(out)
    for (*_, parts), entry in zip(arrays, entries, strict=True):
        position = start + entry[5]
        for part in parts:
            part = memoryview(part).cast("B")
            view[position : position + part.nbytes] = part
            position += part.nbytes


def is_weights_object(data: bytes | bytearray | memoryview) -> bool:
    """Whether the bytes start as a weights object of this version."""
    return bytes(memoryview(data)[: len(_PREFIX)]) == _PREFIX


def read(
    data: bytes | bytearray | memoryview,
    decoders: dict[str, ArrayCodec],
    decompress: Any,
    layout: Layout | None = None,
) -> Weights:
    """The arrays of a weights object; uncompressed ones are views of ``data`` (no copy).

    The views are writable where ``data`` is (a ``bytearray``), read-only where it is ``bytes``.

    Raises:
        WeightsFormatError: the bytes are not a weights object, or a damaged one.
        LayoutMismatchError: ``layout`` given, and the header's arrays are not the model's.
    """
    view = memoryview(data).cast("B")
    entries, lossless, payload = parse(view, decoders)
    if layout is not None:
        check_layout(((e.name, e.dtype, e.shape) for e in entries), layout)
    if lossless != "none":
        expected = max((e.offset + e.nbytes for e in entries), default=0)
        payload = memoryview(decompress(payload, expected))
        if payload.nbytes != expected:
            raise WeightsFormatError(
                f"damaged ProxyFlox weights object: payload decompresses to {payload.nbytes} "
                f"bytes, the header says {expected}"
            )
    weights: Weights = {}
    for entry in entries:
        if entry.offset + entry.nbytes > payload.nbytes:
            raise WeightsFormatError(
                f"damaged ProxyFlox weights object: {entry.name!r} lies outside the payload "
                f"({entry.offset}+{entry.nbytes} of {payload.nbytes} bytes)"
            )
        part = payload[entry.offset : entry.offset + entry.nbytes]
        try:
            array = decoders[entry.codec].decode(entry.params, part, entry.dtype, entry.shape)
        except (LayoutMismatchError, WeightsFormatError):
            raise
        except Exception as err:  # any value of the header may be wrong: name the array
            raise WeightsFormatError(
                f"damaged ProxyFlox weights object: {entry.name!r} ({entry.codec}) does not "
                f"decode: {type(err).__name__}: {err}"
            ) from None
        if array.dtype != entry.dtype or array.shape != entry.shape:
            raise WeightsFormatError(
                f"damaged ProxyFlox weights object: {entry.name!r} decodes to {array.dtype} "
                f"{array.shape}, the header says {entry.dtype} {entry.shape}"
            )
        weights[entry.name] = array
    return weights


def parse(view: memoryview, decoders: dict[str, ArrayCodec]) -> tuple[list[Entry], str, memoryview]:
    """The header's entries, its lossless stage and the payload, every value checked."""
    if bytes(view[: len(_PREFIX)]) != _PREFIX:
        if bytes(view[: len(MAGIC)]) == MAGIC and view.nbytes > len(MAGIC):
            raise WeightsFormatError(
                f"not a ProxyFlox weights object of this version (format {view[len(MAGIC)]}, "
                f"this reader knows {VERSION})"
            )
        raise WeightsFormatError(
            f"not a ProxyFlox weights object ({view.nbytes} bytes starting "
            f"{bytes(view[:8])!r}; expected {_PREFIX!r}); it is not read any further"
        )
    at = len(_PREFIX)
    if view.nbytes < at + _HEADER_LENGTH.size:
        raise WeightsFormatError("damaged ProxyFlox weights object: it ends inside its header")
    (length,) = _HEADER_LENGTH.unpack(view[at : at + _HEADER_LENGTH.size])
    at += _HEADER_LENGTH.size
    if at + length > view.nbytes:
        raise WeightsFormatError(
            f"damaged ProxyFlox weights object: a header of {length} bytes in {view.nbytes}"
        )
    try:
        header = json.loads(bytes(view[at : at + length]))
    except (ValueError, RecursionError) as err:
        raise WeightsFormatError(
            f"damaged ProxyFlox weights object: its header is not JSON ({err})"
        ) from None
    start = aligned(at + length)
    if not isinstance(header, dict) or set(header) != {"lossless", "arrays"}:
        raise WeightsFormatError("damaged ProxyFlox weights object: unexpected header fields")
    lossless, rows = header["lossless"], header["arrays"]
    if lossless not in ("none", "zstd"):
        raise WeightsFormatError(f"damaged ProxyFlox weights object: lossless {lossless!r}")
    if not isinstance(rows, list):
        raise WeightsFormatError("damaged ProxyFlox weights object: 'arrays' is not a list")
    entries = [_entry(row, decoders) for row in rows]
    if len({entry.name for entry in entries}) != len(entries):
        raise WeightsFormatError("damaged ProxyFlox weights object: an array name repeats")
    return entries, lossless, view[min(start, view.nbytes) :]


def _entry(row: Any, decoders: dict[str, ArrayCodec]) -> Entry:
    if not isinstance(row, list) or len(row) != 7:
        raise WeightsFormatError(f"damaged ProxyFlox weights object: array entry {row!r:.80}")
    name, codec, dtype_text, shape, params, offset, nbytes = row
    where = f"damaged ProxyFlox weights object: array {name!r:.80}"
    if not isinstance(name, str):
        raise WeightsFormatError(f"{where}: its name is not a string")
    if codec not in decoders:
        raise WeightsFormatError(f"{where}: unknown codec {codec!r:.40}")
    dtype = _number_dtype(dtype_text, where)
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_DIMENSIONS
        or not all(_is_count(n) for n in shape)
    ):
        raise WeightsFormatError(f"{where}: shape {shape!r:.80}")
    if not isinstance(params, dict):
        raise WeightsFormatError(f"{where}: codec parameters {params!r:.80}")
    if not _is_count(offset) or not _is_count(nbytes):
        raise WeightsFormatError(f"{where}: offset {offset!r:.20}, size {nbytes!r:.20}")
    if codec == "exact" and nbytes != math.prod(shape) * dtype.itemsize:
        raise WeightsFormatError(f"{where}: {nbytes} bytes for {dtype} of shape {tuple(shape)}")
    return Entry(name, codec, dtype, tuple(shape), params, offset, nbytes)


def _number_dtype(text: Any, where: str) -> np.dtype[Any]:
    """A numpy dtype of plain numbers: never objects, records, strings or dates."""
    if not isinstance(text, str) or len(text) > 8:
        raise WeightsFormatError(f"{where}: dtype {text!r:.40}")
    try:
        dtype = np.dtype(text)
    except (TypeError, ValueError):
        raise WeightsFormatError(f"{where}: dtype {text!r}") from None
    if dtype.kind not in ARRAY_KINDS or dtype.hasobject or dtype.fields or dtype.subdtype:
        raise WeightsFormatError(f"{where}: dtype {text!r} is not a number type (refused)")
    return dtype


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
