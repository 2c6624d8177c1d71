"""Writes the committed seed corpora, tests/fuzz/corpus/TARGET/, from the project's own test
inputs: the request bodies and messages of the unit tests (tests/unit/test_tfs_json.py,
test_json_depth.py, test_v2_calls.py, test_v2_grpc.py, test_tfs_grpc_calls.py), the config files
of tests/data/ and examples/, TF Serving's batching fixture, and a test certificate
(tests/support/certs.py). Run it after changing a seed:

    .venv/bin/python -m tests.fuzz.seeds

It replaces each folder's files; a seed is named by the first 12 hex digits of its SHA-256 (the
certificate, so ssl_config's seeds, is new at each run).
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import core.protos

core.protos.load()

from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    classification_pb2,
    get_model_metadata_pb2,
    inference_pb2,
    predict_pb2,
    regression_pb2,
)

from deployments.wire.v2_protos import ModelInferRequest  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

JSON_BODIES = [
    b'{"instances": [[1.0, 2.0], [3.0, 4.0]]}',
    b'{"inputs": [[1, 2]], "signature_name": "serving_default"}',
    b'{"inputs": {"x": [[0.5, -1e10]]}}',
    b'{"signature_name": "multi", "instances": [{"a": {"b64": "aGVsbG8="}, "b": -128, "c": true,'
    b' "d": 18446744073709551615}, {"a": "x", "b": 127, "c": false, "d": 0}]}',
    b'{"signature_name": "multi", "inputs": {"a": ["\\u00e9\\ud83d\\ude00"], "b": [1], "c": [true],'
    b' "d": [2]}}',
    b'{"signature_name": "wide", "inputs": {"n": [[9223372036854775807]], "m": 4294967295,'
    b' "f": [1.7976931348623157e308]}}',
    b'{"signature_name": "half", "instances": [1.5]}',
    b'{"examples": [{"f": [1.5, 2], "s": "text", "b": {"b64": "AP8="}, "i": [1, -2]}],'
    b' "context": {"c": 7}}',
    b'{"signature_name": "classify", "examples": [{"x": 1}]}',
    b'{"a": NaN, "b": Infinity, "c": -Infinity, "d": Inf, "e": -Inf, "f": -NaN}',
    b'{"a": [1, 2]} trailing garbage {',
    b'{"a": 1}\x00\xff',
    b'\xef\xbb\xbf {"a": 1}',
    b'{"signature_name":' + b"[" * 200 + b"]" * 200 + b"}",
    b'{"instances": ' + b"[" * 300 + b"]" * 300 + b"}",
    b'{"k": "\\ud800", "l": "\\udc00\\ud800x", "m": "\\ud83d\\ude00", "n": "\\u0000\\/\\b\\f"}',
    b'{"big": 123456789012345678901234567890, "e": 1e400, "f": 1.5e-400, "g": -0, "h": -0.0}',
    b'{"n": 1' + b"0" * 310 + b"}",
    b'{"n": 0.' + b"0" * 320 + b"1e330}",
    b'{"x": [1.e5]}',
    b'{"x": [2e+]}',
    b'{"x": "\xff\xfe bytes"}',
    b'{"instances": [{"x": [1, 2]}, {"x": [3]}]}',
    b'{"instances": [], "inputs": []}',
    b"[1, 2, 3]",
    b"12.5",
    b"",
]


def frame(doc: dict, binary: bytes = b"", header: bool = False) -> bytes:
    """v2_rest_infer's input: the Inference-Header-Content-Length line, then the body."""
    head = json.dumps(doc).encode()
    return (b"%d\n" % len(head) if header else b"") + head + binary


