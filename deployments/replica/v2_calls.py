"""The Open Inference Protocol (KServe "v2", Triton's REST and gRPC protocols) inside a replica:
a version's model metadata and its infer call, on the version's serving signature. REST's infer
is `infer`; gRPC's ModelInfer is `grpc_infer` (method `v2_grpc_infer`: a serialized
ModelInferRequest in, ModelInferResponse out), with the same checks.

Wire between router and replica (the `v2_infer` method of deployments/replica/call_service.py):
- request payload: 8 bytes (big-endian signed) with the request's Inference-Header-Content-Length
  (-1 without the header: the body is JSON only), then the HTTP body as the client sent it;
- answer payload: 8 bytes with the JSON header's length when binary outputs follow it (-1: JSON
  only), then the response body.

Rules (the protocol, as `tritonclient` and KServe's SDK use it):
- `inputs`: each with `name`, `shape`, `datatype` and either `data` (row-major, flat or nested)
  or, with the binary tensor extension, `parameters.binary_data_size` bytes taken in order from
  after the JSON header: little-endian, BOOL one byte, BYTES elements a 4-byte little-endian
  length and the bytes.
- The datatype must be the signature's (DT_FLOAT is FP32, ...); the shape must have the
  signature's rank and its known dimensions; every input without a default must be given.
- `outputs` names the outputs to return (all by default); an output is returned as binary data
  when its `parameters.binary_data` or the request's `parameters.binary_data_output` is true.
- `parameters` (of the request, an input or an output) is a JSON object, or absent or null.
- The request's `id` is echoed. Every refusal is INVALID_ARGUMENT with the reason.
"""

from __future__ import annotations

import json
import math
import struct

import numpy as np
from google.protobuf.message import DecodeError

from core.errors import invalid_argument
from deployments.replica.inference import DEFAULT_SIGNATURE, tensor_spec
from deployments.wire.direct import V2_HEADER_LENGTH, V2_NO_BINARY
from deployments.wire.v2_protos import ModelInferRequest, ModelInferResponse

# TF dtype -> v2 datatype
V2_TYPES = {
    "DT_BOOL": "BOOL",
    "DT_INT8": "INT8",
    "DT_INT16": "INT16",
    "DT_INT32": "INT32",
    "DT_INT64": "INT64",
    "DT_UINT8": "UINT8",
    "DT_UINT16": "UINT16",
    "DT_UINT32": "UINT32",
    "DT_UINT64": "UINT64",
    "DT_HALF": "FP16",
    "DT_FLOAT": "FP32",
    "DT_DOUBLE": "FP64",
    "DT_BFLOAT16": "BF16",
    "DT_STRING": "BYTES",
}
_NUMPY = {
    "BOOL": np.bool_,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}


def _numpy_type(datatype: str):
    if datatype == "BF16":
        import ml_dtypes  # TensorFlow's own dependency

        return ml_dtypes.bfloat16
    return _NUMPY[datatype]


def _signature(model):
    signature = model.signatures.get(DEFAULT_SIGNATURE)
    if signature is None and len(model.signatures) == 1:
        return next(iter(model.signatures.items()))
    if signature is None:
        raise invalid_argument(
            f'Serving signature name: "{DEFAULT_SIGNATURE}" not found in signature def'
        )
    return DEFAULT_SIGNATURE, signature


def _v2_type(info) -> str:
    return V2_TYPES.get(tensor_spec(info).dtype, tensor_spec(info).dtype)


def _declared_shape(info) -> tuple | None:
    """The signature's shape, or None when it declares none (no shape at all, as TF1 exports
    of an unshaped placeholder leave it, or an unknown rank): any shape is then let through to
    TensorFlow, which checks it as it runs."""
    if not info.HasField("tensor_shape"):
        return None
    return tensor_spec(info).shape


def _v2_shape(info) -> list[int]:
    shape = _declared_shape(info)
    return [-1] if shape is None else [int(d) for d in shape]


def metadata(model, name: str, version: int) -> bytes:
    """GET /v2/models/NAME/versions/V: the serving signature's inputs and outputs."""
    _, signature = _signature(model)
    return json.dumps(
        {
            "name": name,
            "versions": [str(version)],
            "platform": "tensorflow_savedmodel",
            "inputs": [
                {"name": alias, "datatype": _v2_type(info), "shape": _v2_shape(info)}
                for alias, info in sorted(signature.inputs.items())
            ],
            "outputs": [
                {"name": alias, "datatype": _v2_type(info), "shape": _v2_shape(info)}
                for alias, info in sorted(signature.outputs.items())
            ],
        }
    ).encode("utf-8")


