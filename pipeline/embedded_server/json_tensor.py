"""REST JSON <-> tensors, following TF Serving's ``tensorflow_serving/util/json_tensor.cc``.

Requests: ``{"signature_name": ..., "instances": [...]}`` (row format, one element per batch item) or
``{"inputs": ...}`` (columnar format, one value per named input). Responses: ``{"predictions": ...}`` for rows,
``{"outputs": ...}`` for columns. Values are checked against the signature's input dtypes with TF Serving's
rules (an integer JSON number is a valid float, a decimal is not a valid int, ``{"b64": ...}`` is a DT_STRING,
numbers that a dtype cannot hold without loss are refused) and its error texts. Floats are written the way TF
Serving writes them: six significant digits when that round-trips, full precision otherwise.

Imported only by the server (numpy at module level; tensorflow protos inside functions).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from pipeline.embedded_server import json_reader
from pipeline.wire.dtypes import data_type_string
from pipeline.wire.status import ServingError, invalid_argument, unimplemented

ROW = "row"
COLUMNAR = "columnar"

_FLOAT32_MAX = float(np.finfo(np.float32).max)
_FLOAT64_MAX = float(np.finfo(np.float64).max)
_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)
_UINT32 = (0, 2**32 - 1)
_UINT64 = (0, 2**64 - 1)
_BYTES_SUFFIX = "_bytes"  # outputs whose name ends so are written as {"b64": ...}
_MAX_VALUE_CHARS = 1024  # JSON values quoted in error messages are cut here
_MAX_RANK = 64  # numpy's NPY_MAXDIMS (TensorFlow itself takes 254)
_SLICE = 1 << 16  # large value lists are converted this many at a time, so that the GIL is let go in between

# DT_* name -> (numpy dtype, leaf kind) of the dtypes JSON can carry
_DTYPES: dict[str, tuple[Any, str]] = {
    "DT_FLOAT": (np.float32, "float"),
    "DT_DOUBLE": (np.float64, "double"),
    "DT_INT32": (np.int32, "int"),
    "DT_INT16": (np.int16, "int"),
    "DT_INT8": (np.int8, "int"),
    "DT_UINT8": (np.uint8, "int"),
    "DT_INT64": (np.int64, "int64"),
    "DT_UINT32": (np.uint32, "uint32"),
    "DT_UINT64": (np.uint64, "uint64"),
    "DT_BOOL": (np.bool_, "bool"),
    "DT_STRING": (object, "string"),
}


# ---------------------------------------------------------------- messages


def json_type_string(val: Any) -> str:
    """rapidjson's type name of a parsed JSON value, as TF Serving prints it."""
    if val is None:
        return "Null"
    if val is True:
        return "True"
    if val is False:
        return "False"
    if isinstance(val, dict):
        return "Object"
    if isinstance(val, list):
        return "Array"
    if isinstance(val, str):
        return "String"
    return "Number"


def json_value_string(val: Any) -> str:
    """A JSON value printed for an error message: at most ~1 KiB, any depth (TF Serving's fix of CVE-2025-0649
    bounds it too), so that a large or deeply nested request cannot make its error huge."""
    if isinstance(val, float):
        return format_double(val)
    if not isinstance(val, (list, dict)):
        return _scalar_json(val)
    out: list[str] = []
    size = 0
    stack = [_json_pieces(val)]
    while stack:
        piece = next(stack[-1], None)
        if piece is None:
            stack.pop()
        elif not isinstance(piece, str):
            stack.append(_json_pieces(piece))
        else:
            out.append(piece)
            size += len(piece)
            if size > _MAX_VALUE_CHARS:
                return "".join(out)[:_MAX_VALUE_CHARS] + "..."
    return "".join(out)


def _scalar_json(val: Any) -> str:
    if isinstance(val, str) and len(val) > _MAX_VALUE_CHARS:
        val = val[:_MAX_VALUE_CHARS]
    return json.dumps(val, ensure_ascii=False, allow_nan=True)


