"""Reading request bodies as TF Serving's rapidjson does: numbers, errors, any depth, and bounded work per body."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest
import rapidjson

from pipeline.embedded_server import json_reader
from pipeline.embedded_server.json_reader import TooManyStringBytes, TooManyValues, parse_json
from pipeline.wire.status import ServingError


def parse_error(body: bytes, max_values: int | None = None) -> str:
    with pytest.raises(ServingError) as info:
        parse_json(body, max_values)
    assert info.value.code == "INVALID_ARGUMENT"
    return info.value.message


@pytest.mark.parametrize("body,message", [
    (b"", "JSON Parse error: The document is empty"),
    (b"  ", "JSON Parse error: The document is empty. at offset: 2"),
    (b"[1, 2", "JSON Parse error: Missing a comma or ']' after an array element. at offset: 5"),
    (b'{"a" 1}', "JSON Parse error: Missing a colon after a name of object member. at offset: 5"),
    (b"instances = [1]", "JSON Parse error: Invalid value. at offset: 0"),
    (b'{"a": 1}x', "JSON Parse error: The document root must not be followed by other values. at offset: 8"),
    (b'["\\ud800"]', "JSON Parse error: The surrogate pair in string is invalid. at offset: 2"),
    # a number past the range of a double is a parse error in rapidjson (Python's json would read inf)
    (b'{"instances": [1e400]}', "JSON Parse error: Number too big to be stored in double. at offset: 15"),
    (b"[-1e400]", "JSON Parse error: Number too big to be stored in double. at offset: 1"),
    (b"[" + b"9" * 5000 + b"]", "JSON Parse error: Number too big to be stored in double. at offset: 1"),
    (b'["ok", "\xff"]', "JSON Parse error: Invalid encoding in string. at offset: 8"),
])
def test_errors_are_rapidjsons(body: bytes, message: str) -> None:
    assert parse_error(body) == message


def test_numbers_as_rapidjson_keeps_them() -> None:
    doc = parse_json(b"[18446744073709551615, 18446744073709551616, -9223372036854775809, 1e-400, NaN, -Infinity, 2.5]")
    assert doc[:2] == [2**64 - 1, 1.8446744073709552e19]  # past uint64: a double, as rapidjson stores it
    assert isinstance(doc[1], float) and isinstance(doc[2], float)
    assert doc[3] == 0.0 and math.isnan(doc[4]) and doc[5] == -math.inf and doc[6] == 2.5


def _nested(depth: int, leaf: bytes = b"1") -> bytes:
    return b"[" * depth + leaf + b"]" * depth


@pytest.mark.parametrize("depth", [900, 5000, 200_000])
def test_any_depth_of_wellformed_json_parses(depth: int) -> None:
    doc = parse_json(b'{"instances": [1.0], "extra": ' + _nested(depth) + b"}")
    value = doc["extra"]
    for _ in range(depth - 1):
        value = value[0]
    assert value == [1]


def test_deep_documents_read_like_rapidjson() -> None:
    # Past python-rapidjson's depth the iterative reader takes over; it must give what rapidjson gives.
    rng = random.Random(7)

    def value(depth: int = 0) -> Any:
        roll = rng.random()
        if depth > 4 or roll < 0.3:
            return rng.choice([1, -2, 1.5, 'q"\\\u00e9', True, None, 1e300, 2**64, math.inf])
        if roll < 0.65:
            return [value(depth + 1) for _ in range(rng.randint(0, 3))]
        return {f"k{i}": value(depth + 1) for i in range(rng.randint(0, 3))}

    for _ in range(200):
        text = json.dumps(value(), allow_nan=True).encode()
        expected = rapidjson.loads(text, number_mode=rapidjson.NM_NATIVE | rapidjson.NM_NAN)
        assert repr(json_reader._parse_deep(text, None)) == repr(expected), text


def test_deep_malformed_documents_are_parse_errors() -> None:
    assert parse_error(_nested(3000)[:-1]).startswith("JSON Parse error: ")
    assert parse_error(b"[" * 3000 + b"1e400" + b"]" * 3000) == (
        "JSON Parse error: Number too big to be stored in double. at offset: 3000")


def _counted(body: bytes, chunk_bytes: int | None = None) -> json_reader._ValueCounter:
    counter = json_reader._ValueCounter()
    size = chunk_bytes or len(body)
    for start in range(0, len(body), size):
        counter.add(body[start:start + size])
    return counter


def test_values_are_counted_outside_strings_only() -> None:
    assert _counted(b'{"a": [1, 2, 3], "b": "x,y:[{"}').count == 8  # , : [ , , , : {  ... outside the strings
    assert _counted(b'["a\\",b", 1]').count == 3  # the escaped quote does not end the string
    assert _counted(b'["\\\\", 2]').count == 3  # an escaped backslash does not escape the quote after it


def test_string_bytes_are_counted_and_count_as_values() -> None:
    counter = _counted(b'{"ab": "abcdef", "c": "x\\"y"}')
    assert counter.string_bytes == 3 + 7 + 2 + 5  # each string's bytes from its opening quote
    assert _counted(b'["' + b"a" * 96 + b'"]').values == 2 + 97 // json_reader.STRING_BYTES_PER_VALUE  # [ and its bytes


def test_counting_carries_string_state_across_chunks() -> None:
    text = b'["a,\\"b,c", "\\\\", [1,2], {"k:": 3}, "' + b"z" * 40 + b'", "unclosed'
    whole = _counted(text)
    for size in (1, 3, 4, 7):
        chunked = _counted(text, size)
        assert (chunked.count, chunked.string_bytes) == (whole.count, whole.string_bytes), size
    assert whole.string_bytes == 8 + 3 + 3 + 41 + 9  # each from its opening quote; the last never closes


def test_strings_over_the_limit_stop_the_parse_early(monkeypatch: pytest.MonkeyPatch) -> None:
    reads = []
    original = json_reader._ChunkReader.read
    monkeypatch.setattr(json_reader._ChunkReader, "read", lambda self, size: reads.append(size) or original(self, size))
    body = b'{"instances": ["' + b"a" * (8 << 20) + b'"]}'
    with pytest.raises(TooManyStringBytes, match="more than 1048576 bytes in strings"):
        parse_json(body, max_string_bytes=1 << 20)
    assert len(reads) * json_reader._CHUNK_BYTES < 2 << 20  # stopped soon after the limit, not at the end
    assert len(parse_json(body, max_string_bytes=9 << 20)["instances"][0]) == 8 << 20
    many = b"[" + b", ".join([b'"' + b"a" * 1000 + b'"'] * 2000) + b"]"  # 2 MB of strings, none long
    with pytest.raises(TooManyStringBytes):
        parse_json(many, max_string_bytes=1 << 20)
    assert len(parse_json(many, max_string_bytes=3 << 20)) == 2000
    with pytest.raises(TooManyStringBytes):  # a small body is scanned whole before it is parsed
        parse_json(b'["' + b"a" * 100 + b'"]', max_string_bytes=50)
    with pytest.raises(TooManyValues):  # string bytes count as values
        parse_json(b'["' + b"a" * 4800 + b'"]', max_values=50)
    assert parse_json(b'["' + b"a" * 4800 + b'"]', max_values=200) == ["a" * 4800]


def test_a_large_body_is_parsed_a_chunk_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    reads = []
    original = json_reader._ChunkReader.read

    def counting_read(self: Any, size: int) -> bytes:
        reads.append(size)
        return original(self, size)

    monkeypatch.setattr(json_reader._ChunkReader, "read", counting_read)
    body = json.dumps({"instances": [[0.5] * 784] * 200}).encode()  # ~1 MB
    assert len(parse_json(body)["instances"]) == 200
    # each read is a point where other threads get the GIL; one call per chunk, not one for the whole body
    assert len(reads) >= len(body) // json_reader._CHUNK_BYTES


def test_too_many_values_stop_the_parse_early(monkeypatch: pytest.MonkeyPatch) -> None:
    reads = []
    original = json_reader._ChunkReader.read
    monkeypatch.setattr(json_reader._ChunkReader, "read", lambda self, size: reads.append(size) or original(self, size))
    body = b"[" + b",".join([b"1"] * 2_000_000) + b"]"
    with pytest.raises(TooManyValues, match="more than 100000 values"):
        parse_json(body, max_values=100_000)
    assert len(reads) * json_reader._CHUNK_BYTES < len(body) // 4  # stopped long before the end
    assert len(parse_json(body, max_values=2_000_001)) == 2_000_000


def test_too_many_values_in_a_small_or_deep_body() -> None:
    with pytest.raises(TooManyValues):
        parse_json(b"[1, 2, 3, 4, 5]", max_values=3)
    with pytest.raises(TooManyValues):
        parse_json(_nested(5000), max_values=4000)
