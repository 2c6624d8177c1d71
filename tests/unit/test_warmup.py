"""deployments.replica.warmup on real SavedModels, without Ray: TF Serving's warmup replay and its
errors.

Each test copies a model version to tmp_path and writes its assets.extra/tf_serving_warmup_requests
with tf.io.TFRecordWriter, as TF Serving users do. Expected messages are TF Serving's.
"""

from __future__ import annotations

import logging
import os
import shutil

import pytest
import tensorflow as tf
from tensorflow.core.example import example_pb2
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    inference_pb2,
    input_pb2,
    predict_pb2,
    prediction_log_pb2,
    regression_pb2,
)

from core.errors import AspireError
from deployments.replica import tfs_grpc_calls
from deployments.replica.loader import SavedModelLoader
from deployments.replica.warmup import MAX_WARMUP_RECORDS, WARMUP_FILE, run_warmup

DATA = os.path.join(os.path.dirname(__file__), "..", "data")
CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"


def copy_version(tmp_path, model: str) -> str:
    version_dir = str(tmp_path / model / "00000123")
    shutil.copytree(os.path.join(DATA, model, "00000123"), version_dir)
    return version_dir


def write_warmup(version_dir: str, records: list[bytes]) -> str:
    path = os.path.join(version_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for record in records:
            writer.write(record)
    return path


@pytest.fixture
def counter(tmp_path):
    version_dir = copy_version(tmp_path, "saved_model_counter")
    model = SavedModelLoader(version_dir).load()
    yield model, version_dir
    model.unload()


@pytest.fixture
def half_plus_two(tmp_path):
    version_dir = copy_version(tmp_path, "saved_model_half_plus_two_cpu")
    model = SavedModelLoader(version_dir).load()
    yield model, version_dir
    model.unload()


def predict_log(signature_name: str, **inputs) -> prediction_log_pb2.PredictionLog:
    log = prediction_log_pb2.PredictionLog()
    log.predict_log.request.model_spec.signature_name = signature_name
    for alias, values in inputs.items():
        proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=values)
        proto.tensor_shape.dim.add(size=len(values))
        log.predict_log.request.inputs[alias].CopyFrom(proto)
    return log


def examples(x: float) -> input_pb2.Input:
    ex = example_pb2.Example()
    ex.features.feature["x"].float_list.value.append(x)
    return input_pb2.Input(example_list=input_pb2.ExampleList(examples=[ex]))


def classify_log(signature_name: str) -> prediction_log_pb2.PredictionLog:
    request = classification_pb2.ClassificationRequest(input=examples(2.0))
    request.model_spec.signature_name = signature_name
    return prediction_log_pb2.PredictionLog(
        classify_log=prediction_log_pb2.ClassifyLog(request=request)
    )


def regress_log(signature_name: str) -> prediction_log_pb2.PredictionLog:
    request = regression_pb2.RegressionRequest(input=examples(2.0))
    request.model_spec.signature_name = signature_name
    return prediction_log_pb2.PredictionLog(
        regress_log=prediction_log_pb2.RegressLog(request=request)
    )


def multi_inference_log(model_name: str, *tasks) -> prediction_log_pb2.PredictionLog:
    request = inference_pb2.MultiInferenceRequest(input=examples(2.0))
    for signature_name, method in tasks:
        task = request.tasks.add(method_name=method)
        task.model_spec.name, task.model_spec.signature_name = model_name, signature_name
    log = prediction_log_pb2.PredictionLog()
    log.multi_inference_log.request.CopyFrom(request)
    return log


def get_counter(model) -> float:
    request = predict_pb2.PredictRequest()
    request.model_spec.signature_name = "get_counter"
    return tfs_grpc_calls.predict(model, request, "counter", 123).outputs["output"].float_val[0]


def error_of(fn, *args, **kwargs) -> AspireError:
    with pytest.raises(AspireError) as info:
        fn(*args, **kwargs)
    return info.value


# ------------------------------------------------------------------------------------------- replay
@pytest.mark.parametrize("records, iterations", [(3, 1), (3, 4), (1, 0), (2, -5)])
def test_each_record_runs_iterations_times_and_count_is_returned(counter, records, iterations):
    model, version_dir = counter
    write_warmup(version_dir, [predict_log("incr_counter").SerializeToString()] * records)
    assert (
        run_warmup(model, version_dir, "counter", 123, num_request_iterations=iterations) == records
    )
    assert get_counter(model) == records * max(iterations, 1)  # <= 0 iterations mean 1


def test_every_supported_log_type_replays(half_plus_two, caplog):
    model, version_dir = half_plus_two
    path = write_warmup(
        version_dir,
        [
            predict_log("serving_default", x=[1.0, 2.0]).SerializeToString(),
            classify_log("classify_x_to_y").SerializeToString(),
            regress_log("regress_x_to_y").SerializeToString(),
            multi_inference_log(
                "half", ("regress_x_to_y2", REGRESS), ("classify_x_to_y", CLASSIFY)
            ).SerializeToString(),
        ],
    )
    with caplog.at_level(logging.INFO, logger="aspire.warmup"):
        assert run_warmup(model, version_dir, "half", 123) == 4
    finished = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Finished")]
    assert len(finished) == 1
    assert finished[0].startswith(
        f"Finished reading warmup data for model at {path}. "
        "Number of warmup records read: 4. Elapsed time (microseconds): "
    )


