"""The manager as a named, detached Ray actor: the control plane of one Aspire deployment,
exposed over Ray.

Everything it runs is plain Python, built by cluster/control_plane.py `build_control_plane` and
unit-tested there: the file-system source, the Manager with its reconcile loop, the pollers of
`--model_config_file` and of Aspire's side file, the inventory, the metrics sum. This module
only supplies Ray's side (ServeBackend, the GCS state store, what Ray and Serve report about the
cluster), configures the actor's logging, and answers remote calls. It is a threaded actor:
routers hold long polls on `wait_for_serving_map`, shared host replicas on `host_manifest`,
while status calls, reloads and the CLI are answered concurrently.

Restarts: the actor is detached with `max_restarts=-1`. When its process dies (killed, crashed,
SIGKILL), Ray runs `__init__` again with the same ManagerConfig, and the new incarnation
carries on from the state its predecessor kept in Ray's GCS key-value store
(cluster/manager_state.py): the model list, labels and settings in force (not the start-up ones
from the config), every version record and reservation. Serving versions are adopted as they
run, nothing is reloaded, and routers keep routing from their last serving map meanwhile, so
predict traffic does not notice; status and admin calls wait for the new incarnation. A fresh
start (`start_manager`, e.g. a new `aspire serve`) clears that state first and starts from its
ManagerConfig; `launcher.stop` kills the actor with `no_restart=True`, for good.

The head node's loss: with GCS fault tolerance (Redis behind the GCS, docs/operations.md) the
GCS's tables and key-value store, and so this state, outlive the head. While the head is away
the manager (on the head) is gone, routers and replicas on the workers go on serving from what
they hold, and status calls answer UNAVAILABLE; once a head is back, Ray restarts the manager on
it (it asks for the head's own resource, not a node id), which restores as above, puts the
routers in line with the nodes there are now, and re-places what ran on the old head.
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import Any

import ray

from cluster.backend.remote_files import list_remote_children
from cluster.backend.routers import RouterFleet
from cluster.backend.serve_backend import ServeBackend
from cluster.backend.serve_state import (
    app_prefix,
    live_replica_pids,
    running_replicas,
    servable_apps,
)
from cluster.control_plane import ClusterView, ManagerConfig, build_control_plane
from cluster.inventory import cluster_inventory, head_node_id
from cluster.logs import EventLog, TextFormatter
from cluster.manager_state import GcsStore, state_prefix
from config.aspire_config import ModelSettings
from config.model_config import ModelSource
from core import metrics, protos
from core.contracts import ServingMap
from core.errors import AspireError
from core.names import MANAGER_NAME, NAMESPACE

log = logging.getLogger("aspire.manager")
# The custom resource Ray gives the head node, whichever node that is now.
HEAD_RESOURCE = "node:__internal_head__"


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


def _restarted() -> bool:
    """Whether Ray restarted this actor (its process died), as opposed to a new actor."""
    with warnings.catch_warnings():  # Ray's property reads its own deprecated `actor_id`
        warnings.simplefilter("ignore", DeprecationWarning)
        return bool(ray.get_runtime_context().was_current_actor_reconstructed)


def request_resources(bundles: list[dict]) -> None:
    """Ray's autoscaler request: the cluster must hold `bundles` (cluster/capacity.py)."""
    from ray.autoscaler.sdk import request_resources as ask

    ask(bundles=bundles)


def ray_cluster(routers: RouterFleet | None = None) -> ClusterView:
    """The cluster as Ray and Ray Serve report it; `routers` runs the routers on its nodes."""
    return ClusterView(
        inventory=lambda declared: cluster_inventory(
            declared, None if routers is None else routers.cpus_on
        ),
        servable_apps=servable_apps,
        app_prefix=app_prefix,
        list_remote=list_remote_children,
        running_replicas=running_replicas,
        replica_pids=live_replica_pids,
        sync_routers=None
        if routers is None
        else (lambda alive: routers.sync(alive, head_node_id())),
        aspire_cpus=dict if routers is None else routers.booked_cpus,
        request_resources=request_resources,
    )


