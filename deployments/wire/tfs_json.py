"""JSON <-> tensor codec of TF Serving's REST API (tensorflow_serving/util/json_tensor.cc).

Contract:
* `parse_body` accepts exactly what RapidJSON 1.1.0 accepts with kParseIterativeFlag |
  kParseNanAndInfFlag | kParseStopWhenDoneFlag (NaN/Inf/Infinity tokens, trailing bytes ignored,
  UTF-8 not validated, NUL = end of input) and reports its errors as
  `JSON Parse error: <RapidJSON message> at offset: <byte offset>`. The RapidJSON emulation (parser,
  number formatting, debug strings) lives in deployments.wire.json_parser (parser) and
  deployments.wire.json_writer.
* JSON values are Python values: object -> dict, array -> list, string -> str (bytes that are not
  UTF-8 kept through 'surrogateescape'), integer literal -> int, decimal literal -> float,
  true/false -> bool, null -> None. An int outside [-2**63, 2**64) counts as a double, as RapidJSON
  stores it; one past DBL_MAX, which no Python float holds, is the finite double RapidJSON's digit
  loop leaves.
* Every error is an AspireError carrying TF Serving's message and code; `<json>` in messages is TF's
  debug string (PrettyWriter, single-line arrays, cut once 256 bytes are written).
* Answers are written by deployments/wire/tfs_json_response.py.

Known differences from TF Serving: decimal literals are rounded correctly (RapidJSON's default
strtod can be one ulp off for 16+ significant digits, which float32 inputs never show); a key
repeated in one object keeps its last value (RapidJSON uses the first and prints both); where TF
walks a protobuf Map of several inputs, names go in sorted order; invalid UTF-8 inside error
messages becomes U+FFFD; a name from the request (input alias, feature or signature name) longer
than 256 bytes is cut to 256 bytes and "..." in error messages; a tf.Example feature name that is
not UTF-8 is refused (INVALID_ARGUMENT: Python's protobuf maps take UTF-8 keys only).
"""

from __future__ import annotations

import binascii
import re
from itertools import chain
from typing import NamedTuple

import numpy as np

from core.errors import AspireError, invalid_argument, unimplemented
from deployments.wire.json_parser import _parse_value, _rj_parse  # noqa: F401 (re-exported)
from deployments.wire.json_writer import debug_string

_INT_RANGES = {
    "DT_INT32": (-(2**31), 2**31),
    "DT_INT16": (-(2**31), 2**31),
    "DT_INT8": (-(2**31), 2**31),
    "DT_UINT8": (-(2**31), 2**31),
    "DT_INT64": (-(2**63), 2**63),
    "DT_UINT32": (0, 2**32),
    "DT_UINT64": (0, 2**64),
}
NUMPY_TYPES = {
    "DT_FLOAT": np.float32,
    "DT_DOUBLE": np.float64,
    "DT_INT32": np.int32,
    "DT_INT16": np.int16,
    "DT_INT8": np.int8,
    "DT_UINT8": np.uint8,
    "DT_INT64": np.int64,
    "DT_UINT32": np.uint32,
    "DT_UINT64": np.uint64,
    "DT_BOOL": np.bool_,
    "DT_STRING": np.object_,
}
_NP_OTHER = {
    "DT_HALF": np.float16,
    "DT_COMPLEX64": np.complex64,
    "DT_COMPLEX128": np.complex128,
    "DT_UINT16": np.uint16,
}


class TensorSpec(NamedTuple):
    dtype: str  # TF dtype enum name, e.g. 'DT_FLOAT'
    shape: tuple | None  # dims with -1 for unknown, None for unknown rank


def tf_type_name(dtype: str) -> str:  # DataTypeString: DT_HALF -> half, DT_FLOAT_REF -> float_ref
    return dtype[3:].lower() if dtype.startswith("DT_") else dtype


_MAX_ECHO_BYTES = 256  # TF Serving's kMaxJsonDebugStringBytes


