"""The routers on the cluster: one router application per node that serves the ports, following
the nodes as they join and leave.

The routers serve the REST and gRPC ports themselves (deployments/router/deployment.py); Serve's
own proxy is disabled. Each node that serves the ports runs its own Serve application
`aspire-router-<node id, 12 digits>` with `num_router_replicas` replicas pinned to it, so a node
that joins gets its routers without any other router being touched (a Serve redeploy of one
application over all nodes would restart every router), and a node that leaves takes only its
own.

`RouterFleet` belongs to the manager (cluster/manager_actor.py), which sees the nodes: `sync`
runs once when Aspire starts (cluster/launcher.py waits for the routers to run) and again
whenever the inventory finds the nodes changed (cluster/control_plane.py `refresh_inventory`).
With --proxy_location=EveryNode every alive node serves the ports; with HeadOnly, the head node
alone. A restarted manager adopts the router applications that run: `sync` only creates what is
missing and deletes the applications of nodes Ray declared dead.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import ray
from ray import serve

from cluster.backend.serve_apps import deployment
from cluster.backend.serve_state import delete_apps
from config.options import ServerOptions
from deployments.router.deployment import Router

log = logging.getLogger("aspire.manager")

ROUTER_APP_PREFIX = "aspire-router-"

# Ray CPUs booked by each router replica. Routers mostly wait on I/O; Serve's default of 1 CPU
# would let two routers fill a 2-core machine and leave no room for the models.
ROUTER_NUM_CPUS = 0.25


def router_app(node_id: str) -> str:
    """The router application of a node."""
    return ROUTER_APP_PREFIX + node_id[:12]


def router_apps() -> list[str]:
    """The router applications that exist now, sorted."""
    return sorted(app for app in serve.status().applications if app.startswith(ROUTER_APP_PREFIX))


class RouterFleet:
    """Creates and deletes the per-node router applications (the module docstring has the
    rules). Thread-safe: `sync` calls are serialised."""

    def __init__(self, options: ServerOptions, data_key: str):
        self._options, self._data_key = options, data_key
        self._lock = threading.Lock()
        self._nodes: dict[str, dict[str, str]] = {}  # node id -> {"app", "address"}, last synced

    def wanted(self, alive: set[str], head: str) -> set[str]:
        """The nodes that serve the ports among `alive`."""
        if self._options.proxy_location == "HeadOnly":
            return {head} & alive
        return set(alive)

    def sync(self, alive: set[str], head: str, wait: bool = False) -> dict[str, dict[str, str]]:
        """Create the router application of each node of `alive` that serves the ports and has
        none, delete those of nodes no longer there; with `wait`, return once the new ones run
        (start-up). Returns {node id: {"app": its router application, "address": the node's
        address}} after the change."""
        wanted = self.wanted(alive, head)
        with self._lock:
            existing = set(router_apps())
            by_app = {router_app(n): n for n in wanted}
            nodes = ray.nodes()
            # Only the routers of nodes Ray declared dead go (or, with HeadOnly, of live nodes
            # other than the head): a node missing from one reading of the node table (a GCS
            # that just came back) keeps its routers.
            dead = {router_app(n["NodeID"]) for n in nodes if not n.get("Alive")}
            live = {router_app(n["NodeID"]) for n in nodes if n.get("Alive")}
            gone = sorted(a for a in existing if a not in by_app and (a in dead or a in live))
            if gone:
                log.info("Removing the routers of nodes that left: %s", ", ".join(gone))
                delete_apps(gone, timeout_s=0)
            for app, node in sorted(by_app.items()):
                if app not in existing:
                    log.info("Starting %d router(s) on node %s", self._per_node, node[:12])
                    self._deploy(app, node, wait)
            addresses = {n["NodeID"]: n.get("NodeManagerAddress", "") for n in nodes}
            self._nodes = {
                n: {"app": router_app(n), "address": addresses.get(n, "")} for n in wanted
            }
            return dict(self._nodes)

    def cpus_on(self, node: str, head: bool) -> float:
        """Ray CPUs the routers book on a node (the inventory keeps them from the replicas):
        every node with EveryNode, the head alone with HeadOnly."""
        if self._options.proxy_location == "HeadOnly" and not head:
            return 0.0
        return ROUTER_NUM_CPUS * self._per_node

    def booked_cpus(self) -> dict[str, float]:
        """Node id -> Ray CPUs the routers book there, for the nodes last synced."""
        with self._lock:
            return {node: ROUTER_NUM_CPUS * self._per_node for node in self._nodes}

    @property
    def _per_node(self) -> int:
        return max(1, self._options.num_router_replicas)

    def _deploy(self, app: str, node: str, wait: bool) -> None:
        router_options: dict[str, Any] = {
            "num_cpus": ROUTER_NUM_CPUS,
            "label_selector": {"ray.io/node-id": node},
        }
        router = deployment(Router).options(
            num_replicas=self._per_node, ray_actor_options=router_options
        )
        serve.run_many(
            [
                serve.RunTarget(
                    router.bind(self._options, self._data_key), name=app, route_prefix=None
                )
            ],
            wait_for_applications_running=wait,
        )

    def nodes(self) -> dict[str, dict[str, str]]:
        """{node id: {"app", "address"}} as last synced."""
        with self._lock:
            return dict(self._nodes)
