"""The Open Inference Protocol's REST routes (KServe "v2", Triton's HTTP protocol) on the REST
port, beside TF Serving's /v1, sharing the router core: the serving map, version resolution
(the URL's version; without one, the traffic split and Latest, as for /v1), the direct path to
replicas, auth, body limits and metrics (`protocol="v2"`).

Routes:
- `GET /v2`: server metadata, with the extensions supported (`binary_tensor_data`).
- `GET /v2/health/live` (200 while the router serves), `GET /v2/health/ready` (200 once the
  manager has settled its initial loads, else 400).
- `GET /v2/models/NAME[/versions/V]`: model metadata from the serving signature (replica side:
  deployments/replica/v2_calls.py); without a version, `versions` lists every AVAILABLE one.
- `GET /v2/models/NAME[/versions/V]/ready`: 200 while the version (or, without one, a version of
  the model) is AVAILABLE, else 400 with the reason.
- `POST /v2/models/NAME[/versions/V]/infer`: JSON tensors, or the binary tensor extension
  (`Inference-Header-Content-Length`); the body goes to the replica as it came.
Errors are `{"error": "..."}` with the status TF's code maps to (400, 404, 413, 429, 503, 504).
"""

from __future__ import annotations

import json
import re
import time
from urllib.parse import unquote_to_bytes

from core.errors import AspireError, invalid_argument, not_found
from core.names import check_name, escape
from deployments.router.core import RouterCore, Seen
from deployments.wire.direct import V2_HEADER_LENGTH, V2_NO_BINARY

V2_PATH = re.compile(r"/v2(?:/.*)?", re.DOTALL)
MODEL_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/(\d+))?(?:/(ready|infer))?")
JSON = b"application/json"
OCTETS = b"application/octet-stream"
EXTENSIONS = ["binary_tensor_data"]


def server_version() -> str:
    try:
        from importlib.metadata import version

        return version("aspire-serving")
    except Exception:  # noqa: BLE001 - running from a checkout without an install
        return "0"


def body_of(doc) -> bytes:
    return json.dumps(doc).encode("utf-8")


def error_body(err: AspireError) -> bytes:
    return body_of({"error": err.message})


def parse_model_path(raw_path: str) -> tuple[str, int | None, str]:
    """(model name, version or None, "metadata" | "ready" | "infer"); INVALID_ARGUMENT for a
    malformed /v2/models/ path or a name that could be a path, NOT_FOUND for another path the
    protocol does not have."""
    m = MODEL_PATH.fullmatch(raw_path)
    if m is None and raw_path.startswith("/v2/models/"):  # as /v1 answers a malformed path
        raise invalid_argument(f"Malformed request: {escape(raw_path, 256)}")
    if m is None:
        raise not_found(f"Not found: {escape(raw_path, 256)}")
    raw_name, version, verb = m.groups()
    try:
        name = unquote_to_bytes(raw_name).decode("utf-8")
    except UnicodeDecodeError:
        raise invalid_argument(f"Failed to decode model name:{escape(raw_name, 256)}") from None
    check_name(name)
    return name, parse_version(version or ""), verb or "metadata"


def parse_version(text: str) -> int | None:
    """A version as the protocol sends it (decimal digits; "" for none), as TF Serving's int64."""
    if not text:
        return None
    if (
        not (text.isascii() and text.isdigit())
        or len(text.lstrip("0")) > 19
        or int(text) > 2**63 - 1
    ):
        raise invalid_argument(f"Failed to convert version: {escape(text, 256)} to numeric.")
    return int(text)


def header_length(declared: str) -> int:
    """An Inference-Header-Content-Length value: ASCII digits below 2**63 (the replica's frame
    carries it as a signed 64-bit length), else INVALID_ARGUMENT."""
    digits = declared.lstrip("0") or "0"
    if not (declared.isascii() and declared.isdigit()) or len(digits) > 19 or int(digits) >= 2**63:
        raise invalid_argument(f"Inference-Header-Content-Length: {escape(declared, 64)}")
    return int(digits)


