"""Moving an AVAILABLE version between placements, when the side file changes its model's
"placement" ("dedicated" <-> "shared"): the manager finds such versions (cluster/plan.py
`misplaced`) and runs `PlacementMover.move` on a load thread, one per stream at a time.

Availability-preserving: admit and load the version in the new placement, switch the serving
map to it (stored first, as every READY change), wait until every router acknowledged it, then
unload the old placement and release what it held. A refusal or a failed load leaves the version
serving where it is; it is not tried again until capacity changes (cluster/admission_state.py
`refused_moves`, cleared then). Every change of the version record is an event of its owner's
(cluster/harness_events.py).
"""

from __future__ import annotations

import logging
from typing import Callable

from cluster.admission_state import Admission
from cluster.backend.interface import Backend
from cluster.harness_events import HarnessEvents
from cluster.logs import servable_fields
from cluster.manager_state import Stream, VersionRecord
from cluster.plan import replica_keys, servable_id
from core.deployed import Deployed
from core.errors import AspireError
from policies.admission import HostSlot, Placement, Refusal

log = logging.getLogger("aspire.manager")


class PlacementMover:
    def __init__(
        self,
        backend: Backend,
        events: HarnessEvents,
        admission: Admission,
        clock: Callable[[], float],
    ):
        self._backend, self._events = backend, events
        self._admission, self._clock = admission, clock

    def move(self, stream: Stream, record: VersionRecord) -> None:
        """Move an AVAILABLE version to its model's placement now ("dedicated" <-> "shared"),
        availability-preserving: admit and load it in the new placement, switch the serving map
        to it, wait for every router to acknowledge, then unload it from the old placement and
        release what that held. A refusal or a failed load leaves it serving where it is."""
        servable = servable_id(stream.name, record.version)
        admission = self._admission
        old = record.deployed
        assert old is not None  # an AVAILABLE version (cluster/plan.py `misplaced`)
        old_keys, to_shared = record.reservations, not old.shared
        target = "a shared host" if to_shared else "dedicated replicas"
        started = self._clock()
        need, replicas = admission.need(stream, record)
        keys = replica_keys(servable, replicas)
        with admission.lock:
            placed = admission.place(servable, need, keys, to_shared)
            if isinstance(placed, Refusal):
                admission.refused_moves.add((stream.name, record.version))
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
            deployed = self._load(stream, record, placed, need.vram_bytes, need.ram_bytes)
        except Exception as exc:
            message = exc.message if isinstance(exc, AspireError) else f"{exc}"
            with admission.lock:
                admission.refused_moves.add((stream.name, record.version))
                if isinstance(placed, HostSlot):
                    closed = admission.release_host(servable)
                else:
                    closed = None
                    admission.release_keys(keys if placed is not None else [])
            if closed is not None:
                admission.close_host(closed)
            log.error(
                "Moving servable %s to %s failed; it keeps serving where it was: %s",
                servable,
                target,
                message,
                extra=servable_fields(stream.name, record.version, "move_failed"),
            )
            return
        dedicated = not to_shared and isinstance(placed, list)
        new_keys = tuple(keys) if dedicated else ()
        new_placements = tuple(placed) if isinstance(placed, list) and dedicated else ()
        self._events.loaded(
            stream,
            record,
            {"deployed": deployed, "reservations": new_keys, "placements": new_placements},
        )
        self._events.wait_for_routers()  # no router sends to the old placement any more
        try:
            self._backend.unload(old)
        except Exception as exc:
            log.error("Unloading the old placement of %s raised %s", servable, exc)
        closed = None
        with admission.lock:
            if to_shared:
                admission.release_keys(old_keys)
            else:
                closed = admission.release_host(servable)
            admission.capacity_changed(self._events, f"{servable} moved to {target}")
        if closed is not None:
            log.info("Closing shared host %s: it holds no version", closed)
            admission.close_host(closed)
        log.info(
            "Moved servable %s to %s in %.2f s",
            servable,
            target,
            self._clock() - started,
            extra=servable_fields(stream.name, record.version, "moved"),
        )

    def _load(
        self,
        stream: Stream,
        record: VersionRecord,
        placed: list[Placement] | HostSlot | None,
        vram_bytes: int,
        ram_bytes: int,
    ) -> Deployed:
        """Load the version where admission placed it (a shared host: with its need there)."""
        if isinstance(placed, HostSlot):
            hosts = self._admission.shared_hosts
            assert hosts is not None  # a shared host was admitted
            deployed = hosts.load_shared(stream.name, record.version, record.path, placed)
            return deployed.with_host_need(vram_bytes, ram_bytes)
        return self._backend.load(stream.name, record.version, record.path, placed)
