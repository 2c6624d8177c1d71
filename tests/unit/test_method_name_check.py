"""--enable_signature_method_name_check, without Ray: which calls check a signature's method_name,
with TF Serving's codes and words (predict_util.cc, classifier.cc, regressor.cc,
multi_inference.cc), over REST and gRPC alike, and nothing checked while the flag is off.

Models: TF Serving's native TF2 half_plus_two, whose classify and regress signatures carry the
predict method (what the flag exists for), and a TF1 export made here whose `custom` signature
has a method TF Serving does not know.
"""

from __future__ import annotations

import os

import pytest
import tensorflow as tf
from tensorflow.core.example import example_pb2
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    inference_pb2,
    predict_pb2,
    regression_pb2,
)

from core import metrics
from core.errors import AspireError, http_status
from deployments.replica import inference, tfs_grpc_calls
from deployments.replica.loader import SavedModelLoader
from deployments.replica.servable import LoadedVersion, VersionSpec
from deployments.wire.direct import decode_answer

DATA = os.path.join(os.path.dirname(__file__), "..", "data")
PREDICT, CLASSIFY, REGRESS = (
    "tensorflow/serving/predict",
    "tensorflow/serving/classify",
    "tensorflow/serving/regress",
)
CUSTOM = "tensorflow/serving/custom"
PREDICT_MESSAGE = (
    "Expected prediction signature method_name to be one of {tensorflow/serving/predict, "
    "tensorflow/serving/classify, tensorflow/serving/regress}. Was: " + CUSTOM
)
CLASSIFY_MESSAGE = (
    "Expected classification signature method_name to be tensorflow/serving/classify. "
    "Was: tensorflow/serving/predict"
)
REGRESS_MESSAGE = (
    "Expected regression signature method_name to be tensorflow/serving/regress. "
    "Was: tensorflow/serving/predict"
)


def export_methods(path: str) -> str:
    """y = 2x under three signatures: serving_default (predict), `custom` (a method TF Serving
    does not know) and `as_regress` (the regress method on a predict-shaped signature)."""
    v1 = tf.compat.v1
    utils = v1.saved_model.signature_def_utils
    graph = tf.Graph()
    with graph.as_default(), v1.Session(graph=graph) as session:
        x = v1.placeholder(tf.float32, [None], name="x")
        y = tf.multiply(x, 2.0, name="y")
        io = {
            "inputs": {"x": v1.saved_model.utils.build_tensor_info(x)},
            "outputs": {"y": v1.saved_model.utils.build_tensor_info(y)},
        }
        builder = v1.saved_model.Builder(path)
        builder.add_meta_graph_and_variables(
            session,
            ["serve"],
            signature_def_map={
                "serving_default": utils.build_signature_def(**io, method_name=PREDICT),
                "custom": utils.build_signature_def(**io, method_name=CUSTOM),
                "as_regress": utils.build_signature_def(**io, method_name=REGRESS),
            },
        )
        builder.save()
    return path


@pytest.fixture(scope="module")
def methods_dir(tmp_path_factory):
    return export_methods(str(tmp_path_factory.mktemp("methods") / "1"))


@pytest.fixture(scope="module")
def methods(methods_dir):
    model = SavedModelLoader(methods_dir).load()
    assert model.signatures["custom"].method_name == CUSTOM
    yield model
    model.unload()


@pytest.fixture(scope="module")
def tf2():
    model = SavedModelLoader(os.path.join(DATA, "saved_model_half_plus_two_tf2_cpu", "00000123"))
    loaded = model.load()
    assert loaded.signatures["classify_x_to_y"].method_name == PREDICT
    yield loaded
    loaded.unload()


def predict_request(signature_name: str, **values) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = "m", signature_name
    for alias, floats in values.items():
        proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=floats)
        proto.tensor_shape.dim.add(size=len(floats))
        request.inputs[alias].CopyFrom(proto)
    return request


def examples(request, x: float = 1.0):
    example = example_pb2.Example()
    example.features.feature["x"].float_list.value.append(x)
    request.input.example_list.examples.append(example)
    return request


