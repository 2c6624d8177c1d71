"""The gRPC side of the request core: TF Serving's PredictionService methods on one loaded version.

Contract:
- The caller has resolved the request's ModelSpec to (name, version) and passes the loaded version
  with them. Each function returns the response proto TF Serving would send, or raises AspireError
  with TF Serving's status code and message.
- Checks run in TF Serving's order (predict_util.cc, tensorflow/cc/saved_model/util.cc,
  classifier.cc, regressor.cc, multi_inference.cc, get_model_metadata_impl.cc), so a request with
  several faults gets the error TF Serving reports first.
- Classify and Regress share signature checks and result extraction with REST
  (deployments.replica.inference); only the proto conversion lives here.
- --enable_signature_method_name_check (`check`) as TF Serving applies it: see
  deployments.replica.inference's docstring.
- `handle` is the replica entry point: serialized request in, ("OK", serialized response) or
  (status code name, message) out; it never raises AspireError. Message truncation to 1024
  characters is the ingress's job.
- TensorFlow and the tensorflow_serving protos are imported on first use: TF takes seconds to
  import and this module is imported by processes that never run a model.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING

import numpy as np

from core.errors import AspireError, failed_precondition, invalid_argument, unimplemented
from deployments.replica import inference
from deployments.replica.inference import DEFAULT_SIGNATURE
from deployments.replica.loader import ServedModel
from deployments.replica.tf_runtime import runtime
from deployments.wire.tfs_requests import (
    SIGNATURE_DEF_FIELD,
    request_classes,
    validate_metadata_request,
)

if TYPE_CHECKING:
    from tensorflow_serving.apis import (
        classification_pb2,
        get_model_metadata_pb2,
        inference_pb2,
        predict_pb2,
        regression_pb2,
    )

_EMPTY_BATCH = np.empty(0, dtype=object)
# What a callable-run session says for a feed of the wrong dtype (loader.LoadedSavedModel.run);
# the node is `_arg_<feed node>_<output index>_<arg index>`.
_TYPE_MISMATCH = re.compile(
    r"^Type mismatch: actual (\w+) vs\. expect (\w+) \[\[\{\{node _arg_(.+)_(\d+)_\d+\}\}\]\]$"
)


def _object_array(values: list) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def _join(keys) -> str:
    return ",".join(sorted(keys))  # absl::StrJoin over a std::set


def _set_model_spec(spec, name: str, version: int, signature_name: str | None = None) -> None:
    """TF Serving's MakeModelSpec: an empty signature name is reported as serving_default."""
    spec.name = name
    if signature_name is not None:
        spec.signature_name = signature_name or DEFAULT_SIGNATURE
    spec.version.value = version


def _session_error(err: AspireError, feed_names) -> AspireError:
    """TF Serving's session->Run checks feed dtypes in the call frame before running and reports
    `Expects arg[i] to be <t> but <u> is provided`, i counting feeds in sorted tensor-name order;
    the callable run reports the same fault as an _Arg kernel's type mismatch."""
    match = _TYPE_MISMATCH.match(err.message)
    if err.code != "INVALID_ARGUMENT" or match is None:
        return err
    actual, expected, node, output = match.groups()
    names = sorted(feed_names)
    tensor = f"{node}:{output}"
    if tensor not in names:
        return err
    return invalid_argument(
        f"Expects arg[{names.index(tensor)}] to be {expected} but {actual} is provided"
    )


# -------------------------------------------------------------------------------- tensor conversion
def _decode_string_list(proto) -> np.ndarray:
    """DT_STRING tensor_content as TF's EncodeStringList writes it: every length as a varint32,
    then every string's bytes. tf.make_ndarray cannot read it; TF's Tensor::FromProto can."""
    shape = [d.size for d in proto.tensor_shape.dim]
    count = int(np.prod(shape, dtype=np.int64))
    data, pos, sizes = proto.tensor_content, 0, []
    for _ in range(count):
        size = shift = 0
        while True:
            byte = data[pos]
            pos += 1
            size |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        sizes.append(size)
    values = []
    for size in sizes:
        values.append(data[pos : pos + size])
        pos += size
    if pos != len(data):
        raise ValueError("trailing bytes after the encoded strings")
    return _object_array(values).reshape(shape)


