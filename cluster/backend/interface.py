"""What the manager asks of the data plane: the backend that sizes, creates and deletes a
version's deployments.

Three protocols, all implemented by cluster/backend/serve_backend.py `ServeBackend` in production
and by in-memory fakes in the unit tests:
1. `Backend`: every backend. A version runs in its own replicas: `need` sizes it for admission,
   `load` creates its deployment and returns where it runs (core/deployed.py `Deployed`),
   `unload` deletes it.
2. `ReplicaRepairs`: a backend that can start further replicas of a running version (those a
   lost node took, cluster/repairs.py). A backend without it reloads such a version.
3. `SharedHosts`: a backend that can also place versions inside shared hosts ("placement":
   "shared" in the side file, cluster/host_admission.py). A backend without these methods
   places every version in its own replicas.

Guarantees the manager relies on:
1. No two calls for one version run at the same time (the manager runs one action per servable
   stream); calls for different versions do, on the manager's load threads.
2. `load` and `load_shared` return only once a replica of every application answered, and
   raise AspireError when the version cannot be loaded (its code decides whether the load is
   tried again); whatever they created is deleted before they raise.
3. `unload` and `close_host` report failures by raising, and may be called again for what is
   already gone.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from core.deployed import Deployed
from policies.admission import HostSlot, Need, Placement


class Backend(Protocol):
    def need(
        self, name: str, version: int, path: str, has_gpus: bool, measured_vram_bytes: int | None
    ) -> tuple[Need, int]:
        """(what one replica of the version needs, how many replicas) for admission, given
        whether the reservation book knows GPUs and the peak VRAM measured after an earlier
        load of the version, if any. Raises AspireError (an unreadable version)."""
        ...

    def load(
        self, name: str, version: int, path: str, placements: list[Placement] | None
    ) -> Deployed:
        """Create the version's deployment, one replica per placement (None: without
        admission, the configured number of replicas wherever Ray puts them), and return where
        it runs once it answers. Raises AspireError."""
        ...

    def unload(self, deployed: Deployed) -> None:
        """Delete what `deployed` describes: its applications, or, for a shared version, take
        it out of its host and wait until the host's replicas dropped it."""
        ...


@runtime_checkable
class ReplicaRepairs(Protocol):
    def extend(
        self, name: str, version: int, path: str, placements: list[Placement], deployed: Deployed
    ) -> Deployed:
        """Start further replicas of a version that runs as `deployed` (those lost with a node,
        re-placed), one per placement, in applications of their own that `deployed` does not
        name; return where the new ones run (only those) once a replica of each answered. What
        runs already is not touched. Raises AspireError, having deleted what it created."""
        ...


def replica_repairs(backend: Backend) -> ReplicaRepairs | None:
    """`backend`'s repair of lost replicas, None when it has none (a lost node then costs the
    version all its replicas: it is loaded again)."""
    return backend if isinstance(backend, ReplicaRepairs) else None


@runtime_checkable
class SharedHosts(Protocol):
    def shared(self, name: str) -> bool:
        """Whether the model's versions go into shared hosts now (its settings say so)."""
        ...

    @property
    def host_replicas(self) -> int:
        """Replicas of every shared host (each books one block)."""
        ...

    def host_block(self, device: str) -> Need:
        """What one shared host books in the reservation book: "gpu" or "cpu" host."""
        ...

    def load_shared(self, name: str, version: int, path: str, slot: HostSlot) -> Deployed:
        """Load the version into the host `slot` names, opening the host first if it does not
        run; return where it runs once every live replica of the host holds it. Raises
        AspireError, having taken the version out of the host."""
        ...

    def adopt(self, name: str, version: int, path: str, deployed: Deployed) -> None:
        """A restarted manager adopts a shared version: it goes back into its host's manifest
        (the host still holds it, so nothing loads)."""
        ...

    def close_host(self, app: str) -> None:
        """Delete a shared host that holds no version any more."""
        ...


def shared_hosts(backend: Backend) -> SharedHosts | None:
    """`backend`'s shared-host operations, None when it places every version in its own
    replicas."""
    return backend if isinstance(backend, SharedHosts) else None
