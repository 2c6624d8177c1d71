"""The Open Inference Protocol's REST routes and gRPC service on the session's real cluster,
called with Triton's own clients from PyPI (`tritonclient.http` and `tritonclient.grpc`, sync and
asyncio): server and model metadata, readiness, infer with binary tensors (the HTTP client's
default), JSON, raw and typed gRPC contents, every datatype a signature can carry, answers equal
to TF Serving's predict on the same inputs, refusals with their status, readiness through a
rollout and a rollout under v2 load (both transports) that loses no request."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
import requests

from tests.integration.conftest import wait_for
from tests.support.v2_models import TYPES, export_every_type, sample

pytestmark = pytest.mark.ray


def client(aspire):
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient(aspire.url.removeprefix("http://"))


def grpc_client(aspire):
    import tritonclient.grpc as grpcclient

    return grpcclient.InferenceServerClient(aspire.grpc_target)


def grpc_x(values):
    import tritonclient.grpc as grpcclient

    x = np.array(values, np.float32).reshape(-1, 1)
    item = grpcclient.InferInput("x", list(x.shape), "FP32")
    item.set_data_from_numpy(x)
    return item


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


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_the_asyncio_clients_get_the_same_answers(aspire, transport):
    if transport == "http":
        import tritonclient.http.aio as aioclient

        target, x = aspire.url.removeprefix("http://"), x_input
    else:
        import tritonclient.grpc.aio as aioclient

        target, x = aspire.grpc_target, grpc_x

    async def main():
        triton = aioclient.InferenceServerClient(target)
        try:
            answers = await asyncio.gather(
                *(triton.infer("half_plus_two", [x([float(i)])]) for i in range(20))
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
    over_grpc = grpc_client(aspire)
    assert over_grpc.is_model_ready("v2roll", "1") and not over_grpc.is_model_ready("v2roll", "2")
    answers, failures, stop = [], [], threading.Event()

    def loop(transport: str):
        if transport == "http":
            own, x = httpclient.InferenceServerClient(aspire.url.removeprefix("http://")), x_input
        else:
            own, x = grpc_client(aspire), grpc_x
        while not stop.is_set():
            try:
                answers.append(float(own.infer("v2roll", [x([1.0])]).as_numpy("y")[0][0]))
            except Exception as exc:  # noqa: BLE001 - every failure is recorded
                failures.append(f"{transport}: {exc!r}")

    threads = [
        threading.Thread(target=loop, args=(t,), daemon=True)
        for t in ("http", "grpc", "http", "grpc")
    ]
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
    over_grpc = grpc_client(aspire)
    assert over_grpc.is_model_ready("v2roll", "2") and not over_grpc.is_model_ready("v2roll", "1")
    page = requests.get(aspire.url + "/v2/models/v2roll/versions/1/ready", timeout=30)
    assert page.status_code == 400
    assert page.json() == {"error": "Servable not found for request: Specific(v2roll, 1)"}


def test_v2_requests_are_counted_with_their_protocol(aspire):
    import ray

    client(aspire).infer("half_plus_two", [x_input([1.0])])
    grpc_client(aspire).infer("half_plus_two", [grpc_x([1.0])])

    def counted(protocol: str) -> bool:
        page = ray.get(aspire.manager.metrics_page.remote())
        return any(
            f'protocol="{protocol}"' in line
            and 'api="infer"' in line
            and 'model="half_plus_two"' in line
            for line in page.splitlines()
        )

    wait_for(lambda: counted("v2"), 30, 0.5, what="a v2 REST request in the metrics")
    wait_for(lambda: counted("v2_grpc"), 30, 0.5, what="a v2 gRPC request in the metrics")


# ------------------------------------------------------------------------------------ gRPC
def test_grpc_server_and_model_metadata_and_readiness_as_tritonclient_reads_them(aspire):
    triton = grpc_client(aspire)
    assert triton.is_server_live() and triton.is_server_ready()
    server = triton.get_server_metadata()
    assert server.name == "aspire" and "binary_tensor_data" in server.extensions
    assert triton.is_model_ready("half_plus_two")
    assert triton.is_model_ready("half_plus_two", "123")
    assert not triton.is_model_ready("half_plus_two", "7")
    assert not triton.is_model_ready("no_such_model")
    meta = triton.get_model_metadata("half_plus_two")
    assert (meta.name, list(meta.versions), meta.platform) == (
        "half_plus_two",
        ["123"],
        "tensorflow_savedmodel",
    )
    tensors = [(t.name, t.datatype, list(t.shape)) for t in (*meta.inputs, *meta.outputs)]
    assert tensors == [("x", "FP32", [-1, 1]), ("y", "FP32", [-1, 1])]
    two = "saved_model_half_plus_two_2_versions"
    assert list(triton.get_model_metadata(two).versions) == ["123", "124"]
    assert list(triton.get_model_metadata(two, "124").versions) == ["124"]


def test_grpc_infer_answers_as_tf_servings_predict_with_raw_and_typed_contents(aspire):
    import tritonclient.grpc as grpcclient

    values = [1.0, 2.0, 5.0, -3.5]
    predicted = aspire.post(
        "/v1/models/half_plus_two:predict", {"instances": [[v] for v in values]}
    ).json()["predictions"]
    triton = grpc_client(aspire)
    result = triton.infer(
        "half_plus_two",
        [grpc_x(values)],
        outputs=[grpcclient.InferRequestedOutput("y")],
        request_id="g1",
        model_version="123",
    )
    assert result.as_numpy("y").tolist() == predicted
    response = result.get_response()
    assert (response.id, response.model_name, response.model_version) == (
        "g1",
        "half_plus_two",
        "123",
    )
    # typed contents, with tritonclient's own messages and stub
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    request = service_pb2.ModelInferRequest(model_name="half_plus_two")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[len(values), 1])
    tensor.contents.fp32_contents.extend(values)
    import grpc

    with grpc.insecure_channel(aspire.grpc_target) as channel:
        answer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
    got = np.frombuffer(answer.raw_output_contents[0], "<f4").reshape(-1, 1)
    assert got.tolist() == predicted


@pytest.mark.parametrize(
    "model, version, datatype, shape, code, message",
    [
        (
            "no_such_model",
            "",
            "FP32",
            [1, 1],
            "NOT_FOUND",
            "Servable not found for request: Latest(no_such_model)",
        ),
        (
            "half_plus_two",
            "7",
            "FP32",
            [1, 1],
            "NOT_FOUND",
            "Servable not found for request: Specific(half_plus_two, 7)",
        ),
        ("half_plus_two", "x7", "FP32", [1, 1], "INVALID_ARGUMENT", "Failed to convert version"),
        (
            "half_plus_two",
            "",
            "INT32",
            [1, 1],
            "INVALID_ARGUMENT",
            "inference input 'x' data-type is 'INT32', but model 'half_plus_two' expects 'FP32'",
        ),
        (
            "half_plus_two",
            "",
            "FP32",
            [1],
            "INVALID_ARGUMENT",
            "unexpected shape for input 'x' for model 'half_plus_two'. Expected [-1, 1], got [1]",
        ),
    ],
)
def test_bad_grpc_requests_get_the_status_and_reason(
    aspire, model, version, datatype, shape, code, message
):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    item = grpcclient.InferInput("x", shape, datatype)
    item.set_data_from_numpy(np.ones(shape, {"FP32": np.float32, "INT32": np.int32}[datatype]))
    with pytest.raises(InferenceServerException) as caught:
        grpc_client(aspire).infer(model, [item], model_version=version)
    assert caught.value.status() == f"StatusCode.{code}"
    assert message in caught.value.message()


def test_unserved_grpc_methods_answer_unimplemented(aspire):
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as caught:
        grpc_client(aspire).get_model_repository_index()
    assert caught.value.status() == "StatusCode.UNIMPLEMENTED"


# ------------------------------------------------------------------ every datatype, both transports
@pytest.fixture(scope="module")
def every_type(aspire, tmp_path_factory):
    base = tmp_path_factory.mktemp("v2types")
    export_every_type(str(base / "1"))
    aspire.add_model("v2types", base)
    aspire.wait_state("v2types", 1, "AVAILABLE")
    return "v2types"


# JSON cannot carry BYTES samples that are not UTF-8, and tritonclient sends BF16 only as binary
BINARY_ONLY = ("BYTES", "BF16")


def every_type_inputs(module, binary: bool | None):
    """One input per datatype with its sample values; `binary` None: the gRPC client's."""
    items = []
    for datatype in TYPES:
        item = module.InferInput(datatype.lower(), [3], datatype)
        as_binary = binary or datatype in BINARY_ONLY
        if binary is None:
            item.set_data_from_numpy(sample(datatype))
        else:
            item.set_data_from_numpy(sample(datatype), binary_data=as_binary)
        items.append(item)
    return items


