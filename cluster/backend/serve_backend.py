"""What the manager calls to size, create and delete a version's Serve applications: the
production `Backend` and `SharedHosts` (cluster/backend/interface.py).

One servable version is one Ray Serve application per placement of its replicas: replicas that
share a (node, GPU) form one application, pinned to its node, running `ServableDeployment`
(deployments/replica/servable.py). `ServeBackend.load` reports a version loaded only once its
applications are RUNNING and a replica of each has answered a call; a replica whose load failed
answers with its AspireError, which `load` raises. A shared version (`load_shared`) goes into
a shared host (cluster/backend/shared_hosts.py). Running an application and waiting for it:
cluster/backend/serve_apps.py; deleting applications: cluster/backend/serve_state.py.
"""

from __future__ import annotations

import logging
from typing import Any

from ray import serve

from cluster.backend.host_registry import HostRegistry
from cluster.backend.serve_apps import Launcher, deploy_failure_message, deployment, servable_id
from cluster.backend.serve_state import delete_apps
from cluster.backend.shared_hosts import SharedHostLoader
from config.aspire_config import ModelSettings
from config.options import ReplicaOptions
from core.deployed import AppPlacement, Deployed
from core.errors import AspireError
from core.names import app_name
from deployments.replica.loader import SavedModelLoader, gpu_memory_fraction
from deployments.replica.servable import ServableDeployment
from policies.admission import HostSlot, Need, Placement, replica_need, tf_memory_limit_bytes

log = logging.getLogger("aspire.servable")


def _groups(placements: list[Placement]) -> list[tuple[Placement, int]]:
    """Placements sharing a (node, GPU), in first-seen order, as (placement, replica count)."""
    counts: dict[tuple[str, int | None], tuple[Placement, int]] = {}
    for p in placements:
        first, n = counts.get((p.node_id, p.gpu_index), (p, 0))
        counts[(p.node_id, p.gpu_index)] = (first, n + 1)
    return list(counts.values())


