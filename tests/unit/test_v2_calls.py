"""The Open Inference Protocol inside a replica (deployments/v2_calls.py), on real SavedModels
without Ray: model metadata from the signature, infer with JSON and binary tensors for every
datatype a TF signature can carry, and each refusal's message."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest

from core.errors import AspireError
from deployments.replica import v2_calls
from deployments.replica.loader import SavedModelLoader
from tests.support.v2_models import TYPES

DATA = os.path.join(os.path.dirname(__file__), "..", "data")


def frame(doc: dict, binary: bytes = b"", header: bool = False) -> bytes:
    head = json.dumps(doc).encode()
    return struct.pack("!q", len(head) if header else -1) + head + binary


def answer(raw: bytes) -> tuple[dict, bytes]:
    (length,) = struct.unpack_from("!q", raw)
    body = raw[8:]
    if length == -1:
        return json.loads(body), b""
    return json.loads(body[:length]), body[length:]


def test_metadata_lists_the_serving_signature_with_v2_datatypes_and_shapes(half_plus_two):
    assert json.loads(v2_calls.metadata(half_plus_two, "h", 123)) == {
        "name": "h",
        "versions": ["123"],
        "platform": "tensorflow_savedmodel",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 1]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}],
    }


def test_infer_with_json_tensors_answers_tf_servings_values_and_echoes_the_id(half_plus_two):
    doc = {
        "id": "req-7",
        "inputs": [{"name": "x", "shape": [3, 1], "datatype": "FP32", "data": [1, 2, 5]}],
    }
    got, binary = answer(v2_calls.infer(half_plus_two, frame(doc), "h", 123))
    assert binary == b""
    assert got == {
        "model_name": "h",
        "model_version": "123",
        "id": "req-7",
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [3, 1], "data": [2.5, 3.0, 4.5]}],
    }


def test_infer_with_binary_tensors_both_ways(half_plus_two):
    x = np.array([[1.0], [2.0], [5.0]], "<f4").tobytes()
    doc = {
        "inputs": [
            {
                "name": "x",
                "shape": [3, 1],
                "datatype": "FP32",
                "parameters": {"binary_data_size": len(x)},
            }
        ],
        "parameters": {"binary_data_output": True},
    }
    got, binary = answer(v2_calls.infer(half_plus_two, frame(doc, x, header=True), "h", 1))
    [out] = got["outputs"]
    assert out["parameters"] == {"binary_data_size": 12}
    assert np.frombuffer(binary, "<f4").tolist() == [2.5, 3.0, 4.5]


@pytest.mark.parametrize("datatype", list(TYPES))
@pytest.mark.parametrize("as_binary", [False, True], ids=["json", "binary"])
def test_every_datatype_round_trips(every_type, datatype, as_binary):
    _, np_type, values = TYPES[datatype]
    name = datatype.lower()
    if datatype == "BYTES" and not as_binary:
        values = [b"a", "é".encode(), b""]  # JSON carries text
    array = np.array(values, dtype=np_type)
    item: dict = {"name": name, "shape": [3], "datatype": datatype}
    if as_binary:
        raw = v2_calls._to_binary(array, datatype)
        item["parameters"] = {"binary_data_size": len(raw)}
    else:
        raw = b""
        item["data"] = (
            [v.decode() for v in values]
            if datatype == "BYTES"
            else [float(v) for v in array.astype(np.float32)]
            if datatype in ("FP16", "BF16")
            else array.tolist()
        )
    # every input is required: the others get one element each
    others = [i for i in every_input() if i["name"] != name]
    doc = {
        "inputs": [item, *others],
        "outputs": [{"name": f"out_{name}", "parameters": {"binary_data": as_binary}}],
    }
    got, binary = answer(v2_calls.infer(every_type, frame(doc, raw, header=as_binary), "t", 1))
    [out] = got["outputs"]
    assert (out["name"], out["datatype"], out["shape"]) == (f"out_{name}", datatype, [3])
    if as_binary:
        assert binary == raw
    elif datatype == "BYTES":
        assert out["data"] == [v.decode() for v in values]
    else:
        assert out["data"] == item["data"]


def every_input() -> list[dict]:
    items = []
    for name, (_, _, values) in TYPES.items():
        data = [values[0].decode()] if name == "BYTES" else values[:1]
        items.append({"name": name.lower(), "shape": [1], "datatype": name, "data": data})
    return items


@pytest.mark.parametrize(
    "doc, binary, message",
    [
        (
            {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP64", "data": [1]}]},
            b"",
            "inference input 'x' data-type is 'FP64', but model 'h' expects 'FP32'",
        ),
        (
            {"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2]}]},
            b"",
            "unexpected shape for input 'x' for model 'h'. Expected [-1, 1], got [2]",
        ),
        (
            {"inputs": [{"name": "x", "shape": [2, 1], "datatype": "FP32", "data": [1]}]},
            b"",
            "input 'x': 1 elements in 'data' for shape [2, 1] (2)",
        ),
        (
            {"inputs": [{"name": "z", "shape": [1, 1], "datatype": "FP32", "data": [1]}]},
            b"",
            "unexpected inference input 'z' for model 'h'",
        ),
        ({"inputs": []}, b"", "the infer request needs a non-empty 'inputs' list"),
        (
            {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": ["a"]}]},
            b"",
            "input 'x': FP32 data must be numbers",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [2, 1],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": 4},
                    }
                ]
            },
            b"\0\0\0\0",
            "input 'x': 4 bytes of binary data, shape [2, 1] of FP32 needs 8",
        ),
        (
            {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1]}]},
            b"extra",
            "5 bytes of binary data belong to no input",
        ),
        (
            {
                "inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1]}],
                "outputs": [{"name": "nope"}],
            },
            b"",
            "unexpected inference output 'nope' for model 'h'",
        ),
    ],
)
def test_bad_requests_are_refused_with_the_reason(half_plus_two, doc, binary, message):
    with pytest.raises(AspireError) as err:
        v2_calls.infer(half_plus_two, frame(doc, binary, header=bool(binary)), "h", 1)
    assert (err.value.code, err.value.message) == ("INVALID_ARGUMENT", message)


X = {"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1]}


@pytest.mark.parametrize(
    "doc, message",
    [
        ({"inputs": [X], "parameters": 5}, "the infer request: 'parameters' must be a JSON object"),
        ({"inputs": [{**X, "parameters": "x"}]}, "input 'x': 'parameters' must be a JSON object"),
        (
            {"inputs": [X], "outputs": [{"name": "y", "parameters": [1]}]},
            "output 'y': 'parameters' must be a JSON object",
        ),
    ],
)
def test_parameters_that_are_not_a_json_object_are_invalid_argument_naming_where(
    half_plus_two, doc, message
):
    with pytest.raises(AspireError) as err:
        v2_calls.infer(half_plus_two, frame(doc), "h", 1)
    assert (err.value.code, err.value.message) == ("INVALID_ARGUMENT", message)


def test_null_parameters_count_as_none_given(half_plus_two):
    doc = {
        "inputs": [{**X, "parameters": None}],
        "outputs": [{"name": "y", "parameters": None}],
        "parameters": None,
    }
    got, _ = answer(v2_calls.infer(half_plus_two, frame(doc), "h", 1))
    assert got["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [1, 1], "data": [2.5]}]


def test_a_missing_input_and_non_utf8_bytes_as_json_are_refused(every_type):
    doc = {"inputs": every_input()[1:]}
    with pytest.raises(AspireError) as err:
        v2_calls.infer(every_type, frame(doc), "t", 1)
    assert err.value.message == ("expected 14 inputs but got 13 inputs for model 't': missing bool")
    raw = v2_calls._to_binary(np.array([b"\xff"], dtype=object), "BYTES")
    inputs = [i for i in every_input() if i["name"] != "bytes"]
    inputs.append(
        {"name": "bytes", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 5}}
    )
    doc = {"inputs": inputs, "outputs": [{"name": "out_bytes"}]}
    with pytest.raises(AspireError) as err:
        v2_calls.infer(every_type, frame(doc, raw, header=True), "t", 1)
    assert err.value.message.startswith("output 'out_bytes' holds bytes that are not UTF-8")


def test_malformed_json_and_a_header_length_past_the_body_are_refused(half_plus_two):
    with pytest.raises(AspireError, match="failed to parse the request JSON"):
        v2_calls.infer(half_plus_two, struct.pack("!q", -1) + b"{nope", "h", 1)
    with pytest.raises(AspireError, match="is not within the body"):
        v2_calls.infer(half_plus_two, struct.pack("!q", 99) + b"{}", "h", 1)


def test_a_signature_without_shapes_takes_any_shape_as_tensorflow_does():
    model = SavedModelLoader(os.path.join(DATA, "saved_model_half_plus_three", "00000123")).load()
    assert json.loads(v2_calls.metadata(model, "h3", 1))["inputs"] == [
        {"name": "x", "datatype": "FP32", "shape": [-1]}
    ]
    doc = {"inputs": [{"name": "x", "shape": [2, 1], "datatype": "FP32", "data": [1, 3]}]}
    got, _ = answer(v2_calls.infer(model, frame(doc), "h3", 1))
    assert got["outputs"][0]["data"] == [3.5, 4.5] and got["outputs"][0]["shape"] == [2, 1]