def _shape_of(item: dict, what: str) -> list[int]:
    shape = item.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise invalid_argument(f"{what}: 'shape' must be a list of non-negative integers")
    return shape


def _check_shape(name: str, model_name: str, shape: list[int], info) -> None:
    want = _declared_shape(info)
    if want is None:
        return
    if len(want) != len(shape) or any(w >= 0 and w != d for w, d in zip(want, shape, strict=True)):
        raise invalid_argument(
            f"unexpected shape for input '{name}' for model '{model_name}'. Expected "
            f"{list(want)}, got {shape}"
        )


def _from_binary(raw: bytes, datatype: str, shape: list[int], name: str) -> np.ndarray:
    count = math.prod(shape)
    if datatype == "BYTES":
        items, offset = [], 0
        while offset < len(raw):
            if offset + 4 > len(raw):
                raise invalid_argument(f"input '{name}': a BYTES element's length is cut short")
            (size,) = struct.unpack_from("<I", raw, offset)
            offset += 4
            if offset + size > len(raw):
                raise invalid_argument(f"input '{name}': a BYTES element is cut short")
            items.append(raw[offset : offset + size])
            offset += size
        if len(items) != count:
            raise invalid_argument(
                f"input '{name}': {len(items)} BYTES elements for shape {shape} ({count})"
            )
        return np.array(items, dtype=object).reshape(shape)
    dtype = np.dtype(_numpy_type(datatype)).newbyteorder("<")
    if len(raw) != count * dtype.itemsize:
        raise invalid_argument(
            f"input '{name}': {len(raw)} bytes of binary data, shape {shape} of {datatype} "
            f"needs {count * dtype.itemsize}"
        )
    return (
        np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="), copy=False).reshape(shape)
    )


def _flat(data) -> list:
    if isinstance(data, list) and any(isinstance(d, list) for d in data):
        out: list = []
        for d in data:
            out.extend(_flat(d) if isinstance(d, list) else [d])
        return out
    return data if isinstance(data, list) else [data]


def _from_json(data, datatype: str, shape: list[int], name: str) -> np.ndarray:
    flat = _flat(data)
    count = math.prod(shape)
    if len(flat) != count:
        raise invalid_argument(
            f"input '{name}': {len(flat)} elements in 'data' for shape {shape} ({count})"
        )
    if datatype == "BYTES":
        if not all(isinstance(v, str) for v in flat):
            raise invalid_argument(f"input '{name}': BYTES data must be strings")
        return np.array([v.encode("utf-8") for v in flat], dtype=object).reshape(shape)
    if datatype == "BOOL":
        if not all(isinstance(v, bool) for v in flat):
            raise invalid_argument(f"input '{name}': BOOL data must be true or false")
    elif not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in flat):
        raise invalid_argument(f"input '{name}': {datatype} data must be numbers")
    elif datatype.startswith(("INT", "UINT")) and not all(isinstance(v, int) for v in flat):
        raise invalid_argument(f"input '{name}': {datatype} data must be integers")
    try:
        if datatype == "BF16":
            return np.array(flat, dtype=np.float32).astype(_numpy_type("BF16")).reshape(shape)
        return np.array(flat, dtype=_numpy_type(datatype)).reshape(shape)
    except (OverflowError, ValueError) as exc:
        raise invalid_argument(f"input '{name}': {exc}") from None


def _to_binary(value: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        items = [v if isinstance(v, bytes) else str(v).encode("utf-8") for v in value.flat]
        return b"".join(struct.pack("<I", len(v)) + v for v in items)
    dtype = np.dtype(_numpy_type(datatype)).newbyteorder("<")
    return np.ascontiguousarray(value, dtype=dtype).tobytes()


def _to_json(value: np.ndarray, datatype: str, name: str) -> list:
    if datatype == "BYTES":
        try:
            return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in value.flat]
        except UnicodeDecodeError:
            raise invalid_argument(
                f"output '{name}' holds bytes that are not UTF-8: ask for it as binary data "
                '("parameters": {"binary_data": true})'
            ) from None
    if datatype in ("FP16", "BF16"):
        return value.astype(np.float32).ravel().tolist()
    return value.ravel().tolist()