def _to_ndarray(alias: str, proto) -> np.ndarray:
    from tensorflow.core.framework import types_pb2

    try:
        if proto.dtype == types_pb2.DT_STRING and proto.tensor_content:
            return _decode_string_list(proto)
        return runtime().make_ndarray(proto)
    except Exception:
        raise invalid_argument(f"tensor parsing error: {alias}") from None


@functools.cache
def _value_fields() -> dict:
    from tensorflow.core.framework import types_pb2 as t

    fields = {
        t.DT_FLOAT: "float_val",
        t.DT_DOUBLE: "double_val",
        t.DT_INT64: "int64_val",
        t.DT_UINT32: "uint32_val",
        t.DT_UINT64: "uint64_val",
        t.DT_BOOL: "bool_val",
        t.DT_HALF: "half_val",
        t.DT_BFLOAT16: "half_val",
        t.DT_COMPLEX64: "scomplex_val",
        t.DT_COMPLEX128: "dcomplex_val",
    }
    for dtype in (t.DT_INT32, t.DT_INT16, t.DT_INT8, t.DT_UINT8, t.DT_UINT16):
        fields[dtype] = "int_val"
    return fields


def _fill_tensor(proto, value, tensor_content: bool) -> None:
    """Tensor::AsProtoField (typed repeated fields) or Tensor::AsProtoTensorContent (raw bytes).

    Session results always carry the base dtype, so TF1 ref outputs (DT_FLOAT_REF) come out as
    DT_FLOAT, as in TF Serving.
    """
    from tensorflow.core.framework import types_pb2

    array = np.asarray(value, order="C")  # ascontiguousarray would turn scalars into [1]
    is_string = array.dtype == object or array.dtype.kind in "SU"
    dtype = types_pb2.DT_STRING if is_string else runtime().as_dtype(array.dtype).as_datatype_enum
    proto.dtype = dtype
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    if array.size == 0:
        return
    field = _value_fields().get(dtype)
    flat = array.reshape(-1)
    if is_string:
        # Kept in string_val even with tensor_content: tf.make_ndarray, what Python clients decode
        # with, cannot read the length-prefixed tensor_content encoding of strings.
        proto.string_val.extend(flat.tolist())
    elif tensor_content or field is None:
        proto.tensor_content = array.tobytes()
    elif field == "half_val":
        proto.half_val.extend(flat.view(np.uint16).tolist())  # bit patterns, as TF stores halves
    elif field in ("scomplex_val", "dcomplex_val"):
        parts = flat.view(np.float32 if field == "scomplex_val" else np.float64)
        getattr(proto, field).extend(parts.tolist())  # (real, imag) pairs
    else:
        getattr(proto, field).extend(flat.tolist())


# ------------------------------------------------------------------------------------------ Predict
def _predict_inputs(signature, request_inputs) -> dict:
    """predict_util.cc VerifyRequestInputsSize, then saved_model util GetInputValues."""
    sent, expected = set(request_inputs), set(signature.inputs)
    if len(sent) > len(expected) or (len(sent) < len(expected) and not signature.defaults):
        raise invalid_argument(
            f"input size does not match signature: {len(sent)}!={len(expected)} "
            f"len({{{_join(sent)}}}) != len({{{_join(expected)}}}). "
            f"Sent extra: {{{_join(sent - expected)}}}. "
            f"Missing but required: {{{_join(expected - sent)}}}."
        )
    inputs = {}
    # TF walks the signature's hash map; sorted order makes the reported alias deterministic when
    # several are missing.
    for alias in sorted(signature.inputs):
        if alias in request_inputs:
            inputs[alias] = _to_ndarray(alias, request_inputs[alias])
        elif alias in signature.defaults:
            inputs[alias] = _to_ndarray(alias, signature.defaults[alias])
        else:
            raise invalid_argument(
                f"Signature input alias: {alias}(feed name: {signature.inputs[alias].name}) not "
                f"found in request and no default value provided. Inputs expected to be in the "
                f"request {{{_join(sent)}}}, or default input alias set: "
                f"{_join(signature.defaults)}"
            )
    used = sent & expected
    if sent and len(used) != len(sent):
        raise invalid_argument(
            f"Inputs contains invalid name. Used request inputs: {_join(used)}, "
            f"request input: {_join(sent)}"
        )
    return inputs


