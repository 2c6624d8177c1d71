"""The direct data path without Ray: the replica's call service and the router's links over real
loopback TCP (deployments/replica/call_service.py, replica_client.py), the router's per-replica
limits and queue (VersionApp, with a stand-in for Serve's replica list), and the gRPC ModelSpec
scan."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import pytest

from core.errors import AspireError
from deployments.replica.call_service import ReplicaService
from deployments.router.replica_client import ReplicaLink, VersionApp
from deployments.router.tfs_grpc import model_spec_parts
from deployments.wire.direct import CallRefused, decode_answer, encode_answer, servable_key

KEY = "k" * 32


class Replica:
    """A ReplicaService whose calls echo their method and payload, or wait for `release`."""

    def __init__(self, hold: bool = False):
        self.hold = hold
        self.release = threading.Event()
        self.started: list[asyncio.Future] = []
        self.service = ReplicaService(self.submit, KEY, "127.0.0.1")
        self.port = self.service.start()

    def submit(self, method: str, payload: bytes, key: str = "") -> asyncio.Future:
        loop = self.service.loop
        if not self.hold:
            future = loop.create_future()
            echo = (key.encode() + b"|" if key else b"") + method.encode() + b":" + payload
            future.set_result(encode_answer("OK", echo))
            return future
        future = loop.run_in_executor(None, self._wait, method, payload)
        self.started.append(future)
        return future

    def _wait(self, method, payload):
        self.release.wait(30)
        return encode_answer("OK", payload)

    def stop(self, grace_s: float = 1.0):
        self.release.set()
        self.service.stop(grace_s)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_calls_round_trip_and_share_one_connection():
    replica = Replica()

    async def main():
        link = ReplicaLink("r1", "127.0.0.1", replica.port, 64, KEY)
        answers = await asyncio.gather(*(link.call("predict", b"%d" % i, 10) for i in range(200)))
        assert [decode_answer(a) for a in answers] == [b"predict:%d" % i for i in range(200)]
        assert len(replica.service._connections) == 1
        link.close()

    try:
        run(main())
    finally:
        replica.stop()


def test_keyed_calls_carry_the_servable_key_beside_plain_calls_on_one_connection():
    replica = Replica()

    async def main():
        link = ReplicaLink("r1", "127.0.0.1", replica.port, 64, KEY)
        keys = [servable_key(f"model-é{i}", i).encode() for i in range(50)]
        answers = await asyncio.gather(
            *(link.call("predict", b"%d" % i, 10, key) for i, key in enumerate(keys)),
            link.call("metadata", b"", 10),
        )
        assert [decode_answer(a) for a in answers[:-1]] == [
            key + b"|predict:%d" % i for i, key in enumerate(keys)
        ]
        assert decode_answer(answers[-1]) == b"metadata:"
        link.close()

    try:
        run(main())
    finally:
        replica.stop()


def test_error_answers_carry_the_tf_code_and_message():
    with pytest.raises(AspireError) as err:
        decode_answer(encode_answer("NOT_FOUND", "Servable not found"))
    assert (err.value.code, err.value.message) == ("NOT_FOUND", "Servable not found")


def test_a_payload_of_40_mb_crosses_both_ways():
    replica = Replica()
    payload = bytes(range(256)) * (40 * 2**20 // 256)

    async def main():
        link = ReplicaLink("r1", "127.0.0.1", replica.port, 64, KEY)
        assert decode_answer(await link.call("Predict", payload, 60)) == b"Predict:" + payload
        link.close()

    try:
        run(main())
    finally:
        replica.stop()


def test_a_wrong_key_gets_the_connection_closed_and_no_call_runs():
    replica = Replica(hold=True)

    async def main():
        link = ReplicaLink("r1", "127.0.0.1", replica.port, 64, "wrong")
        with pytest.raises(ConnectionError):
            await link.call("predict", b"{}", 10)

    try:
        run(main())
        assert replica.started == []
    finally:
        replica.stop()


def test_a_timed_out_call_is_cancelled_in_the_replica():
    replica = Replica(hold=True)

    async def main():
        link = ReplicaLink("r1", "127.0.0.1", replica.port, 64, KEY)
        with pytest.raises(asyncio.TimeoutError):
            await link.call("predict", b"{}", 0.2)
        for _ in range(100):  # the cancel frame reaches the replica
            if replica.started and replica.started[0].cancelled():
                break
            await asyncio.sleep(0.05)
        assert replica.started[0].cancelled()
        link.close()

    try:
        run(main())
    finally:
        replica.stop()


def test_stopping_lets_calls_in_flight_finish_and_refuses_new_ones():
    replica = Replica(hold=True)

    async def main():
        link = ReplicaLink("r1", "127.0.0.1", replica.port, 64, KEY)
        first = asyncio.ensure_future(link.call("predict", b"first", 30))
        while not replica.started:
            await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()
        stopping = loop.run_in_executor(None, replica.service.stop, 10.0)
        while not replica.service.stopping:
            await asyncio.sleep(0.01)
        with pytest.raises(CallRefused):  # a ConnectionError: the router sends it elsewhere
            decode_answer(await link.call("predict", b"late", 30))
        replica.release.set()
        assert decode_answer(await first) == b"first"
        await stopping
        with pytest.raises(ConnectionError):  # stopped: nothing listens any more
            await link.call("predict", b"after", 30)

    try:
        run(main())
    finally:
        replica.stop()


def test_a_replica_that_goes_away_fails_its_calls_in_flight_as_connection_errors():
    replica = Replica(hold=True)

    async def main():
        link = ReplicaLink("r1", "127.0.0.1", replica.port, 64, KEY)
        call = asyncio.ensure_future(link.call("predict", b"x", 30))
        while not replica.started:
            await asyncio.sleep(0.01)
        for connection in list(replica.service._connections):  # the process dies: its sockets close
            replica.service.loop.call_soon_threadsafe(connection._transport.abort)
        with pytest.raises(ConnectionError):
            await call

    try:
        run(main())
    finally:
        replica.stop()


# ------------------------------------------------------------------ VersionApp: limits and queue
class FakeReplicaId:
    def __init__(self, unique_id):
        self.unique_id = unique_id


def fake_handle(ports: list[int], max_ongoing: int):
    """A stand-in for a DeploymentHandle whose router holds Serve's list of running replicas."""
    replicas = {
        FakeReplicaId(f"r{i}"): SimpleNamespace(
            replica_metadata={"aspire_port": port},
            max_ongoing_requests=max_ongoing,
            _replica_info=SimpleNamespace(node_ip="127.0.0.1"),
        )
        for i, port in enumerate(ports)
    }
    request_router = SimpleNamespace(curr_replicas=replicas)
    return SimpleNamespace(
        is_initialized=True,
        _router=SimpleNamespace(_asyncio_router=SimpleNamespace(_request_router=request_router)),
    ), request_router


