"""The direct data path: each version replica serves its own small gRPC service, and routers call
it over a channel they keep per replica, with no Ray actor call per request.

Why: a Serve handle call costs more CPU than the model on small models (bench/README.md): the
router runs Serve's routing loop and the replica receives a Ray actor call. Serve still places,
health-checks, restarts and drains the replicas, and tells every router which replicas run
(its long poll); only the request bytes take this path.

Wire contract, shared by `ReplicaService` (replica side) and `deployments/replica_client.py`:
1. Service `aspire.Servable`, unary methods, raw bytes both ways. The REST verbs (`predict`,
   `classify`, `regress`) take the REST body as the client sent it (JSON) and answer the JSON
   body; `metadata` takes nothing and answers GET /metadata's JSON body; the gRPC methods
   (`Predict`, `Classify`, `Regress`, `MultiInference`, `GetModelMetadata`) take TF Serving's
   serialized request and answer its serialized response. The router never parses either on
   the success path.
2. Every answer is one status byte (the TF status code's number, 0 = OK) followed by the payload
   on OK or the UTF-8 error message otherwise (`encode_answer`/`decode_answer`). A gRPC status
   other than OK is therefore never the model's answer: it means the replica is gone, stopping,
   or the call's deadline passed.
3. Calls carry the cluster's data-plane key in metadata (`KEY_HEADER`); a call without it is
   refused with PERMISSION_DENIED before its body is looked at, so the port opens no way around
   the routers' bearer tokens.
4. Messages up to 2 GiB - 1 both ways (Serve's own replica transport caps them at 4 MB).
5. The service runs on its own thread and event loop; the work runs on the replica's inference
   pool. `stop(grace_s)` refuses new calls (routers retry them on another replica) and lets the
   calls in flight finish for up to `grace_s`.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import threading
from typing import Awaitable, Callable

from deployments.errors import CODES, AspireError

log = logging.getLogger("aspire.replica_service")

SERVICE = "aspire.Servable"
REST_METHODS = ("predict", "classify", "regress", "metadata")
GRPC_METHODS = ("Predict", "Classify", "Regress", "MultiInference", "GetModelMetadata")
KEY_HEADER = "x-aspire-data-key"
MAX_MESSAGE_BYTES = 2**31 - 1
METADATA_KEY = "aspire_port"  # the replica metadata entry routers read (Serve's record_replica_metadata)

_OK = b"\x00"


def encode_answer(code: str, payload: bytes | str) -> bytes:
    """One status byte, then the payload (OK) or the message."""
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    return (_OK if code == "OK" else bytes((CODES.index(code),))) + payload


def decode_answer(answer: bytes) -> bytes:
    """The payload of an OK answer; raises the AspireError an error answer carries."""
    if answer[:1] == _OK:
        return answer[1:]
    if not answer:
        raise AspireError("Empty answer from the replica", "INTERNAL")
    code = CODES[answer[0]] if answer[0] < len(CODES) else "UNKNOWN"
    raise AspireError(answer[1:].decode("utf-8", "replace"), code)


Handler = Callable[[str, bytes], Awaitable[bytes]]


class ReplicaService:
    """A grpc.aio server on its own thread that answers `aspire.Servable` with `handler`
    (method name, request bytes -> answer bytes, already encoded with `encode_answer`)."""

    def __init__(self, handler: Handler, key: str, host: str = "0.0.0.0") -> None:
        self._handler = handler
        self._key = key.encode()
        self._host = host
        self.port: int | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._server = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout_s: float = 30.0) -> int:
        """Listen on a port the OS picks; returns it. Raises if the server cannot start."""
        self._thread = threading.Thread(target=self._run, name="aspire-replica-service", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError(f"replica service did not start in {timeout_s:.0f} s")
        if self._error is not None:
            raise self._error
        return self.port

    def _run(self) -> None:
        from deployments.ingress import new_event_loop
        self.loop = new_event_loop()
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self._error = self._error or exc
            self._ready.set()
        finally:
            self.loop.close()

    async def _serve(self) -> None:
        import grpc
        self._server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0)])
        handlers = {m: grpc.unary_unary_rpc_method_handler(self._method(m))
                    for m in (*REST_METHODS, *GRPC_METHODS)}
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),))
        address = f"[{self._host}]:0" if ":" in self._host else f"{self._host}:0"
        self.port = self._server.add_insecure_port(address)
        if not self.port:
            raise OSError(f"cannot listen for the replica service on {address}")
        await self._server.start()
        self._ready.set()
        await self._server.wait_for_termination()

    def _method(self, method: str):
        handler, key = self._handler, self._key

        async def call(request: bytes, context) -> bytes:
            given = dict(context.invocation_metadata()).get(KEY_HEADER, "")
            if not hmac.compare_digest(given.encode() if isinstance(given, str) else given, key):
                import grpc
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, "missing or wrong data-plane key")
            return await handler(method, request)
        return call

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._error is None

    def stop(self, grace_s: float) -> None:
        """Refuse new calls; calls in flight get up to `grace_s` to finish."""
        if self._server is None or self.loop is None or not self.alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._server.stop(grace_s), self.loop).result(grace_s + 5)
        except Exception as exc:  # noqa: BLE001 - best effort on the way out
            log.warning("replica service shutdown: %s", exc)
        self._thread.join(5)
