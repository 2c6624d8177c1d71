"""The direct data path's handshake and its TLS, without Ray (deployments/wire/direct.py,
internal_tls.py): a replica's call service and a router's link over loopback, with a relay between
them that records every byte both ways, raw clients that break the handshake, and fake replicas
that do not know the key."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import secrets
import ssl

import pytest

from deployments.replica.call_service import ReplicaService
from deployments.router.replica_client import ReplicaLink
from deployments.wire import internal_tls
from deployments.wire.direct import (
    ANSWER_HEADER,
    CALL,
    CALL_HEADER,
    CHALLENGE_BYTES,
    HELLO_MAGIC,
    METHOD_NUMBERS,
    NONCE_BYTES,
    PROOF_BYTES,
    RESPONSE_BYTES,
    challenge,
    decode_answer,
    encode_answer,
    new_nonce,
    replica_proof,
    router_proof,
)
from tests.support.certs import CertAuthority

PAYLOAD = b'{"instances": ["plaintext-payload-0123456789"]}'
CALL_FRAME = CALL_HEADER.pack(CALL, 1, METHOD_NUMBERS["predict"], len(PAYLOAD)) + PAYLOAD


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


class EchoReplica:
    """A call service whose calls answer their method and payload, and are recorded."""

    def __init__(self, key: str) -> None:
        self.calls: list[bytes] = []
        self.service = ReplicaService(self.submit, key, "127.0.0.1")
        self.port = self.service.start()

    def submit(self, method: str, payload: bytes, key: str = "") -> asyncio.Future:
        self.calls.append(payload)
        future = self.service.loop.create_future()
        future.set_result(encode_answer("OK", method.encode() + b":" + payload))
        return future


@pytest.fixture
def key() -> str:
    return secrets.token_urlsafe(24)  # as config/options.py makes the data-plane key


@pytest.fixture
def start_replica(key):
    started: list[EchoReplica] = []

    def start() -> EchoReplica:
        started.append(EchoReplica(key))
        return started[-1]

    yield start
    for replica in started:
        replica.service.stop(1.0)


class Relay:
    """A TCP relay to `target` that records each connection's bytes, router to replica (`up`)
    and back (`down`)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.streams: list[tuple[bytearray, bytearray]] = []
        self.relays: list[asyncio.Task] = []
        self.port = 0
        self._server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> Relay:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        """Once every relayed connection ended (the client closed its end)."""
        assert self._server is not None
        self._server.close()
        await asyncio.gather(*self.relays)

    async def _relay(self, client_reader, client_writer) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.relays.append(task)
        up, down = bytearray(), bytearray()
        self.streams.append((up, down))
        replica_reader, replica_writer = await asyncio.open_connection("127.0.0.1", self.target)
        await asyncio.gather(
            _pipe(client_reader, replica_writer, up), _pipe(replica_reader, client_writer, down)
        )

    def captured(self) -> bytes:
        return b"".join(bytes(up) + bytes(down) for up, down in self.streams)


async def _pipe(reader, writer, record: bytearray) -> None:
    try:
        while data := await reader.read(65536):
            record += data
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


def key_forms(key: str) -> list[bytes]:
    """The key as sent before (UTF-8), its hex and base64 forms, and the random bytes it encodes."""
    raw = key.encode()
    secret = base64.urlsafe_b64decode(key + "=" * (-len(key) % 4))
    assert len(secret) == 24
    forms = [raw, secret]
    for value in (raw, secret):
        forms += [value.hex().encode(), value.hex().upper().encode()]
        forms += [base64.b64encode(value), base64.urlsafe_b64encode(value)]
    return forms


async def call_through_relay(port: int, key: str) -> Relay:
    """One call from a router's link through a recording relay; the relay once both ends closed."""
    async with Relay(port) as relay:
        link = ReplicaLink("r1", "127.0.0.1", relay.port, 64, key)
        assert decode_answer(await link.call("predict", PAYLOAD, 10)) == b"predict:" + PAYLOAD
        link.close()  # the relay recorded each byte before it passed it on
    return relay


