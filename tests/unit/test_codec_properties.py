"""Property tests (hypothesis) of the REST JSON <-> tensor codec: deployments.wire.tfs_json and its
RapidJSON port.

Contract under test:
1. Request round trip. A tensor a client encodes as TF Serving's REST API documents ("instances"
   rows with a batch >= 1; "inputs" columns with any batch, 0 and rank 0 included; NaN/+-Infinity as
   bare tokens; DT_STRING as JSON strings or {"b64": ...}, padded or not) decodes through parse_body
   and decode_predict_request to the same array: same dtype, same bits (NaN == NaN, -0.0 kept), and
   the shape the nesting shows. GetDenseTensorShape follows element [0] and stops at an empty list,
   so [[], []] is shape (2, 0) whatever (2, 0, 3) it came from.
2. Response round trip. encode_predict_response's text parses back (json.loads reads TF's
   NaN/Infinity tokens) to the same values: floats written as WriteDecimal does ('%g' if it
   round-trips, else '%.9g' / '%.17g', '.0' on bare integers, so no float reads back as a JSON
   integer) and bit-exact; ints and bools as such; strings raw, or {"b64": ...} for "_bytes" aliases
   and bytes that are not UTF-8.
3. Hostile bodies (random bytes; valid bodies with hostile tokens or bytes spliced in; ragged,
   mixed, null, object or huge-number values put into valid tensors; random JSON documents;
   duplicate keys, invalid UTF-8, NUL; nesting around MAX_JSON_DEPTH) raise nothing but
   AspireError(INVALID_ARGUMENT), from the parser, both decoders and inference's REST entry points.
   The message is valid UTF-8, holds no traceback or source path, and is bounded: TF Serving's
   JsonWriterWithLimit stops echoing JSON once 256 bytes are written but writes the token in
   progress whole, and a key may be echoed twice, so the bound is 4 KiB plus twice the longest
   string token of the body.
4. Budget: 10,000 examples in all, derandomized and with no example database, so CI runs are
   reproducible; each property prints its example count and time, and the module the totals.
"""

from __future__ import annotations

import base64
import copy
import json
import math
import time
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from core.errors import AspireError
from deployments.replica import inference
from deployments.replica.loader import LoadedSavedModel
from deployments.wire.json_parser import MAX_JSON_DEPTH
from deployments.wire.tfs_json import (
    TensorSpec,
    debug_string,
    decode_predict_request,
    parse_body,
    signature_name_of,
)
from deployments.wire.tfs_json_response import encode_predict_response

RUNS: dict[str, int] = {}
_CURRENT: list[str] = [""]
_MAX_MESSAGE: list[int] = [0]


def budget(examples: int):
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


def tick() -> None:
    RUNS[_CURRENT[0]] = RUNS.get(_CURRENT[0], 0) + 1


@pytest.fixture(scope="module", autouse=True)
def _module_total():
    started, cpu = time.perf_counter(), time.process_time()
    yield
    print(
        f"\ncodec properties: {sum(RUNS.values())} examples in "
        f"{time.perf_counter() - started:.1f} s ({time.process_time() - cpu:.1f} s CPU); "
        f"longest hostile-body error message {_MAX_MESSAGE[0]} bytes"
    )


@pytest.fixture(autouse=True)
def _per_property(request):
    _CURRENT[0] = request.node.name
    started, cpu = time.perf_counter(), time.process_time()
    yield
    print(
        f"\n{request.node.name}: {RUNS.get(request.node.name, 0)} examples in "
        f"{time.perf_counter() - started:.1f} s ({time.process_time() - cpu:.1f} s CPU)"
    )


