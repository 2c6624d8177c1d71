"""The comparison of one shadowed request's two answers: the live ("baseline") version's and the
candidate's, which got a copy of the request. The router runs it in its event loop for every
shadowed request and hands the `policies.rollout_judge.Comparison` to the judge.

Contract (`compare_answers(method, baseline, candidate)`):
1. `method` is one of `SHADOWED_METHODS` (deployments/wire/direct.py's names) and the answers are
   the replica's OK payloads for it: `predict`, TF Serving's REST body (`{"predictions": ...}`,
   rows: a list of objects name -> value with several outputs, a list of values with one, which
   is then called "predictions"; `{"outputs": ...}`, columnar: an object name -> value, or with
   one output the value, called "outputs"); `Predict`, a serialized PredictResponse (its
   TensorProtos read with numpy alone, TensorFlow's runtime never imported: core/protos.py);
   `v2_infer`, the Open Inference Protocol's REST answer as deployments/replica/v2_calls.py
   frames it (8-byte JSON header length or -1, the JSON, binary outputs; a body starting with
   `{` is taken as JSON alone); `v2_grpc_infer`, a serialized inference.ModelInferResponse
   (typed `contents` or `raw_output_contents`). Another method is a caller's bug: ValueError.
2. Nothing else raises: an answer that cannot be read is a `hard_failure` naming the side
   (the baseline's first when neither can be read).
3. Every output of either answer must be in the other, with the same shape and type (the
   dtype or datatype; in JSON, numbers, strings or bools, an empty array matching any), else
   `hard_failure` names each one that is not.
4. A NaN or Inf in the candidate's output where the baseline's holds a finite value is a
   `hard_failure`. Positions where the baseline's is not finite are left out of the figures.
5. Numeric outputs (bools as 0/1): mean and max absolute difference in float64 (0 and 0 when
   empty). Strings: the share of elements that differ, and 1.0 or 0.0 (any differs or not).
6. Class scores (a float output of rank >= 2, last dimension >= 2, every value in [0, 1] within
   1e-6 and every row over the last axis summing to 1 within 1e-3, in both answers): also
   `top1_agree`, the share of rows whose arg-max agrees, and `js_divergence`, the mean over
   rows of the Jensen-Shannon divergence (natural log, probabilities clipped at 1e-12, each
   row's in [0, ln 2]). Otherwise both None.
7. Byte-identical answers are decoded once: every figure 0 (top1 1.0, js 0.0 for class scores).
Numeric work is numpy's; Python loops only walk outputs, rows of row-format JSON with several
outputs, and string elements.
"""

from __future__ import annotations

import binascii
import functools
import json
import math
import struct
import sys
from typing import Any

import numpy as np

from deployments.wire.direct import V2_HEADER_LENGTH, V2_NO_BINARY
from deployments.wire.v2_protos import ModelInferResponse
from policies.rollout_judge import Comparison, OutputDiff

SHADOWED_METHODS = frozenset({"predict", "Predict", "v2_infer", "v2_grpc_infer"})
LN2 = math.log(2.0)
Tensor = tuple[np.ndarray, str]  # the values and their type's name ("" for an empty JSON array)

_BF16 = "bf16"  # 16-bit patterns widened to float32
# TensorProto dtype enum -> (name, numpy type, typed repeated field)
_TF_TYPES: dict[int, tuple[str, Any, str]] = {
    1: ("DT_FLOAT", np.float32, "float_val"),
    2: ("DT_DOUBLE", np.float64, "double_val"),
    3: ("DT_INT32", np.int32, "int_val"),
    4: ("DT_UINT8", np.uint8, "int_val"),
    5: ("DT_INT16", np.int16, "int_val"),
    6: ("DT_INT8", np.int8, "int_val"),
    7: ("DT_STRING", object, "string_val"),
    8: ("DT_COMPLEX64", np.complex64, "scomplex_val"),
    9: ("DT_INT64", np.int64, "int64_val"),
    10: ("DT_BOOL", np.bool_, "bool_val"),
    14: ("DT_BFLOAT16", _BF16, "half_val"),
    17: ("DT_UINT16", np.uint16, "int_val"),
    18: ("DT_COMPLEX128", np.complex128, "dcomplex_val"),
    19: ("DT_HALF", np.float16, "half_val"),
    22: ("DT_UINT32", np.uint32, "uint32_val"),
    23: ("DT_UINT64", np.uint64, "uint64_val"),
}
# v2 datatype -> (numpy type, InferTensorContents field)
_V2_TYPES: dict[str, tuple[Any, str | None]] = {
    "BOOL": (np.bool_, "bool_contents"),
    "INT8": (np.int8, "int_contents"),
    "INT16": (np.int16, "int_contents"),
    "INT32": (np.int32, "int_contents"),
    "INT64": (np.int64, "int64_contents"),
    "UINT8": (np.uint8, "uint_contents"),
    "UINT16": (np.uint16, "uint_contents"),
    "UINT32": (np.uint32, "uint_contents"),
    "UINT64": (np.uint64, "uint64_contents"),
    "FP16": (np.float16, None),
    "BF16": (_BF16, None),
    "FP32": (np.float32, "fp32_contents"),
    "FP64": (np.float64, "fp64_contents"),
    "BYTES": (object, "bytes_contents"),
}


