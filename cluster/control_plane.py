"""The control plane of one Aspire deployment, as plain Python: built by `build_control_plane`,
exposed over Ray by cluster/manager_actor.py, and driven by unit tests without Ray.

Parts (each its own object, held by `ControlPlane`):
- `source`: the file-system source (cluster/source.py), which polls every model's base path and
  hands the manager each model's aspired versions;
- `manager`: the Manager (cluster/manager.py), with its loader harness (`harness`: admission,
  loads, unloads), its journal in the state store (`journal`) and the publisher of the serving
  map (`publisher`);
- `book`: the reservation book (cluster/reservations.py) over the cluster's inventory, and the
  shared hosts' book inside the harness (`hosts()`);
- `metrics`: every process's metric deltas, added up (core/metrics.py `MetricsStore`);
- the model list, labels and per-model settings in force, stored for a restart.

Lifecycle:
1. `build_control_plane` reads the inventory and either clears the stored state (a new manager)
   or takes over what a predecessor stored (`restarted`: the configuration in force, every
   version record; cluster/recovery.py), then applies the settings and labels. Nothing loads
   yet: the source has not polled.
2. `start()` starts the loops (reconcile and state flush every `RECONCILE_INTERVAL_S`, the
   inventory, the two config file pollers) and the source.
3. `shutdown()` unloads every version and stops the loops.

What it reads of the cluster comes through `ClusterView` (Ray and Ray Serve in production, stand-
ins in tests); what it creates and deletes, through its backend (cluster/backend/interface.py).
Every change of the served model list, from the config file, its polling or gRPC's
HandleReloadConfigRequest, goes through `reload_config`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from cluster.backend.interface import Backend
from cluster.capacity import CapacityRequests, CapacityWaits, held_bundles
from cluster.harness import LoaderHarness
from cluster.inventory import Inventory, capacity_grew
from cluster.journal import Journal
from cluster.manager import Manager
from cluster.manager_state import (
    StateStore,
    decode_value,
    dumps,
    encode_value,
    loads,
)
from cluster.publisher import ROUTER_POLL_S, Publisher
from cluster.reservations import Reservations
from cluster.rollouts import TICK_S as ROLLOUT_TICK_S
from cluster.rollouts import Rollouts
from cluster.source import FileSystemSource, RemoteLister
from config.aspire_config import ModelSettings, load_aspire_config
from config.model_config import (
    ModelSource,
    labels_from_config,
    models_from_config,
    read_config_file,
)
from config.options import ReplicaOptions, ServerOptions
from core import metrics
from core.contracts import ServingMap
from core.errors import AspireError

RECONCILE_INTERVAL_S = 0.1
# How often the autoscaler request is brought up to date while capacity waits are on (a wait
# that begins wakes the loop at once; this paces deadlines and releases)
CAPACITY_SYNC_S = 2.0
log = logging.getLogger("aspire.manager")


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
    # how long a version that does not fit waits for the autoscaler to add a node
    # (cluster/capacity.py); 0: refused at once
    capacity_wait_s: float = 0.0
    # How long a router's long poll of the serving map waits. A restarted manager deletes
    # nothing until every router has polled (publisher.router_grace_s: this plus 2 s).
    router_poll_s: float = ROUTER_POLL_S
    # The routers' options: the manager runs them on the nodes that serve the ports
    # (cluster/backend/routers.py). None: no routers (a control plane driven by tests).
    server: ServerOptions | None = None
    # What `aspire serve` was started with (cluster/cli.py `flags_fingerprint`): a later
    # `aspire serve --address` with the same flags adopts this manager instead of replacing it
    fingerprint: str = ""


class ControlBackend(Backend, Protocol):
    """The backend as the control plane configures it: the per-model settings it sizes and
    places versions by (replaced whole when they change), and the stop of loads in flight."""

    settings: dict[str, ModelSettings]

    def cancel_loads(self) -> None:
        """Every load in flight, and every later one, fails at once with CANCELLED."""
        ...


@dataclass(frozen=True)
class ClusterView:
    """What the control plane reads of the cluster it runs on.

    `inventory(declared)`: GPUs, host RAM and Ray CPUs per node now (`declared`:
    ManagerConfig.gpus; cluster/inventory.py).
    `servable_apps()`: the versions' Serve applications that exist now; `app_prefix(name)`: how
    the application names of model `name` start (cluster/backend/serve_state.py). `list_remote`:
    lists a URL base path (None: local paths only). `running_replicas()`: application ->
    replicas running now; `replica_pids()`: application -> pids of its live replicas (status).
    `sync_routers(alive)`: run the routers of the nodes `alive` (the node ids of the inventory)
    that serve the ports and delete those of nodes gone; returns {node id: {"app": its router
    application, "address": the node's address}} (cluster/backend/routers.py; None: no routers
    to run). `aspire_cpus()`: node id -> Ray CPUs Aspire's own actors (the routers) book there.
    `request_resources(bundles)`: Ray's autoscaler request (cluster/capacity.py; None: the
    cluster cannot be asked to grow).
    """

    inventory: Callable[[str | None], Inventory]
    servable_apps: Callable[[], set[str]]
    app_prefix: Callable[[str], str]
    list_remote: RemoteLister | None = None
    running_replicas: Callable[[], dict[str, int]] = dict
    replica_pids: Callable[[], dict[str, list[int]]] = dict
    sync_routers: Callable[[set[str]], dict[str, dict[str, str]]] | None = None
    aspire_cpus: Callable[[], dict[str, float]] = dict
    request_resources: Callable[[list[dict]], None] | None = None


def build_control_plane(
    config: ManagerConfig,
    backend: ControlBackend,
    store: StateStore,
    cluster: ClusterView,
    restarted: bool,
    state_prefix: str,
) -> ControlPlane:
    """Build every part of the control plane from `config`: a new manager clears the state
    stored under `state_prefix`; a `restarted` one takes over from it (the configuration then in
    force, every version record). The loops are not started."""
    saved = saved_config(store, state_prefix) if restarted else None
    if not restarted:
        store.delete_prefix(state_prefix)  # a new manager never inherits state
    inventory = cluster.inventory(config.gpus)
    book = Reservations(*inventory)
    log.info(
        "Inventory: %d GPUs (%s), host RAM on %d nodes, %g Ray CPUs for replicas",
        len(inventory[0]),
        "declared " + config.gpus if config.gpus is not None else "NVML",
        len(inventory[1]),
        sum(inventory[2].values()),
    )
    manager = Manager(
        backend,
        num_load_threads=config.num_load_threads,
        max_num_load_retries=config.max_num_load_retries,
        load_retry_interval_s=config.load_retry_interval_s,
        book=book,
        store=store,
        state_prefix=state_prefix,
        router_poll_s=config.router_poll_s,
        capacity=CapacityWaits(config.capacity_wait_s),
    )
    restored = None
    if restarted:
        log.warning("The manager restarted: taking over the state it stored")
        restored = manager.restore(cluster.servable_apps, cluster.app_prefix)
    plane = ControlPlane(config, backend, store, cluster, state_prefix, inventory, book, manager)
    plane.rollouts = Rollouts(store, state_prefix, restarted=restarted)
    plane.restored = restored
    if restarted:
        plane.nodes_gone_while_down()
    plane.configure(
        saved["models"] if saved else config.models,
        saved["labels"] if saved else config.labels,
        saved["settings"] if saved else config.settings,
    )
    return plane


def saved_config(store: StateStore, state_prefix: str) -> dict | None:
    """The model list, labels and settings the previous incarnation had in force."""
    try:
        data = store.get(state_prefix + "config")
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


class ControlPlane:
    """The parts of the control plane (`build_control_plane` makes them) and what the manager
    actor exposes of them."""

    def __init__(
        self,
        config: ManagerConfig,
        backend: ControlBackend,
        store: StateStore,
        cluster: ClusterView,
        state_prefix: str,
        inventory: Inventory,
        book: Reservations,
        manager: Manager,
    ):
        self.config, self.backend, self.store, self.cluster = config, backend, store, cluster
        self._state_key = state_prefix
        self.inventory = inventory
        self.book = book  # the manager's
        self.manager = manager
        self.restored: dict | None = None  # what a restart adopted (Manager.restore)
        self.routers: dict[str, dict[str, str]] = {}  # node id -> {"app", "address"} (sync)
        self.metrics = metrics.MetricsStore()  # every process's counts, added up
        self.rollouts = Rollouts()  # build_control_plane gives it the store (cluster/rollouts.py)
        self._experiments: dict[str, tuple[str, str]] = {}  # model -> (request key, salt)
        self._config_lock = threading.Lock()
        self._settings: dict[str, ModelSettings] = {}
        self._models: dict[str, ModelSource] = {}
        self.source = FileSystemSource(
            [], config.poll_wait_s, self._on_aspired_versions, cluster.list_remote
        )
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        # the autoscaler request (cluster/capacity.py), when versions may wait for capacity
        self.capacity = (
            CapacityRequests(
                cluster.request_resources,
                lambda: held_bundles(self.book.held().values(), cluster.aspire_cpus()),
                manager.waiting_bundles,
            )
            if config.capacity_wait_s > 0 and cluster.request_resources is not None
            else None
        )

    def configure(
        self,
        models: list[ModelSource],
        labels: dict[str, dict[str, int]],
        settings: dict[str, ModelSettings],
    ) -> None:
        """Put `models`, `labels` and `settings` in force (labels are not checked: the CLI
        checked them at start-up, the manager before a restart), and store them."""
        self.apply_settings(settings)
        self._models = {m.name: m for m in models}
        self.source.set_models(models)
        self.manager.set_labels(labels)
        self._save_config()

    # ---- the manager's parts ------------------------------------------------------------------
    @property
    def harness(self) -> LoaderHarness:
        return self.manager.harness

    @property
    def publisher(self) -> Publisher:
        return self.manager.publisher

    @property
    def journal(self) -> Journal | None:
        return self.manager.journal

    def hosts(self) -> list[dict]:
        """The open shared hosts (cluster/host_admission.py)."""
        return self.manager.shared_hosts()

    # ---- loops --------------------------------------------------------------------------------
    def loops(self) -> list[tuple[str, float, Callable[[], Any]]]:
        """(thread name, period in seconds, action) of every loop `start` runs."""
        config = self.config
        loops: list[tuple[str, float, Callable[[], Any]]] = [
            ("aspire-reconcile", RECONCILE_INTERVAL_S, self.manager.reconcile),
            ("aspire-state", RECONCILE_INTERVAL_S, self.manager.flush_state),
            ("aspire-inventory", config.inventory_refresh_s, self.refresh_inventory),
            ("aspire-rollouts", ROLLOUT_TICK_S, self.tick_rollouts),
        ]
        if config.model_config_file and config.model_config_file_poll_wait_s > 0:
            loops.append(
                ("aspire-config", config.model_config_file_poll_wait_s, self.reread_model_config)
            )
        if config.aspire_config_file and config.aspire_config_file_poll_wait_s > 0:
            loops.append(
                ("aspire-side", config.aspire_config_file_poll_wait_s, self.reread_aspire_config)
            )
        return loops

    def start(self) -> None:
        """Start every loop, then the source."""
        for name, period_s, action in self.loops():
            thread = threading.Thread(
                target=self._poll_loop, args=(period_s, action), name=name, daemon=True
            )
            self._threads.append(thread)
            thread.start()
        if self.capacity is not None:
            thread = threading.Thread(
                target=self._capacity_loop, name="aspire-capacity", daemon=True
            )
            self._threads.append(thread)
            thread.start()
        self.source.start()

    def _poll_loop(self, period_s: float, action: Callable[[], Any]) -> None:
        while not self._stop.wait(period_s):
            try:
                action()
            except Exception:
                log.exception("%s failed", getattr(action, "__name__", "poll"))

    def _capacity_loop(self) -> None:
        """Keep the autoscaler request up to date: at once when a wait begins, and every
        CAPACITY_SYNC_S for deadlines and versions that found room."""
        wanted = self.harness.admission.capacity.wanted
        assert self.capacity is not None
        while not self._stop.is_set():
            wanted.wait(CAPACITY_SYNC_S)
            wanted.clear()
            if self._stop.is_set():
                return
            try:
                self.capacity.sync()
            except Exception:
                log.exception("Asking the autoscaler for capacity failed")

    # ---- state kept for a restart (cluster/manager_state.py) --------------------------------
    def _save_config(self) -> None:
        """Store the model list, labels and settings in force. The snapshot is taken under the
        lock, so the last write is always the newest state."""
        with self._config_lock:
            doc = {
                "models": encode_value(list(self._models.values())),
                "labels": encode_value(self.manager.labels()),
                "settings": encode_value(dict(self._settings)),
            }
            try:
                self.store.put(self._state_key + "config", dumps(doc))
            except Exception as exc:
                log.error("Storing the configuration failed: %s", exc)

    # ---- the inventory ------------------------------------------------------------------------
    def nodes_gone_while_down(self) -> None:
        """Versions restored on nodes that left while no manager watched are re-placed."""
        known = set(self.inventory[1]) | {g.node_id for g in self.inventory[0]}
        gone = {node for _, _, d in self.manager.deployed() for node in d.node_ids()} - known
        if gone:
            log.warning(
                "Ray nodes left the cluster while the manager was down: %s",
                ", ".join(n[:12] for n in sorted(gone)),
            )
            self.manager.nodes_lost(gone)

    def sync_routers(self) -> dict[str, dict[str, str]]:
        """Run the routers of the nodes that serve the ports now, and only those
        (cluster/backend/routers.py); returns {node id: {"app", "address"}}."""
        if self.cluster.sync_routers is not None:
            self.routers = self.cluster.sync_routers(set(self.inventory[1]))
        return dict(self.routers)

    def refresh_inventory(self) -> None:
        """Read the inventory again: versions with replicas on nodes that left are re-placed
        (cluster/repairs.py), nodes that joined or left get or lose their routers, and refused
        versions are retried when capacity grew."""
        inventory = self.cluster.inventory(self.config.gpus)
        if inventory == self.inventory:
            return
        grew = capacity_grew(self.inventory, inventory)
        gone = set(self.inventory[1]) - set(inventory[1])
        nodes_changed = set(self.inventory[1]) != set(inventory[1])
        self.inventory = inventory
        self.book.update_inventory(*inventory)
        if nodes_changed:
            try:
                self.sync_routers()
            except Exception as exc:  # tried again at the next change; versions go on
                log.error(
                    "Following the nodes with routers failed: %s: %s", type(exc).__name__, exc
                )
        if gone:
            log.warning("Ray nodes left the cluster: %s", ", ".join(n[:12] for n in sorted(gone)))
            self.manager.nodes_lost(gone)
        lost = self.book.lost()
        if lost:
            log.warning("reservations on GPUs or nodes that left the cluster: %s", sorted(lost))
        if grew:
            self.manager.capacity_changed("the inventory grew")

    # ---- configuration ------------------------------------------------------------------------
    def reread_model_config(self) -> None:
        try:
            assert self.config.model_config_file is not None
            server_config = read_config_file(self.config.model_config_file)
            models = models_from_config(server_config)
        except AspireError as err:
            log.error("Failed to read ModelServerConfig file: %s", err.message)
            return
        code, message = self.reload_config(models, labels_from_config(server_config))
        if code != "OK":
            log.error("PollFilesystemAndReloadConfig failed to ReloadConfig: %s: %s", code, message)

    def reread_aspire_config(self) -> None:
        try:
            assert self.config.aspire_config_file is not None
            settings = load_aspire_config(self.config.aspire_config_file)
        except AspireError as err:
            log.error("Failed to read Aspire config file: %s", err.message)
            return
        if settings != self._settings:
            log.info("Aspire config file changed: applying model settings")
            self.apply_settings(settings)
            self._save_config()

    def apply_settings(self, settings: dict[str, ModelSettings]) -> None:
        self._settings = dict(settings)
        self.backend.settings = dict(settings)
        self.manager.settings_changed()  # a model's placement may have changed
        side_traffic = {n: s.traffic.weights for n, s in settings.items() if s.traffic}
        side_traffic.update(
            (n, s.experiment.arms.weights) for n, s in settings.items() if s.experiment
        )
        self._experiments = {
            n: (s.experiment.key, s.experiment.salt) for n, s in settings.items() if s.experiment
        }
        self.rollouts.set_side_traffic(side_traffic)  # "traffic", or an experiment's arms
        self.rollouts.set_specs({n: s.rollout for n, s in settings.items() if s.rollout})
        self.push_routing()
        for name in self.manager.stream_names():
            self.manager.set_policy(name, self._policy_for(name))

    # ---- rollouts (cluster/rollouts.py) -------------------------------------------------------
    def push_routing(self, served: ServingMap | None = None) -> None:
        """Publish every model's split (its rollout's, else the side file's "traffic" or
        experiment's arms), the rollouts' routes and the experiments' keys; the manager
        publishes only a change."""
        served = served or self.manager.serving_map()
        models = {name: set(versions) for name, versions in served.models.items()}
        traffic, routes, held_back = self.rollouts.routes(models, served.labels)
        # a rollout decides its model's split: no experiment there while it is declared
        declared = self.rollouts.declared()
        experiments = {n: e for n, e in self._experiments.items() if n not in declared}
        self.manager.set_traffic(traffic, routes, held_back, experiments)

    def tick_rollouts(self) -> None:
        if not self.rollouts.active():
            return
        served = self.manager.serving_map()
        self.rollouts.tick({n: set(v) for n, v in served.models.items()}, served.labels)
        self.push_routing(served)

    def apply_shipment(self, deltas: metrics.Deltas) -> None:
        """A router's or replica's shipment: counts into the metrics store, and what routers
        saw of rollouts into their windows (once per shipment, like the counts)."""
        if self.metrics.apply(deltas) and deltas.rollout:
            self.rollouts.observe(deltas.rollout)

    def _policy_for(self, name: str) -> str:
        settings = self._settings.get(name)
        return settings.version_policy if settings else "availability_preserving"

    def _on_aspired_versions(self, name: str, versions: dict[int, str]) -> None:
        self.manager.set_aspired_versions(name, versions, policy=self._policy_for(name))

    def reload_config(
        self, models: list[ModelSource], labels: dict[str, dict[str, int]]
    ) -> tuple[str, str]:
        """Replace the served model list and labels (TF Serving's ReloadConfig). Labels are
        checked first; if they are refused, nothing changes. Models that stay are not disturbed."""
        try:
            self.manager.check_labels(
                labels, self.config.allow_version_labels_for_unavailable_models
            )
        except AspireError as err:
            return err.code, err.message
        self._models = {m.name: m for m in models}
        self.source.set_models(models)
        self.manager.set_labels(labels, wait_for_routers=True)
        self._save_config()  # an OK answer means a restart keeps it
        self.source.poll_once()
        return "OK", ""

    def set_settings(self, settings: dict[str, ModelSettings]) -> None:
        """Replace the per-model settings, as a changed side file does; like the side file's,
        they apply to versions loaded from now on."""
        self.apply_settings(settings)
        self._save_config()

    def set_models(self, models: list[ModelSource]) -> None:
        """Replace the served model list, keeping labels."""
        self.reload_config(models, self.manager.labels())

    def configured_models(self) -> list[str]:
        return sorted(self._models)

    # ---- status, serving map and metrics ------------------------------------------------------
    def model_status(self, name: str, version: int | None = None) -> tuple[str, object]:
        try:
            return "OK", self.manager.model_status(name, version)
        except AspireError as err:
            return err.code, err.message

    def describe(self) -> dict:
        """Models with statuses, load retries pending, labels, traffic weights, where each
        version's replicas run, replicas lost with a node and not re-placed (with the reason),
        the routers per node, and the resource book (per GPU and per node: total, reserved by
        whom, free), for `aspire status` and `GET /v1/aspire/status`."""
        placements: dict[str, dict[str, list]] = {}
        running, pids = self.cluster.running_replicas(), self.cluster.replica_pids()
        for name, version, deployed in self.manager.deployed():
            placements.setdefault(name, {})[str(version)] = [
                {
                    **p.to_doc(),
                    "running_replicas": running.get(p.app),
                    "pids": pids.get(p.app, []),
                }
                for p in deployed.placements
            ]
        return {
            "models": self.manager.list_models(),
            "retries": self.manager.retries(),
            "capacity_waits": self.manager.capacity_waits(),
            "labels": self.manager.labels(),
            "manager": {"restored": self.restored},
            "traffic": {n: [list(kv) for kv in w] for n, w in self.manager.traffic().items()},
            "rollouts": self.rollouts.status(),
            "placements": placements,
            "missing_replicas": self.manager.missing_replicas(),
            "routers": [
                {
                    "node": node,
                    "address": r["address"],
                    "app": r["app"],
                    "running_replicas": running.get(r["app"]),
                }
                for node, r in sorted(self.routers.items())
            ],
            "shared_hosts": self.hosts(),
            "resources": {
                "gpus": self.book.snapshot(),
                "hosts": self.book.ram_snapshot(),
                "lost": sorted(self.book.lost()),
            },
        }

    def serving_map(self) -> ServingMap:
        return self.manager.serving_map()

    def metrics_page(self) -> str:
        """The Prometheus page: TF Serving's families, then Aspire's (with per-version labels
        and the state gauges read now)."""
        self.metrics.apply(self.manager.drain_metrics())
        self.metrics.apply(self.rollouts.recorder.drain())
        state = self.manager.metrics_state()
        state.update(self.rollouts.metrics_state())
        state["gpus"] = [
            {"node": g["node"], "gpu": g["index"], "total": g["total"], "reserved": g["reserved"]}
            for g in self.book.snapshot()
        ]
        state["hosts"] = [
            {"node": h["node"], "total": h["total"], "reserved": h["reserved"]}
            for h in self.book.ram_snapshot()
        ]
        tfserving = self.metrics.render_tfserving()
        aspire = self.metrics.render_aspire(state)
        return (tfserving if tfserving.strip() else "") + aspire

    # ---- stopping -----------------------------------------------------------------------------
    def shutdown(self, timeout_s: float = 120.0) -> bool:
        """Unload every version (deleting its deployment) and stop the loops. Loads in flight
        are cancelled and retry waits end at once (every version is unaspired), so this takes
        about as long as deleting the deployments. Returns whether all of it ended within
        `timeout_s`."""
        self.source.stop()
        self.backend.cancel_loads()
        for name in self.manager.stream_names():
            self.manager.forget_stream(name)
        done = self.manager.wait_idle(timeout_s)
        self._stop.set()
        return done