def _split(payload: bytes) -> tuple[dict, bytes]:
    if len(payload) < V2_HEADER_LENGTH.size:
        raise invalid_argument("empty infer request")
    (header_length,) = V2_HEADER_LENGTH.unpack_from(payload)
    body = payload[V2_HEADER_LENGTH.size :]
    if header_length == V2_NO_BINARY:
        head, binary = body, b""
    elif 0 <= header_length <= len(body):
        head, binary = body[:header_length], body[header_length:]
    else:
        raise invalid_argument(
            f"Inference-Header-Content-Length {header_length} is not within the body "
            f"({len(body)} bytes)"
        )
    try:
        doc = json.loads(head)
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid_argument(f"failed to parse the request JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise invalid_argument("the infer request must be a JSON object")
    return doc, binary


def _input(signature, feeds: dict, name: str, alias: str, datatype: str | None, shape) -> list[int]:
    """The shape of input `alias` once its name, datatype and shape pass the signature's checks
    (a datatype that passes is the signature's, a str; None, missing, never passes)."""
    info = signature.inputs.get(alias)
    if info is None:
        raise invalid_argument(f"unexpected inference input '{alias}' for model '{name}'")
    if alias in feeds:
        raise invalid_argument(f"input '{alias}' is given twice")
    want = _v2_type(info)
    if datatype != want:
        raise invalid_argument(
            f"inference input '{alias}' data-type is '{datatype}', but model '{name}' "
            f"expects '{want}'"
        )
    checked = _shape_of({"shape": shape}, f"input '{alias}'")
    _check_shape(alias, name, checked, info)
    return checked


def _check_complete(signature, feeds: dict, name: str) -> None:
    missing = sorted(set(signature.inputs) - set(feeds) - set(signature.defaults))
    if missing:
        raise invalid_argument(
            f"expected {len(signature.inputs)} inputs but got {len(feeds)} inputs for model "
            f"'{name}': missing {', '.join(missing)}"
        )


def _check_output(signature, alias: str, name: str) -> None:
    if alias not in signature.outputs:
        raise invalid_argument(f"unexpected inference output '{alias}' for model '{name}'")


def _parameters(item: dict, where: str) -> dict:
    """The `parameters` of the request, an input or a requested output: a JSON object (absent or
    null: none), else INVALID_ARGUMENT naming `where`."""
    parameters = item.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise invalid_argument(f"{where}: 'parameters' must be a JSON object")
    return parameters


def infer(model, payload: bytes, name: str, version: int) -> bytes:
    """POST /v2/models/NAME[/versions/V]/infer, as the wire above frames it."""
    doc, binary = _split(payload)
    key, signature = _signature(model)
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise invalid_argument("the infer request needs a non-empty 'inputs' list")
    binary_default = bool(_parameters(doc, "the infer request").get("binary_data_output", False))
    feeds: dict = {}
    offset = 0
    for item in inputs:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise invalid_argument("every input needs a 'name'")
        alias, datatype = item["name"], item.get("datatype")
        shape = _input(signature, feeds, name, alias, datatype, item.get("shape"))
        assert isinstance(datatype, str)  # _input refused any other
        size = _parameters(item, f"input '{alias}'").get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise invalid_argument(
                    f"input '{alias}': binary_data_size {size} runs past the binary data"
                )
            feeds[alias] = _from_binary(binary[offset : offset + size], datatype, shape, alias)
            offset += size
        elif "data" in item:
            feeds[alias] = _from_json(item["data"], datatype, shape, alias)
        else:
            raise invalid_argument(f"input '{alias}' has neither 'data' nor binary data")
    if offset != len(binary):
        raise invalid_argument(f"{len(binary) - offset} bytes of binary data belong to no input")
    _check_complete(signature, feeds, name)
    requested = doc.get("outputs")
    if requested is None:
        wanted = [(alias, binary_default) for alias in sorted(signature.outputs)]
    elif isinstance(requested, list) and all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in requested
    ):
        wanted = []
        for o in requested:
            _check_output(signature, o["name"], name)
            parameters = _parameters(o, f"output '{o['name']}'")
            wanted.append((o["name"], bool(parameters.get("binary_data", binary_default))))
    else:
        raise invalid_argument("'outputs' must be a list of objects with a 'name'")
    values = model.run(key, feeds, [alias for alias, _ in wanted])
    outputs, parts = [], []
    for alias, as_binary in wanted:
        value = np.asarray(values[alias])
        datatype = _v2_type(signature.outputs[alias])
        entry: dict = {"name": alias, "datatype": datatype, "shape": list(value.shape)}
        if as_binary:
            raw = _to_binary(value, datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            parts.append(raw)
        else:
            entry["data"] = _to_json(value, datatype, alias)
        outputs.append(entry)
    answer: dict = {"model_name": name, "model_version": str(version), "outputs": outputs}
    if "id" in doc:
        answer["id"] = doc["id"]
    head = json.dumps(answer).encode("utf-8")
    return V2_HEADER_LENGTH.pack(len(head) if parts else V2_NO_BINARY) + head + b"".join(parts)


# gRPC: the typed field of InferTensorContents that carries each datatype, and its numpy type
# (FP16 and BF16 have none: they travel in raw_input_contents only).
CONTENTS = {
    "BOOL": ("bool_contents", np.bool_),
    "INT8": ("int_contents", np.int32),
    "INT16": ("int_contents", np.int32),
    "INT32": ("int_contents", np.int32),
    "INT64": ("int64_contents", np.int64),
    "UINT8": ("uint_contents", np.uint32),
    "UINT16": ("uint_contents", np.uint32),
    "UINT32": ("uint_contents", np.uint32),
    "UINT64": ("uint64_contents", np.uint64),
    "FP32": ("fp32_contents", np.float32),
    "FP64": ("fp64_contents", np.float64),
    "BYTES": ("bytes_contents", object),
}


def _from_contents(contents, datatype: str, shape: list[int], alias: str) -> np.ndarray:
    if datatype not in CONTENTS:
        if math.prod(shape) == 0 and not contents.ListFields():  # no elements: nothing to send
            return np.zeros(shape, dtype=_numpy_type(datatype))
        raise invalid_argument(
            f"input '{alias}': {datatype} data can only be sent in raw_input_contents"
        )
    field, wide = CONTENTS[datatype]
    stray = [f.name for f, _ in contents.ListFields() if f.name != field]
    if stray:
        raise invalid_argument(
            f"input '{alias}': {datatype} data belongs in '{field}', not in {', '.join(stray)}"
        )
    values = getattr(contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise invalid_argument(
            f"input '{alias}': {len(values)} elements in '{field}' for shape {shape} ({count})"
        )
    array: np.ndarray = np.array(values, dtype=wide)
    if datatype in ("INT8", "INT16", "UINT8", "UINT16"):
        narrow = array.astype(_numpy_type(datatype))
        if not np.array_equal(narrow, array):
            raise invalid_argument(f"input '{alias}': a value is out of {datatype}'s range")
        array = narrow
    return array.reshape(shape)


def grpc_infer(model, payload: bytes, name: str, version: int) -> bytes:
    """GRPCInferenceService/ModelInfer: a serialized ModelInferRequest in, a serialized
    ModelInferResponse out, every output in raw_output_contents (as Triton answers)."""
    try:
        request = ModelInferRequest.FromString(payload)
    except DecodeError as exc:
        raise invalid_argument(f"Could not parse inference.ModelInferRequest: {exc}") from None
    key, signature = _signature(model)
    if not request.inputs:
        raise invalid_argument("the infer request needs at least one input")
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise invalid_argument(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs"
        )
    feeds: dict = {}
    for index, tensor in enumerate(request.inputs):
        alias, datatype = tensor.name, tensor.datatype
        shape = _input(signature, feeds, name, alias, datatype, list(tensor.shape))
        if raw:
            if tensor.HasField("contents"):
                raise invalid_argument(
                    f"input '{alias}' has typed contents in a request that sends "
                    "raw_input_contents: use one or the other for every input"
                )
            feeds[alias] = _from_binary(raw[index], datatype, shape, alias)
        else:
            feeds[alias] = _from_contents(tensor.contents, datatype, shape, alias)
    _check_complete(signature, feeds, name)
    wanted = [o.name for o in request.outputs] or sorted(signature.outputs)
    for alias in wanted:
        _check_output(signature, alias, name)
    values = model.run(key, feeds, wanted)
    response = ModelInferResponse(model_name=name, model_version=str(version), id=request.id)
    for alias in wanted:
        value = np.asarray(values[alias])
        datatype = _v2_type(signature.outputs[alias])
        response.outputs.add(name=alias, datatype=datatype, shape=value.shape)
        response.raw_output_contents.append(_to_binary(value, datatype))
    return response.SerializeToString()
