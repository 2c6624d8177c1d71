"""Fuzz targets: one function per decoder, each taking the raw bytes a client (or a config file)
hands Aspire. A target returns when the decoder answered or refused the input with its documented
error, `AspireError` (every decoder here documents it: tfs_json's and json_parser's contracts, the
router's scans, v2_calls' refusals, the config parsers' "Invalid protobuf file" and TF's checks).
Anything else escaping a target is a finding: another exception type, a failed consistency check
(an `AssertionError` from `_check`), a hang or a crash (run.py has libFuzzer time each input).

Import this module only in a process of its own (run.py): it calls `core.protos.load()` first, so
the TF and TF Serving protos come without TensorFlow's runtime.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable

import core.protos

core.protos.load()

import numpy as np  # noqa: E402
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2  # noqa: E402
from tensorflow.core.protobuf import meta_graph_pb2  # noqa: E402

from config import batching_config, model_config, monitoring_config, ssl_config  # noqa: E402
from core.errors import AspireError  # noqa: E402
from deployments.replica import inference, v2_calls  # noqa: E402
from deployments.router import tfs_grpc, tfs_rest, v2_grpc, v2_rest  # noqa: E402
from deployments.wire import json_parser, tfs_json, tfs_requests, v2_protos  # noqa: E402


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(what)


# ------------------------------------------------------------------------- a model without TF
def _info(alias: str, dtype: str, shape: list[int] | None) -> meta_graph_pb2.TensorInfo:
    info = meta_graph_pb2.TensorInfo(name=f"{alias}:0", dtype=types_pb2.DataType.Value(dtype))
    if shape is not None:
        info.tensor_shape.CopyFrom(
            tensor_shape_pb2.TensorShapeProto(
                dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in shape]
            )
        )
    return info


def _signature(inputs: dict, outputs: dict, defaults=()) -> meta_graph_pb2.SignatureDef:
    sig = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    for alias, (dtype, shape) in inputs.items():
        sig.inputs[alias].CopyFrom(_info(alias, dtype, shape))
    for alias, (dtype, shape) in outputs.items():
        sig.outputs[alias].CopyFrom(_info(alias, dtype, shape))
    for alias in defaults:
        sig.defaults[alias].CopyFrom(tensor_pb2.TensorProto(dtype=sig.inputs[alias].dtype))
    return sig


class EchoModel:
    """A ServedModel (deployments/replica/loader.py) whose run returns, for each output, the
    input `echo` names (or the output's `fallback` when that input has its default)."""

    def __init__(self, signatures: dict, echo: dict[str, str], fallback: dict[str, np.ndarray]):
        self.signatures, self.echo, self.fallback = signatures, echo, fallback

    def run(self, signature_name: str, inputs: dict, output_aliases=None) -> dict:
        signature = self.signatures[signature_name]
        wanted = sorted(signature.outputs) if output_aliases is None else output_aliases
        return {a: inputs.get(self.echo[a], self.fallback.get(a)) for a in wanted}


# TF Serving's /v1 predict: one float input by default, and signatures with every kind of input
# the JSON codec decodes (strings, narrow and wide integers, bools, a type it cannot convert).
TFS_MODEL = EchoModel(
    {
        "serving_default": _signature({"x": ("DT_FLOAT", [-1, 2])}, {"y": ("DT_FLOAT", None)}),
        "multi": _signature(
            {
                "a": ("DT_STRING", [-1]),
                "b": ("DT_INT8", [-1]),
                "c": ("DT_BOOL", [-1]),
                "d": ("DT_UINT64", [-1]),
            },
            {"a_bytes": ("DT_STRING", None), "b": ("DT_INT8", None), "c": ("DT_BOOL", None)},
        ),
        "wide": _signature(
            {"n": ("DT_INT64", None), "m": ("DT_UINT32", None), "f": ("DT_DOUBLE", None)},
            {"n": ("DT_INT64", None), "f": ("DT_DOUBLE", None)},
        ),
        "half": _signature({"h": ("DT_HALF", [-1])}, {"h": ("DT_HALF", None)}),
    },
    echo={"y": "x", "a_bytes": "a", "b": "b", "c": "c", "n": "n", "f": "f", "h": "h"},
    fallback={},
)

# The Open Inference Protocol: one input without a default (x), the others with one, covering
# fixed, free and unknown shapes and the datatypes with their own byte layout.
V2_MODEL = EchoModel(
    {
        "serving_default": _signature(
            {
                "x": ("DT_FLOAT", [-1, 2]),
                "s": ("DT_STRING", [-1]),
                "b": ("DT_BOOL", None),
                "h": ("DT_HALF", [2]),
                "q": ("DT_BFLOAT16", [-1]),
                "u": ("DT_UINT64", [-1]),
                "i": ("DT_INT8", [-1]),
            },
            {"y": ("DT_FLOAT", [-1, 2]), "t": ("DT_STRING", [-1]), "z": ("DT_BOOL", None)},
            defaults=("s", "b", "h", "q", "u", "i"),
        )
    },
    echo={"y": "x", "t": "s", "z": "b"},
    fallback={"t": np.array([b"\xff\x00"], dtype=object), "z": np.array(True)},
)


def _complete(coroutine):
    """Run a coroutine that never waits on anything (the fakes below answer at once)."""
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return stop.value
    coroutine.close()
    raise AssertionError("the coroutine waited")


class ReplicaCore:
    """The router core's part the /v2 routes use, with the replica's v2_calls behind `call`."""

    class map:  # noqa: N801 - RouterCore.map's shape
        models: dict = {"m": {1: None}}

    def experiment_key(self, name):
        return None  # no sticky experiment here

    def resolve(self, name, version, label, key=None):
        return 1, "replica"

    async def call(self, address, method: str, payload: bytes) -> bytes:
        if method == "v2_infer":
            return v2_calls.infer(V2_MODEL, payload, "m", 1)
        return v2_calls.metadata(V2_MODEL, "m", 1)

    async def infer(self, name, unversioned, version, address, method, payload) -> bytes:
        return await self.call(address, method, payload)  # no rollout here

    async def ask_manager(self, method: str, *args, **kwargs):
        return True

    def record(self, seen, protocol, code, seconds) -> None:
        pass


# ------------------------------------------------------------------------------- the targets
def tfs_json_request(data: bytes) -> None:
    """A /v1 :predict, :classify or :regress body: parsed as TF Serving's RapidJSON does, then
    decoded into tensors (predict) or tf.Examples (a body with "examples" or "context"), run on
    the echo model and answered; the answer must be JSON."""
    try:
        doc = tfs_json.parse_body(data)
        if "examples" in doc or "context" in doc:
            inference._serialized_examples(doc)
            return
        answer = inference.predict_json(TFS_MODEL, doc)
    except AspireError:
        return
    json.loads(answer)


def _same(a, b) -> bool:
    """Equal as JSON values of the same Python types, NaN equal to NaN, -0.0 apart from 0.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (a == b or (math.isnan(a) and math.isnan(b))) and (
            math.copysign(1, a) == math.copysign(1, b)
        )
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return a == b


def json_parser_paths(data: bytes) -> None:
    """The RapidJSON emulation's two paths agree: a body the C-speed path (json.loads) answers
    gives the same document, or the same error, through the port of RapidJSON's parser."""
    body = bytes(data)
    start = 0
    for bom in (0xEF, 0xBB, 0xBF):  # as _parse_value
        if start < len(body) and body[start] == bom:
            start += 1
    try:
        either = ("value", json_parser._parse_value(body))
    except AspireError as err:
        either = ("error", err.message)
    try:
        port = ("value", json_parser._rj_parse(body, start))
    except AspireError as err:
        port = ("error", err.message)
    _check(either[0] == port[0], f"_parse_value gives {either[0]}, _rj_parse {port[0]}")
    _check(_same(either[1], port[1]), "_parse_value and _rj_parse give different documents")


TFS_METHODS = ("Predict", "Classify", "Regress", "MultiInference", "GetModelMetadata")


def grpc_request_scan(data: bytes) -> None:
    """A gRPC request as the router reads it: byte 0 picks the method (TF Serving's five, then
    ModelInfer), the rest is the serialized request. Predict, Classify and Regress are scanned
    for their ModelSpec without a parse; where the scan and protobuf both accept the request,
    the merged ModelSpec the scan found must be the request's own (else the router routes one
    model and the replica reads another), and ModelInfer's scan must find the model name and
    version the message holds. (The scan may refuse what protobuf accepts: a scanned field with
    another wire type, or a group; the router then answers INVALID_ARGUMENT.)"""
    if not data:
        return
    method, request = data[0] % (len(TFS_METHODS) + 1), bytes(data[1:])
    if method == len(TFS_METHODS):
        return _model_infer_scan(request)
    name = TFS_METHODS[method]
    api = tfs_grpc.GrpcApi(core=None)  # type: ignore[arg-type]  # _model_spec reads no core
    try:
        spec = api._model_spec(name, request)
        if spec is not None:
            tfs_grpc.spec_target(spec)
    except AspireError:
        pass
    if name in ("MultiInference", "GetModelMetadata"):
        return
    parts = tfs_grpc.model_spec_parts(request)
    try:
        whole = tfs_requests.request_class(name).FromString(request)
    except Exception:  # noqa: BLE001 - protobuf's DecodeError; the scan may still succeed
        return
    if parts is None:  # refused: the router answers INVALID_ARGUMENT, as checked above
        return
    merged = type(whole.model_spec).FromString(b"".join(parts))
    _check(merged == whole.model_spec, "the scanned ModelSpec differs from the parsed one")


def _model_infer_scan(request: bytes) -> None:
    fields = tfs_grpc.string_fields(request, (1, 2))
    try:
        if fields is None:
            raise AspireError("Could not parse inference.ModelInferRequest", "INVALID_ARGUMENT")
        v2_grpc._name(fields[1][-1] if fields[1] else b"")
        v2_rest.parse_version((fields[2][-1] if fields[2] else b"").decode("utf-8", "replace"))
    except AspireError:
        pass
    try:
        whole = v2_protos.ModelInferRequest.FromString(request)
    except Exception:  # noqa: BLE001 - protobuf's DecodeError
        return
    if fields is None:  # refused: the router answers INVALID_ARGUMENT
        return
    scanned = [(f[-1] if f else b"").decode("utf-8") for f in (fields[1], fields[2])]
    _check(scanned == [whole.model_name, whole.model_version], "scan and parse disagree")


def v2_rest_infer(data: bytes) -> None:
    """POST /v2/models/m/infer through the router's /v2 routes to the replica's decoder: the
    first line of the input is the Inference-Header-Content-Length header (absent when the
    input has no newline), the rest the body (JSON, then the binary tensor data)."""
    header, newline, body = bytes(data).partition(b"\n")
    headers = [(b"inference-header-content-length", header)] if newline else []
    if not newline:
        body = header

    async def read_body(scope, receive) -> bytes:
        return body

    routes = v2_rest.V2Rest(ReplicaCore(), read_body, tfs_rest.header)  # type: ignore[arg-type]
    scope = {"headers": headers}
    status, _, answer, extra = _complete(routes.dispatch(scope, None, "POST", "/v2/models/m/infer"))
    _check(status == 200 or 400 <= status < 500, f"status {status}")
    if status == 200 and not extra:
        json.loads(answer)


def v2_grpc_infer(data: bytes) -> None:
    """A serialized ModelInferRequest, decoded and checked by the replica (raw and typed
    contents), run on the echo model; the answer must parse as a ModelInferResponse."""
    try:
        answer = v2_calls.grpc_infer(V2_MODEL, bytes(data), "m", 1)
    except AspireError:
        return
    v2_protos.ModelInferResponse.FromString(answer)


# Where the config targets write their input (run.py names a folder it reuses or removes).
_FILES = os.environ.get("ASPIRE_FUZZ_FILES") or tempfile.mkdtemp(prefix="aspire-fuzz-")


def _file(data: bytes, name: str) -> str:
    path = os.path.join(_FILES, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def model_config_file(data: bytes) -> None:
    """A --model_config_file: read, then turned into the model list and the version labels."""
    try:
        config = model_config.read_config_file(_file(data, "models.config"))
        model_config.models_from_config(config)
        model_config.labels_from_config(config)
    except AspireError:
        pass


def batching_config_file(data: bytes) -> None:
    """A --batching_parameters_file, read and checked as a model load would."""
    try:
        params = batching_config.load_batching_parameters(_file(data, "batching.config"))
    except AspireError:
        return
    _check(params.execution_batch_size > 0 and params.batch_threads() > 0, "checks let through")


def monitoring_config_file(data: bytes) -> None:
    """A --monitoring_config_file."""
    try:
        settings = monitoring_config.load_monitoring_config(_file(data, "monitoring.config"))
    except AspireError:
        return
    _check(settings.path.startswith("/"), "a Prometheus path without a leading /")


def ssl_config_file(data: bytes) -> None:
    """A --ssl_config_file: read, then its key, certificate and CAs checked; refusals are
    SslConfigError (config/ssl_config.py's contract). Path values are read from the fuzzing
    folder (relative) or as given (absolute)."""
    try:
        ssl_config.load_ssl_config(_file(data, "ssl.config"))
    except ssl_config.SslConfigError:
        pass


TARGETS: dict[str, Callable[[bytes], None]] = {
    "tfs_json": tfs_json_request,
    "json_parser": json_parser_paths,
    "grpc_scan": grpc_request_scan,
    "v2_rest": v2_rest_infer,
    "v2_grpc": v2_grpc_infer,
    "model_config": model_config_file,
    "batching_config": batching_config_file,
    "monitoring_config": monitoring_config_file,
    "ssl_config": ssl_config_file,
}
