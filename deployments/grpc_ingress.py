"""gRPC API (TF Serving's PredictionService and ModelService, plus grpc.health.v1.Health) served by
each router replica on a grpc.aio server (deployments/ingress.py).

Unchanged TF Serving clients reach it: no `application` metadata or other extra is needed. Each method resolves the
ModelSpec against the same serving map as REST, then the version's deployment runs
deployments/proto_api.py on the serialized request. Errors carry TF Serving's status code and
message, truncated to 1024 characters as TF Serving does.
"""
from __future__ import annotations

import logging
import time

import grpc

from deployments.errors import AspireError, invalid_argument
from deployments.names import check_name

log = logging.getLogger("aspire.grpc")

MAX_MESSAGE_CHARS = 1024
HEALTH_SERVICES = ("", "tensorflow.serving.ModelService", "tensorflow.serving.PredictionService")
STATES = {"START": 10, "LOADING": 20, "AVAILABLE": 30, "UNLOADING": 40, "END": 50}


def add_servicers(servicer, server, health: bool) -> None:
    """Register the router as TF Serving's PredictionService and ModelService on `server`, and,
    with --enable_grpc_healthcheck_service, grpc.health.v1.Health (Check only; List and Watch
    answer UNIMPLEMENTED)."""
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(servicer, server)
    if health:
        from grpc_health.v1 import health_pb2_grpc

        class Health(health_pb2_grpc.HealthServicer):
            Check = servicer.Check
        health_pb2_grpc.add_HealthServicer_to_server(Health(), server)


def truncate(message: str) -> str:
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return message[:MAX_MESSAGE_CHARS] + "...TRUNCATED"


def set_error(grpc_context, err: AspireError) -> None:
    grpc_context.set_code(grpc.StatusCode[err.code])
    grpc_context.set_details(truncate(err.message))


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


# gRPC method -> the `api` label of Aspire's request metrics (REST uses the same words).
API_LABELS = {"Predict": "predict", "Classify": "classify", "Regress": "regress",
              "MultiInference": "multi_inference", "GetModelMetadata": "metadata"}