# ------------------------------------------------------------------------------------ valid tensors
_INT_RANGES = {
    "DT_INT8": (-(2**7), 2**7 - 1),
    "DT_INT16": (-(2**15), 2**15 - 1),
    "DT_INT32": (-(2**31), 2**31 - 1),
    "DT_INT64": (-(2**63), 2**63 - 1),
    "DT_UINT8": (0, 2**8 - 1),
    "DT_UINT32": (0, 2**32 - 1),
    "DT_UINT64": (0, 2**64 - 1),
}
_NP = {
    "DT_FLOAT": np.float32,
    "DT_DOUBLE": np.float64,
    "DT_BOOL": np.bool_,
    "DT_STRING": np.object_,
    "DT_INT8": np.int8,
    "DT_INT16": np.int16,
    "DT_INT32": np.int32,
    "DT_INT64": np.int64,
    "DT_UINT8": np.uint8,
    "DT_UINT32": np.uint32,
    "DT_UINT64": np.uint64,
}
# The plan's dtypes first, so shrinking heads for them; the narrower ints share their code paths.
DTYPES = [
    "DT_FLOAT",
    "DT_DOUBLE",
    "DT_INT32",
    "DT_INT64",
    "DT_BOOL",
    "DT_STRING",
    "DT_INT8",
    "DT_INT16",
    "DT_UINT8",
    "DT_UINT32",
    "DT_UINT64",
]
# "b64" is left out: TF reads {"b64": "..."} as a base64 scalar, never as an input named b64. A
# fixed pool, as drawing names from a regex cost more than the rest of a request.
NAMES = st.sampled_from(
    ["x", "y", "images", "input_1", "s", "b64_not", "inputs", "instances", "\u00e9t\u00e9"]
)
MAX_ELEMENTS = 32


ELEMENTS = {
    "DT_FLOAT": st.floats(width=32),
    "DT_DOUBLE": st.floats(),
    "DT_BOOL": st.booleans(),
    # NUL and control characters included: json.dumps escapes them
    "DT_STRING": st.binary(max_size=10) | st.text(max_size=6).map(str.encode),
    **{t: st.integers(lo, hi) for t, (lo, hi) in _INT_RANGES.items()},
}


@st.composite
def tensors(draw, dtype: str, lead: tuple = (), max_rank: int = 6) -> np.ndarray:
    dims, room = [], MAX_ELEMENTS
    for _ in range(draw(st.integers(0, max_rank))):
        d = draw(st.integers(0, min(3, room)))
        room = room // d if d else room
        dims.append(d)
    # hnp.arrays draws a few distinct values and a fill: far fewer draws than one per element
    return draw(hnp.arrays(_NP[dtype], tuple(lead) + tuple(dims), elements=ELEMENTS[dtype]))


@st.composite
def client_json(draw, arr: np.ndarray):
    """The array as a client writes it: nested lists; strings as text or {"b64": ...} (padding
    optional)."""
    if arr.dtype != object:
        return arr.tolist()  # float32 -> the exact double, so no decimal rounding enters
    as_b64 = draw(st.integers(0, 2**arr.size - 1))  # one draw: bit k says how element k is sent
    unpadded = draw(st.booleans())
    flags = iter(range(arr.size))

    def leaf(raw: bytes):
        if as_b64 >> next(flags) & 1 or not _is_utf8(raw):
            text = base64.b64encode(raw).decode()
            return {"b64": text.rstrip("=") if unpadded else text}
        return raw.decode()

    def walk(v):
        return [walk(x) for x in v] if isinstance(v, list) else leaf(v)

    return walk(arr.tolist())


def _is_utf8(raw: bytes) -> bool:
    return raw.decode("utf-8", "replace").encode() == raw


def seen_shape(shape: tuple) -> tuple:
    return shape[: shape.index(0) + 1] if 0 in shape else shape


DUMPS = st.sampled_from([{}, {"ensure_ascii": False}, {"indent": 1}, {"separators": (",", ":")}])


