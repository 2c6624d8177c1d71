"""TF Serving's server flags as they set a router's servers (deployments/router/servers.py):
--grpc_channel_arguments, --grpc_max_threads, --rest_api_num_threads, --grpc_socket_path and
--rest_api_enable_cors_support. Each test starts an Ingress in-process on loopback, with a small
gRPC service (raw bytes: Size answers its request's size at once, Hold waits until the test lets
it go) and a small ASGI app, or the real REST API around a stub router core."""

import asyncio
import http.client
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

import grpc
import pytest

from config.options import ServerOptions
from core.errors import AspireError
from deployments.router.auth import BearerAuth
from deployments.router.servers import Ingress
from deployments.router.tfs_rest import RestApi

WAIT_S = 30.0  # the longest any state may take to come about on a loaded machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still not true after {WAIT_S:.0f} s: {what}")
        time.sleep(0.005)


class Held:
    """Handlers that wait, on the Ingress's loop, until the test releases them one at a time."""

    def __init__(self) -> None:
        self.entered = 0  # handlers started
        self.running = 0  # handlers started and not finished
        self._gates: list[asyncio.Event] = []
        self.loop: asyncio.AbstractEventLoop | None = None

    async def hold(self) -> None:
        gate = asyncio.Event()
        self._gates.append(gate)
        self.entered += 1
        self.running += 1
        try:
            await gate.wait()
        finally:
            self.running -= 1

    def release_one(self) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(lambda: self._gates.pop(0).set())


def grpc_service(held: Held):
    async def size(request: bytes, context) -> bytes:
        return b"%d" % len(request)

    async def hold(request: bytes, context) -> bytes:
        await held.hold()
        return b"done"

    handlers = {
        "Size": grpc.unary_unary_rpc_method_handler(size),
        "Hold": grpc.unary_unary_rpc_method_handler(hold),
    }
    generic = grpc.method_handlers_generic_handler("aspire.test.Flags", handlers)
    return lambda server: server.add_generic_rpc_handlers((generic,))


def rest_app(held: Held):
    async def app(scope, receive, send):
        if scope["path"] == "/hold":
            await held.hold()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def start(held: Held, **options) -> Ingress:
    """An Ingress with `options`; a REST port too unless they name one, as a router has."""
    ingress = Ingress()
    held.loop = ingress.loop
    options.setdefault("rest_api_port", free_port())
    ingress.start(
        rest_app(held),
        ServerOptions(rest_api_host="127.0.0.1", **options),
        grpc_service(held),
    )
    return ingress


def test_stopping_a_grpc_only_ingress_never_waits_out_its_margin():
    # The loop used to close before stop() heard that the gRPC server had stopped, and stop()
    # then waited its whole margin (grace_s + 5 s) in about half the stops
    grace_s = 1.0
    for _ in range(6):
        ingress = start(Held(), rest_api_port=0, grpc_port=free_port())
        started = time.monotonic()
        ingress.stop(grace_s)
        assert not ingress.alive()
        assert time.monotonic() - started < grace_s + 5


def call(target: str, method: str, payload: bytes = b"x") -> bytes:
    with grpc.insecure_channel(target) as channel:
        return channel.unary_unary(f"/aspire.test.Flags/{method}")(payload, timeout=WAIT_S)


def code_of(target: str, method: str, payload: bytes = b"x") -> grpc.StatusCode:
    try:
        call(target, method, payload)
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


# ------------------------------------------------------------------ --grpc_channel_arguments
def test_a_channel_argument_overrides_the_max_receive_size_and_refuses_a_larger_message():
    held, port = Held(), free_port()
    ingress = start(
        held,
        grpc_port=port,
        grpc_channel_arguments=(("grpc.max_receive_message_length", 1024),),
    )
    try:
        target = f"127.0.0.1:{port}"
        assert call(target, "Size", b"a" * 1000) == b"1000"
        assert code_of(target, "Size", b"a" * 2048) == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        ingress.stop()


def test_without_channel_arguments_a_large_message_is_accepted():
    held, port = Held(), free_port()
    ingress = start(held, grpc_port=port)
    try:
        big = b"a" * (8 * 1024 * 1024)  # over gRPC's own default of 4 MiB
        assert call(f"127.0.0.1:{port}", "Size", big) == b"%d" % len(big)
    finally:
        ingress.stop()