class ManagerActor:
    def __init__(self, config: ManagerConfig):
        self._events = configure_logging()
        protos.load()  # SavedModel metadata is read without TensorFlow's runtime
        self._backend = ServeBackend(config.replica)
        self._fingerprint = config.fingerprint
        self._routers = (
            None if config.server is None else RouterFleet(config.server, config.replica.data_key)
        )
        self._plane = build_control_plane(
            config,
            self._backend,
            GcsStore(),
            ray_cluster(self._routers),
            restarted=_restarted(),
            state_prefix=state_prefix(MANAGER_NAME),
        )
        self._manager = self._plane.manager
        # shared hosts may follow their manifests now: a restart restored the adopted versions'
        self._backend.hosts.open()
        if self._plane.restored is not None:  # routers of nodes that left while it was down
            try:
                self._plane.sync_routers()
            except Exception as exc:  # the inventory loop tries again when the nodes change
                log.error("Following the nodes with routers failed: %s", exc)
        self._plane.start()

    # ---- API --------------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """The flags `aspire serve` started this manager with (ManagerConfig.fingerprint)."""
        return self._fingerprint

    def ready(self) -> bool:
        return True

    def configured_models(self) -> list[str]:
        return self._plane.configured_models()

    def model_status(self, name: str, version: int | None = None) -> tuple[str, object]:
        return self._plane.model_status(name, version)

    def events(self, since: int, timeout_s: float) -> tuple[int, list[dict]]:
        """The manager's log records numbered above `since` (cluster/logs.py EventLog)."""
        return self._events.since(since, timeout_s)

    def list_models(self) -> dict[str, list[dict]]:
        return self._manager.list_models()

    def describe(self) -> dict:
        """`aspire status` and `GET /v1/aspire/status` (cluster/control_plane.py `describe`)."""
        return self._plane.describe()

    def serving_map(self) -> ServingMap:
        return self._plane.serving_map()

    # ---- rollouts (cluster/rollouts.py) -------------------------------------------------------
    def rollout(self, name: str) -> tuple[str, object]:
        """GET /v1/models/NAME/rollout: ("OK", status) or (code, message)."""
        try:
            return "OK", self._plane.rollouts.status(name)
        except AspireError as err:
            return err.code, err.message

    def rollout_command(self, name: str, action: str) -> tuple[str, object]:
        """POST /v1/models/NAME/rollout:pause|resume: ("OK", status) or (code, message)."""
        try:
            status = self._plane.rollouts.command(name, action)
        except AspireError as err:
            return err.code, err.message
        self._plane.push_routing()
        return "OK", status

    def refresh_inventory(self) -> None:
        self._plane.refresh_inventory()

    def start_routers(self) -> dict[str, dict[str, str]]:
        """Run the routers on the nodes that serve the ports, and return once they run
        ({node id: {"app", "address"}}; cluster/backend/routers.py). Later changes of the nodes
        are followed by the inventory loop."""
        if self._routers is None:
            return {}
        self._plane.routers = self._routers.sync(
            set(self._plane.inventory[1]), head_node_id(), wait=True
        )
        return dict(self._plane.routers)

    # ---- metrics ------------------------------------------------------------------------------
    def apply_metrics(self, deltas: metrics.Deltas) -> None:
        """Deltas shipped by a router or model replica (core/metrics.py `Shipper`), with what
        routers saw of rollouts."""
        self._plane.apply_shipment(deltas)

    def metrics_page(self) -> str:
        return self._plane.metrics_page()

    # ---- shared hosts' manifests (cluster/backend/host_registry.py) ---------------------------
    def host_manifest(
        self, app: str, replica_id: str, known_epoch: int, timeout_s: float
    ) -> tuple[int, dict] | None:
        """A shared host replica's long poll of what it holds."""
        return self._backend.hosts.manifest(app, replica_id, known_epoch, timeout_s)

    def host_report(
        self, app: str, replica_id: str, key: str, error: AspireError | None, gone: bool
    ) -> None:
        """A shared host replica loaded (error None), failed (error) or dropped (gone) a key."""
        self._backend.hosts.report(app, replica_id, key, error, gone)

    # ---- serving map, configuration, lifecycle ------------------------------------------------
    def wait_for_serving_map(
        self, known_epoch: int, router_id: str, timeout_s: float
    ) -> ServingMap | None:
        return self._manager.wait_for_serving_map(known_epoch, router_id, timeout_s)

    def reload_config(
        self, models: list[ModelSource], labels: dict[str, dict[str, int]]
    ) -> tuple[str, str]:
        """TF Serving's ReloadConfig (cluster/control_plane.py `reload_config`)."""
        return self._plane.reload_config(models, labels)

    def set_settings(self, settings: dict[str, ModelSettings]) -> None:
        """Replace the per-model settings, as a changed side file does (tests and tools)."""
        self._plane.set_settings(settings)

    def set_models(self, models: list[ModelSource]) -> None:
        """Replace the served model list, keeping labels (tests and tools)."""
        self._plane.set_models(models)

    def wait_for_models(self, names: list[str], timeout_s: float) -> dict:
        return self._manager.wait_for_models(names, timeout_s)

    def settle(self, timeout_s: float) -> bool:
        """Wait until every stream has carried out every action its policy asks for."""
        return self._manager.wait_idle(timeout_s)

    def poll_now(self) -> None:
        self._plane.source.poll_once()

    def shutdown(self, timeout_s: float = 120.0) -> bool:
        """Unload every version and stop the loops (cluster/control_plane.py `shutdown`)."""
        return self._plane.shutdown(timeout_s)