class ServeBackend:
    """Sizes, creates and deletes version deployments on Ray Serve (called from the manager).

    `settings` (model name -> config.aspire_config.ModelSettings) is replaced whole by the
    manager when the side file changes; each load reads it once it starts."""

    def __init__(self, options: ReplicaOptions, load_timeout_s: float = 600.0):
        self.options = options
        self.settings: dict[str, ModelSettings] = {}
        self._launcher = Launcher(options, load_timeout_s)
        self.hosts = HostRegistry()  # shared hosts' manifests (cluster/backend/host_registry.py)
        self._shared = SharedHostLoader(self._launcher, self.hosts)

    def cancel_loads(self) -> None:
        """Make every load in flight, and every later one, fail at once with CANCELLED (its
        applications deleted): the server is stopping and must not wait for a replica to load."""
        self._launcher.cancel()

    def need(
        self, name: str, version: int, path: str, has_gpus: bool, measured_vram_bytes: int | None
    ) -> tuple[Need, int]:
        """(what one replica needs, how many replicas): see interface.py `Backend.need`. With
        --per_process_gpu_memory_fraction (or a session config file's fraction), a GPU replica
        needs that share of the GPU it is placed on (policies/admission.py `Need.vram_fraction`)."""
        settings = self.settings.get(name)
        resources = SavedModelLoader(path, self.options.tags).estimate_resources()
        device = (settings and settings.device) or ("gpu" if has_gpus else "cpu")
        fraction = gpu_memory_fraction(
            self.options.gpu_memory_fraction, self.options.session_config
        )
        need = replica_need(
            device,
            variable_bytes=resources.variable_bytes,
            ram_estimate_bytes=resources.ram_bytes,
            declared_vram_bytes=settings.vram_bytes if settings else None,
            declared_ram_bytes=settings.ram_bytes if settings else None,
            measured_vram_bytes=measured_vram_bytes,
            gpu_memory_fraction=fraction,
            cpus=self.options.num_cpus,
        )
        return need, self._replicas(name)

    def _replicas(self, name: str) -> int:
        """Replicas to reserve: the fixed count, or an autoscaled version's max_replicas."""
        settings = self.settings.get(name)
        if settings and settings.autoscaling:
            return settings.autoscaling.max_replicas
        return (settings and settings.num_replicas) or self.options.num_replicas

    def _scaling(self, name: str, counts: list[int]) -> list[dict[str, Any]]:
        """Serve options for each application of a version, given its reserved replica counts.
        Autoscaled: each application scales between its share of min_replicas (at least 1, so
        every reserved (node, GPU) keeps a warm replica) and its reserved count."""
        settings = self.settings.get(name)
        autoscaling = settings.autoscaling if settings else None
        if autoscaling is None:
            return [{"num_replicas": n} for n in counts]
        floors, left = [], autoscaling.min_replicas
        for n in counts:  # the first min_replicas reserved replicas, in placement order
            floors.append(max(1, min(n, left)))
            left -= min(n, left)
        return [
            {"autoscaling_config": autoscaling.serve_config(low, n)}
            for low, n in zip(floors, counts, strict=True)
        ]

    def _request_limits(self, name: str) -> tuple[int, int]:
        """(max_ongoing_requests, max_queued_requests) of a model: the side file's, else the
        server-wide options."""
        settings = self.settings.get(name)
        ongoing = settings and settings.max_ongoing_requests
        queued = settings.max_queued_requests if settings else None
        return (
            ongoing or self.options.max_ongoing_requests,
            self.options.max_queued_requests if queued is None else queued,
        )

    def _health_checks(self, name: str) -> tuple[float, float]:
        """(period, timeout) of Serve's health checks for a model's replicas: the side file's,
        else the server-wide options."""
        settings = self.settings.get(name)
        period = settings.health_check_period_s if settings else None
        timeout = settings.health_check_timeout_s if settings else None
        return (
            period or self.options.health_check_period_s,
            timeout or self.options.health_check_timeout_s,
        )

    def load(
        self, name: str, version: int, path: str, placements: list[Placement] | None = None
    ) -> Deployed:
        """Create the version's applications, one per (node, GPU) of `placements`, and return
        where it runs once a replica of each answered (interface.py `Backend.load`)."""
        groups: list[tuple[Placement | None, int]] = (
            list(_groups(placements)) if placements else [(None, self._replicas(name))]
        )
        base = app_name(name, version)
        names = [base if i == 0 else f"{base}-p{i}" for i in range(len(groups))]
        return self._deploy(name, version, path, groups, names)

    def extend(
        self, name: str, version: int, path: str, placements: list[Placement], deployed: Deployed
    ) -> Deployed:
        """Create applications for further replicas of a version that runs as `deployed` (the
        replicas lost with a node, re-placed): one per (node, GPU) of `placements`, named after
        those `deployed` has. Returns where the new replicas run, once a replica of each new
        application answered; what runs already is not touched (interface.py
        `ReplicaRepairs.extend`)."""
        base, taken = app_name(name, version), set(deployed.app_names())
        groups = list(_groups(placements))
        names = [f"{base}-p{i}" for i in range(1, len(taken) + len(groups) + 1)]
        names = [n for n in names if n not in taken][: len(groups)]
        return self._deploy(name, version, path, list(groups), names)

    def _deploy(
        self,
        name: str,
        version: int,
        path: str,
        groups: list[tuple[Placement | None, int]],
        names: list[str],
    ) -> Deployed:
        """Run one application per group (placement, replica count) under `names`, and return
        where they run once a replica of each answered; on a failure delete them all and
        raise."""
        servable = servable_id(name, version)
        self._launcher.check_cancelled(servable)
        loader = SavedModelLoader(path, self.options.tags)
        ram_bytes = loader.estimate_resources().ram_bytes
        loader.validate()  # cheap: refuses a version that cannot load before starting replicas
        opts = self.options
        apps: list[tuple[str, int]] = []
        replicas: list[AppPlacement] = []
        scaling = self._scaling(name, [n for _, n in groups])
        ongoing, queued = self._request_limits(name)
        check_period_s, check_timeout_s = self._health_checks(name)
        try:
            for i, (placement, count) in enumerate(groups):
                app = names[i]
                apps.append((app, count))
                limit = (
                    tf_memory_limit_bytes(placement.vram_bytes)
                    if placement is not None and placement.gpu_index is not None
                    else None
                )
                app_deployment = deployment(ServableDeployment).options(
                    name="servable",
                    ray_actor_options=self._launcher.actor_options(app, placement),
                    **scaling[i],
                    max_ongoing_requests=ongoing,
                    max_queued_requests=queued,
                    graceful_shutdown_timeout_s=opts.graceful_shutdown_timeout_s,
                    graceful_shutdown_wait_loop_s=opts.graceful_shutdown_wait_loop_s,
                    health_check_period_s=check_period_s,
                    health_check_timeout_s=check_timeout_s,
                    # Aspire counts every request in its own metrics; Serve's per-call log line
                    # cost about 2 % of a replica's CPU
                    logging_config={"enable_access_log": False},
                )
                [handle] = serve.run_many(
                    [
                        serve.RunTarget(
                            app_deployment.bind(
                                self._launcher.spec(name, version, path, limit),
                                ongoing,
                                opts.data_key,
                                opts.graceful_shutdown_timeout_s,
                            ),
                            name=app,
                            route_prefix=None,
                        )
                    ],
                    wait_for_applications_running=False,
                )
                self._launcher.wait_running(app, servable)
                answer = self._launcher.ping(handle, servable)
                if answer.error is not None:  # the replica's load failed: its AspireError
                    raise answer.error
                autoscaled = scaling[i].get("autoscaling_config")
                replicas.append(
                    AppPlacement(
                        app=app,
                        replicas=count,
                        min_replicas=autoscaled["min_replicas"] if autoscaled else count,
                        node_id=answer.node_id,
                        pid=answer.pid,
                        gpu=None if placement is None else placement.gpu_index,
                        vram_bytes=0 if placement is None else placement.vram_bytes,
                        cuda_visible_devices=answer.cuda_visible_devices,
                        measured_vram_bytes=answer.measured_vram_bytes,
                        session_threads=answer.session_threads,
                    )
                )
        except AspireError as err:
            # a cancelled load (the server stopping) does not wait for a replica that is busy
            # loading to stop: Serve goes on deleting it
            delete_apps([app for app, _ in apps], timeout_s=0 if err.code == "CANCELLED" else 120)
            raise
        except Exception as exc:
            delete_apps([app for app, _ in apps])
            raise AspireError(deploy_failure_message(str(exc)), "UNKNOWN") from None
        measured = [r.measured_vram_bytes for r in replicas if r.measured_vram_bytes]
        return Deployed(
            apps=tuple(apps),
            ram_bytes=ram_bytes,
            placements=tuple(replicas),
            measured_vram_bytes=max(measured) if measured else None,
            # what routers need besides the apps (core/contracts.py VersionAddress)
            max_queued_requests=queued,
        )

    def unload(self, deployed: Deployed) -> None:
        """Delete the version's applications; a shared version leaves its host instead."""
        if deployed.shared:
            self._shared.unload_shared(deployed)
            return
        delete_apps(deployed.app_names())

    # ---- shared hosts (cluster/backend/shared_hosts.py) ----------------------------------------
    def shared(self, name: str) -> bool:
        """Whether the side file places the model's versions in shared hosts."""
        settings = self.settings.get(name)
        return bool(settings and settings.placement == "shared")

    @property
    def host_replicas(self) -> int:
        return max(1, self.options.shared_host_replicas)

    def host_block(self, device: str) -> Need:
        """What one host books: the --shared_host_ram (and, on a GPU, --shared_host_vram), and
        its replica's Ray CPUs."""
        opts = self.options
        vram = opts.shared_host_vram_bytes if device == "gpu" else 0
        return Need(vram, opts.shared_host_ram_bytes, cpus=opts.num_cpus)

    def load_shared(self, name: str, version: int, path: str, slot: HostSlot) -> Deployed:
        return self._shared.load_shared(name, version, path, slot)

    def adopt(self, name: str, version: int, path: str, deployed: Deployed) -> None:
        self._shared.adopt(name, version, path, deployed)

    def close_host(self, app: str) -> None:
        self._shared.close_host(app)
