"""deployments.replica.batching: TF Serving's BatchingSession semantics on request threads."""

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import pytest

from config.batching_config import BatchingParameters
from core.errors import AspireError
from deployments.replica.batching import CLOSED_MESSAGE, Batcher

DATA = os.path.join(os.path.dirname(__file__), "..", "data")
HALF_PLUS_TWO = os.path.join(DATA, "saved_model_half_plus_two_cpu", "00000123")
WAIT_S = 20  # upper bound for anything the tests wait on; never reached when the code works


def wait_until(condition, timeout_s=WAIT_S):
    end = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.002)


POISON = -1.0  # a row FakeRun fails on, when it has `fail_with`


class FakeRun:
    """Records every batch it is given; y = 2x, z = x + 1. Holds each call while `gate` is shut;
    raises `fail_with` for any batch holding a POISON row."""

    def __init__(self, gate_open=True, fail_with=None):
        self.calls = []  # (signature, {alias: array}, output_aliases)
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.fail_with = fail_with
        if gate_open:
            self.gate.set()

    def __call__(self, signature, inputs, output_aliases):
        self.calls.append((signature, {k: np.array(v) for k, v in inputs.items()}, output_aliases))
        self.entered.set()
        assert self.gate.wait(WAIT_S)
        x = inputs["x"]
        if self.fail_with is not None and (x == POISON).any():
            raise self.fail_with
        outputs = {"y": x * 2, "z": x + 1}
        return {k: outputs[k] for k in (output_aliases or outputs)}

    @property
    def batch_sizes(self):
        return [inputs["x"].shape[0] for _, inputs, _ in self.calls]


def params(**kw):
    kw.setdefault("num_batch_threads", 1)
    return BatchingParameters(**kw)


@pytest.fixture
def make_batcher():
    made = []

    def make(run, **kw):
        batcher = Batcher(run, params(**kw))
        made.append(batcher)
        return batcher

    yield make
    for batcher in made:
        batcher.close(timeout_s=WAIT_S)


@contextmanager
def submitters(batcher, n, gate=None):
    """A thread pool for concurrent submit() calls. On the way out the gate opens, and if the test
    failed the batcher closes first, so blocked submitters return and a failing test cannot hang."""
    pool = ThreadPoolExecutor(n)
    try:
        yield pool
    except BaseException:
        batcher.close(timeout_s=0)
        raise
    finally:
        if gate is not None:
            gate.set()
        pool.shutdown(wait=True)


def hold_worker(batcher, run, pool):
    """Occupy the single worker with a one-row task so the next tasks queue; returns its future."""
    future = pool.submit(batcher.submit, "serving_default", {"x": np.array([[100.0]])}, ["y"])
    assert run.entered.wait(WAIT_S)
    return future


def test_concurrent_submitters_get_their_own_rows_in_shared_batches(make_batcher):
    run = FakeRun(gate_open=False)
    batcher = make_batcher(run, max_batch_size=8)
    with submitters(batcher, 17, run.gate) as pool:
        first = hold_worker(batcher, run, pool)
        futures = [
            pool.submit(batcher.submit, "serving_default", {"x": np.array([[float(i)]])}, ["y"])
            for i in range(16)
        ]
        wait_until(lambda: batcher.num_enqueued_tasks() == 16)
        run.gate.set()
        for i, future in enumerate(futures):
            assert future.result(WAIT_S)["y"].tolist() == [[2.0 * i]]
        assert first.result(WAIT_S)["y"].tolist() == [[200.0]]
    assert run.batch_sizes == [1, 8, 8]
    assert batcher.stats().batches == 3 and batcher.stats().tasks == 17


