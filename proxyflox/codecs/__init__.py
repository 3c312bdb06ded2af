"""Update codecs: what a site's change (or the global model) looks like on the wire.

Every weights object the project puts is written by :class:`UpdateEncoder` (the ProxyStore
serializer of the put) and read by :func:`decode_weights` (the deserializer travelling in its
proxy) in one pickle-free layout (:mod:`proxyflox.codecs.wire`): a JSON header naming each
array's codec, dtype, shape and place, then raw bytes. The bytes describe themselves, so whoever
resolves them needs no setting; bytes that are not that layout are refused, never unpickled.
Without a codec, arrays are read as views of the bytes the store returned (no copy).

Only float arrays are compressed; integer buffers (BatchNorm's ``num_batches_tracked``) and any
other array travel exactly. A lossless stage (zstd) may follow any codec.

Codecs are numpy only: the aggregator and the stores import them without torch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from proxyflox.codecs.base import ArrayCodec, Exact
from proxyflox.codecs.fp16 import Fp16
from proxyflox.codecs.int8 import ROUNDINGS, SCALES, Int8
from proxyflox.codecs.topk import TopK
from proxyflox.codecs.wire import read, write
from proxyflox.errors import WeightsFormatError
from proxyflox.weights import Layout, Weights, weights_nbytes

__all__ = [
    "CODECS",
    "LOSSLESS",
    "ROUNDINGS",
    "SCALES",
    "CodecSpec",
    "CodecTally",
    "UpdateEncoder",
    "decode_weights",
    "encode_weights",
    "tally",
]

#: ``compression.codec`` name -> whether it loses information.
CODECS: dict[str, bool] = {"none": False, "fp16": True, "int8": True, "topk": True}
#: ``compression.lossless`` stages.
LOSSLESS = ("none", "zstd")

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
        """No codec and no lossless stage: every array's own bytes, as without compression."""
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

    With ``keep_encoded`` it keeps the bytes it wrote (:attr:`encoded`), so the site can tell
    what it did not send; otherwise it keeps nothing (the bytes are a model's size).

    Args:
        spec: The site's codec settings.
        seed: Seeds the codec's random draws (stochastic rounding).
        keep_encoded: Keep the last bytes written in :attr:`encoded`.
    """

    def __init__(self, spec: CodecSpec, seed: int = 0, keep_encoded: bool = False) -> None:
        self.spec = spec
        self.seed = seed
        self.keep_encoded = keep_encoded
        self.encoded: bytearray = bytearray()

    def __call__(self, weights: Weights) -> bytearray:
        """Serialize ``weights``; counted in the thread's :func:`tally`."""
        start = time.perf_counter()
        encoded = self._encode(weights)
        counts = _counts()
        counts.encode_seconds += time.perf_counter() - start
        counts.encoded_bytes += len(encoded)
        counts.raw_bytes += weights_nbytes(weights)
        if self.keep_encoded:
            self.encoded = encoded
        return encoded

    def _encode(self, weights: Weights) -> bytearray:
        codec = self.spec.array_codec(self.seed)
        exact = Exact()
        arrays = []
        for name, value in weights.items():
            array = np.asarray(value)
            chosen = codec if np.issubdtype(array.dtype, np.floating) else exact
            params, parts = chosen.encode(array)
            arrays.append((name, chosen.name, array.dtype, array.shape, params, parts))
        if self.spec.lossless == "zstd":
            compressor = _zstd().ZstdCompressor(level=ZSTD_LEVEL)
            return write(arrays, "zstd", compressor.compress)
        return write(arrays, "none")


def encode_weights(weights: Weights) -> bytearray:
    """The store's default serializer: every array's own bytes (no codec)."""
    return UpdateEncoder(CodecSpec())(weights)


def decode_weights(data: bytes | bytearray | memoryview, layout: Layout | None = None) -> Weights:
    """The ProxyStore deserializer of weights: the project's layout only, never a pickle.

    Uncompressed arrays are views of ``data`` (writable where ``data`` is). With ``layout`` (the
    aggregator's), names, shapes and dtypes other than the model's are refused from the header,
    before anything is decoded.

    Raises:
        WeightsFormatError: ``data`` is not a ProxyFlox weights object, or a damaged one.
        LayoutMismatchError: the arrays are not ``layout``'s.
    """
    start = time.perf_counter()
    weights = read(data, _DECODERS, _decompress, layout)
    _counts().decode_seconds += time.perf_counter() - start
    return weights


_DECODERS: dict[str, ArrayCodec] = {
    codec.name: codec for codec in (Exact(), Fp16(), Int8(), TopK())
}


def _decompress(payload: memoryview, expected: int) -> bytes:
    """The zstd payload, refused if its frame announces another size than the header's."""
    zstandard = _zstd()
    try:
        announced = zstandard.frame_content_size(payload)
        if announced not in (expected, zstandard.CONTENTSIZE_UNKNOWN):
            raise WeightsFormatError(
                f"damaged ProxyFlox weights object: its zstd frame holds {announced} bytes, "
                f"the header says {expected}"
            )
        decompressed: bytes = zstandard.ZstdDecompressor().decompress(
            payload, max_output_size=max(expected, 1)
        )
        return decompressed
    except zstandard.ZstdError as err:
        raise WeightsFormatError(f"damaged ProxyFlox weights object: zstd: {err}") from None


def _zstd() -> Any:
    # Imported where used: only runs with ``lossless: zstd`` need the package.
    from proxyflox.errors import require_extra

    with require_extra("zstandard", "zstd", "compression.lossless zstd"):
        import zstandard
    return zstandard
