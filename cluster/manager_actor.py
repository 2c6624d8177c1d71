"""The manager as a named, detached Ray actor: the control plane of one Aspire deployment.

It owns the file-system source (a polling thread), the Manager (policies and state) and its
reconcile loop (a thread), the pollers of `--model_config_file` and of Aspire's side file, and
creates/deletes version deployments through ServeBackend. It is a threaded actor: routers hold
long polls on `wait_for_serving_map` while status calls, reloads and the CLI are answered
concurrently. Every change of the served model list, from the config file, its polling or gRPC's
HandleReloadConfigRequest, goes through `reload_config`.

Restarts: the actor is detached with `max_restarts=-1`. When its process dies (killed, crashed,
SIGKILL), Ray runs `__init__` again with the same ManagerConfig, and the new incarnation
carries on from the state its predecessor kept in Ray's GCS key-value store
(cluster/manager_state.py): the model list, labels and settings in force (not the start-up ones
from the config), every version record and reservation. Serving versions are adopted as they
run, nothing is reloaded, and routers keep routing from their last serving map meanwhile, so
predict traffic does not notice; status and admin calls wait for the new incarnation. A fresh
start (`start_manager`, e.g. a new `aspire serve`) clears that state first and starts from its
ManagerConfig; `launcher.stop` kills the actor with `no_restart=True`, for good.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from dataclasses import dataclass, field

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from cluster.backend.remote_files import list_remote_children
from cluster.backend.serve_backend import ServeBackend
from cluster.backend.serve_state import (
    app_prefix,
    live_replica_pids,
    running_replicas,
    servable_apps,
)
from cluster.inventory import capacity_grew, cluster_inventory, head_node_id
from cluster.logs import EventLog, TextFormatter
from cluster.manager import Manager
from cluster.manager_state import (
    GcsStore,
    decode_value,
    dumps,
    encode_value,
    loads,
    state_prefix,
)
from cluster.publisher import ROUTER_POLL_S
from cluster.reservations import Reservations
from cluster.source import FileSystemSource
from config.aspire_config import ModelSettings, load_aspire_config
from config.model_config import (
    ModelSource,
    labels_from_config,
    models_from_config,
    read_config_file,
)
from config.options import ReplicaOptions
from core import metrics, protos
from core.errors import AspireError
from core.names import MANAGER_NAME, NAMESPACE

RECONCILE_INTERVAL_S = 0.1
log = logging.getLogger("aspire.manager")


def configure_logging() -> EventLog:
    """INFO logs of the `aspire.*` loggers to stderr (the actor's log file), whatever Ray did to
    the root logger, and to an EventLog that `aspire serve` follows (cluster/logs.py)."""
    logger = logging.getLogger("aspire")
    logger.setLevel(logging.INFO)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler()
    handler.setFormatter(TextFormatter())
    logger.addHandler(handler)
    events = EventLog()
    logger.addHandler(events)
    logger.propagate = False
    return events


@dataclass
class ManagerConfig:
    models: list[ModelSource]
    labels: dict[str, dict[str, int]] = field(default_factory=dict)
    poll_wait_s: float = 1.0
    replica: ReplicaOptions = field(default_factory=ReplicaOptions)
    num_load_threads: int = 4
    max_num_load_retries: int = 5
    load_retry_interval_s: float = 60.0
    allow_version_labels_for_unavailable_models: bool = False
    model_config_file: str | None = None
    model_config_file_poll_wait_s: float = 0.0
    aspire_config_file: str | None = None
    aspire_config_file_poll_wait_s: float = 1.0
    settings: dict[str, ModelSettings] = field(default_factory=dict)
    gpus: str | None = None  # declared GPU inventory per node ("2x16GiB"); None: read NVML
    inventory_refresh_s: float = 5.0
    # How long a router's long poll of the serving map waits. A restarted manager deletes
    # nothing until every router has polled (publisher.router_grace_s: this plus 2 s).
    router_poll_s: float = ROUTER_POLL_S


def _restarted() -> bool:
    """Whether Ray restarted this actor (its process died), as opposed to a new actor."""
    with warnings.catch_warnings():  # Ray's property reads its own deprecated `actor_id`
        warnings.simplefilter("ignore", DeprecationWarning)
        return bool(ray.get_runtime_context().was_current_actor_reconstructed)


class ManagerActor:
    def __init__(self, config: ManagerConfig):
        self._events = configure_logging()
        protos.load()  # SavedModel metadata is read without TensorFlow's runtime
        self._config = config
        self._store = GcsStore()
        self._state_key = state_prefix(MANAGER_NAME)
        self._config_lock = threading.Lock()
        restarted = _restarted()
        saved = self._saved_config() if restarted else None
        if not restarted:
            self._store.delete_prefix(self._state_key)  # a new manager never inherits state
        models = saved["models"] if saved else config.models
        labels = saved["labels"] if saved else config.labels
        settings = saved["settings"] if saved else config.settings
        self._backend = ServeBackend(config.replica)
        self._inventory = cluster_inventory(config.gpus)
        self._book = Reservations(*self._inventory)
        log.info(
            "Inventory: %d GPUs (%s), host RAM on %d nodes",
            len(self._inventory[0]),
            "declared " + config.gpus if config.gpus is not None else "NVML",
            len(self._inventory[1]),
        )
        self._manager = Manager(
            self._backend,
            num_load_threads=config.num_load_threads,
            max_num_load_retries=config.max_num_load_retries,
            load_retry_interval_s=config.load_retry_interval_s,
            book=self._book,
            store=self._store,
            state_prefix=self._state_key,
            router_poll_s=config.router_poll_s,
        )
        self._restored = None
        if restarted:
            log.warning("The manager restarted: taking over the state it stored")
            self._restored = self._manager.restore(servable_apps, app_prefix)
            # nodes that left while no manager watched: their versions are re-placed
            known = set(self._inventory[1]) | {g.node_id for g in self._inventory[0]}
            gone = (
                {
                    p.get("node_id")
                    for _, _, where in self._manager.versions_where()
                    for p in where.get("placements") or []
                }
                - known
                - {None}
            )
            if gone:
                log.warning(
                    "Ray nodes left the cluster while the manager was down: %s",
                    ", ".join(n[:12] for n in sorted(gone)),
                )
                self._manager.nodes_lost(gone)
        self._backend.hosts.open()  # shared hosts may follow their manifests now
        self._metrics = metrics.MetricsStore()  # every process's counts, added up
        self._settings: dict[str, ModelSettings] = {}
        self._apply_settings(settings)
        self._models = {m.name: m for m in models}
        self._source = FileSystemSource(
            models, config.poll_wait_s, self._on_aspired_versions, list_remote_children
        )
        self._manager.set_labels(labels)  # checked at start-up by the CLI, or before the restart
        self._save_config()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._reconcile_loop, name="aspire-reconcile", daemon=True),
            threading.Thread(
                target=self._poll_loop,
                daemon=True,
                name="aspire-state",
                args=(RECONCILE_INTERVAL_S, self._manager.flush_state),
            ),
            threading.Thread(
                target=self._poll_loop,
                daemon=True,
                name="aspire-inventory",
                args=(config.inventory_refresh_s, self.refresh_inventory),
            ),
        ]
        if config.model_config_file and config.model_config_file_poll_wait_s > 0:
            self._threads.append(
                threading.Thread(
                    target=self._poll_loop,
                    daemon=True,
                    args=(config.model_config_file_poll_wait_s, self._reread_model_config),
                    name="aspire-config",
                )
            )
        if config.aspire_config_file and config.aspire_config_file_poll_wait_s > 0:
            self._threads.append(
                threading.Thread(
                    target=self._poll_loop,
                    daemon=True,
                    args=(config.aspire_config_file_poll_wait_s, self._reread_aspire_config),
                    name="aspire-side",
                )
            )
        for thread in self._threads:
            thread.start()
        self._source.start()

    # ---- loops ------------------------------------------------------------------------------
    def _reconcile_loop(self) -> None:
        while not self._stop.wait(RECONCILE_INTERVAL_S):
            try:
                self._manager.reconcile()
            except Exception:
                log.exception("reconcile failed")

    def _poll_loop(self, period_s: float, action) -> None:
        while not self._stop.wait(period_s):
            try:
                action()
            except Exception:
                log.exception("%s failed", getattr(action, "__name__", "poll"))

    # ---- state kept for a restart (cluster/manager_state.py) --------------------------------
    def _saved_config(self) -> dict | None:
        """The model list, labels and settings the previous incarnation had in force."""
        try:
            data = self._store.get(self._state_key + "config")
            if data is None:
                return None
            doc = loads(data)
            return {
                "models": decode_value(doc["models"]),
                "labels": decode_value(doc["labels"]),
                "settings": decode_value(doc["settings"]),
            }
        except Exception as exc:  # the ManagerConfig is the next best thing
            log.error("Cannot read the stored configuration: %s: %s", type(exc).__name__, exc)
            return None

    def _save_config(self) -> None:
        """Store the model list, labels and settings in force. The snapshot is taken under the
        lock, so the last write is always the newest state."""
        with self._config_lock:
            doc = {
                "models": encode_value(list(self._models.values())),
                "labels": encode_value(self._manager.labels()),
                "settings": encode_value(dict(self._settings)),
            }
            try:
                self._store.put(self._state_key + "config", dumps(doc))
            except Exception as exc:
                log.error("Storing the configuration failed: %s", exc)

    def refresh_inventory(self) -> None:
        """Read the inventory again; refused versions are retried when capacity grew."""
        inventory = cluster_inventory(self._config.gpus)
        if inventory == self._inventory:
            return
        grew = capacity_grew(self._inventory, inventory)
        gone = set(self._inventory[1]) - set(inventory[1])
        self._inventory = inventory
        self._book.update_inventory(*inventory)
        if gone:
            log.warning("Ray nodes left the cluster: %s", ", ".join(n[:12] for n in sorted(gone)))
            self._manager.nodes_lost(gone)
        lost = self._book.lost()
        if lost:
            log.warning("reservations on GPUs or nodes that left the cluster: %s", sorted(lost))
        if grew:
            self._manager.capacity_changed("the inventory grew")

    def _reread_model_config(self) -> None:
        try:
            server_config = read_config_file(self._config.model_config_file)
            models = models_from_config(server_config)
        except AspireError as err:
            log.error("Failed to read ModelServerConfig file: %s", err.message)
            return
        code, message = self.reload_config(models, labels_from_config(server_config))
        if code != "OK":
            log.error("PollFilesystemAndReloadConfig failed to ReloadConfig: %s: %s", code, message)

    def _reread_aspire_config(self) -> None:
        try:
            settings = load_aspire_config(self._config.aspire_config_file)
        except AspireError as err:
            log.error("Failed to read Aspire config file: %s", err.message)
            return
        if settings != self._settings:
            log.info("Aspire config file changed: applying model settings")
            self._apply_settings(settings)
            self._save_config()

    def _apply_settings(self, settings: dict[str, ModelSettings]) -> None:
        self._settings = dict(settings)
        self._backend.settings = dict(settings)
        self._manager.set_traffic({n: s.traffic.weights for n, s in settings.items() if s.traffic})
        for name in self._manager.stream_names():
            self._manager.set_policy(name, self._policy_for(name))

    def _policy_for(self, name: str) -> str:
        settings = self._settings.get(name)
        return settings.version_policy if settings else "availability_preserving"

    def _on_aspired_versions(self, name: str, versions: dict[int, str]) -> None:
        self._manager.set_aspired_versions(name, versions, policy=self._policy_for(name))

    # ---- API --------------------------------------------------------------------------------
    def ready(self) -> bool:
        return True

    def configured_models(self) -> list[str]:
        return sorted(self._models)

    def model_status(self, name: str, version: int | None = None) -> tuple[str, object]:
        try:
            return "OK", self._manager.model_status(name, version)
        except AspireError as err:
            return err.code, err.message

    def events(self, since: int, timeout_s: float) -> tuple[int, list[dict]]:
        """The manager's log records numbered above `since` (cluster/logs.py EventLog)."""
        return self._events.since(since, timeout_s)

    def list_models(self) -> dict:
        return self._manager.list_models()

    def describe(self) -> dict:
        """Models with statuses, load retries pending, labels, traffic weights, where each
        version's replicas run, and the resource book (per GPU and per node: total, reserved by
        whom, free), for
        `aspire status` and `GET /v1/aspire/status`."""
        placements: dict[str, dict[str, list]] = {}
        running, pids = running_replicas(), live_replica_pids()
        for name, version, where in self._manager.versions_where():
            placements.setdefault(name, {})[str(version)] = [
                {
                    **p,
                    "running_replicas": running.get(p.get("app")),
                    "pids": pids.get(p.get("app"), []),
                }
                for p in where.get("placements", [])
            ]
        return {
            "models": self._manager.list_models(),
            "retries": self._manager.retries(),
            "labels": self._manager.labels(),
            "manager": {"restored": self._restored},
            "traffic": {n: [list(kv) for kv in w] for n, w in self._manager.traffic().items()},
            "placements": placements,
            "shared_hosts": self._manager.shared_hosts(),
            "resources": {
                "gpus": self._book.snapshot(),
                "hosts": self._book.ram_snapshot(),
                "lost": sorted(self._book.lost()),
            },
        }

    def serving_map(self) -> dict:
        return self._manager.serving_map()

    # ---- metrics ------------------------------------------------------------------------------
    def apply_metrics(self, deltas: metrics.Deltas) -> None:
        """Deltas shipped by a router or model replica (core/metrics.py `Shipper`)."""
        self._metrics.apply(deltas)

    def metrics_page(self) -> str:
        """The Prometheus page: TF Serving's families, then Aspire's (with per-version labels
        and the state gauges read now)."""
        self._metrics.apply(self._manager.drain_metrics())
        state = self._manager.metrics_state()
        state["gpus"] = [
            {"node": g["node"], "gpu": g["index"], "total": g["total"], "reserved": g["reserved"]}
            for g in self._book.snapshot()
        ]
        state["hosts"] = [
            {"node": h["node"], "total": h["total"], "reserved": h["reserved"]}
            for h in self._book.ram_snapshot()
        ]
        tfserving = self._metrics.render_tfserving()
        aspire = self._metrics.render_aspire(state)
        return (tfserving if tfserving.strip() else "") + aspire

    def host_manifest(self, app: str, replica_id: str, known_epoch: int, timeout_s: float):
        """A shared host replica's long poll of what it holds (cluster/backend/host_registry.py)."""
        return self._backend.hosts.manifest(app, replica_id, known_epoch, timeout_s)

    def host_report(self, app: str, replica_id: str, key: str, error, gone: bool) -> None:
        """A shared host replica loaded (error None), failed (error) or dropped (gone) a key."""
        self._backend.hosts.report(app, replica_id, key, error, gone)

    def wait_for_serving_map(self, known_epoch: int, router_id: str, timeout_s: float):
        return self._manager.wait_for_serving_map(known_epoch, router_id, timeout_s)

    def reload_config(
        self, models: list[ModelSource], labels: dict[str, dict[str, int]]
    ) -> tuple[str, str]:
        """Replace the served model list and labels (TF Serving's ReloadConfig). Labels are
        checked first; if they are refused, nothing changes. Models that stay are not disturbed."""
        try:
            self._manager.check_labels(
                labels, self._config.allow_version_labels_for_unavailable_models
            )
        except AspireError as err:
            return err.code, err.message
        self._models = {m.name: m for m in models}
        self._source.set_models(models)
        self._manager.set_labels(labels, wait_for_routers=True)
        self._save_config()  # an OK answer means a restart keeps it
        self._source.poll_once()
        return "OK", ""

    def set_settings(self, settings: dict[str, ModelSettings]) -> None:
        """Replace the per-model settings, as a changed side file does (used by tests and tools).
        Like the side file, they apply to versions loaded from now on."""
        self._apply_settings(settings)
        self._save_config()

    def set_models(self, models: list[ModelSource]) -> None:
        """Replace the served model list, keeping labels (used by tests and tools)."""
        self.reload_config(models, self._manager.labels())

    def wait_for_models(self, names: list[str], timeout_s: float) -> dict:
        return self._manager.wait_for_models(names, timeout_s)

    def settle(self, timeout_s: float) -> bool:
        """Wait until every stream has carried out every action its policy asks for."""
        return self._manager.wait_idle(timeout_s)

    def poll_now(self) -> None:
        self._source.poll_once()

    def shutdown(self, timeout_s: float = 120.0) -> bool:
        """Unload every version (deleting its deployment) and stop the loops. Loads in flight
        are cancelled and retry waits end at once (every version is unaspired), so this takes
        about as long as deleting the deployments. Returns whether all of it ended within
        `timeout_s`."""
        self._source.stop()
        self._backend.cancel_loads()
        for name in self._manager.stream_names():
            self._manager.forget_stream(name)
        done = self._manager.wait_idle(timeout_s)
        self._stop.set()
        return done


def start_manager(config: ManagerConfig):
    """Create the detached, restartable manager actor (replacing a stale one, whose stored
    state is cleared) and wait until it answers."""
    try:
        stale = ray.get_actor(MANAGER_NAME, namespace=NAMESPACE)
    except ValueError:
        stale = None
    if stale is not None:
        log.warning("replacing an existing Aspire manager on this cluster")
        ray.kill(stale, no_restart=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # its name is free once it is gone
            try:
                ray.get_actor(MANAGER_NAME, namespace=NAMESPACE)
            except ValueError:
                break
            time.sleep(0.1)
    # A new manager starts from `config`, never from a predecessor's state (the new actor clears
    # it too; clearing here also covers a predecessor that is already gone).
    GcsStore().delete_prefix(state_prefix(MANAGER_NAME))
    actor_cls = ray.remote(ManagerActor)
    # On the head node: it lives as long as the cluster, so losing a worker never takes the
    # control plane with it. The source polls the model base paths from there: on a cluster,
    # a shared path that is the same on every node (or gs://, s3://).
    head = head_node_id()
    # max_restarts=-1: Ray brings a dead manager back (same config, state from the GCS store);
    # ray.kill(..., no_restart=True) still ends it for good.
    actor = actor_cls.options(
        name=MANAGER_NAME,
        namespace=NAMESPACE,
        lifetime="detached",
        max_concurrency=64,
        num_cpus=0,
        max_restarts=-1,
        scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=False),
    ).remote(config)
    ray.get(actor.ready.remote())
    return actor


def get_manager():
    return ray.get_actor(MANAGER_NAME, namespace=NAMESPACE)