def _json_pieces(val: Any) -> Iterator[Any]:
    """The text of a list or object piece by piece; a nested container is yielded as itself, to be expanded."""
    if isinstance(val, list):
        yield "["
        for index, item in enumerate(val):
            if index:
                yield ", "
            yield item if isinstance(item, (list, dict)) else _scalar_json(item)
        yield "]"
        return
    yield "{"
    for index, (key, item) in enumerate(val.items()):
        yield (", " if index else "") + _scalar_json(key) + ": "
        yield item if isinstance(item, (list, dict)) else _scalar_json(item)
    yield "}"


def _type_error(val: Any, dtype: str) -> ServingError:
    return invalid_argument(f"JSON Value: {json_value_string(val)} Type: {json_type_string(val)} "
                            f"is not of expected type: {data_type_string(dtype)}")


def _lossy_error(val: Any, target: str) -> ServingError:
    return invalid_argument(f"Cannot convert JSON value: {json_value_string(val)} to {target} "
                            "without loss of precision.")


def _format_error(doc: Any, *parts: str) -> ServingError:
    return invalid_argument(f"JSON Value: {json_value_string(doc)} " + "".join(parts))


# ---------------------------------------------------------------- parsing


def parse_json(body: bytes | bytearray | str, max_values: int | None = None,
               max_string_bytes: int | None = None) -> dict:
    """Parse a request body as TF Serving does (rapidjson, see :mod:`json_reader`); the document must be an object.

    Raises:
        ServingError: INVALID_ARGUMENT (TF Serving's ``JSON Parse error: ...`` / ``Is not object``), also when the
            body holds more than ``max_values`` values or more than ``max_string_bytes`` bytes in strings.
    """
    doc = json_reader.parse_json(body, max_values, max_string_bytes)
    if not isinstance(doc, dict):
        raise _format_error(doc, "Is not object")
    return doc


def signature_name_of(doc: dict) -> str:
    """The optional ``signature_name`` of a request ('' when absent)."""
    name = doc.get("signature_name", "")
    if not isinstance(name, str):
        raise _format_error(doc, "not formatted correctly. 'signature_name' key must be a string value.")
    return name


def _is_b64(val: Any) -> bool:
    return isinstance(val, dict) and len(val) == 1 and isinstance(val.get("b64"), str)


def _decode_b64(val: Any) -> bytes:
    if not _is_b64(val):
        raise invalid_argument(f"JSON Value: {json_value_string(val)} not formatted correctly for base64 data")
    text = val["b64"]
    if len(text) % 4:  # absl::Base64Unescape accepts missing padding; so do we
        text += "=" * (-len(text) % 4)
    try:
        # base64.b64decode(validate=True), without its ASCII copy of the text: binascii reads an ASCII str in place
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        raise invalid_argument("Unable to base64 decode") from None


def _check_leaf(val: Any, dtype: str) -> Any:
    """One JSON scalar as a Python value of ``dtype``, or TF Serving's error."""
    kind = _DTYPES[dtype][1] if dtype in _DTYPES else None
    if kind is None:
        raise unimplemented(f"Conversion of JSON Value: {json_value_string(val)} to type: {data_type_string(dtype)}")
    if isinstance(val, dict):
        if kind == "string":
            return _decode_b64(val)
        raise _type_error(val, dtype)
    if kind == "string":
        if not isinstance(val, str):
            raise _type_error(val, dtype)
        return val.encode("utf-8", "surrogatepass")
    if kind == "bool":
        if not isinstance(val, bool):
            raise _type_error(val, dtype)
        return val
    if isinstance(val, bool) or not isinstance(val, (int, float)):
        raise _type_error(val, dtype)
    if kind in ("float", "double"):
        return _check_decimal(val, kind)
    return _check_integer(val, dtype, kind)