def test_real_saved_model_batches_and_answers_each_submitter(make_batcher):
    from deployments.replica.loader import SavedModelLoader

    model = SavedModelLoader(HALF_PLUS_TWO).load()
    seen, gate = [], threading.Event()

    def run(signature, inputs, output_aliases):
        seen.append(inputs["x"].shape[0])
        assert gate.wait(WAIT_S)
        return model.run(signature, inputs, output_aliases)

    batcher = make_batcher(run, max_batch_size=8, batch_timeout_micros=1000, num_batch_threads=2)
    requests = [np.arange(i % 3 + 1, dtype=np.float32).reshape(-1, 1) + 10 * i for i in range(16)]
    try:
        with submitters(batcher, 16, gate) as pool:
            futures = [
                pool.submit(batcher.submit, "serving_default", {"x": x}, ["y"]) for x in requests
            ]
            # both workers hold a batch at the gate while the other tasks queue up behind them
            wait_until(lambda: batcher.stats().tasks + batcher.num_enqueued_tasks() == 16)
            gate.set()
            for x, future in zip(requests, futures, strict=True):
                y = future.result(WAIT_S)["y"]
                assert y.dtype == np.float32
                np.testing.assert_allclose(y, x / 2 + 2)
    finally:
        gate.set()
        batcher.close(WAIT_S)
        model.unload()
    assert sum(seen) == sum(len(x) for x in requests)
    assert max(seen) <= 8 and max(seen) > 1


def test_batches_are_padded_to_allowed_sizes_with_the_last_tasks_first_row(make_batcher):
    run = FakeRun(gate_open=False)
    batcher = make_batcher(run, max_batch_size=8, allowed_batch_sizes=(2, 4, 8))
    with submitters(batcher, 4, run.gate) as pool:
        first = hold_worker(batcher, run, pool)
        a = pool.submit(batcher.submit, "serving_default", {"x": np.array([[1.0]])}, ["y"])
        wait_until(lambda: batcher.num_enqueued_tasks() == 1)
        b = pool.submit(batcher.submit, "serving_default", {"x": np.array([[2.0], [3.0]])}, ["y"])
        wait_until(lambda: batcher.num_enqueued_tasks() == 2)
        run.gate.set()
        assert first.result(WAIT_S)["y"].tolist() == [[200.0]]
        assert a.result(WAIT_S)["y"].tolist() == [[2.0]]
        assert b.result(WAIT_S)["y"].tolist() == [[4.0], [6.0]]
    assert run.batch_sizes == [2, 4]  # 1 -> 2 and 3 -> 4
    assert run.calls[0][1]["x"].tolist() == [[100.0], [100.0]]
    assert run.calls[1][1]["x"].tolist() == [[1.0], [2.0], [3.0], [2.0]]
    assert batcher.stats().padding_rows == 2 and batcher.stats().rows == 4


def test_timeout_closes_a_partial_batch(make_batcher):
    run = FakeRun()
    batcher = make_batcher(run, max_batch_size=100, batch_timeout_micros=20_000)
    out = batcher.submit("serving_default", {"x": np.array([[3.0]])}, ["y"])
    assert out["y"].tolist() == [[6.0]] and run.batch_sizes == [1]


def test_a_full_batch_does_not_wait_for_the_timeout(make_batcher):
    run = FakeRun()
    batcher = make_batcher(run, max_batch_size=4, batch_timeout_micros=3600 * 10**6)
    with submitters(batcher, 4, run.gate) as pool:
        futures = [
            pool.submit(batcher.submit, "serving_default", {"x": np.array([[float(i)]])}, ["y"])
            for i in range(4)
        ]
        assert [f.result(WAIT_S)["y"].tolist() for f in futures] == [
            [[0.0]],
            [[2.0]],
            [[4.0]],
            [[6.0]],
        ]
    assert run.batch_sizes == [4]


def test_full_queue_is_unavailable_at_once(make_batcher):
    run = FakeRun(gate_open=False)
    batcher = make_batcher(run, max_batch_size=1, max_enqueued_batches=1)
    with submitters(batcher, 2, run.gate) as pool:
        first = hold_worker(batcher, run, pool)
        waiting = pool.submit(batcher.submit, "serving_default", {"x": np.array([[1.0]])}, ["y"])
        wait_until(lambda: batcher.num_enqueued_tasks() == 1)
        with pytest.raises(AspireError) as err:
            batcher.submit("serving_default", {"x": np.array([[2.0]])}, ["y"])
        run.gate.set()
        assert waiting.result(WAIT_S)["y"].tolist() == [[2.0]]
        first.result(WAIT_S)
    assert err.value.code == "UNAVAILABLE"
    assert err.value.message == (
        "The batch scheduling queue to which this task was submitted is "
        "full; currently 1 batches enqueued and max_enqueued_batches is 1"
    )


