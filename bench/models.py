"""The benchmark's models and requests.

- half_plus_two: TF Serving's own test model (tests/data), body {"instances": [1.0, 2.0, 5.0]}.
- mlp: a 784-1024-1024-10 ReLU MLP exported here as a TF2 SavedModel (fixed seed; ~7 MiB of
  float32 weights), input "x" [batch, 784], output "y" [batch, 10]; each request is one row.
- mlp_wide: 784-4096-4096-10 (~77 MiB of weights), the same way. One row reads every weight once,
  so a request costs milliseconds of memory traffic, while a batch of 32 rows costs little more:
  the compute-bound case where batching should pay.
Each model gets its REST body and its serialized gRPC PredictRequest written to files, and the
numpy inputs for the in-process run.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
HALF_PLUS_TWO = ROOT / "tests" / "data" / "saved_model_half_plus_two_cpu"
MLP_SIZES = {"mlp": (784, 1024, 1024, 10), "mlp_wide": (784, 4096, 4096, 10)}


@dataclass
class BenchModel:
    base_path: Path  # MODEL_BASE_PATH/NAME
    version_dir: str
    body_path: Path  # REST request body
    v2_body_path: Path  # the same inputs as an Open Inference Protocol (v2) JSON request
    grpc_path: Path  # serialized PredictRequest
    v2_grpc_path: Path  # serialized ModelInferRequest (raw_input_contents, as tritonclient sends)
    inputs: dict  # for the in-process run
    size_bytes: int  # files of the version on disk


def export_mlp(path: Path, sizes=(784, 1024, 1024, 10), seed: int = 0) -> None:
    import tensorflow as tf

    rng = np.random.default_rng(seed)

    class MLP(tf.Module):
        def __init__(self):
            super().__init__()
            self.layers = [
                (
                    tf.Variable(rng.normal(0, (2 / a) ** 0.5, (a, b)).astype(np.float32)),
                    tf.Variable(np.zeros(b, np.float32)),
                )
                for a, b in zip(sizes, sizes[1:], strict=False)
            ]

        @tf.function(input_signature=[tf.TensorSpec([None, sizes[0]], tf.float32, name="x")])
        def serve(self, x):
            for i, (w, b) in enumerate(self.layers):
                x = tf.matmul(x, w) + b
                if i < len(self.layers) - 1:
                    x = tf.nn.relu(x)
            return {"y": x}

    module = MLP()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _write_requests(work: Path, name: str, array: np.ndarray, instances) -> tuple[Path, Path]:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    body = work / f"{name}.json"
    body.write_text(json.dumps({"instances": instances}))
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(array))
    grpc = work / f"{name}.pb"
    grpc.write_bytes(request.SerializeToString())
    return body, grpc


def _model_infer_request(name: str, array: np.ndarray) -> bytes:
    from deployments.wire.v2_protos import ModelInferRequest

    request = ModelInferRequest(model_name=name)
    request.inputs.add(name="x", datatype="FP32", shape=array.shape)
    request.raw_input_contents.append(array.astype("<f4").tobytes())
    return request.SerializeToString()


def prepare(work: Path, names: list[str]) -> dict[str, BenchModel]:
    models = {}
    for name in names:
        base = work / "models" / name
        if name == "half_plus_two":
            shutil.copytree(HALF_PLUS_TWO, base)
            version = base / "00000123"
            array = np.array([1.0, 2.0, 5.0], np.float32)
            instances = array.tolist()
        elif name in MLP_SIZES:
            version = base / "1"
            export_mlp(version, MLP_SIZES[name])
            array = np.round(np.random.default_rng(1).random((1, 784), np.float32), 3)
            instances = array.tolist()
        else:
            raise ValueError(
                f"unknown benchmark model {name!r} (half_plus_two, {', '.join(MLP_SIZES)})"
            )
        body, grpc = _write_requests(work, name, array, instances)
        v2 = work / f"{name}.v2.json"
        shaped = array.reshape(-1, 1) if array.ndim == 1 else array  # half_plus_two's x: [-1, 1]
        v2.write_text(
            json.dumps(
                {
                    "inputs": [
                        {
                            "name": "x",
                            "shape": list(shaped.shape),
                            "datatype": "FP32",
                            "data": shaped.ravel().tolist(),
                        }
                    ]
                }
            )
        )
        v2_grpc = work / f"{name}.v2.pb"
        v2_grpc.write_bytes(_model_infer_request(name, shaped))
        models[name] = BenchModel(
            base, str(version), body, v2, grpc, v2_grpc, {"x": array}, _size(version)
        )
    return models