def _text(s: str) -> str:
    """A name from the request as an error message shows it: invalid UTF-8 as U+FFFD, and cut
    to 256 bytes with "..." appended, so that a long name cannot make a long error (TF Serving
    echoes names whole)."""
    raw = s.encode("utf-8", "surrogateescape")
    if len(raw) <= _MAX_ECHO_BYTES:
        return raw.decode("utf-8", "replace")
    end = _MAX_ECHO_BYTES
    for _ in range(3):  # back to the start of a character, never cutting one in two
        if (raw[end] & 0xC0) == 0x80:
            end -= 1
    return raw[:end].decode("utf-8", "replace") + "..."


def _jtype(v) -> str:  # JsonTypeString
    if v is None:
        return "Null"
    if v is True or v is False:
        return str(v)
    names: dict[type, str] = {dict: "Object", list: "Array", str: "String"}
    return names.get(type(v), "Number")


# -------------------------------------------------- parsing (RapidJSON emulation: json_parser)
def parse_body(body: bytes) -> dict:
    """Parse a REST body as TF Serving does (see module docstring); the top level must be an
    object."""
    body = bytes(body)
    if not body:
        raise invalid_argument("JSON Parse error: The document is empty")
    doc = _parse_value(body)
    if not isinstance(doc, dict):
        raise invalid_argument(f"JSON Value: {debug_string(doc)} Is not object")
    return doc


def signature_name_of(doc: dict) -> str:
    if "signature_name" not in doc:
        return ""
    name = doc["signature_name"]
    if not isinstance(name, str):
        raise invalid_argument(
            f"JSON Value: {debug_string(doc)} not formatted correctly. "
            "'signature_name' key must be a string value."
        )
    return name


# ---------------------------------------------------------------- predict request
_B64_CANONICAL = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_B64_LOOSE = re.compile(r"([A-Za-z0-9+/ \t\n\v\f\r]*)([=. \t\n\v\f\r]*)")
_B64_SPACE = re.compile(r"[ \t\n\v\f\r]")


def _absl_b64decode(s: str) -> bytes | None:
    """absl::Base64Unescape: whitespace skipped, padding optional but exact when present, '.' pads
    too."""
    if len(s) % 4 == 0 and _B64_CANONICAL.fullmatch(s):
        return binascii.a2b_base64(s)
    m = _B64_LOOSE.fullmatch(s)
    if not m:
        return None
    data = _B64_SPACE.sub("", m.group(1))
    pads = len(_B64_SPACE.sub("", m.group(2)))
    if len(data) % 4 == 1 or pads not in (0, -len(data) % 4):
        return None
    return binascii.a2b_base64(data + "=" * (-len(data) % 4))


def _is_b64(v) -> bool:
    return isinstance(v, dict) and len(v) == 1 and isinstance(v.get("b64"), str)


def _b64_value(v) -> bytes:
    if not _is_b64(v):
        raise invalid_argument(
            f"JSON Value: {debug_string(v)} not formatted correctly for base64 data"
        )
    out = _absl_b64decode(v["b64"])
    if out is None:
        raise invalid_argument("Unable to base64 decode")
    return out


def _type_error(v, dtype: str) -> AspireError:
    return invalid_argument(
        f"JSON Value: {debug_string(v)} Type: {_jtype(v)} is not of expected type: "
        f"{tf_type_name(dtype)}"
    )


def _leaf(v, dtype: str):  # AddValueToTensor (objects: only b64 strings)
    if isinstance(v, dict):
        if dtype != "DT_STRING":
            raise _type_error(v, dtype)
        return _b64_value(v)
    if dtype in ("DT_FLOAT", "DT_DOUBLE"):
        ok = type(v) in (int, float)
    elif dtype in _INT_RANGES:
        lo, hi = _INT_RANGES[dtype]
        ok = type(v) is int and lo <= v < hi
    elif dtype == "DT_STRING":
        if isinstance(v, str):
            return v.encode("utf-8", "surrogateescape")
        ok = False
    elif dtype == "DT_BOOL":
        ok = type(v) is bool
    else:
        raise unimplemented(
            f"Conversion of JSON Value: {debug_string(v)} to type: {tf_type_name(dtype)}"
        )
    if not ok:
        raise _type_error(v, dtype)
    return v


