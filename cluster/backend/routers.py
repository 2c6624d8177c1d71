"""The router deployment on the cluster: how many router replicas run, and where.

The routers serve the REST and gRPC ports themselves (deployments/router/deployment.py); Serve's
own proxy is disabled. `deploy_routers` is called once the manager runs (cluster/launcher.py).
"""

from __future__ import annotations

from typing import Any

import ray
from ray import serve

from cluster.backend.serve_apps import deployment
from config.options import ServerOptions
from deployments.router.deployment import Router

ROUTER_APP = "aspire-router"

# Ray CPUs booked by each router replica. Routers mostly wait on I/O; Serve's default of 1 CPU
# would let two routers fill a 2-core machine and leave no room for the models.
ROUTER_NUM_CPUS = 0.25


def deploy_routers(options: ServerOptions, data_key: str, head_node: str) -> None:
    """Run the router application: `num_router_replicas` on each node alive now (EveryNode), or
    all on the head node (HeadOnly). `data_key` is the direct path's key (config/options.py
    ReplicaOptions.data_key)."""
    router_options: dict[str, Any] = {"num_cpus": ROUTER_NUM_CPUS}
    per_node = options.num_router_replicas
    if options.proxy_location == "HeadOnly":  # all traffic enters on the head
        router_options["label_selector"] = {"ray.io/node-id": head_node}
        router = deployment(Router).options(num_replicas=per_node, ray_actor_options=router_options)
    else:  # the same number on every node, so each node answers on the ports
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        router = deployment(Router).options(
            num_replicas=per_node * nodes,
            max_replicas_per_node=per_node,
            ray_actor_options=router_options,
        )
    serve.run(
        router.bind(options, data_key),
        name=ROUTER_APP,
        route_prefix=None,
    )
