"""Moving an AVAILABLE version between placements, when the side file changes its model's
"placement" ("dedicated" <-> "shared"): the manager finds such versions (cluster/plan.py
`misplaced`) and runs `PlacementMover.move` on a load thread, one per stream at a time.

Availability-preserving: admit and load the version in the new placement, switch the serving
map to it (stored first, as every READY change), wait until every router acknowledged it, then
unload the old placement and release what it held. A refusal or a failed load leaves the version
serving where it is; it is not tried again until capacity changes (`refused`, which the manager
clears then).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from cluster.host_admission import HostBook
from cluster.logs import servable_fields
from cluster.manager_state import Stream, VersionRecord
from cluster.plan import replica_keys, servable_id, version_need
from cluster.reservations import Reservations
from core.errors import AspireError
from policies.admission import HostSlot, Placement, Refusal

log = logging.getLogger("aspire.manager")


class PlacementMover:
    def __init__(
        self,
        backend: Any,  # cluster/harness.py Backend, with the shared-placement methods
        host: Any,  # cluster/harness.py Host: the manager
        changed: threading.Condition,
        book: Reservations | None,
        hosts: HostBook | None,
        measured_vram: dict[str, dict[int, int]],
        clock: Callable[[], float],
    ):
        self._backend, self._host, self._lock = backend, host, changed
        self._book, self._hosts = book, hosts
        self._measured_vram, self._clock = measured_vram, clock
        self.refused: set[tuple[str, int]] = set()  # (model, version) not moved for now

    def move(self, stream: Stream, record: VersionRecord) -> None:
        """Move an AVAILABLE version to its model's placement now ("dedicated" <-> "shared"),
        availability-preserving: admit and load it in the new placement, switch the serving map
        to it, wait for every router to acknowledge, then unload it from the old placement and
        release what that held. A refusal or a failed load leaves it serving where it is."""
        servable = servable_id(stream.name, record.version)
        old = dict(record.where or {})
        old_keys, to_shared = record.reservations, not old.get("host")
        target = "a shared host" if to_shared else "dedicated replicas"
        started = self._clock()
        book, measured = self._book, self._measured_vram
        need, replicas = version_need(self._backend, book, measured, stream, record)
        keys = replica_keys(servable, replicas)
        with self._lock:
            placed: list[Placement] | HostSlot | Refusal | None = None
            if to_shared:
                assert self._hosts is not None
                placed = self._hosts.admit(servable, need, "gpu" if need.vram_bytes else "cpu")
            elif self._book is not None:
                placed = self._book.reserve_all(keys, need)
            if isinstance(placed, Refusal):
                self.refused.add((stream.name, record.version))
                log.warning(
                    "Not moving servable %s to %s: %s",
                    servable,
                    target,
                    placed.message,
                    extra=servable_fields(stream.name, record.version, "move_refused"),
                )
                return
        log.info(
            "Moving servable %s to %s",
            servable,
            target,
            extra=servable_fields(stream.name, record.version, "moving"),
        )
        try:
            if isinstance(placed, HostSlot):
                where = self._backend.load_shared(stream.name, record.version, record.path, placed)
                where = {**where, "host_need": [need.vram_bytes, need.ram_bytes]}
            else:
                where = self._backend.load(stream.name, record.version, record.path, placed)
        except Exception as exc:
            message = exc.message if isinstance(exc, AspireError) else f"{exc}"
            with self._lock:
                self.refused.add((stream.name, record.version))
                if isinstance(placed, HostSlot):
                    closed = self._hosts.release(servable) if self._hosts else None
                else:
                    closed = None
                    for key in keys if placed is not None else []:
                        self._book.release(key)  # type: ignore[union-attr]
            if closed is not None:
                self._backend.close_host(closed)
            log.error(
                "Moving servable %s to %s failed; it keeps serving where it was: %s",
                servable,
                target,
                message,
                extra=servable_fields(stream.name, record.version, "move_failed"),
            )
            return
        new_keys = () if to_shared or placed is None else tuple(keys)
        new_placements = () if to_shared or placed is None else tuple(placed)  # type: ignore[arg-type]
        self._host.commit_ready(
            stream,
            record,
            {"where": where, "reservations": new_keys, "placements": new_placements},
        )
        self._host.wait_for_routers()  # no router sends to the old placement any more
        try:
            self._backend.unload(stream.name, record.version, old)
        except Exception as exc:
            log.error("Unloading the old placement of %s raised %s", servable, exc)
        closed = None
        with self._lock:
            if to_shared:
                for key in old_keys:
                    if self._book is not None:
                        self._book.release(key)
            elif self._hosts is not None:
                closed = self._hosts.release(servable)
            self._host.capacity_changed(f"{servable} moved to {target}")
        if closed is not None:
            log.info("Closing shared host %s: it holds no version", closed)
            self._backend.close_host(closed)
        log.info(
            "Moved servable %s to %s in %.2f s",
            servable,
            target,
            self._clock() - started,
            extra=servable_fields(stream.name, record.version, "moved"),
        )
