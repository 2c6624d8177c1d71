"""Answers of TF Serving's REST API as JSON text (tensorflow_serving/util/json_tensor.cc's
writers): predict responses in the row or columnar format of their request, classify and
regress results.

Contract: floats are formatted as RapidJSON's WriteDecimal does (float32 with six significant
digits where that round-trips, as TF Serving prints them); ints, bools and strings as RapidJSON
writes them; output is compact JSON. A DT_STRING element that is not valid UTF-8 is written as
{"b64": ...} so the body stays valid JSON. Requests are read by deployments/wire/tfs_json.py.
"""

from __future__ import annotations

import binascii
import json
import math
from fractions import Fraction

import numpy as np

from core.errors import invalid_argument
from deployments.wire.tfs_json import NUMPY_TYPES, tf_type_name

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
    for name, t in NUMPY_TYPES.items():
        if arr.dtype == t:
            return name
    return "DT_" + arr.dtype.name.upper()


def _tokens(arr: np.ndarray, dtype: str, as_b64: bool) -> list[str]:
    flat = arr.reshape(-1)
    if dtype in ("DT_FLOAT", "DT_DOUBLE"):
        return _decimal_tokens(flat.astype(NUMPY_TYPES[dtype], copy=False))
    if dtype == "DT_BOOL":
        return np.where(flat.astype(bool), "true", "false").tolist()
    if dtype == "DT_STRING":
        return [_string_token(x, as_b64) for x in flat.tolist()]
    return list(map(str, flat.astype(NUMPY_TYPES[dtype], copy=False).tolist()))


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
        if dtype not in NUMPY_TYPES and arr.size:
            raise invalid_argument(
                f"Failed to write JSON value for tensor type: {tf_type_name(dtype)}"
            )
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
