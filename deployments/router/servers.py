"""Aspire's own front door: the REST and gRPC servers that run inside each router replica.

Ray Serve's proxy would add a hop to every request (client -> proxy -> router -> version), and on
a 2-core machine that hop costs more than the model (bench/README.md). So each router replica
listens on the REST and gRPC ports itself and calls the version's replicas directly
(deployments/router/replica_client.py): no Ray hop per request. Serve still runs, places,
health-checks and restarts the routers; its proxy is disabled.

Several router replicas on one node share the ports: the REST socket is bound with SO_REUSEPORT
and gRPC sets it by default, so the kernel spreads connections over them. The servers run on
their own thread and event loop, so a slow request handler never blocks Serve's replica loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from typing import TYPE_CHECKING, Callable, Sequence

from config.options import HttpLimits, ServerOptions
from deployments.wire.direct import new_event_loop

if TYPE_CHECKING:  # imported where they run, in _serve
    import grpc.aio
    import uvicorn

log = logging.getLogger("aspire.ingress")

# TF Serving accepts gRPC messages up to INT32_MAX bytes (SetMaxMessageSize(kint32max)).
GRPC_MAX_MESSAGE_BYTES = 2**31 - 1


def _refusal(status: str, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


def guarded_http_protocol(limits: HttpLimits) -> type:
    """uvicorn's httptools protocol, with the limits uvicorn lacks: it arms no timer before a
    connection's first response, so a client that never finishes its headers holds the
    connection (and a file descriptor) forever; and its concurrency limit counts connections
    only once their headers are in. Here a connection past `max_connections` is answered 503
    at once, and one whose headers are not complete `header_timeout_s` after it opened (or
    after its request began) is answered 408 and closed, both with TF Serving's error body."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    too_many = _refusal(
        "503 Service Unavailable",
        f"Too many connections: this router holds {limits.max_connections} "
        "(--rest_api_max_connections)",
    )
    too_slow = _refusal(
        "408 Request Timeout",
        f"Request headers not received within {limits.header_timeout_s:g} s "
        "(--rest_api_header_timeout_s)",
    )

    class GuardedHttpProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections:
                transport.write(too_many)
                transport.close()
                return
            self._arm()

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(limits.header_timeout_s, self._late)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _late(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.write(too_slow)
                self.transport.close()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return GuardedHttpProtocol


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port), shared with the node's other router replicas."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class Ingress:
    """Runs an ASGI app (REST) and a grpc.aio server on one background thread and loop.

    `start` returns once both ports listen, or raises the bind error: a router replica that
    cannot take its ports fails its constructor, and Serve reports the deployment as failed.
    """

    def __init__(self) -> None:
        self.loop = new_event_loop()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._http: uvicorn.Server | None = None
        self._grpc: grpc.aio.Server | None = None
        self._grpc_interceptors: tuple = ()
        self._http_limits = HttpLimits()
        self.options = ServerOptions()

    def start(
        self,
        asgi_app,
        options: ServerOptions,
        add_servicers: Callable[[object], None] | None = None,
        timeout_s: float = 30.0,
        grpc_interceptors: Sequence[object] = (),
    ) -> None:
        """Serve `asgi_app` on `options.rest_api_port` (0: no REST server) and the gRPC services
        `add_servicers` adds on `options.grpc_port` (0: none), with the options' limits.
        `grpc_interceptors`: grpc.aio server interceptors, run before every gRPC handler
        (deployments/router/auth.py's token check)."""
        self._grpc_interceptors = tuple(grpc_interceptors)
        self._http_limits = options.http_limits
        self.options = options
        host, rest_port, grpc_port = options.rest_api_host, options.rest_api_port, options.grpc_port
        rest_sock = listening_socket(host, rest_port) if rest_port else None
        self._thread = threading.Thread(
            target=self._run,
            name="aspire-ingress",
            daemon=True,
            args=(asgi_app, rest_sock, host, grpc_port, add_servicers),
        )
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError(f"ingress servers did not start in {timeout_s:.0f} s")
        if self._error is not None:
            raise self._error

    def _run(self, *spec) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._serve(*spec))
        except BaseException as exc:  # noqa: BLE001 - reported through alive()
            self._error = self._error or exc
            self._ready.set()
        finally:
            # finish what is still running (stop()'s own coroutine, whose caller waits for
            # it) before the loop closes
            pending = asyncio.all_tasks(self.loop)
            if pending:
                self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.close()

    async def _serve(self, asgi_app, rest_sock, host: str, grpc_port: int, add_servicers) -> None:
        import uvicorn

        if grpc_port:
            import grpc

            self._grpc = grpc_server = grpc.aio.server(
                interceptors=self._grpc_interceptors,
                options=[
                    ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE_BYTES),
                    ("grpc.max_send_message_length", GRPC_MAX_MESSAGE_BYTES),
                    ("grpc.so_reuseport", 1),
                ],
            )
            add_servicers(grpc_server)
            address = f"[{host}]:{grpc_port}" if ":" in host else f"{host}:{grpc_port}"
            try:
                bound = grpc_server.add_insecure_port(address)
            except RuntimeError as exc:
                bound, self._error = 0, OSError(f"cannot listen for gRPC on {address}: {exc}")
            if not bound:
                self._error = self._error or OSError(f"cannot listen for gRPC on {address}")
                self._ready.set()
                return
            await grpc_server.start()
        if rest_sock is None:  # gRPC only (--rest_api_port=0)
            self._ready.set()
            if self._grpc is not None:
                await self._grpc.wait_for_termination()
            return
        config = uvicorn.Config(
            asgi_app,
            interface="asgi3",
            lifespan="off",
            access_log=False,
            log_level="warning",
            proxy_headers=False,
            http=guarded_http_protocol(self._http_limits),
            # uvicorn annotates it int, but only hands it to loop.call_later (float seconds)
            timeout_keep_alive=self._http_limits.idle_timeout_s,  # type: ignore[arg-type]
            server_header=False,
        )
        self._http = http_server = uvicorn.Server(config)
        # Not the main thread: no signal handlers. uvicorn < 0.29 installs them unless this hook
        # is replaced; later ones (which lack it) skip them off the main thread by themselves
        http_server.install_signal_handlers = lambda: None  # type: ignore[attr-defined]
        serving = asyncio.ensure_future(http_server.serve(sockets=[rest_sock]))
        while not http_server.started and not serving.done():
            await asyncio.sleep(0.01)
        self._ready.set()
        await serving

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._error is None

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting, let requests in flight finish (up to `grace_s`), then close."""
        if self._thread is None or not self._thread.is_alive():
            return

        async def shutdown():
            if self._grpc is not None:
                await self._grpc.stop(grace_s)
            if self._http is not None:
                self._http.should_exit = True

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(grace_s + 5)
        except Exception as exc:  # noqa: BLE001 - best effort on the way out
            log.warning("ingress shutdown: %s", exc)
        self._thread.join(grace_s + 5)