def _check_decimal(val: int | float, kind: str) -> float:
    """rapidjson's IsLosslessDecimal: integers up to 2**digits - 1, decimals within the type's range."""
    digits, largest = (24, _FLOAT32_MAX) if kind == "float" else (53, _FLOAT64_MAX)
    if isinstance(val, int) and _INT64[0] <= val <= _UINT64[1]:
        if abs(val) > (1 << digits) - 1:
            raise _lossy_error(val, kind)
        return float(val)
    as_float = float(val) if not isinstance(val, int) else _int_as_double(val)
    if math.isfinite(as_float) and abs(as_float) > largest:
        raise _lossy_error(val, kind)
    return as_float


def _int_as_double(val: int) -> float:
    try:
        return float(val)
    except OverflowError:
        return math.inf if val > 0 else -math.inf


def _check_integer(val: int | float, dtype: str, kind: str) -> int:
    if not isinstance(val, int):
        raise _type_error(val, dtype)
    low, high = {"int": _INT32, "int64": _INT64, "uint32": _UINT32, "uint64": _UINT64}[kind]
    if not low <= val <= high:
        raise _type_error(val, dtype)
    return val


def _dense_shape(val: Any) -> list[int]:
    """The shape implied by following the first element of each nested list (TF's GetDenseTensorShape).

    Raises:
        ServingError: INVALID_ARGUMENT when lists nest deeper than a tensor has dimensions.
    """
    shape = []
    while isinstance(val, list):
        shape.append(len(val))
        if len(shape) > _MAX_RANK:
            raise _too_many_dimensions()
        if not val:
            break
        val = val[0]
    return shape


def _too_many_dimensions() -> ServingError:
    return invalid_argument(f"JSON Value: lists nested more than {_MAX_RANK} deep; a tensor has at most "
                            f"{_MAX_RANK} dimensions here")


def _check_size(name: str, count: int, max_elements: int | None) -> None:
    if max_elements is not None and count > max_elements:
        raise invalid_argument(f"Input tensor {name} has more than {max_elements} elements, the most this server "
                               "takes (--max_tensor_elements)")


_DONE = object()


def _fill(val: Any, shape: list[int], dtype: str, out: list) -> None:
    """Append the leaves of ``val`` to ``out`` checking that it is dense with ``shape`` (TF's FillTensorProto).

    Iterative (a stack of iterators, depth first like TF's recursion), so any nesting is safe.
    """
    rank = len(shape)
    stack: list[tuple[Iterator[Any], int]] = [(iter([val]), 0)]
    while stack:
        items, level = stack[-1]
        item = next(items, _DONE)
        if item is _DONE:
            stack.pop()
            continue
        if not isinstance(item, list):
            if level != rank:
                raise invalid_argument(f"JSON Value: {json_value_string(item)} found at incorrect level: "
                                       f"{level + 1} in the JSON DOM. Expected at level: {rank}")
            out.append(_check_leaf(item, dtype))
            continue
        if level >= rank:
            raise invalid_argument(f"Encountered list at unexpected level: {level} expected < {rank}")
        if len(item) != shape[level]:
            raise invalid_argument(f"Encountered list at unexpected size: {len(item)} at level: {level} "
                                   f"expected size: {shape[level]}")
        stack.append((iter(item), level + 1))


def _flatten(val: Any, shape: list[int], dtype: str) -> list | np.ndarray:
    """The leaves of ``val`` checked against ``shape`` and ``dtype``: a fast breadth-first pass for the common
    well-formed case, else the element-by-element walk that produces TF Serving's exact error."""
    flat = _fast_flatten(val, shape, dtype)
    if flat is None:
        flat = []
        _fill(val, shape, dtype, flat)
    return flat


def _fast_flatten(val: Any, shape: list[int], dtype: str) -> list | np.ndarray | None:
    level = [val]
    for size in shape:
        nested: list = []
        for item in level:
            if type(item) is not list or len(item) != size:
                return None
            nested.extend(item)
        level = nested
    return _fast_leaves(level, dtype)


def _slices(values: list) -> Iterator[list]:
    """``values`` a slice at a time: each C-level pass over a large list stays short (the GIL is let go between)."""
    if len(values) <= _SLICE:
        yield values
        return
    for start in range(0, len(values), _SLICE):
        yield values[start:start + _SLICE]


