"""deployments/router/shadow_compare.py without Ray: two answers to one shadowed request, in each
shadowed method's wire format, compared output by output. Answers are built by hand in the
replica's formats, and, for half_plus_two beside half_plus_three, by the replica's own code on
the real SavedModels."""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from core import protos

protos.load()  # TF Serving's protos without TensorFlow's runtime, as in the router

from tensorflow.core.framework import tensor_pb2  # noqa: E402
from tensorflow_serving.apis import predict_pb2  # noqa: E402

from deployments.router.shadow_compare import SHADOWED_METHODS, compare_answers  # noqa: E402
from deployments.wire import v2_protos  # noqa: E402
from deployments.wire.tfs_json_response import encode_predict_response  # noqa: E402
from policies.rollout_judge import Comparison, OutputDiff  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DATA = os.path.join(os.path.dirname(__file__), "..", "data")
DT_FLOAT, DT_DOUBLE, DT_INT32, DT_STRING, DT_INT64, DT_BOOL, DT_BFLOAT16, DT_HALF = (
    1,
    2,
    3,
    7,
    9,
    10,
    14,
    19,
)


def rest(outputs: dict, fmt: str = "row") -> bytes:
    """A REST predict answer as the replica writes it."""
    return encode_predict_response(outputs, fmt).encode("utf-8")


def predict_response(**tensors: tensor_pb2.TensorProto) -> bytes:
    response = predict_pb2.PredictResponse()
    for name, tensor in tensors.items():
        response.outputs[name].CopyFrom(tensor)
    return response.SerializeToString()


def tensor(dtype: int, shape: list[int], content: bytes = b"", **values) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=dtype, tensor_content=content, **values)
    for size in shape:
        proto.tensor_shape.dim.add(size=size)
    return proto


def v2_rest(outputs: list[tuple[str, str, np.ndarray, bool]]) -> bytes:
    """A v2_infer answer as deployments/replica/v2_calls.py frames it: (name, datatype, values,
    as binary) per output."""
    entries, parts = [], []
    for name, datatype, values, as_binary in outputs:
        entry: dict = {"name": name, "datatype": datatype, "shape": list(values.shape)}
        if as_binary and datatype == "BYTES":
            raw = b"".join(struct.pack("<I", len(v)) + v for v in values.ravel().tolist())
        elif as_binary:
            raw = values.astype(values.dtype.newbyteorder("<")).tobytes()
        if as_binary:
            entry["parameters"] = {"binary_data_size": len(raw)}
            parts.append(raw)
        elif datatype == "BYTES":
            entry["data"] = [v.decode() for v in values.ravel().tolist()]
        else:
            entry["data"] = values.astype(np.float64).ravel().tolist()
        entries.append(entry)
    head = json.dumps({"model_name": "m", "model_version": "1", "outputs": entries}).encode()
    return struct.pack("!q", len(head) if parts else -1) + head + b"".join(parts)


def v2_grpc(outputs: list[tuple[str, str, np.ndarray]], raw: bool = True) -> bytes:
    response = v2_protos.ModelInferResponse(model_name="m", model_version="1")
    for name, datatype, values in outputs:
        out = response.outputs.add(name=name, datatype=datatype, shape=values.shape)
        if raw:
            response.raw_output_contents.append(
                values.astype(values.dtype.newbyteorder("<")).tobytes()
            )
        else:
            getattr(
                out.contents, {"FP32": "fp32_contents", "INT64": "int64_contents"}[datatype]
            ).extend(values.ravel().tolist())
    return response.SerializeToString()


SCORES = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], np.float32)
OTHER_SCORES = np.array([[0.2, 0.7, 0.1], [0.1, 0.2, 0.7]], np.float32)


def js(p: np.ndarray, q: np.ndarray) -> float:
    p, q = p.astype(np.float64), q.astype(np.float64)
    m = (p + q) / 2
    return float(0.5 * np.sum(p * np.log(p / m)) + 0.5 * np.sum(q * np.log(q / m)))


# ---------------------------------------------------------------------------------------- REST


