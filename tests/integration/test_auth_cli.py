"""Bearer-token authentication end to end: one real `aspire serve` with --auth_token_file and
--admin_token_file for the whole module, called over REST, gRPC and the metrics page."""

import re
import statistics
import time

import grpc
import pytest
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

from tests.integration.conftest import DATA, Served, free_port, wait_for
from tests.support.grpc_requests import predict_request

pytestmark = pytest.mark.ray

TOKEN, ADMIN = "inference-" + "7" * 30, "admin-" + "9" * 30
CHALLENGE = 'Bearer realm="aspire"'
METRICS = "/monitoring/prometheus/metrics"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("auth")
    (tmp / "token").write_text(TOKEN + "\n")
    (tmp / "admin").write_text(f"  {ADMIN}  \n")
    for f in ("token", "admin"):
        (tmp / f).chmod(0o600)
    (tmp / "monitoring.txt").write_text(f'prometheus_config: {{ enable: true, path: "{METRICS}" }}')
    port, grpc_port = free_port(), free_port()
    with Served(
        "--model_name=half_plus_two",
        f"--model_base_path={DATA / 'saved_model_half_plus_two_cpu'}",
        f"--rest_api_port={port}",
        f"--port={grpc_port}",
        "--rest_api_host=127.0.0.1",
        "--enable_grpc_healthcheck_service",
        f"--monitoring_config_file={tmp / 'monitoring.txt'}",
        f"--auth_token_file={tmp / 'token'}",
        f"--admin_token_file={tmp / 'admin'}",
    ) as served:
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            served.url, served.channel = f"http://127.0.0.1:{port}", channel
            served.grpc_target = f"127.0.0.1:{grpc_port}"
            yield served
    assert served.exit_code == 0
    output = "".join(served.out.lines)
    assert TOKEN not in output and ADMIN not in output, "a token reached the server's output"


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def timed_posts(session, url, headers, n=40) -> tuple[list[int], float]:
    codes, seconds = [], []
    for _ in range(n):
        started = time.perf_counter()
        codes.append(
            session.post(url, json={"instances": [1.0]}, headers=headers, timeout=30).status_code
        )
        seconds.append(time.perf_counter() - started)
    return codes, statistics.median(seconds) * 1000


def test_rest_needs_the_token(server):
    url = f"{server.url}/v1/models/half_plus_two:predict"
    for headers in ({}, bearer("wrong"), {"Authorization": f"Basic {TOKEN}"}, bearer(TOKEN[:-1])):
        r = requests.post(url, json={"instances": [1.0]}, headers=headers, timeout=30)
        assert r.status_code == 401, (headers, r.text)
        assert r.headers["WWW-Authenticate"] == CHALLENGE
        assert set(r.json()) == {"error"}
    assert requests.post(url, json={"instances": [1.0]}, timeout=30).json() == {
        "error": "Missing bearer token: send the header 'Authorization: Bearer <token>'"
    }
    for token in (TOKEN, ADMIN):
        r = requests.post(url, json={"instances": [1.0, 2.0]}, headers=bearer(token), timeout=30)
        assert r.json() == {"predictions": [2.5, 3.0]}
    # every other REST path too, before any 404: an unauthenticated client learns nothing
    for path in (
        "/v1/models/half_plus_two",
        "/v1/models/nope",
        "/v1/aspire/status",
        "/no/such/page",
    ):
        assert requests.get(server.url + path, timeout=30).status_code == 401
    assert (
        requests.get(server.url + "/v1/models/nope", headers=bearer(TOKEN), timeout=30).status_code
        == 404
    )
    session = requests.Session()
    refused, refused_ms = timed_posts(session, url, {})
    wrong, wrong_ms = timed_posts(session, url, bearer("x" * len(TOKEN)))
    served, served_ms = timed_posts(session, url, bearer(TOKEN))
    assert set(refused) == set(wrong) == {401} and set(served) == {200}
    print(
        f"REST median over 40: 401 without a token {refused_ms:.2f} ms, with a wrong token "
        f"{wrong_ms:.2f} ms; 200 predict with the token {served_ms:.2f} ms"
    )


def test_healthz_is_open(server):
    for headers in ({}, bearer("wrong")):
        r = requests.get(f"{server.url}/healthz", headers=headers, timeout=30)
        assert (r.status_code, r.json()) == (200, {"status": "ok"})


def test_the_metrics_page_needs_the_token(server):
    r = requests.get(server.url + METRICS, timeout=30)
    assert (r.status_code, r.headers["WWW-Authenticate"]) == (401, CHALLENGE)
    r = requests.get(server.url + METRICS, headers=bearer(TOKEN), timeout=30)
    assert r.status_code == 200 and "aspire_servable_state{" in r.text
    # Routers ship their counts every SHIP_PERIOD_S (core/metrics_shipper.py): a count unchanged
    # over 3 periods has every earlier refusal in it.
    before = settled_refusals(server)
    requests.get(server.url + "/v1/models", timeout=30)  # one more refusal
    wait_for(lambda: refusals(server) >= before + 1, 30, what="the refusal counted")
    after = settled_refusals(server)
    print(f"metrics page: refusals counted {before} -> {after} after one refused request")
    assert after == before + 1


def refusals(server) -> int:
    page = requests.get(server.url + METRICS, headers=bearer(TOKEN), timeout=30).text
    return sum(
        int(float(n))
        for n in re.findall(
            r'^aspire_requests_total\{[^}]*code="UNAUTHENTICATED"[^}]*\} (\S+)$', page, re.M
        )
    )


