"""Aspire's own front door: the REST and gRPC servers that run inside each router replica.

Ray Serve's proxy would add a hop to every request (client -> proxy -> router -> version), and on
a 2-core machine that hop costs more than the model (bench/README.md). So each router replica
listens on the REST and gRPC ports itself and calls the version's replicas directly
(deployments/router/replica_client.py): no Ray hop per request. Serve still runs, places,
health-checks and restarts the routers; its proxy is disabled.

Several router replicas on one node share the ports: the REST socket is bound with SO_REUSEPORT
and gRPC sets it by default, so the kernel spreads connections over them. The servers run on
their own thread and event loop, so a slow request handler never blocks Serve's replica loop.

TF Serving's server flags, as they set these servers (docs/operations.md, "Server flags"):
--grpc_channel_arguments override the gRPC server's options of the same name;
--grpc_max_threads bounds the RPCs one router serves at once (beyond: RESOURCE_EXHAUSTED);
--rest_api_num_threads bounds the REST requests one router handles at once (the rest wait);
--grpc_socket_path serves gRPC on a UNIX socket too, from one router replica per node.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import socket
import ssl
import stat
import threading
from typing import TYPE_CHECKING, Callable, Sequence

from config.options import HttpLimits, ServerOptions
from deployments.router.tls import RouterTls
from deployments.wire.direct import new_event_loop

if TYPE_CHECKING:  # imported where they run, in _serve
    import grpc.aio
    import uvicorn

log = logging.getLogger("aspire.ingress")

# TF Serving accepts gRPC messages up to INT32_MAX bytes (SetMaxMessageSize(kint32max)).
GRPC_MAX_MESSAGE_BYTES = 2**31 - 1


def grpc_server_options(options: ServerOptions) -> list[tuple[str, int | str]]:
    """The gRPC server's channel arguments: Aspire's, overridden by --grpc_channel_arguments of
    the same name, to which TF Serving's builder also gives the last word."""
    merged: dict[str, int | str] = {
        "grpc.max_receive_message_length": GRPC_MAX_MESSAGE_BYTES,
        "grpc.max_send_message_length": GRPC_MAX_MESSAGE_BYTES,
        "grpc.so_reuseport": 1,
    }
    merged.update(options.grpc_channel_arguments)
    return list(merged.items())


