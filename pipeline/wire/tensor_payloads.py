"""A serialized ``PredictRequest`` split into the request without its tensors' ``tensor_content`` and those bytes.

Parsing a large request with protobuf and then reading ``tensor_content`` holds the message three times (the
serialized bytes, protobuf's copy, the ``bytes`` the field getter returns) before numpy and TensorFlow see it.
:func:`split_predict_request` walks the protobuf wire format instead: every field except ``tensor_content`` is
kept as it came (protobuf parses that small remainder), and each input's content is copied once, straight from the
serialized bytes, into a 64-byte-aligned numpy buffer, which TensorFlow takes without a copy of its own. The
serialized bytes can go as soon as the split returns.

Protobuf's rules are kept: a map key seen twice keeps its last entry, a ``value`` seen twice in one entry is
merged (the last ``tensor_content`` wins), an empty ``tensor_content`` is no content. Anything the walk does not
expect (groups, a truncated field, a key that is not UTF-8, a tensor with very many fields) raises
:class:`Unsplittable`; the caller then parses the message whole, as protobuf would, errors included.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.util.memory import return_freed_memory

ALIGNMENT = 64  # EIGEN_MAX_ALIGN_BYTES: TensorFlow shares (does not copy) a numpy buffer aligned so
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_INPUTS = 2  # PredictRequest.inputs (map<string, TensorProto>): entry key = 1, value = 2
_KEY, _VALUE = 1, 2
_TENSOR_CONTENT = 4  # TensorProto.tensor_content
_MAX_TENSOR_FIELDS = 256  # a tensor sent as one element per field (unpacked) is left to protobuf
SPLIT_ABOVE_BYTES = 256 << 10  # smaller messages are parsed by protobuf alone
_TRIM_ABOVE_BYTES = 4 << 20  # messages at least this large first hand grpc's freed buffers back to the OS


class Unsplittable(ValueError):
    """The bytes are not a PredictRequest the walk handles; parse them whole."""


@dataclass
class SplitPredictRequest:
    """A ``PredictRequest`` without ``tensor_content`` and, by input alias, the content bytes (aligned, uint8)."""

    request: Any
    contents: dict[str, np.ndarray] = field(default_factory=dict)


def split_predict_request(data: bytes | memoryview) -> tuple[bytes, dict[str, np.ndarray]]:
    """The serialized request without ``tensor_content`` fields, and each input's content (aligned copies).

    Raises:
        Unsplittable: see the module doc.
    """
    view = memoryview(data).cast("B")
    pieces: list[bytes | memoryview] = []
    spans: dict[str, memoryview | None] = {}
    for number, wire, start, end, field_start in _fields(view, 0, len(view)):
        if number == _INPUTS and wire == _LEN:
            key, entry, content = _split_entry(view, start, end)
            pieces.append(entry)
            spans[key] = content
        else:
            pieces.append(view[field_start:end])
    contents = {key: aligned_copy(span) for key, span in spans.items() if span is not None}
    return b"".join(pieces), contents


def aligned_copy(data: memoryview | bytes) -> np.ndarray:
    """``data`` copied into a new uint8 array whose first byte is :data:`ALIGNMENT`-aligned."""
    size = len(data)
    raw = np.empty(size + ALIGNMENT, dtype=np.uint8)
    offset = -raw.ctypes.data % ALIGNMENT
    out = raw[offset:offset + size]
    out[:] = np.frombuffer(data, dtype=np.uint8)
    return out


def _split_entry(view: memoryview, start: int, end: int) -> tuple[str, bytes, memoryview | None]:
    """One ``inputs`` map entry re-encoded without ``tensor_content``: its key, the entry's bytes, the content."""
    key_bytes = b""
    body: list[bytes | memoryview] = []
    content: memoryview | None = None
    for number, wire, value_start, value_end, field_start in _fields(view, start, end):
        if number == _VALUE and wire == _LEN:
            tensor, found = _split_tensor(view, value_start, value_end)
            if found is not None:
                content = found if len(found) else None
            body += [_tag(_VALUE, _LEN), _varint_bytes(len(tensor)), tensor]
            continue
        if number == _KEY and wire == _LEN:
            key_bytes = bytes(view[value_start:value_end])
        body.append(view[field_start:value_end])
    try:
        key = key_bytes.decode("utf-8")
    except UnicodeDecodeError:
        raise Unsplittable("map key is not UTF-8") from None
    entry = b"".join(body)
    return key, _tag(_INPUTS, _LEN) + _varint_bytes(len(entry)) + entry, content


def _split_tensor(view: memoryview, start: int, end: int) -> tuple[bytes, memoryview | None]:
    """A TensorProto's bytes without ``tensor_content``, and the last ``tensor_content`` (None: none)."""
    kept: list[memoryview] = []
    content: memoryview | None = None
    for count, (number, wire, value_start, value_end, field_start) in enumerate(_fields(view, start, end)):
        if count >= _MAX_TENSOR_FIELDS:
            raise Unsplittable("tensor with too many fields")
        if number == _TENSOR_CONTENT and wire == _LEN:
            content = view[value_start:value_end]
        else:
            kept.append(view[field_start:value_end])
    return b"".join(kept), content


def _fields(view: memoryview, position: int, end: int) -> Any:
    """(number, wire type, value start, value end, field start) of each field in ``view[position:end]``."""
    while position < end:
        field_start = position
        tag, position = _read_varint(view, position, end)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise Unsplittable("field number 0")
        if wire == _VARINT:
            _, value_end = _read_varint(view, position, end)
        elif wire == _I64:
            value_end = position + 8
        elif wire == _I32:
            value_end = position + 4
        elif wire == _LEN:
            length, position = _read_varint(view, position, end)
            value_end = position + length
        else:
            raise Unsplittable(f"wire type {wire}")
        if value_end > end:
            raise Unsplittable("truncated field")
        yield number, wire, position, value_end, field_start
        position = value_end


def _read_varint(view: memoryview, position: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while position < end and shift < 64:
        byte = view[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7
    raise Unsplittable("bad varint")


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tag(number: int, wire: int) -> bytes:
    return _varint_bytes(number << 3 | wire)


def parse_predict_request(data: bytes) -> Any:
    """A serialized ``PredictRequest`` parsed with its tensor contents split out (gRPC's request deserializer):
    a :class:`SplitPredictRequest`, or for a message under :data:`SPLIT_ABOVE_BYTES` the plain ``PredictRequest``
    (the walk is Python: ~40 us that a batch-1 request need not pay, its copies are a few KB).

    A large message first returns freed heap memory to the OS: grpcio copies a message twice on its way here (its
    slices, then a bytearray) and frees both before this runs, but glibc keeps what was freed in its heap, so
    without the trim the message's request would cost those copies as well (measured: +94 MB -> +32 MB resident
    for a 31 MiB message).

    Raises:
        google.protobuf.message.DecodeError: ``data`` is not a PredictRequest (as protobuf's own parse raises).
    """
    from tensorflow_serving.apis import predict_pb2

    if len(data) < SPLIT_ABOVE_BYTES:
        return predict_pb2.PredictRequest.FromString(data)
    if len(data) >= _TRIM_ABOVE_BYTES:
        return_freed_memory()
    try:
        stripped, contents = split_predict_request(data)
    except Unsplittable:
        return SplitPredictRequest(predict_pb2.PredictRequest.FromString(data))
    return SplitPredictRequest(predict_pb2.PredictRequest.FromString(stripped), contents)

