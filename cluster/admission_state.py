"""The manager's admission state: what is reserved where, and what versions were measured to use.

`Admission` holds, for the loader harness (cluster/harness.py) and the placement mover
(cluster/moves.py):
1. the reservation book (cluster/reservations.py; None: no admission, every version is loaded
   as asked), where each replica of a version with its own replicas reserves its need;
2. the shared hosts' book (cluster/host_admission.py), when the backend can place versions in
   shared hosts (cluster/backend/interface.py `SharedHosts`);
3. the peak VRAM measured after each version's load on a real GPU, which sizes its later loads
   (stored in the journal with its stream, and restored with it);
4. the moves between placements refused for lack of room (cluster/moves.py), tried again once
   capacity changes, and the versions missing replicas lost with a node (cluster/repairs.py):
   due for a repair, or refused one, due again once capacity changes;
5. when a refused version waits for a node the autoscaler adds (cluster/capacity.py).

Guarantees:
1. `lock` is held across a reservation and whatever records its outcome (a refusal marks the
   version refused), and across a release and the retry of refused versions it triggers, so a
   release never misses a refusal made at the same time. Hold it to call `place` and
   `release_*`. It is taken before the manager's lock, never while holding it.
2. The measured peaks have a lock of their own that calls nothing, so the manager may read
   them under its lock (its journal writes them).
"""

from __future__ import annotations

import threading

from cluster.backend.interface import Backend, SharedHosts, shared_hosts
from cluster.capacity import CapacityWaits
from cluster.harness_events import HarnessEvents
from cluster.host_admission import HostBook
from cluster.manager_state import Stream, VersionRecord
from cluster.reservations import Reservations
from policies.admission import HostSlot, Need, Placement, Refusal


class Admission:
    def __init__(
        self, backend: Backend, book: Reservations | None, capacity: CapacityWaits | None = None
    ):
        self.lock = threading.RLock()
        self.book = book
        self.capacity = capacity or CapacityWaits()
        self._backend = backend
        self.shared_hosts: SharedHosts | None = shared_hosts(backend)
        self._hosts = (
            None
            if self.shared_hosts is None
            else HostBook(book, self.shared_hosts.host_block, self.shared_hosts.host_replicas)
        )
        # (model, version) of AVAILABLE versions not moved to their model's placement for lack
        # of room (cluster/moves.py); tried again once capacity changes
        self.refused_moves: set[tuple[str, int]] = set()
        # (model, version) of AVAILABLE versions missing replicas lost with a node
        # (cluster/repairs.py): due for a repair, or refused one and tried again once capacity
        # changes
        self.repairs_due: set[tuple[str, int]] = set()
        self.refused_repairs: set[tuple[str, int]] = set()
        self._measured: dict[str, dict[int, int]] = {}  # model -> version -> peak VRAM bytes
        self._measured_lock = threading.Lock()

    # ---- sizing -------------------------------------------------------------------------------
    def shared(self, name: str) -> bool:
        """Whether the model's versions go into shared hosts now."""
        return self.shared_hosts is not None and self.shared_hosts.shared(name)

    def admits(self, name: str) -> bool:
        """Whether a load of the model reserves anything (a book, or a shared host)."""
        return self.book is not None or self.shared(name)

    def need(self, stream: Stream, record: VersionRecord) -> tuple[Need, int]:
        """(what one replica of the version needs, how many replicas), from the backend, given
        whether the book knows GPUs and the peak VRAM measured after an earlier load of the
        version on a real GPU, if any. Raises what the backend raises."""
        return self._backend.need(
            stream.name,
            record.version,
            record.path,
            self.book.has_gpus() if self.book is not None else False,
            self.measured(stream.name).get(record.version),
        )

    # ---- reservations (hold `lock`) -----------------------------------------------------------
    def place(
        self, servable: str, need: Need, keys: list[str], shared: bool
    ) -> list[Placement] | HostSlot | Refusal | None:
        """Room in a shared host for `servable` (`shared`), or `need` reserved once per key in
        the book, all or none; the refusal when it does not fit; None without a book."""
        if shared:
            assert self._hosts is not None
            return self._hosts.admit(servable, need, "gpu" if need.gpu else "cpu")
        if self.book is None:
            return None
        return self.book.reserve_all(keys, need)

    def in_host(self, servable: str) -> bool:
        return self._hosts is not None and self._hosts.host_of(servable) is not None

    def release_host(self, servable: str) -> str | None:
        """`servable` leaves its shared host; returns the host's application when that was its
        last version (the host's block is given back: close it, `close_host`)."""
        return self._hosts.release(servable) if self._hosts is not None else None

    def release_keys(self, keys: tuple[str, ...] | list[str]) -> None:
        if self.book is not None:
            for key in keys:
                self.book.release(key)

    def close_host(self, app: str) -> None:
        """Delete a host that holds no version any more (call without `lock`). Raises what the
        backend raises."""
        if self.shared_hosts is not None:
            self.shared_hosts.close_host(app)

    def adopt(self, servable: str, record: VersionRecord) -> None:
        """Book again what an adopted version holds (a restarted manager): its reservations
        exactly where its replicas run, and its need inside its shared host."""
        with self.lock:
            if self.book is not None:
                for key, placement in zip(record.reservations, record.placements, strict=True):
                    self.book.restore(key, placement)
            deployed = record.deployed
            if self._hosts is not None and deployed is not None and deployed.shared:
                vram, ram = deployed.host_need or (0, 0)
                self._hosts.restore(servable, deployed, Need(vram, ram), deployed.device)

    def capacity_changed(self, events: HarnessEvents, reason: str) -> None:
        """Capacity may have grown (`reason`): refused moves, refused repairs, and versions
        refused for lack of room that are still aspired, are tried again."""
        with self.lock:
            self.refused_moves.clear()
            self.repairs_due |= self.refused_repairs
            self.refused_repairs.clear()
            events.retry_refused(reason)

    def hosts(self) -> list[dict]:
        """The open shared hosts: block, use and versions (status)."""
        with self.lock:
            return self._hosts.snapshot() if self._hosts is not None else []

    # ---- measured VRAM ------------------------------------------------------------------------
    def measured(self, name: str) -> dict[int, int]:
        """Version -> the peak VRAM measured after its loads (the smallest seen)."""
        with self._measured_lock:
            return dict(self._measured.get(name, {}))

    def measure(self, name: str, version: int, vram_bytes: int) -> None:
        with self._measured_lock:
            seen = self._measured.setdefault(name, {})
            seen[version] = min(vram_bytes, seen.get(version, vram_bytes))

    def restore_measured(self, measured: dict[str, dict[int, int]]) -> None:
        with self._measured_lock:
            for name, peaks in measured.items():
                self._measured[name] = dict(peaks)
