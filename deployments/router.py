"""Router: TensorFlow Serving's REST API (`/v1/models/...`) and gRPC API, served by each router
replica itself (deployments/ingress.py) on the REST and gRPC ports.

Life of a request: the replica's HTTP server hands every path to `dispatch`; the raw
(percent-encoded) path is matched with TF Serving's own URL grammar; the body is parsed first
(JSON errors win over unknown models, as in TF Serving); the servable is resolved against the
serving map (Specific / label / Latest = highest AVAILABLE version); the call goes through a
DeploymentHandle to that version's deployment, which runs the shared request core and returns the
JSON body or a TF status. Status requests are answered by the manager.

The serving map is long-polled from the manager by a background thread; each poll acknowledges
the epoch applied, which is what lets the manager delete an unloaded version's deployment only
after no router can still pick it.
"""

import asyncio
import json
import logging
import random
import re
import threading
import time
import uuid
import zlib
from urllib.parse import unquote_to_bytes

import ray
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError
from starlette.requests import Request
from starlette.responses import Response

from deployments import json_tensor, metrics
from deployments.auth import CHALLENGE, BearerAuth, GrpcAuthInterceptor
from deployments.errors import (DEFAULT_MAX_BODY_BYTES, AspireError, BodyTooLarge, invalid_argument,
                                not_found)
from deployments.grpc_ingress import GrpcIngress, add_servicers
from deployments.ingress import Ingress
from deployments.names import check_name, escape
from policies.traffic import TrafficSplit, effective_weights, pick

log = logging.getLogger("aspire.router")

MANAGER_NAME = "aspire_manager"
NAMESPACE = "aspire"

POST_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.IGNORECASE)
GET_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE)
V1_PATH = re.compile(r"/v1/.*", re.IGNORECASE | re.DOTALL)
INT64_MAX = 2**63 - 1
# Aspire's own status (every model, where its replicas run, GPU and RAM reservations): not part
# of TF Serving's grammar, which answers no GET under /v1/ other than /v1/models/...
ASPIRE_STATUS_PATH = "/v1/aspire/status"
# Status calls take milliseconds; a manager that has not answered in this long is down or
# restarting (docs/reliability.md). Aspire's status and the metrics page gather more.
MANAGER_CALL_S = 5.0
SLOW_MANAGER_CALL_S = 15.0
HEALTH_PATH = "/healthz"  # Aspire's: 200 while the router serves, open even with auth on


def parse_path(method: str, raw_path: str) -> dict:
    """TF Serving's REST URL grammar. Returns {"kind", "name", "version", "label", ...}; raises
    INVALID_ARGUMENT with TF Serving's messages."""
    # Echoes of the request are cut to 256 characters: an error body stays small (TF Serving
    # echoes the whole path).
    malformed = invalid_argument(f"Malformed request: {method} {escape(raw_path, 256)}")
    if method == "POST":
        m = POST_PATH.fullmatch(raw_path)
        if not m or m.group(4) not in ("classify", "regress", "predict"):
            raise malformed
        name, version, label, verb = m.groups()
        kind = verb
    elif method == "GET":
        m = GET_PATH.fullmatch(raw_path)
        if not m or (m.group(4) is not None and m.group(4) != "metadata"):
            raise malformed
        name, version, label, sub = m.groups()
        if name is None:
            if version is not None or label is not None or sub is not None:
                raise malformed
            return {"kind": "list"}
        kind = "metadata" if sub else "status"
    else:
        raise malformed
    try:
        decoded = unquote_to_bytes(name).decode("utf-8")
    except UnicodeDecodeError:
        raise invalid_argument(f"Failed to decode model name:{escape(name, 256)}") from None
    if label is not None:
        try:
            label = unquote_to_bytes(label).decode("utf-8")
        except UnicodeDecodeError:
            raise invalid_argument(f"Failed to decode model version label:{escape(label, 256)}") from None
    if version is not None:
        # at most 19 significant digits fit an int64; Python refuses to parse past 4,300
        number = int(version) if len(version.lstrip("0")) <= 19 else INT64_MAX + 1
        if number > INT64_MAX:
            raise invalid_argument(f"Failed to convert version: {escape(version, 256)} to numeric.")
        version = number
    check_name(decoded)  # after decoding: %2e%2e%2f is refused as ../ is
    if label is not None:
        check_name(label, "model version label")
    return {"kind": kind, "name": decoded, "version": version, "label": label}


