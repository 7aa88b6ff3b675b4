"""TF Serving's request batching: ``--enable_batching`` and ``--batching_parameters_file``.

Concurrent requests to one signature of one loaded version are concatenated along dimension 0, run as one model
call, and the outputs split back, as TF Serving's ``BatchingSession`` on a ``SharedBatchScheduler`` does:

* One :class:`BatchScheduler` per server owns ``num_batch_threads`` slots (batches that may run at once) and the
  threads; each loaded version's signature gets its own :class:`BatchQueue` on it.
* A queue holds batches; the last one is open. A request joins the open batch, or starts a new one when it does not
  fit. A batch runs when a slot is free and it is closed (full), or ``batch_timeout_micros`` passed since its first
  request, or its queue was closed (version unloaded: the queue drains).
* ``allowed_batch_sizes``: a batch is padded up to the next allowed size with copies of the first row of its last
  request; the padding rows' outputs are dropped. ``pad_variable_length_inputs``: inputs are padded after their
  values, in every dimension but 0, to the batch's largest size, with their own first element.
* A request of more than ``max_batch_size`` rows is refused (INVALID_ARGUMENT ``Task size N is larger than maximum
  input batch size M``); with ``enable_large_batch_splitting`` a request of up to ``max_batch_size`` rows is cut
  to fill the open batch and then batches of ``max_execution_batch_size``. A full queue answers UNAVAILABLE
  (``The batch scheduling queue to which this task was submitted is full...``), TF Serving's texts.
* A failed model call fails every request in the batch with the same error. An output without dimension 0, or whose
  dimension 0 is not the batch's size, is TF Serving's FAILED_PRECONDITION.

Latency: with ``batch_timeout_micros`` 0 (the default) a request that finds its queue empty and a slot free runs
in its own thread at once (what a free TF Serving batch thread would do, without the hand-over), so batching adds
nothing at concurrency 1; requests that arrive while every slot is busy wait together and run as one batch when a
slot frees. With a timeout, a batch also runs as soon as it holds as many rows as the load: the most rows in flight
in its queue (queued or running) while the previous batch was forming. A steady load of k clients gets batches of
k rows without waiting for the timeout (on 2 cores, one process, batch-1 MNIST at concurrency 4 with a 1 ms
timeout: 4 rows a model call instead of 1.6 with no timeout, 0.48-0.51 instead of 0.59-0.63 ms of CPU a request);
a lone client's load is its own request, so it runs at once; a client left alone after a burst waits the timeout
once. A request waits at most the timeout plus the model calls of the batches ahead of it (at most
``max_enqueued_batches`` of them, shared among ``num_batch_threads`` slots).

Where we differ from TF Serving (on purpose, each more lenient):

* A batch runs before its timeout once it is as large as the load (above); TF Serving waits out the timeout for
  every batch that is not full.
* Requests whose inputs are not batchable (a scalar, inputs of different dimension-0 sizes, an empty input) run
  alone instead of failing; so do signatures whose SignatureDef fixes dimension 0 or the rank of an input to 0.
* Without ``pad_variable_length_inputs``, requests whose inputs differ in a dimension other than 0 (or in dtype) are
  run as separate calls within the batch instead of failing the batch with FAILED_PRECONDITION.
* A request that reaches a version after it was unloaded runs unbatched (TF Serving keeps the version until its
  last request ends, so there it cannot happen).

``BatchingParameters`` is read from protobuf text format; tensorflow-serving-api does not ship
``session_bundle_config_pb2``, so its message is rebuilt here with the same field names (text format only).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.wire.status import ServingError, failed_precondition, from_exception, invalid_argument

log = logging.getLogger(__name__)

Arrays = dict[str, Any]
RunFunction = Callable[[Arrays], dict[str, np.ndarray]]

_DEFAULT_THREAD_POOL = "model_server_batch_threads"  # what tensorflow_model_server names it without a file
_MICROS = 1e-6
_STOP_JOIN_S = 10.0


def _default_threads() -> int:
    """TF's ``port::MaxParallelism()``: the CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class BatchingOptions:
    """``BatchingParameters`` with TF Serving's defaults for the fields left out (``SharedBatchScheduler``'s)."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = 0  # 0: one per CPU, as TF Serving
    thread_pool_name: str = _DEFAULT_THREAD_POOL
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False
    enable_large_batch_splitting: bool = False
    max_execution_batch_size: int = 0  # 0: max_batch_size

    @property
    def threads(self) -> int:
        return self.num_batch_threads or _default_threads()

    @property
    def execution_batch_size(self) -> int:
        """The most rows one model call gets."""
        if self.enable_large_batch_splitting and self.max_execution_batch_size:
            return self.max_execution_batch_size
        return self.max_batch_size

    def check(self) -> None:
        """Refuse what TF Serving's scheduler refuses.

        Raises:
            ServingError: INVALID_ARGUMENT.
        """
        for name in ("max_batch_size", "max_enqueued_batches"):
            if getattr(self, name) <= 0:
                raise invalid_argument(f"{name} must be positive; was {getattr(self, name)}")
        if self.num_batch_threads < 0:
            raise invalid_argument(f"num_batch_threads must be positive; was {self.num_batch_threads}")
        if self.batch_timeout_micros < 0:
            raise invalid_argument(f"batch_timeout_micros must be non-negative; was {self.batch_timeout_micros}")
        if self.enable_large_batch_splitting and self.max_execution_batch_size > self.max_batch_size:
            raise invalid_argument(f"max_execution_batch_size ({self.max_execution_batch_size}) must not exceed "
                                   f"max_batch_size ({self.max_batch_size})")
        sizes = self.allowed_batch_sizes
        if sizes:
            if any(size <= 0 for size in sizes) or any(b <= a for a, b in zip(sizes, sizes[1:], strict=False)):
                raise invalid_argument("allowed_batch_sizes entries must be positive and monotonically increasing")
            if sizes[-1] != self.execution_batch_size:
                raise invalid_argument(f"Last entry in allowed_batch_sizes must match max_batch_size; last entry was "
                                       f"{sizes[-1]}; expected {self.execution_batch_size}")


# ------------------------------------------------------------------ --batching_parameters_file


@functools.lru_cache(maxsize=1)
def batching_parameters_class() -> Any:
    """``tensorflow.serving.BatchingParameters`` (TF Serving's ``session_bundle_config.proto``).

    Built in a private descriptor pool, field names and types as TF Serving's (wrappers for the optional scalars),
    so its text files parse here unchanged.
    """
    try:
        from tensorflow_serving.servables.tensorflow import (  # type: ignore[import-not-found,unused-ignore]
            session_bundle_config_pb2,
        )

        return session_bundle_config_pb2.BatchingParameters
    except ImportError:
        pass
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/servables/tensorflow/batching_parameters.proto", package="tensorflow.serving",
        syntax="proto3", dependency=["google/protobuf/wrappers.proto"])
    message = proto.message_type.add(name="BatchingParameters")
    wrapped = [("max_batch_size", 1, "Int64Value"), ("batch_timeout_micros", 2, "Int64Value"),
               ("max_enqueued_batches", 3, "Int64Value"), ("num_batch_threads", 4, "Int64Value"),
               ("thread_pool_name", 5, "StringValue"), ("enable_large_batch_splitting", 8, "BoolValue"),
               ("max_execution_batch_size", 9, "Int64Value")]
    for name, number, wrapper in wrapped:
        message.field.add(name=name, number=number, type=field.TYPE_MESSAGE, label=field.LABEL_OPTIONAL,
                          type_name=f".google.protobuf.{wrapper}")
    message.field.add(name="allowed_batch_sizes", number=6, type=field.TYPE_INT64, label=field.LABEL_REPEATED)
    message.field.add(name="pad_variable_length_inputs", number=7, type=field.TYPE_BOOL, label=field.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.AddSerializedFile(proto.SerializeToString())
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


def options_from_proto(params: Any) -> BatchingOptions:
    """:class:`BatchingOptions` from a ``BatchingParameters``, checked.

    Raises:
        ServingError: INVALID_ARGUMENT for values TF Serving refuses.
    """
    def wrapped(name: str, default: Any) -> Any:
        return getattr(params, name).value if params.HasField(name) else default

    defaults = BatchingOptions()
    threads = wrapped("num_batch_threads", 0)
    if params.HasField("num_batch_threads") and threads < 1:
        raise invalid_argument(f"num_batch_threads must be positive; was {threads}")
    options = BatchingOptions(
        max_batch_size=wrapped("max_batch_size", defaults.max_batch_size),
        batch_timeout_micros=wrapped("batch_timeout_micros", defaults.batch_timeout_micros),
        max_enqueued_batches=wrapped("max_enqueued_batches", defaults.max_enqueued_batches),
        num_batch_threads=threads,
        thread_pool_name=wrapped("thread_pool_name", defaults.thread_pool_name) or defaults.thread_pool_name,
        allowed_batch_sizes=tuple(params.allowed_batch_sizes),
        pad_variable_length_inputs=params.pad_variable_length_inputs,
        enable_large_batch_splitting=wrapped("enable_large_batch_splitting", False),
        max_execution_batch_size=wrapped("max_execution_batch_size", 0),
    )
    options.check()
    return options


def read_batching_parameters(path: str) -> BatchingOptions:
    """Read ``--batching_parameters_file`` as TF Serving's ``ParseProtoTextFile`` does.

    Raises:
        ServingError: NOT_FOUND when the file cannot be found; INVALID_ARGUMENT ``Invalid protobuf file: '<path>'``
            with the parser's reason, or for values TF Serving refuses.
    """
    from google.protobuf import text_format

    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ServingError("NOT_FOUND", f"{path}; No such file or directory") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise invalid_argument(f"Invalid protobuf file: '{path}': {exc}") from None
    params = batching_parameters_class()()
    try:
        text_format.Parse(text, params)
    except text_format.ParseError as exc:
        raise invalid_argument(f"Invalid protobuf file: '{path}': {exc}") from None
    try:
        return options_from_proto(params)
    except ServingError as exc:
        raise invalid_argument(f"Invalid batching parameters in '{path}': {exc.message}") from None


def batching_options(enable_batching: bool, parameters_file: str | None) -> BatchingOptions | None:
    """What ``--enable_batching`` / ``--batching_parameters_file`` ask for (None: no batching).

    Raises:
        ServingError: a file without ``--enable_batching`` (TF Serving refuses to start), or a bad file.
    """
    if not enable_batching:
        if parameters_file:
            raise invalid_argument("You supplied --batching_parameters_file without --enable_batching")
        return None
    return read_batching_parameters(parameters_file) if parameters_file else BatchingOptions()


# ------------------------------------------------------------------ tasks and batches


class _Task:
    """One request (or one piece of a split request) waiting in a queue."""

    __slots__ = ("_done", "error", "inputs", "outputs", "size")

    def __init__(self, inputs: Arrays, size: int):
        self.inputs, self.size = inputs, size
        self.outputs: dict[str, np.ndarray] | None = None
        self.error: ServingError | None = None
        self._done = threading.Lock()  # held until finished: the cheapest one-shot signal CPython has
        self._done.acquire()

    def finish(self, outputs: dict[str, np.ndarray] | None = None, error: ServingError | None = None) -> None:
        if self.outputs is None and self.error is None:
            self.outputs, self.error = outputs, error
            self._done.release()

    def wait(self) -> dict[str, np.ndarray]:
        """The outputs, once the batch holding this task ran; its error raised."""
        self._done.acquire()
        if self.error is not None:
            raise self.error
        assert self.outputs is not None
        return self.outputs


class _Batch:
    __slots__ = ("size", "started", "tasks")

    def __init__(self, started: float):
        self.tasks: list[_Task] = []
        self.size = 0
        self.started = started  # monotonic time of its first task: the timeout counts from here

    def add(self, task: _Task) -> None:
        self.tasks.append(task)
        self.size += task.size


def batch_size_of(arrays: Arrays) -> int | None:
    """The common dimension-0 size of the inputs, or None when they cannot be batched (run alone)."""
    size = None
    for value in arrays.values():
        if not isinstance(value, np.ndarray) or value.ndim == 0:
            return None
        if size is None:
            size = value.shape[0]
        elif value.shape[0] != size:
            return None
    return size or None  # no inputs, or empty ones


# ------------------------------------------------------------------ the scheduler


class BatchScheduler:
    """TF Serving's ``SharedBatchScheduler``: the slots and threads every :class:`BatchQueue` of a server shares.

    Thread-safe. One lock (``_cond``) guards every queue's batches and the slot count; model calls run outside it.
    Queues are held weakly: each lives as long as its version (see :meth:`Servable._batched`).
    """

    def __init__(self, options: BatchingOptions):
        options.check()
        self.options = options
        self._timeout_s = options.batch_timeout_micros * _MICROS
        self._cond = threading.Condition(threading.Lock())
        self._queues: list[weakref.ref[BatchQueue]] = []
        self._free_slots = options.threads
        self._next_queue = 0  # round robin among queues, as TF Serving interleaves its queues' batches
        self._stopping = False
        self._threads = [threading.Thread(target=self._work, name=f"{options.thread_pool_name}-{index}", daemon=True)
                         for index in range(options.threads)]
        for thread in self._threads:
            thread.start()

    def queue(self, run: RunFunction, name: str = "") -> BatchQueue:
        """A queue whose batches are run by ``run`` (the unbatched model call: arrays in, numpy arrays out)."""
        queue = BatchQueue(self, run, name)
        with self._cond:
            if self._stopping:
                queue._closed = True  # a version loading while the server stops: it runs unbatched
            else:
                self._queues = [ref for ref in self._queues if ref() is not None] + [weakref.ref(queue)]
        return queue

    def queue_names(self) -> list[str]:
        """The queues alive now (diagnostics and tests)."""
        with self._cond:
            return [queue.name for queue in self._alive()]

    def stop(self) -> None:
        """Close every queue, let the threads drain them, and end the threads; idempotent."""
        with self._cond:
            self._stopping = True
            for queue in self._alive():
                queue._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=_STOP_JOIN_S)
        with self._cond:  # only if a model call outlived the join: never leave a caller waiting
            leftovers = [task for queue in self._alive() for batch in queue._batches for task in batch.tasks]
            for queue in self._alive():
                queue._batches.clear()
        for task in leftovers:
            task.finish(error=ServingError("UNAVAILABLE", "The model server is shutting down"))

    # ---- under self._cond

    def _alive(self) -> list[BatchQueue]:
        return [queue for queue in (ref() for ref in self._queues) if queue is not None]

    def _take(self, now: float) -> tuple[BatchQueue, _Batch] | None:
        """The next batch to run (a slot is taken for it), round robin among queues; None when there is none."""
        if self._free_slots <= 0 or not self._queues:
            return None
        count = len(self._queues)
        for step in range(count):
            queue = self._queues[(self._next_queue + step) % count]()
            batch = queue._take_schedulable(now) if queue is not None else None
            if batch is not None:
                self._next_queue = (self._next_queue + step + 1) % count
                self._free_slots -= 1
                return queue, batch  # type: ignore[return-value]  # not None when batch is not
        return None

    def _wait_s(self, now: float) -> float | None:
        """How long an idle thread may sleep: until the first open batch's timeout, or until notified."""
        if self._free_slots <= 0:
            return None  # a slot frees only when a batch ends, which notifies or loops
        deadlines = [queue._batches[0].started + self._timeout_s for queue in self._alive() if queue._batches]
        return max(0.0, min(deadlines) - now) if deadlines else None

    def _pending(self) -> bool:
        return any(queue is not None and queue._batches for queue in (ref() for ref in self._queues))

    # ---- threads

    def _work(self) -> None:
        while True:
            with self._cond:
                while True:
                    now = time.monotonic()
                    picked = self._take(now)
                    if picked is not None:
                        break
                    if self._stopping and not self._pending():
                        return
                    self._cond.wait(self._wait_s(now))
            queue, batch = picked
            del picked
            try:
                queue._process(batch)
            finally:
                del queue, batch  # no strong reference may outlive the batch: the version must be able to go
                with self._cond:
                    self._free_slots += 1

    def _release_inline_slot(self) -> None:
        with self._cond:
            self._free_slots += 1
            if self._pending():
                self._cond.notify()  # a batch formed while this slot was busy: a thread runs it


class BatchQueue:
    """The batches of one signature of one loaded version (TF Serving's per-signature batching queue)."""

    def __init__(self, scheduler: BatchScheduler, run: RunFunction, name: str = ""):
        self.name = name
        self._scheduler = scheduler
        self._options = scheduler.options
        self._run = run
        self._batches: deque[_Batch] = deque()  # guarded by the scheduler's lock; the last one is open
        self._closed = False
        # Under the scheduler's lock. The steady load's batch (see _ready): the most rows in flight here (queued or
        # running, until their callers have them) seen as requests arrived between the last two batches taken.
        self._in_flight = 0
        self._peak = 0
        self._expected = 1

    def submit(self, arrays: Arrays) -> dict[str, np.ndarray]:
        """Run ``arrays`` as part of a batch; its own rows of every output.

        Raises:
            ServingError: the model call's error (shared by the whole batch), INVALID_ARGUMENT for a request larger
                than ``max_batch_size``, UNAVAILABLE when the queue is full.
        """
        size = batch_size_of(arrays)
        if size is None or self._closed:
            return self._run(arrays)
        scheduler = self._scheduler
        with scheduler._cond:
            self._in_flight += size
            self._peak = max(self._peak, self._in_flight)
            try:
                alone = self._take_slot_alone(size)
                if self._closed or alone:
                    inline, tasks = None, None  # unloaded meanwhile (run unbatched), or alone in its slot: below
                else:
                    tasks = self._enqueue(arrays, size)
                    inline = self._take_inline(tasks)
                    if inline is None and scheduler._free_slots > 0:
                        scheduler._cond.notify()  # a free thread runs it now, or sleeps until its batch's timeout
            except BaseException:
                self._in_flight -= size
                raise
        try:
            return self._submitted(arrays, alone, tasks, inline)
        finally:
            with scheduler._cond:
                self._in_flight -= size

    def _submitted(self, arrays: Arrays, alone: bool, tasks: list[_Task] | None,
                   inline: _Batch | None) -> dict[str, np.ndarray]:
        """The rest of :meth:`submit`, outside the lock: run or wait, and put the request's rows together."""
        scheduler = self._scheduler
        if alone:
            try:
                return self._run(arrays)
            finally:
                scheduler._release_inline_slot()
        if tasks is None:
            return self._run(arrays)
        if inline is not None:
            try:
                self._process(inline)
            finally:
                scheduler._release_inline_slot()
        if len(tasks) == 1:
            return tasks[0].wait()
        pieces = [task.wait() for task in tasks]
        return {alias: np.concatenate([piece[alias] for piece in pieces]) for alias in pieces[0]}

    def waiting(self) -> int:
        """Requests (or pieces of split ones) queued and not yet running."""
        with self._scheduler._cond:
            return sum(len(batch.tasks) for batch in self._batches)

    # ---- under the scheduler's lock

    def _enqueue(self, arrays: Arrays, size: int) -> list[_Task]:
        options = self._options
        if size > options.max_batch_size:
            raise invalid_argument(f"Task size {size} is larger than maximum input batch size "
                                   f"{options.max_batch_size}")
        limit = options.execution_batch_size
        open_size = self._batches[-1].size if self._batches else limit
        if options.enable_large_batch_splitting:
            capacity = (options.max_enqueued_batches - len(self._batches)) * limit + (limit - open_size)
            if size > capacity:
                raise ServingError(
                    "UNAVAILABLE", f"The batch scheduling queue to which this task was submitted is full; task size "
                    f"is {size} but scheduling capacity is only {capacity} (num_enqueued_batches="
                    f"{len(self._batches)}, max_enqueued_batches={options.max_enqueued_batches}, open_batch_size="
                    f"{open_size if self._batches else 0}, max_execution_batch_size={limit})")
            tasks = [_Task(piece, piece_size) for piece, piece_size in _pieces(arrays, size, limit - open_size, limit)]
        else:
            if open_size + size > limit and len(self._batches) >= options.max_enqueued_batches:
                raise ServingError("UNAVAILABLE", f"The batch scheduling queue to which this task was submitted is "
                                                  f"full; currently {len(self._batches)} batches enqueued and "
                                                  f"max_enqueued_batches is {options.max_enqueued_batches}")
            tasks = [_Task(arrays, size)]
        now = time.monotonic()
        for task in tasks:
            if not self._batches or self._batches[-1].size + task.size > limit:
                self._batches.append(_Batch(now))
            self._batches[-1].add(task)
        return tasks

    def _take_slot_alone(self, size: int) -> bool:
        """Take a slot for a request that would be a batch of its own, run at once, exactly as submitted.

        That is: no timeout to wait for (none set, or the request alone is as large as the queue's load), a free
        slot, nothing queued, and a size that needs no padding or splitting. It then runs in the caller's thread
        with no task, batch or hand-off: at concurrency 1 batching costs three lock round trips over the plain call
        (0.005-0.020 ms a call in bench/batching.py's ``servable`` rows).
        """
        options = self._options
        if ((options.batch_timeout_micros and size < self._expected) or self._scheduler._free_slots <= 0
                or self._batches or self._closed or size > options.execution_batch_size
                or _padding_rows(options.allowed_batch_sizes, size)):
            return False
        self._scheduler._free_slots -= 1
        self._learn()
        return True

    def _take_inline(self, tasks: list[_Task]) -> _Batch | None:
        """The open batch, to run in the caller's thread, when nothing waits ahead of it and a slot is free."""
        scheduler = self._scheduler
        if (scheduler._free_slots <= 0 or len(self._batches) != 1 or len(tasks) != 1
                or not self._ready(self._batches[0], time.monotonic())):
            return None
        scheduler._free_slots -= 1
        return self._taken()

    def _take_schedulable(self, now: float) -> _Batch | None:
        if not self._batches:
            return None
        if len(self._batches) > 1 or self._closed or self._ready(self._batches[0], now):
            return self._taken()
        return None

    def _ready(self, batch: _Batch, now: float) -> bool:
        """May ``batch`` (the open one) run now: full, past its timeout, or as large as the load (``_expected``).

        The last rule is ours: under a steady load of k clients each batch fills to k rows, so once it holds
        that many, more are not coming soon; TF Serving would wait out the timeout.
        """
        return (batch.size >= self._options.execution_batch_size or now >= batch.started + self._scheduler._timeout_s
                or batch.size >= self._expected)

    def _taken(self) -> _Batch:
        batch = self._batches.popleft()
        self._learn()
        return batch

    def _learn(self) -> None:
        """A batch was taken: the most rows in flight since the previous one is the size the next one waits for.

        (The size of the last batch would not do: two clients' worth running while two more queue settles at
        batches of 2 for 4 clients.)
        """
        self._expected = max(1, min(self._peak, self._options.execution_batch_size))
        self._peak = sum(batch.size for batch in self._batches)  # counting again from those still queued

    # ---- outside the lock

    def _process(self, batch: _Batch) -> None:
        """Run one batch; every task is finished, whatever happens."""
        try:
            for group in self._groups(batch.tasks):
                self._run_group(group)
        except BaseException as exc:
            error = from_exception(exc) if isinstance(exc, Exception) else ServingError("CANCELLED", repr(exc))
            for task in batch.tasks:
                task.finish(error=error)
            if not isinstance(exc, Exception):
                raise

    def _groups(self, tasks: list[_Task]) -> Iterator[list[_Task]]:
        """Tasks that can share one call: the same dtypes and (unless padding) the same shapes past dimension 0."""
        if len(tasks) == 1:
            yield tasks
            return
        pad = self._options.pad_variable_length_inputs
        groups: dict[tuple, list[_Task]] = {}
        for task in tasks:
            key = tuple(sorted((alias, value.dtype.str, value.ndim if pad else value.shape[1:])
                               for alias, value in task.inputs.items()))
            groups.setdefault(key, []).append(task)
        yield from groups.values()

    def _run_group(self, tasks: list[_Task]) -> None:
        total = sum(task.size for task in tasks)
        padding = _padding_rows(self._options.allowed_batch_sizes, total)
        if len(tasks) == 1 and not padding:
            merged = tasks[0].inputs  # a lone request: no copies
        else:
            merged = {alias: _merge([task.inputs[alias] for task in tasks], padding,
                                    self._options.pad_variable_length_inputs) for alias in tasks[0].inputs}
        try:
            outputs = self._run(merged)
            split = _split(outputs, [task.size for task in tasks], padding)
        except ServingError as error:
            for task in tasks:
                task.finish(error=error)
            return
        for task, task_outputs in zip(tasks, split, strict=True):
            task.finish(task_outputs)


def _pieces(arrays: Arrays, size: int, first: int, limit: int) -> Iterator[tuple[Arrays, int]]:
    """Rows of a large request cut to fill the open batch (``first`` rows), then batches of ``limit``."""
    start = 0
    step = first if first > 0 else limit
    while start < size:
        end = min(size, start + step)
        yield {alias: value[start:end] for alias, value in arrays.items()}, end - start
        start, step = end, limit


def _padding_rows(allowed: tuple[int, ...], size: int) -> int:
    for allowed_size in allowed:
        if allowed_size >= size:
            return allowed_size - size
    return 0


def _merge(values: list[np.ndarray], padding: int, pad_variable_length: bool) -> np.ndarray:
    if pad_variable_length:
        widest = np.max([value.shape for value in values], axis=0)
        values = [_pad_trailing(value, widest) for value in values]
    if padding:
        values.append(np.repeat(values[-1][:1], padding, axis=0))  # TF Serving pads with the last task's first row
    return np.concatenate(values)


def _pad_trailing(value: np.ndarray, widest: np.ndarray) -> np.ndarray:
    """Pad every dimension but 0 up to ``widest``, after the values, with the tensor's first element (TF Serving's)."""
    widths = [(0, 0)] + [(0, int(want) - have) for want, have in zip(widest[1:], value.shape[1:], strict=True)]
    if not any(after for _, after in widths) or value.size == 0:
        return value
    return np.pad(value, widths, mode="constant", constant_values=value.flat[0])


def _split(outputs: dict[str, np.ndarray], sizes: list[int], padding: int) -> list[dict[str, np.ndarray]]:
    """Each task's rows of every output (the padding rows dropped).

    Raises:
        ServingError: FAILED_PRECONDITION, TF Serving's, when an output has no batch dimension to split.
    """
    if len(sizes) == 1 and not padding:
        return [outputs]
    total = sum(sizes) + padding
    split: list[dict[str, np.ndarray]] = [{} for _ in sizes]
    for alias, value in outputs.items():
        if value.ndim == 0:
            raise failed_precondition("Batched output tensor has 0 dimensions")
        if value.shape[0] != total:
            raise failed_precondition("Batched output tensor's 0th dimension does not equal the sum of the 0th "
                                      "dimension sizes of the input tensors")
        start = 0
        for task_outputs, size in zip(split, sizes, strict=True):  # views, no copies (np.split is slower)
            task_outputs[alias] = value[start:start + size]
            start += size
    return split


def fixes_batch_dimension(signature_def: Any) -> bool:
    """Whether a SignatureDef pins dimension 0 of an input or output (or its rank to 0): not batchable."""
    for info in [*signature_def.inputs.values(), *signature_def.outputs.values()]:
        shape = info.tensor_shape
        if shape.unknown_rank:
            continue
        if not shape.dim or shape.dim[0].size != -1:
            return True
    return False


def describe(options: BatchingOptions) -> str:
    """One log line of the batching in effect."""
    return (f"max_batch_size={options.max_batch_size} batch_timeout_micros={options.batch_timeout_micros} "
            f"max_enqueued_batches={options.max_enqueued_batches} num_batch_threads={options.threads} "
            f"allowed_batch_sizes={list(options.allowed_batch_sizes)} "
            f"pad_variable_length_inputs={options.pad_variable_length_inputs} "
            f"enable_large_batch_splitting={options.enable_large_batch_splitting}")
