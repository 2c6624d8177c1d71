"""How a restarted manager takes over from what its predecessor stored: the plan, as values.

`plan_restore` reads the stored streams against the applications that exist now and says what
to adopt, what to drop and which applications nobody owns; the manager applies the plan
(cluster/manager.py `Manager.restore`) and runs the one recovery action it implies. The rules:

1. A version stored AVAILABLE whose applications all exist is adopted as it was: same record
   of where it runs (core/deployed.py `Deployed`),
   its reservations booked again exactly where they were; nothing is loaded.
2. START and END versions are kept as they were (an END version keeps its error).
3. Versions stored LOADING or UNLOADING, or AVAILABLE with an application missing, and every
   application of a restored model that no adopted version owns (what a half-done load leaves),
   are deleted by one recovery action once routers caught up (the router grace, then
   acknowledgements); until then their streams start nothing. A version that was loading (or
   lost an application) and is still aspired then starts over as START, for its version policy
   to load again (`settle_dropped`); one that was unloading ends as END.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Iterable

from cluster.manager_state import (
    MAX_INTERRUPTED_LOADS,
    Stream,
    VersionRecord,
    app_owner,
    loads,
    record_fields,
)
from policies.lifecycle import HarnessState

log = logging.getLogger("aspire.manager")
_IN_FLIGHT = (HarnessState.READY, HarnessState.LOADING, HarnessState.UNLOADING)


@dataclass
class RestorePlan:
    streams: list[Stream] = field(default_factory=list)
    measured_vram: dict[str, dict[int, int]] = field(default_factory=dict)
    adopted: list[VersionRecord] = field(default_factory=list)  # book their reservations again
    dropped: list[tuple[Stream, VersionRecord, HarnessState]] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)  # applications no adopted version owns
    recovering: set[str] = field(default_factory=set)  # streams that wait for the recovery
    changed: set[str] = field(default_factory=set)  # streams to store again

    def summary(self) -> dict:
        return {
            "models": len(self.streams),
            "adopted": len(self.adopted),
            "dropped": len(self.dropped),
            "orphans": len(self.orphans),
        }


def ready_apps(streams: Iterable[Stream]) -> set[str]:
    """Applications of the READY versions."""
    return {
        app
        for s in streams
        for r in s.versions.values()
        if r.state is HarnessState.READY and r.deployed is not None
        for app in r.deployed.app_names()
    }


def plan_restore(
    docs: dict[str, bytes], existing: set[str], app_prefix: Callable[[str], str]
) -> RestorePlan:
    """The plan for the stored stream documents `docs` (key -> JSON) when the applications
    `existing` run now; `app_prefix(name)` is how every application name of model `name` starts.
    A document that cannot be read is logged and skipped: that model is loaded afresh."""
    plan = RestorePlan()
    for key, data in sorted(docs.items()):
        try:
            doc = loads(data)
            stream = Stream(doc["name"], doc.get("policy", "availability_preserving"))
            for fields in doc["versions"]:
                record = VersionRecord(**record_fields(fields))
                stream.versions[record.version] = record
            measured = {int(v): b for v, b in doc.get("measured_vram", {}).items()}
        except Exception as exc:
            log.error("Cannot read the stored state %s: %s: %s", key, type(exc).__name__, exc)
            continue
        plan.streams.append(stream)
        if measured:
            plan.measured_vram[stream.name] = measured
        for record in stream.versions.values():
            apps = record.deployed.app_names() if record.deployed is not None else []
            if record.state is HarnessState.READY and apps and existing.issuperset(apps):
                plan.adopted.append(record)
                continue
            if record.state in _IN_FLIGHT or record.deployed is not None:
                plan.dropped.append((stream, record, record.state))
                if record.state is HarnessState.READY:  # out of the serving map
                    record.state = (
                        HarnessState.LOADING if record.aspired else HarnessState.UNLOADING
                    )
                record.deployed = None
                plan.changed.add(stream.name)
            record.reservations, record.placements = (), ()  # nothing of it runs
    prefixes = {app_prefix(s.name): s.name for s in plan.streams}
    plan.orphans = sorted(existing - ready_apps(plan.streams))
    plan.recovering = {s.name for s, _, _ in plan.dropped}
    plan.recovering |= {o[0] for o in (app_owner(a, prefixes) for a in plan.orphans) if o}
    return plan


def doomed_apps(
    apps: set[str], keep: set[str], prefixes: dict[str, str], recovering: set[str]
) -> dict[tuple[str, int], list[str]]:
    """(model, version) -> applications the recovery deletes: those no READY version keeps,
    of the recovering models or of no model (a model outside `recovering` may be loading its
    application right now)."""
    doomed: dict[tuple[str, int], list[str]] = {}
    for app in sorted(apps - keep):
        owner = app_owner(app, prefixes)
        if owner is None or owner[0] in recovering:
            doomed.setdefault(owner or ("", 0), []).append(app)
    return doomed


def settle_dropped(stream: Stream, record: VersionRecord, was: HarnessState) -> None:
    """After the recovery: a dropped version still aspired starts over (START), or ends ABORTED
    once restarts cut its load short MAX_INTERRUPTED_LOADS times; one unaspired ends as END."""
    if stream.versions.get(record.version) is not record:
        return  # replaced meanwhile (unaspired, then aspired again)
    if was is HarnessState.UNLOADING or not record.aspired:
        if record.state is not HarnessState.ERROR:
            record.state = HarnessState.DISABLED
        return
    interrupted = record.interrupted + (was is HarnessState.LOADING)
    fresh = VersionRecord(record.version, record.path, interrupted=interrupted)
    if interrupted >= MAX_INTERRUPTED_LOADS:
        fresh.state, fresh.error_code = HarnessState.ERROR, "ABORTED"
        fresh.error_message = (
            f"Loading of servable {{name: {stream.name} version: "
            f"{record.version}}} was interrupted by {interrupted} restarts "
            "of the manager; it is not tried again while it stays aspired"
        )
        log.error("%s", fresh.error_message)
    stream.versions[record.version] = fresh