def resolve(serving_map: dict, name: str, version: int | None, label: str | None) -> tuple[int, dict]:
    """(version, where) of the servable a request names; NOT_FOUND as TF Serving words it.
    Without a version or label: the traffic split if the model has one, else Latest."""
    versions = serving_map.get("models", {}).get(name, {})
    if label is not None:
        labels = serving_map.get("labels", {}).get(name, {})
        if label not in labels:
            raise invalid_argument(f"Unrecognized servable version label: {label}")
        version = labels[label]
    if version is None:
        if not versions:
            raise not_found(f"Servable not found for request: Latest({name})")
        split = serving_map.get("traffic", {}).get(name)
        if split:  # Aspire's weighted canary traffic for unversioned requests
            weights = effective_weights(TrafficSplit(tuple(split)),
                                        serving_map.get("labels", {}).get(name, {}), set(versions))
            version = pick(weights, random.random())
        else:
            version = max(versions)
    elif version not in versions:
        raise not_found(f"Servable not found for request: Specific({name}, {version})")
    return version, versions[version]


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 once it is known to pass `limit`: from Content-Length
    before any of it is read, else (chunked) as soon as the bytes received pass it."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(int(declared), limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(None, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def gunzip_limited(body: bytes, limit: int) -> bytes:
    """gzip-decompress `body` (every member), never producing more than `limit` + 1 bytes: a
    gzip bomb costs at most the limit, then 413."""
    out, data = [], body
    size = 0
    while data:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            piece = inflater.decompress(data, limit + 1 - size)
        except zlib.error as exc:
            raise invalid_argument(f"Failed to decompress gzip request body: {exc}") from None
        size += len(piece)
        out.append(piece)
        if size > limit or inflater.unconsumed_tail:
            raise BodyTooLarge(None, limit, "Decompressed request body")
        if not inflater.eof:
            raise invalid_argument("Failed to decompress gzip request body: it ends before the "
                                   "end of its gzip stream")
        data = inflater.unused_data
    return b"".join(out)


def json_response(body, status: int = 200) -> Response:
    text = body if isinstance(body, str) else json.dumps(body, indent=1)
    return Response(text, status_code=status, media_type="application/json")


def error_response(err: AspireError) -> Response:
    return json_response({"error": err.message}, err.http)


def status_body(statuses: list[dict]) -> dict:
    return {"model_version_status": [
        {"version": str(s["version"]), "state": s["state"],
         "status": {"error_code": s["error_code"], "error_message": s["error_message"]}}
        for s in statuses]}


def _with_known_set(serving_map: dict) -> dict:
    """The map with its model names as a set: every request's metrics label looks one up."""
    return {**serving_map, "known": frozenset(serving_map.get("known", ()))}


