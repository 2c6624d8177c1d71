"""TF Serving's REST API as a thin adapter around the router core (deployments/router/core.py).

Life of a REST request (`RestApi.__call__`, the ASGI application of the REST port):
1. `/healthz` answers at once; with --auth_token_file the bearer token is checked first
   (deployments/router/auth.py); the metrics page and Aspire's status are the other non-/v1 paths.
2. The raw (percent-encoded) path is matched with TF Serving's own URL grammar (`parse_path`),
   and a model name that could be a path is refused (core/names.py).
3. For inference, the body is read under --rest_api_max_body_bytes (and inflated, if gzip, under
   the same limit), the servable is resolved, and the body's bytes go to the version's replica
   as they came: the router never parses JSON on the success path. Only when the servable
   cannot be resolved does the router parse the body, because TF Serving reports a JSON error
   before an unknown model.
4. The answer's bytes are the response body; an AspireError becomes TF Serving's
   `{"error": "..."}` with the HTTP status TF Serving maps from its code.
5. With --rest_api_enable_cors_support, every response under /v1/ (TF Serving's REST handler:
   answers, errors and the OPTIONS preflight alike) carries TF Serving's three CORS headers.
"""

from __future__ import annotations

import json
import logging
import re
import time
import zlib
from urllib.parse import unquote_to_bytes

from core.errors import AspireError, BodyTooLarge, invalid_argument
from core.names import check_name, escape
from deployments.router.auth import CHALLENGE, BearerAuth
from deployments.router.core import SLOW_MANAGER_CALL_S, RouterCore, Seen
from deployments.router.v2_rest import V2_PATH, V2Rest
from deployments.wire import tfs_json

log = logging.getLogger("aspire.rest")

POST_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.IGNORECASE,
)
GET_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE,
)
V1_PATH = re.compile(r"/v1/.*", re.IGNORECASE | re.DOTALL)
INT64_MAX = 2**63 - 1
# Aspire's own status (every model, where its replicas run, GPU and RAM reservations): not part
# of TF Serving's grammar, which answers no GET under /v1/ other than /v1/models/...
ASPIRE_STATUS_PATH = "/v1/aspire/status"
# Aspire's rollouts (cluster/rollouts.py), in TF Serving's URL style: GET the status of a
# model's rollout; POST :pause or :resume (an admin call when tokens are on).
ROLLOUT_PATH = re.compile(r"/v1/models/([^/:]+)/rollout(?::(pause|resume))?")
HEALTH_PATH = "/healthz"  # Aspire's: 200 while the router serves, open even with auth on

JSON = b"application/json"
TEXT = b"text/plain; charset=utf-8"
HTML = b"text/html; charset=utf-8"
NOT_FOUND_PAGE = b"<html><body><h1>404 Not Found</h1></body></html>"
# TF Serving's AddCORSHeaders (http_rest_api_util.cc), added by its REST dispatcher to every
# response of a path under /v1/ when --rest_api_enable_cors_support is on: not to the metrics
# page (a handler of its own) nor to paths it does not serve (net_http's 404).
CORS_HEADERS = [
    (b"access-control-allow-origin", b"*"),
    (b"access-control-allow-methods", b"POST, GET"),
    (b"access-control-allow-headers", b"Content-Type"),
]


def _malformed(method: str, raw_path: str) -> AspireError:
    # Echoes of the request are cut to 256 characters: an error body stays small (TF Serving
    # echoes the whole path).
    return invalid_argument(f"Malformed request: {method} {escape(raw_path, 256)}")


def parse_path(method: str, raw_path: str) -> dict:
    """TF Serving's REST URL grammar. Returns {"kind", "name", "version", "label", ...}; raises
    INVALID_ARGUMENT with TF Serving's messages."""
    if method == "POST":
        m = POST_PATH.fullmatch(raw_path)
        if not m or m.group(4) not in ("classify", "regress", "predict"):
            raise _malformed(method, raw_path)
        name, version, label, verb = m.groups()
        kind = verb
    elif method == "GET":
        m = GET_PATH.fullmatch(raw_path)
        if not m or (m.group(4) is not None and m.group(4) != "metadata"):
            raise _malformed(method, raw_path)
        name, version, label, sub = m.groups()
        if name is None:
            if version is not None or label is not None or sub is not None:
                raise _malformed(method, raw_path)
            return {"kind": "list"}
        kind = "metadata" if sub else "status"
    else:
        raise _malformed(method, raw_path)
    try:
        decoded = unquote_to_bytes(name).decode("utf-8")
    except UnicodeDecodeError:
        raise invalid_argument(f"Failed to decode model name:{escape(name, 256)}") from None
    if label is not None:
        try:
            label = unquote_to_bytes(label).decode("utf-8")
        except UnicodeDecodeError:
            raise invalid_argument(
                f"Failed to decode model version label:{escape(label, 256)}"
            ) from None
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


