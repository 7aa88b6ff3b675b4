"""A serialized PredictRequest split into the request without tensor_content and the contents: the same request
protobuf parses, contents aligned and used in place."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from tensorflow_serving.apis import predict_pb2

from pipeline.wire import tensor_payloads
from pipeline.wire.tensor_payloads import (
    ALIGNMENT,
    SplitPredictRequest,
    Unsplittable,
    _tag,
    _varint_bytes,
    parse_predict_request,
    split_predict_request,
)
from pipeline.wire.tensors import fill_tensor_proto, to_ndarray, to_tf_tensor


@pytest.fixture(autouse=True)
def split_every_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tensor_payloads, "SPLIT_ABOVE_BYTES", 0)  # the tests' messages are small


def request(**inputs: object) -> predict_pb2.PredictRequest:
    message = predict_pb2.PredictRequest()
    message.model_spec.name = "m"
    message.model_spec.signature_name = "serving_default"
    message.output_filter.append("y")
    for alias, value in inputs.items():
        fill_tensor_proto(message.inputs[alias], value)
    return message


def rejoined(split: SplitPredictRequest) -> predict_pb2.PredictRequest:
    """The request with its contents put back: must equal what protobuf parses from the original bytes."""
    whole = predict_pb2.PredictRequest()
    whole.CopyFrom(split.request)
    for alias, content in split.contents.items():
        whole.inputs[alias].tensor_content = content.tobytes()
    return whole


def entry(key: bytes, *values: bytes) -> bytes:
    """One raw ``inputs`` map entry: the key and each serialized TensorProto as a ``value`` field."""
    body = _tag(1, 2) + _varint_bytes(len(key)) + key
    for value in values:
        body += _tag(2, 2) + _varint_bytes(len(value)) + value
    return _tag(2, 2) + _varint_bytes(len(body)) + body


def test_contents_are_split_out_aligned_and_the_rest_parses_as_protobuf_does() -> None:
    floats = np.arange(12, dtype=np.float32).reshape(3, 4)
    ints = np.arange(5, dtype=np.int64)
    data = request(x=floats, ids=ints, words=np.array([b"a", b"bc"], dtype=object)).SerializeToString()
    stripped, contents = split_predict_request(data)
    assert sorted(contents) == ["ids", "x"]  # strings travel in string_val, not tensor_content
    assert len(stripped) < len(data) - floats.nbytes
    for content in contents.values():
        assert content.dtype == np.uint8 and content.ctypes.data % ALIGNMENT == 0 and content.flags.writeable
    split = parse_predict_request(data)
    assert not any(proto.tensor_content for proto in split.request.inputs.values())
    assert rejoined(split) == predict_pb2.PredictRequest.FromString(data)
    got = to_ndarray(split.request.inputs["x"], split.contents["x"])
    np.testing.assert_array_equal(got, floats)
    assert np.shares_memory(got, split.contents["x"])  # a view: no copy


def test_map_and_merge_rules_match_protobuf() -> None:
    first = request(x=np.ones(3, np.float32)).SerializeToString()
    second = request(x=np.full(3, 2, np.float32)).SerializeToString()
    no_content = predict_pb2.PredictRequest()
    no_content.inputs["x"].dtype = 1
    no_content.inputs["x"].float_val.append(7.0)
    content_a = request(x=np.ones(2, np.float32)).inputs["x"].SerializeToString()
    content_b = request(x=np.full(2, 3, np.float32)).inputs["x"].SerializeToString()
    only_shape = request(x=np.ones((1, 2), np.float32)).inputs["x"]
    only_shape.ClearField("tensor_content")
    cases = {
        "a key twice: the last entry": first + second,
        "a last entry without content drops the content": first + no_content.SerializeToString(),
        "a value twice in one entry is merged, last content wins": entry(b"x", content_a, content_b),
        "a later value without content keeps the content": entry(b"x", content_a, only_shape.SerializeToString()),
        "an empty content is no content": entry(b"x", content_a, _tag(4, 2) + _varint_bytes(0)),
    }
    for name, data in cases.items():
        assert rejoined(parse_predict_request(data)) == predict_pb2.PredictRequest.FromString(data), name


@pytest.mark.parametrize("data", [b"\x12\x05\x0a\x01", b"\x0b\x00", b"\x00\x01", b"\x12\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"],
                         ids=["truncated", "group", "field 0", "bad varint"])
def test_malformed_bytes_are_unsplittable_and_parse_fails_as_protobuf_does(data: bytes) -> None:
    with pytest.raises(Unsplittable):
        split_predict_request(data)
    with pytest.raises(DecodeError):
        predict_pb2.PredictRequest.FromString(data)
    with pytest.raises(DecodeError):
        parse_predict_request(data)


def test_a_tensor_of_one_field_per_value_is_left_to_protobuf() -> None:
    message = predict_pb2.PredictRequest()
    tensor = message.inputs["x"]
    tensor.dtype = 7  # DT_STRING: one string_val field per element
    tensor.string_val.extend([b"s"] * 1000)
    data = message.SerializeToString()
    with pytest.raises(Unsplittable):
        split_predict_request(data)
    split = parse_predict_request(data)
    assert split.contents == {} and split.request == message


def test_a_large_aligned_array_is_shared_with_tensorflow_and_a_small_one_copied() -> None:
    import tensorflow as tf

    large = np.arange(1 << 19, dtype=np.float32)  # 2 MiB
    split = parse_predict_request(request(x=large).SerializeToString())
    array = to_ndarray(split.request.inputs["x"], split.contents["x"])
    tensor = to_tf_tensor(array, tf.float32)
    array[0] = 42.0  # shared: TensorFlow sees the write
    assert float(tensor[0]) == 42.0 and float(tensor[-1]) == large[-1]
    small = np.arange(4, dtype=np.float32)
    copied = to_tf_tensor(small, tf.float32)
    small[0] = 42.0
    assert float(copied[0]) == 0.0
    assert to_tf_tensor(large.astype(np.float64), tf.float32).dtype == tf.float32  # a dtype change: converted


def test_a_small_message_is_parsed_by_protobuf_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tensor_payloads, "SPLIT_ABOVE_BYTES", 1 << 10)
    small = request(x=np.ones(4, np.float32))
    assert parse_predict_request(small.SerializeToString()) == small
    large = request(x=np.ones(1024, np.float32))
    split = parse_predict_request(large.SerializeToString())
    assert isinstance(split, SplitPredictRequest) and rejoined(split) == large
