"""Start and stop one Aspire deployment on a Ray cluster that is already initialised.

Shared by `aspire serve` and the integration tests, so both run exactly the same parts: the
manager actor with its source, and the router deployment, whose replicas serve the REST and gRPC
ports themselves (deployments/ingress.py; Serve's own proxy is disabled).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

import ray
from ray import serve

from cluster.inventory import head_node_id
from cluster.manager_actor import ControllerConfig, start_manager
from core.errors import DEFAULT_MAX_BODY_BYTES
from core.names import APP_PREFIX
from deployments.ingress import HttpLimits
from deployments.router import Router
from deployments.serve_state import delete_apps

log = logging.getLogger("aspire")

ROUTER_APP = "aspire-router"
# Environment Serve's controller must start with, on every Ray cluster Aspire runs on (the ray-up
# and KubeRay configs set it too). A replica that fails its health checks is usually hung: Serve's
# default is to ask it to shut down gracefully and wait graceful_shutdown_timeout_s for an answer
# it will never give, while requests on it wait; Aspire has it killed at once, and the routers
# send those requests again (deployments/router_core.py `RouterCore.call`).
SERVE_ENV = {"RAY_SERVE_FORCE_STOP_UNHEALTHY_REPLICAS": "1"}


def set_serve_env() -> None:
    """Put SERVE_ENV into this process's environment, before it starts an embedded Ray."""
    for key, value in SERVE_ENV.items():
        os.environ.setdefault(key, value)


# Ray CPUs booked by each router replica. Routers mostly wait on I/O; Serve's default of 1 CPU
# would let two routers fill a 2-core machine and leave no room for the models.
ROUTER_NUM_CPUS = 0.25


@dataclass
class ServerOptions:
    rest_api_host: str = "0.0.0.0"
    rest_api_port: int = 8501
    grpc_port: int = 8500  # 0: no gRPC API
    enable_grpc_healthcheck_service: bool = False
    rest_api_timeout_in_ms: int = 30000
    rest_api_max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    http_limits: HttpLimits = field(default_factory=HttpLimits)  # slow and idle REST clients
    num_router_replicas: int = 1
    metrics_path: str | None = None  # Prometheus page on the REST port (--monitoring_config_file)
    # Where the routers (and so the REST/gRPC ports) run: EveryNode puts num_router_replicas on
    # each node alive at start-up; HeadOnly puts them all on the head node.
    proxy_location: str = "EveryNode"
    # SHA-256 hex digests of --auth_token_file's and --admin_token_file's tokens (None: off);
    # never the tokens, which would be checkpointed with the router's arguments in the GCS.
    auth_token_sha256: str | None = None
    admin_token_sha256: str | None = None


def start(config: ControllerConfig, options: ServerOptions):
    """Bring Aspire up; returns the manager actor handle. Raises AspireError (e.g. a label that
    points at a version that is not available) before anything is left running."""
    serve.start(proxy_location="Disabled")
    # applications left by an Aspire that did not shut down
    delete_apps([app for app in serve.status().applications if app.startswith(APP_PREFIX)])
    manager = start_manager(config)
    router_options = {"num_cpus": ROUTER_NUM_CPUS}
    per_node = options.num_router_replicas
    if options.proxy_location == "HeadOnly":  # all traffic enters on the head
        router_options["label_selector"] = {"ray.io/node-id": head_node_id()}
        router = Router.options(num_replicas=per_node, ray_actor_options=router_options)
    else:  # the same number on every node, so each node answers on the ports
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        router = Router.options(
            num_replicas=per_node * nodes,
            max_replicas_per_node=per_node,
            ray_actor_options=router_options,
        )
    serve.run(
        router.bind(
            options.rest_api_timeout_in_ms,
            config.replica.data_key,
            metrics_path=options.metrics_path,
            host=options.rest_api_host,
            rest_port=options.rest_api_port,
            grpc_port=options.grpc_port,
            grpc_health=options.enable_grpc_healthcheck_service,
            max_body_bytes=options.rest_api_max_body_bytes,
            http_limits=options.http_limits,
            auth_token_sha256=options.auth_token_sha256,
            admin_token_sha256=options.admin_token_sha256,
        ),
        name=ROUTER_APP,
        route_prefix=None,
    )
    return manager


def wait_initial_load(manager, names: list[str], timeout_s: float, stop=None) -> list[str]:
    """Block until each model has a version AVAILABLE or END (TF Serving's start-up wait), or
    until `stop` (a threading.Event) is set. Returns the names still without one."""
    deadline = time.monotonic() + timeout_s
    while True:
        step = max(0.0, min(0.5, deadline - time.monotonic()))
        result = ray.get(manager.wait_for_models.remote(names, step))
        if not result["pending"] or step == 0 or (stop is not None and stop.is_set()):
            break
    for name, s in result["failed"].items():
        log.error(
            "model %s version %s failed to load: %s: %s",
            name,
            s["version"],
            s["error_code"],
            s["error_message"],
        )
    return result["pending"]


# How long `stop` may take in all before it leaves what is left to Serve: under Kubernetes'
# default 30 s between SIGTERM and SIGKILL, with room for an embedded Ray to shut down.
STOP_TIMEOUT_S = 8.0


def stop(manager, timeout_s: float = STOP_TIMEOUT_S, before_kill=None) -> None:
    """Unload every version, then remove the router, then the manager (the router follows the
    manager until it goes), within about `timeout_s`: loads in flight are cancelled and retry
    waits end. Whatever is not deleted by then is left to Serve, which goes on deleting it
    (an embedded Ray is shut down right after anyway). Serve and Ray stay up: on a shared
    cluster they are not Aspire's to stop, and an embedded Ray ends with `ray.shutdown()`.
    `before_kill()` runs just before the manager actor is killed (the CLI reads its last lines)."""
    deadline = time.monotonic() + timeout_s
    if manager is not None:
        try:
            budget = max(1.0, timeout_s - 3.0)  # leave time for the router
            done = ray.get(manager.shutdown.remote(budget), timeout=budget + 1.0)
            if not done:
                log.warning("unloading on shutdown did not finish in %.0f s", budget)
        except Exception as exc:
            log.warning("unloading on shutdown: %s", exc)
    # versions still being deleted (a replica busy loading stops only once Serve's graceful
    # timeout runs out): asked for, not waited on; the router is waited on, so requests in
    # flight end first
    leftovers = [app for app in serve.status().applications if app.startswith(APP_PREFIX)]
    delete_apps(leftovers, timeout_s=0)
    delete_apps([ROUTER_APP], timeout_s=max(0.5, deadline - time.monotonic()))
    if manager is not None:
        if before_kill is not None:
            before_kill()
        ray.kill(manager, no_restart=True)
