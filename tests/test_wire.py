"""The weights format in the store: read without a copy, and never a pickle, whatever the bytes."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from proxystore.serialize import deserialize as proxystore_deserialize
from proxystore.store.utils import get_key

from proxyflox.codecs import CodecSpec, UpdateEncoder, decode_weights, encode_weights
from proxyflox.codecs.wire import ALIGNMENT
from proxyflox.errors import LayoutMismatchError, WeightsFormatError
from proxyflox.settings import load_experiment
from proxyflox.stores import open_store, put_weights, resolve_weights
from proxyflox.weights import Weights, layout_of
from tests.helpers import DEFAULT_EXPERIMENT
from tests.misbehaving import crafted_pickle


def model() -> Weights:
    rng = np.random.default_rng(0)
    return {
        "conv.weight": rng.normal(size=(8, 1, 3, 3)).astype(np.float32),
        "fc.weight": rng.normal(size=(10, 16)).astype(np.float32),
        "bn.num_batches_tracked": np.array(7, dtype=np.int64),
        "empty": np.zeros((0, 3), dtype=np.float32),
    }


def root(array: np.ndarray) -> object:
    """The object whose memory an array is a view of."""
    owner: object = array
    while isinstance(owner, np.ndarray) and owner.base is not None:
        owner = owner.base
    return owner.obj if isinstance(owner, memoryview) else owner


def test_a_put_and_a_resolve_give_back_every_array_as_a_view_of_the_stored_bytes(
    tmp_path: Path,
) -> None:
    store = open_store(load_experiment(DEFAULT_EXPERIMENT).store, tmp_path, "wire-test")
    weights = model()
    ref, _ = put_weights(weights, store)
    stored = (tmp_path / "store" / get_key(ref)[0]).read_bytes()
    assert stored.startswith(b"PFXW\x02")
    read, _ = resolve_weights(get_key(ref), store)
    buffers = {id(root(array)) for array in read.values()}
    assert len(buffers) == 1  # views of one buffer: the bytes the store returned, not copies
    assert isinstance(root(read["fc.weight"]), bytearray)
    for name, array in weights.items():
        assert read[name].tobytes() == array.tobytes()
        assert read[name].dtype == array.dtype
        assert read[name].flags.writeable  # the file store reads into a buffer of its own
        assert read[name].flags.aligned
    store.evict(get_key(ref))
    store.close()


def test_over_immutable_bytes_the_views_are_read_only_and_codecs_decode_fresh_arrays() -> None:
    encoded = bytes(encode_weights(model()))
    assert all(not a.flags.writeable for a in decode_weights(encoded).values() if a.size)
    offsets = [entry[5] for entry in header(encoded)["arrays"]]
    assert all(offset % ALIGNMENT == 0 for offset in offsets)
    fp16 = decode_weights(bytes(UpdateEncoder(CodecSpec(codec="fp16"))(model())))
    assert fp16["fc.weight"].flags.writeable
    assert fp16["fc.weight"].dtype == np.float32


def test_a_pickle_is_refused_unread_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    crafted = crafted_pickle(str(marker))
    with pytest.raises(WeightsFormatError, match=r"not a ProxyFlox weights object .* b'PK\\n"):
        decode_weights(crafted)
    assert not marker.exists()
    proxystore_deserialize(crafted)  # what reading it as ProxyStore does by default would do
    assert marker.exists()


def header(encoded: bytes) -> dict[str, Any]:
    (length,) = struct.unpack_from("<I", encoded, 5)
    return dict(json.loads(encoded[9 : 9 + length]))


def with_header(encoded: bytes, change: dict[str, Any]) -> bytes:
    """The same payload under an edited header (the payload moved to its new aligned start)."""
    (length,) = struct.unpack_from("<I", encoded, 5)
    payload = encoded[-(-(9 + length) // ALIGNMENT) * ALIGNMENT :]
    text = json.dumps(header(encoded) | change).encode()
    start = -(-(9 + len(text)) // ALIGNMENT) * ALIGNMENT
    head = b"PFXW\x02" + struct.pack("<I", len(text)) + text
    return head + bytes(start - len(head)) + payload


def entry_with(encoded: bytes, index: int, field: int, value: object) -> dict[str, Any]:
    arrays = header(encoded)["arrays"]
    arrays[index][field] = value
    return {"arrays": arrays}


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda e: e[:3], "not a ProxyFlox weights object"),
        (lambda e: b"PFXW\x01" + e[5:], "format 1, this reader knows 2"),
        (lambda e: e[:7], "ends inside its header"),
        (lambda e: e[:5] + struct.pack("<I", 10**9) + e[9:], "a header of 1000000000 bytes"),
        (lambda e: e[:9] + b"x" + e[10:], "its header is not JSON"),
        (lambda e: with_header(e, entry_with(e, 1, 2, "|O")), "dtype '|O' is not a number type"),
        (lambda e: with_header(e, entry_with(e, 1, 2, "<U4")), "is not a number type"),
        (lambda e: with_header(e, entry_with(e, 1, 1, "pickle")), "unknown codec 'pickle'"),
        (lambda e: with_header(e, entry_with(e, 1, 3, [10, -16])), "shape"),
        (lambda e: with_header(e, entry_with(e, 1, 5, 10**9)), "lies outside the payload"),
        (lambda e: with_header(e, entry_with(e, 1, 6, 12)), "12 bytes for float32"),
        (lambda e: with_header(e, {"lossless": "pickle"}), "lossless 'pickle'"),
        (lambda e: with_header(e, {"extra": 1}), "unexpected header fields"),
        (lambda e: e[:-100], "lies outside the payload"),
    ],
)
def test_damaged_objects_are_refused_in_one_line_naming_the_problem(damage, message) -> None:  # type: ignore[no-untyped-def]
    encoded = bytes(encode_weights(model()))
    with pytest.raises(WeightsFormatError, match=message) as error:
        decode_weights(damage(encoded))
    assert "\n" not in str(error.value)


def test_with_the_models_layout_other_arrays_are_refused_before_anything_is_decoded() -> None:
    layout = layout_of(model())
    huge = {"fc.weight": np.zeros((10, 16), np.float32)}
    encoded = bytes(UpdateEncoder(CodecSpec(codec="topk", ratio=0.1))(huge))
    # A top-k header claiming 10**12 entries would allocate them all when decoded.
    bomb = with_header(encoded, entry_with(encoded, 0, 3, [10**6, 10**6]))
    with pytest.raises(LayoutMismatchError, match=r"'conv\.weight', 'bn\.num_batches_tracked'"):
        decode_weights(bomb, layout)
    wrong = model() | {"fc.weight": np.zeros((10, 8), np.float32)}
    with pytest.raises(LayoutMismatchError, match=r"'fc.weight' has shape \(10, 8\), the model's"):
        decode_weights(encode_weights(wrong), layout)


def test_a_zstd_frame_larger_than_its_header_says_is_refused() -> None:
    spec = CodecSpec(lossless="zstd")
    encoded = bytes(UpdateEncoder(spec)(model()))
    other = bytes(UpdateEncoder(spec)(model() | {"empty": np.zeros((100, 3), np.float32)}))
    (length,) = struct.unpack_from("<I", other, 5)
    payload = other[-(-(9 + length) // ALIGNMENT) * ALIGNMENT :]
    (length,) = struct.unpack_from("<I", encoded, 5)
    swapped = encoded[: -(-(9 + length) // ALIGNMENT) * ALIGNMENT] + payload
    with pytest.raises(WeightsFormatError, match="its zstd frame holds"):
        decode_weights(swapped)
