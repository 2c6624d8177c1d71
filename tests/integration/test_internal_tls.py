"""Ray's TLS settings put the direct data path under mutual TLS too: `aspire serve` on an embedded
Ray started with RAY_USE_TLS and its certificate files (as on every node of a cluster) answers
predictions through the direct path, and the replica's call port speaks only TLS: a plain TCP
client gets no challenge, one with a CA-signed certificate gets the ASPIRE-CALLS challenge after
its TLS handshake, one with a certificate of another CA is refused at the handshake."""

from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
import sys

import pytest
import requests

from deployments.wire.direct import CHALLENGE_BYTES, HELLO_MAGIC
from tests.integration.conftest import DATA, Served, free_port
from tests.support.certs import CertAuthority

pytestmark = pytest.mark.ray

MODEL, VERSION = "half_plus_two", 123

# Run in a process of its own with Ray's TLS settings, so this test process's Ray stays as it is
PING = """
import json, sys, ray
from ray import serve
from core.names import NAMESPACE, app_name
ray.init(address=sys.argv[1], namespace=NAMESPACE, logging_level="ERROR", log_to_driver=False)
ping = serve.get_deployment_handle("servable", app_name(sys.argv[2], int(sys.argv[3])))
answer = ping.ping.remote().result(timeout_s=60)
print(json.dumps({"port": answer.service_port, "calls": answer.calls}))
"""


def node_ip() -> str:
    import ray.util

    return ray.util.get_node_ip_address()


@pytest.fixture(scope="module")
def ray_tls(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ray_tls")
    ca = CertAuthority.create(folder, "ca")
    node = ca.issue(folder, "node", hosts=("127.0.0.1", "localhost", node_ip()))
    env = {
        "RAY_USE_TLS": "1",
        "RAY_TLS_SERVER_CERT": str(node.cert),
        "RAY_TLS_SERVER_KEY": str(node.key),
        "RAY_TLS_CA_CERT": str(ca.cert),
    }
    rest = free_port()
    with Served(
        f"--model_name={MODEL}",
        f"--model_base_path={DATA / 'saved_model_half_plus_two_cpu'}",
        f"--rest_api_port={rest}",
        f"--port={free_port()}",
        "--rest_api_host=127.0.0.1",
        env=env,
    ) as served:
        address = re.search(r"Ray cluster address: (\S+)", "".join(served.out.lines)).group(1)
        yield served, env, address, rest, folder, ca, node
    assert served.exit_code == 0


def ping(env: dict, address: str) -> dict:
    import os

    r = subprocess.run(
        [sys.executable, "-c", PING, address, MODEL, str(VERSION)],
        capture_output=True,
        text=True,
        timeout=180,
        # Ray sends its token (~/.ray/auth_token, made by the embedded Ray) only for
        # address="auto" unless told to
        env={**os.environ, "RAY_AUTH_MODE": "token", **env},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_predictions_take_the_direct_path_under_rays_tls(ray_tls):
    served, env, address, rest, *_ = ray_tls
    url = f"http://127.0.0.1:{rest}/v1/models/{MODEL}:predict"
    session = requests.Session()
    # the router learns the replica's port from Serve's long poll; until then calls take Serve's
    # handle, so wait for the first direct answer before counting
    deadline_calls = 0
    before = ping(env, address)["calls"]
    while ping(env, address)["calls"]["direct"] == before["direct"]:
        assert session.post(url, json={"instances": [1.0]}, timeout=60).status_code == 200
        deadline_calls += 1
        assert deadline_calls < 500, "no call took the direct path"
    before = ping(env, address)["calls"]
    for i in range(20):
        r = session.post(url, json={"instances": [float(i)]}, timeout=60)
        assert r.json() == {"predictions": [i / 2 + 2]}
    after = ping(env, address)["calls"]
    assert after["direct"] == before["direct"] + 20


def read_exactly(sock, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def test_the_replicas_call_port_speaks_only_mutual_tls(ray_tls):
    served, env, address, rest, folder, ca, node = ray_tls
    port = ping(env, address)["port"]
    assert port
    host = node_ip()
    # plain TCP: the port waits for a TLS ClientHello, so bytes that are not one get no
    # challenge, only the connection closed
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(b"\x00" * 64)
        assert HELLO_MAGIC not in read_exactly(sock, CHALLENGE_BYTES)
    # TLS with the cluster's certificate: the handshake's challenge follows
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(ca.cert)
    context.load_cert_chain(node.cert, node.key)
    with socket.create_connection((host, port), timeout=30) as raw:
        with context.wrap_socket(raw) as sock:
            assert read_exactly(sock, CHALLENGE_BYTES).startswith(HELLO_MAGIC)
    # a certificate of another CA is refused
    other_ca = CertAuthority.create(folder / "other", "other-ca")
    stranger = other_ca.issue(folder / "other", "stranger")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(ca.cert)
    context.load_cert_chain(stranger.cert, stranger.key)
    with socket.create_connection((host, port), timeout=30) as raw:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            with context.wrap_socket(raw) as sock:
                # TLS 1.3: the server's refusal arrives with the first read
                if read_exactly(sock, CHALLENGE_BYTES) == b"":
                    raise ConnectionError("closed by the replica")