def settled_refusals(server, periods: int = 3) -> int:
    """The refusal count once it has stayed the same for `periods` shipping periods."""
    from core.metrics_shipper import SHIP_PERIOD_S as period_s

    last, since = refusals(server), time.monotonic()
    deadline = since + 60
    while time.monotonic() - since < periods * period_s:
        assert time.monotonic() < deadline, "refusal count never settled"
        time.sleep(period_s / 4)
        now = refusals(server)
        if now != last:
            last, since = now, time.monotonic()
    return last


def grpc_call(call, request, token=None) -> tuple[str, str]:
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    try:
        call(request, metadata=metadata, timeout=120)
        return "OK", ""
    except grpc.RpcError as err:
        return err.code().name, err.details()


def test_grpc_needs_the_token_and_health_is_open(server):
    predict = prediction_service_pb2_grpc.PredictionServiceStub(server.channel).Predict
    request = predict_request("half_plus_two", (1.0,))
    started = time.perf_counter()
    assert grpc_call(predict, request) == (
        "UNAUTHENTICATED",
        "Missing bearer token: send the header 'Authorization: Bearer <token>'",
    )
    refused_ms = (time.perf_counter() - started) * 1000
    assert grpc_call(predict, request, "wrong") == ("UNAUTHENTICATED", "Invalid bearer token")
    response = prediction_service_pb2_grpc.PredictionServiceStub(server.channel).Predict(
        request, metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=60
    )
    assert list(response.outputs["y"].float_val) == [2.5]
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "half_plus_two"
    get_status = model_service_pb2_grpc.ModelServiceStub(server.channel).GetModelStatus
    assert grpc_call(get_status, status)[0] == "UNAUTHENTICATED"
    assert grpc_call(get_status, status, TOKEN) == ("OK", "")
    check = health_pb2_grpc.HealthStub(server.channel).Check
    answer = check(
        health_pb2.HealthCheckRequest(service="tensorflow.serving.PredictionService"), timeout=30
    )
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    print(f"gRPC Predict without a token: UNAUTHENTICATED in {refused_ms:.1f} ms")


def test_the_open_inference_protocol_needs_the_token_on_both_transports(server):
    import numpy as np
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    body = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]}
    url = f"{server.url}/v2/models/half_plus_two/infer"
    for path in ("/v2", "/v2/health/ready", "/v2/models/half_plus_two"):
        assert requests.get(server.url + path, timeout=30).status_code == 401
    assert requests.post(url, json=body, timeout=30).status_code == 401
    answer = requests.post(url, json=body, headers=bearer(TOKEN), timeout=30).json()
    assert answer["outputs"][0]["data"] == [2.5]
    http = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    assert http.is_server_live(headers=bearer(TOKEN))

    triton = grpcclient.InferenceServerClient(server.grpc_target)
    x = grpcclient.InferInput("x", [1, 1], "FP32")
    x.set_data_from_numpy(np.array([[1.0]], np.float32))
    for headers in ({}, {"authorization": "Bearer wrong"}):
        with pytest.raises(InferenceServerException) as caught:
            triton.infer("half_plus_two", [x], headers=headers)
        assert caught.value.status() == "StatusCode.UNAUTHENTICATED"
        with pytest.raises(InferenceServerException):
            triton.is_server_live(headers=headers)
    result = triton.infer("half_plus_two", [x], headers={"authorization": f"Bearer {TOKEN}"})
    assert result.as_numpy("y").tolist() == [[2.5]]


def test_reload_config_needs_the_admin_token(server):
    reload = model_service_pb2_grpc.ModelServiceStub(server.channel).HandleReloadConfigRequest
    request = model_management_pb2.ReloadConfigRequest()
    model = request.config.model_config_list.config.add()
    model.name, model.base_path, model.model_platform = (
        "half_plus_two",
        str(DATA / "saved_model_half_plus_two_cpu"),
        "tensorflow",
    )
    assert grpc_call(reload, request)[0] == "UNAUTHENTICATED"
    assert grpc_call(reload, request, "wrong")[0] == "UNAUTHENTICATED"
    assert grpc_call(reload, request, TOKEN) == (
        "PERMISSION_DENIED",
        "This call needs the admin token",
    )
    started = time.perf_counter()
    assert grpc_call(reload, request, ADMIN) == ("OK", "")
    print(
        f"HandleReloadConfigRequest with the admin token: OK in "
        f"{(time.perf_counter() - started) * 1000:.0f} ms"
    )
    r = requests.post(
        f"{server.url}/v1/models/half_plus_two:predict",
        json={"instances": [1.0]},
        headers=bearer(TOKEN),
        timeout=30,
    )
    assert r.json() == {"predictions": [2.5]}


def test_an_unusable_token_file_stops_start_up_with_the_reason(tmp_path):
    import subprocess

    from tests.integration.conftest import ASPIRE

    (tmp_path / "empty").write_text(" \n")
    for path, reason in (
        (tmp_path / "missing", "cannot read token file {}: No such file or directory"),
        (tmp_path / "empty", "token file {} is empty"),
    ):
        r = subprocess.run(
            [ASPIRE, "serve", "--model_base_path=/m", f"--auth_token_file={path}"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 2
        assert f"aspire serve: error: --auth_token_file: {reason.format(path)}" in r.stderr, (
            r.stderr
        )