def classify_request(signature_name: str) -> classification_pb2.ClassificationRequest:
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name, request.model_spec.signature_name = "m", signature_name
    return examples(request)


def regress_request(signature_name: str) -> regression_pb2.RegressionRequest:
    request = regression_pb2.RegressionRequest()
    request.model_spec.name, request.model_spec.signature_name = "m", signature_name
    return examples(request)


def raised(fn, *args, **kwargs) -> tuple[str, str]:
    with pytest.raises(AspireError) as err:
        fn(*args, **kwargs)
    return err.value.code, err.value.message


REST_EXAMPLES = {"examples": [{"x": 1.0}]}


# -- Predict ----------------------------------------------------------------------------------


def test_predict_on_an_unknown_method_is_internal_over_grpc_and_rest_with_the_check(methods):
    request = predict_request("custom", x=[1.0])
    assert raised(tfs_grpc_calls.predict, methods, request, "m", 1, check=True) == (
        "INTERNAL",
        PREDICT_MESSAGE,
    )
    doc = {"signature_name": "custom", "instances": [1.0]}
    assert inference.handle_rest(methods, "predict", doc, True) == ("INTERNAL", PREDICT_MESSAGE)
    assert http_status("INTERNAL") == 500  # TF Serving's InternalError, not a 400


def test_predict_accepts_any_of_the_three_serving_methods_with_the_check(methods):
    for name in ("serving_default", "as_regress"):
        out = tfs_grpc_calls.predict(methods, predict_request(name, x=[1.5]), "m", 1, check=True)
        assert list(out.outputs["y"].float_val) == [3.0]


def test_predict_reads_no_method_name_without_the_check(methods):
    out = tfs_grpc_calls.predict(methods, predict_request("custom", x=[1.0]), "m", 1)
    assert list(out.outputs["y"].float_val) == [2.0]
    code, body = inference.handle_rest(
        methods, "predict", {"signature_name": "custom", "instances": [1.0]}
    )
    assert code == "OK" and '"predictions"' in body


def test_grpc_predict_checks_the_method_before_the_inputs(methods):
    # predict_util.cc PreProcessPrediction: VerifySignature, then VerifyRequestInputsSize
    no_inputs = predict_request("custom")
    assert raised(tfs_grpc_calls.predict, methods, no_inputs, "m", 1, check=True)[0] == "INTERNAL"


def test_rest_predict_decodes_the_body_before_the_method_is_checked(methods):
    # the REST handler fills the PredictRequest from JSON first, then runs Predict
    doc = {"signature_name": "custom", "inputs": {"x": "not a number"}}
    code, message = inference.handle_rest(methods, "predict", doc, True)
    assert code == "INVALID_ARGUMENT" and message != PREDICT_MESSAGE


# -- Classify, Regress ------------------------------------------------------------------------


def test_classify_and_regress_need_their_own_method_with_the_check_over_grpc_and_rest(tf2):
    assert raised(
        tfs_grpc_calls.classify, tf2, classify_request("classify_x_to_y"), "m", 1, check=True
    ) == ("INVALID_ARGUMENT", CLASSIFY_MESSAGE)
    assert raised(
        tfs_grpc_calls.regress, tf2, regress_request("regress_x_to_y"), "m", 1, check=True
    ) == ("INVALID_ARGUMENT", REGRESS_MESSAGE)
    classify_doc = {"signature_name": "classify_x_to_y", **REST_EXAMPLES}
    regress_doc = {"signature_name": "regress_x_to_y", **REST_EXAMPLES}
    assert inference.handle_rest(tf2, "classify", classify_doc, True) == (
        "INVALID_ARGUMENT",
        CLASSIFY_MESSAGE,
    )
    assert inference.handle_rest(tf2, "regress", regress_doc, True) == (
        "INVALID_ARGUMENT",
        REGRESS_MESSAGE,
    )
    assert http_status("INVALID_ARGUMENT") == 400


def test_native_tf2_classify_and_regress_serve_without_the_check(tf2):
    classified = tfs_grpc_calls.classify(tf2, classify_request("classify_x_to_y"), "m", 1)
    [row] = classified.result.classifications
    assert row.classes[0].score == pytest.approx(2.5)
    regressed = tfs_grpc_calls.regress(tf2, regress_request("regress_x_to_y"), "m", 1)
    assert [r.value for r in regressed.result.regressions] == [pytest.approx(2.5)]