def test_missing_warmup_file_reads_zero_records_and_is_logged(half_plus_two, caplog):
    model, version_dir = half_plus_two
    with caplog.at_level(logging.INFO, logger="aspire.warmup"):
        assert run_warmup(model, version_dir, "half", 123) == 0
    path = os.path.join(version_dir, WARMUP_FILE)
    assert f"No warmup data file found at {path}" in caplog.messages


def test_empty_warmup_file_reads_zero_records(half_plus_two):
    model, version_dir = half_plus_two
    write_warmup(version_dir, [])
    assert run_warmup(model, version_dir, "half", 123) == 0


# ------------------------------------------------------------------------------------------- errors
def test_more_than_max_records_fails_after_running_the_extra_record(counter):
    model, version_dir = counter
    path = write_warmup(
        version_dir, [predict_log("incr_counter").SerializeToString()] * (MAX_WARMUP_RECORDS + 1)
    )
    err = error_of(run_warmup, model, version_dir, "counter", 123)
    assert (err.code, err.message) == (
        "INVALID_ARGUMENT",
        f"Number of warmup records exceeds the maximum (1000) at {path}",
    )
    assert get_counter(model) == MAX_WARMUP_RECORDS + 1  # TF Serving checks after each record runs


def test_exactly_max_records_is_accepted(counter):
    model, version_dir = counter
    write_warmup(
        version_dir, [predict_log("incr_counter").SerializeToString()] * MAX_WARMUP_RECORDS
    )
    assert run_warmup(model, version_dir, "counter", 123) == MAX_WARMUP_RECORDS


def test_file_that_is_not_tfrecord_fails_with_data_loss(half_plus_two):
    model, version_dir = half_plus_two
    path = os.path.join(version_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as f:
        f.write(b"this is not a TFRecord file at all")
    err = error_of(run_warmup, model, version_dir, "half", 123)
    assert (err.code, err.message) == (
        "DATA_LOSS",
        "corrupted record at 0 (Is this even a TFRecord file?). "
        "Please verify your warmup data is in TFRecord format.",
    )


def test_truncated_tfrecord_fails_with_data_loss_after_replaying_whole_records(counter):
    model, version_dir = counter
    path = write_warmup(version_dir, [predict_log("incr_counter").SerializeToString()] * 2)
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:-3])
    err = error_of(run_warmup, model, version_dir, "counter", 123)
    assert err.code == "DATA_LOSS" and err.message.startswith("truncated record at ")
    assert err.message.endswith(". Please verify your warmup data is in TFRecord format.")
    assert get_counter(model) == 1


def test_record_that_is_not_a_prediction_log_fails_to_parse(counter):
    model, version_dir = counter
    path = write_warmup(version_dir, [b"malformed_record\x00\xff"])
    err = error_of(run_warmup, model, version_dir, "counter", 123)
    assert (err.code, err.message) == (
        "INVALID_ARGUMENT",
        f"Failed to parse warmup record: malformed_record\\x00\\xff from {path}",
    )
    assert get_counter(model) == 0


def test_unparsable_record_is_shown_truncated(counter):
    model, version_dir = counter
    write_warmup(version_dir, [b"\xff" * 1000])
    err = error_of(run_warmup, model, version_dir, "counter", 123)
    assert err.message.startswith("Failed to parse warmup record: " + "\\xff" * 64 + "... from ")


@pytest.mark.parametrize("field, number", [("session_run_log", 5), ("predict_streamed_log", 7)])
def test_unsupported_log_type_is_unimplemented(counter, field, number):
    model, version_dir = counter
    log = prediction_log_pb2.PredictionLog()
    getattr(log, field).SetInParent()
    write_warmup(version_dir, [log.SerializeToString()])
    err = error_of(run_warmup, model, version_dir, "counter", 123)
    assert (err.code, err.message) == (
        "UNIMPLEMENTED",
        f"Unsupported log_type for warmup: {number}",
    )


def test_predict_record_naming_unknown_signature_fails_with_failed_precondition(counter):
    model, version_dir = counter
    write_warmup(
        version_dir,
        [
            predict_log("incr_counter").SerializeToString(),
            predict_log("no_such_signature").SerializeToString(),
            predict_log("incr_counter").SerializeToString(),
        ],
    )
    err = error_of(run_warmup, model, version_dir, "counter", 123)
    assert (err.code, err.message) == (
        "FAILED_PRECONDITION",
        'Serving signature key "no_such_signature" not found.',
    )
    assert get_counter(model) == 1  # warmup stops at the failing record


@pytest.mark.parametrize(
    "log, field, call",
    [
        (classify_log("regress_x_to_y"), "classify_log", tfs_grpc_calls.classify),
        (regress_log("classify_x_to_y"), "regress_log", tfs_grpc_calls.regress),
        (
            multi_inference_log("", ("regress_x_to_y", REGRESS)),
            "multi_inference_log",
            tfs_grpc_calls.multi_inference,
        ),
        (
            predict_log("serving_default", x=[1.0], extra=[1.0]),
            "predict_log",
            tfs_grpc_calls.predict,
        ),
    ],
    ids=["classify", "regress", "multi_inference", "predict"],
)
def test_failing_request_fails_warmup_with_that_requests_error(half_plus_two, log, field, call):
    model, version_dir = half_plus_two
    expected = error_of(call, model, getattr(log, field).request, "half", 123)
    write_warmup(version_dir, [log.SerializeToString()])
    err = error_of(run_warmup, model, version_dir, "half", 123)
    assert (err.code, err.message) == (expected.code, expected.message)