@st.composite
def predict_requests(draw, fmt: str):
    """(body, specs, expected arrays): a valid request in `fmt` and the arrays it must decode to."""
    names = draw(st.lists(NAMES, min_size=1, max_size=3, unique=True))
    dtypes = {n: draw(st.sampled_from(DTYPES)) for n in names}
    if fmt == "row":
        batch = draw(st.integers(1, 3))  # TF: "No values in 'instances' array" for 0
        arrays = {n: draw(tensors(dtypes[n], lead=(batch,), max_rank=5)) for n in names}
        values = {n: draw(client_json(a)) for n, a in arrays.items()}
        if len(names) == 1 and draw(st.booleans()):
            doc = {"instances": values[names[0]]}
        else:
            doc = {"instances": [{n: values[n][i] for n in names} for i in range(batch)]}
    else:
        arrays = {n: draw(tensors(dtypes[n])) for n in names}
        values = {n: draw(client_json(a)) for n, a in arrays.items()}
        named = len(names) > 1 or draw(st.booleans())
        doc = {"inputs": values if named else values[names[0]]}
    if draw(st.booleans()):
        doc = {"signature_name": draw(st.text(max_size=8)), **doc}
    body = json.dumps(doc, **draw(DUMPS)).encode()
    expected = {n: a.reshape(seen_shape(a.shape)) for n, a in arrays.items()}
    return (
        body,
        {n: TensorSpec(t, None) for n, t in dtypes.items()},
        expected,
        doc.get("signature_name", ""),
    )


def assert_same_array(got: np.ndarray, want: np.ndarray) -> None:
    assert (got.dtype, got.shape) == (want.dtype, want.shape)
    if want.dtype.kind == "f":
        g, w = got.ravel(), want.ravel()
        nan = np.isnan(w)
        assert np.array_equal(np.isnan(g), nan)
        bits = np.uint32 if want.dtype == np.float32 else np.uint64
        assert np.array_equal(
            g[~nan].view(bits), w[~nan].view(bits)
        )  # -0.0 and subnormals bit-exact
    else:
        assert got.tolist() == want.tolist()


def check_round_trip(request, fmt: str) -> None:
    tick()
    body, specs, expected, signature = request
    doc = parse_body(body)
    assert signature_name_of(doc) == signature
    tensors_, got_fmt = decode_predict_request(doc, specs)
    assert got_fmt == fmt and tensors_.keys() == expected.keys()
    for name, want in expected.items():
        assert_same_array(tensors_[name], want)


@budget(2000)
@given(predict_requests("row"))
@example(
    (
        b'{"instances": [{"b64": "AA"}, "\\u0000"]}',
        {"x": TensorSpec("DT_STRING", None)},
        {"x": np.array([b"\x00", b"\x00"], object)},
        "",
    )
)
def test_row_format_requests_decode_to_the_arrays_the_client_encoded(request):
    check_round_trip(request, "row")


@budget(2000)
@given(predict_requests("columnar"))
@example(
    (
        b'{"inputs": [[], []]}',
        {"x": TensorSpec("DT_FLOAT", None)},
        {"x": np.zeros((2, 0), np.float32)},
        "",
    )
)
@example(
    (
        b'{"inputs": -0.0}',
        {"x": TensorSpec("DT_DOUBLE", None)},
        {"x": np.float64(-0.0).reshape(())},
        "",
    )
)
def test_columnar_format_requests_decode_to_the_arrays_the_client_encoded(request):
    check_round_trip(request, "columnar")


# ---------------------------------------------------------------------------------------- responses
def f32_of_decimal(text: str) -> np.float32:
    """absl::SimpleAtof, computed exactly (round to nearest, ties to even), independent of the
    codec."""

    def exact(
        v,
    ):  # past FLT_MAX the next float32 'is' 2**128, the overflow threshold of round-to-nearest
        return Fraction(float(v)) if np.isfinite(v) else Fraction(2**128) * int(np.sign(v))

    q = Fraction(text)
    with np.errstate(over="ignore"):
        lo = np.float32(float(q))
        lo = lo if exact(lo) <= q else np.nextafter(lo, np.float32(-np.inf))
        hi = np.nextafter(lo, np.float32(np.inf))
    d_lo, d_hi = q - exact(lo), exact(hi) - q
    out = lo if d_lo < d_hi or (d_lo == d_hi and int(lo.view(np.uint32)) % 2 == 0) else hi
    return (
        np.float32(-0.0) if q == 0 and text.startswith("-") else out
    )  # Fraction(-0.0) has no sign