def test_the_method_is_checked_before_the_signature_s_inputs_and_outputs(tf2):
    # classifier.cc GetClassificationSignatureDef: with the check, the method comes first;
    # without it, PreProcessClassification's shape checks answer
    request = classify_request("serving_default")  # x -> y: no "inputs" alias
    checked = raised(tfs_grpc_calls.classify, tf2, request, "m", 1, check=True)
    assert checked == ("INVALID_ARGUMENT", CLASSIFY_MESSAGE)
    unchecked = raised(tfs_grpc_calls.classify, tf2, request, "m", 1)
    assert unchecked[1].startswith("No classification inputs found in SignatureDef")


# -- MultiInference ---------------------------------------------------------------------------


def multi_request(*tasks: tuple[str, str]) -> inference_pb2.MultiInferenceRequest:
    request = inference_pb2.MultiInferenceRequest()
    for signature_name, method in tasks:
        task = request.tasks.add(method_name=method)
        task.model_spec.name, task.model_spec.signature_name = "m", signature_name
    return examples(request)


def test_multi_inference_checks_each_task_s_signature_with_the_check(tf2):
    request = multi_request(("regress_x_to_y", REGRESS), ("classify_x_to_y", CLASSIFY))
    assert raised(tfs_grpc_calls.multi_inference, tf2, request, "m", 1, check=True) == (
        "INVALID_ARGUMENT",
        REGRESS_MESSAGE,
    )
    response = tfs_grpc_calls.multi_inference(tf2, request, "m", 1)
    assert len(response.results) == 2


def test_a_task_s_own_method_is_checked_whether_or_not_the_flag_is_on(tf2):
    request = multi_request(("regress_x_to_y", PREDICT))
    for check in (False, True):
        assert raised(tfs_grpc_calls.multi_inference, tf2, request, "m", 1, check=check) == (
            "UNIMPLEMENTED",
            f"Unsupported signature method_name: {PREDICT}",
        )


# -- the replica: the flag from its VersionSpec to every call ---------------------------------


@pytest.mark.parametrize("check", [False, True])
def test_a_loaded_version_applies_its_spec_s_check_to_rest_and_grpc(methods_dir, check):
    spec = VersionSpec("m", 1, methods_dir, warmup_iterations=None, method_name_check=check)
    version = LoadedVersion(spec, metrics.Recorder())
    try:
        rest = version.work("predict", b'{"signature_name": "custom", "instances": [1.0]}')
        grpc = version.work("Predict", predict_request("custom", x=[1.0]).SerializeToString())
        answers = []
        for answer in (rest, grpc):
            try:
                answers.append(("OK", decode_answer(answer)))
            except AspireError as err:
                answers.append((err.code, err.message))
    finally:
        version.unload()
    if check:
        assert answers == [("INTERNAL", PREDICT_MESSAGE)] * 2
    else:
        assert [code for code, _ in answers] == ["OK", "OK"]
        reply = predict_pb2.PredictResponse.FromString(answers[1][1])
        assert list(reply.outputs["y"].float_val) == [2.0]


# -- Warmup -----------------------------------------------------------------------------------


def test_warmup_records_are_checked_like_calls_only_with_the_check(methods, methods_dir):
    from tensorflow_serving.apis import prediction_log_pb2

    from deployments.replica.warmup import WARMUP_FILE, run_warmup

    log = prediction_log_pb2.PredictionLog()
    log.predict_log.request.CopyFrom(predict_request("custom", x=[1.0]))
    path = os.path.join(methods_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        with tf.io.TFRecordWriter(path) as writer:
            writer.write(log.SerializeToString())
        assert run_warmup(methods, methods_dir, "m", 1) == 1
        assert raised(run_warmup, methods, methods_dir, "m", 1, method_name_check=True) == (
            "INTERNAL",
            PREDICT_MESSAGE,
        )
    finally:
        os.remove(path)
