"""A REST request body read as JSON the way TF Serving reads it, bounded in time and memory.

* The parser is rapidjson (python-rapidjson), TF Serving's own: ``NaN``/``Infinity``/``-Infinity`` are numbers
  (``kParseNanAndInfFlag``), integers beyond uint64 are doubles, a number beyond the range of a double is a parse
  error, and errors are rapidjson's messages at rapidjson's offsets (``JSON Parse error: <message> at offset: N``).
* A large body is handed to the parser in 64 KiB chunks through a Python ``read()``, so the parse lets go of the
  GIL between chunks: one big request cannot stall the other clients for the length of its parse.
* The chunks' values are counted as they go (the ``,`` ``:`` ``[`` ``{`` bytes outside strings, an upper bound of
  the Python objects the parse makes, plus one value per :data:`STRING_BYTES_PER_VALUE` bytes inside strings, as a
  Python string costs its length): past ``max_values`` the parse stops, before the rest is built in memory.
* Strings holding more than ``max_string_bytes`` in all stop the parse as soon as the scan passes that many:
  a parsed string costs its length again beside the body (rapidjson also holds the one it is making in its
  buffer), so a body of strings would otherwise cost two to three times its size.
* Nesting deeper than python-rapidjson allows (the interpreter's recursion limit; TF Serving's parser has no such
  limit) is read by :func:`_parse_deep`, an iterative reader that uses rapidjson for every string and number.
"""

from __future__ import annotations

import codecs
import re
from typing import Any

import numpy as np
import rapidjson

from pipeline.wire.status import ServingError, invalid_argument

_NUMBER_MODE = rapidjson.NM_NATIVE | rapidjson.NM_NAN  # C doubles/int64s as rapidjson keeps them; NaN, Infinity
_STREAM_ABOVE_BYTES = 256 << 10  # smaller bodies parse in one call (a few ms at most)
_CHUNK_BYTES = 64 << 10
_PARSE_ERROR = re.compile(r"Parse error at offset (\d+): (.*)", re.DOTALL)
_QUOTE, _BACKSLASH = 0x22, 0x5C
_STRUCTURAL = np.zeros(256, dtype=bool)
_STRUCTURAL[[ord(","), ord(":"), ord("["), ord("{")]] = True


STRING_BYTES_PER_VALUE = 48  # bytes inside strings counted as one value (limits.JSON_VALUE_BYTES)


class TooManyStringBytes(ServingError):
    """The body's strings hold more bytes than the server takes (INVALID_ARGUMENT)."""

    def __init__(self, max_string_bytes: int):
        super().__init__("INVALID_ARGUMENT", f"JSON request has more than {max_string_bytes} bytes in strings, the "
                                             "most this server takes (half of --max_request_bytes)")


class TooManyValues(ServingError):
    """The body holds more JSON values than the server takes (INVALID_ARGUMENT)."""

    def __init__(self, max_values: int):
        super().__init__("INVALID_ARGUMENT", f"JSON request has more than {max_values} values; the server takes "
                                             "at most that many (see --max_request_bytes and --max_tensor_elements)")


def parse_json(body: bytes | bytearray | str, max_values: int | None = None,
               max_string_bytes: int | None = None) -> Any:
    """The JSON value of ``body``.

    Args:
        body: the request body (UTF-8).
        max_values: refuse a body with more values than this (None: no limit); string bytes count as values too.
        max_string_bytes: refuse a body whose strings hold more bytes than this in all (None: no limit).

    Raises:
        ServingError: INVALID_ARGUMENT, with TF Serving's ``JSON Parse error: ...`` message, :class:`TooManyValues`
            or :class:`TooManyStringBytes`.
    """
    if isinstance(body, str):
        body = body.encode("utf-8", "surrogatepass")
    if not body:
        raise invalid_argument("JSON Parse error: The document is empty")
    # a body too small to break a limit is not scanned (the common small request pays nothing)
    if max_values is not None and len(body) + len(body) // STRING_BYTES_PER_VALUE < max_values:
        max_values = None
    if max_string_bytes is not None and len(body) <= max_string_bytes:
        max_string_bytes = None
    try:
        if len(body) <= _STREAM_ABOVE_BYTES:
            if max_values is not None or max_string_bytes is not None:
                _scan(body, max_values, max_string_bytes)
            return rapidjson.loads(bytes(body), number_mode=_NUMBER_MODE)
        reader = _ChunkReader(body, max_values, max_string_bytes)
        return rapidjson.load(reader, number_mode=_NUMBER_MODE, chunk_size=_CHUNK_BYTES)  # type: ignore[arg-type]
    except RecursionError:  # nested deeper than python-rapidjson goes
        if max_values is not None or max_string_bytes is not None:
            _scan(body, max_values, max_string_bytes)  # the whole body, before the slow reader builds any of it
        return _parse_deep(body, max_values)
    except UnicodeDecodeError:
        raise invalid_argument("JSON Parse error: Invalid encoding in string. at offset: "
                               f"{_first_invalid_utf8(body)}") from None
    except (rapidjson.JSONDecodeError, ValueError, TypeError, OverflowError) as exc:
        raise _parse_error(exc) from None