def test_identical_rest_answers_have_zero_divergence():
    body = rest({"scores": SCORES, "labels": np.array([b"cat", b"dog"], object)})
    got = compare_answers("predict", body, body)
    assert got == Comparison(
        {"scores": OutputDiff(0.0, 0.0, 1.0, 0.0), "labels": OutputDiff(0.0, 0.0)}
    )


def test_rest_row_and_columnar_answers_name_their_outputs():
    one_a, one_b = np.array([[1.0], [2.0]], np.float32), np.array([[1.5], [2.0]], np.float32)
    got = compare_answers("predict", rest({"y": one_a}), rest({"y": one_b}))
    assert got == Comparison({"predictions": OutputDiff(0.25, 0.5)})
    got = compare_answers("predict", rest({"y": one_a}, "columnar"), rest({"y": one_b}, "columnar"))
    assert got == Comparison({"outputs": OutputDiff(0.25, 0.5)})
    two = {"y": one_a, "z": np.array([1, 2], np.int64)}
    got = compare_answers("predict", rest(two, "columnar"), rest({**two, "y": one_b}, "columnar"))
    assert got == Comparison({"y": OutputDiff(0.25, 0.5), "z": OutputDiff(0.0, 0.0)})


def test_string_outputs_count_the_share_that_differs_b64_included():
    base = rest({"w_bytes": np.array([b"\xff\x00", b"a", b"b", b"c"], object)})
    cand = rest({"w_bytes": np.array([b"\xff\x00", b"a", b"x", b"c"], object)})
    assert b"b64" in base
    assert compare_answers("predict", base, cand) == Comparison(
        {"predictions": OutputDiff(0.25, 1.0)}
    )


def test_shape_mismatch_is_a_hard_failure():
    base = rest({"y": np.zeros((3, 2), np.float32), "z": np.zeros(3, np.float32)})
    cand = rest({"y": np.zeros((3, 1), np.float32), "z": np.zeros(3, np.float32)})
    got = compare_answers("predict", base, cand)
    assert got.outputs == {}
    assert (
        got.hard_failure == "shape of output 'y' is [3, 1] in the candidate, [3, 2] in the baseline"
    )


def test_type_mismatch_and_missing_or_extra_outputs_are_hard_failures():
    base = rest({"y": np.zeros(2, np.float32), "z": np.zeros(2, np.float32)})
    cand = rest({"y": np.array([b"a", b"b"], object), "w": np.zeros(2, np.float32)})
    failure = compare_answers("predict", base, cand).hard_failure
    assert failure is not None
    assert "lacks output(s) z" in failure and "extra output(s) w" in failure
    assert "type of output 'y' is string in the candidate, number in the baseline" in failure
    bools = rest({"y": np.array([True, False])}, "columnar")
    failure = compare_answers("predict", rest({"y": np.zeros(2)}, "columnar"), bools).hard_failure
    assert failure == "type of output 'outputs' is bool in the candidate, number in the baseline"


def test_nan_in_candidate_is_a_hard_failure():
    base = rest({"y": np.array([1.0, np.nan, 3.0], np.float32)})
    same_nan = rest({"y": np.array([2.0, np.nan, 3.0], np.float32)})
    assert compare_answers("predict", base, same_nan) == Comparison(
        {"predictions": OutputDiff(0.5, 1.0)}  # the baseline's NaN is left out
    )
    for bad in (np.nan, np.inf, -np.inf):
        cand = rest({"y": np.array([1.0, 2.0, bad], np.float32)})
        failure = compare_answers("predict", base, cand).hard_failure
        assert failure == (
            "output 'predictions' holds NaN or Inf in the candidate where the baseline's doesn't"
        )


def test_empty_outputs_differ_by_nothing():
    empty = rest({"y": np.zeros((0, 2), np.float32), "z": np.zeros(0, object)}, "columnar")
    assert compare_answers("predict", empty, empty.replace(b'"y"', b' "y"')) == Comparison(
        {"y": OutputDiff(0.0, 0.0), "z": OutputDiff(0.0, 0.0)}
    )


