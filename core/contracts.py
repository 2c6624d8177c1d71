"""The contract between the control plane and the data plane, as types.

The manager publishes a `ServingMap`; routers long-poll for it and resolve every request
against it. It crosses Ray pickled, as these frozen dataclasses, so both sides read the same
fields: nothing in it is a dict whose shape is written elsewhere, except `VersionAddress`'s
source, the manager's record of a loaded version (`where`, from cluster/backend/serve_backend.py
`ServeBackend.load`), which `VersionAddress.from_where` reads in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
    def from_where(cls, where: dict) -> "VersionAddress":
        """From the manager's record of a loaded version (cluster/manager.py `where`)."""
        return cls(
            apps=tuple((str(a), int(n)) for a, n in where.get("apps") or ()),
            max_queued_requests=int(where.get("max_queued_requests", 1000)),
            key=str(where.get("key") or ""),
        )


@dataclass(frozen=True)
class ServingMap:
    """The manager's serving map: AVAILABLE versions of each model and where they run, labels,
    traffic splits, and every model name the server knows (for metric labels). Built by the
    manager (cluster/manager.py `serving_map`), numbered by its publisher, and held by each
    router, which swaps it by one reference assignment: it is never changed in place."""

    epoch: int = -1
    models: dict[str, dict[int, VersionAddress]] = field(default_factory=dict)
    labels: dict[str, dict[str, int]] = field(default_factory=dict)
    traffic: dict[str, tuple] = field(default_factory=dict)
    known: frozenset[str] = frozenset()
    poll_s: float = 5.0  # how long a router's long poll waits (the manager's router_poll_s)
