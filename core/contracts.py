"""The contract between the control plane and the data plane, as types.

1. The manager publishes a `ServingMap`; routers long-poll for it and resolve every request
   against it. Each version's `VersionAddress` is read from the manager's record of the loaded
   version (core/deployed.py `Deployed`) in one place, `VersionAddress.from_deployed`.
2. A version replica and a shared host replica answer `ping()` with a `ReplicaPing`; the
   manager's backend reads it to learn that a load ended, and where the replica runs.

Both cross Ray pickled, as these frozen dataclasses, so both sides read the same fields:
nothing here is a dict whose shape is written elsewhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from core.deployed import Deployed
from core.errors import AspireError


@dataclass(frozen=True)
class VersionAddress:
    """Where one servable version runs, as routers need it.

    `apps`: its Serve applications (one per (node, GPU) that holds replicas) with their replica
    counts; calls are spread over them in that proportion. `max_queued_requests`: calls a router
    may hold for it while its replicas are full (-1: no limit). `key`: the version's servable
    key in a shared host, sent with every call (deployments/replica/shared_host.py); "" for a
    version that has its own replicas."""

    apps: tuple[tuple[str, int], ...]
    max_queued_requests: int = 1000
    key: str = ""

    @classmethod
    def from_deployed(cls, deployed: Deployed) -> VersionAddress:
        """From the manager's record of a loaded version (core/deployed.py)."""
        return cls(
            apps=deployed.apps,
            max_queued_requests=deployed.max_queued_requests,
            key=deployed.key,
        )


@dataclass(frozen=True)
class RolloutRoute:
    """What routers do for a model whose rollout runs (cluster/rollouts.py): time every
    unversioned request that the split sends to `baseline` or `candidate` and ship the figures
    to the manager's judge; copy `shadow_percent` % of those the baseline answers to the
    candidate, at most `max_pending` copies pending per router
    (deployments/router/rollout_tap.py). The split itself is in `ServingMap.traffic`."""

    baseline: int
    candidate: int
    shadow_percent: float = 0.0
    max_pending: int = 64


@dataclass(frozen=True)
class ServingMap:
    """The manager's serving map: AVAILABLE versions of each model and where they run, labels,
    traffic splits, the rollouts that run, and every model name the server knows (for metric
    labels). Built by the manager (cluster/manager.py `serving_map`), numbered by its
    publisher, and held by each router, which swaps it by one reference assignment: it is never
    changed in place."""

    epoch: int = -1
    models: dict[str, dict[int, VersionAddress]] = field(default_factory=dict)
    labels: dict[str, dict[str, int]] = field(default_factory=dict)
    traffic: dict[str, tuple] = field(default_factory=dict)
    rollouts: dict[str, RolloutRoute] = field(default_factory=dict)
    # model -> the candidate of a rollout that has not started: requests without a version or
    # label never go to it while another version serves (cluster/rollouts.py)
    held_back: dict[str, int] = field(default_factory=dict)
    # model -> (request key, salt) of its sticky A/B experiment; its arms are its `traffic`
    experiments: dict[str, tuple[str, str]] = field(default_factory=dict)
    known: frozenset[str] = frozenset()
    poll_s: float = 5.0  # how long a router's long poll waits (the manager's router_poll_s)


@dataclass(frozen=True)
class ReplicaPing:
    """A replica's answer to `ping()`: who it is, and how its load went.

    Written by the replicas (deployments/replica/servable.py `ServableDeployment.ping`,
    deployments/replica/shared_host.py `HostDeployment.ping`), always through `here`, which
    fills in what this process knows of itself. Read by the manager's backend
    (cluster/backend/serve_backend.py: a version's load ended once a replica answers; `error`,
    its load's failure, fails the load) and by tests that follow a replica's calls.

    Every replica: `pid`, `node_id` (the Ray node), `cuda_visible_devices` (as the replica
    process sees it; None: unset), `ongoing_requests`, `service_port` (its direct-call
    service, deployments/replica/call_service.py; None: not started), `calls` (calls answered,
    by path: "direct", "handle").
    A version replica: `version`; `error`, its load's failure (None: loaded);
    `measured_vram_bytes`, its peak GPU memory after the load (None without NVML);
    `session_threads`, its TensorFlow session's (intra-op, inter-op) threads.
    A shared host replica: `host` (the host's application), `replica_id`, `loaded` (servable
    keys it holds) and `errors` (servable key -> "CODE: message" of a failed load).
    """

    pid: int
    node_id: str
    cuda_visible_devices: str | None
    ongoing_requests: int = 0
    service_port: int | None = None
    calls: dict[str, int] = field(default_factory=dict)
    version: int | None = None
    error: AspireError | None = None
    measured_vram_bytes: int | None = None
    session_threads: tuple[int, int] | None = None
    host: str = ""
    replica_id: str = ""
    loaded: tuple[str, ...] = ()
    errors: dict[str, str] = field(default_factory=dict)

    @classmethod
    def here(cls, **fields: Any) -> ReplicaPing:
        """The answer of the replica running in this process: its pid, Ray node and CUDA
        devices, with `fields` (the others above)."""
        import ray  # only a replica process builds one, and it runs in Ray

        return cls(
            pid=os.getpid(),
            node_id=ray.get_runtime_context().get_node_id(),
            cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
            **fields,
        )
