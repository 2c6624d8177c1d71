"""TF Serving gRPC request messages the integration tests send through the tensorflow-serving-api
stubs."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2


def predict_request(name="half_plus_two", x=(2.0,), **spec) -> predict_pb2.PredictRequest:
    """A PredictRequest for model `name` with input "x" = float32 array of `x`; `spec` sets
    ModelSpec fields (`version=` an int, `version_label=`, `signature_name=`, ...)."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    for key, value in spec.items():
        if key == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, key, value)
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array(x, np.float32)))
    return request