def write_decimal(x, f32: bool) -> str:
    """TF Serving's WriteDecimal for one value."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    text = "%g" % x
    back = f32_of_decimal(text) if f32 else float(text)
    if back != x:
        text = ("%.9g" if f32 else "%.17g") % x
    return text if "." in text or "e" in text else text + ".0"


def check_leaf(value, x, dtype: str, as_b64: bool) -> None:
    if dtype in ("DT_FLOAT", "DT_DOUBLE"):
        f32 = dtype == "DT_FLOAT"
        assert value[0] == "float", f"{x!r} written as a JSON {value[0]}"
        assert value[1] == write_decimal(float(x), f32)
        back = (
            f32_of_decimal(value[1]) if f32 and math.isfinite(float(value[1])) else float(value[1])
        )
        assert (math.isnan(back) and math.isnan(x)) or (
            back == x and math.copysign(1, back) == math.copysign(1, x)
        )
    elif dtype == "DT_BOOL":
        assert value is bool(x)
    elif dtype == "DT_STRING":
        raw = bytes(x)
        if as_b64 or not _is_utf8(raw):
            assert value == {"b64": base64.b64encode(raw).decode()}
        else:
            assert value == raw.decode()
    else:
        assert value == ("int", str(int(x)))


def check_nested(value, arr: np.ndarray, dtype: str, as_b64: bool) -> None:
    if arr.ndim == 0:
        check_leaf(value, arr[()], dtype, as_b64)
        return
    assert isinstance(value, list) and len(value) == arr.shape[0]
    for i, v in enumerate(value):
        check_nested(
            v, arr[i, ...], dtype, as_b64
        )  # [i, ...] keeps a 0-d array, object dtype included


OUTPUT_NAMES = st.tuples(NAMES, st.booleans()).map(lambda t: t[0] + "_bytes" if t[1] else t[0])


@st.composite
def predict_responses(draw):
    fmt = draw(st.sampled_from(["row", "columnar"]))
    names = draw(st.lists(OUTPUT_NAMES, min_size=1, max_size=3, unique=True))
    dtypes = {n: draw(st.sampled_from(DTYPES)) for n in names}
    lead = (draw(st.integers(0, 3)),) if fmt == "row" else ()
    outputs = {n: draw(tensors(dtypes[n], lead=lead, max_rank=5 if lead else 6)) for n in names}
    return outputs, fmt, dtypes if draw(st.booleans()) else None


@budget(2000)
@given(predict_responses())
@example(({"y": np.float32([16777217, 1e-45, -0.0, np.nan, -np.inf])}, "row", None))
@example(
    (
        {"s_bytes": np.array([[b"hi"]], object), "t": np.array([[b"\xff\x00"]], object)},
        "columnar",
        None,
    )
)
def test_predict_responses_parse_back_to_the_same_values(response):
    tick()
    outputs, fmt, dtypes = response
    text = encode_predict_response(outputs, fmt, dtypes)
    parse_body(text.encode())  # TF's own reader takes it too, NaN/Infinity tokens included
    doc = json.loads(
        text,
        parse_float=lambda s: ("float", s),
        parse_constant=lambda s: ("float", s),
        parse_int=lambda s: ("int", s),
    )
    kinds = {
        n: (dtypes or {}).get(n) or next(k for k, t in _NP.items() if a.dtype == t)
        for n, a in outputs.items()
    }
    names, key = list(outputs), "predictions" if fmt == "row" else "outputs"
    assert list(doc) == [key]
    # row: one value per batch index, columnar: one for the whole tensor; {alias: value}
    # unless one output
    rows = doc[key] if fmt == "row" else [doc[key]]
    assert isinstance(rows, list) and len(rows) == (
        outputs[names[0]].shape[0] if fmt == "row" else 1
    )
    for i, row in enumerate(rows):
        got = row if len(names) > 1 else {names[0]: row}
        assert list(got) == names
        for n in names:
            check_nested(
                got[n],
                outputs[n][i, ...] if fmt == "row" else outputs[n],
                kinds[n],
                n.endswith("_bytes"),
            )


# ----------------------------------------------------------------------------------- hostile bodies
NO_SIGNATURES = LoadedSavedModel(
    None, {}
)  # a version without signatures: inference fails before any run
_DBL_MAX_EDGE = str(
    int(Fraction(1.7976931348623157e308) + Fraction(2) ** 970) + 10**291
)  # RapidJSON: finite
HOSTILE_TOKENS = [
    b"1e400",
    b"-1e400",
    b"0e999",
    str(2**70).encode(),
    str(-(2**64)).encode(),
    b"1" + b"0" * 310,
    _DBL_MAX_EDGE.encode(),
    b"-" + _DBL_MAX_EDGE.encode(),
    b"null",
    b"{}",
    b"[]",
    b'{"b64": "!!"}',
    b'{"b64": 5}',
    b'{"b64": "QQ==", "x": 1}',
    b'{"a": 1, "a": [2]}',
    b"\x00",
    b"\xff\xfe",
    b'"\x00"',
    b'"\\u0000"',
    b'"\xc3"',
    b'"\\ud800"',
    b'"\\udc80"',
    b"NaN",
    b"-Infinity",
    b"Inf",
    b"-NaN.5",
    b"[[[[",
    b"]]]]",
    b'"',
    b"\\",
    b"1.",
    b"-",
    b".5",
    b"01",
    b"\xef\xbb\xbf",
    b'"instances"',
    b'"inputs"',
    b'"b64"',
    b",",
    b":",
    b" ",
]
HOSTILE_VALUES = [
    None,
    {},
    [],
    {"b64": "!"},
    {"b64": 5},
    {"b64": "QQ==", "x": 1},
    {"x": 1},
    "x",
    "\x00",
    "\ud800",
    True,
    2**70,
    -(2**64),
    2**63,
    1e300,
    math.nan,
    math.inf,
    [1, "a"],
    [[1], 2],
    [[]],
    1.5,
    -1,
    0,
]
KEYS = ["instances", "inputs", "signature_name", "examples", "context", "b64", "x", "y"]
_text_any = st.text(
    st.characters(exclude_categories=[]), max_size=8
)  # lone surrogates and NUL included
_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**80), 2**80)
    | st.floats()
    | _text_any
    | st.sampled_from([2**64, 2**70, -(2**63) - 1, 10**308, 10**300])
)
json_documents = st.recursive(
    _leaves,
    lambda c: (
        st.lists(c, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | _text_any, c, max_size=4)
    ),
    max_leaves=16,
)


valid_body = (
    st.sampled_from(["row", "columnar"]).flatmap(predict_requests).map(lambda request: request[0])
)


@st.composite
def spliced_bodies(draw) -> bytes:
    """A valid body with 1-3 byte-level edits: hostile tokens or random bytes inserted, ranges cut,
    truncation."""
    body = draw(valid_body)
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(body)))
        op = draw(st.sampled_from(["token", "bytes", "cut", "truncate"]))
        if op == "token":
            body = body[:i] + draw(st.sampled_from(HOSTILE_TOKENS)) + body[i:]
        elif op == "bytes":
            body = body[:i] + draw(st.binary(min_size=1, max_size=4)) + body[i:]
        elif op == "cut":
            body = body[:i] + body[i + draw(st.integers(1, 8)) :]
        else:
            body = body[:i]
    return body


def _paths(v, path=()):
    yield path
    items = v.items() if isinstance(v, dict) else enumerate(v) if isinstance(v, list) else ()
    for k, x in items:
        yield from _paths(x, path + (k,))


@st.composite
def mutated_documents(draw) -> bytes:
    """A valid request whose document has 1-3 nodes replaced, dropped or duplicated: ragged and
    mixed tensors, nulls, objects, huge numbers where a tensor value goes."""
    body = draw(valid_body)
    doc = json.loads(body)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(list(_paths(doc))[1:] or [()]))
        if not path:
            break
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        op = draw(st.sampled_from(["replace", "drop", "wrap", "twin"]))
        key = path[-1]
        if op == "replace":
            parent[key] = copy.deepcopy(
                draw(st.sampled_from(HOSTILE_VALUES) | json_documents)
            )  # later ops mutate
        elif op == "drop":
            del parent[key]
        elif op == "wrap":
            parent[key] = [parent[key]]
        elif isinstance(parent, list):
            parent.insert(key, parent[key])
        else:
            parent[key + "_"] = parent[key]
    return _dumps(doc, draw(st.booleans()))


def _dumps(doc, ascii_only: bool) -> bytes:  # lone surrogates kept raw become invalid UTF-8 bytes
    return json.dumps(doc, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@st.composite
def random_documents(draw) -> bytes:
    inner = draw(json_documents)
    doc = draw(st.sampled_from([None, *KEYS[:5]]))
    return _dumps(inner if doc is None else {doc: inner}, draw(st.booleans()))


@st.composite
def nested_bodies(draw) -> bytes:
    """A document nested `depth` levels (the top-level object counts), just under or over
    MAX_JSON_DEPTH."""
    depth = draw(st.integers(MAX_JSON_DEPTH - 2, MAX_JSON_DEPTH + 2))
    key = draw(st.sampled_from(["instances", "inputs", "other"])).encode()
    arrays = draw(
        st.integers(0, 2 ** (depth - 1) - 1)
    )  # one draw: bit k says array or object at level k + 2
    opens = [arrays >> k & 1 for k in range(depth - 1)]
    head = b"".join(b"[" if o else b'{"k":' for o in opens)
    tail = b"".join(b"]" if o else b"}" for o in reversed(opens))
    return b'{"' + key + b'":' + head + draw(st.sampled_from([b"1", b'"s"', b"null"])) + tail + b"}"


hostile_bodies = st.one_of(
    st.binary(max_size=64),
    spliced_bodies(),
    mutated_documents(),
    random_documents(),
    nested_bodies(),
    st.sampled_from(HOSTILE_TOKENS),
)
hostile_specs = st.dictionaries(
    st.sampled_from(["x", "y", "b64", "inputs", "s_bytes"]),
    st.sampled_from(DTYPES).map(lambda t: TensorSpec(t, None)),
    min_size=1,
    max_size=3,
)


def longest_string_token(doc) -> int:
    """Bytes of the longest key or string of `doc` once escaped (at most 6 bytes per byte, as
    \\u0001)."""
    longest, stack = 0, [doc]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            longest = max(longest, 6 * len(v.encode("utf-8", "surrogateescape")) + 2)
        elif isinstance(v, dict):
            stack.extend(v)
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return longest


def assert_client_error(err: AspireError, body: bytes, doc) -> None:
    assert err.code == "INVALID_ARGUMENT", (err.code, err.message)
    message = err.message
    size = len(message.encode("utf-8"))  # strict: invalid UTF-8 from the body must not leak into it
    for marker in ("Traceback", 'File "', ".py", "site-packages", "/deployments/"):
        assert marker not in message or marker.encode() in body, message
    if size > 4096:
        assert size <= 4096 + 2 * longest_string_token(doc), size
    if _CURRENT[0].startswith("test_hostile"):
        _MAX_MESSAGE[0] = max(_MAX_MESSAGE[0], size)


def client_errors_only(body: bytes, specs: dict) -> None:
    """Every REST entry point on `body`: any outcome but an exception other than AspireError."""
    try:
        doc = parse_body(body)
    except AspireError as err:
        assert_client_error(err, body, None)
        return
    debug_string(doc)
    stages = [lambda: signature_name_of(doc), lambda: decode_predict_request(doc, specs)]
    stages += [
        lambda verb=verb: inference.REST_VERBS[verb](NO_SIGNATURES, doc)
        for verb in inference.REST_VERBS
    ]
    for stage in stages:
        try:
            stage()
        except AspireError as err:
            assert_client_error(err, body, doc)


@budget(3700)
@given(hostile_bodies, hostile_specs)
@example(b'{"inputs": [%s]}' % _DBL_MAX_EDGE.encode(), {"x": TensorSpec("DT_DOUBLE", None)})
@example(
    b'{"examples": [{"f": -%s}]}' % _DBL_MAX_EDGE.encode(), {"x": TensorSpec("DT_FLOAT", None)}
)
@example(b'{"signature_name": "\xff", "examples": [{}]}', {"x": TensorSpec("DT_FLOAT", None)})
def test_hostile_bodies_raise_only_invalid_argument_with_a_bounded_clean_message(body, specs):
    tick()
    client_errors_only(body, specs)


@budget(300)
@given(nested_bodies())
def test_nesting_past_the_limit_is_refused_and_at_the_limit_parses(body):
    tick()
    depth = 1 + body.count(b"[") + body.count(b"{") - 1
    if depth > MAX_JSON_DEPTH:
        with pytest.raises(AspireError, match=f"nest deeper than {MAX_JSON_DEPTH} levels"):
            parse_body(body)
    else:
        assert isinstance(parse_body(body), dict)


# -------------------------------------------------------------------------------------- regressions
def rapidjson_integer(digits: str) -> float:
    """Reader::ParseNumber on a long integer literal: uint64 while it fits, then
    d = d * 10 + digit."""
    value, k = 0, 0
    while k < len(digits) and value * 10 + int(digits[k]) <= 2**64 - 1:
        value, k = value * 10 + int(digits[k]), k + 1
    d = float(value)
    for ch in digits[k:]:
        d = d * 10 + int(ch)
    return d


def test_integer_literal_past_dbl_max_is_the_finite_double_rapidjson_keeps():
    # found by the hostile property: a 309-digit integer RapidJSON accepts, which float() cannot
    # hold, was kept as a Python int and raised OverflowError in the DT_FLOAT/DT_DOUBLE decoders and
    # the classify features
    tick()
    d = rapidjson_integer(_DBL_MAX_EDGE)
    assert math.isfinite(d) and int(_DBL_MAX_EDGE) > 1.7976931348623157e308
    doc = parse_body(b'{"inputs": [%s, -%s]}' % (_DBL_MAX_EDGE.encode(), _DBL_MAX_EDGE.encode()))
    assert doc["inputs"] == [d, -d]
    tensors_, _ = decode_predict_request(doc, {"x": TensorSpec("DT_DOUBLE", None)})
    assert tensors_["x"].tolist() == [d, -d]
    print(f"{len(_DBL_MAX_EDGE)}-digit integer literal -> {d!r}")


def test_signature_name_that_is_not_utf8_is_echoed_as_replacement_characters():
    # found by the hostile property: inference echoed the name's surrogate escapes, so the message
    # was not UTF-8
    tick()
    for verb, body, message in [
        (
            "predict",
            b'{"signature_name": "a\xffb", "instances": [1]}',
            'Serving signature name: "a\ufffdb" not found in signature def',
        ),
        (
            "classify",
            b'{"signature_name": "a\xffb", "examples": [{}]}',
            "No signature was found with the name: a\ufffdb",
        ),
    ]:
        code, text = inference.handle_rest(NO_SIGNATURES, verb, parse_body(body))
        assert (code, text) == ("INVALID_ARGUMENT", message)
        print(f"{verb}: {text.encode('utf-8')!r}")


def test_a_long_string_token_is_echoed_whole_as_tf_serving_writes_it():
    # JsonWriterWithLimit checks the 256-byte limit before each token, never inside one: the bound
    # of property 3
    tick()
    body = b'{"inputs": ["' + b"x" * 10_000 + b'"]}'
    with pytest.raises(AspireError) as info:
        decode_predict_request(parse_body(body), {"x": TensorSpec("DT_FLOAT", None)})
    assert (
        info.value.message
        == 'JSON Value: "' + "x" * 10_000 + '" Type: String is not of expected type: float'
    )
    assert_client_error(info.value, body, parse_body(body))
    print(f"10,000-byte string token -> {len(info.value.message)}-byte message")
