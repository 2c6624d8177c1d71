"""The Open Inference Protocol's gRPC service (`inference.GRPCInferenceService`, KServe v2 and
Triton's gRPC protocol) on the gRPC port, beside TF Serving's PredictionService, sharing the
router core: the serving map, version resolution (the request's `version`; without one, the
traffic split and Latest, as for TF Serving requests), the direct path to replicas, auth,
message limits and metrics (`protocol="v2_grpc"`).

Methods (messages: deployments/wire/v2_protos.py):
- `ServerLive` (live while the router serves), `ServerReady` (ready once the manager has settled
  its initial loads), `ServerMetadata` (name, version, extensions).
- `ModelReady`: ready while the version (or, without one, a version of the model) is AVAILABLE;
  `ready: false` for a model or version that does not serve, as Triton answers.
- `ModelMetadata`: the serving signature's inputs and outputs (from the replica's `v2_metadata`);
  without a version, `versions` lists every AVAILABLE one.
- `ModelInfer`: bytes in, bytes out, as PredictionService: the router reads only `model_name` and
  `model_version` (a scan of the top-level fields) and the replica decodes the request, checks
  it against the signature, runs it and answers every output in `raw_output_contents`
  (deployments/replica/v2_calls.py, `grpc_infer`).
The protocol's other methods answer UNIMPLEMENTED. Errors carry TF's status code (the same
words as gRPC's) and message.
"""

from __future__ import annotations

import json
import time

import grpc

from core.errors import AspireError, invalid_argument
from core.names import check_name, escape
from deployments.router.core import RouterCore, Seen
from deployments.router.tfs_grpc import fail, metadata_value, string_fields
from deployments.router.v2_rest import EXTENSIONS, parse_version, server_version
from deployments.wire.v2_protos import CLASSES, METHODS, SERVICE

PROTOCOL = "v2_grpc"
NOT_SERVING = ("NOT_FOUND", "FAILED_PRECONDITION", "UNAVAILABLE")


def _name(raw: bytes | str) -> str:
    try:
        name = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        raise invalid_argument(f"Failed to decode model name: {escape(repr(raw), 256)}") from None
    if not name:
        raise invalid_argument("the request names no model ('name' is empty)")
    return check_name(name)


class V2Grpc:
    """The service's handlers, each recorded in the metrics under its `api` word."""

    def __init__(self, core: RouterCore) -> None:
        self.core = core

    def add_to(self, server) -> None:
        handlers = {
            "ServerLive": self._server_live,
            "ServerReady": self._server_ready,
            "ServerMetadata": self._server_metadata,
            "ModelReady": self._model_ready,
            "ModelMetadata": self._model_metadata,
        }
        methods = {
            method: grpc.unary_unary_rpc_method_handler(
                self._handler(method, handler, CLASSES[METHODS[method][1]]),
                request_deserializer=CLASSES[METHODS[method][0]].FromString,
                response_serializer=CLASSES[METHODS[method][1]].SerializeToString,
            )
            for method, handler in handlers.items()
        }
        # ModelInfer: no (de)serializers, the replica reads and writes the messages
        methods["ModelInfer"] = grpc.unary_unary_rpc_method_handler(
            self._handler("ModelInfer", self._model_infer, bytes)
        )
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, methods),))

    def _handler(self, method: str, handler, empty):
        api = {"ModelInfer": "infer", "ModelMetadata": "metadata"}.get(method, method)

        async def handle(request, grpc_context):
            started, seen, code = time.perf_counter(), Seen(api=api), "OK"
            try:
                if method == "ModelInfer":  # a sticky experiment reads the call's metadata
                    return await handler(request, seen, grpc_context)
                return await handler(request, seen)
            except Exception as exc:
                code = fail(grpc_context, exc, method)
            finally:
                self.core.record(seen, PROTOCOL, code, time.perf_counter() - started)
            return empty()

        return handle

    async def _server_live(self, request, seen: Seen):
        return CLASSES["ServerLiveResponse"](live=True)

    async def _server_ready(self, request, seen: Seen):
        return CLASSES["ServerReadyResponse"](ready=bool(await self.core.ask_manager("ready")))

    async def _server_metadata(self, request, seen: Seen):
        return CLASSES["ServerMetadataResponse"](
            name="aspire", version=server_version(), extensions=EXTENSIONS
        )

    async def _model_ready(self, request, seen: Seen):
        seen.name = name = _name(request.name)
        version = parse_version(request.version)
        try:
            resolved, _ = self.core.resolve(name, version, None)
        except AspireError as err:
            if err.code in NOT_SERVING:
                return CLASSES["ModelReadyResponse"](ready=False)
            raise
        seen.version = str(resolved)
        return CLASSES["ModelReadyResponse"](ready=True)

    async def _model_metadata(self, request, seen: Seen):
        seen.name = name = _name(request.name)
        version = parse_version(request.version)
        resolved, address = self.core.resolve(name, version, None)
        seen.version = str(resolved)
        doc = json.loads(await self.core.call(address, "v2_metadata", b""))
        if version is None:  # every AVAILABLE version of the model
            doc["versions"] = [str(v) for v in sorted(self.core.map.models.get(name, {}))]
        return CLASSES["ModelMetadataResponse"](**doc)

    async def _model_infer(self, request: bytes, seen: Seen, grpc_context=None) -> bytes:
        fields = string_fields(request, (1, 2))
        if fields is None:
            raise invalid_argument("Could not parse inference.ModelInferRequest")
        # proto3 strings: the last occurrence wins
        seen.name = name = _name(fields[1][-1] if fields[1] else b"")
        raw_version = fields[2][-1] if fields[2] else b""
        version = parse_version(raw_version.decode("utf-8", "replace"))
        key_name = self.core.experiment_key(name)  # a sticky experiment's request key
        key = metadata_value(grpc_context, key_name) if key_name and grpc_context else None
        resolved, address = self.core.resolve(name, version, None, key)
        seen.version = str(resolved)
        return await self.core.infer(
            name, version is None, resolved, address, "v2_grpc_infer", request
        )