def test_calls_go_to_the_least_loaded_replica():
    async def main():
        handle, _ = fake_handle([1, 2], max_ongoing=10)
        app = VersionApp(handle, KEY, max_queued_requests=5)
        taken = [await app.acquire(None) for _ in range(6)]
        assert sorted(link.port for link in taken) == [1, 1, 1, 2, 2, 2]
        for link in taken:
            app.release(link)
        assert all(link.ongoing == 0 for link in taken)

    run(main())


def test_full_replicas_queue_calls_in_order_then_refuse_past_max_queued():
    async def main():
        handle, _ = fake_handle([1], max_ongoing=2)
        app = VersionApp(handle, KEY, max_queued_requests=3)
        running = [await app.acquire(None), await app.acquire(None)]
        waiting = [asyncio.ensure_future(app.acquire(None)) for _ in range(3)]
        await asyncio.sleep(0)
        with pytest.raises(AspireError) as err:  # the 4th waiting call: 429 at once
            await app.acquire(None)
        assert err.value.code == "RESOURCE_EXHAUSTED" and "max_queued_requests" in err.value.message
        app.release(running[0])  # the slot passes to the first waiter, not to a newcomer
        assert await asyncio.wait_for(waiting[0], 5) is running[0]
        await asyncio.sleep(0.05)
        assert not waiting[1].done() and running[0].ongoing == 2

    run(main())


def test_a_queued_call_times_out_at_its_deadline_and_leaves_the_queue():
    async def main():
        handle, _ = fake_handle([1], max_ongoing=1)
        app = VersionApp(handle, KEY, max_queued_requests=1)
        held = await app.acquire(None)
        with pytest.raises(asyncio.TimeoutError):
            await app.acquire(time.monotonic() + 0.1)
        assert not app._waiters  # its place is free again
        app.release(held)
        assert held.ongoing == 0

    run(main())