@serve.deployment(name="router")
class Router(GrpcIngress):
    def __init__(self, rest_api_timeout_ms: int = 30000, tensor_content: bool = False,
                 manager_name: str = MANAGER_NAME, namespace: str = NAMESPACE,
                 metrics_path: str | None = None, host: str = "0.0.0.0", rest_port: int = 8501,
                 grpc_port: int = 8500, grpc_health: bool = False,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 auth_token_sha256: str | None = None, admin_token_sha256: str | None = None):
        # Digests, never tokens: Serve keeps these arguments in the GCS (deployments/auth.py).
        self._auth = BearerAuth(auth_token_sha256, admin_token_sha256)
        self.tensor_content = tensor_content  # --enable_serialization_as_tensor_content
        self._max_body_bytes = max_body_bytes
        self._manager = ray.get_actor(manager_name, namespace=namespace)
        self._metrics_path = metrics_path  # None: --monitoring_config_file did not enable it
        self._shipper = metrics.Shipper(metrics.Recorder(), lambda deltas: ray.get(
            self._manager.apply_metrics.remote(deltas), timeout=10))
        self._timeout_s = rest_api_timeout_ms / 1000 if rest_api_timeout_ms > 0 else None
        self._id = f"router-{uuid.uuid4().hex[:12]}"
        self._map = _with_known_set(ray.get(self._manager.serving_map.remote()))
        self._handles: dict[str, object] = {}
        self._stop = threading.Event()
        threading.Thread(target=self._follow_serving_map, name="aspire-map", daemon=True).start()
        self._ingress = Ingress()
        self._ingress.start(self._asgi, host, rest_port, grpc_port,
                            lambda server: add_servicers(self, server, grpc_health),
                            grpc_interceptors=[GrpcAuthInterceptor(self._auth)] if self._auth.enabled else ())

    async def _asgi(self, scope, receive, send) -> None:
        """The REST port's ASGI application: every HTTP request goes to `dispatch`."""
        if scope["type"] != "http":
            return
        response = await self.dispatch(Request(scope, receive))
        await response(scope, receive, send)

    def check_health(self) -> None:
        """Serve's health check: a router whose servers stopped is replaced."""
        if not self._ingress.alive():
            raise RuntimeError("the router's REST/gRPC servers are not running")

    def _follow_serving_map(self) -> None:
        while not self._stop.is_set():
            try:
                update = ray.get(self._manager.wait_for_serving_map.remote(
                    self._map["epoch"], self._id, 5.0))
                if update is not None:
                    # one reference swap: requests see old or new, never half
                    self._map = _with_known_set(update)
            except Exception as exc:  # manager restarting: keep the last map and retry
                log.warning("serving map poll failed: %s", exc)
                self._stop.wait(1.0)

    def _handle(self, where: dict):
        """A handle to one of the version's applications, chosen in proportion to replicas."""
        apps = where["apps"]
        if len(apps) == 1:
            app_name = apps[0][0]
        else:
            app_name = random.choices([a for a, _ in apps], weights=[n for _, n in apps])[0]
        handle = self._handles.get(app_name)
        if handle is None:
            handle = self._handles[app_name] = serve.get_deployment_handle("servable", app_name)
        return handle

    async def ask_manager(self, method: str, *args, timeout_s: float = MANAGER_CALL_S):
        """A status or admin call to the manager. While the manager is down or restarting (Ray
        holds calls to a restarting actor until it is back), the caller gets 503 UNAVAILABLE
        after `timeout_s` instead of waiting. Predictions never ask the manager."""
        try:
            return await asyncio.wait_for(getattr(self._manager, method).remote(*args), timeout_s)
        except (asyncio.TimeoutError, RayActorError):
            raise AspireError(f"The Aspire manager did not answer within {timeout_s:g} s (it may "
                              "be restarting); predictions are not affected; retry later",
                              "UNAVAILABLE") from None
        except Exception as exc:  # a bug in the manager: logged here, never a trace to the client
            log.exception("manager call %s failed", method)
            raise AspireError(f"Internal error: {type(exc).__name__}", "INTERNAL") from None

    async def _call(self, where: dict, method: str, *args):
        """Call `method` on one of the version's replicas, under --rest_api_timeout_in_ms.

        1. A replica that dies with the request (killed, crashed, or replaced after failing its
           health checks) costs no failure: the call is sent once more, and Serve no longer
           routes to the dead replica. Every version call is a read of a loaded model, so a
           second try is safe; there is no third.
        2. While every replica is full and this router already holds the version's
           max_queued_requests, the call is refused at once with 429 (RESOURCE_EXHAUSTED)
           instead of waiting.
        3. Past the timeout the call is cancelled on the replica and answered 504; the replica's
           TF session stops the run itself (ReplicaOptions.run_timeout_ms). A gRPC client that
           cancels, or whose deadline passes, cancels the call on the replica too.
        """
        deadline = None if self._timeout_s is None else time.monotonic() + self._timeout_s
        for attempt in (1, 2):
            response = getattr(self._handle(where), method).remote(*args)
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return await asyncio.wait_for(response, left)
            except asyncio.TimeoutError:
                response.cancel()
                raise AspireError(f"Request timed out after {self._timeout_s * 1000:.0f} ms "
                                  "(--rest_api_timeout_in_ms)", "DEADLINE_EXCEEDED") from None
            except asyncio.CancelledError:  # the client went away (gRPC deadline or cancel)
                response.cancel()
                raise
            except BackPressureError as exc:
                limit = exc.args[1] if len(exc.args) > 1 else "the limit of"
                raise AspireError(
                    f"Too many requests for this servable: {limit} already wait for a replica "
                    "at this router (max_queued_requests); retry later", "RESOURCE_EXHAUSTED") from None
            except RayActorError as exc:
                if attempt == 2:
                    raise AspireError("The replica serving this request stopped, and so did the "
                                      "one it was retried on", "UNAVAILABLE") from None
                log.warning("replica lost during a request (%s); retrying once",
                            type(exc).__name__)

    async def dispatch(self, request: Request) -> Response:
        raw = request.scope.get("raw_path") or request.url.path.encode()
        raw_path = raw.decode("latin-1").split("?", 1)[0]
        if raw_path == HEALTH_PATH and request.method == "GET":  # open: says the router is up
            return json_response({"status": "ok"})
        if self._auth.enabled and request.method != "OPTIONS":  # preflights carry no credentials
            started = time.perf_counter()
            try:
                self._auth.check(request.headers.get("authorization"))
            except AspireError as err:
                self.record({"name": "", "version": "", "api": ""}, "rest", err.code,
                            time.perf_counter() - started)
                response = error_response(err)
                response.headers["WWW-Authenticate"] = CHALLENGE
                return response
        if self._metrics_path is not None and raw_path == self._metrics_path and request.method == "GET":
            try:
                page = await self.ask_manager("metrics_page", timeout_s=SLOW_MANAGER_CALL_S)
            except AspireError as err:
                return error_response(err)
            return Response(page, media_type="text/plain")
        if not V1_PATH.fullmatch(raw_path):
            return Response("<html><body><h1>404 Not Found</h1></body></html>",
                            status_code=404, media_type="text/html")
        if request.method == "OPTIONS":  # CORS preflight, answered with or without CORS enabled
            origin = request.headers.get("origin", "")
            return Response(status_code=200 if re.match(r"https?://", origin) else 400)
        if request.method == "GET" and raw_path == ASPIRE_STATUS_PATH:
            try:
                return json_response(await self.ask_manager("describe", timeout_s=SLOW_MANAGER_CALL_S))
            except AspireError as err:
                return error_response(err)
        started = time.perf_counter()
        seen = {"name": "", "version": "", "api": ""}  # filled in as the request is understood
        code = "OK"
        try:
            response = await self._dispatch(request, raw_path, seen)
        except AspireError as err:
            code, response = err.code, error_response(err)
        except Exception as exc:  # never a stack trace to the client
            log.exception("request %s %s failed", request.method, raw_path)
            code, response = "INTERNAL", error_response(
                AspireError(f"Internal error: {type(exc).__name__}", "INTERNAL"))
        self.record(seen, "rest", code, time.perf_counter() - started)
        return response

    def record(self, seen: dict, protocol: str, code: str, seconds: float) -> None:
        """One request in the metrics: TF Serving's families (request_count for every request,
        request_latency for successes) and Aspire's (by version, API, protocol and code). Models
        this server does not know are labelled `_unknown`, so unknown names add one series."""
        recorder = self._shipper.recorder
        name = seen["name"] and metrics.model_label(seen["name"], self._map.get("known", ()))
        api = seen["api"]
        inference = api in ("predict", "classify", "regress")
        if protocol == "rest" or inference:  # TF Serving counts gRPC's inference calls only
            recorder.inc(metrics.TFS_REQUEST_COUNT,
                         metrics.labels_for(metrics.TFS_REQUEST_COUNT, name, code))
        if code == "OK" and (protocol == "rest" or inference):
            tf_api = (api.capitalize() if protocol == "grpc" else api) if inference else ""
            recorder.observe(metrics.TFS_REQUEST_LATENCY, metrics.labels_for(
                metrics.TFS_REQUEST_LATENCY, name, tf_api, protocol.upper()), seconds * 1e6)
        recorder.inc(metrics.ASPIRE_REQUESTS, metrics.labels_for(
            metrics.ASPIRE_REQUESTS, name, seen["version"], api, protocol, code))
        recorder.observe(metrics.ASPIRE_REQUEST_LATENCY, metrics.labels_for(
            metrics.ASPIRE_REQUEST_LATENCY, name, seen["version"], api, protocol), seconds)

    async def _dispatch(self, request: Request, raw_path: str, seen: dict) -> Response:
        route = parse_path(request.method, raw_path)
        kind = route["kind"]
        seen.update(name=route.get("name") or "", api=kind)
        if kind == "list":
            models = await self.ask_manager("list_models")
            return json_response({"models": [{"name": n, **status_body(s)} for n, s in models.items()]})
        if kind == "status":
            # TF Serving ignores the label on status requests and lists every version.
            code, payload = await self.ask_manager("model_status", route["name"], route["version"])
            if code != "OK":
                raise AspireError(payload, code)
            return json_response(status_body(payload))
        if kind == "metadata":
            version, where = resolve(self._map, route["name"], route["version"], route["label"])
            seen["version"] = str(version)
            code, metadata = await self._call(where, "metadata")
            if code != "OK":
                raise AspireError(metadata, code)
            return json_response({"model_spec": {"name": route["name"], "signature_name": "",
                                                 "version": str(version)},
                                  "metadata": {"signature_def": metadata}})
        body = await read_body(request, self._max_body_bytes)
        if "gzip" in request.headers.get("content-encoding", ""):
            body = gunzip_limited(body, self._max_body_bytes)
        doc = json_tensor.parse_body(body)
        json_tensor.signature_name_of(doc)
        version, where = resolve(self._map, route["name"], route["version"], route["label"])
        seen["version"] = str(version)
        code, text = await self._call(where, "rest", kind, doc)
        if code != "OK":
            raise AspireError(text, code)
        return json_response(text)

    def __del__(self):
        self._stop.set()
        self._ingress.stop()
        self._shipper.stop()

