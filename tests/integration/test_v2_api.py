"""The Open Inference Protocol's REST routes on the session's real cluster, called with Triton's
own client from PyPI (`tritonclient.http`, sync and asyncio): server and model metadata,
readiness, infer with binary tensors (the client's default) and with JSON, answers equal to TF
Serving's predict on the same inputs, refusals with their status, readiness through a rollout
and a rollout under v2 load that loses no request."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
import requests

from tests.integration.conftest import wait_for

pytestmark = pytest.mark.ray


def client(aspire):
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient(aspire.url.removeprefix("http://"))


def x_input(values, binary: bool = True):
    import tritonclient.http as httpclient

    x = np.array(values, np.float32).reshape(-1, 1)
    item = httpclient.InferInput("x", list(x.shape), "FP32")
    item.set_data_from_numpy(x, binary_data=binary)
    return item


def test_server_metadata_health_and_model_metadata_as_tritonclient_reads_them(aspire):
    triton = client(aspire)
    assert triton.is_server_live() and triton.is_server_ready()
    server = triton.get_server_metadata()
    assert server["name"] == "aspire" and "binary_tensor_data" in server["extensions"]
    assert triton.is_model_ready("half_plus_two")
    assert not triton.is_model_ready("no_such_model")
    assert triton.get_model_metadata("half_plus_two") == {
        "name": "half_plus_two",
        "versions": ["123"],
        "platform": "tensorflow_savedmodel",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 1]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}],
    }
    two = triton.get_model_metadata("saved_model_half_plus_two_2_versions")
    assert two["versions"] == ["123", "124"]
    assert triton.get_model_metadata("saved_model_half_plus_two_2_versions", "123")["versions"] == [
        "123"
    ]


def test_infer_answers_as_tf_servings_predict_with_binary_and_json_tensors(aspire):
    import tritonclient.http as httpclient

    triton = client(aspire)
    values = [1.0, 2.0, 5.0, -3.5]
    predicted = aspire.post(
        "/v1/models/half_plus_two:predict", {"instances": [[v] for v in values]}
    ).json()["predictions"]
    binary = triton.infer("half_plus_two", [x_input(values)], request_id="r1")
    assert binary.get_response()["id"] == "r1"
    assert binary.as_numpy("y").tolist() == predicted
    assert binary.get_output("y")["parameters"]["binary_data_size"] == 16  # binary by default
    as_json = triton.infer(
        "half_plus_two",
        [x_input(values, binary=False)],
        outputs=[httpclient.InferRequestedOutput("y", binary_data=False)],
        model_version="123",
    )
    assert as_json.get_output("y")["data"] == [v for row in predicted for v in row]
    assert as_json.get_response()["model_version"] == "123"


def test_the_asyncio_client_gets_the_same_answers(aspire):
    import tritonclient.http.aio as aioclient

    async def main():
        triton = aioclient.InferenceServerClient(aspire.url.removeprefix("http://"))
        try:
            answers = await asyncio.gather(
                *(triton.infer("half_plus_two", [x_input([float(i)])]) for i in range(20))
            )
            return [a.as_numpy("y")[0][0] for a in answers]
        finally:
            await triton.close()

    assert asyncio.run(main()) == [i / 2 + 2 for i in range(20)]


@pytest.mark.parametrize(
    "path, body, status, message",
    [
        (
            "/v2/models/no_such_model/infer",
            {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1]}]},
            404,
            "Servable not found for request: Latest(no_such_model)",
        ),
        (
            "/v2/models/half_plus_two/infer",
            {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "INT32", "data": [1]}]},
            400,
            "inference input 'x' data-type is 'INT32', but model 'half_plus_two' expects 'FP32'",
        ),
        (
            "/v2/models/half_plus_two/infer",
            {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]},
            400,
            "unexpected shape for input 'x' for model 'half_plus_two'. Expected [-1, 1], got [1]",
        ),
        (
            "/v2/models/half_plus_two/versions/7/infer",
            {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1]}]},
            404,
            "Servable not found for request: Specific(half_plus_two, 7)",
        ),
        ("/v2/models/half_plus_two/infer", "{not json", 400, None),
        ("/v2/nothing/here", {}, 404, "Not found: /v2/nothing/here"),
    ],
)
def test_bad_requests_get_the_error_json_and_status(aspire, path, body, status, message):
    r = aspire.post(path, body)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"}
    if message is not None:
        assert r.json()["error"] == message


def test_readiness_follows_a_rollout_and_v2_load_through_it_loses_no_request(aspire, model_dir):
    import tritonclient.http as httpclient

    base, publish = model_dir
    publish(1, "saved_model_half_plus_two_cpu")
    aspire.add_model("v2roll", base)
    aspire.wait_state("v2roll", 1, "AVAILABLE")
    triton = client(aspire)
    assert triton.is_model_ready("v2roll", "1") and not triton.is_model_ready("v2roll", "2")
    answers, failures, stop = [], [], threading.Event()

    def loop():
        own = httpclient.InferenceServerClient(aspire.url.removeprefix("http://"))
        while not stop.is_set():
            try:
                answers.append(float(own.infer("v2roll", [x_input([1.0])]).as_numpy("y")[0][0]))
            except Exception as exc:  # noqa: BLE001 - every failure is recorded
                failures.append(repr(exc))

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(answers) >= 20, 60, what="v2 answers from v1")
        publish(2, "saved_model_half_plus_three")
        aspire.wait_state("v2roll", 2, "AVAILABLE")
        aspire.wait_state("v2roll", 1, "END")
        seen = len(answers)
        wait_for(
            lambda: len(answers) >= seen + 20,
            60,
            what=f"v2 answers from v2 (failures: {failures[:3]}, answers {len(answers)})",
        )
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert failures == []
    assert 2.5 in answers and answers[-1] == 3.5
    assert answers.index(3.5) > 0 and 2.5 not in answers[answers.index(3.5) :]
    assert triton.is_model_ready("v2roll", "2") and not triton.is_model_ready("v2roll", "1")
    page = requests.get(aspire.url + "/v2/models/v2roll/versions/1/ready", timeout=30)
    assert page.status_code == 400
    assert page.json() == {"error": "Servable not found for request: Specific(v2roll, 1)"}


def test_v2_requests_are_counted_with_protocol_v2(aspire):
    import ray

    client(aspire).infer("half_plus_two", [x_input([1.0])])

    def counted() -> bool:
        page = ray.get(aspire.manager.metrics_page.remote())
        return any(
            'protocol="v2"' in line and 'api="infer"' in line and 'model="half_plus_two"' in line
            for line in page.splitlines()
        )

    wait_for(counted, 30, 0.5, what="a v2 request in the metrics")