def _parse_error(exc: Exception, shift: int = 0) -> ServingError:
    match = _PARSE_ERROR.match(str(exc))
    if match is None:
        return invalid_argument(f"JSON Parse error: {exc} at offset: {shift}")
    return invalid_argument(f"JSON Parse error: {match[2]} at offset: {int(match[1]) + shift}")


def _first_invalid_utf8(body: bytes | bytearray) -> int:
    """Where the first byte that is not UTF-8 is, decoding chunk by chunk (the GIL is let go in between)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    for start in range(0, len(body), _CHUNK_BYTES):
        try:
            decoder.decode(bytes(body[start:start + _CHUNK_BYTES]), final=start + _CHUNK_BYTES >= len(body))
        except UnicodeDecodeError as exc:
            return max(start + exc.start - len(decoder.getstate()[0]), 0)
    return 0


class _ChunkReader:
    """The file rapidjson reads a large body from: one chunk per call, scanned against the limits on the way."""

    def __init__(self, body: bytes | bytearray, max_values: int | None, max_string_bytes: int | None):
        self._body = body
        self._position = 0
        self._limits = _ScanLimits(max_values, max_string_bytes)
        self._counter = _ValueCounter() if self._limits.active else None

    def read(self, size: int) -> bytes:
        chunk = bytes(self._body[self._position:self._position + size])
        self._position += len(chunk)
        if self._counter is not None:
            self._limits.check(self._counter.add(chunk))
        return chunk


class _ScanLimits:
    def __init__(self, max_values: int | None, max_string_bytes: int | None):
        self.max_values = max_values
        self.max_string_bytes = max_string_bytes
        self.active = max_values is not None or max_string_bytes is not None

    def check(self, counter: _ValueCounter) -> None:
        if self.max_string_bytes is not None and counter.string_bytes > self.max_string_bytes:
            raise TooManyStringBytes(self.max_string_bytes)
        if self.max_values is not None and counter.values > self.max_values:
            raise TooManyValues(self.max_values)


def _scan(body: bytes | bytearray, max_values: int | None, max_string_bytes: int | None) -> None:
    limits = _ScanLimits(max_values, max_string_bytes)
    counter = _ValueCounter()
    for start in range(0, len(body), _CHUNK_BYTES):
        limits.check(counter.add(bytes(body[start:start + _CHUNK_BYTES])))


class _ValueCounter:
    """Counts ``,`` ``:`` ``[`` ``{`` outside strings, and the bytes inside strings, over
    consecutive chunks (numpy; state carried between chunks).

    One more than the count bounds the number of values (keys included) in a JSON text; :attr:`values` adds one
    per :data:`STRING_BYTES_PER_VALUE` bytes of strings (a parsed string costs its length).
    """

    def __init__(self) -> None:
        self.count = 1
        self.string_bytes = 0
        self._in_string = 0
        self._backslashes = 0  # length of the run of backslashes that ended the previous chunk

    @property
    def values(self) -> int:
        return self.count + self.string_bytes // STRING_BYTES_PER_VALUE

    def add(self, chunk: bytes) -> _ValueCounter:
        if not chunk:
            return self
        data = np.frombuffer(chunk, dtype=np.uint8)
        quotes = data == _QUOTE
        if self._backslashes or b"\\" in chunk:
            quotes &= ~self._escaped(data)
        inside = (np.cumsum(quotes, dtype=np.int64) + self._in_string) & 1
        self.count += int(np.count_nonzero(_STRUCTURAL[data] & (inside == 0)))
        self.string_bytes += int(np.count_nonzero(inside))
        self._in_string = int(inside[-1])
        return self

    def _escaped(self, data: np.ndarray) -> np.ndarray:
        """Which bytes follow an odd run of backslashes (the previous chunk's trailing run included)."""
        backslash = data == _BACKSLASH
        index = np.arange(len(data))
        last_other = np.maximum.accumulate(np.where(backslash, -1, index))
        run = index - last_other  # backslashes ending at each index (0 where the byte is not one)
        run = np.where(last_other < 0, run + self._backslashes, run)
        escaped = np.empty(len(data), dtype=bool)
        escaped[0] = self._backslashes % 2 == 1
        escaped[1:] = (run[:-1] % 2) == 1
        self._backslashes = int(run[-1]) if backslash[-1] else 0
        return escaped


# ---------------------------------------------------------------- nesting deeper than python-rapidjson goes

_TOKEN = re.compile(rb"""[ \t\n\r]*(?:
    (?P<open>[\[{]) | (?P<close>[\]}]) | (?P<sep>[,:]) | (?P<string>"(?:[^"\\]|\\.)*") |
    (?P<literal>true|false|null) |
    (?P<number>-?NaN|-?Inf(?:inity)?|-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)
)""", re.VERBOSE | re.DOTALL)
_LITERALS = {b"true": True, b"false": False, b"null": None}
_VALUE, _FIRST_ITEM, _FIRST_KEY, _KEY, _COLON, _NEXT, _END = range(7)
_NO_KEY = object()


def _parse_deep(body: bytes | bytearray, max_values: int | None) -> Any:
    """An iterative JSON reader (any depth) giving what rapidjson gives; strings and numbers go through rapidjson.

    Only documents nested deeper than python-rapidjson allows come here, so its speed matters little; it is
    plain Python, so other threads get the GIL while it runs.
    """
    text = bytes(body)
    stack: list[list[Any]] = []  # [container, pending key]
    state, position, count, root = _VALUE, 0, 0, None
    while True:
        match = _TOKEN.match(text, position)
        if match is None:
            offset = len(text) - len(text[position:].lstrip(b" \t\n\r"))
            if offset >= len(text):
                if state == _END:
                    return root
                raise invalid_argument(f"JSON Parse error: {_missing(state, stack)} at offset: {offset}")
            raise invalid_argument(f"JSON Parse error: {_unexpected(state, stack, text, offset)} at offset: {offset}")
        kind = match.lastgroup or ""
        token, offset = match.group(kind), match.start(kind)
        position = match.end()
        if state == _END:
            raise invalid_argument("JSON Parse error: The document root must not be followed by other values. "
                                   f"at offset: {offset}")
        if state in (_FIRST_KEY, _KEY):
            if kind == "close" and state == _FIRST_KEY and token == b"}":
                state, root = _close(stack, root)
                continue
            if kind != "string":
                raise invalid_argument(f"JSON Parse error: Missing a name for object member. at offset: {offset}")
            stack[-1][1] = _decode(token, offset)
            state = _COLON
            continue
        if state == _COLON:
            if token != b":":
                raise invalid_argument("JSON Parse error: Missing a colon after a name of object member. "
                                       f"at offset: {offset}")
            state = _VALUE
            continue
        if state == _NEXT:
            is_object = isinstance(stack[-1][0], dict)
            if token == b",":
                state = _KEY if is_object else _VALUE
                continue
            if kind == "close" and token == (b"}" if is_object else b"]"):
                state, root = _close(stack, root)
                continue
            raise invalid_argument(f"JSON Parse error: {_missing(state, stack)} at offset: {offset}")
        # a value is expected (_VALUE, or _FIRST_ITEM where ']' may close the array)
        if kind == "close" and state == _FIRST_ITEM and token == b"]":
            state, root = _close(stack, root)
            continue
        count += 1
        if max_values is not None and count > max_values:
            raise TooManyValues(max_values)
        if kind == "open":
            container: Any = [] if token == b"[" else {}
            stack.append([container, _NO_KEY])
            state = _FIRST_ITEM if token == b"[" else _FIRST_KEY
            continue
        if kind in ("close", "sep"):
            raise invalid_argument(f"JSON Parse error: Invalid value. at offset: {offset}")
        value = _LITERALS[token] if kind == "literal" else _decode(token, offset)
        state, root = _add(stack, value)


def _decode(token: bytes, offset: int) -> Any:
    try:
        return rapidjson.loads(token, number_mode=_NUMBER_MODE)
    except UnicodeDecodeError:
        raise invalid_argument(f"JSON Parse error: Invalid encoding in string. at offset: {offset}") from None
    except (rapidjson.JSONDecodeError, ValueError, TypeError, OverflowError) as exc:
        raise _parse_error(exc, offset) from None


def _add(stack: list[list[Any]], value: Any) -> tuple[int, Any]:
    """Put a finished value into its container (or make it the root): the next state and the root."""
    if not stack:
        return _END, value
    container, key = stack[-1]
    if isinstance(container, dict):
        container[key] = value
    else:
        container.append(value)
    return _NEXT, None


def _close(stack: list[list[Any]], root: Any) -> tuple[int, Any]:
    container = stack.pop()[0]
    state, value = _add(stack, container)
    return state, value if state == _END else root


def _missing(state: int, stack: list[list[Any]]) -> str:
    if state == _NEXT:
        return ("Missing a comma or '}' after an object member." if isinstance(stack[-1][0], dict)
                else "Missing a comma or ']' after an array element.")
    if state in (_FIRST_KEY, _KEY):
        return "Missing a name for object member."
    if state == _COLON:
        return "Missing a colon after a name of object member."
    return "Invalid value."


def _unexpected(state: int, stack: list[list[Any]], text: bytes, offset: int) -> str:
    if text[offset:offset + 1] == b'"':
        return "Missing a closing quotation mark in string."
    return _missing(state, stack)
