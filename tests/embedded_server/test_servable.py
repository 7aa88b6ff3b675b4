"""The servable call path: a signature is called with its flat inputs where that is provably the structured call."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.embedded_server.servable import Servable, Signature
from pipeline.wire.status import ServingError


class _Refuses:
    """Stands in for a signature's ConcreteFunction: a structured call fails the test."""

    def __call__(self, **feeds: Any) -> Any:
        raise AssertionError("the structured call was made")


def _structured(signature: Signature) -> Signature:
    return replace(signature, flat=None)


def _multi_io_inputs(rows: int = 2, width: int = 2) -> dict[str, np.ndarray]:
    return {"x": np.arange(rows * width, dtype=np.float32).reshape(rows, width),
            "n": np.arange(1, rows + 1, dtype=np.int64),
            "s": np.array([b"ab", b"cde"][:rows] + [b"f"] * max(0, rows - 2), dtype=object)}


def test_several_inputs_go_flat_in_the_structured_calls_order(multi_io_dir: Path) -> None:
    signature = Servable.load("m", 1, multi_io_dir).signatures["serving_default"]
    assert signature.flat is not None
    assert signature.flat.order == ("n", "s", "x")

    inputs = _multi_io_inputs()
    flat = replace(signature, function=_Refuses()).run(inputs)
    structured = _structured(signature).run(inputs)

    assert sorted(flat) == sorted(structured) == ["echo_bytes", "length", "positive", "sum"]
    for alias in structured:
        np.testing.assert_array_equal(flat[alias], structured[alias])
    assert flat["sum"].tolist() == [1.0, 10.0]  # (0+1)*1, (2+3)*2: x and n were not swapped


def test_a_signature_of_unknown_rank_goes_flat(half_plus_two_dir: Path) -> None:
    signature = Servable.load("m", 1, half_plus_two_dir).signatures["serving_default"]
    assert signature.flat is not None
    result = replace(signature, function=_Refuses()).run({"x": np.array([[1.0], [3.0]], dtype=np.float32)})
    assert result["y"].tolist() == [[2.5], [3.5]]


def _outcome(signature: Signature, inputs: dict[str, np.ndarray]) -> Any:
    try:
        return {alias: value.tolist() for alias, value in signature.run(inputs).items()}
    except ServingError as exc:
        return exc.code, exc.message


@pytest.mark.parametrize("inputs", [_multi_io_inputs(width=3), {**_multi_io_inputs(), "n": np.array(1)}],
                         ids=["x-wider-than-declared", "n-of-rank-0"])
def test_a_shape_the_signature_does_not_declare_takes_the_structured_call(multi_io_dir: Path,
                                                                          inputs: dict[str, np.ndarray]) -> None:
    signature = Servable.load("m", 1, multi_io_dir).signatures["serving_default"]
    with pytest.raises(ServingError, match="structured call was made"):  # the error the server makes of it
        replace(signature, function=_Refuses()).run(inputs)
    assert _outcome(signature, inputs) == _outcome(_structured(signature), inputs)  # its answer or error, unchanged


def test_a_function_without_a_flat_entry_is_called_structured() -> None:
    from pipeline.embedded_server.servable import FlatCall

    class Structured:  # no _call_flat: what a future TensorFlow might give
        structured_input_signature = ((), {})
        inputs: list[Any] = []
        captured_inputs: list[Any] = []
        structured_outputs: dict[str, Any] = {}

    assert FlatCall.of(Structured(), {"x": None}) is None
