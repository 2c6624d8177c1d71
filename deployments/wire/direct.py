"""The direct data path's wire contract: each version replica serves its own small call service
(deployments/replica/call_service.py), and routers call it over connections they keep per replica
(deployments/router/replica_client.py), with no Ray actor call per request.

Why a framed protocol on plain TCP rather than a Serve handle or gRPC: call_service.py.

Wire contract, shared by both sides (this module holds its constants and codecs):
1. A connection opens with a handshake in which each side proves it holds the cluster's
   data-plane key (config/options.py ReplicaOptions.data_key) without sending it, so a reader of
   the traffic between nodes learns nothing that lets it call a replica or pose as one:
   a. on accept, the replica sends `HELLO_MAGIC` and its nonce, `NONCE_BYTES` (32) fresh random
      bytes (`secrets`), new for every connection;
   b. the router answers `HELLO_MAGIC`, a nonce of its own (32 fresh random bytes) and its proof,
      HMAC-SHA256(key, `ROUTER_LABEL` + replica nonce + router nonce) (`router_proof`, 32 bytes),
      the key being the data-plane key's UTF-8 bytes;
   c. the replica checks the magic and the proof (`hmac.compare_digest`). A wrong proof gets the
      connection closed before any call is read (and one warning logged), so the port opens no
      way around the routers' bearer tokens; a replayed handshake fails, the replica's nonce
      being new. Otherwise the replica sends its own proof, HMAC-SHA256(key, `REPLICA_LABEL` +
      replica nonce + router nonce) (`replica_proof`, 32 bytes);
   d. the router checks that proof before it writes its first call: a listener without the key
      (not the replica Serve named) cannot answer calls as the model. A wrong proof or magic
      closes the connection, and its calls fail in transport.
   The two labels differ, so neither side's proof can be reflected as the other's. Either side
   closes a connection whose handshake has not completed within `HANDSHAKE_TIMEOUT_S`. The
   handshake is paid once per connection; calls carry nothing of it. It authenticates the
   connection's start only: against a man in the middle who alters traffic, and to keep the
   payloads private, turn on Ray's TLS (`RAY_USE_TLS`), which also wraps this connection in
   mutual TLS (deployments/wire/internal_tls.py); the handshake then runs inside TLS.
2. Then frames, in both directions, many calls in flight on one connection. A call is
   `CALL_HEADER` (frame type 1, call id, method number, payload length) and the payload; a
   cancel is `CALL_HEADER` with frame type 2 and no payload; an answer is `ANSWER_HEADER`
   (call id, length) and the answer. A keyed call (frame type 3, for a shared host that holds
   many versions, deployments/replica/shared_host.py) is a call whose payload starts with a 2-byte
   length and the servable key (`servable_key(name, version)`), then the request bytes. Integers are
   big-endian.
3. Methods (`METHODS`, numbered by position): the REST verbs (`predict`, `classify`,
   `regress`) take the REST body as the client sent it (JSON) and answer the JSON body;
   `metadata` takes nothing and answers GET /metadata's JSON body; the gRPC methods (`Predict`,
   `Classify`, `Regress`, `MultiInference`, `GetModelMetadata`) take TF Serving's serialized
   request and answer its serialized response; `v2_infer` and `v2_metadata` are the Open
   Inference Protocol's REST calls (framed as `V2_HEADER_LENGTH`, the JSON header's length or
   `V2_NO_BINARY`, then the header and the binary data), `v2_grpc_infer` its
   gRPC ModelInfer (a serialized ModelInferRequest in, ModelInferResponse out). The router
   parses none of them on the success path.
4. An answer is one status byte (the TF status code's number, 0 = OK) and then the payload on OK
   or the UTF-8 error message otherwise (`encode_answer`/`decode_answer`). Status `REFUSED`
   means the replica did not take the call (it is stopping). Neither a refusal nor a connection
   that closes or fails is the model's answer: the call failed in transport, and the router
   may send it again.
5. Payloads up to 2 GiB - 1 bytes both ways; a larger length closes the connection.
6. A cancelled call that has not started does not run; one that runs finishes (the TF session's
   run timeout bounds it) and its answer is dropped.
7. The service runs on its own thread and event loop; the work runs on the replica's inference
   pool. `stop(grace_s)` refuses new connections and calls (routers send those elsewhere), lets
   the calls in flight finish for up to `grace_s`, then closes every connection.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import struct

from core.errors import CODES, AspireError

METHODS = (
    "predict",
    "classify",
    "regress",
    "metadata",
    "Predict",
    "Classify",
    "Regress",
    "MultiInference",
    "GetModelMetadata",
    "v2_infer",
    "v2_metadata",
    "v2_grpc_infer",
)
METHOD_NUMBERS = {m: i for i, m in enumerate(METHODS)}
REST_METHODS = METHODS[:4]
HELLO_MAGIC = b"ASPIRE-CALLS/2\n"
NONCE_BYTES = 32
PROOF_BYTES = 32  # HMAC-SHA256
ROUTER_LABEL = b"aspire-calls/2 router proof\x00"
REPLICA_LABEL = b"aspire-calls/2 replica proof\x00"
CHALLENGE_BYTES = len(HELLO_MAGIC) + NONCE_BYTES  # what the replica sends first
RESPONSE_BYTES = len(HELLO_MAGIC) + NONCE_BYTES + PROOF_BYTES  # the router's answer
HANDSHAKE_TIMEOUT_S = 10.0
CALL_HEADER = struct.Struct("!BIBQ")  # frame type, call id, method number, payload length
ANSWER_HEADER = struct.Struct("!IQ")  # call id, answer length
CALL, CANCEL, KEYED_CALL = 1, 2, 3
KEY_LENGTH = struct.Struct("!H")
MAX_PAYLOAD_BYTES = 2**31 - 1
METADATA_KEY = (
    "aspire_port"  # the replica metadata entry routers read (Serve's record_replica_metadata)
)

_OK = b"\x00"
REFUSED = 255
REFUSED_ANSWER = bytes((REFUSED,)) + b"the replica is stopping"


class CallRefused(ConnectionError):
    """The replica did not take the call (it is stopping): send it elsewhere."""


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
    if answer[0] == REFUSED:
        raise CallRefused(answer[1:].decode("utf-8", "replace"))
    code = CODES[answer[0]] if answer[0] < len(CODES) else "UNKNOWN"
    raise AspireError(answer[1:].decode("utf-8", "replace"), code)


def servable_key(name: str, version: int) -> str:
    """How a keyed call names a version in a shared host."""
    return f"{version}:{name}"


def set_nodelay(transport) -> None:
    """Small frames go out at once (no Nagle delay waiting for the peer's ACK)."""
    import socket

    sock = transport.get_extra_info("socket")
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_BYTES)


def challenge(replica_nonce: bytes) -> bytes:
    """What the replica sends on accept."""
    return HELLO_MAGIC + replica_nonce


def router_proof(key: bytes, replica_nonce: bytes, router_nonce: bytes) -> bytes:
    return hmac.new(key, ROUTER_LABEL + replica_nonce + router_nonce, hashlib.sha256).digest()


def replica_proof(key: bytes, replica_nonce: bytes, router_nonce: bytes) -> bytes:
    return hmac.new(key, REPLICA_LABEL + replica_nonce + router_nonce, hashlib.sha256).digest()


def response(key: bytes, replica_nonce: bytes, router_nonce: bytes) -> bytes:
    """The router's answer to the replica's challenge: magic, its nonce, its proof."""
    return HELLO_MAGIC + router_nonce + router_proof(key, replica_nonce, router_nonce)


# A v2 REST call's payload: the length of its JSON header (V2_NO_BINARY: the whole body is JSON,
# no binary tensor data follows), then the body as the client sent it.
V2_HEADER_LENGTH = struct.Struct("!q")
V2_NO_BINARY = -1


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The event loop both sides run their servers and connections on: uvloop's, where there."""
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop ships with ray[serve]
        return asyncio.new_event_loop()
