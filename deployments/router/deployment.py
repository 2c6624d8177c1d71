"""Router: the Serve deployment whose replicas own the REST and gRPC ports.

Each replica holds one `RouterCore` (deployments/router/core.py: serving map, resolve, calls to
versions, manager calls, metrics) and serves TF Serving's REST API (deployments/router/tfs_rest.py)
and gRPC API (deployments/router/tfs_grpc.py) around it, with the Open Inference Protocol's REST
routes (deployments/router/v2_rest.py) and gRPC service (deployments/router/v2_grpc.py) beside them,
on its own HTTP and gRPC servers (deployments/router/servers.py). Serve places, health-checks and
restarts the routers; its proxy is off.
"""

from __future__ import annotations

import uuid

import ray
from ray import serve

from config.options import ServerOptions
from core import protos
from core.names import MANAGER_NAME, NAMESPACE
from deployments.router.auth import BearerAuth, GrpcAuthInterceptor
from deployments.router.core import RouterCore
from deployments.router.servers import Ingress
from deployments.router.tfs_grpc import GrpcApi, add_servicers
from deployments.router.tfs_rest import RestApi
from deployments.router.v2_grpc import V2Grpc


# Serve waits one graceful_shutdown_wait_loop_s (2 s by default) before it stops a replica, for
# requests through its handles; none come that way to a router, which drains its own sockets in
# __del__ (Ingress.stop), so a short period only stops it sooner.
@serve.deployment(name="router", graceful_shutdown_wait_loop_s=0.25)
class Router:
    def __init__(
        self,
        options: ServerOptions,
        data_key: str = "",
        manager_name: str = MANAGER_NAME,
        namespace: str = NAMESPACE,
    ):
        """`options`: the server's flags as config/options.py holds them (ports, limits, token
        digests, TLS and gRPC settings); `data_key`: the direct path's key."""
        protos.load()  # TF Serving's protos without TensorFlow's runtime: a router runs no model
        # Digests, never tokens: Serve keeps these arguments in the GCS
        # (deployments/router/auth.py).
        auth = BearerAuth(options.auth_token_sha256, options.admin_token_sha256)
        manager = ray.get_actor(manager_name, namespace=namespace)
        timeout_ms = options.rest_api_timeout_in_ms
        self.core = RouterCore(
            manager,
            timeout_ms / 1000 if timeout_ms > 0 else None,
            data_key,
            f"router-{uuid.uuid4().hex[:12]}",
        )
        grpc_api, v2_grpc = GrpcApi(self.core), V2Grpc(self.core)

        def add_services(server) -> None:  # TF Serving's services and the v2 protocol's
            add_servicers(grpc_api, server, options.enable_grpc_healthcheck_service)
            v2_grpc.add_to(server)

        self._ingress = Ingress()
        self._ingress.start(
            RestApi(
                self.core,
                auth,
                options.rest_api_max_body_bytes,
                options.metrics_path,
                enable_cors=options.enable_cors,
            ),
            options,
            add_services,
            grpc_interceptors=[GrpcAuthInterceptor(auth)] if auth.enabled else (),
        )
        self.core.loop = self._ingress.loop
        self._ingress.loop.call_soon_threadsafe(self.core.sync_apps)  # the versions served now

    def check_health(self) -> None:
        """Serve's health check: a router whose servers stopped is replaced."""
        if not self._ingress.alive():
            raise RuntimeError("the router's REST/gRPC servers are not running")

    def direct_replicas(self) -> dict[str, int]:
        """Replicas of each version application this router calls directly (tests, status)."""
        import asyncio

        async def count():
            return self.core.direct_replicas()

        return asyncio.run_coroutine_threadsafe(count(), self._ingress.loop).result(10)

    def __del__(self):
        self.core.stop()
        self._ingress.stop()
