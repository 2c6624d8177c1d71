"""JSON <-> tensor codec of TF Serving's REST API (tensorflow_serving/util/json_tensor.cc).

Contract:
* `parse_body` accepts exactly what RapidJSON 1.1.0 accepts with kParseIterativeFlag |
  kParseNanAndInfFlag | kParseStopWhenDoneFlag (NaN/Inf/Infinity tokens, trailing bytes ignored,
  UTF-8 not validated, NUL = end of input) and reports its errors as
  `JSON Parse error: <RapidJSON message> at offset: <byte offset>`. The RapidJSON emulation (parser,
  number formatting, debug strings) lives in deployments.rapidjson_compat.
* JSON values are Python values: object -> dict, array -> list, string -> str (bytes that are not
  UTF-8 kept through 'surrogateescape'), integer literal -> int, decimal literal -> float,
  true/false -> bool, null -> None. An int outside [-2**63, 2**64) counts as a double, as RapidJSON
  stores it; one past DBL_MAX, which no Python float holds, is the finite double RapidJSON's digit
  loop leaves.
* Every error is an AspireError carrying TF Serving's message and code; `<json>` in messages is TF's
  debug string (PrettyWriter, single-line arrays, cut once 256 bytes are written).
* Predict responses format floats as WriteDecimal does; ints, bools and strings as RapidJSON writes
  them. Output is compact JSON. A DT_STRING element that is not valid UTF-8 is written as
  {"b64": ...} so the body stays valid JSON.

Known differences from TF Serving: decimal literals are rounded correctly (RapidJSON's default
strtod can be one ulp off for 16+ significant digits, which float32 inputs never show); a key
repeated in one object keeps its last value (RapidJSON uses the first and prints both); where TF
walks a protobuf Map of several inputs, names go in sorted order; invalid UTF-8 inside error
messages becomes U+FFFD; a name from the request (input alias, feature or signature name) longer
than 256 bytes is cut to 256 bytes and "..." in error messages.
"""

from __future__ import annotations

import binascii
import json
import math
import re
from fractions import Fraction
from itertools import chain
from typing import NamedTuple

import numpy as np

from core.errors import AspireError, invalid_argument, unimplemented
from deployments.rapidjson_compat import _parse_value, _rj_parse, debug_string  # noqa: F401 (re-exported)

