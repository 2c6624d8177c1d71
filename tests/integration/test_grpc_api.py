"""TF Serving's gRPC API through the unmodified tensorflow-serving-api stubs, over loopback.

The stubs send no `application` metadata, exactly as TF Serving clients do.
"""

import threading

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from tests.integration.conftest import wait_for
from tests.support.grpc_requests import predict_request

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def channel(aspire):
    with grpc.insecure_channel(aspire.grpc_target) as ch:
        yield ch


@pytest.fixture(scope="module")
def predict_stub(channel):
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def model_stub(channel):
    return model_service_pb2_grpc.ModelServiceStub(channel)


def rpc_error(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call(request, timeout=60)
    return err.value


def example(**features) -> example_pb2.Example:
    ex = example_pb2.Example()
    for key, value in features.items():
        ex.features.feature[key].float_list.value.append(value)
    return ex


def test_predict_half_plus_two_as_tf_serving_answers(predict_stub):
    response = predict_stub.Predict(predict_request(), timeout=60)
    assert tf.make_ndarray(response.outputs["y"]).tolist() == [3.0]
    assert response.outputs["y"].float_val == [3.0]
    assert response.model_spec.name == "half_plus_two"
    assert response.model_spec.version.value == 123
    assert response.model_spec.signature_name == "serving_default"


def test_predict_with_output_filter_and_explicit_version(predict_stub):
    request = predict_request(version=123, signature_name="serving_default")
    request.output_filter.append("y")
    response = predict_stub.Predict(request, timeout=60)
    assert list(response.outputs) == ["y"]
    assert tf.make_ndarray(response.outputs["y"]).tolist() == [3.0]


@pytest.mark.parametrize(
    "mutate,code,message",
    [
        (
            lambda r: r.model_spec.__setattr__("name", "nope"),
            grpc.StatusCode.NOT_FOUND,
            "Servable not found for request: Latest(nope)",
        ),
        (
            lambda r: r.model_spec.version.__setattr__("value", 7),
            grpc.StatusCode.NOT_FOUND,
            "Servable not found for request: Specific(half_plus_two, 7)",
        ),
        (
            lambda r: r.model_spec.__setattr__("version_label", "stable"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Unrecognized servable version label: stable",
        ),
        (
            lambda r: r.model_spec.__setattr__("name", ""),
            grpc.StatusCode.INVALID_ARGUMENT,
            "ModelSpec has no name specified.",
        ),
        (
            lambda r: r.ClearField("model_spec"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Missing ModelSpec",
        ),
        (
            lambda r: r.model_spec.__setattr__("signature_name", "nope"),
            grpc.StatusCode.FAILED_PRECONDITION,
            'Serving signature key "nope" not found.',
        ),
        (
            lambda r: r.output_filter.append("z"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "output tensor alias not found in signature: z",
        ),
        (
            lambda r: r.inputs["extra"].CopyFrom(tf.make_tensor_proto(np.array([1.0], np.float32))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Sent extra: {extra}",
        ),
        (
            lambda r: r.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([b"a"], object))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Expects arg[0] to be float but string is provided",
        ),
    ],
)
def test_predict_errors_have_tf_serving_codes_and_messages(predict_stub, mutate, code, message):
    request = predict_request()
    mutate(request)
    err = rpc_error(predict_stub.Predict, request)
    assert err.code() == code
    assert message in err.details()


def test_long_error_messages_are_truncated_at_1024_characters(predict_stub):
    # a long signature name, not a long model name: names over 256 characters are refused first
    err = rpc_error(predict_stub.Predict, predict_request(signature_name="s" * 3000))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (
        err.details() == f'Serving signature key "{"s" * 3000}" not found.'[:1024] + "...TRUNCATED"
    )


def test_classify_and_regress_with_and_without_context(predict_stub):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "half_plus_two"
    request.model_spec.signature_name = "classify_x_to_y"
    request.input.example_list.examples.add().CopyFrom(example(x=2.0))
    response = predict_stub.Classify(request, timeout=60)
    assert [c.score for c in response.result.classifications[0].classes] == [3.0]
    assert response.model_spec.version.value == 123

    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "half_plus_two"
    request.model_spec.signature_name = "regress_x_to_y"
    request.input.example_list_with_context.context.CopyFrom(example(x=4.0))
    request.input.example_list_with_context.examples.add()
    response = predict_stub.Regress(request, timeout=60)
    assert [r.value for r in response.result.regressions] == [4.0]


def test_multi_inference_runs_classify_and_regress_tasks(predict_stub):
    request = inference_pb2.MultiInferenceRequest()
    for signature, method in (
        ("classify_x_to_y", "tensorflow/serving/classify"),
        ("regress_x_to_y2", "tensorflow/serving/regress"),
    ):
        task = request.tasks.add()
        task.model_spec.name = "half_plus_two"
        task.model_spec.signature_name = signature
        task.method_name = method
    request.input.example_list.examples.add().CopyFrom(example(x=2.0))
    response = predict_stub.MultiInference(request, timeout=60)
    assert response.results[0].classification_result.classifications[0].classes[0].score == 3.0
    assert response.results[1].regression_result.regressions[0].value == 4.0


def test_stateful_counter_signatures(predict_stub):
    def call(signature, **inputs):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "counter"
        request.model_spec.signature_name = signature
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(tf.make_tensor_proto(np.float32(value)))
        return float(tf.make_ndarray(predict_stub.Predict(request, timeout=60).outputs["output"]))

    start = call("get_counter")
    assert call("incr_counter") == start + 1
    assert call("incr_counter_by", delta=3.0) == start + 4
    assert call("get_counter") == start + 4


def test_get_model_metadata_packs_signature_defs(predict_stub):
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "half_plus_two"
    request.metadata_field.append("signature_def")
    response = predict_stub.GetModelMetadata(request, timeout=60)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    assert set(signatures.signature_def) == {
        "serving_default",
        "classify_x_to_y",
        "regress_x_to_y",
        "regress_x_to_y2",
        "regress_x2_to_y3",
    }
    assert response.model_spec.version.value == 123
    request.ClearField("metadata_field")
    err = rpc_error(predict_stub.GetModelMetadata, request)
    assert err.details() == "GetModelMetadataRequest must specify at least one metadata_field"


def test_get_model_status_matches_rest(model_stub):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "saved_model_half_plus_two_2_versions"
    response = model_stub.GetModelStatus(request, timeout=60)
    assert [(s.version, s.state, s.status.error_code) for s in response.model_version_status] == [
        (124, get_model_status_pb2.ModelVersionStatus.AVAILABLE, 0),
        (123, get_model_status_pb2.ModelVersionStatus.AVAILABLE, 0),
    ]
    request.model_spec.name = "bad_half_plus_two"
    (bad,) = model_stub.GetModelStatus(request, timeout=60).model_version_status
    assert bad.state == get_model_status_pb2.ModelVersionStatus.END
    assert bad.status.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    request.model_spec.name = "nope"
    err = rpc_error(model_stub.GetModelStatus, request)
    assert (err.code(), err.details()) == (
        grpc.StatusCode.NOT_FOUND,
        "Could not find any versions of model nope",
    )


def test_health_check_reports_serving(channel):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "tensorflow.serving.PredictionService", "tensorflow.serving.ModelService"):
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=60)
        assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_client_deadline_is_honoured(aspire, predict_stub, tmp_path):
    from tests.integration.export_models import export_slow_model

    export_slow_model(tmp_path / "slow" / "1")
    aspire.add_model("slow", tmp_path / "slow")
    aspire.wait_state("slow", 1, "AVAILABLE")
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "slow"
    request.inputs["iterations"].CopyFrom(tf.make_tensor_proto(np.array([2_000_000], np.int64)))
    with pytest.raises(grpc.RpcError) as err:
        predict_stub.Predict(request, timeout=0.3)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def reload_config(models) -> model_management_pb2.ReloadConfigRequest:
    config = model_server_config_pb2.ModelServerConfig()
    for m in models:
        entry = config.model_config_list.config.add(
            name=m.name, base_path=m.base_path, model_platform="tensorflow"
        )
        policy = type(m.version_policy).__name__
        if policy == "All":
            entry.model_version_policy.all.SetInParent()
    return model_management_pb2.ReloadConfigRequest(config=config)


def test_reload_config_swaps_model_list_while_clients_predict(
    aspire, model_stub, predict_stub, model_dir
):
    from config.model_config import ModelSource

    base, publish = model_dir
    publish(1, "saved_model_half_plus_three")
    kept = list(aspire.models)
    failures, answers, stop = [], [], threading.Event()

    def client():
        while not stop.is_set():
            try:
                answers.append(
                    predict_stub.Predict(predict_request(), timeout=30).outputs["y"].float_val[0]
                )
            except grpc.RpcError as exc:
                failures.append(exc.details())

    thread = threading.Thread(target=client)
    thread.start()
    try:
        # Add a model: the call returns once it has a version AVAILABLE (or END).
        response = model_stub.HandleReloadConfigRequest(
            reload_config(kept + [ModelSource("reloaded", str(base))]), timeout=300
        )
        assert response.status.error_code == 0
        assert aspire.states("reloaded") == {1: ("AVAILABLE", "OK")}
        r = predict_request(name="reloaded", x=(1.0,))
        assert predict_stub.Predict(r, timeout=60).outputs["y"].float_val == [3.5]
        # Remove it again: its versions are unloaded, the others are not disturbed.
        model_stub.HandleReloadConfigRequest(reload_config(kept), timeout=300)
        aspire.wait_state("reloaded", 1, "END")
        wait_for(lambda: len(answers) > 10, 30, what="predictions during reloads")
    finally:
        stop.set()
        thread.join(30)
    assert failures == []
    assert set(answers) == {3.0}
    assert aspire.states("half_plus_two") == {123: ("AVAILABLE", "OK")}


@pytest.mark.parametrize(
    "text,message",
    [
        (
            "model_config_list { config { name: 'a' base_path: 'relative' "
            "model_platform: 'tensorflow' } }",
            "Expected model a to have an absolute path or URI; got base_path()=relative",
        ),
        (
            "model_config_list { config { name: 'a' base_path: '/a' model_platform: 'tensorflow' } "
            "config { name: 'a' base_path: '/b' model_platform: 'tensorflow' } }",
            "Illegal to list model a multiple times in config list",
        ),
        (
            "model_config_list { config { name: 'a' base_path: '/a' model_platform: 'onnx' } }",
            "Model a requests unsupported platform onnx",
        ),
    ],
)
def test_invalid_reload_config_is_rejected_and_changes_nothing(aspire, model_stub, text, message):
    request = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(text, request.config)
    err = rpc_error(model_stub.HandleReloadConfigRequest, request)
    assert (err.code(), err.details()) == (grpc.StatusCode.INVALID_ARGUMENT, message)
    assert aspire.states("half_plus_two") == {123: ("AVAILABLE", "OK")}


def test_reload_reports_a_new_model_that_fails_to_load(aspire, model_stub):
    from config.model_config import ModelSource
    from tests.integration.conftest import DATA

    kept = list(aspire.models)
    err = rpc_error(
        model_stub.HandleReloadConfigRequest,
        reload_config(kept + [ModelSource("broken_new", str(DATA / "bad_half_plus_two"))]),
    )
    assert err.code() == grpc.StatusCode.UNKNOWN
    assert err.details().startswith(
        "1 model(s) did not become available: "
        "{{name: broken_new version: 123} due to error: NOT_FOUND: "
    )
    model_stub.HandleReloadConfigRequest(reload_config(kept), timeout=300)
    assert aspire.states("half_plus_two") == {123: ("AVAILABLE", "OK")}