def _shape_of(v) -> list[int]:  # GetDenseTensorShape: follows element [0]
    dims = []
    while isinstance(v, list):
        dims.append(len(v))
        if not v:
            break
        v = v[0]
    return dims


def _fill(val, dims: list[int], dtype: str) -> list:
    """FillTensorProto from level 0, depth-first, first error wins; returns the leaf values."""
    rank, out, stack = len(dims), [], [(val, 0)]
    while stack:
        v, level = stack.pop()
        if not isinstance(v, list):
            if level != rank:
                raise invalid_argument(
                    f"JSON Value: {debug_string(v)} found at incorrect level: {level + 1} "
                    f"in the JSON DOM. Expected at level: {rank}"
                )
            out.append(_leaf(v, dtype))
        elif level >= rank:
            raise invalid_argument(
                f"Encountered list at unexpected level: {level} expected < {rank}"
            )
        elif len(v) != dims[level]:
            raise invalid_argument(
                f"Encountered list at unexpected size: {len(v)} at level: {level} "
                f"expected size: {dims[level]}"
            )
        else:
            stack.extend((x, level + 1) for x in reversed(v))
    return out


def _to_array(flat: list, dims: list[int], dtype: str) -> np.ndarray:
    if dtype == "DT_STRING":
        arr = np.empty(len(flat), dtype=object)
        arr[:] = flat
    elif dtype not in NUMPY_TYPES:  # only reachable without values
        return np.empty(dims, dtype=_NP_OTHER.get(dtype, np.float32))
    elif dtype == "DT_FLOAT":
        with np.errstate(over="ignore"):  # static_cast<float>(double): overflow -> inf
            arr = np.array(flat, dtype=np.float64).astype(np.float32)
    elif dtype in ("DT_INT32", "DT_INT16", "DT_INT8", "DT_UINT8"):
        # int_val is int32, narrowed by a C cast
        arr = np.array(flat, dtype=np.int64).astype(NUMPY_TYPES[dtype])
    else:
        arr = np.array(flat, dtype=NUMPY_TYPES[dtype])
    if len(dims) > 64:  # numpy's limit; TF would fail later on such a tensor anyway
        raise invalid_argument(f"Tensor rank {len(dims)} exceeds the supported maximum of 64")
    return arr.reshape(dims)


_FAST: dict[str, tuple[type, set[type]]] = {
    "DT_FLOAT": (np.float64, {int, float}),
    "DT_DOUBLE": (np.float64, {int, float}),
    "DT_INT64": (np.int64, {int}),
    "DT_UINT64": (np.uint64, {int}),
    "DT_BOOL": (np.bool_, {bool}),
}
_FAST.update(
    {k: (np.int64, {int}) for k in ("DT_INT32", "DT_INT16", "DT_INT8", "DT_UINT8", "DT_UINT32")}
)


def _fast_array(val, dims: list[int], dtype: str):
    """numpy conversion of a well-formed rectangular value, or None to take the exact walk."""
    if dtype not in _FAST or not dims:
        return None
    np_type, allowed = _FAST[dtype]
    try:
        arr: np.ndarray = np.array(val, dtype=np_type)
    except (ValueError, TypeError, OverflowError):
        return None
    if arr.shape != tuple(dims):
        return None
    flat = val
    for _ in range(len(dims) - 1):  # every inner level is a list once the shape matched
        flat = chain.from_iterable(flat)
    if not set(map(type, flat)) <= allowed:
        return None
    if dtype in _INT_RANGES and dtype not in ("DT_INT64", "DT_UINT64") and arr.size:
        lo, hi = _INT_RANGES[dtype]
        if arr.min() < lo or arr.max() >= hi:
            return None
    with np.errstate(over="ignore"):
        return arr.astype(NUMPY_TYPES[dtype], copy=False)


