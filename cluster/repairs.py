"""A node that leaves takes only the replicas that ran on it: the version keeps serving from the
others, and the lost ones are re-placed.

A version with its own replicas runs one Serve application per (node, GPU) its replicas were
placed on (cluster/backend/serve_backend.py), and admission spreads a version's replicas across
nodes where more than one admits them (policies/admission.py, anti-affinity first). When Ray
reports nodes gone (cluster/control_plane.py `refresh_inventory`), the manager
(cluster/manager.py `Manager.nodes_lost`) asks `split_loss` what each AVAILABLE version keeps:

1. Nothing (every application was on the lost nodes, or the version is in a shared host, whose
   replicas all run on one node): the version ends UNAVAILABLE and is loaded again from scratch
   where capacity allows (cluster/harness.py `LoaderHarness.replace`), as before.
2. Some applications: the version stays AVAILABLE with those; the record is changed at once
   (`apply_loss`: the lost applications and their reservations out, `missing_replicas` counted,
   with the reason) and the serving map published, so routers stop sending to the lost
   replicas at their next poll (they skip a replica that failed a call at once, and send that
   call once more to another; deployments/router/core.py). Then, on a load thread,
   `ReplicaRepairer.drop` stores the record, deletes the lost applications (Serve would try to
   start their replicas again on a node that is gone) and releases what they held in the
   reservation book.
3. The version is then due for a repair (`Admission.repairs_due`): when its stream is idle, the
   manager runs `ReplicaRepairer.repair`, which reserves the missing replicas off the nodes the
   version still runs on where the cluster allows, starts them in new applications (the
   backend's `extend`, cluster/backend/interface.py `ReplicaRepairs`), then stores and publishes
   the record with them. Where they do not fit, or fail to start, the version keeps serving with
   fewer replicas, reported with the reason (`aspire status`, "missing_replicas"), and the
   repair is tried again whenever capacity changes (`Admission.capacity_changed`), or after a
   manager restart (the count is in the journal).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from cluster.admission_state import Admission
from cluster.backend.interface import Backend, replica_repairs
from cluster.harness_events import HarnessEvents
from cluster.logs import servable_fields
from cluster.manager_state import Stream, VersionRecord
from cluster.plan import replica_keys, servable_id
from core.deployed import Deployed
from core.errors import AspireError
from policies.admission import Placement, Refusal

log = logging.getLogger("aspire.manager")


@dataclass(frozen=True)
class Loss:
    """What a node loss takes from one version, and what it leaves (`split_loss`)."""

    survivors: Deployed  # the record without the lost applications
    lost_apps: tuple[str, ...]
    kept_keys: tuple[str, ...]  # reservations of the surviving replicas
    kept_placements: tuple[Placement, ...]
    lost_keys: tuple[str, ...]  # reservations of the lost replicas, released by `drop`
    replicas: int  # replicas lost

    @property
    def survives(self) -> bool:
        return bool(self.survivors.apps)


def split_loss(record: VersionRecord, gone: set[str]) -> Loss | None:
    """What losing the nodes `gone` does to `record`'s version: None when it had nothing there,
    else the `Loss` (`survives` False when nothing of it is left, or it is in a shared host)."""
    deployed = record.deployed
    if deployed is None:
        return None
    survivors, lost = deployed.split_by_nodes(gone)
    if not lost:
        return None
    if deployed.shared:  # a host's replicas share one node: none survives
        survivors = Deployed(apps=())
    held = list(zip(record.reservations, record.placements, strict=True))
    return Loss(
        survivors=survivors,
        lost_apps=tuple(p.app for p in lost),
        kept_keys=tuple(k for k, p in held if p.node_id not in gone),
        kept_placements=tuple(p for _, p in held if p.node_id not in gone),
        lost_keys=tuple(k for k, p in held if p.node_id in gone),
        replicas=sum(p.replicas for p in lost),
    )


def apply_loss(record: VersionRecord, loss: Loss, gone: set[str]) -> None:
    """Change `record` to what survives `loss` (callers hold the manager's lock, then store
    the stream and publish the serving map). The lost reservations stay held until `drop`
    releases them, so no load takes their room before their applications are deleted."""
    assert record.deployed is not None
    nodes = ", ".join(sorted(n[:12] for n in gone))
    record.deployed = loss.survivors
    record.missing_replicas += loss.replicas
    record.missing_reason = f"node {nodes} left the cluster; re-placing"


def repair_keys(servable: str, held: tuple[str, ...], missing: int) -> list[str]:
    """Reservation keys for `missing` further replicas of a version whose replicas hold `held`:
    the keys its replicas had (plan.py `replica_keys`) that no replica holds now, then fresh
    ones."""
    total = len(held) + missing
    free = [k for k in replica_keys(servable, total) if k not in held]
    n = total
    while len(free) < missing:  # the version's replica count changed since it was loaded
        n += 1
        key = f"{servable} replica {n}"
        if key not in held:
            free.append(key)
    return free[:missing]


class ReplicaRepairer:
    """Drops what a node loss left of a version's lost replicas, and starts them again
    elsewhere (the module docstring has the rules). `note_missing(stream, record, count,
    reason)`: the manager records how many replicas a version misses, and why."""

    def __init__(
        self,
        backend: Backend,
        events: HarnessEvents,
        admission: Admission,
        note_missing: Callable[[Stream, VersionRecord, int, str], None],
    ):
        self._backend, self._events, self._admission = backend, events, admission
        self._note_missing = note_missing

    def drop(self, stream: Stream, record: VersionRecord, loss: Loss) -> None:
        """After `apply_loss`: store the record, delete the lost applications and release their
        reservations; then the version is due for its repair. Routers are not waited for: the
        replicas are dead with their node, and a router that still names their application
        finds no replica there and sends to the version's others (deployments/router/core.py
        `RouterCore._app`); the routers of the lost node itself would never answer."""
        servable = servable_id(stream.name, record.version)
        self._events.flush_state(stream)  # stored without them before they are deleted
        try:
            self._backend.unload(Deployed.of_apps(loss.lost_apps))
        except Exception as exc:
            log.error(
                "Deleting the lost replicas of %s raised %s: %s",
                servable,
                type(exc).__name__,
                exc,
            )
        admission = self._admission
        with admission.lock:
            admission.release_keys(loss.lost_keys)
            if record.deployed is loss.survivors:  # not unloaded (nor lost again) meanwhile
                self._events.held(stream, record, loss.kept_keys, loss.kept_placements)
                admission.repairs_due.add((stream.name, record.version))

    def repair(self, stream: Stream, record: VersionRecord) -> None:
        """Reserve and start the replicas `record` misses, off the nodes it runs on where the
        cluster allows; or record why they cannot be, to be tried again when capacity changes."""
        servable = servable_id(stream.name, record.version)
        admission, deployed = self._admission, record.deployed
        missing = record.missing_replicas
        repairs = replica_repairs(self._backend)
        if deployed is None or missing <= 0 or admission.book is None or repairs is None:
            return
        try:
            need, _ = admission.need(stream, record)
        except Exception as exc:
            self._refused(stream, record, missing, f"sizing it failed: {exc}")
            return
        keys = repair_keys(servable, record.reservations, missing)
        with admission.lock:
            placed = admission.book.reserve_all(keys, need, avoid=frozenset(deployed.node_ids()))
            if isinstance(placed, Refusal):
                self._refused(stream, record, missing, placed.message)
                return
        log.info(
            "Re-placing %d replica(s) of servable %s lost with a node",
            missing,
            servable,
            extra=servable_fields(stream.name, record.version, "repairing"),
        )
        try:
            more = repairs.extend(stream.name, record.version, record.path, placed, deployed)
        except Exception as exc:
            message = exc.message if isinstance(exc, AspireError) else f"{exc}"
            with admission.lock:
                admission.release_keys(keys)
                self._refused(stream, record, missing, f"starting them failed: {message}")
            return
        current = record.deployed or deployed
        self._events.loaded(
            stream,
            record,
            {
                "deployed": current.merged(more),
                "reservations": record.reservations + tuple(keys),
                "placements": record.placements + tuple(placed),
                "missing_replicas": max(0, record.missing_replicas - missing),
                "missing_reason": "",
            },
        )
        log.info(
            "Re-placed %d replica(s) of servable %s",
            missing,
            servable,
            extra=servable_fields(stream.name, record.version, "repaired"),
        )

    def _refused(self, stream: Stream, record: VersionRecord, missing: int, why: str) -> None:
        servable = servable_id(stream.name, record.version)
        reason = f"{missing} replica(s) lost with a node not re-placed: {why}"
        log.warning(
            "Servable %s serves with fewer replicas: %s",
            servable,
            reason,
            extra=servable_fields(stream.name, record.version, "repair_refused"),
        )
        with self._admission.lock:
            self._admission.refused_repairs.add((stream.name, record.version))
        self._note_missing(stream, record, missing, reason)
