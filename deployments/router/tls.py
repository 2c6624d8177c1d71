"""TLS on a router's two ports, from `--ssl_config_file` (config/ssl_config.py), re-read when it
changes.

Each router replica reads the file itself, on its own node: the path is the same on every node
(a mounted secret), and the key never travels through Ray's arguments, which Serve keeps in the
GCS. What it builds:

- gRPC: `grpc.dynamic_ssl_server_credentials`, whose fetcher gRPC calls before each new
  handshake; it hands gRPC a new certificate configuration once after the files changed, and
  None (keep the current one) otherwise. Client certificates are required when client_verify,
  checked against custom_ca (TF Serving's server.cc:
  GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY).
- REST: an ssl.SSLContext (TLS 1.2+) whose SNI callback, called on every handshake (with or
  without a server name), moves the connection to the context built from the newest settings.

Both look at the files at most once every `check_period_s` (a stat of each file: cheap on the
handshake path) and re-read them when one changed (modification time, size or inode: a
Kubernetes secret's symlink swap counts). A change is logged once; a changed file that is now
invalid is logged as an error, once per change, and the old certificates stay in use.
client_verify is fixed at start-up (gRPC sets it on the port): a file that changes it is refused
the same way, until a restart.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from typing import TYPE_CHECKING

from config.ssl_config import SslConfigError, SslSettings, load_ssl_config, server_context

if TYPE_CHECKING:
    import grpc

log = logging.getLogger("aspire.tls")

CHECK_PERIOD_S = 1.0

Signature = tuple[tuple[str, int, int, int, int], ...]


def _signature(files: tuple[str, ...]) -> Signature:
    stamps = []
    for path in files:
        try:
            st = os.stat(path)
            stamps.append((path, st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev))
        except OSError:
            stamps.append((path, -1, -1, -1, -1))
    return tuple(stamps)


class RouterTls:
    """The certificates of one router replica, for both ports; `generation` counts re-reads.

    Raises SslConfigError at construction when the file is invalid: a router that cannot serve
    TLS fails its constructor (the CLI has checked the same file before starting anything).
    """

    def __init__(self, path: str, check_period_s: float = CHECK_PERIOD_S):
        self.path = path
        self.check_period_s = check_period_s
        self._lock = threading.Lock()
        self.settings = load_ssl_config(path)
        self._signature = _signature(self.settings.files)
        self._context = self._rest_context(self.settings)
        self.generation = 0
        self._next_check = time.monotonic() + check_period_s
        self._failure: str | None = None  # the error of the newest files, while invalid

    @property
    def client_verify(self) -> bool:
        return self.settings.client_verify

    # ---------------------------------------------------------------- change detection
    def refresh(self) -> None:
        """Re-read the files if one changed since the last look (at most once a period); while
        the newest files are invalid, try again each period (a file they name may appear)."""
        now = time.monotonic()
        if now < self._next_check:
            return
        with self._lock:
            if now < self._next_check:
                return
            self._next_check = now + self.check_period_s
            signature = _signature(self.settings.files)
            if signature == self._signature and self._failure is None:
                return
            self._signature = signature
            try:
                settings = load_ssl_config(self.path)
                if settings.client_verify != self.settings.client_verify:
                    raise SslConfigError(
                        f"client_verify changed to {str(settings.client_verify).lower()} in "
                        f"{self.path}; it takes effect at a restart"
                    )
                context = self._rest_context(settings) if settings != self.settings else None
            except (SslConfigError, ssl.SSLError, OSError) as exc:
                if str(exc) != self._failure:  # once per change
                    log.error("TLS certificates not re-read, the old ones stay in use: %s", exc)
                self._failure = str(exc)
                return
            self._failure = None
            if context is None:  # the same settings (a file touched, or put back)
                return
            self.settings, self._context = settings, context
            self._signature = _signature(settings.files)  # the files it names now
            self.generation += 1
            log.warning("re-read TLS certificates from %s", self.path)

    # ---------------------------------------------------------------- REST
    def _rest_context(self, settings: SslSettings) -> ssl.SSLContext:
        context = server_context(settings)
        context.sni_callback = self._on_hello
        return context

    def _on_hello(self, sock: ssl.SSLObject, server_name: str | None, context) -> None:
        try:
            self.refresh()
        except Exception:  # noqa: BLE001 - an exception here would fail the handshake
            log.exception("TLS certificate refresh failed; the old ones stay in use")
        current = self._context
        if context is not current:
            sock.context = current
        return None

    def rest_context(self) -> ssl.SSLContext:
        """The context uvicorn serves with; each handshake moves to the newest one."""
        return self._context

    # ---------------------------------------------------------------- gRPC
    def _grpc_configuration(self, settings: SslSettings):
        import grpc

        return grpc.ssl_server_certificate_configuration(
            [(settings.server_key, settings.server_cert)],
            root_certificates=settings.custom_ca or None,
        )

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """Credentials for one listening address (each has its own fetcher: every address
        gets each new configuration once)."""
        import grpc

        seen = [self.generation]

        def fetch():
            """gRPC's fetcher: a new configuration once after a re-read, else None (keep it)."""
            try:
                self.refresh()
                with self._lock:
                    if seen[0] == self.generation:
                        return None
                    seen[0] = self.generation
                    return self._grpc_configuration(self.settings)
            except Exception:  # noqa: BLE001 - an exception here would fail the handshake
                log.exception("TLS certificate fetch for gRPC failed; the old ones stay in use")
                return None

        return grpc.dynamic_ssl_server_credentials(
            self._grpc_configuration(self.settings),
            fetch,
            require_client_authentication=self.settings.client_verify,
        )