# ------------------------------------------------------------------ --grpc_max_threads
def test_grpc_max_threads_refuses_rpcs_beyond_n_in_flight_until_one_finishes():
    held, port = Held(), free_port()
    ingress = start(held, grpc_port=port, grpc_max_threads=2)
    target = f"127.0.0.1:{port}"
    try:
        with ThreadPoolExecutor(2) as pool:
            holding = [pool.submit(call, target, "Hold") for _ in range(2)]
            wait_for(lambda: held.running == 2, "two RPCs held")
            with pytest.raises(grpc.RpcError) as refused:
                call(target, "Size")
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            # grpc core's words (TF Serving's sync server says "Server Threadpool Exhausted")
            assert refused.value.details() == "Concurrent RPC limit exceeded!"
            held.release_one()
            first_done = next(as_completed(holding, timeout=WAIT_S))
            assert first_done.result() == b"done"
            # the server counts the RPC out once it has sent its status: wait for that state
            wait_for(lambda: code_of(target, "Size") == grpc.StatusCode.OK, "a slot is free")
            assert held.running == 1  # the other one is still held, and counted
            held.release_one()
            assert [f.result() for f in holding] == [b"done", b"done"]
    finally:
        ingress.stop()


def test_without_grpc_max_threads_many_rpcs_run_at_once():
    held, port = Held(), free_port()
    ingress = start(held, grpc_port=port)
    target = f"127.0.0.1:{port}"
    try:
        with ThreadPoolExecutor(20) as pool:
            holding = [pool.submit(call, target, "Hold") for _ in range(20)]
            wait_for(lambda: held.running == 20, "twenty RPCs held")
            assert call(target, "Size") == b"1"
            for _ in holding:
                held.release_one()
            assert all(f.result() == b"done" for f in holding)
    finally:
        ingress.stop()


# ------------------------------------------------------------------ --rest_api_num_threads
def get(port: int, path: str) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT_S)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_rest_api_num_threads_makes_the_next_request_wait_not_fail_until_one_finishes():
    held, port = Held(), free_port()
    ingress = start(held, rest_api_port=port, grpc_port=0, rest_api_num_threads=2)
    gate = ingress.rest_gate
    assert gate is not None and gate.limit == 2
    try:
        with ThreadPoolExecutor(3) as pool:
            first = [pool.submit(get, port, "/hold") for _ in range(2)]
            wait_for(lambda: held.running == 2, "two requests held")
            third = pool.submit(get, port, "/hold")
            wait_for(lambda: gate.waiting == 1, "the third request waits for a slot")
            assert (gate.in_progress, held.entered) == (2, 2)  # not in the app yet
            assert not third.done()  # waiting, not refused
            held.release_one()
            wait_for(lambda: held.entered == 3, "the third request runs once one finished")
            assert (gate.in_progress, gate.waiting) == (2, 0)
            held.release_one()
            held.release_one()
            answers = [f.result() for f in [*first, third]]
        assert [(status, body) for status, _, body in answers] == [(200, b"ok")] * 3
        wait_for(lambda: gate.in_progress == 0, "every slot is given back")
    finally:
        ingress.stop()


def test_without_rest_api_num_threads_nothing_wraps_the_app():
    held, port = Held(), free_port()
    ingress = start(held, rest_api_port=port, grpc_port=0)
    try:
        assert ingress.rest_gate is None
        assert ingress._http is not None and ingress._http.config.app.__name__ == "app"
        assert get(port, "/")[0] == 200
    finally:
        ingress.stop()


def test_starting_the_rest_server_leaves_the_process_s_log_handlers_open():
    # Serve's replica logger buffers into a MemoryHandler over its file; uvicorn's default
    # logging config (dictConfig) closed it, and a Serve controller that restarted then failed
    # its check of every router and replaced them all (the head's loss)
    import logging.handlers

    logger = logging.getLogger("aspire.test.handlers")
    target = logging.StreamHandler()
    buffered = logging.handlers.MemoryHandler(100, target=target)
    logger.addHandler(buffered)
    ingress = start(Held(), grpc_port=0)
    try:
        assert buffered.target is target
    finally:
        ingress.stop()
        logger.removeHandler(buffered)


# ------------------------------------------------------------------ --grpc_socket_path
def test_grpc_is_served_on_the_unix_socket_as_well_as_the_port(tmp_path):
    path = str(tmp_path / "grpc.sock")
    held, port = Held(), free_port()
    ingress = start(held, grpc_port=port, grpc_socket_path=path)
    try:
        assert call(f"unix:{path}", "Size", b"unix") == b"4"
        assert call(f"127.0.0.1:{port}", "Size", b"tcp") == b"3"
    finally:
        ingress.stop()


def test_the_unix_socket_alone_serves_grpc_with_the_port_off(tmp_path):
    path = str(tmp_path / "grpc.sock")
    held = Held()
    ingress = start(held, grpc_port=0, grpc_socket_path=path)
    try:
        assert call(f"unix:{path}", "Size") == b"1"
    finally:
        ingress.stop()