def v2_rest_seeds() -> list[bytes]:
    x = struct.pack("<4f", 1.0, 2.0, 5.0, -0.5)
    strings = struct.pack("<I", 1) + b"a" + struct.pack("<I", 3) + b"\xff\x00b"
    x_bin = {"name": "x", "shape": [2, 2], "datatype": "FP32"}
    return [
        frame({"id": "req-7", "inputs": [{**x_bin, "data": [[1, 2], [5, 6]]}]}),
        frame(
            {
                "inputs": [{**x_bin, "parameters": {"binary_data_size": len(x)}}],
                "parameters": {"binary_data_output": True},
            },
            x,
            header=True,
        ),
        frame(
            {
                "inputs": [
                    {**x_bin, "parameters": {"binary_data_size": len(x)}},
                    {
                        "name": "s",
                        "shape": [2],
                        "datatype": "BYTES",
                        "parameters": {"binary_data_size": len(strings)},
                    },
                    {"name": "b", "shape": [], "datatype": "BOOL", "data": True},
                    {"name": "h", "shape": [2], "datatype": "FP16", "data": [0.5, 1024]},
                    {"name": "q", "shape": [1], "datatype": "BF16", "data": [256.0]},
                    {"name": "u", "shape": [1], "datatype": "UINT64", "data": [2**63]},
                    {"name": "i", "shape": [2], "datatype": "INT8", "data": [-128, 127]},
                ],
                "outputs": [
                    {"name": "t", "parameters": {"binary_data": True}},
                    {"name": "y"},
                    {"name": "z"},
                ],
            },
            x + strings,
            header=True,
        ),
        frame({"inputs": [{**x_bin, "data": [1, 2, 3, 4]}], "outputs": [{"name": "t"}]}),
        b"4\n{}",
        b"\n" + json.dumps({"inputs": [{**x_bin, "data": "x"}]}).encode(),
    ]


def _tensor(dtype: int, dims: list[int], **values) -> tensor_pb2.TensorProto:
    shape = tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims]
    )
    return tensor_pb2.TensorProto(dtype=dtype, tensor_shape=shape, **values)


def grpc_seeds() -> list[bytes]:
    predict = predict_pb2.PredictRequest()
    predict.model_spec.name = "half_plus_two"
    predict.model_spec.version.value = 123
    predict.model_spec.signature_name = "serving_default"
    predict.inputs["x"].CopyFrom(_tensor(types_pb2.DT_FLOAT, [2], float_val=[1.0, 2.0]))
    labelled = predict_pb2.PredictRequest()
    labelled.model_spec.name = "m"
    labelled.model_spec.version_label = "stable"
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = "half_plus_two"
    classify.input.example_list.examples.add().features.feature["x"].float_list.value.append(1)
    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name = "../etc"
    multi = inference_pb2.MultiInferenceRequest()
    multi.tasks.add().model_spec.name = "half_plus_two"
    metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    metadata.model_spec.name = "half_plus_two"
    infer = ModelInferRequest(model_name="m", model_version="1", id="7")
    infer.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    infer.raw_input_contents.append(struct.pack("<2f", 1, 2))
    split = predict.SerializeToString()[:4] + predict.SerializeToString()  # model_spec twice
    return [
        bytes([0]) + predict.SerializeToString(),
        bytes([0]) + labelled.SerializeToString(),
        bytes([0]) + split,
        bytes([1]) + classify.SerializeToString(),
        bytes([2]) + regress.SerializeToString(),
        bytes([3]) + multi.SerializeToString(),
        bytes([4]) + metadata.SerializeToString(),
        bytes([5]) + infer.SerializeToString(),
        bytes([0]) + b"\x0a\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",
    ]


def v2_grpc_seeds() -> list[bytes]:
    raw = ModelInferRequest(model_name="m")
    raw.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    raw.inputs.add(name="s", datatype="BYTES", shape=[1])
    raw.raw_input_contents.extend([struct.pack("<2f", 1, 2), struct.pack("<I", 2) + b"\xffz"])
    raw.outputs.add(name="t")
    typed = ModelInferRequest(model_name="m", id="9")
    x = typed.inputs.add(name="x", datatype="FP32", shape=[2, 2])
    x.contents.fp32_contents.extend([1, 2, 3, 4])
    typed.inputs.add(name="i", datatype="INT8", shape=[2]).contents.int_contents.extend([-1, 300])
    typed.inputs.add(name="h", datatype="FP16", shape=[0, 2])
    typed.inputs.add(name="b", datatype="BOOL", shape=[]).contents.bool_contents.append(True)
    return [raw.SerializeToString(), typed.SerializeToString(), b"\x2a\x02\x0a\x00"]


