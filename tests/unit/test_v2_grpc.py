"""The Open Inference Protocol's gRPC messages (deployments/wire/v2_protos.py) against the
protocol's published ones (tritonclient's `service_pb2`), and ModelInfer inside a replica
(`v2_calls.grpc_infer`) on real SavedModels without Ray, with requests built and answers read
by tritonclient's own gRPC helpers."""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.grpc import InferInput, InferRequestedOutput, InferResult
from tritonclient.grpc import service_pb2 as published

from core.errors import AspireError
from deployments.replica import v2_calls
from deployments.router.tfs_grpc import string_fields
from deployments.wire import v2_protos
from tests.support.v2_models import TYPES, sample


def fields(descriptor) -> dict:
    """name -> (number, type, repeated, message type, oneof), nested messages included."""
    out = {}
    for f in descriptor.fields:
        out[f.name] = (
            f.number,
            f.type,
            f.is_repeated if hasattr(f, "is_repeated") else f.label == f.LABEL_REPEATED,
            f.message_type.full_name if f.message_type else None,
            f.containing_oneof.name if f.containing_oneof else None,
        )
    for nested in descriptor.nested_types:
        out[nested.name] = fields(nested)
        out[nested.name + ".map_entry"] = nested.GetOptions().map_entry
    return out


@pytest.mark.parametrize("message", sorted(m for m in v2_protos.MESSAGES if "." not in m))
def test_every_message_has_the_published_field_numbers_and_types(message):
    ours = v2_protos.POOL.FindMessageTypeByName(f"inference.{message}")
    assert fields(ours) == fields(getattr(published, message).DESCRIPTOR)


def test_the_service_declares_the_published_methods_it_serves():
    ours = v2_protos.POOL.FindServiceByName(v2_protos.SERVICE)
    theirs = published.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert ours.full_name == theirs.full_name == "inference.GRPCInferenceService"
    for method in ours.methods:
        match = theirs.methods_by_name[method.name]
        assert (method.input_type.full_name, method.output_type.full_name) == (
            match.input_type.full_name,
            match.output_type.full_name,
        )
    assert [m.name for m in ours.methods] == list(v2_protos.METHODS)


def test_a_request_serialized_by_the_published_messages_reads_back_the_same():
    theirs = published.ModelInferRequest(model_name="m", model_version="7", id="q")
    tensor = theirs.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    tensor.contents.fp32_contents.extend([1.5, 2.5])
    tensor.parameters["p"].uint64_param = 2**63
    theirs.outputs.add(name="y").parameters["binary_data"].bool_param = True
    theirs.raw_input_contents.append(b"\x00\x01")
    ours = v2_protos.ModelInferRequest.FromString(theirs.SerializeToString())
    assert ours.SerializeToString(deterministic=True) == theirs.SerializeToString(
        deterministic=True
    )
    assert ours.inputs[0].parameters["p"].uint64_param == 2**63


def test_the_router_reads_model_name_and_version_without_decoding_the_tensors():
    request = published.ModelInferRequest(model_name="first", model_version="3")
    request.raw_input_contents.append(b"\x0a" * 100)  # bytes that look like field 1's tag
    raw = (
        request.SerializeToString()
        + published.ModelInferRequest(model_name="second").SerializeToString()
    )  # a repeated field: the last one wins, as protobuf merges
    assert string_fields(raw, (1, 2)) == {1: [b"first", b"second"], 2: [b"3"]}
    assert string_fields(b"\x0a\x05ab", (1, 2)) is None  # cut short
    assert string_fields(b"\x08\x01", (1,)) is None  # field 1 as a varint


def request_of(inputs, outputs=(), model="m", version="", request_id=""):
    """tritonclient's own ModelInferRequest for `inputs` (InferInput) and requested outputs."""
    request = published.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    for item in inputs:
        request.inputs.extend([item._get_tensor()])
        if item._get_content() is not None:
            request.raw_input_contents.extend([item._get_content()])
    for name in outputs:
        request.outputs.extend([InferRequestedOutput(name)._get_tensor()])
    return request


def run(model, request, name="m", version=1) -> InferResult:
    raw = v2_calls.grpc_infer(model, request.SerializeToString(), name, version)
    return InferResult(published.ModelInferResponse.FromString(raw))


def test_infer_with_raw_contents_answers_tf_servings_values_and_echoes_the_id(half_plus_two):
    x = InferInput("x", [3, 1], "FP32")
    x.set_data_from_numpy(np.array([[1.0], [2.0], [5.0]], dtype=np.float32))
    result = run(half_plus_two, request_of([x], request_id="r-1"), "half_plus_two", 123)
    np.testing.assert_array_equal(result.as_numpy("y"), [[2.5], [3.0], [4.5]])
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == (
        "half_plus_two",
        "123",
        "r-1",
    )
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("y", "FP32", [3, 1])
    ]