def test_a_stale_socket_file_that_nothing_listens_on_is_replaced(tmp_path):
    path = str(tmp_path / "grpc.sock")
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(path)  # left behind: the file stays, nothing listens
    assert os.path.exists(path)
    held = Held()
    ingress = start(held, grpc_port=0, grpc_socket_path=path)
    try:
        assert call(f"unix:{path}", "Size") == b"1"
    finally:
        ingress.stop()


def test_a_socket_another_process_listens_on_is_left_to_it(tmp_path):
    path = str(tmp_path / "grpc.sock")
    other = socket.socket(socket.AF_UNIX)
    other.bind(path)
    other.listen(1)
    held, port = Held(), free_port()
    try:
        ingress = start(held, grpc_port=port, grpc_socket_path=path)
        try:
            assert ingress.alive()
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(path)  # still the other listener's
                accepted, _ = other.accept()
                accepted.close()
            assert call(f"127.0.0.1:{port}", "Size") == b"1"  # the router serves its port
        finally:
            ingress.stop()
    finally:
        other.close()


def test_a_second_router_replica_on_the_node_leaves_the_socket_to_the_first(tmp_path):
    path = str(tmp_path / "grpc.sock")
    held_a, held_b = Held(), Held()
    port_a, port_b = free_port(), free_port()
    first = start(held_a, grpc_port=port_a, grpc_socket_path=path)
    try:
        second = start(held_b, grpc_port=port_b, grpc_socket_path=path)
        try:
            assert second.alive()
            assert call(f"127.0.0.1:{port_b}", "Size") == b"1"
            with ThreadPoolExecutor(1) as pool:
                over_unix = pool.submit(call, f"unix:{path}", "Hold")
                wait_for(lambda: held_a.running + held_b.running == 1, "one RPC held")
                assert (held_a.running, held_b.running) == (1, 0)  # the first replica's
                held_a.release_one()
                assert over_unix.result() == b"done"
        finally:
            second.stop()
    finally:
        first.stop()


def test_the_socket_is_taken_over_once_its_replica_stopped(tmp_path):
    path = str(tmp_path / "grpc.sock")
    first = start(Held(), grpc_port=0, grpc_socket_path=path)
    first.stop()
    second = start(Held(), grpc_port=0, grpc_socket_path=path)
    try:
        assert call(f"unix:{path}", "Size") == b"1"
    finally:
        second.stop()


# ------------------------------------------------------------------ --rest_api_enable_cors_support
class StubCore:
    """The router core as RestApi sees it, with no model: every name is unknown."""

    def experiment_key(self, name):
        return None  # no sticky experiment here

    def resolve(self, name, version, label, key=None):
        raise AspireError(f"Servable not found for request: Latest({name})", "NOT_FOUND")

    def record(self, *args) -> None:
        pass

    async def ask_manager(self, method, *args, timeout_s=None):
        return "# metrics\n" if method == "metrics_page" else {}


def request(port: int, method: str, path: str, body: bytes | None = None, **headers):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT_S)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()


TFS_CORS = {
    "access-control-allow-origin": "*",
    "access-control-allow-methods": "POST, GET",
    "access-control-allow-headers": "Content-Type",
}


@pytest.fixture(scope="module", params=[False, True], ids=["cors_off", "cors_on"])
def rest_server(request):
    api = RestApi(StubCore(), BearerAuth(), 1 << 20, "/metrics", enable_cors=request.param)
    ingress, port = Ingress(), free_port()
    ingress.start(api, ServerOptions(rest_api_host="127.0.0.1", rest_api_port=port, grpc_port=0))
    yield request.param, port
    ingress.stop()


V1_CASES = [
    ("OPTIONS", "/v1/models/m:predict", {"Origin": "http://example.com"}, 200),
    ("OPTIONS", "/v1/models/m:predict", {}, 400),  # a preflight without Origin
    ("POST", "/v1/models/m:predict", {"Content-Type": "application/json"}, 404),
    ("GET", "/v1/models/m/versions/x", {}, 400),  # malformed
]


@pytest.mark.parametrize("method,path,headers,status", V1_CASES)
def test_cors_headers_are_on_every_v1_response_exactly_when_enabled(
    rest_server, method, path, headers, status
):
    enabled, port = rest_server
    body = b'{"instances": [1]}' if method == "POST" else None
    got_status, got = request(port, method, path, body, **headers)
    assert got_status == status
    cors = {k: v for k, v in got.items() if k.startswith("access-control-")}
    assert cors == (TFS_CORS if enabled else {})


@pytest.mark.parametrize("path", ["/healthz", "/metrics", "/elsewhere"])
def test_responses_outside_v1_never_carry_cors_headers(rest_server, path):
    _, port = rest_server
    status, got = request(port, "GET", path)
    assert status in (200, 404)
    assert not any(k.startswith("access-control-") for k in got)