def test_class_scores_get_top1_and_js():
    got = compare_answers("predict", rest({"s": SCORES}), rest({"s": OTHER_SCORES}))
    diff = got.outputs["predictions"]
    expect = np.abs(OTHER_SCORES.astype(np.float64) - SCORES.astype(np.float64))
    assert diff.mean_abs_diff == pytest.approx(expect.mean(), abs=1e-6)
    assert diff.max_abs_diff == pytest.approx(0.5, abs=1e-6)
    assert diff.top1_agree == 0.5
    want = (js(SCORES[0], OTHER_SCORES[0]) + js(SCORES[1], OTHER_SCORES[1])) / 2
    assert diff.js_divergence == pytest.approx(want, rel=1e-5)
    assert 0 < diff.js_divergence <= math.log(2)
    disjoint = compare_answers(
        "predict",
        rest({"s": np.array([[1.0, 0.0]], np.float32)}),
        rest({"s": np.array([[0.0, 1.0]], np.float32)}),
    ).outputs["predictions"]
    assert disjoint.top1_agree == 0.0 and disjoint.js_divergence == pytest.approx(math.log(2))


def test_outputs_that_are_not_class_scores_get_no_top1_or_js():
    not_summing = np.array([[0.5, 0.6], [0.1, 0.2]], np.float32)
    one_d = np.array([0.5, 0.5], np.float32)
    for values in (not_summing, one_d, np.array([[1.0], [1.0]], np.float32)):
        diff = compare_answers("predict", rest({"s": values}), rest({"s": values + 0.001}))
        assert diff.outputs["predictions"].top1_agree is None
        assert diff.outputs["predictions"].js_divergence is None
    # scores in one answer only
    diff = compare_answers("predict", rest({"s": SCORES}), rest({"s": SCORES * 1.5}))
    assert diff.outputs["predictions"].top1_agree is None


def test_unreadable_candidate_answer_is_a_hard_failure():
    good = {
        "predict": rest({"y": np.ones(2, np.float32)}),
        "Predict": predict_response(y=tensor(DT_FLOAT, [2], float_val=[1.0])),
        "v2_infer": v2_rest([("y", "FP32", np.ones(2, np.float32), True)]),
        "v2_grpc_infer": v2_grpc([("y", "FP32", np.ones(2, np.float32))]),
    }
    for method, bad in (
        ("predict", b"not json"),
        ("predict", b'{"error": "x"}'),
        ("predict", b'{"predictions": [[1], [2, 3]]}'),  # ragged
        ("predict", b'{"predictions": [{"a": 1, "b": 2}, {"a": 1}]}'),
        ("Predict", b"\xff\xff\xff\xff"),
        ("Predict", predict_response(y=tensor(DT_FLOAT, [2], float_val=[1.0, 2.0, 3.0]))),
        ("Predict", predict_response(y=tensor(DT_FLOAT, [2], b"\x00" * 7))),
        ("v2_infer", b"\x00\x00\x00\x00\x00\x00\x00\x63{}"),  # header longer than the body
        ("v2_infer", good["v2_infer"][:-1]),  # binary data cut short
        ("v2_grpc_infer", b"\x0a\xff"),
        ("v2_grpc_infer", v2_grpc([("y", "FP32", np.ones(3, np.float32))])[:-1]),
    ):
        got = compare_answers(method, good[method], bad)
        assert got.outputs == {}, (method, bad)
        assert got.hard_failure is not None, (method, bad)
        assert got.hard_failure.startswith(f"the candidate's answer could not be read as {method}")


def test_unreadable_baseline_answer_is_said_so_and_nothing_raises():
    got = compare_answers("predict", b"{", rest({"y": np.ones(2, np.float32)}))
    assert got.hard_failure is not None
    assert got.hard_failure.startswith("the baseline's answer could not be read as predict")
    with pytest.raises(ValueError):
        compare_answers("classify", b"{}", b"{}")
    assert SHADOWED_METHODS == {"predict", "Predict", "v2_infer", "v2_grpc_infer"}


# ------------------------------------------------------------------------------------ gRPC Predict