class V2Rest:
    def __init__(self, core: RouterCore, read_body, header) -> None:
        self.core = core
        self._read_body = read_body  # the body under the REST limits, inflated (tfs_rest.py)
        self._header = header  # tfs_rest.header: a request header's value, "" when absent

    async def dispatch(self, scope, receive, method: str, raw_path: str):
        """(status, content type, body, extra headers) of one /v2 request."""
        started, seen = time.perf_counter(), Seen()
        code, status, extra, content_type = "OK", 200, [], JSON
        try:
            body, extra, content_type = await self._answer(scope, receive, method, raw_path, seen)
        except AspireError as err:
            code, status, body = err.code, err.http, error_body(err)
            if err.code == "FAILED_PRECONDITION":  # not ready: the protocol's 4xx
                status = 400
        self.core.record(seen, "v2", code, time.perf_counter() - started)
        return status, content_type, body, extra

    async def _answer(self, scope, receive, method: str, raw_path: str, seen: Seen):
        core = self.core
        if raw_path in ("/v2", "/v2/"):
            seen.api = "server_metadata"
            self._only(method, "GET", raw_path)
            doc = {"name": "aspire", "version": server_version(), "extensions": EXTENSIONS}
            return body_of(doc), [], JSON
        if raw_path == "/v2/health/live":
            seen.api = "live"
            self._only(method, "GET", raw_path)
            return body_of({"live": True}), [], JSON
        if raw_path == "/v2/health/ready":
            seen.api = "ready"
            self._only(method, "GET", raw_path)
            if not await core.ask_manager("ready"):
                raise AspireError("the server is still loading its models", "FAILED_PRECONDITION")
            return body_of({"ready": True}), [], JSON
        name, version, verb = parse_model_path(raw_path)
        seen.api, seen.name = verb, name
        if verb == "infer":
            self._only(method, "POST", raw_path)
            key_name = core.experiment_key(name)  # a sticky experiment's request key
            key = self._header(scope, key_name.encode("latin-1")) or None if key_name else None
            resolved, address = core.resolve(name, version, None, key)
            seen.version = str(resolved)
            body = await self._read_body(scope, receive)
            declared = self._header(scope, b"inference-header-content-length").strip()
            length = header_length(declared) if declared else V2_NO_BINARY
            answer = await core.infer(
                name,
                version is None,
                resolved,
                address,
                "v2_infer",
                V2_HEADER_LENGTH.pack(length) + body,
            )
            (head,) = V2_HEADER_LENGTH.unpack_from(answer)
            if head == V2_NO_BINARY:
                return answer[V2_HEADER_LENGTH.size :], [], JSON
            return (
                answer[V2_HEADER_LENGTH.size :],
                [(b"inference-header-content-length", b"%d" % head)],
                OCTETS,
            )
        self._only(method, "GET", raw_path)
        if verb == "ready":
            try:
                resolved, _ = core.resolve(name, version, None)
            except AspireError as err:
                raise AspireError(err.message, "FAILED_PRECONDITION") from None
            seen.version = str(resolved)
            return body_of({"name": name, "ready": True}), [], JSON
        resolved, address = core.resolve(name, version, None)
        seen.version = str(resolved)
        answer = await core.call(address, "v2_metadata", b"")
        if version is None:  # every AVAILABLE version of the model
            doc = json.loads(answer)
            doc["versions"] = [str(v) for v in sorted(core.map.models.get(name, {}))]
            answer = body_of(doc)
        return answer, [], JSON

    @staticmethod
    def _only(method: str, allowed: str, raw_path: str) -> None:
        if method != allowed:
            raise AspireError(
                f"{method} is not allowed on {escape(raw_path, 256)} (only {allowed})",
                "UNIMPLEMENTED",
            )
