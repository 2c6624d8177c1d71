"""Router side of the direct data path (deployments/replica/call_service.py has the wire contract).

`VersionApp` routes calls for one Serve application of a version:
1. Serve keeps the list of the application's running replicas current in the router (the
   handle's long poll); each replica publishes its service port in its replica metadata.
   `VersionApp` (opened by the router when the serving map names the application) keeps one
   connection per replica whose port it knows, opened on its first call;
   calls share it, many in flight at once. A connection is ready, and takes its first call, once
   both sides proved the data-plane key (the handshake of deployments/wire/direct.py, once per
   connection); with Ray's TLS on it speaks mutual TLS (deployments/wire/internal_tls.py).
2. A call goes to the replica with the fewest calls in flight from this router. While a
   replica's port is unknown, or Serve's list is not there yet, or every replica failed, the
   call takes Serve's handle instead (`acquire` returns None): Serve's own queueing and retries.
3. Limits, as Serve enforces them on its handle path: at most the replica's
   `max_ongoing_requests` calls in flight per replica from this router; past that, calls wait
   here in arrival order, and once `max_queued_requests` wait the next one is refused at once
   (RESOURCE_EXHAUSTED, 429). With several routers a replica can run up to (routers x
   max_ongoing_requests) calls; its inference pool queues the excess.
4. A replica that fails a call at the transport level (killed, stopping, unreachable) is
   skipped for `FAILED_SKIP_S` or until Serve's list changes; the router sends the call once
   more (deployments/router/core.py RouterCore.call).
5. A replica that leaves Serve's list (drained, replaced, scaled down) keeps its connection
   until its last call from this router ends, then the connection is closed.

Everything here runs on the router's ingress event loop; Serve's list is read, never written.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import time

from core.errors import AspireError
from core.ray_internals import handle_replicas, replica_node_ip
from deployments.wire.direct import (
    ANSWER_HEADER,
    CALL,
    CALL_HEADER,
    CANCEL,
    CHALLENGE_BYTES,
    HANDSHAKE_TIMEOUT_S,
    HELLO_MAGIC,
    KEY_LENGTH,
    KEYED_CALL,
    METADATA_KEY,
    METHOD_NUMBERS,
    PROOF_BYTES,
    new_nonce,
    replica_proof,
    response,
    set_nodelay,
)
from deployments.wire.internal_tls import InternalTLSError, client_context

FAILED_SKIP_S = 5.0


class _Answers(asyncio.Protocol):
    """The router's end of one connection to a replica: the handshake (`ready` is done once the
    replica proved the key), then answer frames."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._nonce = new_nonce()
        self._replica_nonce = b""
        self._proved = False  # the replica proved the key: its frames are read from now on
        self._refused = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, asyncio.Future] = {}
        self._buf = bytearray()
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        set_nodelay(transport)

    def _handshake(self) -> bool:
        """Answers the replica's challenge, then checks its proof; True once it is proved."""
        buf = self._buf
        if not self._replica_nonce:
            if bytes(buf[: len(HELLO_MAGIC)]) != HELLO_MAGIC[: len(buf)]:
                return self._refuse("it does not speak this protocol version")
            if len(buf) < CHALLENGE_BYTES:
                return False
            self._replica_nonce = bytes(buf[len(HELLO_MAGIC) : CHALLENGE_BYTES])
            del buf[:CHALLENGE_BYTES]
            assert self.transport is not None  # connection_made came first
            self.transport.write(response(self._key, self._replica_nonce, self._nonce))
        if len(buf) < PROOF_BYTES:
            return False
        expected = replica_proof(self._key, self._replica_nonce, self._nonce)
        if not hmac.compare_digest(bytes(buf[:PROOF_BYTES]), expected):
            return self._refuse("it did not prove the data-plane key")
        del buf[:PROOF_BYTES]
        self._proved = True
        if not self.ready.done():
            self.ready.set_result(None)
        return True

    def _refuse(self, why: str) -> bool:
        self._refused = True  # nothing more is read from this peer
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"not the replica: {why}"))
        if self.transport is not None:
            self.transport.close()
        return False

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        if not self._proved and (self._refused or not self._handshake()):
            return
        header = ANSWER_HEADER.size
        while len(buf) >= header:
            call_id, length = ANSWER_HEADER.unpack_from(buf)
            if len(buf) < header + length:
                return
            answer = bytes(buf[header : header + length])
            del buf[: header + length]
            future = self.pending.pop(call_id, None)
            if future is not None and not future.done():
                future.set_result(answer)

    def connection_lost(self, exc) -> None:
        self.closed = True
        if not self.ready.done():  # a replica that refused this router's proof closes here
            self.ready.set_exception(
                ConnectionError(f"closed during the handshake: {exc or 'closed by the replica'}")
            )
        lost = ConnectionError(f"connection to the replica lost: {exc or 'closed by the replica'}")
        for future in self.pending.values():
            if not future.done():
                future.set_exception(lost)
        self.pending.clear()


