"""Optional bearer-token authentication of the router's REST and gRPC ports.

Off unless `aspire serve --auth_token_file=PATH` is given: then nothing changes for TF Serving
clients that send no header, since no token is asked of anyone (TF Serving has no such option).

With it on:
1. Every REST request needs `Authorization: Bearer <token>` and every gRPC call the metadata
   `authorization: Bearer <token>`. Missing or wrong: REST 401 `{"error": ...}` with
   `WWW-Authenticate: Bearer realm="aspire"`, gRPC UNAUTHENTICATED.
2. Open without a token: `GET /healthz` (the router is up), `grpc.health.v1.Health`, and CORS
   preflights (`OPTIONS`), which browsers send without credentials by design.
3. Admin calls (ModelService/HandleReloadConfigRequest, which replaces the served models) need
   the admin token from `--admin_token_file`: any other valid token gets 403 / PERMISSION_DENIED,
   and without `--admin_token_file` admin calls are refused for everyone (Triton's restricted-API
   model: an admin API is off unless a separate key is configured). The admin token is also
   accepted wherever the inference token is.

Tokens are read once from their files (config/tokens.py) by the CLI, which passes
only their SHA-256 digests on: Serve checkpoints a deployment's constructor arguments in the GCS,
so the plaintext never leaves the CLI's process. A presented token is hashed and compared to
each digest with `hmac.compare_digest`, in constant time for equal-length inputs, and digests
always have equal length, so the time an answer takes says nothing about how much of a token
was right. Use long random tokens (`openssl rand -hex 32`): a digest of a short one could be
brute-forced by someone who can read the GCS.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass

import grpc

from config.tokens import digest
from core.errors import AspireError

log = logging.getLogger("aspire.auth")

CHALLENGE = 'Bearer realm="aspire"'  # the WWW-Authenticate header of every 401
ADMIN_METHODS = frozenset({"/tensorflow.serving.ModelService/HandleReloadConfigRequest"})
OPEN_SERVICES = ("/grpc.health.v1.Health/",)


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` value (scheme case-insensitive, RFC
    7235), or None when the value is missing or of another scheme."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


@dataclass(frozen=True)
class BearerAuth:
    """The router's check. `token_digest` None: authentication is off and every call passes."""

    token_digest: str | None = None
    admin_digest: str | None = None

    @property
    def enabled(self) -> bool:
        return self.token_digest is not None

    def check(self, header: str | None, admin: bool = False) -> None:
        """Pass, or raise AspireError UNAUTHENTICATED (no valid token) or PERMISSION_DENIED (a
        valid token that is not the admin token, on an admin call)."""
        if self.token_digest is None:  # not self.enabled
            return
        token = bearer_token(header)
        if token is None:
            raise AspireError(
                "Missing bearer token: send the header 'Authorization: Bearer <token>'",
                "UNAUTHENTICATED",
            )
        presented = digest(token)
        # Both comparisons always run: which one matched must not show in the timing either.
        is_user = hmac.compare_digest(presented, self.token_digest)
        is_admin = self.admin_digest is not None and hmac.compare_digest(
            presented, self.admin_digest
        )
        if not (is_user or is_admin):
            raise AspireError("Invalid bearer token", "UNAUTHENTICATED")
        if admin and not is_admin:
            if self.admin_digest is None:
                raise AspireError(
                    "Admin calls are disabled: the server was started without --admin_token_file",
                    "PERMISSION_DENIED",
                )
            raise AspireError("This call needs the admin token", "PERMISSION_DENIED")


class GrpcAuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks every gRPC call's `authorization` metadata before its handler runs. A refused call
    gets a request-streaming handler that aborts at once: it runs before any request message is
    read, so a refused client cannot make the server take in (up to 2 GiB of) its message."""

    def __init__(self, auth: BearerAuth):
        self._auth = auth

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if not self._auth.enabled or method.startswith(OPEN_SERVICES):
            return await continuation(handler_call_details)
        header = next(
            (
                value
                for key, value in handler_call_details.invocation_metadata or ()
                if key == "authorization"
            ),
            None,
        )
        try:
            self._auth.check(
                header if isinstance(header, str) else None, admin=method in ADMIN_METHODS
            )
        except AspireError as err:
            handler = await continuation(handler_call_details)
            return _refusal(err, handler is not None and handler.response_streaming)
        return await continuation(handler_call_details)


def _refusal(err: AspireError, response_streaming: bool):
    """A handler that ends the call with `err` without reading the request."""
    code = grpc.StatusCode[err.code]

    async def deny(_requests, context):
        await context.abort(code, err.message)

    async def deny_stream(_requests, context):
        await context.abort(code, err.message)
        yield  # pragma: no cover - abort raises; this only makes it an async generator

    if response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny_stream)
    return grpc.stream_unary_rpc_method_handler(deny)
