"""What the loader harness (cluster/harness.py) and the placement mover (cluster/moves.py) tell
the manager that owns the servable streams, as one small interface.

The harness runs a version's load or unload on a load thread; it never changes a version record
itself. Each change is one call here, which the manager (cluster/manager_events.py
`StreamEvents`) makes under its lock and marks for the journal, so that a state and the facts
that go with it (an error and its code, where the version runs) are always seen, and stored,
together. The calls that must reach the store before the step they announce (LOADING before a
deployment exists, AVAILABLE before a router can see it, UNLOADING before a deployment goes)
return once it is stored.

Lock order: a call may be made while holding the admission lock (cluster/admission_state.py), never
the other way round; none is made while holding the manager's lock.
"""

from __future__ import annotations

from typing import Protocol

from cluster.manager_state import Stream, VersionRecord
from policies.admission import Placement


class HarnessEvents(Protocol):
    def attempt(self, stream: Stream, record: VersionRecord, retry: bool) -> bool:
        """A backend load is about to start: count it, clear the retry pending, store the
        stream (LOADING before any deployment exists). `retry`: a later try, which is cancelled
        instead (False: nothing counted) once the version is no longer aspired."""
        ...

    def retry_pending(self, stream: Stream, record: VersionRecord, retry: dict) -> None:
        """A try failed and the next one waits: `retry` (VersionRecord.retry) is shown by
        status until it starts."""
        ...

    def wait_unaspired(self, record: VersionRecord, timeout_s: float) -> None:
        """Wait `timeout_s`, or less: until the version is no longer aspired."""
        ...

    def failed(
        self,
        stream: Stream,
        record: VersionRecord,
        code: str,
        message: str,
        refused: bool,
        wait: tuple | None = None,
    ) -> None:
        """The load ended without the version: END with `code` and `message`. `refused`: for
        lack of resources; it is tried again when capacity changes, while it stays aspired.
        `wait`: it waits for capacity (VersionRecord.capacity_wait, cluster/capacity.py)."""
        ...

    def held(
        self,
        stream: Stream,
        record: VersionRecord,
        reservations: tuple[str, ...],
        placements: tuple[Placement, ...],
    ) -> None:
        """The reservation-book keys the version holds now, and what each holds (both empty
        once released)."""
        ...

    def loaded(self, stream: Stream, record: VersionRecord, changes: dict[str, object]) -> None:
        """The version runs (a load, or a move to a new placement): store the record with
        `changes` (VersionRecord fields: its state, where it runs, ...), then set them and
        publish the serving map, so it is stored AVAILABLE before any router can see it."""
        ...

    def unloaded(self, stream: Stream, record: VersionRecord, start_over: bool) -> None:
        """The version's deployment is gone: it no longer runs anywhere, and ends DISABLED.
        `start_over`: it was lost with a node instead (it keeps its END state), and while it is
        aspired a new record takes its place, to be loaded again."""
        ...

    def retry_refused(self, reason: str) -> None:
        """Capacity may have grown (`reason` says why): versions refused for lack of it that are
        still aspired start over."""
        ...

    def flush_state(self, stream: Stream | None = None) -> int:
        """Store `stream` now (every stream changed, when None); returns the keys written."""
        ...

    def wait_for_routers(self) -> None:
        """Return once every live router acknowledged the current serving map (or the
        acknowledgement timeout passed)."""
        ...