class ReplicaLink:
    """One replica: its connection (opened on first use, again after it drops) and this
    router's count of calls in flight on it."""

    __slots__ = (
        "replica_id",
        "host",
        "port",
        "max_ongoing",
        "ongoing",
        "failed_at",
        "retired",
        "_key",
        "_conn",
        "_connecting",
        "_next_id",
    )

    def __init__(self, replica_id: str, host: str, port: int, max_ongoing: int, key: str) -> None:
        self.replica_id, self.host, self.port, self.max_ongoing = (
            replica_id,
            host,
            port,
            max_ongoing,
        )
        self.ongoing = 0
        self.failed_at: float | None = None
        self.retired = False
        self._key = key.encode("utf-8")
        self._conn: _Answers | None = None
        self._connecting: asyncio.Future[_Answers] | None = None
        self._next_id = 0

    async def _connection(self) -> _Answers:
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        if self._connecting is None or self._connecting.done():
            # one attempt, shared by the calls that wait for it
            self._connecting = asyncio.ensure_future(self._open())
            self._connecting.add_done_callback(_retrieve)
        return await asyncio.shield(self._connecting)

    async def _open(self) -> _Answers:
        """A new connection whose handshake completed (deployments/wire/direct.py), kept as the
        link's connection; ConnectionError when it cannot be opened or the peer is not the
        replica."""
        where = f"the replica at {self.host}:{self.port}"
        try:
            tls = client_context()
        except InternalTLSError as exc:
            raise ConnectionError(f"cannot connect to {where}: {exc}") from None
        loop = asyncio.get_running_loop()
        conn: _Answers | None = None

        def made() -> _Answers:
            nonlocal conn
            conn = _Answers(self._key)
            return conn

        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                await loop.create_connection(made, self.host, self.port, ssl=tls)
                assert conn is not None  # made by the factory
                await conn.ready
        except OSError as exc:  # ConnectionError, ssl.SSLError, TimeoutError
            if conn is not None:
                if not conn.ready.done():
                    conn.ready.cancel()  # nothing waits for it any more
                if conn.transport is not None:
                    conn.transport.close()
            why = (
                f"no handshake within {HANDSHAKE_TIMEOUT_S:g} s"
                if isinstance(exc, TimeoutError)
                else str(exc)
            )
            raise ConnectionError(f"cannot connect to {where}: {why}") from None
        self._conn = conn
        return conn

    async def call(
        self, method: str, payload: bytes, timeout_s: float | None, key: bytes = b""
    ) -> bytes:
        """The replica's encoded answer; `key` (UTF-8) names the version in a shared host.
        Raises ConnectionError when the call failed in transport (safe to send again) and
        asyncio.TimeoutError past `timeout_s`; either way, and when the caller is cancelled,
        the replica is told to drop the call."""
        conn = await self._connection()
        transport = conn.transport  # set once the connection is made, before _connection returns
        if conn.closed or transport is None:  # lost while this call waited for it to open
            raise ConnectionError(f"connection to the replica at {self.host}:{self.port} closed")
        loop = asyncio.get_running_loop()
        self._next_id = call_id = (self._next_id + 1) & 0xFFFFFFFF
        future = loop.create_future()
        conn.pending[call_id] = future
        if key:
            size = KEY_LENGTH.size + len(key) + len(payload)
            transport.write(CALL_HEADER.pack(KEYED_CALL, call_id, METHOD_NUMBERS[method], size))
            transport.write(KEY_LENGTH.pack(len(key)) + key)
        else:
            transport.write(CALL_HEADER.pack(CALL, call_id, METHOD_NUMBERS[method], len(payload)))
        transport.write(payload)
        timer = None if timeout_s is None else loop.call_later(timeout_s, _expire, future)
        try:
            return await future
        except BaseException:
            if conn.pending.pop(call_id, None) is not None and not conn.closed:
                transport.write(CALL_HEADER.pack(CANCEL, call_id, 0, 0))
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and conn.transport is not None:
            conn.transport.close()


def _retrieve(future: asyncio.Future) -> None:
    """A connection attempt's failure is read even when every call that waited for it left."""
    if not future.cancelled():
        future.exception()