def _output_aliases(signature, output_filter) -> list[str] | None:
    aliases: list[str] = []
    for alias in output_filter:
        if alias not in signature.outputs:
            raise invalid_argument(
                f"output tensor alias not found in signature: {alias} Outputs expected to be in "
                f"the set {{{_join(signature.outputs)}}}."
            )
        if alias in aliases:
            raise invalid_argument(f"duplicate output tensor alias: {alias}")
        aliases.append(alias)
    return aliases or None  # no filter: every signature output


def predict(
    model: ServedModel,
    request: predict_pb2.PredictRequest,
    name: str,
    version: int,
    tensor_content: bool = False,
    *,
    check: bool = False,
) -> predict_pb2.PredictResponse:
    from tensorflow_serving.apis import predict_pb2

    key = request.model_spec.signature_name or DEFAULT_SIGNATURE
    signature = model.signatures.get(key)
    if signature is None:
        raise failed_precondition(f'Serving signature key "{key}" not found.')
    if check:  # predict_util.cc PreProcessPrediction: VerifySignature comes first
        inference.check_predict_method(signature)
    inputs = _predict_inputs(signature, request.inputs)
    aliases = _output_aliases(signature, request.output_filter)
    try:
        outputs = model.run(key, inputs, aliases)
    except AspireError as err:
        raise _session_error(err, [signature.inputs[a].name for a in inputs]) from None
    response = predict_pb2.PredictResponse()
    _set_model_spec(response.model_spec, name, version, key)
    for alias, value in outputs.items():
        _fill_tensor(response.outputs[alias], value, tensor_content)
    return response


# -------------------------------------------------------------------------------- Classify, Regress
def _serialized_examples(input_proto) -> np.ndarray:
    """util.cc InputToSerializedExampleTensor: a context's bytes followed by an example's bytes
    parse as their merge, which is how a graph taking tf.Example strings sees the context."""
    kind = input_proto.WhichOneof("kind")
    if kind == "example_list":
        values = [e.SerializeToString() for e in input_proto.example_list.examples]
    elif kind == "example_list_with_context":
        with_context = input_proto.example_list_with_context
        context = with_context.context.SerializeToString()
        values = [context + e.SerializeToString() for e in with_context.examples]
    else:
        values = []
    return _object_array(values)


def _run_examples(fn, model, signature_name: str, serialized: np.ndarray, check: bool = False):
    try:
        return fn(model, signature_name, serialized, check)
    except AspireError as err:
        signature = model.signatures.get(signature_name or DEFAULT_SIGNATURE)
        feed = signature.inputs.get("inputs") if signature is not None else None
        raise (_session_error(err, [feed.name]) if feed is not None else err) from None


def _fill_classifications(result, rows) -> None:
    for row in rows:
        classes = result.classifications.add().classes
        for label, score in row:
            classes.add(label=label, score=score)


def _fill_regressions(result, values) -> None:
    for value in values:
        result.regressions.add(value=value)


def classify(
    model: ServedModel,
    request: classification_pb2.ClassificationRequest,
    name: str,
    version: int,
    *,
    check: bool = False,
) -> classification_pb2.ClassificationResponse:
    from tensorflow_serving.apis import classification_pb2

    signature_name = request.model_spec.signature_name
    rows = _run_examples(
        inference.classify, model, signature_name, _serialized_examples(request.input), check
    )
    response = classification_pb2.ClassificationResponse()
    _set_model_spec(response.model_spec, name, version, signature_name)
    _fill_classifications(response.result, rows)
    return response


def regress(
    model: ServedModel,
    request: regression_pb2.RegressionRequest,
    name: str,
    version: int,
    *,
    check: bool = False,
) -> regression_pb2.RegressionResponse:
    from tensorflow_serving.apis import regression_pb2

    signature_name = request.model_spec.signature_name
    values = _run_examples(
        inference.regress, model, signature_name, _serialized_examples(request.input), check
    )
    response = regression_pb2.RegressionResponse()
    _set_model_spec(response.model_spec, name, version, signature_name)
    _fill_regressions(response.result, values)
    return response


# ----------------------------------------------------------------------------------- MultiInference
_TASKS = {
    inference.CLASSIFY_METHOD: (inference.classify, "classification_result", _fill_classifications),
    inference.REGRESS_METHOD: (inference.regress, "regression_result", _fill_regressions),
}


