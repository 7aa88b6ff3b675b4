"""TensorFlow dtype names as TF Serving's APIs spell them: ``DT_*`` (metadata), numpy's name, TF's DataTypeString."""

from __future__ import annotations

# DT_* name -> (numpy dtype name, TF's DataTypeString as TF Serving prints it in errors).
DTYPES: dict[str, tuple[str, str]] = {
    "DT_FLOAT": ("float32", "float"), "DT_DOUBLE": ("float64", "double"), "DT_HALF": ("float16", "half"),
    "DT_BFLOAT16": ("bfloat16", "bfloat16"),
    "DT_INT8": ("int8", "int8"), "DT_INT16": ("int16", "int16"), "DT_INT32": ("int32", "int32"),
    "DT_INT64": ("int64", "int64"),
    "DT_UINT8": ("uint8", "uint8"), "DT_UINT16": ("uint16", "uint16"), "DT_UINT32": ("uint32", "uint32"),
    "DT_UINT64": ("uint64", "uint64"),
    "DT_BOOL": ("bool", "bool"), "DT_STRING": ("string", "string"),
    "DT_COMPLEX64": ("complex64", "complex64"), "DT_COMPLEX128": ("complex128", "complex128"),
}  # fmt: skip


def numpy_name(tf_name: str) -> str:
    """``DT_FLOAT`` -> ``float32``; a name that is no ``DT_*`` name comes back unchanged."""
    entry = DTYPES.get(tf_name)
    return entry[0] if entry else tf_name


def data_type_string(tf_name: str) -> str:
    """TF's DataTypeString of a ``DT_*`` name (``DT_FLOAT`` -> ``float``)."""
    entry = DTYPES.get(tf_name)
    return entry[1] if entry else tf_name.removeprefix("DT_").lower()