def _tensor(val, dtype: str) -> np.ndarray:
    dims = _shape_of(val)
    arr = _fast_array(val, dims, dtype)
    return arr if arr is not None else _to_array(_fill(val, dims, dtype), dims, dtype)


def _is_element_object(v) -> bool:
    return isinstance(v, dict) and not _is_b64(v)


def _add_item(item, name, inputs, sizes, shapes, values) -> None:  # AddInstanceItem
    if name not in inputs:
        raise invalid_argument(f"JSON object: does not have named input: {_text(name)}")
    dims = _shape_of(item)
    flat = _fill(item, dims, inputs[name].dtype)
    if name not in sizes:
        sizes[name], shapes[name], values[name] = len(flat), dims, flat
    elif sizes[name] != len(flat):
        raise invalid_argument(f"Expecting tensor size: {sizes[name]} but got: {len(flat)}")
    elif shapes[name] != dims:
        raise invalid_argument(
            f"Expecting shape [{','.join(map(str, shapes[name]))}] "
            f"but got: [{','.join(map(str, dims))}]"
        )
    else:
        values[name].extend(flat)


def _decode_rows(instances: list, inputs: dict) -> dict:
    names = sorted(inputs)
    if not isinstance(instances[0], dict) and len(inputs) > 1:
        raise invalid_argument(
            "instances is a plain list, but expecting list of objects as multiple input tensors "
            "required as per tensorinfo_map"
        )
    objects, n = _is_element_object(instances[0]), len(instances)
    if objects and all(_is_element_object(e) and e.keys() == inputs.keys() for e in instances):
        cols = {k: [e[k] for e in instances] for k in names}
        fast = {
            k: _fast_array(cols[k], [n] + _shape_of(cols[k][0]), inputs[k].dtype) for k in names
        }
        if all(a is not None for a in fast.values()):
            return fast
    elif not objects:
        arr = _fast_array(instances, [n] + _shape_of(instances[0]), inputs[names[0]].dtype)
        if arr is not None:
            return {names[0]: arr}
    sizes: dict[str, int] = {}
    shapes: dict[str, list[int]] = {}
    values: dict[str, list] = {}
    for i, elem in enumerate(instances):
        if objects:
            if not _is_element_object(elem):
                raise invalid_argument(f"Expecting object but got list at item {i} of input list")
            for key, item in elem.items():
                try:
                    _add_item(item, key, inputs, sizes, shapes, values)
                except AspireError as e:
                    raise invalid_argument(
                        f"Failed to process element: {i} key: {_text(key)} of 'instances' list. "
                        f"Error: {e.code}: {e.message}"
                    ) from None
            if set(elem) != set(names):
                raise invalid_argument(
                    f"Failed to process element: {i} of 'instances' list. JSON object: "
                    f"{debug_string(elem)} keys must be equal to: {','.join(names)}"
                )
        else:
            if _is_element_object(elem):
                raise invalid_argument(
                    f"Expecting value/list but got object at item {i} of input list"
                )
            try:
                _add_item(elem, names[0], inputs, sizes, shapes, values)
            except AspireError as e:
                raise invalid_argument(
                    f"Failed to process element: {i} of 'instances' list. "
                    f"Error: {e.code}: {e.message}"
                ) from None
    return {k: _to_array(values[k], [n] + shapes[k], inputs[k].dtype) for k in values}


def _decode_columns(val, inputs: dict) -> dict:
    if not isinstance(val, dict) or _is_b64(val):
        if len(inputs) > 1:
            raise invalid_argument(
                "inputs is a plain value/list, but expecting an object as multiple input tensors "
                "required as per tensorinfo_map"
            )
        name = next(iter(inputs))
        return {name: _tensor(val, inputs[name].dtype)}
    out = {}
    for name in sorted(inputs):
        if name not in val:
            raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
        out[name] = _tensor(val[name], inputs[name].dtype)
    return out


