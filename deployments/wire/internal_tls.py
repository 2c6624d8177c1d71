"""TLS on the direct data path between nodes, from Ray's own TLS settings, in one place.

One setting protects both Ray's RPCs (which carry the data-plane key in Serve's deployment
arguments) and the routers' connections to the replicas' call services (deployments/wire/direct.py):
when `RAY_USE_TLS` is `1` or `true` in the process environment, Ray reads the PEM files named by
`RAY_TLS_SERVER_CERT` (the certificate chain), `RAY_TLS_SERVER_KEY` (its private key) and
`RAY_TLS_CA_CERT` (the CA), and so does this module, as Ray's gRPC does (mutual TLS):
- `server_context()`: the call service presents the certificate and requires a client
  certificate signed by the CA;
- `client_context()`: the router presents the same certificate and verifies the replica's against
  the CA. Hostnames are not checked: replicas are addressed by IP, as Ray's own TLS does.
Both are None without `RAY_USE_TLS`. The files are read once per set of paths and process (as Ray
reads them at start-up): a renewed certificate needs the processes restarted. The data-plane
handshake (direct.py) still runs inside TLS.
"""

from __future__ import annotations

import functools
import os
import ssl
from typing import Mapping

USE_TLS = "RAY_USE_TLS"
CERT, KEY, CA = "RAY_TLS_SERVER_CERT", "RAY_TLS_SERVER_KEY", "RAY_TLS_CA_CERT"


class InternalTLSError(RuntimeError):
    """RAY_USE_TLS is on but its files are not named, or cannot be read."""


def enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether Ray's TLS is on, read as Ray reads it."""
    env = os.environ if environ is None else environ
    return env.get(USE_TLS, "0").lower() in ("1", "true")


def _paths(environ: Mapping[str, str] | None) -> tuple[str, str, str] | None:
    env = os.environ if environ is None else environ
    if not enabled(env):
        return None
    missing = [name for name in (CERT, KEY, CA) if not env.get(name)]
    if missing:
        raise InternalTLSError(
            f"{USE_TLS} is on but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
            f"not set: TLS on the direct data path needs {CERT}, {KEY} and {CA}, as Ray's does"
        )
    return env[CERT], env[KEY], env[CA]


@functools.lru_cache(maxsize=8)
def _contexts(cert: str, key: str, ca: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False  # replicas are addressed by IP; the CA vouches for the peer
    for context in (server, client):
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.verify_mode = ssl.CERT_REQUIRED
        try:
            context.load_cert_chain(cert, key)
            context.load_verify_locations(cafile=ca)
        except (OSError, ssl.SSLError) as exc:
            raise InternalTLSError(
                f"cannot load the TLS files named by {CERT}, {KEY} and {CA} "
                f"({cert}, {key}, {ca}): {exc}"
            ) from None
    return server, client


def server_context(environ: Mapping[str, str] | None = None) -> ssl.SSLContext | None:
    """The call service's TLS context (client certificates required), or None: plain TCP."""
    paths = _paths(environ)
    return None if paths is None else _contexts(*paths)[0]


def client_context(environ: Mapping[str, str] | None = None) -> ssl.SSLContext | None:
    """The routers' TLS context (the same certificate, the CA verified), or None: plain TCP."""
    paths = _paths(environ)
    return None if paths is None else _contexts(*paths)[1]
