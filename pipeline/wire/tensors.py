"""numpy arrays <-> ``TensorProto`` for the gRPC API, shared by the client and the server.

Numeric tensors travel as ``tensor_content`` (the raw little-endian bytes), which is what TF Serving itself
writes; that is one ``tobytes``/``frombuffer`` instead of ``tf.make_tensor_proto``/``tf.make_ndarray``, whose
generic checks cost more than a small model's whole forward pass. Strings, and protos that carry their values
in the typed repeated fields (``float_val``...), go through TensorFlow's own converters.

Importing this module imports the TensorFlow protos (so TensorFlow), as the gRPC stubs do anyway.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from tensorflow.core.framework import types_pb2

# numpy dtype -> DataType, for the dtypes whose tensor_content is the array's own bytes.
_DATATYPE_BY_NUMPY: dict[np.dtype[Any], int] = {
    np.dtype(np.float32): types_pb2.DT_FLOAT, np.dtype(np.float64): types_pb2.DT_DOUBLE,
    np.dtype(np.float16): types_pb2.DT_HALF,
    np.dtype(np.int8): types_pb2.DT_INT8, np.dtype(np.int16): types_pb2.DT_INT16,
    np.dtype(np.int32): types_pb2.DT_INT32, np.dtype(np.int64): types_pb2.DT_INT64,
    np.dtype(np.uint8): types_pb2.DT_UINT8, np.dtype(np.uint16): types_pb2.DT_UINT16,
    np.dtype(np.uint32): types_pb2.DT_UINT32, np.dtype(np.uint64): types_pb2.DT_UINT64,
    np.dtype(np.bool_): types_pb2.DT_BOOL,
    np.dtype(np.complex64): types_pb2.DT_COMPLEX64, np.dtype(np.complex128): types_pb2.DT_COMPLEX128,
}  # fmt: skip
_NUMPY_BY_DATATYPE = {datatype: dtype.newbyteorder("<") for dtype, datatype in _DATATYPE_BY_NUMPY.items()}


def item_size(datatype: int) -> int | None:
    """Bytes per element of a ``DataType`` whose tensor_content is a numpy array's bytes (None: others)."""
    dtype = _NUMPY_BY_DATATYPE.get(datatype)
    return None if dtype is None else dtype.itemsize


class TensorConversionError(ValueError):
    """A TensorProto whose content does not fit its dtype and shape."""


def fill_tensor_proto(proto: Any, value: Any) -> None:
    """Write ``value`` (an array or anything ``np.asarray`` takes) into the empty ``TensorProto`` ``proto``."""
    array = np.asarray(value)
    datatype = _DATATYPE_BY_NUMPY.get(array.dtype.newbyteorder("="))
    if datatype is None:  # strings, objects, bfloat16...: TensorFlow knows how
        import tensorflow as tf

        proto.CopyFrom(tf.make_tensor_proto(array))
        return
    proto.dtype = datatype
    for size in array.shape:
        proto.tensor_shape.dim.add().size = size
    proto.tensor_content = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def to_ndarray(proto: Any, content: np.ndarray | None = None) -> np.ndarray:
    """The array a ``TensorProto`` holds (writable; a copy of the proto's bytes).

    Args:
        proto: the tensor.
        content: its ``tensor_content`` already split out of the message (a uint8 array, see
            :mod:`pipeline.wire.tensor_payloads`): the result is a view of it, no copy.

    Raises:
        TensorConversionError: ``tensor_content`` does not hold as many elements as the shape says.
    """
    dtype = _NUMPY_BY_DATATYPE.get(proto.dtype)
    if content is not None and dtype is None:  # a dtype only TensorFlow converts: give the proto its bytes back
        proto.tensor_content = content.tobytes()
        content = None
    raw = proto.tensor_content if content is None and dtype is not None else b""  # the getter copies: once
    if dtype is None or (content is None and not raw):
        import tensorflow as tf

        return tf.make_ndarray(proto)
    shape = [dim.size for dim in proto.tensor_shape.dim]
    count = math.prod(shape)
    size = len(content) if content is not None else len(raw)
    if count < 0 or size != count * dtype.itemsize:
        raise TensorConversionError(
            f"tensor_content holds {size} bytes; shape {shape} of {types_pb2.DataType.Name(proto.dtype)} "
            f"needs {max(count, 0) * dtype.itemsize}")
    if content is not None:
        return content.view(dtype).astype(dtype.newbyteorder("="), copy=False).reshape(shape)
    return np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="), copy=True).reshape(shape)


_SHARE_ABOVE_BYTES = 1 << 20  # smaller arrays are copied (tf.constant): sharing them saves nothing that matters
_ALIGNMENT = 64  # EIGEN_MAX_ALIGN_BYTES


def to_tf_tensor(value: Any, dtype: Any) -> Any:
    """``value`` as an eager tensor of ``dtype`` (a ``tf.DType``); a large aligned numpy array is shared, not copied.

    ``tf.constant`` copies a numpy array (twice over, measured: +64 MB for 32 MiB); DLPack hands TensorFlow the
    array's own buffer (TensorFlow keeps the array alive). Only a C-contiguous array of the very dtype, aligned as
    TensorFlow wants its buffers, goes that way.
    """
    import tensorflow as tf

    if (isinstance(value, np.ndarray) and value.nbytes >= _SHARE_ABOVE_BYTES and value.flags.c_contiguous
            and value.flags.writeable and value.ctypes.data % _ALIGNMENT == 0 and value.dtype.isnative
            and value.dtype == dtype.as_numpy_dtype):
        return tf.experimental.dlpack.from_dlpack(value.__dlpack__())
    return tf.constant(value, dtype=dtype)
