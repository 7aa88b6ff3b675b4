"""TF Serving's request batching (``--enable_batching``, ``--batching_parameters_file``).

Scheduler semantics run on a numpy "model" (no TensorFlow, fast): a run function that records every call's inputs
and can hold the only slot busy, so that requests queue deterministically. The server tests run a tiny SavedModel
(half_plus_two: ``y = 0.5 x + 2``) over gRPC and REST.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.embedded_server import ModelServer, ServerOptions, parse_flags
from pipeline.embedded_server.batching import (
    BatchingOptions,
    BatchQueue,
    BatchScheduler,
    batching_options,
    fixes_batch_dimension,
    read_batching_parameters,
)
from pipeline.util.polling import poll_until
from pipeline.wire.status import ServingError

_WAIT_S = 60.0  # generous: 2 shared cores


class Model:
    """``y = 10 x + 1`` row by row, ``n`` = how many rows the call had; records calls, can hold the slot busy."""

    def __init__(self) -> None:
        self.calls: list[dict[str, np.ndarray]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.fail: ServingError | None = None

    def hold(self) -> None:
        """The next call blocks (keeping its slot) until :meth:`let_go`."""
        self.entered.clear()
        self.release.clear()

    def let_go(self) -> None:
        self.release.set()

    def __call__(self, arrays: dict[str, Any]) -> dict[str, np.ndarray]:
        self.calls.append({alias: np.array(value, copy=True) for alias, value in arrays.items()})
        self.entered.set()
        assert self.release.wait(_WAIT_S)
        if self.fail is not None and len(self.calls) > 1:
            raise self.fail
        x = np.asarray(arrays["x"])
        return {"y": x * 10 + 1, "n": np.full(x.shape[:1], x.shape[0] if x.ndim else 0)}


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(16) as executor:
        yield executor


@pytest.fixture
def schedulers() -> Iterator[Callable[..., BatchScheduler]]:
    made: list[BatchScheduler] = []

    def make(**options: Any) -> BatchScheduler:
        options.setdefault("num_batch_threads", 1)
        scheduler = BatchScheduler(BatchingOptions(**options))
        made.append(scheduler)
        return scheduler

    yield make
    for scheduler in made:
        scheduler.stop()


def rows(*values: float) -> dict[str, np.ndarray]:
    return {"x": np.array(values, dtype=np.float32)}


def occupy(queue: BatchQueue, model: Model, pool: ThreadPoolExecutor) -> Future:
    """Start a request that holds the only slot (it runs in its caller's thread) until ``model.let_go()``."""
    model.hold()
    future = pool.submit(queue.submit, rows(-1.0))
    assert model.entered.wait(_WAIT_S), "the first request never reached the model"
    return future


def queue_up(queue: BatchQueue, pool: ThreadPoolExecutor, requests: list[dict[str, np.ndarray]]) -> list[Future]:
    """Submit ``requests`` from threads and wait until all of them wait in ``queue``."""
    expected = queue.waiting() + len(requests)
    futures = [pool.submit(queue.submit, request) for request in requests]

    def queued() -> tuple[bool | None, str]:
        return (True if queue.waiting() >= expected else None), f"{queue.waiting()} of {expected} queued"

    poll_until(queued, _WAIT_S, "requests to queue up")
    return futures


# ------------------------------------------------------------------ batches


def test_requests_queued_behind_a_busy_slot_run_as_one_batch(schedulers: Any, pool: ThreadPoolExecutor) -> None:
    model = Model()
    queue = schedulers().queue(model)
    first = occupy(queue, model, pool)
    requests = [rows(float(i)) for i in range(5)]
    futures = queue_up(queue, pool, requests)
    model.let_go()

    assert first.result(_WAIT_S)["y"].tolist() == [-9.0]
    results = [future.result(_WAIT_S) for future in futures]
    assert [len(call["x"]) for call in model.calls] == [1, 5]  # five requests, one model call
    assert sorted(model.calls[1]["x"].tolist()) == [0.0, 1.0, 2.0, 3.0, 4.0]
    for i, result in enumerate(results):  # each caller gets its own row back
        assert result["y"].tolist() == [i * 10 + 1.0]
        assert result["n"].tolist() == [5]


def test_requests_of_several_rows_get_their_own_rows_back(schedulers: Any, pool: ThreadPoolExecutor) -> None:
    model = Model()
    queue = schedulers(max_batch_size=16).queue(model)
    first = occupy(queue, model, pool)
    requests = [rows(*[100.0 * i + j for j in range(i + 1)]) for i in range(4)]  # 1, 2, 3 and 4 rows
    futures = queue_up(queue, pool, requests)
    model.let_go()
    first.result(_WAIT_S)

    for request, future in zip(requests, futures, strict=True):
        np.testing.assert_array_equal(future.result(_WAIT_S)["y"], request["x"] * 10 + 1)
    assert [len(call["x"]) for call in model.calls] == [1, 10]


def test_a_lone_request_runs_at_once_in_its_own_thread(schedulers: Any) -> None:
    model = Model()
    queue = schedulers().queue(model)
    assert queue.submit(rows(1.0, 2.0))["y"].tolist() == [11.0, 21.0]
    assert len(model.calls) == 1


def test_a_lone_request_is_run_as_submitted_with_no_task_or_hand_over(schedulers: Any,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.embedded_server import batching

    def no_task(*args: Any) -> None:
        raise AssertionError("a lone request was queued as a task")

    seen: list[dict[str, np.ndarray]] = []
    scheduler = schedulers()
    queue = scheduler.queue(lambda arrays: seen.append(arrays) or {"y": arrays["x"] + 1})
    monkeypatch.setattr(batching, "_Task", no_task)
    request = rows(1.0, 2.0)

    assert queue.submit(request)["y"].tolist() == [2.0, 3.0]
    assert seen[0] is request  # not copied, concatenated or split
    assert queue.submit(request)["y"].tolist() == [2.0, 3.0]  # the slot came back
    assert scheduler._free_slots == 1


def test_a_lone_requests_error_is_its_own_and_frees_the_slot(schedulers: Any, pool: ThreadPoolExecutor) -> None:
    def fails(arrays: dict[str, Any]) -> dict[str, np.ndarray]:
        raise ServingError("INVALID_ARGUMENT", "bad rows")

    scheduler = schedulers()
    with pytest.raises(ServingError, match="bad rows"):
        scheduler.queue(fails).submit(rows(1.0))
    model = Model()
    queue = scheduler.queue(model)
    first = occupy(queue, model, pool)  # the only slot is free again: a request can take and hold it
    futures = queue_up(queue, pool, [rows(1.0), rows(2.0)])
    model.let_go()
    assert [future.result(_WAIT_S)["y"].tolist() for future in [first, *futures]] == [[-9.0], [11.0], [21.0]]
    assert [len(call["x"]) for call in model.calls] == [1, 2]


def test_the_timeout_flushes_a_lone_request(schedulers: Any, pool: ThreadPoolExecutor) -> None:
    model = Model()
    queue = schedulers(batch_timeout_micros=200_000, max_batch_size=8).queue(model)
    result = pool.submit(queue.submit, rows(3.0)).result(_WAIT_S)  # nobody joins it: the timeout runs it
    assert result["y"].tolist() == [31.0]
    assert [len(call["x"]) for call in model.calls] == [1]


def learn(queue: BatchQueue, size: int) -> None:
    """Make ``size`` rows the queue's last batch: one request of that many rows (alone, it runs at once)."""
    queue.submit(rows(*[0.0] * size))


def test_a_full_batch_runs_without_waiting_for_the_timeout(schedulers: Any, pool: ThreadPoolExecutor) -> None:
    model = Model()
    queue = schedulers(batch_timeout_micros=3_600_000_000, max_batch_size=3).queue(model)  # an hour
    learn(queue, 3)
    futures = [pool.submit(queue.submit, rows(float(i))) for i in range(3)]
    assert [future.result(_WAIT_S)["y"].tolist() for future in futures] == [[1.0], [11.0], [21.0]]
    assert [len(call["x"]) for call in model.calls] == [3, 3]


def test_a_batch_as_large_as_the_last_one_runs_without_waiting_for_the_timeout(schedulers: Any,
                                                                                  pool: ThreadPoolExecutor) -> None:
    """A steady load of k clients: each batch runs once its k-th request joins, not after the timeout."""
    model = Model()
    queue = schedulers(batch_timeout_micros=3_600_000_000, max_batch_size=8).queue(model)  # an hour
    learn(queue, 2)
    first = pool.submit(queue.submit, rows(1.0))
    poll_until(lambda: (True if queue.waiting() else None, "not queued"), _WAIT_S, "the first request to wait")
    assert not first.done() and len(model.calls) == 1  # 1 row of the 2 expected: it waits for another
    second = pool.submit(queue.submit, rows(2.0))
    assert [first.result(_WAIT_S)["y"].tolist(), second.result(_WAIT_S)["y"].tolist()] == [[11.0], [21.0]]
    assert [len(call["x"]) for call in model.calls] == [2, 2]


def test_a_client_left_alone_waits_the_timeout_once(schedulers: Any, pool: ThreadPoolExecutor) -> None:
    model = Model()
    queue = schedulers(batch_timeout_micros=200_000, max_batch_size=8).queue(model)
    learn(queue, 3)
    assert pool.submit(queue.submit, rows(1.0)).result(_WAIT_S)["y"].tolist() == [11.0]  # after the timeout
    worker = threading.get_ident()
    model_threads: list[int] = []
    queue._run = lambda arrays: model_threads.append(threading.get_ident()) or model(arrays)  # type: ignore[method-assign]
    assert queue.submit(rows(2.0))["y"].tolist() == [21.0]  # its last batch was 1 row: at once, in its own thread
    assert model_threads == [worker]
    assert [len(call["x"]) for call in model.calls] == [3, 1, 1]


def test_allowed_batch_sizes_pad_with_the_last_requests_first_row(schedulers: Any, pool: ThreadPoolExecutor) -> None:
    model = Model()
    queue = schedulers(max_batch_size=8, allowed_batch_sizes=(1, 4, 8)).queue(model)
    first = occupy(queue, model, pool)
    futures = queue_up(queue, pool, [rows(1.0), rows(2.0)])
    futures += queue_up(queue, pool, [rows(3.0)])  # queued last: its first row pads
    model.let_go()
    first.result(_WAIT_S)

    assert [future.result(_WAIT_S)["y"].tolist() for future in futures] == [[11.0], [21.0], [31.0]]
    assert [len(call["x"]) for call in model.calls] == [1, 4]  # 3 rows padded up to 4
    assert model.calls[1]["x"][-1] == 3.0


def test_a_request_larger_than_max_batch_size_is_refused(schedulers: Any) -> None:
    model = Model()
    queue = schedulers(max_batch_size=4).queue(model)
    with pytest.raises(ServingError) as info:
        queue.submit(rows(1, 2, 3, 4, 5))
    assert info.value.code == "INVALID_ARGUMENT"
    assert info.value.message == "Task size 5 is larger than maximum input batch size 4"
    assert model.calls == []


def test_large_batch_splitting_cuts_a_request_into_execution_batches(schedulers: Any) -> None:
    model = Model()
    queue = schedulers(max_batch_size=8, enable_large_batch_splitting=True, max_execution_batch_size=2).queue(model)
    result = queue.submit(rows(1, 2, 3, 4, 5))
    assert result["y"].tolist() == [11.0, 21.0, 31.0, 41.0, 51.0]
    assert sorted(len(call["x"]) for call in model.calls) == [1, 2, 2]


def test_a_full_queue_answers_unavailable(schedulers: Any, pool: ThreadPoolExecutor) -> None:
    model = Model()
    queue = schedulers(max_batch_size=1, max_enqueued_batches=1).queue(model)
    first = occupy(queue, model, pool)
    queued = queue_up(queue, pool, [rows(1.0)])  # the one batch the queue may hold
    with pytest.raises(ServingError) as info:
        queue.submit(rows(2.0))
    assert info.value.code == "UNAVAILABLE"
    assert "batch scheduling queue to which this task was submitted is full" in info.value.message
    model.let_go()
    assert first.result(_WAIT_S)["y"].tolist() == [-9.0]
    assert queued[0].result(_WAIT_S)["y"].tolist() == [11.0]


def test_an_error_reaches_every_request_of_the_batch(schedulers: Any, pool: ThreadPoolExecutor) -> None:
    model = Model()
    model.fail = ServingError("INVALID_ARGUMENT", "the model refused the batch")
    queue = schedulers().queue(model)
    first = occupy(queue, model, pool)
    futures = queue_up(queue, pool, [rows(1.0), rows(2.0), rows(3.0)])
    model.let_go()
    assert first.result(_WAIT_S)["y"].tolist() == [-9.0]  # its own batch succeeded
    for future in futures:
        error = future.exception(_WAIT_S)
        assert isinstance(error, ServingError)
        assert (error.code, error.message) == ("INVALID_ARGUMENT", "the model refused the batch")
    assert [len(call["x"]) for call in model.calls] == [1, 3]


def test_an_output_without_the_batch_dimension_fails_the_batch(schedulers: Any, pool: ThreadPoolExecutor) -> None:
    def summed(arrays: dict[str, Any]) -> dict[str, np.ndarray]:
        model(arrays)
        return {"total": np.asarray(arrays["x"]).sum()}  # a scalar: rows cannot be told apart

    model = Model()
    queue = schedulers().queue(summed)
    first = occupy(queue, model, pool)
    futures = queue_up(queue, pool, [rows(1.0), rows(2.0)])
    model.let_go()
    assert first.result(_WAIT_S)["total"] == -1.0  # alone: nothing to split
    for future in futures:
        error = future.exception(_WAIT_S)
        assert isinstance(error, ServingError) and error.code == "FAILED_PRECONDITION"
        assert error.message == "Batched output tensor has 0 dimensions"


def test_inputs_without_a_common_batch_dimension_run_alone(schedulers: Any) -> None:
    model = Model()
    queue = schedulers().queue(model)
    assert queue.submit({"x": np.float32(2.0)})["y"] == 21.0  # a scalar
    assert queue.submit({"x": np.zeros((0,), np.float32)})["y"].shape == (0,)  # empty
    assert len(model.calls) == 2


def test_other_shapes_run_as_their_own_call_unless_padding(schedulers: Any, pool: ThreadPoolExecutor) -> None:
    model = Model()
    queue = schedulers().queue(model)
    first = occupy(queue, model, pool)
    futures = queue_up(queue, pool, [{"x": np.ones((1, 2), np.float32)}, {"x": np.ones((1, 3), np.float32)}])
    model.let_go()
    first.result(_WAIT_S)
    assert [future.result(_WAIT_S)["y"].shape for future in futures] == [(1, 2), (1, 3)]
    assert sorted(call["x"].shape for call in model.calls[1:]) == [(1, 2), (1, 3)]

    padded_model = Model()
    padded = schedulers(pad_variable_length_inputs=True).queue(padded_model)
    first = occupy(padded, padded_model, pool)
    futures = queue_up(padded, pool, [{"x": np.array([[5.0, 6.0]], np.float32)},
                                      {"x": np.array([[7.0, 8.0, 9.0]], np.float32)}])
    padded_model.let_go()
    first.result(_WAIT_S)
    assert futures[0].result(_WAIT_S)["y"].tolist() == [[51.0, 61.0, 51.0]]
    futures[1].result(_WAIT_S)
    # Padded after the values with the tensor's own first element, as TF Serving pads; one call for both.
    assert padded_model.calls[1]["x"].tolist() == [[5.0, 6.0, 5.0], [7.0, 8.0, 9.0]]


def test_queued_requests_of_an_unloaded_version_still_run_and_its_queue_goes(schedulers: Any,
                                                                            pool: ThreadPoolExecutor) -> None:
    scheduler = schedulers(batch_timeout_micros=100_000, max_batch_size=4)
    model = Model()
    queue = scheduler.queue(model, name="m/1/serving_default")
    futures = [pool.submit(queue.submit, rows(float(i))) for i in range(2)]
    del queue  # the version is unloaded: only the requests in flight hold its queue now
    assert [future.result(_WAIT_S)["y"].tolist() for future in futures] == [[1.0], [11.0]]
    del futures
    gc.collect()
    poll_until(lambda: (True if not scheduler.queue_names() else None, str(scheduler.queue_names())), _WAIT_S,
               "the unloaded version's queue to go")


def test_stop_drains_queued_requests(pool: ThreadPoolExecutor) -> None:
    scheduler = BatchScheduler(BatchingOptions(num_batch_threads=1, batch_timeout_micros=3_600_000_000))
    model = Model()
    queue = scheduler.queue(model)
    learn(queue, 2)
    future = pool.submit(queue.submit, rows(4.0))
    poll_until(lambda: (True if queue.waiting() else None, "not queued"), _WAIT_S, "the request to queue")
    scheduler.stop()  # the hour-long timeout does not hold it back
    assert future.result(_WAIT_S)["y"].tolist() == [41.0]
    assert queue.submit(rows(5.0))["y"].tolist() == [51.0]  # after stop: unbatched


# ------------------------------------------------------------------ parameters file and flags


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "batching.config"
    path.write_text(text)
    return str(path)


def test_the_parameters_file_is_tf_servings_text_proto(tmp_path: Path) -> None:
    options = read_batching_parameters(write(tmp_path, """
        max_batch_size { value: 8 }
        batch_timeout_micros { value: 500 }
        max_enqueued_batches { value: 3 }
        num_batch_threads { value: 2 }
        thread_pool_name { value: "pool" }
        allowed_batch_sizes: 2
        allowed_batch_sizes: 8
        pad_variable_length_inputs: true
    """))
    assert options == BatchingOptions(max_batch_size=8, batch_timeout_micros=500, max_enqueued_batches=3,
                                      num_batch_threads=2, thread_pool_name="pool", allowed_batch_sizes=(2, 8),
                                      pad_variable_length_inputs=True)
    defaults = read_batching_parameters(write(tmp_path, ""))
    assert (defaults.max_batch_size, defaults.batch_timeout_micros, defaults.max_enqueued_batches) == (1000, 0, 10)
    assert defaults.threads >= 1  # one per CPU


@pytest.mark.parametrize(("text", "code", "says"), [
    ("max_batch_size: 8", "INVALID_ARGUMENT", "Invalid protobuf file"),  # a wrapper, not a scalar
    ("max_batch_sise { value: 8 }", "INVALID_ARGUMENT", "max_batch_sise"),
    ("max_batch_size { value: 8 } allowed_batch_sizes: 4", "INVALID_ARGUMENT",
     "Last entry in allowed_batch_sizes must match max_batch_size; last entry was 4; expected 8"),
    ("max_batch_size { value: 8 } allowed_batch_sizes: 4 allowed_batch_sizes: 2 allowed_batch_sizes: 8",
     "INVALID_ARGUMENT", "monotonically increasing"),
    ("num_batch_threads { value: 0 }", "INVALID_ARGUMENT", "num_batch_threads must be positive; was 0"),
    ("batch_timeout_micros { value: -1 }", "INVALID_ARGUMENT", "batch_timeout_micros must be non-negative"),
])
def test_a_bad_parameters_file_is_a_clear_error(tmp_path: Path, text: str, code: str, says: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ServingError) as info:
        read_batching_parameters(path)
    assert info.value.code == code
    assert says in info.value.message and path in info.value.message


def test_batching_flags(tmp_path: Path) -> None:
    options = parse_flags(["--model_base_path=/m", "--enable_batching",
                           f"--batching_parameters_file={write(tmp_path, 'max_batch_size { value: 4 }')}"])
    assert options.enable_batching is True
    batching = batching_options(options.enable_batching, options.batching_parameters_file)
    assert batching is not None and batching.max_batch_size == 4
    assert batching_options(True, None) == BatchingOptions()  # TF Serving's defaults without a file
    assert parse_flags(["--model_base_path=/m", "--enable_batching=false"]).enable_batching is False
    assert batching_options(False, None) is None
    with pytest.raises(ServingError, match="without --enable_batching"):
        batching_options(False, "/some/file")
    with pytest.raises(ServingError) as info:
        batching_options(True, str(tmp_path / "missing.config"))
    assert info.value.code == "NOT_FOUND"


def test_a_server_with_a_bad_parameters_file_fails_to_start(tmp_path: Path, make_base_path: Any,
                                                           half_plus_two_dir: Path) -> None:
    base = make_base_path("m", {1: half_plus_two_dir})
    server = ModelServer(ServerOptions(port=0, model_name="m", model_base_path=str(base), enable_batching=True,
                                       batching_parameters_file=write(tmp_path, "max_batch_size { value: x }")))
    try:
        with pytest.raises(ServingError, match="Invalid protobuf file"):
            server.start()
        assert server.manager.config is None  # refused before any model loaded
    finally:
        server.stop()


def test_signatures_that_pin_the_batch_dimension_are_not_batched() -> None:
    from tensorflow.core.protobuf import meta_graph_pb2

    signature = meta_graph_pb2.SignatureDef()
    signature.inputs["x"].tensor_shape.dim.add(size=-1)
    signature.outputs["y"].tensor_shape.unknown_rank = True
    assert not fixes_batch_dimension(signature)
    signature.inputs["k"].tensor_shape.dim.add(size=1)  # a fixed batch of one
    assert fixes_batch_dimension(signature)
    scalar = meta_graph_pb2.SignatureDef()
    scalar.inputs["s"].tensor_shape.SetInParent()  # rank 0
    assert fixes_batch_dimension(scalar)


# ------------------------------------------------------------------ a server with batching


@pytest.mark.slow
def test_a_batching_server_answers_concurrent_rest_and_grpc_requests(serve: Any, make_base_path: Any,
                                                                     half_plus_two_dir: Path, tmp_path: Path,
                                                                     pool: ThreadPoolExecutor) -> None:
    import grpc
    import requests
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    base = make_base_path("half_plus_two", {1: half_plus_two_dir})
    server = serve(model_name="half_plus_two", model_base_path=str(base), enable_batching=True,
                   batching_parameters_file=write(tmp_path, "max_batch_size { value: 8 } num_batch_threads { value: 1 }"))
    assert server.batching is not None
    assert "half_plus_two/1/serving_default" in server.batching.queue_names()
    url = f"http://127.0.0.1:{server.rest_port}/v1/models/half_plus_two:predict"
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

    def over_rest(value: float) -> list[float]:
        response = requests.post(url, json={"instances": [value, value + 0.5]}, timeout=_WAIT_S)
        assert response.status_code == 200, response.text
        return response.json()["predictions"]

    def over_grpc(value: float) -> list[float]:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "half_plus_two"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto([value, value + 0.5], dtype=tf.float32))
        return tf.make_ndarray(stub.Predict(request, timeout=_WAIT_S).outputs["y"]).tolist()

    try:
        futures = {(way.__name__, i): pool.submit(way, float(i)) for i in range(12) for way in (over_rest, over_grpc)}
        for (_, i), future in futures.items():
            assert future.result(_WAIT_S) == [0.5 * i + 2, 0.5 * (i + 0.5) + 2]
    finally:
        channel.close()