def _fast_leaves(leaves: list, dtype: str) -> list | np.ndarray | None:
    """``leaves`` converted if all are of the one plain JSON type ``dtype`` takes in range; None to go slow."""
    if not leaves:
        return None
    kinds: set[type] = set()
    for part in _slices(leaves):
        kinds.update(map(type, part))
    if dtype in ("DT_FLOAT", "DT_DOUBLE") and kinds <= {int, float}:
        return _fast_decimals(leaves, dtype, int in kinds)
    if len(kinds) != 1:
        return None
    kind = kinds.pop()
    if kind is int and dtype in _INT_RANGES:
        low, high = _INT_RANGES[dtype]
        in_range = all(low <= min(part) and max(part) <= high for part in _slices(leaves))
        return leaves if in_range else None
    if kind is bool and dtype == "DT_BOOL":
        return leaves
    if kind is str and dtype == "DT_STRING":
        return [v.encode("utf-8", "surrogatepass") for v in leaves]
    return None


def _fast_decimals(leaves: list, dtype: str, has_ints: bool) -> np.ndarray | None:
    """JSON numbers for a float dtype as an array of that dtype, or None when one may be out of range or an
    inexact integer (clients write ``0.0`` as ``0``, so integers mixed with decimals are the common case, not an
    error). Converted a slice at a time, straight into the final dtype (no full float64 copy)."""
    largest = _FLOAT32_MAX if dtype == "DT_FLOAT" else _FLOAT64_MAX
    if has_ints:  # an integer must fit the mantissa (rapidjson's IsLosslessFloat/Double)
        largest = float((1 << (24 if dtype == "DT_FLOAT" else 53)) - 1)
    values = np.empty(len(leaves), dtype=_DTYPES[dtype][0])
    start = 0
    try:
        for part in _slices(leaves):
            wide = np.asarray(part, dtype=np.float64)
            if not float(np.abs(wide).max()) <= largest:  # NaN compares False: slow path
                return None
            values[start:start + len(part)] = wide
            start += len(part)
    except OverflowError:
        return None
    return values


_INT_RANGES = {"DT_INT32": _INT32, "DT_INT16": _INT32, "DT_INT8": _INT32, "DT_UINT8": _INT32, "DT_INT64": _INT64,
               "DT_UINT32": _UINT32, "DT_UINT64": _UINT64}


def _to_array(chunks: list[list | np.ndarray], shape: list[int], dtype: str) -> np.ndarray:
    """One array of ``shape`` from the leaves of each element (lists, or float64 arrays from the fast path)."""
    np_dtype = _DTYPES[dtype][0] if dtype in _DTYPES else object
    if np_dtype is object:
        flat = [leaf for chunk in chunks for leaf in chunk]
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
        return array.reshape(shape)
    if len(chunks) == 1 and isinstance(chunks[0], np.ndarray) and chunks[0].dtype == np_dtype:
        return chunks[0].reshape(shape)  # converted already (the fast path): no copy
    # TF stores int8/int16/uint8 in int_val (int32) and narrows; keep that wrap-around.
    wide = np.int64 if np_dtype in (np.int8, np.int16, np.uint8) else np_dtype
    array = np.empty(sum(len(chunk) for chunk in chunks), dtype=wide)
    start = 0
    for chunk in chunks:
        parts = [chunk] if isinstance(chunk, np.ndarray) else _slices(chunk)
        for part in parts:
            array[start:start + len(part)] = part
            start += len(part)
    return array.astype(np_dtype, copy=False).reshape(shape)


def value_to_array(val: Any, dtype: str, max_elements: int | None = None,
                   name: str = "") -> tuple[np.ndarray, list[int], int]:
    """One JSON value (scalar or nested lists) as an array of ``dtype``; also its shape and element count."""
    shape = _dense_shape(val)
    _check_size(name, math.prod(shape), max_elements)
    flat = _flatten(val, shape, dtype)
    return _to_array([flat], shape, dtype), shape, len(flat)


