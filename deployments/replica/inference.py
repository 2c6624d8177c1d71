"""The request-handling core shared by every protocol: signature lookup, input checks, the run,
and classify/regress result extraction, on one loaded version. REST (JSON) entry points are here;
the gRPC ingress converts TensorProtos to the same numpy inputs and calls the same functions.

--enable_signature_method_name_check (`check` below, off by default as in TF Serving) makes the
calls check their signature's method_name as TF Serving's util.cc feature flag does, REST and
gRPC alike:
- Predict (predict_util.cc VerifySignature): the method must be one of predict, classify or
  regress, else INTERNAL (TF Serving's code for it: REST 500), checked after the signature is
  found and the request decoded, before the inputs are matched.
- Classify / Regress (classifier.cc, regressor.cc): classify / regress exactly, else
  INVALID_ARGUMENT, checked right after the signature is found, before its inputs and outputs.
- MultiInference: each task's signature as its task's Classify or Regress would.
With the check off, no signature's method_name is read; a MultiInference task's own method_name
is checked either way (tfs_grpc_calls.py).
"""

from __future__ import annotations

import numpy as np
from google.protobuf import json_format, text_format

from core.errors import AspireError, internal, invalid_argument
from deployments.replica.loader import ServedModel
from deployments.wire import tfs_json, tfs_json_response

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"


def check_predict_method(signature) -> None:
    """predict_util.cc VerifySignature, with the method-name check on."""
    if signature.method_name not in (PREDICT_METHOD, CLASSIFY_METHOD, REGRESS_METHOD):
        raise internal(
            "Expected prediction signature method_name to be one of {"
            f"{PREDICT_METHOD}, {CLASSIFY_METHOD}, {REGRESS_METHOD}}}. "
            f"Was: {signature.method_name}"
        )


def _check_example_method(signature, kind: str, method: str) -> None:
    """classifier.cc / regressor.cc, with the method-name check on."""
    if signature.method_name != method:
        raise invalid_argument(
            f"Expected {kind} signature method_name to be {method}. Was: {signature.method_name}"
        )


def tensor_spec(info) -> tfs_json.TensorSpec:
    from tensorflow.core.framework import types_pb2

    shape = None if info.tensor_shape.unknown_rank else tuple(d.size for d in info.tensor_shape.dim)
    dtype = types_pb2.DataType.Name(info.dtype)
    if dtype.endswith("_REF"):  # TF1 variables are fetched as values of the base type
        dtype = dtype[: -len("_REF")]
    return tfs_json.TensorSpec(dtype, shape)


def signature_metadata(model: ServedModel) -> dict:
    """`metadata.signature_def` of GET /metadata: the SignatureDefMap as protobuf JSON."""
    return {
        "signature_def": {
            name: json_format.MessageToDict(
                sig, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
            )
            for name, sig in model.signatures.items()
        }
    }


def _predict_signature(model: ServedModel, name: str):
    key = name or DEFAULT_SIGNATURE
    signature = model.signatures.get(key)
    if signature is None:
        raise invalid_argument(
            f'Serving signature name: "{tfs_json._text(key)}" not found in signature def'
        )
    if not signature.inputs:
        raise invalid_argument(f"Failed to get input map for signature: {name or 'DEFAULT'}")
    return key, signature


def predict_json(model: ServedModel, doc: dict, check: bool = False) -> str:
    key, signature = _predict_signature(model, tfs_json.signature_name_of(doc))
    specs = {alias: tensor_spec(info) for alias, info in signature.inputs.items()}
    inputs, fmt = tfs_json.decode_predict_request(doc, specs)
    if check:  # TF Serving decodes the JSON body first, then runs Predict, which checks
        check_predict_method(signature)
    outputs = model.run(key, inputs)
    dtypes = {alias: tensor_spec(info).dtype for alias, info in signature.outputs.items()}
    return tfs_json_response.encode_predict_response(outputs, fmt, dtypes)


def _debug(signature) -> str:
    return text_format.MessageToString(signature, as_one_line=True)


def _example_signature(model: ServedModel, name: str):
    key = name or DEFAULT_SIGNATURE
    signature = model.signatures.get(key)
    if signature is None:
        raise invalid_argument(f"No signature was found with the name: {tfs_json._text(key)}")
    return key, signature