BATCHING = [
    b"max_batch_size { value: 128 }\nbatch_timeout_micros { value: 0 }\n"
    b"max_enqueued_batches { value: 1000000 }\nnum_batch_threads { value: 8 }\n",
    b"max_batch_size { value: 64 }\nallowed_batch_sizes: 8\nallowed_batch_sizes: [16, 64]\n"
    b"pad_variable_length_inputs: true\nthread_pool_name { value: 'pool' }\n",
    b"max_batch_size { value: 8 } enable_large_batch_splitting { value: true }"
    b" max_execution_batch_size { value: 16 }",
    b"max_enqueued_batches { value: 0 } num_batch_threads { value: -1 }",
    b"max_batch_size: 128",
]

MODEL_CONFIGS = [
    (ROOT / "tests" / "data" / "good_model_config.txt").read_bytes(),
    (ROOT / "tests" / "data" / "bad_model_config.txt").read_bytes(),
    b'model_config_list { config { name: "m" base_path: "/models/m" model_platform: "tensorflow"'
    b" model_version_policy { specific { versions: 1 versions: 2 } }"
    b' version_labels { key: "stable" value: 1 } } }',
    b'model_config_list { config { name: "a" base_path: "gs://b/a" model_type: TENSORFLOW'
    b" model_version_policy { latest { num_versions: 2 } } } }",
    b'custom_model_config { [type.googleapis.com/google.protobuf.StringValue] { value: "x" } }',
]

MONITORING = [
    (ROOT / "tests" / "data" / "monitoring_config.txt").read_bytes(),
    (ROOT / "examples" / "monitoring_config.txt").read_bytes(),
    b'prometheus_config { enable: false path: "metrics" }',
    b"",
]


def ssl_seeds() -> list[bytes]:
    """SSLConfig files around a real test certificate (tests/support/certs.py); no private key is
    committed: the keys are a truncated PEM block, a path, or missing."""
    import tempfile

    from tests.support.certs import CertAuthority

    with tempfile.TemporaryDirectory() as folder:
        ca = CertAuthority.create(Path(folder), "fuzz-ca")
        cert = ca.issue(Path(folder), "server", hosts=("localhost",)).cert_pem()
        ca_pem = ca.cert.read_text()

    def quoted(pem: str) -> str:
        return '"' + pem.replace("\n", "\\n") + '"'

    fake_key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    return [
        f"server_key: {quoted(fake_key)}\nserver_cert: {quoted(cert)}\n"
        f"custom_ca: {quoted(ca_pem)}\nclient_verify: true\n".encode(),
        f"server_key: 'server.key'\nserver_cert: {quoted(cert)}\n".encode(),
        b"server_key: 'key.pem' server_cert: 'cert.pem' client_verify: true",
        f"server_cert: {quoted(cert)}".encode(),
        b"server_key: '-----BEGIN' server_cert: '\\xff' custom_ca: '/nonexistent/ca.pem'",
    ]


def corpora() -> dict[str, list[bytes]]:
    return {
        "tfs_json": JSON_BODIES,
        "json_parser": JSON_BODIES,
        "grpc_scan": grpc_seeds(),
        "v2_rest": v2_rest_seeds(),
        "v2_grpc": v2_grpc_seeds(),
        "model_config": MODEL_CONFIGS,
        "batching_config": BATCHING,
        "monitoring_config": MONITORING,
        "ssl_config": ssl_seeds(),
    }


def main() -> None:
    for target, seeds in corpora().items():
        folder = HERE / "corpus" / target
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():
            old.unlink()
        for seed in seeds:
            (folder / hashlib.sha256(seed).hexdigest()[:12]).write_bytes(seed)
        print(f"{target}: {len(seeds)} seeds")


if __name__ == "__main__":
    main()
