"""Every export kind of tests/support/export_matrix.py (Keras 3 Sequential, functional and
subclassed models saved with tf.saved_model.save, model.export(), an ExportArchive with two
endpoints, a tf.Module with two signatures, a string lookup table with an asset), served batched
by the session's Aspire (it runs with `--enable_batching --enable_per_model_batching_parameters`;
each version here carries a batching_params.pbtxt). Over REST and gRPC every signature answers
what the model answers in Python, to 1e-6, and the metadata lists every signature.

Without batching, each kind is checked in process (tests/unit/test_export_matrix.py): the replica
runs the same LoadedSavedModel, and the REST and gRPC codecs do not depend on the export kind.
TF Serving's TF1 test models are served throughout the other modules, batched in
test_batching.py. A version that fails its load ends as END while the old one serves on
(test_rollout.py); that a version whose signatures read a variable without a value fails its load
is checked in process."""

from __future__ import annotations

import shutil

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from deployments.replica.loader import SavedModelLoader

pytestmark = pytest.mark.ray
MAX_BATCH = 8
PARAMS = f"""
max_batch_size {{ value: {MAX_BATCH} }}
batch_timeout_micros {{ value: 1000 }}
max_enqueued_batches {{ value: 100 }}
num_batch_threads {{ value: 2 }}
allowed_batch_sizes: 4
allowed_batch_sizes: {MAX_BATCH}
"""


@pytest.fixture(scope="module")
def matrix(aspire, export_matrix, tmp_path_factory):
    """{model name: case}, every version AVAILABLE and batched; the models are unloaded when the
    module ends (conftest)."""
    work = tmp_path_factory.mktemp("matrix")
    for kind, case in export_matrix.items():
        shutil.copytree(case.version_dir, work / kind / "1")
        (work / kind / "1" / "batching_params.pbtxt").write_text(PARAMS)
        aspire.add_model(kind, work / kind)
    for kind in export_matrix:
        aspire.wait_state(kind, 1, "AVAILABLE", 300)
    return export_matrix


def rest_predict(aspire, name, signature, inputs):
    body = {
        "signature_name": signature,
        "inputs": {
            a: [v.decode() if isinstance(v, bytes) else v for v in x.tolist()]
            for a, x in inputs.items()
        },
    }
    return aspire.post(f"/v1/models/{name}:predict", body)


def grpc_predict(stub, name, signature, inputs):
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = name, signature
    for alias, value in inputs.items():
        request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
    response = stub.Predict(request, timeout=60)
    return {alias: tf.make_ndarray(proto) for alias, proto in response.outputs.items()}


def check_close(what, got, expected):
    if expected.dtype == object:
        got = [g.encode() if isinstance(g, str) else g for g in np.asarray(got, object).tolist()]
        assert got == expected.tolist(), what
    else:
        np.testing.assert_allclose(
            np.asarray(got, expected.dtype), expected, rtol=1e-6, atol=1e-6, err_msg=what
        )


def test_every_export_kind_answers_rest_and_grpc_batched_as_in_python_and_lists_every_signature(
    aspire, matrix
):
    with grpc.insecure_channel(aspire.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for name, case in matrix.items():
            r = aspire.get(f"/v1/models/{name}/metadata")
            assert r.status_code == 200, r.text
            listed = set(r.json()["metadata"]["signature_def"]["signature_def"])
            assert listed == set(SavedModelLoader(str(case.version_dir)).validate()), name
            for signature, (inputs, expected) in case.calls.items():
                r = rest_predict(aspire, name, signature, inputs)
                assert r.status_code == 200, (name, signature, r.text)
                rest = r.json()["outputs"]
                if len(expected) == 1:  # one output: TF Serving answers its value alone
                    rest = {next(iter(expected)): rest}
                via_grpc = grpc_predict(stub, name, signature, inputs)
                assert set(rest) == set(via_grpc) == set(expected), (name, signature)
                for alias, value in expected.items():
                    check_close(f"REST {name} {signature} {alias}", rest[alias], value)
                    check_close(f"gRPC {name} {signature} {alias}", via_grpc[alias], value)
    print(
        f"{len(matrix)} export kinds, batched: REST and gRPC equal the models' own answers to 1e-6"
    )


def test_every_export_kind_runs_through_the_batcher(aspire, matrix):
    """A request larger than max_batch_size gets TF Serving's batching error: the answers above
    came from batched runs."""
    for name, case in matrix.items():
        signature, (inputs, _) = next(iter(case.calls.items()))
        rows = {a: np.resize(x, (MAX_BATCH + 1,) + x.shape[1:]) for a, x in inputs.items()}
        r = rest_predict(aspire, name, signature, rows)
        assert r.status_code == 400, (name, r.text)
        assert r.json() == {
            "error": f"Task size {MAX_BATCH + 1} is larger than maximum input "
            f"batch size {MAX_BATCH}"
        }
