"""numpy <-> TensorProto: our tensor_content path agrees with TensorFlow's own converters both ways."""

from __future__ import annotations

import numpy as np
import pytest
from tensorflow.core.framework import tensor_pb2

from pipeline.wire.tensors import TensorConversionError, fill_tensor_proto, to_ndarray

NUMERIC = [np.float32, np.float64, np.float16, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
           np.uint32, np.uint64, np.bool_, np.complex64, np.complex128]


def tensor_proto(value: object) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto()
    fill_tensor_proto(proto, value)
    return proto


@pytest.mark.parametrize("dtype", NUMERIC, ids=lambda d: np.dtype(d).name)
def test_numeric_arrays_travel_as_tensor_content_and_tensorflow_reads_them(dtype: type) -> None:
    import tensorflow as tf

    array = (np.arange(24).reshape(2, 3, 4) % 7).astype(dtype)
    proto = tensor_proto(array)
    assert proto.tensor_content == array.tobytes()
    assert [d.size for d in proto.tensor_shape.dim] == [2, 3, 4]
    assert proto.dtype == tf.as_dtype(array.dtype).as_datatype_enum
    np.testing.assert_array_equal(tf.make_ndarray(proto), array)
    back = to_ndarray(proto)
    assert back.dtype == array.dtype and back.flags.writeable
    np.testing.assert_array_equal(back, array)


@pytest.mark.parametrize("value", [np.float32(2.5), np.zeros((0, 3), np.float32), np.array([1, 2], ">i4")])
def test_scalars_empty_and_big_endian_arrays(value: np.ndarray) -> None:
    import tensorflow as tf

    proto = tensor_proto(value)
    np.testing.assert_array_equal(tf.make_ndarray(proto), value)
    np.testing.assert_array_equal(to_ndarray(proto), value)


def test_protos_made_by_tensorflow_are_read_including_typed_fields_and_strings() -> None:
    import tensorflow as tf

    for value in (np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4), np.array([b"a", b"\xff"], object)):
        np.testing.assert_array_equal(to_ndarray(tf.make_tensor_proto(value)), value)
    typed = tf.make_tensor_proto([1.5, 2.5], dtype=tf.float32)
    typed.ClearField("tensor_content")
    typed.float_val.extend([1.5, 2.5])  # what clients that fill float_val send
    np.testing.assert_array_equal(to_ndarray(typed), np.array([1.5, 2.5], np.float32))


def test_strings_go_through_tensorflow() -> None:
    proto = tensor_proto(np.array(["x", "yz"], dtype=object))
    assert list(proto.string_val) == [b"x", b"yz"]


def test_content_that_does_not_match_the_shape_is_refused() -> None:
    proto = tensor_proto(np.zeros((2, 2), np.float32))
    proto.tensor_content = proto.tensor_content[:-1]
    with pytest.raises(TensorConversionError, match="holds 15 bytes; shape \\[2, 2\\] of DT_FLOAT needs 16"):
        to_ndarray(proto)