def _check_task_signature(fn, model, signature_name: str, check: bool) -> None:
    # inference.classify/regress check the signature before the batch, so an empty batch runs
    # exactly PreProcessClassification/PreProcessRegression (the signature's method_name first,
    # with `check`): every task is vetted before any runs.
    try:
        fn(model, signature_name, _EMPTY_BATCH, check)
    except AspireError as err:
        if err.message != "Input is empty.":
            raise


def multi_inference(
    model: ServedModel,
    request: inference_pb2.MultiInferenceRequest,
    name: str,
    version: int,
    *,
    check: bool = False,
) -> inference_pb2.MultiInferenceResponse:
    from tensorflow_serving.apis import inference_pb2

    model_name, seen = "", set()
    for task in request.tasks:
        spec = task.model_spec
        if not spec.name:
            raise invalid_argument("Found ModelSpec with an empty model name.")
        if not model_name:
            model_name = spec.name
        elif spec.name != model_name:
            raise invalid_argument(
                "All ModelSpecs in a MultiInferenceRequest must access the same model name."
            )
        key = spec.signature_name or DEFAULT_SIGNATURE
        if key in seen:
            raise invalid_argument(f"Duplicate evaluation of signature: {key}")
        seen.add(key)
        if key not in model.signatures:
            raise invalid_argument(f"Requested signature not found in model graph: {key}")
        if task.method_name not in _TASKS:
            raise unimplemented(f"Unsupported signature method_name: {task.method_name}")
        _check_task_signature(_TASKS[task.method_name][0], model, key, check)
    serialized = _serialized_examples(request.input)
    if len(serialized) == 0:
        raise invalid_argument("Input is empty.")
    response = inference_pb2.MultiInferenceResponse()
    for task in request.tasks:
        fn, field, fill = _TASKS[task.method_name]
        key = task.model_spec.signature_name or DEFAULT_SIGNATURE
        values = _run_examples(fn, model, key, serialized, check)
        result = response.results.add()
        fill(getattr(result, field), values)
        # TF Serving names each result after its task's ModelSpec, with the served version.
        _set_model_spec(
            result.model_spec, task.model_spec.name, version, task.model_spec.signature_name
        )
    return response


# --------------------------------------------------------------------------------- GetModelMetadata
def get_model_metadata(
    model: ServedModel,
    request: get_model_metadata_pb2.GetModelMetadataRequest,
    name: str,
    version: int,
) -> get_model_metadata_pb2.GetModelMetadataResponse:
    from tensorflow_serving.apis import get_model_metadata_pb2

    validate_metadata_request(request)
    signature_defs = get_model_metadata_pb2.SignatureDefMap()
    for key, signature in model.signatures.items():
        signature_defs.signature_def[key].CopyFrom(signature)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    _set_model_spec(response.model_spec, name, version)
    response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_defs)
    return response


# -------------------------------------------------------------------------------------- entry point
@functools.cache
def _methods() -> dict:
    """{method: (request class, function)}."""
    functions = {
        "Predict": predict,
        "Classify": classify,
        "Regress": regress,
        "MultiInference": multi_inference,
        "GetModelMetadata": get_model_metadata,
    }
    return {method: (cls, functions[method]) for method, cls in request_classes().items()}


def handle(
    model: ServedModel,
    method: str,
    request_bytes: bytes,
    name: str,
    version: int,
    tensor_content: bool,
    method_name_check: bool = False,
) -> tuple[str, bytes | str]:
    """("OK", serialized response) or (status code name, message) for one gRPC call;
    `method_name_check`: --enable_signature_method_name_check."""
    from google.protobuf.message import DecodeError

    entry = _methods().get(method)
    if entry is None:
        return "UNIMPLEMENTED", f"Method not found: {method}"
    request_cls, fn = entry
    try:
        request = request_cls.FromString(request_bytes)
    except DecodeError as exc:
        return "INVALID_ARGUMENT", f"Could not parse {request_cls.DESCRIPTOR.full_name}: {exc}"
    try:
        if method == "Predict":
            response = predict(
                model, request, name, version, tensor_content, check=method_name_check
            )
        elif method == "GetModelMetadata":
            response = fn(model, request, name, version)
        else:
            response = fn(model, request, name, version, check=method_name_check)
    except AspireError as err:
        return err.code, err.message
    return "OK", response.SerializeToString()
