"""TF Serving's PredictionService requests as both sides read them: the request class of each
method, and the checks TF Serving makes on a request before it looks the model up.

The router decodes a request only where it must (to find the servable, or to say why a message
does not parse); the replica decodes it to run it (deployments/replica/tfs_grpc_calls.py). Both
take the classes and the early checks from here, so they agree on them. The proto modules are
imported on first use (core/protos.py makes that free of TensorFlow's runtime).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from core.errors import invalid_argument

if TYPE_CHECKING:
    from tensorflow_serving.apis import get_model_metadata_pb2

SIGNATURE_DEF_FIELD = "signature_def"  # the one metadata field TF Serving serves


@functools.cache
def request_classes() -> dict[str, Any]:
    """{PredictionService method: its request message class}."""
    from tensorflow_serving.apis import (
        classification_pb2,
        get_model_metadata_pb2,
        inference_pb2,
        predict_pb2,
        regression_pb2,
    )

    return {
        "Predict": predict_pb2.PredictRequest,
        "Classify": classification_pb2.ClassificationRequest,
        "Regress": regression_pb2.RegressionRequest,
        "MultiInference": inference_pb2.MultiInferenceRequest,
        "GetModelMetadata": get_model_metadata_pb2.GetModelMetadataRequest,
    }


def request_class(method: str) -> Any:
    """The request message class of a PredictionService method (KeyError for another name)."""
    return request_classes()[method]


def validate_metadata_request(request: get_model_metadata_pb2.GetModelMetadataRequest) -> None:
    """TF Serving checks metadata_field before it looks the model up, so an ingress that wants the
    same precedence calls this before resolving the ModelSpec."""
    if not request.metadata_field:
        raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
    for field in request.metadata_field:
        if field != SIGNATURE_DEF_FIELD:
            raise invalid_argument(f"Metadata field {field} is not supported")
