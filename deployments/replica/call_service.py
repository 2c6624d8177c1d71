"""The direct data path: each version replica serves its own small call service, and routers call
it over connections they keep per replica, with no Ray actor call per request.

Why: a Serve handle call costs more CPU than the model on small models (bench/README.md): the
router runs Serve's routing loop and the replica receives a Ray actor call. A gRPC service in
the replica cost about 0.7 ms of CPU per call on 2 cores (half of the replica's own time on
half_plus_two), so the hop is a framed protocol on plain TCP, run by the event loop's C code.
Serve still places, health-checks, restarts and drains the replicas, and tells every router
which replicas run (its long poll); only the request bytes take this path.

The wire contract (handshake, frames, methods, answers) is deployments/wire/direct.py. This side:
1. On accept it sends its challenge (a fresh nonce), checks the router's proof of the data-plane
   key before it reads any call, and proves the key back; a wrong proof closes the connection
   with one warning. With Ray's TLS on (`RAY_USE_TLS`), the port speaks only mutual TLS with a
   client certificate signed by Ray's CA (deployments/wire/internal_tls.py).
2. The service runs on its own thread and event loop; the work runs on the replica's inference
   pool. `stop(grace_s)` refuses new connections and calls (routers send those elsewhere), lets
   the calls in flight finish for up to `grace_s`, then closes every connection.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import ssl
import threading
import time
from typing import Callable

from deployments.wire.direct import (
    ANSWER_HEADER,
    CALL,
    CALL_HEADER,
    CANCEL,
    HANDSHAKE_TIMEOUT_S,
    HELLO_MAGIC,
    KEY_LENGTH,
    KEYED_CALL,
    MAX_PAYLOAD_BYTES,
    METHODS,
    NONCE_BYTES,
    REFUSED_ANSWER,
    RESPONSE_BYTES,
    challenge,
    encode_answer,
    new_event_loop,
    new_nonce,
    replica_proof,
    router_proof,
    set_nodelay,
)
from deployments.wire.internal_tls import server_context

log = logging.getLogger("aspire.replica_service")

# A submitted call: `submit(method, payload, key)` returns an asyncio future of the encoded
# answer; `key` is "" for a plain call, the servable key for a keyed one.
Submit = Callable[[str, bytes, str], "asyncio.Future[bytes]"]


class _Connection(asyncio.Protocol):
    """One router's connection: the handshake (direct.py), then call and cancel frames."""

    def __init__(self, service: "ReplicaService") -> None:
        self._service = service
        self._buf = bytearray()
        self._greeted = False
        self._nonce = new_nonce()
        self._calls: dict[int, asyncio.Future] = {}
        self._transport: asyncio.Transport  # set by connection_made, asyncio's first call
        self._expiry: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        self._transport = transport
        set_nodelay(transport)
        self._service._connections.add(self)
        transport.write(challenge(self._nonce))
        loop = asyncio.get_running_loop()
        self._expiry = loop.call_later(HANDSHAKE_TIMEOUT_S, self._handshake_expired)

    def _handshake_expired(self) -> None:
        if not self._greeted:
            self._transport.close()

    def connection_lost(self, exc) -> None:
        self._service._connections.discard(self)
        if self._expiry is not None:
            self._expiry.cancel()
        for future in self._calls.values():
            future.cancel()
        self._calls.clear()

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        if not self._greeted:
            if not self._read_hello():
                return
        header = CALL_HEADER.size
        while len(buf) >= header:
            kind, call_id, method, length = CALL_HEADER.unpack_from(buf)
            if kind == CANCEL:
                del buf[:header]
                future = self._calls.pop(call_id, None)
                if future is not None:
                    future.cancel()
                continue
            if kind not in (CALL, KEYED_CALL) or length > MAX_PAYLOAD_BYTES:
                self._transport.close()
                return
            if method >= len(METHODS):
                self._transport.close()
                return
            if len(buf) < header + length:
                return
            key = ""
            start = header
            if kind == KEYED_CALL:
                if length < KEY_LENGTH.size:
                    self._transport.close()
                    return
                (size,) = KEY_LENGTH.unpack_from(buf, header)
                start = header + KEY_LENGTH.size + size
                if start > header + length:
                    self._transport.close()
                    return
                key = bytes(buf[header + KEY_LENGTH.size : start]).decode("utf-8", "replace")
            payload = bytes(buf[start : header + length])
            del buf[: header + length]
            self._start(call_id, METHODS[method], payload, key)

    def _read_hello(self) -> bool:
        """The router's answer to the challenge: magic, its nonce, its proof of the key."""
        buf = self._buf
        if bytes(buf[: len(HELLO_MAGIC)]) != HELLO_MAGIC[: len(buf)]:
            self._transport.close()  # not a router of this protocol version
            return False
        if len(buf) < RESPONSE_BYTES:
            return False
        start = len(HELLO_MAGIC)
        router_nonce = bytes(buf[start : start + NONCE_BYTES])
        proof = bytes(buf[start + NONCE_BYTES : RESPONSE_BYTES])
        key = self._service.key
        if not hmac.compare_digest(proof, router_proof(key, self._nonce, router_nonce)):
            log.warning("closed a connection with a wrong data-plane key")
            self._transport.close()
            return False
        del buf[:RESPONSE_BYTES]
        self._greeted = True
        if self._expiry is not None:
            self._expiry.cancel()
        self._transport.write(replica_proof(key, self._nonce, router_nonce))
        return True

    def _start(self, call_id: int, method: str, payload: bytes, key: str) -> None:
        if self._service.stopping:  # the router sends it to another replica
            self._write(call_id, REFUSED_ANSWER)
            return
        future = self._service.submit(method, payload, key)
        self._calls[call_id] = future
        future.add_done_callback(lambda f: self._finish(call_id, f))

    def _finish(self, call_id: int, future: asyncio.Future) -> None:
        if self._calls.pop(call_id, None) is None or future.cancelled():
            return
        try:
            answer = future.result()
        except Exception as exc:  # noqa: BLE001 - a bug in the handler: the call fails, not the link
            log.exception("call failed in the replica")
            answer = encode_answer("INTERNAL", f"Internal error: {type(exc).__name__}")
        self._write(call_id, answer)

    def _write(self, call_id: int, answer: bytes) -> None:
        if not self._transport.is_closing():
            self._transport.write(ANSWER_HEADER.pack(call_id, len(answer)))
            self._transport.write(answer)

    def in_flight(self) -> int:
        return len(self._calls)


