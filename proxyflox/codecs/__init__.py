"""Update codecs: what a site's change (or the global model) looks like on the wire.

A codec is applied in the store path, as the ProxyStore serializer of the object's put
(:class:`UpdateEncoder`) and the deserializer travelling in its proxy (:func:`decode_weights`):
apps put and resolve weights as before. The encoded bytes describe themselves (codec, dtype and
shape per array), so whoever resolves them needs no setting; bytes without the ProxyFlox header
are ProxyStore's own format, read by its default deserializer.

Only float arrays are compressed; integer buffers (BatchNorm's ``num_batches_tracked``) and any
other array travel exactly. A lossless stage (zstd) may follow any codec.

Codecs are numpy only: the aggregator and the stores import them without torch.
"""

from __future__ import annotations

import json
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from proxystore.serialize import deserialize as proxystore_deserialize
from proxystore.serialize import serialize as proxystore_serialize

from proxyflox.codecs.base import ArrayCodec, Exact
from proxyflox.codecs.fp16 import Fp16
from proxyflox.codecs.int8 import ROUNDINGS, SCALES, Int8
from proxyflox.codecs.topk import TopK
from proxyflox.weights import Weights, weights_nbytes

__all__ = [
    "CODECS",
    "LOSSLESS",
    "ROUNDINGS",
    "SCALES",
    "CodecSpec",
    "CodecTally",
    "UpdateEncoder",
    "decode_weights",
    "tally",
]

#: ``compression.codec`` name -> whether it loses information.
CODECS: dict[str, bool] = {"none": False, "fp16": True, "int8": True, "topk": True}
#: ``compression.lossless`` stages.
LOSSLESS = ("none", "zstd")

MAGIC = b"PFXW\x01"
_HEADER_LENGTH = struct.Struct("<I")
ZSTD_LEVEL = 3


@dataclass(frozen=True, slots=True)
class CodecSpec:
    """How one site encodes what it puts (the resolved ``compression`` settings)."""

    codec: str = "none"
    #: ``topk``: the fraction of each tensor's entries sent.
    ratio: float = 0.01
    #: ``int8``: ``per_channel`` or ``per_tensor``.
    scale: str = "per_channel"
    #: ``int8``: ``nearest`` or ``stochastic``.
    rounding: str = "nearest"
    #: ``none`` or ``zstd`` after the codec.
    lossless: str = "none"
    #: Keep what a lossy codec did not send and add it to the next change.
    error_feedback: bool = True

    @property
    def lossy(self) -> bool:
        """Whether decoding gives back less than was encoded."""
        return CODECS[self.codec]

    @property
    def exact(self) -> bool:
        """No codec and no lossless stage: ProxyStore's own serializer, as without compression."""
        return self.codec == "none" and self.lossless == "none"

    @property
    def feeds_back(self) -> bool:
        """Whether the site keeps a residual between rounds."""
        return self.lossy and self.error_feedback

    def array_codec(self, seed: int) -> ArrayCodec:
        """The codec of float arrays (``seed``: its random draws, e.g. stochastic rounding)."""
        if self.codec == "fp16":
            return Fp16()
        if self.codec == "int8":
            return Int8(self.scale, self.rounding, seed)
        if self.codec == "topk":
            return TopK(self.ratio)
        return Exact()


@dataclass
class CodecTally:
    """What the encoders and decoders of one thread did inside a :func:`tally` block."""

    #: Bytes put into the store (encoded) and the arrays' own bytes.
    encoded_bytes: int = 0
    raw_bytes: int = 0
    encode_seconds: float = 0.0
    decode_seconds: float = 0.0


_tallies = threading.local()


@contextmanager
def tally() -> Iterator[CodecTally]:
    """Count what this thread encodes and decodes inside the block (apps measure with it)."""
    counts = CodecTally()
    previous = getattr(_tallies, "current", None)
    _tallies.current = counts
    try:
        yield counts
    finally:
        _tallies.current = previous


def _counts() -> CodecTally:
    current = getattr(_tallies, "current", None)
    return current if current is not None else CodecTally()


class UpdateEncoder:
    """The ProxyStore serializer of one put: encodes weights as ``spec`` says.

    It keeps the bytes it wrote (:attr:`encoded`), so the site can tell what it did not send.

    Args:
        spec: The site's codec settings.
        seed: Seeds the codec's random draws (stochastic rounding).
    """

    def __init__(self, spec: CodecSpec, seed: int = 0) -> None:
        self.spec = spec
        self.seed = seed
        self.encoded: bytes = b""

    def __call__(self, weights: Weights) -> bytes:
        """Serialize ``weights``; counted in the thread's :func:`tally`."""
        start = time.perf_counter()
        self.encoded = proxystore_serialize(weights) if self.spec.exact else self._encode(weights)
        counts = _counts()
        counts.encode_seconds += time.perf_counter() - start
        counts.encoded_bytes += len(self.encoded)
        counts.raw_bytes += weights_nbytes(weights)
        return self.encoded

    def _encode(self, weights: Weights) -> bytes:
        codec = self.spec.array_codec(self.seed)
        exact = Exact()
        entries: list[list[Any]] = []
        buffers: list[bytes | memoryview] = []
        for name, array in weights.items():
            chosen = codec if np.issubdtype(array.dtype, np.floating) else exact
            params, parts = chosen.encode(np.asarray(array))
            entries.append(
                [name, chosen.name, array.dtype.str, list(array.shape), params,
                 sum(memoryview(part).nbytes for part in parts)]
            )  # fmt: skip
            buffers.extend(parts)
        payload = b"".join(buffers)
        if self.spec.lossless == "zstd":
            payload = _zstd().ZstdCompressor(level=ZSTD_LEVEL).compress(payload)
        header = json.dumps(
            {"lossless": self.spec.lossless, "arrays": entries}, separators=(",", ":")
        ).encode()
        return b"".join([MAGIC, _HEADER_LENGTH.pack(len(header)), header, payload])


def decode_weights(data: bytes | bytearray | memoryview) -> Weights:
    """The ProxyStore deserializer of weights: ours by its header, else ProxyStore's own."""
    start = time.perf_counter()
    view = memoryview(data)
    if view[: len(MAGIC)] != MAGIC:
        weights: Weights = proxystore_deserialize(data)
    else:
        weights = _decode(view[len(MAGIC) :])
    _counts().decode_seconds += time.perf_counter() - start
    return weights


_DECODERS: dict[str, ArrayCodec] = {
    codec.name: codec for codec in (Exact(), Fp16(), Int8(), TopK())
}


def _decode(view: memoryview) -> Weights:
    (length,) = _HEADER_LENGTH.unpack(view[: _HEADER_LENGTH.size])
    start = _HEADER_LENGTH.size
    header = json.loads(bytes(view[start : start + length]))
    payload = view[start + length :]
    if header["lossless"] == "zstd":
        payload = memoryview(_zstd().ZstdDecompressor().decompress(payload))
    weights: Weights = {}
    offset = 0
    for name, codec, dtype, shape, params, nbytes in header["arrays"]:
        part = payload[offset : offset + nbytes]
        offset += nbytes
        weights[name] = _DECODERS[codec].decode(params, part, np.dtype(dtype), tuple(shape))
    return weights


def _zstd() -> Any:
    # Imported where used: only runs with ``lossless: zstd`` need the package.
    from proxyflox.errors import require_extra

    with require_extra("zstandard", "zstd", "compression.lossless zstd"):
        import zstandard
    return zstandard
