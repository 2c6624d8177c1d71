"""The routers' REST server with slow and idle clients (deployments/router/servers.py): a connection
that never finishes its headers is answered 408 and closed, an idle keep-alive connection is
closed, a connection past the per-router limit gets 503 at once, all with TF Serving's error
body; a few hundred slow connections held open do not slow down normal requests. Real sockets
on loopback, uvicorn as the routers run it, a trivial ASGI app in place of the REST API."""

import json
import socket
import statistics
import time

import pytest

from config.options import HttpLimits, ServerOptions
from deployments.router.servers import Ingress

LIMITS = HttpLimits(header_timeout_s=1.0, idle_timeout_s=1.0, max_connections=400)
# generous: a loaded 2-core machine may be slow to run the timers, never this slow
WAIT_S = 30 * LIMITS.header_timeout_s


async def app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b'{"ok": true}'})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    ingress, port = Ingress(), free_port()
    ingress.start(
        app,
        ServerOptions(
            rest_api_host="127.0.0.1", rest_api_port=port, grpc_port=0, http_limits=LIMITS
        ),
    )
    yield port
    ingress.stop()


def connect(port) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
    return sock


def read_until_closed(sock) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def request(port) -> float:
    """One complete GET on a new connection; its latency."""
    started = time.perf_counter()
    with connect(port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    return time.perf_counter() - started


def error_of(answer: bytes) -> tuple[str, str]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0].decode(), json.loads(body)["error"]


def test_a_connection_without_complete_headers_is_answered_408_and_closed(server):
    with connect(server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n")  # never the blank line
        opened = time.monotonic()
        answer = read_until_closed(sock)
        took = time.monotonic() - opened
    status, error = error_of(answer)
    assert status == "HTTP/1.1 408 Request Timeout"
    assert error == "Request headers not received within 1 s (--rest_api_header_timeout_s)"
    assert took >= LIMITS.header_timeout_s * 0.9  # not before the timeout


def test_a_connection_that_sends_nothing_is_closed_too(server):
    with connect(server) as sock:
        assert error_of(read_until_closed(sock))[0] == "HTTP/1.1 408 Request Timeout"


def test_a_second_request_that_stalls_on_a_kept_alive_connection_is_closed(server):
    with connect(server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET / HTTP/1.1\r\n")  # the next request stalls in its headers
        assert error_of(read_until_closed(sock))[0] == "HTTP/1.1 408 Request Timeout"


def test_an_idle_keep_alive_connection_is_closed(server):
    with connect(server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        answer = read_until_closed(sock)  # the answer, then the close once idle
    assert answer.startswith(b"HTTP/1.1 200") and answer.count(b"HTTP/1.1") == 1


def test_hundreds_of_slow_connections_are_closed_and_normal_requests_keep_their_latency(server):
    baseline = statistics.median(request(server) for _ in range(30))
    slow = []
    for _ in range(300):
        sock = connect(server)
        sock.sendall(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-")  # stalls mid-header
        slow.append(sock)
    try:
        during = statistics.median(request(server) for _ in range(30))
        closed = 0
        for sock in slow:
            if error_of(read_until_closed(sock))[0] == "HTTP/1.1 408 Request Timeout":
                closed += 1
    finally:
        for sock in slow:
            sock.close()
    print(
        f"\nmedian request with 300 slow connections held: {during * 1e3:.2f} ms, "
        f"without: {baseline * 1e3:.2f} ms ({during / baseline:.2f}x)"
    )
    assert closed == len(slow)
    assert during < 10 * baseline  # idle sockets cost the event loop nothing per request


def test_a_connection_past_the_limit_is_answered_503_at_once():
    ingress, port = Ingress(), free_port()
    ingress.start(
        app,
        ServerOptions(
            rest_api_host="127.0.0.1",
            rest_api_port=port,
            grpc_port=0,
            http_limits=HttpLimits(max_connections=3),
        ),
    )
    held = [connect(port) for _ in range(3)]
    try:
        for sock in held:  # each is in: a request on it is answered
            sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        with connect(port) as extra:
            status, error = error_of(read_until_closed(extra))
        assert status == "HTTP/1.1 503 Service Unavailable"
        assert error == "Too many connections: this router holds 3 (--rest_api_max_connections)"
    finally:
        for sock in held:
            sock.close()
        ingress.stop()