class ReplicaService:
    """The call service on its own thread: `submit(method, payload, key)` (called on the
    service's loop) answers each call."""

    def __init__(self, submit: Submit, key: str, host: str = "0.0.0.0") -> None:
        self.submit = submit
        self.key = key.encode("utf-8")
        self._host = host
        # Ray's TLS settings (deployments/wire/internal_tls.py): read here, so a bad setting
        # fails the start, not each connection
        self._tls: ssl.SSLContext | None = server_context()
        self.port: int | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopping = False
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[_Connection] = set()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout_s: float = 30.0) -> int:
        """Listen on a port the OS picks; returns it. Raises if the service cannot start."""
        self._thread = threading.Thread(
            target=self._run, name="aspire-replica-service", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError(f"replica service did not start in {timeout_s:.0f} s")
        if self._error is not None:
            raise self._error
        assert self.port is not None  # _run sets it before _ready
        return self.port

    def _run(self) -> None:
        self.loop = new_event_loop()
        asyncio.set_event_loop(self.loop)
        try:
            self._server = self.loop.run_until_complete(
                self.loop.create_server(
                    lambda: _Connection(self),
                    self._host,
                    0,
                    backlog=1024,
                    ssl=self._tls,
                    ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S if self._tls else None,
                )
            )
            self.port = self._server.sockets[0].getsockname()[1]
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self._error = exc
            self._ready.set()
            self.loop.close()
            return
        self._ready.set()
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._error is None

    def stop(self, grace_s: float) -> None:
        """Refuse new connections and calls; calls in flight get up to `grace_s` to finish."""
        loop, server, thread = self.loop, self._server, self._thread
        if loop is None or server is None or thread is None or not self.alive():
            return  # not started, or still starting (no server yet), or gone

        async def drain() -> None:
            self.stopping = True
            server.close()
            deadline = time.monotonic() + grace_s
            while any(c.in_flight() for c in self._connections) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            for connection in list(self._connections):
                connection._transport.close()
            loop.call_soon(loop.stop)

        try:
            asyncio.run_coroutine_threadsafe(drain(), loop).result(grace_s + 5)
        except Exception as exc:  # noqa: BLE001 - best effort on the way out
            log.warning("replica service shutdown: %s", exc)
        thread.join(5)
