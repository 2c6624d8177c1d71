"""TLS end to end: `aspire serve --ssl_config_file` as a user runs it, called by the clients people
use. Two servers for the module: one with TLS (path values, as a Kubernetes secret gives them)
for the stock TF Serving gRPC client, requests, curl and tritonclient's HTTP and gRPC clients
(the v2 protocol on the same ports), then a certificate rotation; one with mutual TLS (inline
PEM values, TF Serving's own format) refusing clients without a CA-signed certificate at the
handshake on both ports. Bad files stop `aspire serve` at start-up with the file named."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
from tensorflow_serving.apis import prediction_service_pb2_grpc

from tests.integration.conftest import ASPIRE, DATA, Served, free_port, wait_for
from tests.support.certs import CertAuthority, Issued, serial_of, served_serial
from tests.support.grpc_requests import predict_request

pytestmark = pytest.mark.ray

MODEL = "half_plus_two"
BODY = {"instances": [1.0, 2.0]}
ANSWER = {"predictions": [2.5, 3.0]}


def quoted(text: str) -> str:
    return '"' + text.replace("\n", "\\n") + '"'


class TlsServer:
    def __init__(self, served: Served, folder: Path, ca: CertAuthority, server: Issued, config):
        self.served, self.folder, self.ca, self.server, self.config = (
            served,
            folder,
            ca,
            server,
            config,
        )
        self.rest = self.grpc = 0

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.rest}"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc}"

    def predict_rest(self, client: Issued | None = None, ca: Path | None = None) -> dict:
        cert = (str(client.cert), str(client.key)) if client else None
        r = requests.post(
            f"{self.url}/v1/models/{MODEL}:predict",
            json=BODY,
            verify=str(ca or self.ca.cert),
            cert=cert,
            timeout=60,
        )
        return r.json()

    def predict_grpc(self, client: Issued | None = None, ca: Path | None = None) -> list[float]:
        credentials = grpc.ssl_channel_credentials(
            (ca or self.ca.cert).read_bytes(),
            client.key.read_bytes() if client else None,
            client.cert.read_bytes() if client else None,
        )
        with grpc.secure_channel(self.target, credentials) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            response = stub.Predict(predict_request(MODEL, (1.0, 2.0)), timeout=60)
        return list(response.outputs["y"].float_val)


def start(folder: Path, config_text: str) -> tuple[Served, Path, int, int]:
    config = folder / "ssl.cfg"
    config.write_text(config_text)
    rest, grpc_port = free_port(), free_port()
    served = Served(
        f"--model_name={MODEL}",
        f"--model_base_path={DATA / 'saved_model_half_plus_two_cpu'}",
        f"--rest_api_port={rest}",
        f"--port={grpc_port}",
        "--rest_api_host=127.0.0.1",
        f"--ssl_config_file={config}",
    )
    return served, config, rest, grpc_port


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    ca = CertAuthority.create(folder, "ca")
    server = ca.issue(folder, "server")
    # path values, one relative to the config file's folder
    served, config, rest, grpc_port = start(
        folder, f'server_key: "{server.key}"\nserver_cert: "server.crt"\n'
    )
    with served:
        running = TlsServer(served, folder, ca, server, config)
        running.rest, running.grpc = rest, grpc_port
        yield running
    assert served.exit_code == 0
    assert "PRIVATE KEY" not in "".join(served.out.lines)


@pytest.fixture(scope="module")
def mutual(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mtls")
    ca = CertAuthority.create(folder, "ca")
    server = ca.issue(folder, "server")
    served, config, rest, grpc_port = start(
        folder,
        f"server_key: {quoted(server.key_pem())}\nserver_cert: {quoted(server.cert_pem())}\n"
        f"custom_ca: {quoted(ca.cert.read_text())}\nclient_verify: true\n",
    )
    with served:
        running = TlsServer(served, folder, ca, server, config)
        running.rest, running.grpc = rest, grpc_port
        yield running
    assert served.exit_code == 0


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "60", *args], capture_output=True, text=True, timeout=90
    )


# ------------------------------------------------------------------------------------ TLS
def test_the_tf_serving_grpc_client_predicts_over_tls(tls):
    assert tls.predict_grpc() == [2.5, 3.0]
    with pytest.raises(grpc.RpcError) as err:  # a plaintext channel is not answered
        with grpc.insecure_channel(tls.target) as channel:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
                predict_request(MODEL), timeout=30
            )
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_requests_and_curl_predict_over_https_trusting_the_ca(tls):
    assert tls.predict_rest() == ANSWER
    stranger = CertAuthority.create(tls.folder / "stranger", "stranger")
    with pytest.raises(requests.exceptions.SSLError):
        tls.predict_rest(ca=stranger.cert)
    done = curl(
        "--cacert",
        str(tls.ca.cert),
        "-d",
        '{"instances": [1.0, 2.0]}',
        f"{tls.url}/v1/models/{MODEL}:predict",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.replace(" ", "").replace("\n", "") == '{"predictions":[2.5,3.0]}'
    untrusted = curl(f"{tls.url}/v1/models/{MODEL}")  # the system CAs do not know this one
    assert untrusted.returncode == 60, untrusted.stderr  # curl: peer certificate not verified


def test_tritonclient_http_and_grpc_infer_with_the_v2_protocol_over_tls(tls):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    x = np.array([[1.0], [2.0]], np.float32)
    http = httpclient.InferenceServerClient(
        tls.url.removeprefix("https://"), ssl=True, ssl_options={"ca_certs": str(tls.ca.cert)}
    )
    item = httpclient.InferInput("x", [2, 1], "FP32")
    item.set_data_from_numpy(x)
    assert http.is_server_ready()
    assert http.infer(MODEL, [item]).as_numpy("y").tolist() == [[2.5], [3.0]]
    over_grpc = grpcclient.InferenceServerClient(
        tls.target, ssl=True, root_certificates=str(tls.ca.cert)
    )
    item = grpcclient.InferInput("x", [2, 1], "FP32")
    item.set_data_from_numpy(x)
    assert over_grpc.is_server_ready()
    assert over_grpc.infer(MODEL, [item]).as_numpy("y").tolist() == [[2.5], [3.0]]


def test_rewritten_certificates_reach_new_connections_without_a_restart(tls):
    """Last of the TLS server's tests: after it the server holds a new CA's certificate."""
    new_ca = CertAuthority.create(tls.folder / "new", "new-ca")
    new_server = new_ca.issue(tls.folder / "new", "server")
    assert served_serial(tls.rest) == served_serial(tls.grpc) == serial_of(tls.server)
    # as a secret update or cert-manager does it: each file replaced whole
    for name, source in (("server.key", new_server.key), ("server.crt", new_server.cert)):
        staged = tls.folder / f".{name}.new"
        staged.write_bytes(source.read_bytes())
        staged.replace(tls.folder / name)
    wanted = serial_of(new_server)
    wait_for(lambda: served_serial(tls.rest) == wanted, 60, 0.2, what="the new cert on REST")
    wait_for(lambda: served_serial(tls.grpc) == wanted, 60, 0.2, what="the new cert on gRPC")
    assert tls.predict_rest(ca=new_ca.cert) == ANSWER
    assert tls.predict_grpc(ca=new_ca.cert) == [2.5, 3.0]
    with pytest.raises(requests.exceptions.SSLError):  # the old CA no longer vouches for it
        tls.predict_rest()
    log_dir = Path(tls.served.out.find(r"Ray's, Serve's and TensorFlow's own logs are in (\S+)")[1])
    line = f"re-read TLS certificates from {tls.config}"

    def logged() -> int:
        return sum(
            path.read_text(errors="replace").count(line)
            for path in log_dir.rglob("*")
            if path.is_file() and path.suffix in (".log", ".err", ".out")
        )

    wait_for(logged, 60, 0.5, what="the re-read line in the router's log")
    assert logged() == 1  # one router replica, one change: logged once


# ------------------------------------------------------------------------------------ mTLS
def test_mutual_tls_refuses_clients_without_a_ca_signed_certificate_on_both_ports(mutual):
    stranger_ca = CertAuthority.create(mutual.folder / "stranger", "stranger")
    for client in (None, stranger_ca.issue(mutual.folder / "stranger", "client")):
        # TLS 1.3: the client's part of the handshake ends first; the server then closes the
        # connection before any HTTP answer
        with pytest.raises(requests.exceptions.ConnectionError):
            mutual.predict_rest(client)
        with pytest.raises(grpc.RpcError) as err:
            mutual.predict_grpc(client)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    refused = curl("--cacert", str(mutual.ca.cert), f"{mutual.url}/v1/models/{MODEL}")
    assert refused.returncode != 0 and refused.stdout == ""


def test_mutual_tls_serves_a_client_with_a_ca_signed_certificate(mutual):
    client = mutual.ca.issue(mutual.folder, "client")
    assert mutual.predict_rest(client) == ANSWER
    assert mutual.predict_grpc(client) == [2.5, 3.0]
    done = curl(
        "--cacert",
        str(mutual.ca.cert),
        "--cert",
        str(client.cert),
        "--key",
        str(client.key),
        f"{mutual.url}/v1/models/{MODEL}",
    )
    assert done.returncode == 0 and '"state": "AVAILABLE"' in done.stdout, done.stderr


# ------------------------------------------------------------------------------------ start-up
@pytest.mark.parametrize("field", ["server_key", "server_cert", "custom_ca"])
def test_a_bad_pem_file_stops_aspire_serve_with_the_file_named(tmp_path, field):
    ca = CertAuthority.create(tmp_path, "ca")
    server = ca.issue(tmp_path, "server")
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    fields = {"server_key": server.key, "server_cert": server.cert, "custom_ca": ca.cert}
    fields[field] = bad
    config = tmp_path / "ssl.cfg"
    config.write_text("".join(f'{name}: "{path}"\n' for name, path in fields.items()))
    r = subprocess.run(
        [
            ASPIRE,
            "serve",
            f"--model_name={MODEL}",
            f"--model_base_path={DATA / 'saved_model_half_plus_two_cpu'}",
            f"--rest_api_port={free_port()}",
            f"--port={free_port()}",
            f"--ssl_config_file={config}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0
    assert re.search(rf"{re.escape(str(config))}.*{field} \('{re.escape(str(bad))}'\)", r.stderr), (
        r.stderr
    )