def test_a_failed_replica_is_skipped_and_a_new_one_wakes_the_queue():
    async def main():
        handle, request_router = fake_handle([1], max_ongoing=1)
        app = VersionApp(handle, KEY, max_queued_requests=5)
        held = await app.acquire(None)
        waiter = asyncio.ensure_future(app.acquire(None))
        await asyncio.sleep(0)
        # Serve starts a second replica: the waiting call takes it
        request_router.curr_replicas = {
            **request_router.curr_replicas,
            FakeReplicaId("r9"): SimpleNamespace(
                replica_metadata={"aspire_port": 9},
                max_ongoing_requests=1,
                _replica_info=SimpleNamespace(node_ip="127.0.0.1"),
            ),
        }
        app._refresh()
        assert (await waiter).port == 9
        app.failed(held)  # r1 failed: only r9 is picked, until Serve's list changes
        assert app.direct_replicas() == 1
        assert app._pick(None).port == 9

    run(main())


def test_without_a_known_port_the_call_takes_serve_s_handle():
    async def main():
        handle, request_router = fake_handle([1], max_ongoing=1)
        for replica in request_router.curr_replicas.values():
            replica.replica_metadata = {}
        app = VersionApp(handle, KEY)
        assert await app.acquire(None) is None

    run(main())


# ------------------------------------------------------------------ the gRPC ModelSpec scan
def test_model_spec_scan_finds_every_occurrence_and_skips_the_tensors():
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2

    request = predict_pb2.PredictRequest()
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.arange(1000, dtype=np.float32)))
    request.model_spec.name = "m"
    data = request.SerializeToString()
    extra = model_pb2.ModelSpec(signature_name="s").SerializeToString()
    data += b"\x0a" + bytes([len(extra)]) + extra  # a second occurrence: protobuf merges them
    parts = model_spec_parts(data)
    merged = model_pb2.ModelSpec.FromString(b"".join(parts))
    assert (merged.name, merged.signature_name) == ("m", "s")
    assert merged == predict_pb2.PredictRequest.FromString(data).model_spec


def test_model_spec_scan_tells_absent_from_malformed():
    from tensorflow_serving.apis import predict_pb2

    assert model_spec_parts(predict_pb2.PredictRequest().SerializeToString()) == []
    assert model_spec_parts(b"\x0a\x05ab") is None  # a length past the end
    assert model_spec_parts(b"\x0f") is None  # wire type 7 does not exist
    assert model_spec_parts(b"\x08\x01") is None  # field 1 must be a message


# ------------------------------------------------------------------ RouterCore: the REST timeout
class TimedOutReplica(Replica):
    """A replica whose TF session gave up first: every call answers TF's DEADLINE_EXCEEDED."""

    def submit(self, method: str, payload: bytes, key: str = "") -> asyncio.Future:
        future = self.service.loop.create_future()
        future.set_result(encode_answer("DEADLINE_EXCEEDED", "Timed out waiting for notification"))
        return future


def router_core(timeout_s, port):
    """A RouterCore without Ray: one version application whose only replica listens on `port`."""
    from deployments.router.core import RouterCore

    core = RouterCore.__new__(RouterCore)  # no manager, no serving-map thread
    core._timeout_s = timeout_s
    core._apps = {"app": VersionApp(fake_handle([port], max_ongoing=4)[0], KEY)}
    return core


@pytest.mark.parametrize(
    "timeout_s, message",
    [
        (0.5, "Request timed out after 500 ms (--rest_api_timeout_in_ms)"),  # the router's words
        (None, "Timed out waiting for notification"),  # no REST timeout: TF's own answer
    ],
)
def test_a_session_timeout_under_the_rest_timeout_answers_with_the_routers_message(
    timeout_s, message
):
    from core.contracts import VersionAddress

    replica = TimedOutReplica()
    try:
        core = router_core(timeout_s, replica.port)
        with pytest.raises(AspireError) as err:
            run(core.call(VersionAddress(apps=(("app", 1),)), "predict", b"{}"))
        assert (err.value.code, err.value.message) == ("DEADLINE_EXCEEDED", message)
    finally:
        replica.stop()