def test_infer_with_typed_contents_answers_the_same_values(half_plus_two):
    request = published.ModelInferRequest(model_name="half_plus_two")
    request.inputs.add(name="x", datatype="FP32", shape=[2, 1]).contents.fp32_contents.extend(
        [4.0, 6.0]
    )
    np.testing.assert_array_equal(run(half_plus_two, request).as_numpy("y"), [[4.0], [5.0]])


@pytest.mark.parametrize("datatype", list(TYPES))
def test_every_datatype_round_trips_as_raw_contents(every_type, datatype):
    item = InferInput(datatype.lower(), [3], datatype)
    item.set_data_from_numpy(sample(datatype))
    others = []  # the signature takes every input: the others are sent empty
    for other in TYPES:
        if other != datatype:
            empty = InferInput(other.lower(), [0], other)
            empty.set_data_from_numpy(np.array([], dtype=TYPES[other][1]))
            others.append(empty)
    result = run(every_type, request_of([item, *others], outputs=[f"out_{datatype.lower()}"]))
    got = result.as_numpy(f"out_{datatype.lower()}")
    want = sample(datatype)
    if datatype == "BF16":  # tritonclient hands BF16 back as float32
        want = want.astype(np.float32)
    np.testing.assert_array_equal(got, want)


TYPED = {  # datatype -> the InferTensorContents field a client puts it in
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def typed_request(values: dict) -> published.ModelInferRequest:
    """A typed-contents request with `values` (datatype -> list) and every other input empty."""
    request = published.ModelInferRequest(model_name="t")
    for datatype in TYPES:
        tensor = request.inputs.add(name=datatype.lower(), datatype=datatype)
        given = values.get(datatype, [])
        tensor.shape.append(len(given))
        if given:
            getattr(tensor.contents, TYPED[datatype]).extend(given)
    return request


def test_every_typed_datatype_round_trips(every_type):
    values = {d: TYPES[d][2] for d in TYPED}
    result = run(every_type, typed_request(values))
    for datatype in TYPED:
        np.testing.assert_array_equal(
            result.as_numpy(f"out_{datatype.lower()}"),
            np.array(values[datatype], TYPES[datatype][1]),
        )


def refusal(model, request) -> str:
    with pytest.raises(AspireError) as caught:
        v2_calls.grpc_infer(model, request.SerializeToString(), "m", 1)
    assert caught.value.code == "INVALID_ARGUMENT"
    return caught.value.message


def test_fp16_and_bf16_in_typed_contents_are_refused(every_type):
    for datatype in ("FP16", "BF16"):
        request = typed_request({})
        request.inputs[list(TYPES).index(datatype)].shape[0] = 1
        request.inputs[list(TYPES).index(datatype)].contents.fp32_contents.append(1.0)
        assert f"{datatype} data can only be sent in raw_input_contents" in refusal(
            every_type, request
        )


def test_a_request_mixing_raw_and_typed_contents_is_refused(half_plus_two):
    x = InferInput("x", [1, 1], "FP32")
    x.set_data_from_numpy(np.array([[1.0]], dtype=np.float32))
    request = request_of([x])
    request.inputs[0].contents.fp32_contents.append(1.0)
    assert "use one or the other for every input" in refusal(half_plus_two, request)


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda r: setattr(r.inputs[0], "datatype", "INT32"),
            "inference input 'x' data-type is 'INT32', but model 'm' expects 'FP32'",
        ),
        (lambda r: r.inputs[0].shape.append(1), "unexpected shape for input 'x'"),
        (lambda r: setattr(r.inputs[0], "name", "z"), "unexpected inference input 'z'"),
        (lambda r: r.outputs.add(name="w"), "unexpected inference output 'w'"),
        (lambda r: r.inputs[0].contents.fp32_contents.append(9), "3 elements in 'fp32_contents'"),
        (
            lambda r: r.inputs[0].contents.int_contents.append(1),
            "FP32 data belongs in 'fp32_contents', not in int_contents",
        ),
        (lambda r: r.raw_input_contents.extend([b"", b""]), "raw_input_contents has 2 entries"),
        (lambda r: r.ClearField("inputs"), "needs at least one input"),
    ],
)
def test_bad_requests_are_refused_with_the_reason(half_plus_two, change, message):
    request = published.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP32", shape=[2, 1]).contents.fp32_contents.extend(
        [1.0, 2.0]
    )
    change(request)
    assert message in refusal(half_plus_two, request)


def test_out_of_range_narrow_integers_and_a_missing_input_are_refused(every_type):
    assert "a value is out of INT8's range" in refusal(every_type, typed_request({"INT8": [128]}))
    request = typed_request({})
    del request.inputs[0]
    assert "missing bool" in refusal(every_type, request)


def test_bytes_that_are_not_a_message_are_refused(half_plus_two):
    with pytest.raises(AspireError, match="Could not parse inference.ModelInferRequest"):
        v2_calls.grpc_infer(half_plus_two, b"\xff\xff\xff", "m", 1)
