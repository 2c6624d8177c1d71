"""The Open Inference Protocol's gRPC messages (package `inference`, service
`GRPCInferenceService`), built in code from the protocol's specification (KServe's
`grpc_predict_v2.proto`, with the two InferParameter choices Triton adds), in a descriptor pool of
their own.

Why in code: no package Aspire installs ships these messages, and generated modules would tie
them to one protobuf release. Why a pool of its own: a client library in the same process
(`tritonclient.grpc` registers the same full names in the default pool) cannot clash with them.
Field numbers and types are the wire contract; tests/unit/test_v2_grpc.py checks every one against
`tritonclient.grpc.service_pb2`.

Only the methods Aspire serves are declared (`METHODS`); the server answers the protocol's other
methods (streaming, statistics, repository, shared memory, trace and log settings) UNIMPLEMENTED.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "inference"
SERVICE = f"{PACKAGE}.GRPCInferenceService"

_F = descriptor_pb2.FieldDescriptorProto
BOOL, INT32, INT64, UINT32, UINT64 = (
    _F.TYPE_BOOL,
    _F.TYPE_INT32,
    _F.TYPE_INT64,
    _F.TYPE_UINT32,
    _F.TYPE_UINT64,
)
FLOAT, DOUBLE, STRING, BYTES, MESSAGE = (
    _F.TYPE_FLOAT,
    _F.TYPE_DOUBLE,
    _F.TYPE_STRING,
    _F.TYPE_BYTES,
    _F.TYPE_MESSAGE,
)
ONE, MANY = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
PARAMETERS = ("parameters", "map")  # map<string, InferParameter>

# message -> its fields: (name, number, type or a message's name, label), or (name, "map") at the
# number that follows; nested messages are named "Outer.Inner".
MESSAGES: dict[str, list[tuple]] = {
    "ServerLiveRequest": [],
    "ServerLiveResponse": [("live", 1, BOOL, ONE)],
    "ServerReadyRequest": [],
    "ServerReadyResponse": [("ready", 1, BOOL, ONE)],
    "ModelReadyRequest": [("name", 1, STRING, ONE), ("version", 2, STRING, ONE)],
    "ModelReadyResponse": [("ready", 1, BOOL, ONE)],
    "ServerMetadataRequest": [],
    "ServerMetadataResponse": [
        ("name", 1, STRING, ONE),
        ("version", 2, STRING, ONE),
        ("extensions", 3, STRING, MANY),
    ],
    "ModelMetadataRequest": [("name", 1, STRING, ONE), ("version", 2, STRING, ONE)],
    "ModelMetadataResponse": [
        ("name", 1, STRING, ONE),
        ("versions", 2, STRING, MANY),
        ("platform", 3, STRING, ONE),
        ("inputs", 4, "ModelMetadataResponse.TensorMetadata", MANY),
        ("outputs", 5, "ModelMetadataResponse.TensorMetadata", MANY),
    ],
    "ModelMetadataResponse.TensorMetadata": [
        ("name", 1, STRING, ONE),
        ("datatype", 2, STRING, ONE),
        ("shape", 3, INT64, MANY),
    ],
    "InferParameter": [  # one of these (oneof parameter_choice)
        ("bool_param", 1, BOOL, ONE),
        ("int64_param", 2, INT64, ONE),
        ("string_param", 3, STRING, ONE),
        ("double_param", 4, DOUBLE, ONE),
        ("uint64_param", 5, UINT64, ONE),
    ],
    "InferTensorContents": [
        ("bool_contents", 1, BOOL, MANY),
        ("int_contents", 2, INT32, MANY),
        ("int64_contents", 3, INT64, MANY),
        ("uint_contents", 4, UINT32, MANY),
        ("uint64_contents", 5, UINT64, MANY),
        ("fp32_contents", 6, FLOAT, MANY),
        ("fp64_contents", 7, DOUBLE, MANY),
        ("bytes_contents", 8, BYTES, MANY),
    ],
    "ModelInferRequest": [
        ("model_name", 1, STRING, ONE),
        ("model_version", 2, STRING, ONE),
        ("id", 3, STRING, ONE),
        ("parameters", 4, "map", MANY),
        ("inputs", 5, "ModelInferRequest.InferInputTensor", MANY),
        ("outputs", 6, "ModelInferRequest.InferRequestedOutputTensor", MANY),
        ("raw_input_contents", 7, BYTES, MANY),
    ],
    "ModelInferRequest.InferInputTensor": [
        ("name", 1, STRING, ONE),
        ("datatype", 2, STRING, ONE),
        ("shape", 3, INT64, MANY),
        ("parameters", 4, "map", MANY),
        ("contents", 5, "InferTensorContents", ONE),
    ],
    "ModelInferRequest.InferRequestedOutputTensor": [
        ("name", 1, STRING, ONE),
        ("parameters", 2, "map", MANY),
    ],
    "ModelInferResponse": [
        ("model_name", 1, STRING, ONE),
        ("model_version", 2, STRING, ONE),
        ("id", 3, STRING, ONE),
        ("parameters", 4, "map", MANY),
        ("outputs", 5, "ModelInferResponse.InferOutputTensor", MANY),
        ("raw_output_contents", 6, BYTES, MANY),
    ],
    "ModelInferResponse.InferOutputTensor": [
        ("name", 1, STRING, ONE),
        ("datatype", 2, STRING, ONE),
        ("shape", 3, INT64, MANY),
        ("parameters", 4, "map", MANY),
        ("contents", 5, "InferTensorContents", ONE),
    ],
}
ONEOFS = {"InferParameter": "parameter_choice"}
# method -> (request, response); all unary
METHODS = {
    "ServerLive": ("ServerLiveRequest", "ServerLiveResponse"),
    "ServerReady": ("ServerReadyRequest", "ServerReadyResponse"),
    "ModelReady": ("ModelReadyRequest", "ModelReadyResponse"),
    "ServerMetadata": ("ServerMetadataRequest", "ServerMetadataResponse"),
    "ModelMetadata": ("ModelMetadataRequest", "ModelMetadataResponse"),
    "ModelInfer": ("ModelInferRequest", "ModelInferResponse"),
}


def _add_message(container, full: str, fields: list[tuple]) -> None:
    message = container.add(name=full.rsplit(".", 1)[-1])
    for name, number, kind, label in fields:
        field = message.field.add(name=name, number=number, label=label)
        if kind == "map":  # map<string, InferParameter>: a nested ParametersEntry message
            entry = message.nested_type.add(name="ParametersEntry")
            entry.options.map_entry = True
            entry.field.add(name="key", number=1, label=ONE, type=STRING)
            entry.field.add(
                name="value",
                number=2,
                label=ONE,
                type=MESSAGE,
                type_name=f".{PACKAGE}.InferParameter",
            )
            field.type, field.type_name = MESSAGE, f".{PACKAGE}.{full}.ParametersEntry"
        elif isinstance(kind, str):
            field.type, field.type_name = MESSAGE, f".{PACKAGE}.{kind}"
        else:
            field.type = kind
    if full in ONEOFS:
        message.oneof_decl.add(name=ONEOFS[full])
        for field in message.field:
            field.oneof_index = 0
    for nested, nested_fields in MESSAGES.items():
        if nested.rsplit(".", 1)[0] == full and nested != full:
            _add_message(message.nested_type, nested, nested_fields)


def _file() -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto(
        name="aspire/inference/grpc_predict_v2.proto", package=PACKAGE, syntax="proto3"
    )
    for full, fields in MESSAGES.items():
        if "." not in full:
            _add_message(file.message_type, full, fields)
    service = file.service.add(name=SERVICE.rsplit(".", 1)[-1])
    for method, (request, response) in METHODS.items():
        service.method.add(
            name=method, input_type=f".{PACKAGE}.{request}", output_type=f".{PACKAGE}.{response}"
        )
    return file


POOL = descriptor_pool.DescriptorPool()
POOL.Add(_file())


def message_class(full: str):
    """The message class of `full` ("ModelInferRequest", "ModelMetadataResponse.TensorMetadata")."""
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(f"{PACKAGE}.{full}"))


CLASSES = {name: message_class(name) for name in MESSAGES}  # built once, at import
ModelInferRequest = CLASSES["ModelInferRequest"]
ModelInferResponse = CLASSES["ModelInferResponse"]