def raw_path_of(scope: dict) -> str:
    """The request's path as the client sent it (percent-encoded), without its query."""
    return (scope.get("raw_path") or scope["path"].encode()).decode("latin-1").split("?", 1)[0]


def header(scope: dict, name: bytes) -> str:
    """A request header's value ("" when absent); `name` in lower case, as ASGI gives names."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return ""


class Disconnected(Exception):
    """The client went away before its body arrived: nothing is answered."""


async def read_body(scope: dict, receive, limit: int) -> bytes:
    """The request body, refused with 413 once it is known to pass `limit`: from Content-Length
    before any of it is read, else (chunked) as soon as the bytes received pass it."""
    declared = header(scope, b"content-length")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(int(declared), limit)
    message = await receive()
    if message["type"] != "http.request":
        raise Disconnected()
    body = message.get("body", b"")
    if not message.get("more_body", False):  # the usual case: one message
        if len(body) > limit:
            raise BodyTooLarge(None, limit)
        return body
    chunks, size = [body], len(body)
    while True:
        if size > limit:
            raise BodyTooLarge(None, limit)
        message = await receive()
        if message["type"] != "http.request":
            raise Disconnected()
        chunk = message.get("body", b"")
        size += len(chunk)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    if size > limit:
        raise BodyTooLarge(None, limit)
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
            raise invalid_argument(
                "Failed to decompress gzip request body: it ends before the end of its gzip stream"
            )
        data = inflater.unused_data
    return b"".join(out)


def json_body(body) -> bytes:
    return json.dumps(body, indent=1).encode("utf-8")


def error_body(err: AspireError) -> bytes:
    return json_body({"error": err.message})


def status_body(statuses: list[dict]) -> dict:
    return {
        "model_version_status": [
            {
                "version": str(s["version"]),
                "state": s["state"],
                "status": {"error_code": s["error_code"], "error_message": s["error_message"]},
            }
            for s in statuses
        ]
    }


class RestApi:
    """The REST port's ASGI application."""

    def __init__(
        self,
        core: RouterCore,
        auth: BearerAuth,
        max_body_bytes: int,
        metrics_path: str | None,
        enable_cors: bool = False,
    ) -> None:
        self.core = core
        self._cors = enable_cors  # --rest_api_enable_cors_support
        self._auth = auth
        self._max_body_bytes = max_body_bytes
        self._metrics_path = metrics_path  # None: --monitoring_config_file did not enable it
        self._v2 = V2Rest(core, self._body, header)  # the Open Inference Protocol

    async def _rollout(self, scope, method: str, raw_path: str, match, seen: Seen) -> bytes:
        name_part, action = match.groups()
        if (method, action is None) not in (("GET", True), ("POST", False)):
            raise _malformed(method, raw_path)
        seen.api = "rollout"
        try:
            name = check_name(unquote_to_bytes(name_part).decode("utf-8"))
        except UnicodeDecodeError:
            raise invalid_argument(
                f"Failed to decode model name:{escape(name_part, 256)}"
            ) from None
        seen.name = name
        if action is None:
            code, payload = await self.core.ask_manager("rollout", name)
        else:
            if self._auth.enabled:
                self._auth.check(header(scope, b"authorization") or None, admin=True)
            code, payload = await self.core.ask_manager("rollout_command", name, action)
        if code != "OK":
            raise AspireError(str(payload), code)
        return json_body(payload)

    async def _body(self, scope, receive) -> bytes:
        """A request body under --rest_api_max_body_bytes, inflated when gzip-encoded."""
        body = await read_body(scope, receive, self._max_body_bytes)
        if "gzip" in header(scope, b"content-encoding"):
            body = gunzip_limited(body, self._max_body_bytes)
        return body

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        try:
            status, content_type, body, extra = await self.dispatch(scope, receive)
        except Disconnected:
            return
        headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body)), *extra]
        if self._cors:
            path = raw_path_of(scope)
            if V1_PATH.fullmatch(path) and path != self._metrics_path:
                headers += CORS_HEADERS
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def dispatch(self, scope, receive) -> tuple[int, bytes, bytes, list]:
        """(status, content type, body, extra headers) of one request."""
        method = scope["method"]
        raw_path = raw_path_of(scope)
        if raw_path == HEALTH_PATH and method == "GET":  # open: says the router is up
            return 200, JSON, json_body({"status": "ok"}), []
        if self._auth.enabled and method != "OPTIONS":  # preflights carry no credentials
            started = time.perf_counter()
            try:
                self._auth.check(header(scope, b"authorization") or None)
            except AspireError as err:
                self.core.record(Seen(), "rest", err.code, time.perf_counter() - started)
                return err.http, JSON, error_body(err), [(b"www-authenticate", CHALLENGE.encode())]
        if self._metrics_path is not None and raw_path == self._metrics_path and method == "GET":
            try:
                page = await self.core.ask_manager("metrics_page", timeout_s=SLOW_MANAGER_CALL_S)
            except AspireError as err:
                return err.http, JSON, error_body(err), []
            return 200, TEXT, page.encode("utf-8"), []
        if raw_path.startswith("/v2") and V2_PATH.fullmatch(raw_path) and method != "OPTIONS":
            return await self._v2.dispatch(scope, receive, method, raw_path)
        if not V1_PATH.fullmatch(raw_path):
            return 404, HTML, NOT_FOUND_PAGE, []
        if method == "OPTIONS":  # CORS preflight, answered with or without CORS enabled (its
            # CORS headers, when on, are added in __call__ as to every /v1/ response)
            origin = header(scope, b"origin")
            return (200 if re.match(r"https?://", origin) else 400), TEXT, b"", []
        if method == "GET" and raw_path == ASPIRE_STATUS_PATH:
            try:
                described = await self.core.ask_manager("describe", timeout_s=SLOW_MANAGER_CALL_S)
            except AspireError as err:
                return err.http, JSON, error_body(err), []
            return 200, JSON, json_body(described), []
        started = time.perf_counter()
        seen = Seen()
        code, status = "OK", 200
        try:
            body = await self._answer(scope, receive, method, raw_path, seen)
        except AspireError as err:
            code, status, body = err.code, err.http, error_body(err)
        except Disconnected:
            self.core.record(seen, "rest", "CANCELLED", time.perf_counter() - started)
            raise
        except Exception as exc:  # never a stack trace to the client
            log.exception("request %s %s failed", method, raw_path)
            internal = AspireError(f"Internal error: {type(exc).__name__}", "INTERNAL")
            code, status, body = internal.code, internal.http, error_body(internal)
        self.core.record(seen, "rest", code, time.perf_counter() - started)
        return status, JSON, body, []

    async def _answer(self, scope, receive, method: str, raw_path: str, seen: Seen) -> bytes:
        rollout = ROLLOUT_PATH.fullmatch(raw_path)
        if rollout is not None:
            return await self._rollout(scope, method, raw_path, rollout, seen)
        route = parse_path(method, raw_path)
        kind = seen.api = route["kind"]
        seen.name = route.get("name") or ""
        core = self.core
        if kind == "list":
            models = await core.ask_manager("list_models")
            return json_body({"models": [{"name": n, **status_body(s)} for n, s in models.items()]})
        if kind == "status":
            # TF Serving ignores the label on status requests and lists every version.
            code, payload = await core.ask_manager("model_status", route["name"], route["version"])
            if code != "OK":
                raise AspireError(payload, code)
            return json_body(status_body(payload))
        if kind == "metadata":
            version, address = core.resolve(route["name"], route["version"], route["label"])
            seen.version = str(version)
            return await core.call(address, "metadata", b"")
        body = await self._body(scope, receive)
        key_name = core.experiment_key(route["name"])  # a sticky experiment's request key
        key = header(scope, key_name.encode("latin-1")) or None if key_name else None
        try:
            version, address = core.resolve(route["name"], route["version"], route["label"], key)
        except AspireError:
            # TF Serving reports a JSON error before an unknown model: only here does the
            # router parse the body, to find out whether it has one.
            tfs_json.signature_name_of(tfs_json.parse_body(body))
            raise
        seen.version = str(version)
        unversioned = route["version"] is None and route["label"] is None
        return await core.infer(route["name"], unversioned, version, address, kind, body)