class RestGate:
    """--rest_api_num_threads: TF Serving runs each REST request on one of N threads, and the
    others wait in its executor's queue. Here at most `limit` requests are handled at once per
    router replica, and the rest wait their turn in order (never refused): the ASGI app runs
    under an asyncio.Semaphore. uvicorn's limit_concurrency would answer 503 instead."""

    def __init__(self, app, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.in_progress = 0  # requests being handled
        self.waiting = 0  # requests waiting for one of them to finish
        self._slots = asyncio.Semaphore(limit)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.in_progress += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_progress -= 1
            self._slots.release()


def _someone_listens(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            return False  # no file, or a stale one that nothing listens on
        except OSError:
            return True  # a full backlog, or no right to connect: not ours to take
        return True


def claim_socket_path(path: str) -> int | None:
    """The right to serve gRPC on the UNIX socket `path` on this node: an exclusive flock on
    `path`.lock, whose descriptor is returned, to be held while serving; None when another router
    replica holds it, or another process listens on `path`. A UNIX socket has one listener
    (SO_REUSEPORT does not spread them), and gRPC unlinks the file before it binds, so a second
    binder would silently take the path from the first. Holding the lock, a socket file that
    nothing listens on is left from a run that died, and is removed."""
    lock = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock)
        log.info("gRPC UNIX socket %s is served by another router replica on this node", path)
        return None
    if _someone_listens(path):
        os.close(lock)
        log.warning("gRPC UNIX socket %s: another process listens on it; not served here", path)
        return None
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    return lock


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
        self._socket_lock: int | None = None  # held while this replica serves grpc_socket_path
        self.rest_gate: RestGate | None = None  # set with --rest_api_num_threads
        self._http_limits = HttpLimits()
        self.options = ServerOptions()
        self.tls: RouterTls | None = None  # --ssl_config_file: TLS on both ports

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
        self.tls = RouterTls(options.ssl_config_file) if options.ssl_config_file else None
        host, rest_port, grpc_port = options.rest_api_host, options.rest_api_port, options.grpc_port
        if options.bind_node_ip:  # --bind_node_ip: the address Ray knows this node by
            import ray

            host = ray.util.get_node_ip_address()
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
            if self._socket_lock is not None:  # another router replica may take the path now
                os.close(self._socket_lock)
                self._socket_lock = None

    async def _serve(self, asgi_app, rest_sock, host: str, grpc_port: int, add_servicers) -> None:
        import uvicorn

        socket_path = self.options.grpc_socket_path
        if grpc_port or socket_path:
            import grpc

            # --grpc_max_threads: grpc.aio has no thread pool; it bounds RPCs in flight
            max_rpcs = self.options.grpc_max_threads
            self._grpc = grpc_server = grpc.aio.server(
                interceptors=self._grpc_interceptors,
                options=grpc_server_options(self.options),
                maximum_concurrent_rpcs=max_rpcs if max_rpcs > 0 else None,
            )
            add_servicers(grpc_server)
            addresses = []
            if grpc_port:
                addresses.append(f"[{host}]:{grpc_port}" if ":" in host else f"{host}:{grpc_port}")
            if socket_path:  # TF Serving: AddListeningPort("unix:" + path), same credentials
                try:
                    self._socket_lock = claim_socket_path(socket_path)
                except OSError as exc:
                    self._error = OSError(f"cannot listen for gRPC on unix:{socket_path}: {exc}")
                    self._ready.set()
                    return
                if self._socket_lock is not None:
                    addresses.append("unix:" + socket_path)
            for address in addresses:
                try:
                    if self.tls is not None:
                        bound = grpc_server.add_secure_port(address, self.tls.grpc_credentials())
                    else:
                        bound = grpc_server.add_insecure_port(address)
                except RuntimeError as exc:
                    bound, self._error = 0, OSError(f"cannot listen for gRPC on {address}: {exc}")
                if not bound:
                    self._error = self._error or OSError(f"cannot listen for gRPC on {address}")
                    self._ready.set()
                    return
            # no address: only a UNIX socket, which another router replica on this node
            # serves; the server runs without one, so this replica stays up for its REST port
            await grpc_server.start()
        if rest_sock is None:  # gRPC only (--rest_api_port=0)
            self._ready.set()
            if self._grpc is not None:
                await self._grpc.wait_for_termination()
            return
        if self.options.rest_api_num_threads > 0:  # else nothing on the request path
            asgi_app = self.rest_gate = RestGate(asgi_app, self.options.rest_api_num_threads)
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
            ssl_context_factory=None if self.tls is None else self._rest_ssl_context,
            # uvicorn's own logging config would go through logging.config.dictConfig, which
            # closes every handler of the process, Serve's included: a Serve controller that
            # restarts (the head's loss) then fails its check of this replica and replaces it
            log_config=None,
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

    def _rest_ssl_context(self, _config, _default) -> ssl.SSLContext:
        assert self.tls is not None
        return self.tls.rest_context()  # moves each handshake to the newest certificates

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

        done = asyncio.run_coroutine_threadsafe(shutdown(), self.loop)
        # The thread ends once both servers have stopped: wait for it, not for `done`, whose
        # result can be lost when the loop closes right after the coroutine returns (gRPC only:
        # the serving coroutine ends with the gRPC server, and the loop with it)
        self._thread.join(grace_s + 5)
        if self._thread.is_alive():
            log.warning("ingress shutdown: the servers still run %.0f s after stop", grace_s + 5)
        elif done.done() and not done.cancelled() and done.exception() is not None:
            log.warning("ingress shutdown: %s", done.exception())
