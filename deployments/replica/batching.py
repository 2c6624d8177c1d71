"""Server-side request batching, as TF Serving's BatchingSession on a SharedBatchScheduler does it.

`Batcher(run, params)` wraps a `run(signature_name, {alias: ndarray}, output_aliases) -> {alias:
ndarray}` (e.g. `LoadedSavedModel.run`); `submit()` has the same signature, blocks, and is called
from many request threads at once. Contract, with the TF source each rule comes from:

1. Queues (batching_session.cc, one queue per TensorSignature). A task goes to the queue of its
   (signature, sorted output aliases, sorted input aliases with each input's dtype and non-batch
   dims). Tasks only share a batch with tasks of the same queue, so tasks whose shapes differ never
   meet (TF puts them in one queue and fails the batch they meet in with FAILED_PRECONDITION). With
   `pad_variable_length_inputs` the queue key keeps each input's dtype and rank only.
2. Before queueing (BatchingSession::ComputeInputSize), INVALID_ARGUMENT for: no inputs ("Batching
   Run() must have at least one input tensor"), a scalar input ("Batching Run() input tensors must
   have at least one dimension"), inputs with different dim 0 ("Batching Run() input tensors must
   have equal 0th-dimension size"). Dim 0 is the task's size.
3. Admission (shared_batch_scheduler.h Queue::ValidateBatchTaskQueueCapacity), failing at once:
   size > max_batch_size -> INVALID_ARGUMENT "Task size N is larger than maximum input batch
   size M"; a task that does not fit the open batch while max_enqueued_batches batches (the open
   one included; batches already running are not) are waiting -> UNAVAILABLE "The batch
   scheduling queue to which this task was submitted is full; currently B batches enqueued and
   max_enqueued_batches is M". Tasks are not split unless enable_large_batch_splitting is set (TF's
   default is off); with it, a task is cut into pieces that fill the open batch and then batches of
   max_execution_batch_size, and is refused when larger than the queue's remaining capacity.
4. Batches (Queue::ScheduleBatch): a task that does not fit the open batch closes it and opens a
   new one. A worker takes the oldest closed batch, or the open one once it is full or its first
   task has waited batch_timeout_micros; while every worker is busy the open batch keeps filling.
   Queues are served round-robin by `num_batch_threads` worker threads.
5. Running a batch (BatchingSession::ProcessBatch): if every task's `timeout_ms` has expired, each
   gets RESOURCE_EXHAUSTED "Run() timeout exceeded while waiting in batching queue". Otherwise the
   inputs are concatenated on dim 0 (after padding non-batch dims to the batch's maximum with each
   tensor's first element, when pad_variable_length_inputs is set), padded up to the next entry of
   allowed_batch_sizes with copies of the first row of the last task, run once, and every output is
   split back by task size; an output without dims or whose dim 0 is not the padded batch size fails
   the batch with FAILED_PRECONDITION ("Batched output tensor has 0 dimensions", "Batched output
   tensor's 0th dimension does not equal the sum of the 0th dimension sizes of the input tensors").
6. Any failure while running a batch reaches every task of that batch, each as its own AspireError
   (an exception that is not an AspireError becomes INTERNAL); the workers keep going.
7. `close()` refuses new tasks, fails every queued task with UNAVAILABLE, lets running batches
   finish and stops the workers. TF instead drains queues when a model unloads.

Counters for metrics: `stats()` -> BatcherStats(batches, tasks, rows, padding_rows).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from config.batching_config import BatchingParameters
from core.errors import AspireError

RunFn = Callable[[str, dict, "list[str] | None"], dict]

CLOSED_MESSAGE = "The batch scheduling queue to which this task was submitted is closed"  # ours
TIMEOUT_MESSAGE = "Run() timeout exceeded while waiting in batching queue"


@dataclass(frozen=True)
class BatcherStats:
    batches: int = 0  # calls to `run`
    tasks: int = 0  # task pieces run (a split task counts once per piece)
    rows: int = 0  # task rows run, padding excluded
    padding_rows: int = 0  # rows added to reach an allowed batch size


class _Result:
    """What one submit() waits on; the pieces of a split task share it."""

    def __init__(self, pieces: int):
        self.done = threading.Event()
        self.outputs: list[dict | None] = [None] * pieces
        self.error: AspireError | None = None
        self._remaining = pieces
        self._lock = threading.Lock()

    def finish(self, piece: int, outputs: dict | None = None, error: AspireError | None = None):
        with self._lock:
            self.outputs[piece] = outputs
            if error is not None and self.error is None:
                self.error = error
            self._remaining -= 1
            if self._remaining == 0:
                self.done.set()


@dataclass(eq=False)
class _Task:
    inputs: dict
    size: int
    result: _Result
    piece: int
    deadline: float | None  # time.monotonic() seconds; None = no deadline


@dataclass(eq=False)
class _Batch:
    tasks: list = field(default_factory=list)
    size: int = 0
    start: float = 0.0  # when its first task was added


@dataclass(eq=False)
class _Queue:
    signature_name: str
    output_aliases: tuple[str, ...] | None
    input_aliases: tuple[str, ...]
    batches: deque = field(default_factory=lambda: deque([_Batch()]))  # the last one is open
    running: int = 0

    @property
    def idle(self) -> bool:
        return self.running == 0 and len(self.batches) == 1 and not self.batches[0].tasks


def _fail(message: str, code: str) -> AspireError:
    return AspireError(message, code)


def _task_size(inputs: dict) -> int:
    if not inputs:
        raise _fail("Batching Run() must have at least one input tensor", "INVALID_ARGUMENT")
    size = -1  # the first input's 0th-dimension size, once seen
    for value in inputs.values():
        if value.ndim == 0:
            raise _fail(
                "Batching Run() input tensors must have at least one dimension", "INVALID_ARGUMENT"
            )
        if size < 0:
            size = value.shape[0]
        elif value.shape[0] != size:
            raise _fail(
                "Batching Run() input tensors must have equal 0th-dimension size",
                "INVALID_ARGUMENT",
            )
    return int(size)


def _pad_non_batch_dims(value: np.ndarray, dims: tuple[int, ...]) -> np.ndarray:
    """batching_util.cc AddPadding: pad dims 1.. up to `dims` with the tensor's first element."""
    if not 1 <= value.ndim <= 6:
        raise _fail("Only tensors with rank from 1 to 6 can be padded.", "INVALID_ARGUMENT")
    shape = (value.shape[0],) + dims
    if int(np.prod(shape)) == value.size:
        return value.reshape(shape)
    if value.size == 0:
        raise _fail("Got empty tensor in batch of non-empty tensors.", "INVALID_ARGUMENT")
    widths = [(0, 0)] + [(0, want - have) for have, want in zip(value.shape[1:], dims, strict=True)]
    return np.pad(value, widths, mode="constant", constant_values=value.flat[0])


