"""TensorFlow's runtime only where a model runs: the manager and the routers read SavedModel
metadata and TF Serving's protos without it (core/protos.py), across loads, REST and gRPC
predictions, metadata, status and classify calls; the version replicas import it."""

from __future__ import annotations

import sys

import grpc
import pytest
import ray

from tests.integration.conftest import the_router_app

pytestmark = pytest.mark.ray


def _runs_tensorflow(actor) -> bool:
    return ray.get(
        actor.__ray_call__.remote(lambda _self: "tensorflow.python" in sys.modules), timeout=60
    )


def _serve_replicas(app: str) -> list:
    """The replica actors of Serve application `app` (named SERVE_REPLICA::app#deployment#id)."""
    return [
        ray.get_actor(a["name"], namespace=a["namespace"])
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith(f"SERVE_REPLICA::{app}#")
    ]


def test_manager_and_routers_answer_every_api_without_tensorflows_runtime(aspire):
    from tensorflow_serving.apis import (
        classification_pb2,
        get_model_metadata_pb2,
        get_model_status_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    name = "half_plus_two"
    assert aspire.post(f"/v1/models/{name}:predict", {"instances": [1.0]}).json() == {
        "predictions": [2.5]
    }
    assert (
        aspire.post(
            f"/v1/models/{name}:classify",
            {"signature_name": "classify_x_to_y", "examples": [{"x": 1.0}]},
        ).status_code
        == 200
    )
    assert aspire.get(f"/v1/models/{name}/metadata").status_code == 200
    assert aspire.get(f"/v1/models/{name}").status_code == 200
    channel = grpc.insecure_channel(aspire.grpc_target)
    predict = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.inputs["x"].dtype = 1  # DT_FLOAT
    request.inputs["x"].tensor_shape.dim.add(size=1)
    request.inputs["x"].float_val.append(2.0)
    assert list(predict.Predict(request, timeout=60).outputs["y"].float_val) == [3.0]
    metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    metadata.model_spec.name = name
    assert predict.GetModelMetadata(metadata, timeout=60).metadata["signature_def"].value
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name, classify.model_spec.signature_name = name, "classify_x_to_y"
    classify.input.example_list.examples.add().features.feature["x"].float_list.value.append(1.0)
    assert predict.Classify(classify, timeout=60).result.classifications
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = name
    assert model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status, timeout=60)

    from core.names import app_name

    routers = _serve_replicas(the_router_app())
    replicas = _serve_replicas(app_name(name, 123))
    assert routers and replicas
    assert not _runs_tensorflow(aspire.manager)
    assert [_runs_tensorflow(router) for router in routers] == [False] * len(routers)
    # the check can fail: a replica that runs the model has TensorFlow's runtime
    assert all(_runs_tensorflow(replica) for replica in replicas)