def _bf16(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _from_raw(raw: bytes, kind: Any) -> np.ndarray:
    """Little-endian bytes as an array of `kind` (not strings)."""
    if kind is _BF16:
        return _bf16(np.frombuffer(raw, "<u2"))
    return np.frombuffer(raw, np.dtype(kind).newbyteorder("<"))


def _from_values(values: Any, kind: Any, field: str) -> np.ndarray:
    if kind is object:
        return np.array([bytes(v) for v in values], dtype=object)
    if field == "half_val":  # 16-bit patterns
        bits = np.array(values, dtype=np.uint16)
        return _bf16(bits) if kind is _BF16 else bits.view(kind)
    if kind in (np.complex64, np.complex128):  # (real, imaginary) pairs
        parts = np.array(values, dtype=np.float32 if kind is np.complex64 else np.float64)
        return parts.view(kind)
    return np.array(values, dtype=kind)


def _tf_tensor(proto: Any) -> Tensor:
    """A TensorProto as TensorFlow reads it (tensor.cc FromProto), without TensorFlow."""
    if proto.dtype not in _TF_TYPES:
        raise ValueError(f"dtype {proto.dtype} is not supported")
    name, kind, field = _TF_TYPES[proto.dtype]
    shape = [d.size for d in proto.tensor_shape.dim]
    if proto.tensor_shape.unknown_rank or any(d < 0 for d in shape):
        raise ValueError("a tensor without a known shape")
    count = math.prod(shape)
    if proto.tensor_content:  # ValueError for strings (TF's varint-prefixed encoding)
        return _from_raw(proto.tensor_content, kind).reshape(shape), name
    flat = _from_values(getattr(proto, field), kind, field)
    if flat.size > count:
        raise ValueError(f"{flat.size} values for shape {shape}")
    if flat.size < count:  # TF: the last value fills the rest (none: zeros, empty strings)
        fill = flat[-1] if flat.size else (b"" if kind is object else 0)
        flat = np.concatenate([flat, np.full(count - flat.size, fill, dtype=flat.dtype)])
    return flat.reshape(shape), name


@functools.cache
def _predict_response() -> Any:
    if "tensorflow_serving.apis.predict_pb2" not in sys.modules:
        from core import protos

        protos.load()  # TF Serving's protos without TensorFlow's runtime (a router's case)
    from tensorflow_serving.apis import predict_pb2

    return predict_pb2.PredictResponse


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _leaf_bytes(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    if _is_b64(value):
        return binascii.a2b_base64(value["b64"])
    raise ValueError(f"a {type(value).__name__} among strings")


_to_bytes = np.frompyfunc(_leaf_bytes, 1, 1)


def _json_tensor(value: Any) -> Tensor:
    """A JSON value as an array: numbers, bools, or strings ({"b64": ...} decoded) as bytes."""
    array = np.asarray(value)  # ValueError for ragged nesting
    if array.size == 0:
        return array, ""
    if array.dtype.kind == "b":
        return array, "bool"
    if array.dtype.kind in "iuf":
        return array, "number"
    return np.asarray(_to_bytes(array), dtype=object), "string"


def _rest_predict(body: bytes) -> dict[str, Tensor]:
    doc = json.loads(body)
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    if isinstance(doc.get("predictions"), list):
        rows = doc["predictions"]
        if rows and isinstance(rows[0], dict) and not _is_b64(rows[0]):
            names = rows[0].keys()
            if not all(isinstance(row, dict) and row.keys() == names for row in rows):
                raise ValueError("rows with different outputs")
            return {name: _json_tensor([row[name] for row in rows]) for name in names}
        return {"predictions": _json_tensor(rows)}
    if "outputs" in doc:
        outputs = doc["outputs"]
        if isinstance(outputs, dict) and not _is_b64(outputs):
            return {name: _json_tensor(value) for name, value in outputs.items()}
        return {"outputs": _json_tensor(outputs)}
    raise ValueError("neither 'predictions' nor 'outputs'")


def _v2_raw(raw: bytes, datatype: str, shape: list[int]) -> np.ndarray:
    if datatype != "BYTES":
        return _from_raw(raw, _V2_TYPES[datatype][0]).reshape(shape)
    items, offset = [], 0
    while offset < len(raw):  # each element: a 4-byte little-endian length, the bytes
        (size,) = struct.unpack_from("<I", raw, offset)
        if offset + 4 + size > len(raw):
            raise ValueError("a BYTES element is cut short")
        items.append(raw[offset + 4 : offset + 4 + size])
        offset += 4 + size
    return np.array(items, dtype=object).reshape(shape)


def _v2_rest(payload: bytes) -> dict[str, Tensor]:
    head, binary = payload, b""
    if payload[:1] != b"{":
        (length,) = V2_HEADER_LENGTH.unpack_from(payload)
        body = payload[V2_HEADER_LENGTH.size :]
        if length != V2_NO_BINARY and not 0 <= length <= len(body):
            raise ValueError(f"a JSON header length of {length} in {len(body)} bytes")
        head, binary = (body, b"") if length == V2_NO_BINARY else (body[:length], body[length:])
    outputs, offset, out = json.loads(head)["outputs"], 0, {}
    for item in outputs:
        name, datatype, shape = item["name"], item["datatype"], list(item["shape"])
        if datatype not in _V2_TYPES:
            raise ValueError(f"datatype {datatype!r}")
        size = (item.get("parameters") or {}).get("binary_data_size")
        if size is None:
            values = _json_tensor(item["data"])[0]
        elif not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise ValueError(f"output '{name}': binary_data_size {size} past the binary data")
        else:
            values, offset = _v2_raw(binary[offset : offset + size], datatype, shape), offset + size
        out[name] = (values.reshape(shape), datatype)
    return out


def _v2_grpc(payload: bytes) -> dict[str, Tensor]:
    response = ModelInferResponse.FromString(payload)
    raw = response.raw_output_contents
    if raw and len(raw) != len(response.outputs):
        raise ValueError(f"{len(raw)} raw_output_contents for {len(response.outputs)} outputs")
    out = {}
    for index, tensor in enumerate(response.outputs):
        shape, datatype = list(tensor.shape), tensor.datatype
        if datatype not in _V2_TYPES:
            raise ValueError(f"datatype {datatype!r}")
        kind, field = _V2_TYPES[datatype]
        if raw:
            values = _v2_raw(raw[index], datatype, shape)
        elif field is not None:
            values = _from_values(getattr(tensor.contents, field), kind, field)
        elif not math.prod(shape):  # FP16, BF16: in raw_output_contents only, or no elements
            values = np.zeros(shape, np.float32 if kind is _BF16 else kind)
        else:
            raise ValueError(f"output '{tensor.name}': {datatype} without raw_output_contents")
        out[tensor.name] = (values.reshape(shape), datatype)
    return out


def _decode(method: str, payload: bytes) -> dict[str, Tensor]:
    if method == "predict":
        return _rest_predict(payload)
    if method == "Predict":
        response = _predict_response().FromString(payload)
        return {name: _tf_tensor(proto) for name, proto in response.outputs.items()}
    if method == "v2_infer":
        return _v2_rest(payload)
    return _v2_grpc(payload)


def _read(method: str, payload: bytes, side: str) -> dict[str, Tensor] | str:
    """The answer's outputs, or the hard failure that says why they cannot be read."""
    try:
        return _decode(method, payload)
    except Exception as exc:  # noqa: BLE001 - any unreadable answer, never the event loop's
        return f"the {side}'s answer could not be read as {method}: {type(exc).__name__}: {exc}"


def _class_scores(values: np.ndarray) -> np.ndarray | None:
    """The rows of `values` when they look like class scores, else None."""
    if values.dtype.kind != "f" or values.ndim < 2 or values.shape[-1] < 2 or not values.size:
        return None
    rows = values.reshape(-1, values.shape[-1]).astype(np.float64)
    if not (np.all(rows >= -1e-6) and np.all(rows <= 1 + 1e-6)):  # NaN fails both
        return None
    return rows if np.all(np.abs(rows.sum(axis=1) - 1.0) <= 1e-3) else None


def _diff(name: str, base: Tensor, cand: Tensor) -> OutputDiff | str:
    (b, b_type), (c, c_type) = base, cand
    if b.shape != c.shape:
        shapes = f"{list(c.shape)} in the candidate, {list(b.shape)} in the baseline"
        return f"shape of output '{name}' is {shapes}"
    if b_type != c_type and b_type and c_type:
        return f"type of output '{name}' is {c_type} in the candidate, {b_type} in the baseline"
    if not b.size:
        return OutputDiff(0.0, 0.0)
    if b.dtype == object or c.dtype == object:
        share = float(np.mean(np.not_equal(b, c)))
        return OutputDiff(share, 1.0 if share else 0.0)
    wide = np.complex128 if "c" in (b.dtype.kind + c.dtype.kind) else np.float64
    bw, cw = b.astype(wide), c.astype(wide)
    if c.dtype.kind in "fc" or b.dtype.kind in "fc":
        finite = np.isfinite(bw)
        if np.any(finite & ~np.isfinite(cw)):
            return f"output '{name}' holds NaN or Inf in the candidate where the baseline's doesn't"
        if not finite.all():
            bw, cw = bw[finite], cw[finite]
    with np.errstate(over="ignore"):  # finite values far apart: an infinite difference
        delta = np.abs(cw - bw)
    mean = float(delta.mean()) if delta.size else 0.0
    top1 = js = None
    base_rows, cand_rows = _class_scores(b), _class_scores(c)
    if base_rows is not None and cand_rows is not None:
        top1 = float(np.mean(base_rows.argmax(axis=1) == cand_rows.argmax(axis=1)))
        p, q = np.clip(base_rows, 1e-12, None), np.clip(cand_rows, 1e-12, None)
        m = (p + q) / 2
        per_row = 0.5 * (p * np.log(p / m)).sum(axis=1) + 0.5 * (q * np.log(q / m)).sum(axis=1)
        js = float(np.clip(per_row, 0.0, LN2).mean())
    return OutputDiff(mean, float(delta.max()) if delta.size else 0.0, top1, js)


def compare_answers(method: str, baseline: bytes, candidate: bytes) -> Comparison:
    """How the candidate's answer differs from the baseline's, output by output (rules above)."""
    if method not in SHADOWED_METHODS:
        raise ValueError(f"{method!r} is not a shadowed method ({sorted(SHADOWED_METHODS)})")
    base = _read(method, baseline, "baseline")
    if isinstance(base, str):
        return Comparison(hard_failure=base)
    if baseline == candidate:
        return Comparison(
            {
                name: OutputDiff(0.0, 0.0, *((1.0, 0.0) if _class_scores(b) is not None else ()))
                for name, (b, _) in base.items()
            }
        )
    cand = _read(method, candidate, "candidate")
    if isinstance(cand, str):
        return Comparison(hard_failure=cand)
    missing, extra = base.keys() - cand.keys(), cand.keys() - base.keys()
    failures = [
        f"the candidate's answer {what} output(s) {', '.join(sorted(names))}"
        for what, names in (("lacks", missing), ("has extra", extra))
        if names
    ]
    outputs = {}
    for name in sorted(base.keys() & cand.keys()):
        diff = _diff(name, base[name], cand[name])
        if isinstance(diff, str):
            failures.append(diff)
        else:
            outputs[name] = diff
    if failures:
        return Comparison(hard_failure="; ".join(failures))
    return Comparison({name: outputs[name] for name in base if name in outputs})
