"""TF Serving's gRPC API (PredictionService, ModelService, and grpc.health.v1.Health) as a thin
adapter around the router core (deployments/router/core.py), on each router's grpc.aio server
(deployments/router/servers.py).

Unchanged TF Serving clients reach it: no `application` metadata or other extra is needed.
PredictionService methods are registered with no (de)serializers: the router receives the
request's bytes, reads only its ModelSpec (`model_spec_parts`, a scan of the top-level fields
that skips the tensors), resolves it against the same serving map as REST, and forwards the
bytes to the version's replica, whose serialized response it returns as it came. MultiInference
and GetModelMetadata are decoded whole in the router, because TF Serving checks their fields
before it looks the model up. Errors carry TF Serving's status code and message, truncated to
1024 characters as TF Serving does.
"""

from __future__ import annotations

import logging
import time

import grpc

from core.errors import CODES, AspireError, invalid_argument
from core.names import check_name
from deployments.router.core import SLOW_MANAGER_CALL_S, RouterCore, Seen

log = logging.getLogger("aspire.grpc")

MAX_MESSAGE_CHARS = 1024
PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
HEALTH_SERVICES = ("", "tensorflow.serving.ModelService", PREDICTION_SERVICE)
STATES = {"START": 10, "LOADING": 20, "AVAILABLE": 30, "UNLOADING": 40, "END": 50}
# gRPC method -> the `api` label of Aspire's request metrics (REST uses the same words).
API_LABELS = {
    "Predict": "predict",
    "Classify": "classify",
    "Regress": "regress",
    "MultiInference": "multi_inference",
    "GetModelMetadata": "metadata",
}


def add_servicers(api: "GrpcApi", server, health: bool) -> None:
    """Register PredictionService (bytes in, bytes out), ModelService and, with
    --enable_grpc_healthcheck_service, grpc.health.v1.Health (Check only; List and Watch answer
    UNIMPLEMENTED) on `server`."""
    from tensorflow_serving.apis import model_service_pb2_grpc

    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                PREDICTION_SERVICE,
                {
                    method: grpc.unary_unary_rpc_method_handler(api.forwarder(method))
                    for method in API_LABELS
                },
            ),
        )
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(api, server)
    if health:
        from grpc_health.v1 import health_pb2_grpc

        class Health(health_pb2_grpc.HealthServicer):
            Check = api.Check

        health_pb2_grpc.add_HealthServicer_to_server(Health(), server)


def truncate(message: str) -> str:
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return message[:MAX_MESSAGE_CHARS] + "...TRUNCATED"


def set_error(grpc_context, err: AspireError) -> None:
    grpc_context.set_code(grpc.StatusCode[err.code])
    grpc_context.set_details(truncate(err.message))


def fail(grpc_context, exc: Exception, method: str) -> str:
    """End the call with `exc`: an AspireError's code and message, anything else INTERNAL with
    only its type (the log has the trace). Call it in the `except` block; returns the code."""
    if not isinstance(exc, AspireError):
        log.exception("gRPC %s failed", method)
        exc = AspireError(f"Internal error: {type(exc).__name__}", "INTERNAL")
    set_error(grpc_context, exc)
    return exc.code


def metadata_value(grpc_context, name: str) -> str | None:
    """The value of the call's metadata entry `name` (lower case), None without one."""
    for key, value in grpc_context.invocation_metadata() or ():
        if key == name:
            return value if isinstance(value, str) else None
    return None


def spec_target(spec) -> tuple[str, int | None, str | None]:
    """(name, version, label) a ModelSpec asks for; TF Serving's ModelSpec errors."""
    if not spec.name:
        raise invalid_argument("ModelSpec has no name specified.")
    name = check_name(spec.name)
    if spec.HasField("version"):
        return name, spec.version.value, None
    if spec.version_label:
        return name, None, check_name(spec.version_label, "model version label")
    return name, None, None


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def string_fields(request: bytes, numbers: tuple[int, ...]) -> dict[int, list[bytes]] | None:
    """Every occurrence of the length-delimited top-level fields `numbers` of a serialized
    message, found by walking its top-level fields without decoding them. None when the bytes
    are not a well-formed message or one of `numbers` comes with another wire type."""
    found: dict[int, list[bytes]] = {n: [] for n in numbers}
    pos, end = 0, len(request)
    try:
        while pos < end:
            key, pos = _varint(request, pos)
            number, wire = key >> 3, key & 7
            if number == 0:
                return None
            if wire == 0:
                _, pos = _varint(request, pos)
            elif wire == 1:
                pos += 8
            elif wire == 2:
                length, pos = _varint(request, pos)
                if number in found:
                    found[number].append(request[pos : pos + length])
                pos += length
            elif wire == 5:
                pos += 4
            else:
                return None
            if number in found and wire != 2:
                return None
    except (IndexError, ValueError):
        return None
    return found if pos == end else None


def model_spec_parts(request: bytes) -> list[bytes] | None:
    """Every occurrence of field 1 (`model_spec`) of a serialized Predict, Classify or Regress
    request; their concatenation parses as the merged ModelSpec, as protobuf merges repeated
    occurrences. [] when there is none; None when the bytes are not a well-formed message."""
    found = string_fields(request, (1,))
    return None if found is None else found[1]


def _decode(request_cls, request: bytes):
    from google.protobuf.message import DecodeError

    try:
        return request_cls.FromString(request)
    except DecodeError as exc:
        raise invalid_argument(
            f"Could not parse {request_cls.DESCRIPTOR.full_name}: {exc}"
        ) from None