def test_grpc_predict_response_tensor_content_decoded_without_tensorflow():
    """In a fresh interpreter (this one has TensorFlow's protos loaded already)."""
    code = textwrap.dedent("""
        import sys
        import numpy as np
        from deployments.router.shadow_compare import compare_answers
        assert compare_answers("Predict", b"", b"").outputs == {}  # loads the protos
        from tensorflow_serving.apis import predict_pb2
        def answer(values):
            response = predict_pb2.PredictResponse()
            y = response.outputs["y"]
            y.dtype = 1  # DT_FLOAT
            for size in values.shape:
                y.tensor_shape.dim.add(size=size)
            y.tensor_content = values.astype("<f4").tobytes()
            return response.SerializeToString()
        base = np.array([[2.5], [3.0], [4.5]])
        got = compare_answers("Predict", answer(base), answer(base + 1))
        print(got.outputs["y"].mean_abs_diff, "tensorflow.python" in sys.modules)
    """)
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["1.0", "False"]


def test_grpc_predict_typed_fields_fill_their_shape_as_tensorflow_does():
    base = predict_response(
        y=tensor(DT_FLOAT, [2, 2], np.array([1, 2, 3, 4], "<f4").tobytes()),
        n=tensor(DT_INT64, [3], int64_val=[7, 7, 7]),
        s=tensor(DT_STRING, [2], string_val=[b"a", b"b"]),
        h=tensor(DT_HALF, [2], half_val=np.array([1.0, 2.0], np.float16).view(np.uint16).tolist()),
        b=tensor(DT_BFLOAT16, [1], half_val=[0x3F80]),  # 1.0
        t=tensor(DT_BOOL, [2], bool_val=[True, False]),
    )
    cand = predict_response(
        y=tensor(DT_FLOAT, [2, 2], float_val=[1, 2, 3, 6]),
        n=tensor(DT_INT64, [3], int64_val=[7]),  # one value fills the shape
        s=tensor(DT_STRING, [2], string_val=[b"a", b"c"]),
        h=tensor(DT_HALF, [2], half_val=np.array([1.5], np.float16).view(np.uint16).tolist()),
        b=tensor(DT_BFLOAT16, [1], half_val=[0x4000]),  # 2.0
        t=tensor(DT_BOOL, [2], bool_val=[True, True]),
    )
    assert compare_answers("Predict", base, cand) == Comparison(
        {
            "y": OutputDiff(0.5, 2.0),
            "n": OutputDiff(0.0, 0.0),
            "s": OutputDiff(0.5, 1.0),
            "h": OutputDiff(0.5, 0.5),
            "b": OutputDiff(1.0, 1.0),
            "t": OutputDiff(0.5, 1.0),
        }
    )
    other_type = predict_response(y=tensor(DT_DOUBLE, [2, 2], double_val=[1, 2, 3, 4]))
    failure = compare_answers("Predict", predict_response(y=tensor(DT_FLOAT, [2, 2])), other_type)
    assert failure.hard_failure == (
        "type of output 'y' is DT_DOUBLE in the candidate, DT_FLOAT in the baseline"
    )


def test_grpc_predict_class_scores_and_shape_mismatch():
    def scores(values: np.ndarray) -> bytes:
        return predict_response(
            p=tensor(DT_FLOAT, list(values.shape), values.astype("<f4").tobytes())
        )

    diff = compare_answers("Predict", scores(SCORES), scores(OTHER_SCORES)).outputs["p"]
    assert diff.top1_agree == 0.5 and diff.js_divergence is not None
    same = compare_answers("Predict", scores(SCORES), scores(SCORES))
    assert same == Comparison({"p": OutputDiff(0.0, 0.0, 1.0, 0.0)})
    failure = compare_answers("Predict", scores(SCORES), scores(SCORES.T)).hard_failure
    assert failure == "shape of output 'p' is [3, 2] in the candidate, [2, 3] in the baseline"


# ---------------------------------------------------------------------------------------- v2