def running_manager(fingerprint: str, timeout_s: float = 120.0) -> Any:
    """The manager that runs on this cluster with the same flags (`fingerprint`), for a new
    `aspire serve` to adopt; None when there is none, or it runs with other flags. A manager
    that Ray is bringing back (a head restarted on the same Redis) answers once it restored
    its state: it is waited for up to `timeout_s`."""
    try:
        actor = ray.get_actor(MANAGER_NAME, namespace=NAMESPACE)
    except ValueError:
        return None
    try:
        theirs: Any = ray.get(actor.fingerprint.remote(), timeout=timeout_s)
    except Exception as exc:  # gone, or not answering: it is replaced
        log.warning("the Aspire manager on this cluster did not answer: %s", exc)
        return None
    return actor if fingerprint and theirs == fingerprint else None


def start_manager(config: ManagerConfig) -> Any:  # the actor's ActorHandle
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
    actor_cls: Any = ray.remote(ManagerActor)
    # On the head node: it lives as long as the cluster, so losing a worker never takes the
    # control plane with it. The source polls the model base paths from there: on a cluster,
    # a shared path that is the same on every node (or gs://, s3://). By the head's own
    # resource, as Serve pins its controller: a head that comes back after a loss (GCS fault
    # tolerance, docs/operations.md) is a new node, and the manager Ray restarts goes there.
    # max_restarts=-1: Ray brings a dead manager back (same config, state from the GCS store);
    # ray.kill(..., no_restart=True) still ends it for good.
    actor = actor_cls.options(
        name=MANAGER_NAME,
        namespace=NAMESPACE,
        lifetime="detached",
        max_concurrency=64,
        num_cpus=0,
        max_restarts=-1,
        resources={HEAD_RESOURCE: 0.001},
    ).remote(config)
    ray.get(actor.ready.remote())
    return actor


def get_manager() -> Any:  # the actor's ActorHandle
    return ray.get_actor(MANAGER_NAME, namespace=NAMESPACE)