class GrpcApi:
    """PredictionService forwarders, ModelService methods and the health check."""

    def __init__(self, core: RouterCore) -> None:
        self.core = core

    def forwarder(self, method: str):
        async def forward(request: bytes, grpc_context) -> bytes:
            return await self._forward(method, request, grpc_context)

        return forward

    def _model_spec(self, method: str, request: bytes):
        """The ModelSpec the request names (None: it names none), with TF Serving's checks that
        come before the model lookup."""
        from tensorflow_serving.apis import model_pb2

        if method == "MultiInference":
            from tensorflow_serving.apis import inference_pb2

            decoded = _decode(inference_pb2.MultiInferenceRequest, request)
            # The servable is resolved from the first task; the replica checks that all tasks agree.
            if not decoded.tasks:
                return None
            if not decoded.tasks[0].model_spec.name:
                raise invalid_argument("Found ModelSpec with an empty model name.")
            return decoded.tasks[0].model_spec
        if method == "GetModelMetadata":
            from tensorflow_serving.apis import get_model_metadata_pb2

            from deployments.wire.tfs_requests import validate_metadata_request

            decoded = _decode(get_model_metadata_pb2.GetModelMetadataRequest, request)
            validate_metadata_request(decoded)  # TF Serving checks the fields before the model
            return decoded.model_spec if decoded.HasField("model_spec") else None
        parts = model_spec_parts(request)
        if parts is None:  # not a well-formed message: the full decode says why
            from deployments.wire.tfs_requests import request_class

            _decode(request_class(method), request)
            raise invalid_argument(f"Could not parse the {method} request")
        if not parts:
            return None
        return _decode(model_pb2.ModelSpec, b"".join(parts))

    async def _forward(self, method: str, request: bytes, grpc_context) -> bytes:
        started = time.perf_counter()
        seen = Seen(api=API_LABELS[method])
        code = "OK"
        try:
            spec = self._model_spec(method, request)
            if spec is None:
                raise invalid_argument("Missing ModelSpec")
            name, asked, label = spec_target(spec)
            seen.name = name
            key_name = self.core.experiment_key(name)  # a sticky experiment's request key
            key = metadata_value(grpc_context, key_name) if key_name else None
            version, address = self.core.resolve(name, asked, label, key)
            seen.version = str(version)
            unversioned = asked is None and label is None
            return await self.core.infer(name, unversioned, version, address, method, request)
        except Exception as exc:
            code = fail(grpc_context, exc, method)
        finally:
            self.core.record(seen, "grpc", code, time.perf_counter() - started)
        return b""

    async def GetModelStatus(self, request, grpc_context):
        from tensorflow_serving.apis import get_model_status_pb2

        response = get_model_status_pb2.GetModelStatusResponse()
        try:
            if not request.HasField("model_spec"):
                raise invalid_argument("Missing ModelSpec")
            name, version, _label = spec_target(request.model_spec)  # status ignores labels
            code, payload = await self.core.ask_manager("model_status", name, version)
            if code != "OK":
                raise AspireError(payload, code)
        except AspireError as err:
            set_error(grpc_context, err)
            return response
        for s in payload:
            entry = response.model_version_status.add(
                version=s["version"], state=STATES[s["state"]]
            )
            entry.status.error_code = CODES.index(s["error_code"])
            entry.status.error_message = s["error_message"]
        return response

    async def HandleReloadConfigRequest(self, request, grpc_context):
        from tensorflow_serving.apis import model_management_pb2

        from config.model_config import labels_from_config, models_from_config

        response = model_management_pb2.ReloadConfigResponse()
        try:
            models = models_from_config(request.config)
            if request.config.WhichOneof("config") is not None:  # empty config: no action
                before = set(await self.core.ask_manager("configured_models"))
                code, message = await self.core.ask_manager(
                    "reload_config",
                    models,
                    labels_from_config(request.config),
                    timeout_s=SLOW_MANAGER_CALL_S,
                )
                if code != "OK":
                    raise AspireError(message, code)
                # As in TF Serving, the call waits for the newly named models only.
                await self._wait_settled([m.name for m in models if m.name not in before])
        except AspireError as err:
            set_error(grpc_context, err)
            response.status.error_code = CODES.index(err.code)
            response.status.error_message = err.message
        return response

    async def _wait_settled(self, names: list[str], timeout_s: float = 300.0) -> None:
        """TF Serving's reload returns once every named model has a version AVAILABLE or END."""
        result = await self.core.ask_manager(
            "wait_for_models", names, timeout_s, timeout_s=timeout_s + 30
        )
        failures = [
            f"{{name: {n} version: {s['version']}}} due to error: "
            f"{s['error_code']}: {s['error_message']}"
            for n, s in result["failed"].items()
        ]
        failures += [
            f"{{name: {n}}} due to error: no version became available in {timeout_s:.0f} s"
            for n in result["pending"]
        ]
        if failures:
            raise AspireError(
                f"{len(failures)} model(s) did not become available: "
                + "".join(f"{{{f}}}, " for f in failures),
                "UNKNOWN",
            )

    async def Check(self, request, grpc_context):
        from grpc_health.v1 import health_pb2

        if request.service not in HEALTH_SERVICES:
            set_error(grpc_context, AspireError(f"Unknown service: {request.service}", "NOT_FOUND"))
            return health_pb2.HealthCheckResponse()
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
