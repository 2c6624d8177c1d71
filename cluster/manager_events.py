"""Every change the load threads make to the manager's servable streams, and the journal writes
that go with them: the manager's side of cluster/harness_events.py `HarnessEvents`.

`StreamEvents` shares the manager's streams and its lock (cluster/manager.py composes it). Each
event changes a version record under that lock and marks its stream for the journal
(cluster/journal.py); the next flush writes it (every 100 ms, from the manager actor), or the
event writes it at once where a restart must not be misled:
1. `attempt`: LOADING is stored before the backend creates any deployment.
2. `loaded`: AVAILABLE (and where the version runs) is stored before the serving map that
   carries it is published, so a restarted manager never deletes a deployment a router may
   route to without the router grace.
3. `flush_state(stream)`: the harness stores UNLOADING, or END after a lost node, before it
   deletes a deployment.

Lock order: the journal's lock, then the manager's; `flush_state` and `loaded` take both, so
they are never called under the manager's lock.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Callable

from cluster import plan
from cluster.journal import Journal
from cluster.manager_state import Stream, VersionRecord, dumps, stream_doc
from cluster.publisher import Publisher
from policies.admission import Placement
from policies.lifecycle import HarnessState

log = logging.getLogger("aspire.manager")


class StreamEvents:
    def __init__(
        self,
        streams: dict[str, Stream],
        changed: threading.Condition,
        journal: Journal | None,
        publisher: Publisher,
        measured: Callable[[str], dict[int, int]],
    ):
        # `changed`: the manager's condition, on the lock that guards `streams`
        self._streams, self._lock = streams, changed
        self._journal, self._publisher = journal, publisher  # journal None: nothing stored
        self._measured = measured  # model -> {version: peak VRAM measured}, stored with it

    # ---- the journal ------------------------------------------------------------------------
    def touch(self, stream: Stream) -> None:
        """`stream` changed: the next flush writes its key (callers hold the manager's lock)."""
        if self._journal is not None:
            self._journal.touch(stream.name)

    def flush_state(self, stream: Stream | None = None) -> int:
        """Write the key of every stream changed since the last flush (of `stream` only, when
        given); returns how many were written. A failed write is logged and tried again by the
        next flush."""
        if self._journal is None:
            return 0
        with self._journal.lock:
            return self._flush_locked(stream)

    def _flush_locked(
        self,
        stream: Stream | None = None,
        ready: tuple[VersionRecord, dict[str, object]] | None = None,
    ) -> int:
        """Callers hold the journal's lock. `ready`: (record of `stream`, changes) writes the
        record with the changes made, before they are made in memory."""
        if self._journal is None:
            return 0
        with self._lock:
            names = self._journal.take(None if stream is None else stream.name)
            docs = {
                name: dumps(stream_doc(self._streams[name], self._measured(name), ready))
                for name in names
            }
        return self._journal.write(docs)

    # ---- HarnessEvents ----------------------------------------------------------------------
    def attempt(self, stream: Stream, record: VersionRecord, retry: bool) -> bool:
        with self._lock:
            if retry and not record.aspired:
                record.retry = None
                return False
            record.attempts += 1
            record.retry = None
            self.touch(stream)
        self.flush_state(stream)
        return True

    def retry_pending(self, stream: Stream, record: VersionRecord, retry: dict) -> None:
        with self._lock:
            record.retry = retry  # not stored: a restarted manager starts its loads over

    def wait_unaspired(self, record: VersionRecord, timeout_s: float) -> None:
        with self._lock:
            self._lock.wait_for(lambda: not record.aspired, timeout=timeout_s)

    def failed(
        self, stream: Stream, record: VersionRecord, code: str, message: str, refused: bool
    ) -> None:
        with self._lock:
            if refused:
                record.refused = True
            record.state = HarnessState.ERROR
            record.error_code, record.error_message = code, message
            self.touch(stream)

    def held(
        self,
        stream: Stream,
        record: VersionRecord,
        reservations: tuple[str, ...],
        placements: tuple[Placement, ...],
    ) -> None:
        with self._lock:
            record.reservations, record.placements = reservations, placements
            self.touch(stream)

    def loaded(self, stream: Stream, record: VersionRecord, changes: dict[str, object]) -> None:
        journal = self._journal
        with journal.lock if journal is not None else contextlib.nullcontext():
            self._flush_locked(stream, ready=(record, changes))
            with self._lock:
                for attribute, value in changes.items():
                    setattr(record, attribute, value)
                self._publisher.publish()

    def unloaded(self, stream: Stream, record: VersionRecord, start_over: bool) -> None:
        with self._lock:
            record.deployed = None
            if not start_over:
                record.state = HarnessState.DISABLED
            elif record.aspired and stream.versions.get(record.version) is record:
                log.info("Re-placing servable %s", plan.servable_id(stream.name, record.version))
                stream.versions[record.version] = VersionRecord(record.version, record.path)
            self.touch(stream)

    def retry_refused(self, reason: str) -> None:
        with self._lock:
            for stream, record in plan.refused_to_retry(self._streams.values()):
                log.info(
                    "Retrying servable %s, refused for insufficient resources: %s",
                    plan.servable_id(stream.name, record.version),
                    reason,
                )
                stream.versions[record.version] = VersionRecord(record.version, record.path)
                self.touch(stream)
            self._lock.notify_all()

    def wait_for_routers(self) -> None:
        with self._lock:
            epoch = self._publisher.epoch
        self._publisher.wait_for_routers(epoch)