class Batcher:
    """Batches concurrent `submit()` calls into `run` calls; see the module docstring."""

    def __init__(
        self,
        run: RunFn,
        params: BatchingParameters,
        on_batch: Callable[[int, int], None] | None = None,
    ):
        self._run = run
        self._on_batch = on_batch  # (tasks, padding rows) of each batch run, for metrics
        self._params = params
        self._execution_size = params.execution_batch_size
        self._timeout_s = params.batch_timeout_micros / 1e6
        self._cond = threading.Condition()
        self._queues: dict[tuple, _Queue] = {}
        self._next = 0  # round-robin position in _queues
        self._closed = False
        self._stats = BatcherStats()
        self._workers = [
            threading.Thread(target=self._work, daemon=True, name=f"{params.thread_pool_name}_{i}")
            for i in range(params.batch_threads())
        ]
        for worker in self._workers:
            worker.start()

    # ----------------------------------------------------------------------------- request side
    def submit(
        self,
        signature_name: str,
        inputs: dict,
        output_aliases: list[str] | None = None,
        timeout_ms: int | None = None,
    ) -> dict:
        """Run `inputs` as part of a batch; returns {alias: ndarray} for this task's rows only.

        `timeout_ms` (TF's RunOptions.timeout_in_ms; None or <= 0 = none) bounds the time spent
        waiting in the queue. Raises AspireError as listed in the module docstring.
        """
        arrays = {alias: np.asarray(value) for alias, value in inputs.items()}
        size = _task_size(arrays)
        outputs = None if output_aliases is None else tuple(sorted(set(output_aliases)))
        key = (
            signature_name,
            outputs,
            tuple(
                (
                    alias,
                    x.dtype.str,
                    x.ndim if self._params.pad_variable_length_inputs else x.shape[1:],
                )
                for alias, x in sorted(arrays.items())
            ),
        )
        now = time.monotonic()
        deadline = now + timeout_ms / 1000 if timeout_ms and timeout_ms > 0 else None
        with self._cond:
            if self._closed:
                raise _fail(CLOSED_MESSAGE, "UNAVAILABLE")
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = _Queue(signature_name, outputs, tuple(sorted(arrays)))
            pieces = self._admit(queue, size)
            result = _Result(len(pieces))
            offset = 0
            for piece, n in enumerate(pieces):
                part = (
                    arrays
                    if len(pieces) == 1
                    else {alias: x[offset : offset + n] for alias, x in arrays.items()}
                )
                offset += n
                if queue.batches[-1].size + n > self._execution_size:
                    queue.batches.append(_Batch())  # closes the open batch
                batch = queue.batches[-1]
                if not batch.tasks:
                    batch.start = now
                batch.tasks.append(_Task(part, n, result, piece, deadline))
                batch.size += n
            self._cond.notify()
        result.done.wait()
        if result.error is not None:
            raise result.error
        # Without an error every piece finished with its outputs
        answers = [answer for answer in result.outputs if answer is not None]
        if len(answers) != len(result.outputs):
            raise _fail("A batched task finished without outputs", "INTERNAL")
        if len(answers) == 1:
            return answers[0]
        return {
            alias: np.concatenate([answer[alias] for answer in answers], axis=0)
            for alias in answers[0]
        }

    def _admit(self, queue: _Queue, size: int) -> list[int]:
        """Sizes of the pieces the task is queued as, or the AspireError refusing it."""
        p = self._params
        if size > p.max_batch_size:
            raise _fail(
                f"Task size {size} is larger than maximum input batch size {p.max_batch_size}",
                "INVALID_ARGUMENT",
            )
        limit, enqueued = self._execution_size, len(queue.batches)
        open_size = queue.batches[-1].size
        if not p.enable_large_batch_splitting:
            if open_size + size > p.max_batch_size and enqueued >= p.max_enqueued_batches:
                raise _fail(
                    "The batch scheduling queue to which this task was submitted is full; "
                    f"currently {enqueued} batches enqueued and max_enqueued_batches is "
                    f"{p.max_enqueued_batches}",
                    "UNAVAILABLE",
                )
            return [size]
        capacity = (p.max_enqueued_batches - enqueued) * limit + (limit - open_size)
        if size > capacity:
            raise _fail(
                "The batch scheduling queue to which this task was submitted is full; task "
                f"size is {size} but scheduling capacity is only {capacity} "
                f"(num_enqueued_batches={enqueued}, max_enqueued_batches="
                f"{p.max_enqueued_batches}, open_batch_size={open_size}, "
                f"max_execution_batch_size={limit})",
                "UNAVAILABLE",
            )
        remaining = limit - open_size
        if size <= remaining:
            return [size]
        pieces = [remaining if remaining > 0 else limit]  # input_split_metadata.cc
        while sum(pieces) < size:
            pieces.append(min(limit, size - sum(pieces)))
        return pieces

    # ------------------------------------------------------------------------------ worker side
    def _take_batch(self, now: float) -> tuple[_Queue, _Batch] | None:
        """The next batch to run, round-robin over queues; drops idle queues. Holds _cond."""
        keys = list(self._queues)
        for i in range(len(keys)):
            index = (self._next + i) % len(keys)
            queue = self._queues[keys[index]]
            batches = queue.batches
            open_batch = batches[-1]
            if (
                len(batches) == 1
                and open_batch.tasks
                and (
                    open_batch.size >= self._execution_size
                    or now >= open_batch.start + self._timeout_s
                )
            ):
                batches.append(_Batch())
            if len(batches) >= 2:
                self._next = index + 1
                queue.running += 1
                return queue, batches.popleft()
            if queue.idle:
                del self._queues[keys[index]]
        return None

    def _wait_time(self, now: float) -> float | None:
        """Seconds until the first open batch times out; None when no batch is waiting."""
        starts = [q.batches[-1].start for q in self._queues.values() if q.batches[-1].tasks]
        return max(0.0, min(starts) + self._timeout_s - now) if starts else None

    def _work(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    now = time.monotonic()
                    taken = self._take_batch(now)
                    if taken is not None:
                        break
                    self._cond.wait(self._wait_time(now))
                self._cond.notify()  # another batch may be ready: wake another worker to look
            queue, batch = taken
            try:
                self._process(queue, batch)
            finally:
                with self._cond:
                    queue.running -= 1

    def _process(self, queue: _Queue, batch: _Batch) -> None:
        try:
            outputs = self._run_batch(queue, batch.tasks)
        except BaseException as exc:  # every task must be answered, whatever happened
            code = exc.code if isinstance(exc, AspireError) else "INTERNAL"
            message = (
                exc.message if isinstance(exc, AspireError) else f"{type(exc).__name__}: {exc}"
            )
            for task in batch.tasks:
                task.result.finish(task.piece, error=_fail(message, code))
            if not isinstance(exc, Exception):
                raise
            return
        for task, task_outputs in zip(batch.tasks, outputs, strict=True):
            task.result.finish(task.piece, outputs=task_outputs)

    def _run_batch(self, queue: _Queue, tasks: list[_Task]) -> list[dict]:
        now = time.monotonic()
        if all(t.deadline is not None and t.deadline <= now for t in tasks):
            raise _fail(TIMEOUT_MESSAGE, "RESOURCE_EXHAUSTED")
        p = self._params
        total = sum(t.size for t in tasks)
        padded_size = next((s for s in p.allowed_batch_sizes if s >= total), total)
        padding = padded_size - total if total else 0  # no row to copy in an all-empty batch
        filler = max((i for i, t in enumerate(tasks) if t.size), default=0)  # TF: the last task
        merged = {}
        for alias in queue.input_aliases:
            values = [t.inputs[alias] for t in tasks]
            if p.pad_variable_length_inputs:
                dims = tuple(np.max([v.shape[1:] for v in values], axis=0).tolist())
                values = [_pad_non_batch_dims(v, dims) for v in values]
            if padding:
                row = values[filler][:1]
                values.append(np.repeat(row, padding, axis=0))
            merged[alias] = values[0] if len(values) == 1 else np.concatenate(values, axis=0)
        with self._cond:
            s = self._stats
            self._stats = BatcherStats(
                s.batches + 1, s.tasks + len(tasks), s.rows + total, s.padding_rows + padding
            )
        if self._on_batch is not None:
            self._on_batch(len(tasks), padding)
        aliases = None if queue.output_aliases is None else list(queue.output_aliases)
        results = self._run(queue.signature_name, merged, aliases)
        if aliases is not None and any(alias not in results for alias in aliases):
            raise _fail("Wrong number of batched output tensors", "INTERNAL")
        names = aliases if aliases is not None else list(results)
        arrays = {}
        for name in names:
            value = np.asarray(results[name])
            if value.ndim == 0:
                raise _fail("Batched output tensor has 0 dimensions", "FAILED_PRECONDITION")
            if value.shape[0] != total + padding:
                raise _fail(
                    "Batched output tensor's 0th dimension does not equal the sum of the "
                    "0th dimension sizes of the input tensors",
                    "FAILED_PRECONDITION",
                )
            arrays[name] = value
        per_task, offset = [], 0
        for task in tasks:
            per_task.append(
                {name: value[offset : offset + task.size] for name, value in arrays.items()}
            )
            offset += task.size
        return per_task

    # --------------------------------------------------------------------------------- lifecycle
    def stats(self) -> BatcherStats:
        with self._cond:
            return self._stats

    def num_enqueued_tasks(self) -> int:
        """Task pieces waiting in queues (not yet taken by a worker)."""
        with self._cond:
            return sum(len(b.tasks) for q in self._queues.values() for b in q.batches)

    def close(self, timeout_s: float | None = None) -> None:
        """Refuse new tasks, fail queued ones with UNAVAILABLE, wait `timeout_s` for the workers."""
        with self._cond:
            queued = [t for q in self._queues.values() for b in q.batches for t in b.tasks]
            for queue in self._queues.values():
                queue.batches = deque([_Batch()])
            self._closed = True
            self._cond.notify_all()
        for task in queued:
            task.result.finish(task.piece, error=_fail(CLOSED_MESSAGE, "UNAVAILABLE"))
        for worker in self._workers:
            if worker is not threading.current_thread():
                worker.join(timeout_s)


class BatchedModel:
    """A loaded model whose `run` goes through a Batcher, as TF Serving wraps the session of a
    version when batching is on: predict, classify, regress and warmup are all batched."""

    def __init__(
        self, model, params: BatchingParameters, on_batch: Callable[[int, int], None] | None = None
    ):
        self._model = model
        self.signatures = model.signatures
        self.batcher = Batcher(model.run, params, on_batch)

    def run(
        self, signature_name: str, inputs: dict, output_aliases: list[str] | None = None
    ) -> dict:
        return self.batcher.submit(signature_name, inputs, output_aliases)

    def unload(self) -> None:
        self.batcher.close()
        self._model.unload()