def test_v2_rest_and_grpc_answers_compared():
    y, y2 = np.array([[1.0], [2.0]], np.float32), np.array([[1.0], [4.0]], np.float32)
    words = np.array([b"a", b"b", b"c", b"d"], object)
    other_words = np.array([b"a", b"b", b"c", b"e"], object)
    want = Comparison({"y": OutputDiff(1.0, 2.0), "w": OutputDiff(0.25, 1.0)})
    for base_binary, cand_binary in ((False, False), (True, True), (False, True)):
        base = v2_rest([("y", "FP32", y, base_binary), ("w", "BYTES", words, base_binary)])
        cand = v2_rest([("y", "FP32", y2, cand_binary), ("w", "BYTES", other_words, cand_binary)])
        assert compare_answers("v2_infer", base, cand) == want
    json_only = v2_rest([("y", "FP32", y, False)])
    assert compare_answers("v2_infer", json_only[8:], json_only[8:]) == Comparison(
        {"y": OutputDiff(0.0, 0.0)}  # a body without the frame is read as JSON alone
    )
    failure = compare_answers(
        "v2_infer", json_only, v2_rest([("y", "FP64", y.astype(np.float64), True)])
    )
    assert (
        failure.hard_failure == "type of output 'y' is FP64 in the candidate, FP32 in the baseline"
    )

    ids = np.array([3, 4], np.int64)
    base = v2_grpc([("y", "FP32", y), ("n", "INT64", ids)])
    for raw in (True, False):
        cand = v2_grpc([("y", "FP32", y2), ("n", "INT64", ids)], raw=raw)
        assert compare_answers("v2_grpc_infer", base, cand) == Comparison(
            {"y": OutputDiff(1.0, 2.0), "n": OutputDiff(0.0, 0.0)}
        )
    scores = v2_grpc([("p", "FP32", SCORES)])
    diff = compare_answers("v2_grpc_infer", scores, v2_grpc([("p", "FP32", OTHER_SCORES)]))
    assert diff.outputs["p"].top1_agree == 0.5
    missing = compare_answers("v2_grpc_infer", base, v2_grpc([("y", "FP32", y)]))
    assert missing.hard_failure == "the candidate's answer lacks output(s) n"


# ---------------------------------------------------------------------------- the replica's answers


@pytest.fixture(scope="module")
def half_plus_three():
    from deployments.replica.loader import SavedModelLoader

    return SavedModelLoader(os.path.join(DATA, "saved_model_half_plus_three", "00000123")).load()


def test_half_plus_two_vs_half_plus_three_mean_abs_diff_is_one(half_plus_two, half_plus_three):
    """Each shadowed method's answers as the replica's code writes them (y = x/2 + 2 vs + 3)."""
    from deployments.replica import inference, tfs_grpc_calls, v2_calls

    x = [[1.0], [2.0], [5.0]]
    x_proto = tensor(DT_FLOAT, [3, 1], float_val=[1.0, 2.0, 5.0])
    request = predict_pb2.PredictRequest()
    request.inputs["x"].CopyFrom(x_proto)
    v2_doc = {"inputs": [{"name": "x", "shape": [3, 1], "datatype": "FP32", "data": x}]}
    v2_binary = {**v2_doc, "parameters": {"binary_data_output": True}}
    v2_request = v2_protos.ModelInferRequest(model_name="m")
    v2_request.inputs.add(name="x", datatype="FP32", shape=[3, 1]).contents.fp32_contents.extend(
        [1.0, 2.0, 5.0]
    )

    def answers(model) -> dict[str, bytes]:
        return {
            "predict": inference.predict_json(model, {"instances": x}).encode(),
            "Predict": tfs_grpc_calls.predict(model, request, "m", 1).SerializeToString(),
            "Predict content": tfs_grpc_calls.predict(
                model, request, "m", 1, tensor_content=True
            ).SerializeToString(),
            "v2_infer": v2_calls.infer(
                model, struct.pack("!q", -1) + json.dumps(v2_doc).encode(), "m", 1
            ),
            "v2_infer binary": v2_calls.infer(
                model, struct.pack("!q", -1) + json.dumps(v2_binary).encode(), "m", 1
            ),
            "v2_grpc_infer": v2_calls.grpc_infer(model, v2_request.SerializeToString(), "m", 1),
        }

    two, three = answers(half_plus_two), answers(half_plus_three)
    for key in two:
        method = key.split()[0]
        name = "predictions" if method == "predict" else "y"
        got = compare_answers(method, two[key], three[key])
        assert got == Comparison({name: OutputDiff(1.0, 1.0)}), key
        assert compare_answers(method, two[key], two[key]) == Comparison(
            {name: OutputDiff(0.0, 0.0)}
        ), key