_INT_RANGES = {
    "DT_INT32": (-(2**31), 2**31),
    "DT_INT16": (-(2**31), 2**31),
    "DT_INT8": (-(2**31), 2**31),
    "DT_UINT8": (-(2**31), 2**31),
    "DT_INT64": (-(2**63), 2**63),
    "DT_UINT32": (0, 2**32),
    "DT_UINT64": (0, 2**64),
}
_NP = {
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


def _tf_name(dtype: str) -> str:  # DataTypeString: DT_HALF -> half, DT_FLOAT_REF -> float_ref
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
    return {dict: "Object", list: "Array", str: "String"}.get(type(v), "Number")


# -------------------------------------------------- parsing (RapidJSON emulation: rapidjson_compat)
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
        f"{_tf_name(dtype)}"
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
            f"Conversion of JSON Value: {debug_string(v)} to type: {_tf_name(dtype)}"
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
    elif dtype not in _NP:  # only reachable without values
        return np.empty(dims, dtype=_NP_OTHER.get(dtype, np.float32))
    elif dtype == "DT_FLOAT":
        with np.errstate(over="ignore"):  # static_cast<float>(double): overflow -> inf
            arr = np.array(flat, dtype=np.float64).astype(np.float32)
    elif dtype in (
        "DT_INT32",
        "DT_INT16",
        "DT_INT8",
        "DT_UINT8",
    ):  # int_val is int32, narrowed by a C cast
        arr = np.array(flat, dtype=np.int64).astype(_NP[dtype])
    else:
        arr = np.array(flat, dtype=_NP[dtype])
    if len(dims) > 64:  # numpy's limit; TF would fail later on such a tensor anyway
        raise invalid_argument(f"Tensor rank {len(dims)} exceeds the supported maximum of 64")
    return arr.reshape(dims)


_FAST = {
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
        arr = np.array(val, dtype=np_type)
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
        return arr.astype(_NP[dtype], copy=False)


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
    sizes, shapes, values = {}, {}, {}
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


# ---------------------------------------------------------------- responses
_POW10 = np.array([float(10**k) for k in range(23)])


def _f32_from_decimal(s: str) -> float:
    """Correctly rounded decimal -> float32 (absl::SimpleAtof); only an exact float32 midpoint needs
    care."""
    d = float(s)
    f = float(np.float32(d))
    if f == d or not math.isfinite(f):
        return f
    g = float(np.nextafter(np.float32(f), np.float32(math.copysign(math.inf, d - f))))
    if d != (f + g) / 2 or Fraction(s) == Fraction(d):
        return f
    return max(f, g) if Fraction(s) > Fraction(d) else min(f, g)


def _six_digits_round_trip(v: np.ndarray, f32: bool) -> np.ndarray:
    """For finite v: does absl::StrCat's '%g' text parse back to the same float/double? Vectorised
    with exact powers of ten; magnitudes beyond them and float32 double-rounding ties are settled
    one by one."""
    rt = np.ones(v.shape, dtype=bool)
    nz = np.flatnonzero(v)
    if not nz.size:
        return rt
    a = np.abs(v[nz])
    with np.errstate(all="ignore"):
        x = np.floor(np.log10(a)).astype(np.int64)
        for _ in range(2):  # log10 can be one off next to a power of ten
            k = 5 - x
            exact = np.abs(k) <= 22
            p = _POW10[np.where(exact, np.abs(k), 0)]
            up = k >= 0
            scaled = np.where(up, a * p, a / p)
            x = x + (scaled >= 1e6) - (scaled < 1e5)
        q = np.rint(scaled)
        cand = np.where(up, q / p, q * p)  # one rounding: the double nearest the 6-digit decimal
        if f32:
            c32 = cand.astype(np.float32)
            back = c32.astype(np.float64)
            good = back == a
            other = np.nextafter(
                c32, np.where(cand > back, np.float32(np.inf), np.float32(-np.inf))
            )
            unsure = ~exact | ((cand != back) & ((back + other.astype(np.float64)) * 0.5 == cand))
        else:
            good, unsure = cand == a, ~exact
    for j in np.flatnonzero(unsure).tolist():
        s = "%g" % a[j]
        good[j] = (_f32_from_decimal(s) if f32 else float(s)) == a[j]
    rt[nz] = good
    return rt


_FORMATS = {
    True: np.array(
        ["%g", "%g.0", "%.9g", "%.9g.0", "NaN%.0s", "Infinity%.0s", "-Infinity%.0s"], object
    ),
    False: np.array(
        ["%g", "%g.0", "%.17g", "%.17g.0", "NaN%.0s", "Infinity%.0s", "-Infinity%.0s"], object
    ),
}


def _decimal_tokens(values: np.ndarray) -> list[str]:
    """WriteDecimal for every element: '%g' if it round-trips, else '%.9g' / '%.17g'; '.0' appended
    when the text has neither '.' nor 'e' (exactly the integral values below 10**precision);
    NaN/Infinity/-Infinity bare."""
    f32 = values.dtype == np.float32
    with np.errstate(all="ignore"):
        v = values.astype(np.float64).ravel()
        finite = np.isfinite(v)
        vf = np.where(finite, v, 0.0)
        rt = _six_digits_round_trip(vf, f32)
        integral = vf == np.floor(vf)
        limit = np.where(rt, 1e6, 1e9 if f32 else 1e17)
        codes = np.where(rt, 0, 2) + (integral & (np.abs(vf) < limit))
        codes[np.isnan(v)] = 4
        codes[v == np.inf] = 5
        codes[v == -np.inf] = 6
    return list(map(str.__mod__, _FORMATS[bool(f32)][codes].tolist(), v.tolist()))


_encode_str = json.encoder.encode_basestring


def _string_token(x, as_b64: bool) -> str:
    raw = x if isinstance(x, bytes) else str(x).encode("utf-8", "surrogateescape")
    if not as_b64:
        try:
            return _encode_str(raw.decode("utf-8"))
        except UnicodeDecodeError:
            pass
    return '{"b64":"' + binascii.b2a_base64(raw, newline=False).decode("ascii") + '"}'


def _infer_dtype(arr: np.ndarray) -> str:
    if arr.dtype.kind in "OSU":
        return "DT_STRING"
    if arr.dtype == np.float16:
        return "DT_HALF"
    for name, t in _NP.items():
        if arr.dtype == t:
            return name
    return "DT_" + arr.dtype.name.upper()


def _tokens(arr: np.ndarray, dtype: str, as_b64: bool) -> list[str]:
    flat = arr.reshape(-1)
    if dtype in ("DT_FLOAT", "DT_DOUBLE"):
        return _decimal_tokens(flat.astype(_NP[dtype], copy=False))
    if dtype == "DT_BOOL":
        return np.where(flat.astype(bool), "true", "false").tolist()
    if dtype == "DT_STRING":
        return [_string_token(x, as_b64) for x in flat.tolist()]
    return list(map(str, flat.astype(_NP[dtype], copy=False).tolist()))


def _nest(tokens: list[str], dims: tuple, keep: int) -> list[str]:
    """Folds dims[keep:] into JSON arrays, leaving prod(dims[:keep]) strings."""
    for level in range(len(dims) - 1, keep - 1, -1):
        size, groups = dims[level], math.prod(dims[:level])
        if size == 0:
            tokens = ["[]"] * groups
        else:
            tokens = [
                "[" + ",".join(tokens[g * size : (g + 1) * size]) + "]" for g in range(groups)
            ]
    return tokens


def encode_predict_response(
    outputs: dict[str, np.ndarray], fmt: str, dtypes: dict[str, str] | None = None
) -> str:
    """MakeJsonFromTensors: 'row' -> {"predictions": ...}, 'columnar' -> {"outputs": ...}."""
    if not outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    if fmt not in ("row", "columnar"):
        raise invalid_argument("Invalid request format")
    items = []
    for name, value in outputs.items():
        arr = np.asarray(value)
        items.append((name, arr, (dtypes or {}).get(name) or _infer_dtype(arr)))
    if fmt == "row":
        batch = -1
        for name, arr, _ in items:
            if arr.ndim == 0:
                raise invalid_argument(f"Tensor name: {name} has no shape information ")
            if batch >= 0 and arr.shape[0] != batch:
                raise invalid_argument(
                    f"Tensor name: {name} has inconsistent batch size: {arr.shape[0]} "
                    f"expecting: {batch}"
                )
            batch = arr.shape[0]
    # TF fails on the first value it cannot write; empty tensors write none
    for _name, arr, dtype in items:
        if dtype not in _NP and arr.size:
            raise invalid_argument(f"Failed to write JSON value for tensor type: {_tf_name(dtype)}")
    keep = 1 if fmt == "row" else 0
    parts = {
        name: _nest(
            _tokens(arr, dtype, dtype == "DT_STRING" and name.endswith("_bytes"))
            if arr.size
            else [],
            arr.shape,
            keep,
        )
        for name, arr, dtype in items
    }
    keys = {name: _encode_str(name) for name in parts}
    if fmt == "columnar":
        if len(parts) == 1:
            return '{"outputs":' + next(iter(parts.values()))[0] + "}"
        return '{"outputs":{' + ",".join(f"{keys[k]}:{v[0]}" for k, v in parts.items()) + "}}"
    if len(parts) == 1:
        rows = next(iter(parts.values()))
    else:
        rows = [
            "{" + ",".join(f"{keys[k]}:{v[r]}" for k, v in parts.items()) + "}"
            for r in range(batch)
        ]
    return '{"predictions":[' + ",".join(rows) + "]}"


def encode_classify_response(results: list[list[tuple[str, float]]]) -> str:
    """MakeJsonFromClassificationResult: {"results": [[["label", score], ...], ...]}
    (scores are float32)."""
    if not results:
        raise invalid_argument("Cannot convert empty ClassificationResults to JSON")
    rows = []
    for classes in results:
        scores = _decimal_tokens(np.array([s for _, s in classes], dtype=np.float32))
        rows.append(
            "["
            + ",".join(
                f"[{_string_token(label, False)},{score}]"
                for (label, _), score in zip(classes, scores, strict=True)
            )
            + "]"
        )
    return '{"results":[' + ",".join(rows) + "]}"


def encode_regress_response(values: list[float]) -> str:
    """MakeJsonFromRegressionResult: {"results": [v, ...]} (values are float32)."""
    if not len(values):
        raise invalid_argument("Cannot convert empty RegressionResults to JSON")
    return '{"results":[' + ",".join(_decimal_tokens(np.array(values, dtype=np.float32))) + "]}"


# ---------------------------------------------------------------- classify / regress request
def _feature_values(
    name: str, content
) -> tuple[str | None, list]:  # AddValueToFeature over a scalar or list
    kind, out = None, []
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
        feature = example.features.feature[
            name
        ]  # an empty list still creates the (kind-less) feature
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