@pytest.mark.parametrize("transport", ["http-binary", "http-json", "grpc"])
def test_every_datatype_round_trips_through_each_transport(aspire, every_type, transport):
    if transport == "grpc":
        import tritonclient.grpc as module

        triton, binary = grpc_client(aspire), None
    else:
        import tritonclient.http as module

        triton, binary = client(aspire), transport == "http-binary"
    if transport == "http-json":
        outputs = [
            module.InferRequestedOutput(f"out_{d.lower()}", binary_data=d in BINARY_ONLY)
            for d in TYPES
        ]
    else:
        outputs = [module.InferRequestedOutput(f"out_{d.lower()}") for d in TYPES]
    result = triton.infer(every_type, every_type_inputs(module, binary), outputs=outputs)
    for datatype in TYPES:
        want = sample(datatype)
        got = result.as_numpy(f"out_{datatype.lower()}")
        if datatype == "BF16":  # tritonclient hands BF16 back as float32
            want = want.astype(np.float32)
        np.testing.assert_array_equal(got, want, err_msg=f"{transport} {datatype}")


def test_a_grpc_request_missing_an_input_is_refused_with_its_name(aspire, every_type):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    inputs = every_type_inputs(grpcclient, None)[1:]  # no "bool"
    with pytest.raises(InferenceServerException) as caught:
        grpc_client(aspire).infer(every_type, inputs)
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "missing bool" in caught.value.message()


def test_malformed_model_infer_bytes_get_invalid_argument_and_the_server_keeps_serving(aspire):
    import grpc
    from tritonclient.grpc import service_pb2

    good = service_pb2.ModelInferRequest(model_name="half_plus_two")
    good.inputs.add(name="x", datatype="FP32", shape=[1, 1])
    good.raw_input_contents.append(np.float32(1.0).tobytes())
    whole = good.SerializeToString()
    cases = [
        b"\xff\xff\xff",  # not a message
        whole[:-2],  # cut short inside the raw contents
        b"\x0a\x0dhalf_plus_two\x12\x02x7",  # a version that is not a number
        b"\x0a\x0dhalf_plus_two" + b"\x2a\x03\xff\xff\xff",  # an input that is not a message
        b"",  # no model named
    ]
    with grpc.insecure_channel(aspire.grpc_target) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        for raw in cases:
            with pytest.raises(grpc.RpcError) as caught:
                call(raw, timeout=60)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raw
        answer = service_pb2.ModelInferResponse.FromString(call(whole, timeout=60))
    assert np.frombuffer(answer.raw_output_contents[0], "<f4").tolist() == [2.5]
