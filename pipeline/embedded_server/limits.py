"""How much one request may ask of the server: bytes on the wire, JSON values, tensor elements.

TF Serving has no such limits (its gRPC port takes INT_MAX-sized messages, and a 40-byte request whose shape says
[300000, 784] allocates all of it); these are this server's own, each a flag with a safe default:

* ``--max_request_bytes`` (64 MiB): a REST body (413, before it is read); a gRPC message may be half of it
  (RESOURCE_EXHAUSTED, from gRPC itself). The budget of one request is 2 x ``--max_request_bytes`` of memory, and
  grpcio alone holds a message three times while it hands it to Python (its slices, a bytearray, the bytes; an
  identity deserializer measured +191 MB for a 62 MiB message), so a message may take 1/2 of the limit.
* ``--max_tensor_elements`` (2**24): the elements of one input tensor, REST or gRPC (INVALID_ARGUMENT, before
  the tensor is allocated: a gRPC tensor's shape is checked before its values are read). A gRPC tensor may also
  take no more bytes than a gRPC message may (2**24 int64s are 128 MiB; one value broadcast to that shape is a
  40-byte message).
* REST bodies may hold at most one JSON value per :data:`JSON_VALUE_BYTES` bytes of ``--max_request_bytes``
  (1.4 Mi values at the default), bytes inside strings counting one value per :data:`JSON_VALUE_BYTES`: a parsed
  value costs about that much in Python (a string its length), so the parsed request stays within the size of the
  largest body. A body's strings may hold at most half of ``--max_request_bytes`` in all: a parsed string costs
  its length beside the body, rapidjson holds the one it is making twice (its buffer and the Python ``str``), and
  a DT_STRING input costs its bytes and TensorFlow's copy; at half, body + strings + buffer stay within 1.5 x
  ``--max_request_bytes`` (measured: 64 MiB of 1 MB strings peaked at +128 MB before, refused at +96 now). The
  parse stops as soon as a count passes its limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pipeline.wire.status import invalid_argument
from pipeline.wire.tensors import item_size

DEFAULT_MAX_REQUEST_BYTES = 64 << 20
DEFAULT_MAX_TENSOR_ELEMENTS = 1 << 24
JSON_VALUE_BYTES = 48  # a parsed JSON number costs ~40 bytes (a float, its list slot, the list's slack)
JSON_STRING_SHARE = 2  # a body's strings may hold this fraction of --max_request_bytes (see the module doc)
GRPC_MESSAGE_SHARE = 2  # a gRPC message may be this fraction of --max_request_bytes (see the module doc)
MAX_RANK = 254  # TensorFlow's TensorShape::MaxDimensions()


@dataclass(frozen=True)
class RequestLimits:
    """The limits of one server (see the module doc)."""

    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_tensor_elements: int = DEFAULT_MAX_TENSOR_ELEMENTS

    @property
    def max_grpc_message_bytes(self) -> int:
        return max(1, self.max_request_bytes // GRPC_MESSAGE_SHARE)

    @property
    def max_json_values(self) -> int:
        return max(1, self.max_request_bytes // JSON_VALUE_BYTES)

    @property
    def max_json_string_bytes(self) -> int:
        return max(1, self.max_request_bytes // JSON_STRING_SHARE)


def check_tensor_proto(alias: str, proto: Any, max_elements: int, max_bytes: int | None = None) -> None:
    """Refuse a ``TensorProto`` whose shape is invalid, has more than ``max_elements`` elements or, as an array,
    would take more than ``max_bytes`` (a few values broadcast to a large shape: its message is tiny).

    Raises:
        ServingError: INVALID_ARGUMENT, before anything of the size the shape claims is allocated.
    """
    dims = [dim.size for dim in proto.tensor_shape.dim]
    if len(dims) > MAX_RANK:
        raise invalid_argument(f"Input tensor {alias} has {len(dims)} dimensions; a tensor has at most {MAX_RANK}")
    if any(size < 0 for size in dims):
        raise invalid_argument(f"Input tensor {alias} has a negative dimension: {dims}")
    count = math.prod(dims)
    if count > max_elements:
        raise invalid_argument(f"Input tensor {alias} has {count} elements (shape {dims}), more than the "
                               f"{max_elements} this server takes (--max_tensor_elements)")
    size = item_size(proto.dtype)
    if max_bytes is not None and size is not None and count * size > max_bytes:
        raise invalid_argument(f"Input tensor {alias} would take {count * size} bytes (shape {dims}), more than the "
                               f"{max_bytes} this server takes in one gRPC message (half of --max_request_bytes)")
