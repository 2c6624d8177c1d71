"""What the manager calls to size, create and delete a version's Serve applications.

One servable version is one Ray Serve application per placement of its replicas: replicas that
share a (node, GPU) form one application, pinned to its node, running `ServableDeployment`
(deployments/replica/servable.py). `ServeBackend.load` reports a version loaded only once its
applications are RUNNING and a replica of each has answered a call; a replica whose load failed
answers with its AspireError, which `load` raises. A shared version (`load_shared`) goes into
a shared host's manifest (cluster/backend/host_registry.py), the host's application created here
the first time (deployments/replica/shared_host.py). Deleting
applications: cluster/backend/serve_state.py.
"""

from __future__ import annotations

import logging
import threading
import time

from ray import serve

from cluster.backend.host_registry import HostRegistry
from cluster.backend.serve_state import delete_apps
from config.options import ReplicaOptions
from core.errors import AspireError
from core.names import app_name
from deployments.replica.loader import SavedModelLoader
from deployments.replica.servable import ServableDeployment, VersionSpec
from deployments.replica.shared_host import HostDeployment
from deployments.wire.direct import servable_key
from policies.admission import HostSlot, Need, Placement, replica_need, tf_memory_limit_bytes

log = logging.getLogger("aspire.servable")


def _deploy_failure_message(text: str) -> str:
    """The useful line of a Serve DEPLOY_FAILED message (it embeds the replica's traceback)."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith(("core.errors.AspireError:", "AspireError:")):
            return line.split(":", 1)[1].strip()
    return text.strip().splitlines()[-1].strip() if text.strip() else "deployment failed"


def _groups(placements: list[Placement]) -> list[tuple[Placement, int]]:
    """Placements sharing a (node, GPU), in first-seen order, as (placement, replica count)."""
    counts: dict[tuple, list] = {}
    for p in placements:
        counts.setdefault((p.node_id, p.gpu_index), [p, 0])[1] += 1
    return [(p, n) for p, n in counts.values()]


def _replica_env(app: str, placement: Placement | None) -> dict[str, str]:
    env = {"ASPIRE_SERVABLE": app}  # lets the NVML inventory tell Aspire's processes apart
    if placement is not None:
        env.update(
            {
                "CUDA_VISIBLE_DEVICES": ""
                if placement.gpu_index is None
                else str(placement.gpu_index),
                "CUDA_DEVICE_ORDER": "PCI_BUS_ID",  # CUDA numbers GPUs as NVML does
                "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1",
            }
        )
    return env


class ServeBackend:
    """Sizes, creates and deletes version deployments on Ray Serve (called from the manager)."""

    def __init__(self, options: ReplicaOptions, load_timeout_s: float = 600.0):
        self.options = options
        self.load_timeout_s = load_timeout_s
        self.settings: dict = {}  # model name -> config.aspire_config.ModelSettings
        self._cancelled = threading.Event()  # the server is stopping: loads in flight give up
        self.hosts = HostRegistry()  # shared hosts' manifests (cluster/backend/host_registry.py)
        self._host_locks: dict[str, threading.Lock] = {}
        self._host_locks_guard = threading.Lock()

    def cancel_loads(self) -> None:
        """Make every load in flight, and every later one, fail at once with CANCELLED (its
        applications deleted): the server is stopping and must not wait for a replica to load."""
        self._cancelled.set()

    def _check_cancelled(self, servable: str) -> None:
        if self._cancelled.is_set():
            raise AspireError(f"Loading of servable {servable} cancelled", "CANCELLED")

    def need(
        self, name: str, version: int, path: str, has_gpus: bool, measured_vram_bytes: int | None
    ) -> tuple[Need, int]:
        settings = self.settings.get(name)
        resources = SavedModelLoader(path, self.options.tags).estimate_resources()
        device = (settings and settings.device) or ("gpu" if has_gpus else "cpu")
        need = replica_need(
            device,
            variable_bytes=resources.variable_bytes,
            ram_estimate_bytes=resources.ram_bytes,
            declared_vram_bytes=settings.vram_bytes if settings else None,
            declared_ram_bytes=settings.ram_bytes if settings else None,
            measured_vram_bytes=measured_vram_bytes,
        )
        return need, self._replicas(name)

    def _replicas(self, name: str) -> int:
        """Replicas to reserve: the fixed count, or an autoscaled version's max_replicas."""
        settings = self.settings.get(name)
        if settings and settings.autoscaling:
            return settings.autoscaling.max_replicas
        return (settings and settings.num_replicas) or self.options.num_replicas

    def _scaling(self, name: str, counts: list[int]) -> list[dict]:
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
    ) -> dict:
        self._check_cancelled(f"{{name: {name} version: {version}}}")
        loader = SavedModelLoader(path, self.options.tags)
        ram_bytes = loader.estimate_resources().ram_bytes
        loader.validate()  # cheap: refuses a version that cannot load before starting replicas
        opts = self.options
        groups = _groups(placements) if placements else [(None, self._replicas(name))]
        base = app_name(name, version)
        apps, replicas = [], []
        scaling = self._scaling(name, [n for _, n in groups])
        ongoing, queued = self._request_limits(name)
        check_period_s, check_timeout_s = self._health_checks(name)
        try:
            for i, (placement, count) in enumerate(groups):
                app = base if i == 0 else f"{base}-p{i}"
                apps.append([app, count])
                actor_options = {
                    "num_cpus": opts.num_cpus,
                    "num_gpus": 0,
                    "runtime_env": {"env_vars": _replica_env(app, placement)},
                    **opts.extra_actor_options,
                }
                if placement is not None:
                    actor_options["label_selector"] = {"ray.io/node-id": placement.node_id}
                limit = (
                    tf_memory_limit_bytes(placement.vram_bytes)
                    if placement is not None and placement.gpu_index is not None
                    else None
                )
                deployment = ServableDeployment.options(
                    name="servable",
                    ray_actor_options=actor_options,
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
                            deployment.bind(
                                self._spec(name, version, path, limit),
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
                servable = f"{{name: {name} version: {version}}}"
                self._wait_running(app, servable)
                answer = self._ping(handle, servable)
                if answer["error"] is not None:  # the replica's load failed: its AspireError
                    raise answer["error"]
                autoscaled = scaling[i].get("autoscaling_config")
                replicas.append(
                    {
                        "app": app,
                        "replicas": count,
                        "min_replicas": autoscaled["min_replicas"] if autoscaled else count,
                        "node_id": answer["node_id"],
                        "pid": answer["pid"],
                        "gpu": None if placement is None else placement.gpu_index,
                        "vram_bytes": 0 if placement is None else placement.vram_bytes,
                        "cuda_visible_devices": answer["cuda_visible_devices"],
                        "measured_vram_bytes": answer["measured_vram_bytes"],
                        "session_threads": answer["session_threads"],
                    }
                )
        except AspireError as err:
            # a cancelled load (the server stopping) does not wait for a replica that is busy
            # loading to stop: Serve goes on deleting it
            delete_apps([app for app, _ in apps], timeout_s=0 if err.code == "CANCELLED" else 120)
            raise
        except Exception as exc:
            delete_apps([app for app, _ in apps])
            raise AspireError(_deploy_failure_message(str(exc)), "UNKNOWN") from None
        measured = [r["measured_vram_bytes"] for r in replicas if r["measured_vram_bytes"]]
        return {
            "apps": apps,
            "ram_bytes": ram_bytes,
            "placements": replicas,
            "measured_vram_bytes": max(measured) if measured else None,
            # what routers need besides the apps (deployments/router/core.py VersionAddress)
            "max_queued_requests": queued,
        }

    def _spec(self, name: str, version: int, path: str, gpu_limit: int | None) -> VersionSpec:
        opts = self.options
        return VersionSpec(
            name,
            version,
            path,
            tuple(opts.tags),
            max(1, opts.num_request_iterations_for_warmup) if opts.enable_model_warmup else None,
            gpu_limit,
            opts.batching,
            (opts.intra_op_threads, opts.inter_op_threads),
            opts.run_timeout_ms,
            opts.tensor_content,
        )

    # ---- shared hosts ("placement": "shared", deployments/replica/shared_host.py) ---------
    def shared(self, name: str) -> bool:
        settings = self.settings.get(name)
        return bool(settings and settings.placement == "shared")

    @property
    def host_replicas(self) -> int:
        return max(1, self.options.shared_host_replicas)

    def host_block(self, device: str) -> Need:
        opts = self.options
        vram = opts.shared_host_vram_bytes if device == "gpu" else 0
        return Need(vram, opts.shared_host_ram_bytes)

    def load_shared(self, name: str, version: int, path: str, slot: HostSlot) -> dict:
        """Load a version into the host `slot` names (opened first if it does not run): put it
        in the host's manifest, then wait until the host's replicas hold it."""
        servable = f"{{name: {name} version: {version}}}"
        self._check_cancelled(servable)
        loader = SavedModelLoader(path, self.options.tags)
        ram_bytes = loader.estimate_resources().ram_bytes
        loader.validate()
        key = servable_key(name, version)
        placement = slot.placement
        limit = (
            tf_memory_limit_bytes(placement.vram_bytes)
            if placement is not None and placement.gpu_index is not None
            else None
        )
        self.hosts.put(slot.app, key, self._spec(name, version, path, limit))
        try:
            handle = self._open_host(slot, servable)
            self.hosts.wait_loaded(
                slot.app,
                key,
                time.monotonic() + self.load_timeout_s,
                lambda: self._check_cancelled(servable),
            )
        except AspireError:
            self.hosts.remove(slot.app, key)
            raise
        except Exception as exc:
            self.hosts.remove(slot.app, key)
            raise AspireError(_deploy_failure_message(str(exc)), "UNKNOWN") from None
        answer = self._ping(handle, servable)
        return {
            "apps": [[slot.app, slot.replicas]],
            "key": key,
            "host": slot.app,
            "host_vram_bytes": 0 if placement is None else placement.vram_bytes,
            "ram_bytes": ram_bytes,
            "placements": [
                {
                    "app": slot.app,
                    "host": slot.app,
                    "replicas": slot.replicas,
                    "min_replicas": slot.replicas,
                    "node_id": answer["node_id"],
                    "pid": answer["pid"],
                    "gpu": None if placement is None else placement.gpu_index,
                    "vram_bytes": 0,
                    "cuda_visible_devices": answer["cuda_visible_devices"],
                    "measured_vram_bytes": None,
                    "session_threads": None,
                }
            ],
            "measured_vram_bytes": None,
            "max_queued_requests": self.options.max_queued_requests,
        }

    def _open_host(self, slot: HostSlot, servable: str):
        """The host's Serve handle, once its application runs (created here the first time)."""
        with self._host_locks_guard:
            lock = self._host_locks.setdefault(slot.app, threading.Lock())
        with lock:
            status = serve.status().applications.get(slot.app)
            if status is None or status.status != "RUNNING":
                opts = self.options
                placement = slot.placement
                actor_options = {
                    "num_cpus": opts.num_cpus,
                    "num_gpus": 0,
                    "runtime_env": {"env_vars": _replica_env(slot.app, placement)},
                    **opts.extra_actor_options,
                }
                if placement is not None:
                    actor_options["label_selector"] = {"ray.io/node-id": placement.node_id}
                deployment = HostDeployment.options(
                    name="servable",
                    ray_actor_options=actor_options,
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
                            deployment.bind(
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
                self._wait_running(slot.app, servable)
            return serve.get_app_handle(slot.app)

    def close_host(self, app: str) -> None:
        """The host holds no version any more: delete its application."""
        delete_apps([app])
        self.hosts.forget(app)

    def adopt(self, name: str, version: int, path: str, where: dict) -> None:
        """A restarted manager adopts a shared version: it goes back into its host's manifest
        (the host still holds it, so nothing loads)."""
        host = where.get("host")
        if host:
            placement = where.get("placements") or [{}]
            gpu = placement[0].get("gpu")
            limit = (
                tf_memory_limit_bytes(int(where.get("host_vram_bytes") or 0))
                if gpu is not None
                else None
            )
            self.hosts.put(
                host, servable_key(name, version), self._spec(name, version, path, limit)
            )

    def _ping(self, handle, servable: str) -> dict:
        """The replica's answer once its load is done, polled so a stop cancels the wait."""
        response = handle.ping.remote()
        deadline = time.monotonic() + self.load_timeout_s
        while True:
            self._check_cancelled(servable)
            try:
                return response.result(timeout_s=0.5)
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise AspireError(
                        f"Servable {servable} did not answer in {self.load_timeout_s:.0f} s",
                        "DEADLINE_EXCEEDED",
                    ) from None

    def _wait_running(self, app: str, servable: str) -> None:
        """Wait for the application to run. A replica Ray cannot schedule (Serve reports it after
        30 s) fails the load with RESOURCE_EXHAUSTED and Serve's numbers, instead of pending."""
        deadline = time.monotonic() + self.load_timeout_s
        while time.monotonic() < deadline:
            self._check_cancelled(servable)
            status = serve.status().applications.get(app)
            if status is not None:
                if status.status == "RUNNING":
                    return
                if status.status in ("DEPLOY_FAILED", "UNHEALTHY"):
                    detail = [d.message for d in status.deployments.values() if d.message]
                    message = _deploy_failure_message("\n".join(detail) or status.message)
                    raise AspireError(
                        message, "RESOURCE_EXHAUSTED" if "Unschedulable" in message else "UNKNOWN"
                    )
                for deployment in status.deployments.values():
                    text = deployment.message or ""
                    if "to be scheduled" in text:
                        detail = text[text.find("Resources required") :].split(" Use `ray status`")[
                            0
                        ]
                        raise AspireError(
                            f"Replicas of servable {servable} could not be scheduled "
                            f"on the cluster: {detail}",
                            "RESOURCE_EXHAUSTED",
                        )
            time.sleep(0.2)
        raise AspireError(
            f"Servable {servable} did not start in {self.load_timeout_s:.0f} s", "DEADLINE_EXCEEDED"
        )

    def unload(self, name: str, version: int, where: dict) -> None:
        if where.get("key"):  # shared: out of its host's manifest, the host goes on
            self.hosts.remove(where["host"], where["key"])
            if not self.hosts.wait_gone(where["host"], where["key"], 60.0):
                log.warning("host %s did not drop %s within 60 s", where["host"], where["key"])
            return
        delete_apps([app for app, _ in where.get("apps") or [[app_name(name, version), 1]]])
