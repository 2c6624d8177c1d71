"""The one door to Ray's and Ray Serve's private API: every read of a private attribute or module
of Ray in Aspire goes through this module, and nowhere else (tests/unit/test_layers.py checks).

Written for Ray `RAY_VERSION` (pinned in pyproject.toml). tests/unit/test_ray_internals.py fails,
naming this module, when the installed Ray is another version; docs/upgrading-ray.md says what to
check then and which tests prove each use still holds. Ray is imported inside each function, so
the neutral core stays importable without starting anything.

Uses, each with where it is needed:
1. `handle_replicas(handle)`: the running replicas a Serve handle's request router holds
   ({ReplicaID: RunningReplica}); the routers' direct path (deployments/router/replica_client.py)
   calls replicas on their own port instead of through the handle.
2. `replica_node_ip(replica)`: the node IP of one RunningReplica of that dict.
3. `actor_table()`: the GCS's actor table without the dashboard's state API (an embedded Ray runs
   without the dashboard): live replica pids (cluster/backend/serve_state.py).
4. `session_log_dir()`: this machine's Ray session log directory (the CLI follows its logs).
5. `gcs_address(address)`: the GCS address `--address` names ("auto", "host:port", a file
   left by `ray start`), resolved as `ray.init` would, without connecting.
"""

from __future__ import annotations

from typing import Any

RAY_VERSION = "2.60.0"


def installed_ray_version() -> str:
    import ray

    return str(ray.__version__)


def handle_replicas(handle: Any) -> dict[Any, Any] | None:
    """Serve's running replicas of the handle's deployment, as its request router holds them
    ({ReplicaID: RunningReplica}), or None while the handle has no request router yet.

    Reads `RequestRouter.curr_replicas` (the property custom request routers use) through the
    handle's private `_router._asyncio_router._request_router`;
    tests/integration/test_request_path.py fails if the direct path stops being taken."""
    router = getattr(handle, "_router", None)
    asyncio_router = getattr(router, "_asyncio_router", None)
    request_router = getattr(asyncio_router, "_request_router", None)
    return None if request_router is None else request_router.curr_replicas


def replica_node_ip(replica: Any) -> str | None:
    """The IP of the node a RunningReplica (of `handle_replicas`) runs on."""
    info = getattr(replica, "_replica_info", None)
    return getattr(info, "node_ip", None)


def actor_table() -> list[dict[str, Any]]:
    """Every actor the GCS knows, as `ray._private.state.actors()` answers (keys
    `ActorClassName`, `State`, `Pid`, ...)."""
    from ray._private import state

    return list(state.actors().values())


def session_log_dir() -> str | None:
    """This process's Ray session log directory, or None (a Ray Client connection has no local
    session)."""
    try:
        from ray._private import worker

        node: Any = worker._global_node
        return str(node.get_logs_dir_path())
    except Exception:
        return None


def gcs_address(address: str) -> str | None:
    """The GCS address `address` names, or None when it names none; raises ConnectionError or
    ValueError as Ray's own resolution does."""
    from ray._private.services import canonicalize_bootstrap_address

    return canonicalize_bootstrap_address(address)