def _expire(future: asyncio.Future) -> None:
    if not future.done():
        future.set_exception(asyncio.TimeoutError())


class VersionApp:
    """Direct calls to one Serve application's replicas, with Serve's handle as the fallback."""

    def __init__(self, handle, key: str, max_queued_requests: int = -1) -> None:
        self.handle = handle
        self._key = key
        if not handle.is_initialized:
            handle._init()  # starts Serve's long poll of the replica list now, not on first call
        self.max_queued = max_queued_requests
        self._links: dict[str, ReplicaLink] = {}
        self._seen: tuple[int, int] = (0, -1)  # (id, len) of the Serve dict last read
        self._waiters: collections.deque[asyncio.Future] = collections.deque()

    def _refresh(self) -> None:
        replicas = handle_replicas(self.handle)
        if replicas is None:
            return
        seen = (id(replicas), len(replicas))
        if seen == self._seen:
            return
        self._seen = seen
        links = {}
        for replica_id, replica in list(replicas.items()):
            port = replica.replica_metadata.get(METADATA_KEY)
            ip = replica_node_ip(replica)
            if not port or not ip:
                continue
            key = replica_id.unique_id
            link = self._links.get(key)
            if link is None:
                link = ReplicaLink(key, ip, int(port), replica.max_ongoing_requests, self._key)
            links[key] = link
        for key, link in self._links.items():
            if key not in links:
                link.retired = True
                if link.ongoing == 0:
                    link.close()
        added = links.keys() - self._links.keys()
        self._links = links
        while added and self._waiters:  # new replicas have room: the waiting calls pick again
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def _pick(self, exclude: ReplicaLink | None) -> ReplicaLink | None:
        best, now = None, None
        for link in self._links.values():
            if link is exclude:
                continue
            if link.failed_at is not None:
                now = now or time.monotonic()
                if now - link.failed_at < FAILED_SKIP_S:
                    continue
                link.failed_at = None
            if best is None or link.ongoing < best.ongoing:
                best = link
        return best

    async def acquire(
        self, deadline: float | None, exclude: ReplicaLink | None = None
    ) -> ReplicaLink | None:
        """A replica slot for one call (release it with `release`), or None: use the handle.
        Raises RESOURCE_EXHAUSTED when max_queued_requests calls already wait, and
        asyncio.TimeoutError when `deadline` (time.monotonic()) passes while waiting."""
        self._refresh()
        link = self._pick(exclude)
        if link is None:
            return None
        if link.ongoing < link.max_ongoing:
            link.ongoing += 1
            return link
        if 0 <= self.max_queued <= len(self._waiters):
            raise AspireError(
                f"Too many requests for this servable: {self.max_queued} already wait for a "
                "replica at this router (max_queued_requests); retry later",
                "RESOURCE_EXHAUSTED",
            )
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            handed = await asyncio.wait_for(asyncio.shield(waiter), left)
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.result() is not None:
                self.release(waiter.result())  # a slot was handed over just as we gave up
            else:
                waiter.cancel()
                try:
                    self._waiters.remove(waiter)
                except ValueError:
                    pass
            raise
        return handed if handed is not None else await self.acquire(deadline, exclude)

    def release(self, link: ReplicaLink) -> None:
        """End of a call on `link`: its slot goes to the longest waiter, else back to the link."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if waiter.done():
                continue
            if link.retired or link.failed_at is not None:
                waiter.set_result(None)  # pick again: this replica is leaving
                break
            waiter.set_result(link)  # the slot passes on; the link's count stays the same
            return
        link.ongoing -= 1
        if link.retired and link.ongoing == 0:
            link.close()

    def failed(self, link: ReplicaLink) -> None:
        link.failed_at = time.monotonic()

    def usable(self) -> bool:
        """Whether a call may find a replica here: Serve's list not read yet, or a replica
        that has not failed a call in the last `FAILED_SKIP_S`."""
        self._refresh()
        if not self._links:
            return self._seen == (0, -1)
        now = time.monotonic()
        return any(
            link.failed_at is None or now - link.failed_at >= FAILED_SKIP_S
            for link in self._links.values()
        )

    def direct_replicas(self) -> int:
        """Replicas this router can call directly now (for status and tests)."""
        self._refresh()
        return sum(1 for link in self._links.values() if link.failed_at is None)

    def close(self) -> None:
        """The application is gone from the serving map: close its idle channels now, the
        others once their last call ends."""
        for link in self._links.values():
            link.retired = True
            if link.ongoing == 0:
                link.close()
        self._links = {}