class GrpcIngress:
    """Mixed into the Router deployment: one method per gRPC method name."""

    tensor_content: bool = False
    health_enabled: bool = False

    async def _version_call(self, method: str, request, spec, response_cls, grpc_context):
        from deployments.router import resolve
        started = time.perf_counter()
        seen = {"name": "", "version": "", "api": API_LABELS[method]}
        code = "OK"
        try:
            if spec is None:
                raise invalid_argument("Missing ModelSpec")
            name, version, label = spec_target(spec)
            seen["name"] = name
            version, where = resolve(self._map, name, version, label)
            seen["version"] = str(version)
            code, payload = await self._call(where, "grpc", method, request.SerializeToString(),
                                             name, version, self.tensor_content)
            if code != "OK":
                raise AspireError(payload, code)
            return response_cls.FromString(payload)
        except AspireError as err:
            code = err.code
            set_error(grpc_context, err)
        except Exception as exc:
            log.exception("gRPC %s failed", method)
            code = "INTERNAL"
            set_error(grpc_context, AspireError(f"Internal error: {type(exc).__name__}", "INTERNAL"))
        finally:
            self.record(seen, "grpc", code, time.perf_counter() - started)
        return response_cls()

    @staticmethod
    def _spec(request):
        return request.model_spec if request.HasField("model_spec") else None

    async def Predict(self, request, grpc_context):
        from tensorflow_serving.apis import predict_pb2
        return await self._version_call("Predict", request, self._spec(request),
                                        predict_pb2.PredictResponse, grpc_context)

    async def Classify(self, request, grpc_context):
        from tensorflow_serving.apis import classification_pb2
        return await self._version_call("Classify", request, self._spec(request),
                                        classification_pb2.ClassificationResponse, grpc_context)

    async def Regress(self, request, grpc_context):
        from tensorflow_serving.apis import regression_pb2
        return await self._version_call("Regress", request, self._spec(request),
                                        regression_pb2.RegressionResponse, grpc_context)

    async def MultiInference(self, request, grpc_context):
        from tensorflow_serving.apis import inference_pb2
        # The servable is resolved from the first task; proto_api checks that all tasks agree.
        spec = request.tasks[0].model_spec if request.tasks else None
        if request.tasks and not spec.name:
            set_error(grpc_context, invalid_argument("Found ModelSpec with an empty model name."))
            return inference_pb2.MultiInferenceResponse()
        return await self._version_call("MultiInference", request, spec,
                                        inference_pb2.MultiInferenceResponse, grpc_context)

    async def GetModelMetadata(self, request, grpc_context):
        from tensorflow_serving.apis import get_model_metadata_pb2

        from deployments.proto_api import validate_metadata_request
        try:  # TF Serving checks the fields before it looks the model up
            validate_metadata_request(request)
        except AspireError as err:
            set_error(grpc_context, err)
            return get_model_metadata_pb2.GetModelMetadataResponse()
        return await self._version_call("GetModelMetadata", request, self._spec(request),
                                        get_model_metadata_pb2.GetModelMetadataResponse, grpc_context)

    async def GetModelStatus(self, request, grpc_context):
        from tensorflow_serving.apis import get_model_status_pb2
        response = get_model_status_pb2.GetModelStatusResponse()
        try:
            if not request.HasField("model_spec"):
                raise invalid_argument("Missing ModelSpec")
            name, version, _label = spec_target(request.model_spec)  # status ignores labels
            code, payload = await self.ask_manager("model_status", name, version)
            if code != "OK":
                raise AspireError(payload, code)
        except AspireError as err:
            set_error(grpc_context, err)
            return response
        from deployments.errors import CODES
        for s in payload:
            entry = response.model_version_status.add(version=s["version"], state=STATES[s["state"]])
            entry.status.error_code = CODES.index(s["error_code"])
            entry.status.error_message = s["error_message"]
        return response

    async def HandleReloadConfigRequest(self, request, grpc_context):
        from tensorflow_serving.apis import model_management_pb2

        from cluster.model_config import labels_from_config, models_from_config
        response = model_management_pb2.ReloadConfigResponse()
        try:
            models = models_from_config(request.config)
            if request.config.WhichOneof("config") is not None:  # empty config: no action
                before = set(await self.ask_manager("configured_models"))
                from deployments.router import SLOW_MANAGER_CALL_S
                code, message = await self.ask_manager("reload_config", models,
                                                       labels_from_config(request.config),
                                                       timeout_s=SLOW_MANAGER_CALL_S)
                if code != "OK":
                    raise AspireError(message, code)
                # As in TF Serving, the call waits for the newly named models only.
                await self._wait_settled([m.name for m in models if m.name not in before])
        except AspireError as err:
            set_error(grpc_context, err)
            from deployments.errors import CODES
            response.status.error_code = CODES.index(err.code)
            response.status.error_message = err.message
        return response

    async def _wait_settled(self, names: list[str], timeout_s: float = 300.0) -> None:
        """TF Serving's reload returns once every named model has a version AVAILABLE or END."""
        result = await self.ask_manager("wait_for_models", names, timeout_s, timeout_s=timeout_s + 30)
        failures = [f"{{name: {n} version: {s['version']}}} due to error: "
                    f"{s['error_code']}: {s['error_message']}" for n, s in result["failed"].items()]
        failures += [f"{{name: {n}}} due to error: no version became available in {timeout_s:.0f} s"
                     for n in result["pending"]]
        if failures:
            raise AspireError(f"{len(failures)} model(s) did not become available: "
                              + "".join(f"{{{f}}}, " for f in failures), "UNKNOWN")

    async def Check(self, request, grpc_context):
        from grpc_health.v1 import health_pb2
        if request.service not in HEALTH_SERVICES:
            set_error(grpc_context, AspireError(f"Unknown service: {request.service}", "NOT_FOUND"))
            return health_pb2.HealthCheckResponse()
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

