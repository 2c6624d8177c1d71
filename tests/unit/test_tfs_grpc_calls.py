"""deployments.replica.tfs_grpc_calls on real SavedModels, without Ray: TF Serving's gRPC answers
and errors.

Expected values are TF Serving's for its test models (y = 0.5x + 2, y2 = 0.5x + 3); expected
messages are TF Serving's and TensorFlow's, character for character.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.example import example_pb2
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    inference_pb2,
    input_pb2,
    predict_pb2,
    regression_pb2,
)

from core.errors import AspireError
from deployments.replica import tfs_grpc_calls
from deployments.replica.loader import SavedModelLoader

DATA = os.path.join(os.path.dirname(__file__), "..", "data")
CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"


def load(model: str):
    return SavedModelLoader(os.path.join(DATA, model, "00000123")).load()


@pytest.fixture(scope="module")
def half_plus_two():
    model = load("saved_model_half_plus_two_cpu")
    yield model
    model.unload()


@pytest.fixture(scope="module")
def tf2_half_plus_two():
    model = load("saved_model_half_plus_two_tf2_cpu")
    yield model
    model.unload()


@pytest.fixture(scope="module")
def counter():
    model = load("saved_model_counter")
    yield model
    model.unload()


@pytest.fixture(scope="module")
def echo(tmp_path_factory):
    """A TF1 export whose `echo` signature returns its string, int64, bool and half inputs."""
    v1 = tf.compat.v1
    path = str(tmp_path_factory.mktemp("echo") / "1")
    graph = tf.Graph()
    with graph.as_default(), v1.Session(graph=graph) as session:
        inputs = {
            "s": v1.placeholder(tf.string, [None], name="s"),
            "i": v1.placeholder(tf.int64, [None], name="i"),
            "b": v1.placeholder(tf.bool, [None], name="b"),
            "h": v1.placeholder(tf.float16, [None], name="h"),
        }
        outputs = {f"{k}_out": tf.identity(t, name=f"{k}_out") for k, t in inputs.items()}
        signature = v1.saved_model.signature_def_utils.predict_signature_def(inputs, outputs)
        builder = v1.saved_model.Builder(path)
        builder.add_meta_graph_and_variables(
            session, ["serve"], signature_def_map={"echo": signature}
        )
        builder.save()
    model = SavedModelLoader(path).load()
    yield model
    model.unload()


def floats(values, shape) -> tensor_pb2.TensorProto:
    """A DT_FLOAT TensorProto with typed float_val, as most non-Python clients send it."""
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=values)
    for size in shape:
        proto.tensor_shape.dim.add(size=size)
    return proto


def predict_request(signature_name="", output_filter=(), **inputs) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest(output_filter=list(output_filter))
    request.model_spec.name = "half"
    request.model_spec.signature_name = signature_name
    for alias, proto in inputs.items():
        request.inputs[alias].CopyFrom(proto)
    return request


def example(**features) -> example_pb2.Example:
    ex = example_pb2.Example()
    for key, values in features.items():
        ex.features.feature[key].float_list.value.extend(values)
    return ex


def example_input(*examples, context=None) -> input_pb2.Input:
    inp = input_pb2.Input()
    if context is None:
        inp.example_list.examples.extend(examples)
    else:
        inp.example_list_with_context.context.CopyFrom(context)
        inp.example_list_with_context.examples.extend(examples)
    return inp


def classify_request(signature_name, inp) -> classification_pb2.ClassificationRequest:
    request = classification_pb2.ClassificationRequest(input=inp)
    request.model_spec.name, request.model_spec.signature_name = "half", signature_name
    return request


def regress_request(signature_name, inp) -> regression_pb2.RegressionRequest:
    request = regression_pb2.RegressionRequest(input=inp)
    request.model_spec.name, request.model_spec.signature_name = "half", signature_name
    return request


def multi_request(*tasks, inp=None) -> inference_pb2.MultiInferenceRequest:
    request = inference_pb2.MultiInferenceRequest()
    for name, signature_name, method in tasks:
        task = request.tasks.add(method_name=method)
        task.model_spec.name, task.model_spec.signature_name = name, signature_name
    request.input.CopyFrom(inp if inp is not None else example_input(example(x=[2.0])))
    return request


def error_of(fn, *args) -> AspireError:
    with pytest.raises(AspireError) as info:
        fn(*args)
    return info.value


def assert_spec(spec, name, version, signature_name):
    assert (spec.name, spec.version.value, spec.signature_name) == (name, version, signature_name)


# ------------------------------------------------------------------------------------------ Predict
def test_predict_half_plus_two_returns_y_as_typed_float_val(half_plus_two):
    response = tfs_grpc_calls.predict(
        half_plus_two, predict_request(x=floats([2.0], [1, 1])), "half", 123
    )
    y = response.outputs["y"]
    assert list(response.outputs) == ["y"]
    assert y.dtype == types_pb2.DT_FLOAT and [d.size for d in y.tensor_shape.dim] == [1, 1]
    assert list(y.float_val) == [3.0] and not y.tensor_content


def test_predict_response_model_spec_names_served_version_and_default_signature(half_plus_two):
    response = tfs_grpc_calls.predict(
        half_plus_two, predict_request(x=floats([2.0], [1, 1])), "half", 123
    )
    assert_spec(response.model_spec, "half", 123, "serving_default")
    assert response.model_spec.HasField("version")


def test_predict_with_output_filter_returns_the_filtered_output(half_plus_two):
    request = predict_request(output_filter=["y"], x=floats([2.0], [1, 1]))
    response = tfs_grpc_calls.predict(half_plus_two, request, "half", 123)
    assert list(response.outputs) == ["y"] and list(response.outputs["y"].float_val) == [3.0]


def test_predict_tensor_content_output_decodes_to_the_same_values(half_plus_two):
    request = predict_request(x=tf.make_tensor_proto(np.array([[1.0], [2.0], [5.0]], np.float32)))
    response = tfs_grpc_calls.predict(half_plus_two, request, "half", 123, tensor_content=True)
    y = response.outputs["y"]
    assert y.tensor_content and not y.float_val
    np.testing.assert_array_equal(tf.make_ndarray(y), [[2.5], [3.0], [4.5]])


def test_predict_named_signature_is_echoed_in_model_spec(half_plus_two):
    request = predict_request("regress_x2_to_y3", inputs=floats([4.0], [1, 1]))
    response = tfs_grpc_calls.predict(half_plus_two, request, "half", 123)
    assert_spec(response.model_spec, "half", 123, "regress_x2_to_y3")
    assert list(response.outputs["outputs"].float_val) == [5.0]


def test_predict_omitted_input_with_signature_default_uses_the_default(tf2_half_plus_two):
    response = tfs_grpc_calls.predict(tf2_half_plus_two, predict_request(), "tf2", 123)
    assert list(response.outputs["y"].float_val) == [2.0]


def test_predict_sent_input_overrides_signature_default(tf2_half_plus_two):
    response = tfs_grpc_calls.predict(
        tf2_half_plus_two, predict_request(x=floats([2.0], [1])), "tf2", 123
    )
    assert list(response.outputs["y"].float_val) == [3.0]


def test_predict_counter_signatures_keep_state_and_return_float_not_float_ref(counter):
    def run(signature_name, **inputs):
        out = tfs_grpc_calls.predict(
            counter, predict_request(signature_name, **inputs), "c", 123
        ).outputs["output"]
        assert out.dtype == types_pb2.DT_FLOAT and not out.tensor_shape.dim
        return out.float_val[0]

    start = run("get_counter")
    assert run("incr_counter") == start + 1
    assert run("get_counter") == start + 1
    assert run("incr_counter_by", delta=floats([2.0], [])) == start + 3
    assert run("reset_counter") == 0.0


def test_predict_typed_outputs_use_tf_serving_value_fields(echo):
    request = predict_request(
        "echo",
        s=tf.make_tensor_proto(np.array([b"ab", b"c"], object)),
        i=tf.make_tensor_proto(np.array([1, -2], np.int64)),
        b=tf.make_tensor_proto(np.array([True, False])),
        h=tf.make_tensor_proto(np.array([1.5, -2.0], np.float16)),
    )
    out = tfs_grpc_calls.predict(echo, request, "echo", 1).outputs
    assert list(out["s_out"].string_val) == [b"ab", b"c"]
    assert list(out["i_out"].int64_val) == [1, -2]
    assert list(out["b_out"].bool_val) == [True, False]
    assert list(out["h_out"].half_val) == np.array([1.5, -2.0], np.float16).view(np.uint16).tolist()
    assert out["h_out"].dtype == types_pb2.DT_HALF


def test_predict_tensor_content_covers_numbers_and_leaves_strings_in_string_val(echo):
    values = {
        "s": np.array([b"ab", b"c"], object),
        "i": np.array([1, -2], np.int64),
        "b": np.array([True, False]),
        "h": np.array([1.5, -2.0], np.float16),
    }
    request = predict_request("echo", **{k: tf.make_tensor_proto(v) for k, v in values.items()})
    out = tfs_grpc_calls.predict(echo, request, "echo", 1, tensor_content=True).outputs
    assert list(out["s_out"].string_val) == [b"ab", b"c"] and not out["s_out"].tensor_content
    for alias in ("i", "b", "h"):
        assert out[f"{alias}_out"].tensor_content == values[alias].tobytes()
        np.testing.assert_array_equal(tf.make_ndarray(out[f"{alias}_out"]), values[alias])


def test_predict_reads_string_tensor_content_in_tf_length_prefixed_encoding(echo):
    strings = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING, tensor_content=bytes([2, 1]) + b"abc"
    )
    strings.tensor_shape.dim.add(size=2)
    request = predict_request(
        "echo",
        output_filter=["s_out"],
        s=strings,
        i=tf.make_tensor_proto(np.array([0], np.int64)),
        b=tf.make_tensor_proto(np.array([True])),
        h=tf.make_tensor_proto(np.array([0], np.float16)),
    )
    out = tfs_grpc_calls.predict(echo, request, "echo", 1).outputs
    assert list(out) == ["s_out"] and list(out["s_out"].string_val) == [b"ab", b"c"]


def test_predict_unknown_signature_is_failed_precondition(half_plus_two):
    err = error_of(
        tfs_grpc_calls.predict,
        half_plus_two,
        predict_request("nope", x=floats([2.0], [1, 1])),
        "half",
        123,
    )
    assert (err.code, err.message) == (
        "FAILED_PRECONDITION",
        'Serving signature key "nope" not found.',
    )


def test_predict_extra_input_is_an_input_size_mismatch(half_plus_two):
    request = predict_request(x=floats([2.0], [1, 1]), z=floats([2.0], [1, 1]))
    err = error_of(tfs_grpc_calls.predict, half_plus_two, request, "half", 123)
    assert (err.code, err.message) == (
        "INVALID_ARGUMENT",
        "input size does not match signature: 2!=1 len({x,z}) != len({x}). "
        "Sent extra: {z}. Missing but required: {}.",
    )


def test_predict_missing_input_without_defaults_is_an_input_size_mismatch(half_plus_two):
    err = error_of(tfs_grpc_calls.predict, half_plus_two, predict_request(), "half", 123)
    assert (err.code, err.message) == (
        "INVALID_ARGUMENT",
        "input size does not match signature: 0!=1 len({}) != len({x}). "
        "Sent extra: {}. Missing but required: {x}.",
    )


def test_predict_input_size_mismatch_lists_keys_sorted(echo):
    request = predict_request("echo", s=floats([], [0]), i=floats([], [0]), b=floats([], [0]))
    err = error_of(tfs_grpc_calls.predict, echo, request, "echo", 1)
    assert err.message == (
        "input size does not match signature: 3!=4 len({b,i,s}) != len({b,h,i,s}). "
        "Sent extra: {}. Missing but required: {h}."
    )


def test_predict_same_count_wrong_name_names_the_missing_alias_and_feed(half_plus_two):
    err = error_of(
        tfs_grpc_calls.predict, half_plus_two, predict_request(z=floats([2.0], [1, 1])), "half", 123
    )
    assert (err.code, err.message) == (
        "INVALID_ARGUMENT",
        "Signature input alias: x(feed name: x:0) not found in request and no "
        "default value provided. Inputs expected to be in the request {z}, "
        "or default input alias set: ",
    )


def test_predict_unknown_name_beside_defaults_is_an_invalid_name(tf2_half_plus_two):
    err = error_of(
        tfs_grpc_calls.predict, tf2_half_plus_two, predict_request(z=floats([2.0], [1])), "tf2", 123
    )
    assert (err.code, err.message) == (
        "INVALID_ARGUMENT",
        "Inputs contains invalid name. Used request inputs: , request input: z",
    )


def test_predict_wrong_dtype_is_tf_sessions_expects_arg_message(half_plus_two):
    request = predict_request(x=tf.make_tensor_proto(np.array([["a"]], object)))
    err = error_of(tfs_grpc_calls.predict, half_plus_two, request, "half", 123)
    assert (err.code, err.message) == (
        "INVALID_ARGUMENT",
        "Expects arg[0] to be float but string is provided",
    )


def test_predict_wrong_dtype_counts_args_in_sorted_feed_name_order(echo):
    request = predict_request(
        "echo",
        s=tf.make_tensor_proto(np.array([b"a"], object)),
        i=tf.make_tensor_proto(np.array(["x"], object)),
        b=tf.make_tensor_proto(np.array([True])),
        h=tf.make_tensor_proto(np.array([0], np.float16)),
    )
    err = error_of(tfs_grpc_calls.predict, echo, request, "echo", 1)
    assert err.message == "Expects arg[2] to be int64 but string is provided"  # b:0, h:0, i:0, s:0


def test_predict_unparsable_tensor_is_a_tensor_parsing_error(half_plus_two):
    bad = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_content=b"\x00\x00\x80")
    bad.tensor_shape.dim.add(size=1)
    err = error_of(tfs_grpc_calls.predict, half_plus_two, predict_request(x=bad), "half", 123)
    assert (err.code, err.message) == ("INVALID_ARGUMENT", "tensor parsing error: x")


def test_predict_output_filter_unknown_alias_lists_signature_outputs(half_plus_two):
    request = predict_request(output_filter=["z"], x=floats([2.0], [1, 1]))
    err = error_of(tfs_grpc_calls.predict, half_plus_two, request, "half", 123)
    assert (err.code, err.message) == (
        "INVALID_ARGUMENT",
        "output tensor alias not found in signature: z Outputs expected to be in the set {y}.",
    )


def test_predict_output_filter_duplicate_alias_is_rejected(half_plus_two):
    request = predict_request(output_filter=["y", "y"], x=floats([2.0], [1, 1]))
    err = error_of(tfs_grpc_calls.predict, half_plus_two, request, "half", 123)
    assert (err.code, err.message) == ("INVALID_ARGUMENT", "duplicate output tensor alias: y")


def test_predict_output_filter_computes_only_requested_outputs(echo, monkeypatch):
    fetched = []
    run = echo.run

    def spy(signature_name, inputs, output_aliases=None):
        fetched.append(output_aliases)
        return run(signature_name, inputs, output_aliases)

    monkeypatch.setattr(echo, "run", spy)
    request = predict_request(
        "echo",
        output_filter=["i_out"],
        s=tf.make_tensor_proto(np.array([b"a"], object)),
        i=tf.make_tensor_proto(np.array([7], np.int64)),
        b=tf.make_tensor_proto(np.array([True])),
        h=tf.make_tensor_proto(np.array([0], np.float16)),
    )
    response = tfs_grpc_calls.predict(echo, request, "echo", 1)
    assert fetched == [["i_out"]] and list(response.outputs) == ["i_out"]


# -------------------------------------------------------------------------------- Classify, Regress
def test_classify_returns_scores_per_example_with_empty_labels(half_plus_two):
    request = classify_request("classify_x_to_y", example_input(example(x=[2.0]), example(x=[4.0])))
    response = tfs_grpc_calls.classify(half_plus_two, request, "half", 123)
    assert [[(c.label, c.score) for c in cl.classes] for cl in response.result.classifications] == [
        [("", 3.0)],
        [("", 4.0)],
    ]
    assert_spec(response.model_spec, "half", 123, "classify_x_to_y")


def test_classify_with_context_merges_context_into_each_example(half_plus_two):
    request = classify_request(
        "classify_x_to_y", example_input(example(), example(), context=example(x=[2.0]))
    )
    response = tfs_grpc_calls.classify(half_plus_two, request, "half", 123)
    assert [cl.classes[0].score for cl in response.result.classifications] == [3.0, 3.0]


def test_regress_returns_one_value_per_example(half_plus_two):
    request = regress_request("regress_x_to_y", example_input(example(x=[1.0]), example(x=[2.0])))
    response = tfs_grpc_calls.regress(half_plus_two, request, "half", 123)
    assert [r.value for r in response.result.regressions] == [2.5, 3.0]
    assert_spec(response.model_spec, "half", 123, "regress_x_to_y")


def test_regress_with_context_merges_context_into_each_example(half_plus_two):
    request = regress_request("regress_x_to_y2", example_input(example(), context=example(x=[4.0])))
    response = tfs_grpc_calls.regress(half_plus_two, request, "half", 123)
    assert [r.value for r in response.result.regressions] == [5.0]


@pytest.mark.parametrize(
    "inp",
    [input_pb2.Input(), example_input(), example_input(context=example(x=[1.0]))],
    ids=["no-kind", "empty-list", "empty-list-with-context"],
)
def test_empty_classify_and_regress_input_is_input_is_empty(half_plus_two, inp):
    for fn, request in (
        (tfs_grpc_calls.classify, classify_request("classify_x_to_y", inp)),
        (tfs_grpc_calls.regress, regress_request("regress_x_to_y", inp)),
    ):
        err = error_of(fn, half_plus_two, request, "half", 123)
        assert (err.code, err.message) == ("INVALID_ARGUMENT", "Input is empty.")


def test_classify_unknown_signature_is_no_signature_found(half_plus_two):
    err = error_of(
        tfs_grpc_calls.classify,
        half_plus_two,
        classify_request("nope", example_input(example(x=[1.0]))),
        "half",
        123,
    )
    assert (err.code, err.message) == (
        "INVALID_ARGUMENT",
        "No signature was found with the name: nope",
    )


def test_classify_on_a_regression_signature_reports_missing_classes_or_scores(half_plus_two):
    err = error_of(
        tfs_grpc_calls.classify,
        half_plus_two,
        classify_request("regress_x_to_y", example_input(example(x=[1.0]))),
        "half",
        123,
    )
    assert err.code == "INVALID_ARGUMENT"
    assert err.message.startswith(
        "Expected classification signature outputs to contain at least one of "
        '"classes" or "scores". Signature was: '
    )


def test_regress_on_a_classification_signature_reports_missing_outputs(half_plus_two):
    err = error_of(
        tfs_grpc_calls.regress,
        half_plus_two,
        regress_request("classify_x_to_y", example_input(example(x=[1.0]))),
        "half",
        123,
    )
    assert err.code == "INVALID_ARGUMENT"
    assert err.message.startswith("No regression outputs found in SignatureDef: ")


def test_regress_examples_into_a_float_input_is_tf_sessions_expects_arg_message(half_plus_two):
    err = error_of(
        tfs_grpc_calls.regress,
        half_plus_two,
        regress_request("regress_x2_to_y3", example_input(example(x=[1.0]))),
        "half",
        123,
    )
    assert (err.code, err.message) == (
        "INVALID_ARGUMENT",
        "Expects arg[0] to be float but string is provided",
    )


# ----------------------------------------------------------------------------------- MultiInference
def test_multi_inference_returns_results_in_task_order_each_with_its_model_spec(half_plus_two):
    request = multi_request(
        ("half", "regress_x_to_y2", REGRESS), ("half", "classify_x_to_y", CLASSIFY)
    )
    response = tfs_grpc_calls.multi_inference(half_plus_two, request, "half", 123)
    regression, classification = response.results
    assert [r.value for r in regression.regression_result.regressions] == [4.0]
    assert classification.classification_result.classifications[0].classes[0].score == 3.0
    assert_spec(regression.model_spec, "half", 123, "regress_x_to_y2")
    assert_spec(classification.model_spec, "half", 123, "classify_x_to_y")


def test_multi_inference_with_context_feeds_merged_examples(half_plus_two):
    inp = example_input(example(), example(), context=example(x=[6.0]))
    request = multi_request(("half", "regress_x_to_y", REGRESS), inp=inp)
    response = tfs_grpc_calls.multi_inference(half_plus_two, request, "half", 123)
    assert [r.value for r in response.results[0].regression_result.regressions] == [5.0, 5.0]


@pytest.mark.parametrize(
    "tasks,code,message",
    [
        (
            [("", "classify_x_to_y", CLASSIFY)],
            "INVALID_ARGUMENT",
            "Found ModelSpec with an empty model name.",
        ),
        (
            [("half", "classify_x_to_y", CLASSIFY), ("other", "regress_x_to_y", REGRESS)],
            "INVALID_ARGUMENT",
            "All ModelSpecs in a MultiInferenceRequest must access the same model name.",
        ),
        (
            [("half", "regress_x_to_y", REGRESS), ("half", "regress_x_to_y", REGRESS)],
            "INVALID_ARGUMENT",
            "Duplicate evaluation of signature: regress_x_to_y",
        ),
        (
            [("half", "nope", REGRESS)],
            "INVALID_ARGUMENT",
            "Requested signature not found in model graph: nope",
        ),
        (
            [("half", "", CLASSIFY)],
            "INVALID_ARGUMENT",
            "No classification inputs found in SignatureDef: ",
        ),
        (
            [("half", "regress_x_to_y", "tensorflow/serving/predict")],
            "UNIMPLEMENTED",
            "Unsupported signature method_name: tensorflow/serving/predict",
        ),
    ],
    ids=[
        "empty-name",
        "mixed-names",
        "duplicate",
        "unknown-signature",
        "wrong-signature-kind",
        "predict-method",
    ],
)
def test_multi_inference_task_errors_match_tf_serving(half_plus_two, tasks, code, message):
    err = error_of(
        tfs_grpc_calls.multi_inference, half_plus_two, multi_request(*tasks), "half", 123
    )
    assert err.code == code and err.message.startswith(message)


class DefaultIsRegression:
    """half_plus_two with `regress_x_to_y` also served as serving_default (no test model has an
    example-taking default signature)."""

    def __init__(self, model):
        self._model = model
        self.signatures = {
            **model.signatures,
            "serving_default": model.signatures["regress_x_to_y"],
        }

    def run(self, signature_name, inputs, output_aliases=None):
        name = "regress_x_to_y" if signature_name == "serving_default" else signature_name
        return self._model.run(name, inputs, output_aliases)


def test_multi_inference_empty_signature_name_is_serving_default(half_plus_two):
    model = DefaultIsRegression(half_plus_two)
    response = tfs_grpc_calls.multi_inference(
        model, multi_request(("half", "", REGRESS)), "half", 123
    )
    assert_spec(response.results[0].model_spec, "half", 123, "serving_default")
    assert [r.value for r in response.results[0].regression_result.regressions] == [3.0]
    request = multi_request(("half", "", REGRESS), ("half", "serving_default", REGRESS))
    err = error_of(tfs_grpc_calls.multi_inference, model, request, "half", 123)
    assert (err.code, err.message) == (
        "INVALID_ARGUMENT",
        "Duplicate evaluation of signature: serving_default",
    )


def test_regress_empty_signature_name_is_reported_as_serving_default(half_plus_two):
    request = regress_request("", example_input(example(x=[2.0])))
    response = tfs_grpc_calls.regress(DefaultIsRegression(half_plus_two), request, "half", 123)
    assert_spec(response.model_spec, "half", 123, "serving_default")


def test_multi_inference_checks_every_task_before_the_input(half_plus_two):
    request = multi_request(
        ("half", "classify_x_to_y", CLASSIFY),
        ("half", "classify_x_to_y", REGRESS),
        inp=example_input(),
    )
    err = error_of(tfs_grpc_calls.multi_inference, half_plus_two, request, "half", 123)
    assert err.message == "Duplicate evaluation of signature: classify_x_to_y"
    request = multi_request(("half", "classify_x_to_y", CLASSIFY), inp=example_input())
    err = error_of(tfs_grpc_calls.multi_inference, half_plus_two, request, "half", 123)
    assert (err.code, err.message) == ("INVALID_ARGUMENT", "Input is empty.")


# --------------------------------------------------------------------------------- GetModelMetadata
def metadata_request(*fields) -> get_model_metadata_pb2.GetModelMetadataRequest:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=list(fields))
    request.model_spec.name = "default"
    return request


def test_get_model_metadata_packs_every_signature_def_as_tf_serving_reports_them(half_plus_two):
    response = tfs_grpc_calls.get_model_metadata(
        half_plus_two, metadata_request("signature_def"), "default", 123
    )
    assert_spec(response.model_spec, "default", 123, "")
    packed = response.metadata["signature_def"]
    assert packed.type_url == "type.googleapis.com/tensorflow.serving.SignatureDefMap"
    signature_defs = get_model_metadata_pb2.SignatureDefMap()
    assert packed.Unpack(signature_defs)
    with open(os.path.join(DATA, "half_plus_two_model_metadata.json")) as f:
        expected = json.load(f)["metadata"]["signature_def"]
    assert (
        json_format.MessageToDict(
            signature_defs,
            preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True,
        )
        == expected
    )


def test_get_model_metadata_without_fields_is_rejected(half_plus_two):
    err = error_of(
        tfs_grpc_calls.get_model_metadata, half_plus_two, metadata_request(), "default", 123
    )
    assert (err.code, err.message) == (
        "INVALID_ARGUMENT",
        "GetModelMetadataRequest must specify at least one metadata_field",
    )


def test_get_model_metadata_unsupported_field_is_rejected(half_plus_two):
    err = error_of(
        tfs_grpc_calls.get_model_metadata,
        half_plus_two,
        metadata_request("signature_def", "assets"),
        "default",
        123,
    )
    assert (err.code, err.message) == ("INVALID_ARGUMENT", "Metadata field assets is not supported")


# ------------------------------------------------------------------------------------------- handle
def test_handle_returns_ok_and_the_serialized_response(half_plus_two):
    request = predict_request(x=floats([2.0], [1, 1]))
    code, payload = tfs_grpc_calls.handle(
        half_plus_two, "Predict", request.SerializeToString(), "half", 123, False
    )
    assert code == "OK"
    assert list(predict_pb2.PredictResponse.FromString(payload).outputs["y"].float_val) == [3.0]


def test_handle_passes_tensor_content_to_predict(half_plus_two):
    request = predict_request(x=floats([2.0], [1, 1]))
    _, payload = tfs_grpc_calls.handle(
        half_plus_two, "Predict", request.SerializeToString(), "half", 123, True
    )
    assert tf.make_ndarray(
        predict_pb2.PredictResponse.FromString(payload).outputs["y"]
    ).tolist() == [[3.0]]


@pytest.mark.parametrize("check", [False, True])
def test_handle_passes_the_method_name_check_to_every_inference_call(tf2_half_plus_two, check):
    # the TF2 export's classify and regress signatures carry the predict method
    calls = {
        "Classify": classify_request("classify_x_to_y", example_input(example(x=[2.0]))),
        "Regress": regress_request("regress_x_to_y", example_input(example(x=[2.0]))),
        "MultiInference": multi_request(("half", "regress_x_to_y", REGRESS)),
    }
    codes = {
        method: tfs_grpc_calls.handle(
            tf2_half_plus_two, method, request.SerializeToString(), "half", 123, False, check
        )[0]
        for method, request in calls.items()
    }
    expected = "INVALID_ARGUMENT" if check else "OK"
    assert codes == {method: expected for method in calls}


@pytest.mark.parametrize(
    "method,request_proto,response_cls",
    [
        (
            "Classify",
            classify_request("classify_x_to_y", example_input(example(x=[2.0]))),
            classification_pb2.ClassificationResponse,
        ),
        (
            "Regress",
            regress_request("regress_x_to_y", example_input(example(x=[2.0]))),
            regression_pb2.RegressionResponse,
        ),
        (
            "MultiInference",
            multi_request(("half", "regress_x_to_y", REGRESS)),
            inference_pb2.MultiInferenceResponse,
        ),
        (
            "GetModelMetadata",
            metadata_request("signature_def"),
            get_model_metadata_pb2.GetModelMetadataResponse,
        ),
    ],
)
def test_handle_dispatches_every_prediction_service_method(
    half_plus_two, method, request_proto, response_cls
):
    code, payload = tfs_grpc_calls.handle(
        half_plus_two, method, request_proto.SerializeToString(), "half", 123, False
    )
    assert code == "OK"
    assert response_cls.FromString(payload).ListFields()


def test_handle_returns_errors_as_code_and_message(half_plus_two):
    request = predict_request("nope")
    assert tfs_grpc_calls.handle(
        half_plus_two, "Predict", request.SerializeToString(), "half", 123, False
    ) == ("FAILED_PRECONDITION", 'Serving signature key "nope" not found.')


def test_handle_unparsable_request_is_invalid_argument(half_plus_two):
    code, message = tfs_grpc_calls.handle(half_plus_two, "Predict", b"\x0a\xff", "half", 123, False)
    assert code == "INVALID_ARGUMENT"
    assert message.startswith("Could not parse tensorflow.serving.PredictRequest")


def test_handle_unknown_method_is_unimplemented(half_plus_two):
    assert (
        tfs_grpc_calls.handle(half_plus_two, "Nope", b"", "half", 123, False)[0] == "UNIMPLEMENTED"
    )
