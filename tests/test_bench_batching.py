"""bench/batching.py's pure parts: the call order at concurrency 1, and what the summary judges."""

from __future__ import annotations

from collections import Counter
from typing import Any

from tests.benches import load_bench

_WAYS = ["in_process", "servable", "servable_batched", "rest", "grpc", "rest_batched", "grpc_batched"]


def _bench() -> Any:
    return load_bench("batching")


def test_each_cycle_calls_every_way_once_in_a_repeatable_order() -> None:
    bench = _bench()
    for cycle in range(20):
        order = bench.shuffled(_WAYS, cycle)
        assert sorted(order) == sorted(_WAYS)
        assert order == bench.shuffled(_WAYS, cycle)
    assert len({tuple(bench.shuffled(_WAYS, cycle)) for cycle in range(20)}) > 10


def test_over_many_cycles_no_way_keeps_the_same_predecessor() -> None:
    """A fixed (or rotated) order gives rest_batched the plain grpc call before it in almost every cycle."""
    bench = _bench()
    stream = [way for cycle in range(700) for way in bench.shuffled(_WAYS, cycle)]
    before = Counter(previous for previous, way in zip(stream, stream[1:], strict=False) if way == "rest_batched")
    others = [before[way] for way in _WAYS if way != "rest_batched"]  # itself: only across a cycle's end
    assert min(others) > 0 and max(others) < 2 * min(others)


def _row(way: str, concurrency: int, rps: float, p50: float = 1.0, **extra: Any) -> dict[str, Any]:
    return {"way": way, "concurrency": concurrency, "throughput_rps": rps, "p50_ms": p50, **extra}


def _rows(with_tools: bool) -> list[dict[str, Any]]:
    rows = [_row("in_process", 8, 1000.0), _row("in_process", 1, 500.0),
            _row("servable", 1, 400.0, 1.0), _row("servable_batched", 1, 400.0, 1.25, paired_delta_p50_ms=0.2)]
    for protocol, rps in (("rest", 500.0), ("grpc", 300.0)):
        rows += [_row(protocol, 8, rps), _row(f"{protocol}_batched", 8, rps + 100),
                 _row(protocol, 1, 100.0, 2.0), _row(f"{protocol}_batched", 1, 100.0, 1.5, paired_delta_p50_ms=-0.4)]
        if with_tools:
            tool = "_wrk" if protocol == "rest" else "_h2load"
            rows += [_row(f"{protocol}{tool}", 8, rps + 200), _row(f"{protocol}_batched{tool}", 8, rps + 300)]
    return rows


def test_the_summary_judges_the_external_tools_rows_when_there_are_some() -> None:
    summary = _bench().summarize(_rows(with_tools=True))
    assert summary["rest_c8_ratio"] == {"value": 0.8, "client": "wrk", "without_batching": 0.7,
                                             "python_client": 0.6, "python_client_without_batching": 0.5,
                                             "target": 0.6, "met": True}
    assert summary["grpc_c8_ratio"]["value"] == 0.6 and summary["grpc_c8_ratio"]["met"] is True
    assert summary["grpc_c8_ratio"]["client"] == "h2load"


def test_without_the_tools_the_python_rows_are_judged() -> None:
    summary = _bench().summarize(_rows(with_tools=False))
    assert summary["grpc_c8_ratio"]["client"] == "python"
    assert summary["grpc_c8_ratio"]["value"] == 0.4 and summary["grpc_c8_ratio"]["met"] is False


def test_the_summary_reports_what_batching_does_to_the_p50_at_concurrency_1() -> None:
    summary = _bench().summarize(_rows(with_tools=False))
    assert summary["rest_c1_p50_delta_ms"]["value"] == -0.5
    assert summary["rest_c1_p50_delta_ms"]["paired_median_ms"] == -0.4
    assert summary["servable_c1_p50_delta_ms"] == {"value": 0.25, "paired_median_ms": 0.2}