async def answer_to(port: int, opening) -> tuple[bytes, bytes]:
    """On a new connection: reads the replica's nonce, sends `opening(nonce)` and a call, and
    returns the nonce and the first bytes the replica sends next (b"": it closed the connection
    without a word)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    got = await reader.readexactly(CHALLENGE_BYTES)
    assert got.startswith(HELLO_MAGIC)
    nonce = got[len(HELLO_MAGIC) :]
    writer.write(opening(nonce) + CALL_FRAME)
    first = await reader.read(65536)
    writer.close()
    return nonce, first


# ------------------------------------------------------------------ what crosses the network
def test_a_call_through_a_recording_relay_never_carries_the_key(start_replica, key):
    replica = start_replica()
    relay = run(call_through_relay(replica.port, key))
    captured = relay.captured()
    assert PAYLOAD in captured  # the relay saw the traffic in clear
    assert [(bytes(up[:15]), bytes(down[:15])) for up, down in relay.streams] == [
        (HELLO_MAGIC, HELLO_MAGIC)
    ]
    for form in key_forms(key):
        assert form not in captured


def test_the_handshake_is_paid_once_per_connection_and_calls_carry_nothing_of_it(
    start_replica, key
):
    replica = start_replica()

    async def main():
        async with Relay(replica.port) as relay:
            link = ReplicaLink("r1", "127.0.0.1", relay.port, 64, key)
            answers = await asyncio.gather(*(link.call("predict", PAYLOAD, 10) for _ in range(20)))
            assert {decode_answer(a) for a in answers} == {b"predict:" + PAYLOAD}
            link.close()
            return relay

    relay = run(main())
    ((up, down),) = relay.streams  # one connection for 20 concurrent calls
    assert len(up) == RESPONSE_BYTES + 20 * len(CALL_FRAME)
    answer = encode_answer("OK", b"predict:" + PAYLOAD)
    assert len(down) == CHALLENGE_BYTES + PROOF_BYTES + 20 * (ANSWER_HEADER.size + len(answer))


# ------------------------------------------------------------------ the replica's checks
@pytest.mark.parametrize(
    "opening, warned",
    [
        (lambda nonce, mine: HELLO_MAGIC + mine + router_proof(b"not the key", nonce, mine), True),
        (lambda nonce, mine: HELLO_MAGIC + mine + os.urandom(PROOF_BYTES), True),
        (lambda nonce, mine: b"ASPIRE-CALLS/1\n" + mine + os.urandom(PROOF_BYTES), False),
    ],
    ids=["proof-under-another-key", "random-proof", "previous-protocol"],
)
def test_a_client_with_a_wrong_proof_is_closed_before_any_call_runs(
    start_replica, key, caplog, opening, warned
):
    replica = start_replica()

    with caplog.at_level(logging.WARNING, logger="aspire.replica_service"):
        _, first = run(answer_to(replica.port, lambda nonce: opening(nonce, new_nonce())))
    assert first == b""  # closed: no proof, no answer
    assert replica.calls == []
    warnings = [r.getMessage() for r in caplog.records if r.name == "aspire.replica_service"]
    assert warnings == (["closed a connection with a wrong data-plane key"] if warned else [])


def test_the_replicas_own_proof_is_not_accepted_as_the_routers(start_replica, key):
    replica = start_replica()

    def reflected(nonce: bytes) -> bytes:  # the right key, the other side's label
        mine = new_nonce()
        return HELLO_MAGIC + mine + replica_proof(key.encode(), nonce, mine)

    assert run(answer_to(replica.port, reflected))[1] == b""
    assert replica.calls == []


def test_a_replayed_router_handshake_is_refused_on_a_new_connection(start_replica, key):
    replica = start_replica()
    relay = run(call_through_relay(replica.port, key))
    ((up, down),) = relay.streams
    captured_response = bytes(up[:RESPONSE_BYTES])
    assert replica.calls == [PAYLOAD]

    nonce, first = run(answer_to(replica.port, lambda nonce: captured_response))
    assert nonce != bytes(down[len(HELLO_MAGIC) : CHALLENGE_BYTES])  # new for this connection
    assert first == b""
    assert replica.calls == [PAYLOAD]  # only the original call ran


def test_a_connection_that_does_not_finish_the_handshake_in_time_is_closed(
    start_replica, monkeypatch
):
    monkeypatch.setattr("deployments.replica.call_service.HANDSHAKE_TIMEOUT_S", 0.2)
    replica = start_replica()

    async def main():
        reader, writer = await asyncio.open_connection("127.0.0.1", replica.port)
        got = await reader.read()  # the challenge, then the close
        writer.close()
        return got

    assert len(run(main())) == CHALLENGE_BYTES
    assert replica.calls == []


# ------------------------------------------------------------------ the router's checks
def fake_replica_proof(response: bytes, nonce: bytes) -> bytes:
    router_nonce = response[len(HELLO_MAGIC) : len(HELLO_MAGIC) + NONCE_BYTES]
    return {
        "random": os.urandom(PROOF_BYTES),
        "another-key": replica_proof(b"not the key", nonce, router_nonce),
        "reflected": response[-PROOF_BYTES:],  # the router's own proof sent back
    }


@pytest.mark.parametrize("strategy", ["random", "another-key", "reflected"])
def test_a_fake_replica_without_the_key_is_rejected_and_gets_no_call(key, strategy):
    received: list[bytes] = []

    async def fake(reader, writer):
        nonce = new_nonce()
        writer.write(challenge(nonce))
        response = await reader.readexactly(RESPONSE_BYTES)
        answer = encode_answer("OK", b"the fake model's answer")
        writer.write(fake_replica_proof(response, nonce)[strategy])
        writer.write(ANSWER_HEADER.pack(1, len(answer)) + answer)
        received.append(await reader.read())  # whatever the router writes until it closes
        writer.close()

    async def main():
        server = await asyncio.start_server(fake, "127.0.0.1", 0)
        link = ReplicaLink("r1", "127.0.0.1", server.sockets[0].getsockname()[1], 64, key)
        with pytest.raises(ConnectionError, match="did not prove the data-plane key"):
            await link.call("predict", PAYLOAD, 10)
        while not received:
            await asyncio.sleep(0.01)
        server.close()

    run(main())
    assert received == [b""]  # no call frame was written


def test_a_peer_that_never_answers_the_handshake_fails_the_call_in_transport(key, monkeypatch):
    monkeypatch.setattr("deployments.router.replica_client.HANDSHAKE_TIMEOUT_S", 0.2)

    async def silent(reader, writer):
        await reader.read()
        writer.close()

    async def main():
        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        link = ReplicaLink("r1", "127.0.0.1", server.sockets[0].getsockname()[1], 64, key)
        with pytest.raises(ConnectionError, match="no handshake within 0.2 s"):
            await link.call("predict", PAYLOAD, 10)
        server.close()

    run(main())


# ------------------------------------------------------------------ internal TLS
@pytest.fixture
def tls_env(tmp_path, monkeypatch):
    ca = CertAuthority.create(tmp_path / "ca")
    node = ca.issue(tmp_path / "node", "node")
    monkeypatch.setenv("RAY_USE_TLS", "1")
    monkeypatch.setenv("RAY_TLS_SERVER_CERT", str(node.cert))
    monkeypatch.setenv("RAY_TLS_SERVER_KEY", str(node.key))
    monkeypatch.setenv("RAY_TLS_CA_CERT", str(ca.cert))
    return ca


def test_with_internal_tls_a_call_succeeds_and_nothing_crosses_in_clear(
    tls_env, start_replica, key
):
    replica = start_replica()
    relay = run(call_through_relay(replica.port, key))
    captured = relay.captured()
    assert len(captured) > len(PAYLOAD)
    assert PAYLOAD not in captured and b"plaintext-payload" not in captured
    assert HELLO_MAGIC not in captured  # the handshake runs inside TLS
    for form in key_forms(key):
        assert form not in captured


def _client_context(ca: CertAuthority, identity=None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cafile=ca.cert)
    if identity is not None:
        context.load_cert_chain(identity.cert, identity.key)
    return context


async def tls_opening(port: int, context: ssl.SSLContext | None) -> bytes:
    """What the service sends to a client that connects with `context` (None: plain TCP, which
    writes the router's half of a handshake) until it closes; b"" when TLS fails."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        if context is None:
            writer.write(HELLO_MAGIC + new_nonce() + os.urandom(PROOF_BYTES) + CALL_FRAME)
        got = await reader.read()
        writer.close()
        return got
    except (ssl.SSLError, ConnectionError):
        return b""


@pytest.mark.parametrize("client", ["no-certificate", "another-ca", "plain-tcp"])
def test_with_internal_tls_a_client_without_a_ca_signed_certificate_is_refused(
    tls_env, start_replica, tmp_path, client
):
    replica = start_replica()
    other = CertAuthority.create(tmp_path / "other", "other-ca").issue(tmp_path / "rogue", "rogue")
    context = {
        "no-certificate": _client_context(tls_env),
        "another-ca": _client_context(tls_env, other),
        "plain-tcp": None,
    }[client]
    assert run(tls_opening(replica.port, context)) == b""  # not even the challenge
    assert replica.calls == []


def test_with_internal_tls_the_router_refuses_a_replica_the_ca_did_not_sign(
    tls_env, start_replica, tmp_path, key, monkeypatch
):
    replica = start_replica()  # signed by the cluster's CA, which the router below does not trust
    other_ca = CertAuthority.create(tmp_path / "other", "other-ca")
    rogue = other_ca.issue(tmp_path / "rogue", "rogue")
    monkeypatch.setenv("RAY_TLS_SERVER_CERT", str(rogue.cert))
    monkeypatch.setenv("RAY_TLS_SERVER_KEY", str(rogue.key))
    monkeypatch.setenv("RAY_TLS_CA_CERT", str(other_ca.cert))

    async def main():
        link = ReplicaLink("r1", "127.0.0.1", replica.port, 64, key)
        with pytest.raises(ConnectionError, match="certificate verify failed"):
            await link.call("predict", PAYLOAD, 10)

    run(main())
    assert replica.calls == []


def test_internal_tls_follows_rays_setting(tls_env, monkeypatch):
    assert internal_tls.server_context() is not None
    assert internal_tls.client_context() is not None
    for off in ("0", "false", ""):
        monkeypatch.setenv("RAY_USE_TLS", off)
        assert internal_tls.server_context() is None and internal_tls.client_context() is None
    monkeypatch.setenv("RAY_USE_TLS", "true")
    monkeypatch.delenv("RAY_TLS_CA_CERT")
    with pytest.raises(internal_tls.InternalTLSError, match="RAY_TLS_CA_CERT is not set"):
        ReplicaService(lambda *a: asyncio.Future(), "k", "127.0.0.1")
    monkeypatch.setenv("RAY_TLS_CA_CERT", "/nonexistent/ca.crt")
    with pytest.raises(internal_tls.InternalTLSError, match="cannot load the TLS files"):
        internal_tls.client_context()