def _serialized_examples(doc: dict) -> np.ndarray:
    examples, context = tfs_json.decode_examples(doc)
    # A serialized context followed by a serialized example parses as their merge: this is how
    # TF Serving feeds ExampleListWithContext to a graph that takes tf.Example strings.
    prefix = context or b""
    return np.array([prefix + e for e in examples], dtype=object)


def classify(
    model: ServedModel, signature_name: str, serialized: np.ndarray, check: bool = False
) -> list[list[tuple[str, float]]]:
    key, signature = _example_signature(model, signature_name)
    if check:
        _check_example_method(signature, "classification", CLASSIFY_METHOD)
    # TF Serving's order of checks (classifier.cc): counts first, then names.
    if len(signature.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    if len(signature.outputs) not in (1, 2):
        raise invalid_argument(
            f"Expected one or two output Tensors, found {len(signature.outputs)}"
        )
    if "inputs" not in signature.inputs:
        raise invalid_argument(
            f"No classification inputs found in SignatureDef: {_debug(signature)}"
        )
    wanted = [a for a in ("classes", "scores") if a in signature.outputs]
    if not wanted:
        raise invalid_argument(
            'Expected classification signature outputs to contain at least one of "classes" or '
            f'"scores". Signature was: {_debug(signature)}'
        )
    if len(serialized) == 0:
        raise invalid_argument("Input is empty.")
    out = model.run(key, {"inputs": serialized}, wanted)
    n = len(serialized)
    classes, scores = out.get("classes"), out.get("scores")
    for alias, tensor in out.items():
        if tensor.ndim != 2 or tensor.shape[0] != n:
            raise invalid_argument(
                f"Expected Tensor shape: [{n} ?] but got {list(tensor.shape)}"
                if tensor.ndim == 2
                else f"Expected {alias} Tensor of rank 2, got {tensor.ndim}"
            )
    shaped = classes if classes is not None else scores
    assert shaped is not None  # run() answers every alias in `wanted`: one of the two at least
    width = shaped.shape[1]
    results = []
    for i in range(n):
        row = []
        for j in range(width):
            label = classes[i, j] if classes is not None else b""
            label = label.decode("utf-8", "replace") if isinstance(label, bytes) else str(label)
            row.append((label, float(scores[i, j]) if scores is not None else 0.0))
        results.append(row)
    return results


def regress(
    model: ServedModel, signature_name: str, serialized: np.ndarray, check: bool = False
) -> list[float]:
    key, signature = _example_signature(model, signature_name)
    if check:
        _check_example_method(signature, "regression", REGRESS_METHOD)
    # TF Serving's order of checks (regressor.cc): counts first, then names.
    if len(signature.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    if len(signature.outputs) != 1:
        raise invalid_argument("Expected one output Tensor.")
    if "inputs" not in signature.inputs:
        raise invalid_argument(f"No regression inputs found in SignatureDef: {_debug(signature)}")
    if "outputs" not in signature.outputs:
        raise invalid_argument(f"No regression outputs found in SignatureDef: {_debug(signature)}")
    if len(serialized) == 0:
        raise invalid_argument("Input is empty.")
    values = model.run(key, {"inputs": serialized}, ["outputs"])["outputs"]
    n = len(serialized)
    if not (values.shape == (n,) or values.shape == (n, 1)):
        raise invalid_argument(
            f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got "
            f"{list(values.shape)}"
        )
    return [float(v) for v in values.reshape(n)]


def classify_json(model: ServedModel, doc: dict, check: bool = False) -> str:
    # As in TF Serving, the whole body becomes a request before the signature is looked up.
    name, serialized = tfs_json.signature_name_of(doc), _serialized_examples(doc)
    return tfs_json_response.encode_classify_response(classify(model, name, serialized, check))


def regress_json(model: ServedModel, doc: dict, check: bool = False) -> str:
    name, serialized = tfs_json.signature_name_of(doc), _serialized_examples(doc)
    return tfs_json_response.encode_regress_response(regress(model, name, serialized, check))


REST_VERBS = {"predict": predict_json, "classify": classify_json, "regress": regress_json}


def handle_rest(
    model: ServedModel, verb: str, doc: dict, method_name_check: bool = False
) -> tuple[str, str]:
    """(status code name, JSON body or error message) for one REST inference call;
    `method_name_check`: --enable_signature_method_name_check."""
    try:
        return "OK", REST_VERBS[verb](model, doc, method_name_check)
    except AspireError as err:
        return err.code, err.message
