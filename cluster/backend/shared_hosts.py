"""Versions inside shared hosts ("placement": "shared", deployments/replica/shared_host.py): the
manager's side of loading into, adopting into and taking out of a host, and opening and closing
hosts.

A host is one Serve application whose replicas follow a manifest kept here
(cluster/backend/host_registry.py `HostRegistry`). Loading a version puts it in the manifest
(the host's application created the first time), then waits until every live replica of the
host reports it loaded; a failure any replica reports fails the load and takes the version out
of the manifest again. Which host a version goes to is decided by the manager
(cluster/host_admission.py); `SharedHostLoader` carries it out, for
cluster/backend/serve_backend.py `ServeBackend`, which answers the manager's `SharedHosts`
calls with it (cluster/backend/interface.py).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from ray import serve

from cluster.backend.host_registry import HostRegistry
from cluster.backend.serve_apps import Launcher, deploy_failure_message, deployment, servable_id
from cluster.backend.serve_state import delete_apps
from core.deployed import AppPlacement, Deployed
from core.errors import AspireError
from deployments.replica.loader import SavedModelLoader
from deployments.replica.shared_host import HostDeployment
from deployments.wire.direct import servable_key
from policies.admission import HostSlot, tf_memory_limit_bytes

log = logging.getLogger("aspire.servable")


class SharedHostLoader:
    def __init__(self, launcher: Launcher, hosts: HostRegistry):
        self._launcher = launcher
        self.hosts = hosts  # the hosts' manifests, which host replicas long-poll
        self._host_locks: dict[str, threading.Lock] = {}
        self._host_locks_guard = threading.Lock()

    def load_shared(self, name: str, version: int, path: str, slot: HostSlot) -> Deployed:
        """Load a version into the host `slot` names (opened first if it does not run): put it
        in the host's manifest, then wait until the host's replicas hold it."""
        launcher = self._launcher
        servable = servable_id(name, version)
        launcher.check_cancelled(servable)
        loader = SavedModelLoader(path, launcher.options.tags)
        ram_bytes = loader.estimate_resources().ram_bytes
        loader.validate()
        key = servable_key(name, version)
        placement = slot.placement
        limit = (
            tf_memory_limit_bytes(placement.vram_bytes)
            if placement is not None and placement.gpu_index is not None
            else None
        )
        self.hosts.put(slot.app, key, launcher.spec(name, version, path, limit))
        try:
            handle = self._open_host(slot, servable)
            self.hosts.wait_loaded(
                slot.app,
                key,
                time.monotonic() + launcher.load_timeout_s,
                lambda: launcher.check_cancelled(servable),
            )
        except AspireError:
            self.hosts.remove(slot.app, key)
            raise
        except Exception as exc:
            self.hosts.remove(slot.app, key)
            raise AspireError(deploy_failure_message(str(exc)), "UNKNOWN") from None
        answer = launcher.ping(handle, servable)
        return Deployed(
            apps=((slot.app, slot.replicas),),
            key=key,
            host=slot.app,
            host_vram_bytes=0 if placement is None else placement.vram_bytes,
            ram_bytes=ram_bytes,
            placements=(
                AppPlacement(
                    app=slot.app,
                    host=slot.app,
                    replicas=slot.replicas,
                    min_replicas=slot.replicas,
                    node_id=answer.node_id,
                    pid=answer.pid,
                    gpu=None if placement is None else placement.gpu_index,
                    vram_bytes=0,  # the host's block holds it
                    cuda_visible_devices=answer.cuda_visible_devices,
                ),
            ),
            max_queued_requests=launcher.options.max_queued_requests,
        )

    def _open_host(self, slot: HostSlot, servable: str) -> Any:
        """The host's Serve handle, once its application runs (created here the first time)."""
        with self._host_locks_guard:
            lock = self._host_locks.setdefault(slot.app, threading.Lock())
        with lock:
            status = serve.status().applications.get(slot.app)
            if status is None or status.status != "RUNNING":
                opts = self._launcher.options
                host_deployment = deployment(HostDeployment).options(
                    name="servable",
                    ray_actor_options=self._launcher.actor_options(slot.app, slot.placement),
                    num_replicas=slot.replicas,
                    max_ongoing_requests=opts.max_ongoing_requests,
                    max_queued_requests=opts.max_queued_requests,
                    graceful_shutdown_timeout_s=opts.graceful_shutdown_timeout_s,
                    graceful_shutdown_wait_loop_s=opts.graceful_shutdown_wait_loop_s,
                    health_check_period_s=opts.health_check_period_s,
                    health_check_timeout_s=opts.health_check_timeout_s,
                    logging_config={"enable_access_log": False},
                )
                serve.run_many(
                    [
                        serve.RunTarget(
                            host_deployment.bind(
                                slot.app,
                                opts.max_ongoing_requests,
                                opts.batching is not None,
                                opts.data_key,
                                opts.graceful_shutdown_timeout_s,
                            ),
                            name=slot.app,
                            route_prefix=None,
                        )
                    ],
                    wait_for_applications_running=False,
                )
                self._launcher.wait_running(slot.app, servable)
            return serve.get_app_handle(slot.app)

    def unload_shared(self, deployed: Deployed) -> None:
        """Out of its host's manifest; the host goes on. Waits (60 s at most) until the host's
        replicas dropped it."""
        self.hosts.remove(deployed.host, deployed.key)
        if not self.hosts.wait_gone(deployed.host, deployed.key, 60.0):
            log.warning("host %s did not drop %s within 60 s", deployed.host, deployed.key)

    def close_host(self, app: str) -> None:
        """The host holds no version any more: delete its application."""
        delete_apps([app])
        self.hosts.forget(app)

    def adopt(self, name: str, version: int, path: str, deployed: Deployed) -> None:
        """A restarted manager adopts a shared version: it goes back into its host's manifest
        (the host still holds it, so nothing loads)."""
        if not deployed.shared:
            return
        limit = (
            tf_memory_limit_bytes(deployed.host_vram_bytes) if deployed.device == "gpu" else None
        )
        self.hosts.put(
            deployed.host,
            servable_key(name, version),
            self._launcher.spec(name, version, path, limit),
        )