def _shape_string(shape: list[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def parse_predict_request(doc: dict, input_dtypes: dict[str, str],
                          max_elements: int | None = None) -> tuple[dict[str, np.ndarray], str]:
    """Tensors of a predict request already parsed by :func:`parse_json`.

    Args:
        doc: the request object.
        input_dtypes: the signature's inputs, name -> ``DT_*`` dtype name.
        max_elements: refuse an input tensor with more elements than this (None: no limit).

    Returns:
        The input arrays by name, and the request format (:data:`ROW` or :data:`COLUMNAR`).

    Raises:
        ServingError: INVALID_ARGUMENT with TF Serving's message.
    """
    if not input_dtypes:
        raise invalid_argument("Failed to get input map for signature: " + (doc.get("signature_name") or "DEFAULT"))
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise _format_error(doc, "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist ")
    if has_instances:
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise _format_error(doc, "Excepting 'instances' to be an list/array")
        if not instances:
            raise _format_error(doc, "No values in 'instances' array")
        return _instances_to_arrays(instances, input_dtypes, max_elements), ROW
    if has_inputs:
        return _inputs_to_arrays(doc["inputs"], input_dtypes, max_elements), COLUMNAR
    raise invalid_argument("Missing 'inputs' or 'instances' key")


class _Batch:
    """Per-input leaves of the ``instances`` list, checked to share one shape."""

    def __init__(self, input_dtypes: dict[str, str], max_elements: int | None = None):
        self.input_dtypes = input_dtypes
        self.max_elements = max_elements
        self.chunks: dict[str, list[list | np.ndarray]] = {}
        self.shapes: dict[str, list[int]] = {}
        self.sizes: dict[str, int] = {}

    def add(self, name: str, item: Any) -> None:
        if name not in self.input_dtypes:
            raise invalid_argument(f"JSON object: does not have named input: {name}")
        shape = _dense_shape(item)
        rows = len(self.chunks.get(name, ())) + 1
        _check_size(name, rows * math.prod(shape), self.max_elements)
        flat = _flatten(item, shape, self.input_dtypes[name])
        if name not in self.sizes:
            self.sizes[name], self.shapes[name], self.chunks[name] = len(flat), shape, [flat]
            return
        if self.sizes[name] != len(flat):
            raise invalid_argument(f"Expecting tensor size: {self.sizes[name]} but got: {len(flat)}")
        if self.shapes[name] != shape:
            raise invalid_argument(f"Expecting shape {_shape_string(self.shapes[name])} but got: "
                                   f"{_shape_string(shape)}")
        self.chunks[name].append(flat)

    def arrays(self, count: int) -> dict[str, np.ndarray]:
        if any(len(shape) >= _MAX_RANK for shape in self.shapes.values()):
            raise _too_many_dimensions()  # with the batch dimension, one too many
        return {name: _to_array(chunks, [count, *self.shapes[name]], self.input_dtypes[name])
                for name, chunks in self.chunks.items()}


def _is_named_object(val: Any) -> bool:
    return isinstance(val, dict) and not _is_b64(val)


def _instances_to_arrays(instances: list, input_dtypes: dict[str, str],
                         max_elements: int | None) -> dict[str, np.ndarray]:
    if not isinstance(instances[0], dict) and len(input_dtypes) > 1:
        raise invalid_argument("instances is a plain list, but expecting list of objects as multiple input "
                               "tensors required as per tensorinfo_map")
    objects = _is_named_object(instances[0])
    names = sorted(input_dtypes)
    if not objects:
        whole = _whole_batch(instances, names[0], input_dtypes[names[0]], max_elements)
        if whole is not None:
            return {names[0]: whole}
    batch = _Batch(input_dtypes, max_elements)
    for index, element in enumerate(instances):
        if objects:
            _add_object_element(batch, index, element, names)
        else:
            if _is_named_object(element):
                raise invalid_argument(f"Expecting value/list but got object at item {index} of input list")
            try:
                batch.add(names[0], element)
            except ServingError as exc:
                raise invalid_argument(f"Failed to process element: {index} of 'instances' list. "
                                       f"Error: {exc}") from None
    return batch.arrays(len(instances))


def _whole_batch(instances: list, name: str, dtype: str, max_elements: int | None) -> np.ndarray | None:
    """A well-formed plain ``instances`` list converted in one pass, as one tensor (no per-row objects: a large
    batch costs its values, not a Python object per row); None when some row is off, to go row by row and name
    it in TF Serving's error."""
    shape = _dense_shape(instances)
    _check_size(name, math.prod(shape), max_elements)
    flat = _fast_flatten(instances, shape, dtype)
    return None if flat is None else _to_array([flat], shape, dtype)


def _add_object_element(batch: _Batch, index: int, element: Any, names: list[str]) -> None:
    if not _is_named_object(element):
        raise invalid_argument(f"Expecting object but got list at item {index} of input list")
    for name, item in element.items():
        try:
            batch.add(name, item)
        except ServingError as exc:
            raise invalid_argument(f"Failed to process element: {index} key: {name} of 'instances' list. "
                                   f"Error: {exc}") from None
    if set(element) != set(names):
        raise invalid_argument(f"Failed to process element: {index} of 'instances' list. JSON object: "
                               f"{json_value_string(element)} keys must be equal to: {','.join(names)}")


def _inputs_to_arrays(val: Any, input_dtypes: dict[str, str], max_elements: int | None) -> dict[str, np.ndarray]:
    if not isinstance(val, dict) or _is_b64(val):
        if len(input_dtypes) > 1:
            raise invalid_argument("inputs is a plain value/list, but expecting an object as multiple input "
                                   "tensors required as per tensorinfo_map")
        name = next(iter(input_dtypes))
        return {name: value_to_array(val, input_dtypes[name], max_elements, name)[0]}
    arrays = {}
    for name in sorted(input_dtypes):
        if name not in val:
            raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
        arrays[name] = value_to_array(val[name], input_dtypes[name], max_elements, name)[0]
    return arrays


# ---------------------------------------------------------------- writing


def format_float(value: float) -> str:
    """A float32 as TF Serving writes it (``%g`` if it round-trips, else 9 digits; ``.0`` on whole numbers)."""
    return _format_decimal(value, np.float32, 9)


def format_double(value: float) -> str:
    """A float64 as TF Serving writes it (``%g`` if it round-trips, else 17 digits)."""
    return _format_decimal(value, float, 17)


def _format_decimal(value: float, caster: Callable[[Any], Any], max_digits: int) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "-Infinity" if value < 0 else "Infinity"
    text = "%g" % value
    if caster(text) != caster(value):
        text = "%.*g" % (max_digits, value)
    if "." not in text and "e" not in text:
        text += ".0"
    return text


def _float_tokens(array: np.ndarray, max_digits: int) -> list[str]:
    flat = array.ravel()
    tokens: list[str] = []
    for start in range(0, len(flat), _SLICE):  # a slice at a time: no long C call on a large output
        part = flat[start:start + _SLICE]
        values = part.tolist()
        chunk = ["%g" % v for v in values]
        exact = np.asarray(chunk, dtype=array.dtype) == part
        for index in np.flatnonzero(~exact).tolist():
            chunk[index] = "%.*g" % (max_digits, values[index])
        tokens.extend(chunk)
    for index, token in enumerate(tokens):
        if "." not in token and "e" not in token:
            tokens[index] = _special_or_whole(token)
    return tokens


def _special_or_whole(token: str) -> str:
    special = {"nan": "NaN", "-nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}
    return special.get(token, token + ".0")


def _string_tokens(array: np.ndarray, as_b64: bool) -> list[str]:
    tokens = []
    for value in array.ravel().tolist():
        raw = value if isinstance(value, bytes) else str(value).encode()
        if as_b64:
            tokens.append('{"b64": "%s"}' % base64.b64encode(raw).decode("ascii"))
        else:
            tokens.append(json.dumps(raw.decode("utf-8", "replace"), ensure_ascii=False))
    return tokens


def tensor_tokens(name: str, array: np.ndarray) -> list[str]:
    """The JSON text of each element of ``array`` (row-major)."""
    kind = array.dtype.kind
    if kind == "f":
        return _float_tokens(array, 9 if array.dtype.itemsize <= 4 else 17)
    if kind == "b":
        return ["true" if v else "false" for v in array.ravel().tolist()]
    if kind in "iu":
        return [str(v) for v in array.ravel().tolist()]
    if kind in "OSU":
        return _string_tokens(array, name.endswith(_BYTES_SUFFIX))
    raise invalid_argument(f"Failed to write JSON value for tensor type: {array.dtype}")


def _nest(tokens: list[str], shape: tuple[int, ...], start: int = 0) -> str:
    """Nested JSON lists of ``tokens[start:]`` laid out in ``shape``."""
    if not shape:
        return tokens[start]
    if len(shape) == 1:
        return "[" + ", ".join(tokens[start:start + shape[0]]) + "]"
    step = int(np.prod(shape[1:]))
    return "[" + ", ".join(_nest(tokens, shape[1:], start + i * step) for i in range(shape[0])) + "]"


def _tensor_text(name: str, array: np.ndarray) -> str:
    """The JSON text of a tensor (nested lists), built a slice at a time: it costs about its text in memory, not
    a Python string per element."""
    if array.ndim == 0:
        return tensor_tokens(name, array)[0]
    if array.ndim == 1 and array.size > _SLICE:
        parts = (", ".join(tensor_tokens(name, array[start:start + _SLICE]))
                 for start in range(0, array.size, _SLICE))
        return "[" + ", ".join(parts) + "]"
    return "[" + ", ".join(_tensor_items(name, array)) + "]"


def _tensor_items(name: str, array: np.ndarray) -> list[str]:
    """The JSON text of each ``array[i]`` along the first dimension, built a slice of rows at a time."""
    shape = array.shape
    if array.ndim == 1:
        return tensor_tokens(name, array)
    if 0 in shape[1:]:
        return [_nest([], shape[1:])] * shape[0]
    inner = shape[-1]
    flat = array.reshape(-1)
    rows_per_slice = max(1, _SLICE // inner)
    texts: list[str] = []
    for start in range(0, flat.size // inner, rows_per_slice):
        tokens = tensor_tokens(name, flat[start * inner:(start + rows_per_slice) * inner])
        texts.extend("[" + ", ".join(tokens[i:i + inner]) + "]" for i in range(0, len(tokens), inner))
    for size in reversed(shape[1:-1]):  # rows -> the items of each dimension above, up to the first
        texts = ["[" + ", ".join(texts[i:i + size]) + "]" for i in range(0, len(texts), size)]
    return texts


def format_predict_response(outputs: dict[str, np.ndarray], fmt: str) -> str:
    """``{"predictions": ...}`` (rows) or ``{"outputs": ...}`` (columns) as TF Serving writes them.

    One output is written bare, several as objects keyed by output name.
    """
    if not outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    if fmt == COLUMNAR:
        if len(names) == 1:
            body = _tensor_text(names[0], outputs[names[0]])
        else:
            body = "{" + ", ".join(f"{json.dumps(n)}: {_tensor_text(n, outputs[n])}" for n in names) + "}"
        return '{"outputs": ' + body + "}"
    return '{"predictions": ' + _rows(outputs, names) + "}"


def _rows(outputs: dict[str, np.ndarray], names: list[str]) -> str:
    batch = -1
    for name in names:
        shape = outputs[name].shape
        if not shape:
            raise invalid_argument(f"Tensor name: {name} has no shape information ")
        if batch >= 0 and shape[0] != batch:
            raise invalid_argument(f"Tensor name: {name} has inconsistent batch size: {shape[0]} "
                                   f"expecting: {batch}")
        batch = shape[0]
    if len(names) == 1:  # each row is the output's item: the whole tensor's text
        return _tensor_text(names[0], outputs[names[0]])
    items = {name: _tensor_items(name, outputs[name]) for name in names}
    rows = ("{" + ", ".join(f"{json.dumps(name)}: {items[name][row]}" for name in names) + "}"
            for row in range(batch))
    return "[" + ", ".join(rows) + "]"


def format_classify_response(result: Any) -> str:
    """``{"results": [[[label, score], ...], ...]}`` from a ``ClassificationResult``."""
    if not result.classifications:
        raise invalid_argument("Cannot convert empty ClassificationResults to JSON")
    rows = []
    for classifications in result.classifications:
        pairs = [f"[{json.dumps(c.label, ensure_ascii=False)}, {format_float(c.score)}]"
                 for c in classifications.classes]
        rows.append("[" + ", ".join(pairs) + "]")
    return '{"results": [' + ", ".join(rows) + "]}"


def format_regress_response(result: Any) -> str:
    """``{"results": [value, ...]}`` from a ``RegressionResult``."""
    if not result.regressions:
        raise invalid_argument("Cannot convert empty RegressionResults to JSON")
    return '{"results": [' + ", ".join(format_float(r.value) for r in result.regressions) + "]}"


def error_body(message: str) -> str:
    """TF Serving's error object."""
    return json.dumps({"error": message}, ensure_ascii=False)


# ---------------------------------------------------------------- classify / regress requests


def parse_examples_request(doc: dict) -> Any:
    """The ``tensorflow.serving.Input`` of a classify/regress request (``examples`` and optional ``context``)."""
    from tensorflow_serving.apis import input_pb2

    request_input = input_pb2.Input()
    has_context = "context" in doc
    if has_context:
        _fill_example(doc["context"], request_input.example_list_with_context.context)
    if "examples" not in doc:
        raise _format_error(doc, "When method is classify, key 'examples' is expected and was not found")
    examples = doc["examples"]
    if not isinstance(examples, list):
        raise _format_error(doc, "Expecting 'examples' value to be an list/array")
    if not examples:
        raise _format_error(doc, "'examples' value is an empty array")
    for example in examples:
        target = (request_input.example_list_with_context.examples if has_context
                  else request_input.example_list.examples)
        _fill_example(example, target.add())
    return request_input


def _fill_example(val: Any, example: Any) -> None:
    if not isinstance(val, dict):
        raise invalid_argument(f"Example must be JSON object but got JSON {json_type_string(val)}")
    for name, content in val.items():
        feature = example.features.feature[name]
        for item in content if isinstance(content, list) else [content]:
            _add_feature_value(item, name, feature)


def _feature_kind_error(name: str, feature: Any) -> ServingError:
    kind = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64"}.get(
        feature.WhichOneof("kind"), "UNKNOWN")
    return invalid_argument(f"Unexpected element type in feature: {name} expecting type: {kind}")


def _add_feature_value(val: Any, name: str, feature: Any) -> None:
    """TF Serving's AddValueToFeature: bools and integers -> int64, decimals -> float, strings/b64 -> bytes."""
    if val is None or isinstance(val, list) or (isinstance(val, dict) and not _is_b64(val)):
        raise invalid_argument(f"Feature: {name} has element with unexpected JSON type: {json_type_string(val)}")
    kind = ("bytes_list" if isinstance(val, (str, dict)) else
            "float_list" if isinstance(val, float) else "int64_list")
    if feature.WhichOneof("kind") not in (None, kind):
        raise _feature_kind_error(name, feature)
    if kind == "bytes_list":
        raw = _decode_b64(val) if isinstance(val, dict) else val.encode("utf-8", "surrogatepass")
        feature.bytes_list.value.append(raw)
    elif kind == "float_list":
        feature.float_list.value.append(_check_decimal(val, "float"))
    else:
        if not isinstance(val, bool) and val > _INT64[1]:
            raise invalid_argument(f"Feature: {name} has uint64 element. Only int64 is supported.")
        if not isinstance(val, bool) and val < _INT64[0]:
            raise _lossy_error(val, "int64")
        feature.int64_list.value.append(int(val))