def decode_predict_request(
    doc: dict, inputs: dict[str, TensorSpec]
) -> tuple[dict[str, np.ndarray], str]:
    """FillPredictRequestFromJson from the instances/inputs step on:
    ({alias: ndarray}, 'row' | 'columnar')."""
    if not inputs:
        raise invalid_argument(
            f"Failed to get input map for signature: {signature_name_of(doc) or 'DEFAULT'}"
        )
    if "instances" in doc:
        if "inputs" in doc:
            raise invalid_argument(
                f"JSON Value: {debug_string(doc)} Not formatted correctly expecting only one of "
                "'inputs' or 'instances' keys to exist "
            )
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise invalid_argument(
                f"JSON Value: {debug_string(doc)} Expecting 'instances' to be an list/array"
            )
        if not instances:
            raise invalid_argument(
                f"JSON Value: {debug_string(doc)} No values in 'instances' array"
            )
        return _decode_rows(instances, inputs), "row"
    if "inputs" in doc:
        return _decode_columns(doc["inputs"], inputs), "columnar"
    raise invalid_argument("Missing 'inputs' or 'instances' key")


# ---------------------------------------------------------------- classify / regress request
def _feature_values(name: str, content) -> tuple[str | None, list[bytes | float | int]]:
    """AddValueToFeature over a scalar or list."""
    kind: str | None = None
    out: list[bytes | float | int] = []
    for v in content if isinstance(content, list) else [content]:
        if v is None or isinstance(v, list) or (isinstance(v, dict) and not _is_b64(v)):
            raise invalid_argument(
                f"Feature: {_text(name)} has element with unexpected JSON type: {_jtype(v)}"
            )
        if isinstance(v, (dict, str)):
            want = "bytes"
        elif type(v) is float or not (v is True or v is False or -(2**63) <= v < 2**64):
            want = "float"
        else:
            want = "int64"
        if kind not in (None, want):
            raise invalid_argument(
                f"Unexpected element type in feature: {_text(name)} expecting type: {kind}"
            )
        kind = want
        if isinstance(v, dict):
            out.append(_b64_value(v))
        elif isinstance(v, str):
            out.append(v.encode("utf-8", "surrogateescape"))
        elif want == "float":
            out.append(float(v))
        elif v >= 2**63:
            raise invalid_argument(
                f"Feature: {_text(name)} has uint64_t element. Only int64_t is supported."
            )
        else:
            out.append(int(v))
    return kind, out


def _make_example(obj, example_pb2) -> bytes:
    if not isinstance(obj, dict):
        raise invalid_argument(f"Example must be JSON object but got JSON {_jtype(obj)}")
    example = example_pb2.Example()
    for name, content in obj.items():
        kind, vals = _feature_values(name, content)
        try:  # an empty list still creates the (kind-less) feature
            feature = example.features.feature[name]
        except UnicodeEncodeError:  # a protobuf map key is UTF-8 (TF's C++ takes any bytes)
            raise invalid_argument(f"Feature: {_text(name)} has a name that is not UTF-8") from None
        if kind == "float":
            with np.errstate(over="ignore"):
                feature.float_list.value.extend(
                    np.array(vals, dtype=np.float64).astype(np.float32).tolist()
                )
        elif kind == "int64":
            feature.int64_list.value.extend(vals)
        elif kind == "bytes":
            feature.bytes_list.value.extend(vals)
    return example.SerializeToString(deterministic=True)


def decode_examples(doc: dict) -> tuple[list[bytes], bytes | None]:
    """FillClassifyRegressRequestFromJson: (serialized Examples, serialized context Example or
    None)."""
    from tensorflow.core.example import example_pb2

    context = _make_example(doc["context"], example_pb2) if "context" in doc else None
    if "examples" not in doc:
        raise invalid_argument(
            f"JSON Value: {debug_string(doc)} When method is classify, key 'examples' is expected "
            "and was not found"
        )
    examples = doc["examples"]
    if not isinstance(examples, list):
        raise invalid_argument(
            f"JSON Value: {debug_string(doc)} Expecting 'examples' value to be an list/array"
        )
    if not examples:
        raise invalid_argument(
            f"JSON Value: {debug_string(doc)} 'examples' value is an empty array"
        )
    return [_make_example(e, example_pb2) for e in examples], context