def test_task_larger_than_max_batch_size_is_invalid(make_batcher):
    run = FakeRun()
    batcher = make_batcher(run, max_batch_size=4)
    with pytest.raises(AspireError) as err:
        batcher.submit("serving_default", {"x": np.zeros((5, 1))}, ["y"])
    assert (err.value.code, err.value.message) == (
        "INVALID_ARGUMENT",
        "Task size 5 is larger than maximum input batch size 4",
    )
    assert run.calls == []


def test_large_tasks_are_split_only_when_enabled(make_batcher):
    run = FakeRun()
    batcher = make_batcher(
        run, max_batch_size=8, enable_large_batch_splitting=True, max_execution_batch_size=2
    )
    x = np.arange(5.0).reshape(5, 1)
    assert batcher.submit("serving_default", {"x": x}, ["y"])["y"].tolist() == (x * 2).tolist()
    assert run.batch_sizes == [2, 2, 1]


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({}, "Batching Run() must have at least one input tensor"),
        ({"x": np.float32(1.0)}, "Batching Run() input tensors must have at least one dimension"),
        (
            {"x": np.zeros((2, 1)), "w": np.zeros((3, 1))},
            "Batching Run() input tensors must have equal 0th-dimension size",
        ),
    ],
)
def test_unbatchable_inputs_are_invalid(make_batcher, inputs, message):
    batcher = make_batcher(FakeRun())
    with pytest.raises(AspireError) as err:
        batcher.submit("serving_default", inputs, ["y"])
    assert (err.value.code, err.value.message) == ("INVALID_ARGUMENT", message)


def test_incompatible_tasks_never_share_a_batch(make_batcher):
    run = FakeRun(gate_open=False)
    batcher = make_batcher(run, max_batch_size=8)
    tasks = [
        ("serving_default", np.zeros((1, 1), np.float32), ["y"]),
        ("serving_default", np.zeros((1, 2), np.float32), ["y"]),  # other non-batch dims
        ("serving_default", np.zeros((1, 1), np.float64), ["y"]),  # other dtype
        ("serving_default", np.zeros((1, 1), np.float32), ["z"]),  # other outputs
        ("other", np.zeros((1, 1), np.float32), ["y"]),
    ]  # other signature
    with submitters(batcher, 11, run.gate) as pool:
        first = hold_worker(batcher, run, pool)
        futures = [pool.submit(batcher.submit, sig, {"x": x}, out) for sig, x, out in tasks * 2]
        wait_until(lambda: batcher.num_enqueued_tasks() == 10)
        run.gate.set()
        for future, (_, x, out) in zip(futures, tasks * 2, strict=True):
            assert future.result(WAIT_S)[out[0]].shape == x.shape
        first.result(WAIT_S)
    batches = [(sig, x["x"].dtype, x["x"].shape, outs) for sig, x, outs in run.calls[1:]]
    assert sorted(map(str, batches)) == sorted(
        str((sig, x.dtype, (2,) + x.shape[1:], out)) for sig, x, out in tasks
    )


def test_variable_length_inputs_are_padded_when_enabled(make_batcher):
    run = FakeRun(gate_open=False)
    batcher = make_batcher(run, max_batch_size=8, pad_variable_length_inputs=True)
    with submitters(batcher, 3, run.gate) as pool:
        first = hold_worker(batcher, run, pool)
        short = pool.submit(batcher.submit, "serving_default", {"x": np.array([[7.0, 8.0]])}, ["y"])
        wait_until(lambda: batcher.num_enqueued_tasks() == 1)
        long = pool.submit(
            batcher.submit, "serving_default", {"x": np.array([[1.0, 2.0, 3.0]])}, ["y"]
        )
        wait_until(lambda: batcher.num_enqueued_tasks() == 2)
        run.gate.set()
        assert short.result(WAIT_S)["y"].tolist() == [[14.0, 16.0, 14.0]]  # padded with x[0]
        assert long.result(WAIT_S)["y"].tolist() == [[2.0, 4.0, 6.0]]
        first.result(WAIT_S)
    assert run.batch_sizes == [1, 2]


