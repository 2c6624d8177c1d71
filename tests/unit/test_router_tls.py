"""TLS on a router's ports (deployments/router/tls.py through servers.py's Ingress, no Ray): both
ports serve the configured certificate, mutual TLS refuses clients without a CA-signed
certificate at the handshake, and a rewritten certificate reaches new connections on both ports
without a restart, while an invalid rewrite keeps the old one."""

from __future__ import annotations

import logging
import socket
import ssl
import time
from pathlib import Path

import grpc
import pytest
import requests
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from config.options import ServerOptions
from deployments.router.servers import Ingress
from tests.support.certs import CertAuthority, Issued, serial_of, served_serial
from tests.support.ports import free_port


async def hello(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


def add_health(server) -> None:
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)


class Served:
    def __init__(self, folder: Path, client_verify: bool):
        self.folder = folder
        self.ca = CertAuthority.create(folder, "ca")
        self.server = self.ca.issue(folder, "server")
        self.client = self.ca.issue(folder, "client")
        self.config = folder / "ssl.cfg"
        verify = "true" if client_verify else "false"
        self.config.write_text(
            f'server_key: "{self.server.key}"\nserver_cert: "{self.server.cert}"\n'
            f'custom_ca: "{self.ca.cert}"\nclient_verify: {verify}\n'
        )
        self.rest, self.grpc = free_port(), free_port()
        self.ingress = Ingress()
        self.ingress.start(
            hello,
            ServerOptions(
                rest_api_host="127.0.0.1",
                rest_api_port=self.rest,
                grpc_port=self.grpc,
                ssl_config_file=str(self.config),
            ),
            add_health,
        )

    def get(self, client: Issued | None = None, ca: Path | None = None) -> requests.Response:
        cert = (str(client.cert), str(client.key)) if client else None
        return requests.get(
            f"https://127.0.0.1:{self.rest}/", verify=str(ca or self.ca.cert), cert=cert, timeout=10
        )

    def check(self, client: Issued | None = None, ca: Path | None = None) -> str:
        credentials = grpc.ssl_channel_credentials(
            (ca or self.ca.cert).read_bytes(),
            client.key.read_bytes() if client else None,
            client.cert.read_bytes() if client else None,
        )
        with grpc.secure_channel(f"127.0.0.1:{self.grpc}", credentials) as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)


@pytest.fixture
def plain(tmp_path):
    served = Served(tmp_path, client_verify=False)
    yield served
    served.ingress.stop()


@pytest.fixture
def mutual(tmp_path):
    served = Served(tmp_path, client_verify=True)
    yield served
    served.ingress.stop()


def wait_for(predicate, timeout_s: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def test_both_ports_serve_the_configured_certificate_to_a_client_trusting_the_ca(plain):
    assert plain.get().text == "hello"
    assert plain.check() == "SERVING"
    assert served_serial(plain.rest) == served_serial(plain.grpc) == serial_of(plain.server)
    stranger = CertAuthority.create(plain.folder / "stranger", "stranger")
    with pytest.raises(requests.exceptions.SSLError):
        plain.get(ca=stranger.cert)
    with pytest.raises(requests.exceptions.ConnectionError):  # no plain HTTP beside it
        requests.get(f"http://127.0.0.1:{plain.rest}/", timeout=10)


def test_the_rest_port_refuses_tls_below_1_2(plain):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
    with socket.create_connection(("127.0.0.1", plain.rest), timeout=10) as raw:
        with pytest.raises(ssl.SSLError):
            context.wrap_socket(raw)


def test_mutual_tls_refuses_clients_without_a_ca_signed_certificate_on_both_ports(mutual):
    stranger_ca = CertAuthority.create(mutual.folder / "stranger", "stranger")
    stranger = stranger_ca.issue(mutual.folder / "stranger", "client")
    for client in (None, stranger):
        # TLS 1.3: the client's side of the handshake ends first; the server closes the
        # connection before any HTTP answer
        with pytest.raises(requests.exceptions.ConnectionError):
            mutual.get(client)
        with pytest.raises(grpc.RpcError) as err:
            mutual.check(client)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert mutual.get(mutual.client).text == "hello"
    assert mutual.check(mutual.client) == "SERVING"


def test_a_rewritten_certificate_reaches_new_connections_on_both_ports(mutual, caplog):
    caplog.set_level(logging.INFO, logger="aspire.tls")
    new_ca = CertAuthority.create(mutual.folder / "new", "new-ca")
    new_server = new_ca.issue(mutual.folder / "new", "server")
    new_client = new_ca.issue(mutual.folder / "new", "client")
    mutual.server.key.write_bytes(new_server.key.read_bytes())
    mutual.server.cert.write_bytes(new_server.cert.read_bytes())
    mutual.ca.cert.write_bytes(new_ca.cert.read_bytes())
    wanted = serial_of(new_server)
    wait_for(lambda: served_serial(mutual.rest) == wanted, what="the new certificate on REST")
    wait_for(lambda: served_serial(mutual.grpc) == wanted, what="the new certificate on gRPC")
    assert mutual.get(new_client, ca=new_ca.cert).text == "hello"
    assert mutual.check(new_client, ca=new_ca.cert) == "SERVING"
    with pytest.raises(requests.exceptions.ConnectionError):  # the old CA's clients: refused
        mutual.get(mutual.client, ca=new_ca.cert)
    rereads = [r for r in caplog.records if r.getMessage().startswith("re-read TLS")]
    assert [r.getMessage() for r in rereads] == [f"re-read TLS certificates from {mutual.config}"]


def test_an_invalid_rewrite_is_logged_and_the_old_certificate_stays_until_fixed(plain, caplog):
    caplog.set_level(logging.INFO, logger="aspire.tls")
    old, replacement = serial_of(plain.server), plain.ca.issue(plain.folder / "next", "server")
    plain.server.cert.write_text("not a certificate\n")

    def refused() -> bool:
        served_serial(plain.rest)  # a handshake makes the router look at the files
        return any(r.levelno == logging.ERROR for r in caplog.records)

    wait_for(refused, what="the invalid certificate file logged")
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and str(plain.server.cert) in errors[0]
    assert served_serial(plain.rest) == served_serial(plain.grpc) == old
    assert plain.get().text == "hello" and plain.check() == "SERVING"
    plain.server.cert.write_bytes(replacement.cert.read_bytes())  # the other key: a mismatch
    plain.server.key.write_bytes(replacement.key.read_bytes())
    wanted = serial_of(replacement)
    wait_for(lambda: served_serial(plain.rest) == wanted, what="the fixed certificate on REST")
    wait_for(lambda: served_serial(plain.grpc) == wanted, what="the fixed certificate on gRPC")


def test_a_rewrite_that_changes_client_verify_is_refused_until_a_restart(plain, caplog):
    caplog.set_level(logging.INFO, logger="aspire.tls")
    plain.config.write_text(plain.config.read_text().replace("false", "true"))

    def refused() -> bool:
        served_serial(plain.rest)
        return any("client_verify changed" in r.getMessage() for r in caplog.records)

    wait_for(refused, what="the client_verify change refused")
    assert plain.get().text == "hello"  # still no client certificate needed
