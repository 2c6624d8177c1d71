"""Start and stop one Aspire deployment on a Ray cluster that is already initialised.

Shared by `aspire serve` and the integration tests, so both run exactly the same parts: the
manager actor with its source, and the routers, which the manager runs on the nodes that serve
the ports (cluster/backend/routers.py) and whose replicas serve the REST and gRPC ports
themselves (deployments/router/servers.py; Serve's own proxy is disabled).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time

import ray
from ray import serve

from cluster.backend.routers import router_apps
from cluster.backend.serve_state import delete_apps
from cluster.control_plane import ManagerConfig
from cluster.manager_actor import running_manager, start_manager
from config.options import ServerOptions
from core.names import APP_PREFIX

log = logging.getLogger("aspire")

# Environment Serve's controller must start with, on every Ray cluster Aspire runs on (the ray-up
# and KubeRay configs set it too). A replica that fails its health checks is usually hung: Serve's
# default is to ask it to shut down gracefully and wait graceful_shutdown_timeout_s for an answer
# it will never give, while requests on it wait; Aspire has it killed at once, and the routers
# send those requests again (deployments/router/core.py `RouterCore.call`).
SERVE_ENV = {"RAY_SERVE_FORCE_STOP_UNHEALTHY_REPLICAS": "1"}


def set_serve_env() -> None:
    """Put SERVE_ENV into this process's environment, before it starts an embedded Ray."""
    for key, value in SERVE_ENV.items():
        os.environ.setdefault(key, value)


def start(config: ManagerConfig, options: ServerOptions, adopt: bool = False):
    """Bring Aspire up; returns the manager actor handle. Raises AspireError (e.g. a label that
    points at a version that is not available) before anything is left running.

    `adopt`: a manager already running on the cluster with the same flags
    (`config.fingerprint`) is kept with everything it serves, as after its driver's restart
    (the head's loss, a pod restarted): its routers are synced and nothing is reloaded.
    Otherwise a running manager is replaced and its applications deleted."""
    if adopt:
        running = running_manager(config.fingerprint)
        if running is not None:
            log.info(
                "Aspire already runs on this cluster with the same flags: adopting it "
                "(what it serves keeps serving, nothing is reloaded)"
            )
            # the config files as they read now (a model added while no driver ran); models
            # and settings that did not change are not touched
            ray.get(running.set_settings.remote(config.settings))
            code, message = ray.get(running.reload_config.remote(config.models, config.labels))
            if code != "OK":  # it keeps the configuration in force: what serves is not touched
                log.error("the adopted manager refused the config files: %s: %s", code, message)
            ray.get(running.start_routers.remote())
            return running
    serve.start(proxy_location="Disabled")
    # applications left by an Aspire that did not shut down
    leftovers = [app for app in serve.status().applications if app.startswith(APP_PREFIX)]
    delete_apps(leftovers + router_apps())
    manager = start_manager(dataclasses.replace(config, server=options))
    ray.get(manager.start_routers.remote())  # the manager runs them, and follows the nodes
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
    delete_apps(router_apps(), timeout_s=max(0.5, deadline - time.monotonic()))
    if manager is not None:
        if before_kill is not None:
            before_kill()
        ray.kill(manager, no_restart=True)