def test_a_failing_run_reaches_every_task_of_the_batch_and_the_next_batch_works(make_batcher):
    run = FakeRun(gate_open=False, fail_with=AspireError("boom", "INVALID_ARGUMENT"))
    batcher = make_batcher(run, max_batch_size=8)
    with submitters(batcher, 4, run.gate) as pool:
        first = hold_worker(batcher, run, pool)
        futures = [
            pool.submit(batcher.submit, "serving_default", {"x": np.array([[x]])}, ["y"])
            for x in (1.0, POISON, 2.0)
        ]
        wait_until(lambda: batcher.num_enqueued_tasks() == 3)
        run.gate.set()
        assert first.result(WAIT_S)["y"].tolist() == [[200.0]]
        errors = [future.exception(WAIT_S) for future in futures]
    assert run.batch_sizes == [1, 3]
    assert all(
        isinstance(e, AspireError) and (e.code, e.message) == ("INVALID_ARGUMENT", "boom")
        for e in errors
    )
    assert len({id(e) for e in errors}) == 3  # each task raises its own exception object
    after = batcher.submit("serving_default", {"x": np.array([[5.0]])}, ["y"])
    assert after["y"].tolist() == [[10.0]]


def test_an_unexpected_exception_in_run_is_internal(make_batcher):
    batcher = make_batcher(FakeRun(fail_with=ValueError("bad shape")))
    with pytest.raises(AspireError) as err:
        batcher.submit("serving_default", {"x": np.array([[POISON]])}, ["y"])
    assert (err.value.code, err.value.message) == ("INTERNAL", "ValueError: bad shape")
    after = batcher.submit("serving_default", {"x": np.array([[5.0]])}, ["y"])
    assert after["y"].tolist() == [[10.0]]


def test_bad_outputs_fail_the_batch_with_tf_messages(make_batcher):
    outputs = iter([{"y": np.zeros(3)}, {"y": np.float32(1.0)}])
    batcher = make_batcher(lambda sig, inputs, out: next(outputs))
    with pytest.raises(AspireError) as err:
        batcher.submit("serving_default", {"x": np.zeros((2, 1))}, ["y"])
    assert (err.value.code, err.value.message) == (
        "FAILED_PRECONDITION",
        "Batched output tensor's 0th dimension does not equal the sum of "
        "the 0th dimension sizes of the input tensors",
    )
    with pytest.raises(AspireError) as err:
        batcher.submit("serving_default", {"x": np.zeros((2, 1))}, ["y"])
    assert (err.value.code, err.value.message) == (
        "FAILED_PRECONDITION",
        "Batched output tensor has 0 dimensions",
    )


def test_tasks_that_waited_past_their_timeout_are_not_run(make_batcher):
    run = FakeRun(gate_open=False)
    batcher = make_batcher(run, max_batch_size=8)
    with submitters(batcher, 2, run.gate) as pool:
        first = hold_worker(batcher, run, pool)
        late = pool.submit(
            batcher.submit, "serving_default", {"x": np.array([[1.0]])}, ["y"], timeout_ms=1
        )
        wait_until(lambda: batcher.num_enqueued_tasks() == 1)
        deadline = time.monotonic() + 0.01
        wait_until(lambda: time.monotonic() > deadline)
        run.gate.set()
        first.result(WAIT_S)
        with pytest.raises(AspireError) as err:
            late.result(WAIT_S)
    assert (err.value.code, err.value.message) == (
        "RESOURCE_EXHAUSTED",
        "Run() timeout exceeded while waiting in batching queue",
    )
    assert run.batch_sizes == [1]


def test_close_fails_queued_tasks_and_refuses_new_ones(make_batcher):
    run = FakeRun(gate_open=False)
    batcher = make_batcher(run, max_batch_size=8)
    with submitters(batcher, 4, run.gate) as pool:
        first = hold_worker(batcher, run, pool)
        queued = [
            pool.submit(batcher.submit, "serving_default", {"x": np.array([[1.0]])}, ["y"])
            for _ in range(3)
        ]
        wait_until(lambda: batcher.num_enqueued_tasks() == 3)
        batcher.close(timeout_s=0)
        for future in queued:
            error = future.exception(WAIT_S)
            assert isinstance(error, AspireError)
            assert (error.code, error.message) == ("UNAVAILABLE", CLOSED_MESSAGE)
        run.gate.set()
        assert first.result(WAIT_S)["y"].tolist() == [[200.0]]  # the running batch finishes
    with pytest.raises(AspireError) as err:
        batcher.submit("serving_default", {"x": np.array([[1.0]])}, ["y"])
    assert err.value.code == "UNAVAILABLE"
    batcher.close(timeout_s=WAIT_S)
    assert run.batch_sizes == [1]
