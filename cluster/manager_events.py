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

Every change that may change a stream's next action or its placement also marks the stream for
the plan step (`Replan`): a reconcile pass looks only at marked streams (cluster/manager.py
`reconcile`). A busy stream is not marked: the manager marks it when its action ends.

Lock order: the journal's lock, then the manager's; `flush_state` and `loaded` take both, so
they are never called under the manager's lock.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
from typing import Callable, Collection

from cluster import plan
from cluster.journal import Journal
from cluster.manager_state import Stream, VersionRecord, dumps, stream_doc
from cluster.publisher import Publisher
from policies.admission import Placement
from policies.lifecycle import HarnessState

log = logging.getLogger("aspire.manager")


class Replan:
    """The servable streams a reconcile pass looks at: each one changed, since a pass last
    looked at it, in a way that may change its next action or its placement. A stream not
    marked has nothing to do: its plan was nothing when a pass last looked at it and nothing it
    depends on changed since, or an action of its own is in flight. A busy stream is never
    marked: whoever ends its action marks it, which covers every change made meanwhile. Streams
    are taken in the order they were first marked, so a pass that takes only some leaves none
    waiting behind streams marked after it. Callers hold the manager's lock."""

    def __init__(self, streams: dict[str, Stream]):
        self._streams = streams  # the manager's; streams are added, never removed
        self._marked: dict[str, None] = {}  # names, in the order they were first marked
        self._rank: dict[str, int] = {}  # name -> position in `streams`

    def mark(self, stream: Stream) -> None:
        """`stream` (one of the manager's) is looked at by a coming pass, unless it is busy."""
        if not stream.busy:
            self._marked[stream.name] = None

    def mark_all(self) -> None:
        """Every stream is looked at (what they depend on outside themselves changed: the
        per-model settings, a restore)."""
        for stream in self._streams.values():
            self.mark(stream)

    def __len__(self) -> int:
        return len(self._marked)

    def take(self, limit: int) -> list[Stream]:
        """The first `limit` streams marked (every one, when fewer), no longer marked."""
        if len(self._marked) <= limit:
            names, self._marked = list(self._marked), {}
        else:
            names = list(itertools.islice(self._marked, limit))
            for name in names:
                del self._marked[name]
        return self.ordered(names)

    def ordered(self, names: Collection[str]) -> list[Stream]:
        """The streams named in `names`, in the order they were added to the manager (the order
        a pass has always visited them in)."""
        rank = self._rank
        if any(name not in rank for name in names):  # streams were added (at the end): rank them
            for name in itertools.islice(self._streams, len(rank), None):
                rank[name] = len(rank)
        return [self._streams[name] for name in sorted(names, key=rank.__getitem__)]


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
        self.replan = Replan(streams)  # what the next reconcile pass looks at
        # streams that may hold a version refused for lack of resources and still aspired, and
        # streams with a move refused: looked at again when capacity changes (`retry_refused`)
        self._refused: set[str] = set()
        self._moves_refused: set[str] = set()

    # ---- the journal and the plan step's marks ------------------------------------------------
    def touch(self, stream: Stream) -> None:
        """`stream` changed: a coming reconcile pass looks at it (`Replan`), and the next flush
        writes its key (callers hold the manager's lock)."""
        self.replan.mark(stream)
        self.store_later(stream)

    def store_later(self, stream: Stream) -> None:
        """`stream` changed in a way its plan already accounts for (the manager started its
        action): the next flush writes its key; the plan step is not asked again (callers hold
        the manager's lock)."""
        if self._journal is not None:
            self._journal.touch(stream.name)

    def move_refused(self, stream: Stream) -> None:
        """A move of one of `stream`'s versions was refused (cluster/admission_state.py
        `refused_moves`): the stream is looked at again once capacity changes, when refused
        moves are tried again (callers hold the manager's lock)."""
        self._moves_refused.add(stream.name)

    def restored(self, streams: list[Stream]) -> None:
        """A restarted manager took `streams` over (they are the manager's now): coming passes
        look at every stream, and a version the predecessor stored as refused is retried when
        capacity changes (callers hold the manager's lock)."""
        self.replan.mark_all()
        self._refused.update(s.name for s in streams if plan.refused_to_retry([s]))

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
        self,
        stream: Stream,
        record: VersionRecord,
        code: str,
        message: str,
        refused: bool,
        wait: tuple | None = None,
    ) -> None:
        with self._lock:
            if wait is not None:
                record.capacity_wait = wait
            if refused:
                record.refused = True
                self._refused.add(stream.name)
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
                self.replan.mark(stream)  # not touched: stored above
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
        """Looks only at the streams recorded with a refusal (`failed`, `restored`): every
        refused version still aspired starts over here, and one no longer aspired is never
        retried (aspired again, it is replaced by a new record), so none is left to retry
        afterwards. The streams with a refused move are marked for coming passes."""
        with self._lock:
            for name in self._moves_refused:  # their refused moves were just forgotten
                self.replan.mark(self._streams[name])
            self._moves_refused.clear()
            refused, self._refused = self.replan.ordered(self._refused), set()
            for stream, record in plan.refused_to_retry(refused):
                log.info(
                    "Retrying servable %s, refused for insufficient resources: %s",
                    plan.servable_id(stream.name, record.version),
                    reason,
                )
                stream.versions[record.version] = VersionRecord(
                    record.version, record.path, capacity_wait=record.capacity_wait
                )
                self.touch(stream)
            self._lock.notify_all()

    def wait_for_routers(self) -> None:
        with self._lock:
            epoch = self._publisher.epoch
        self._publisher.wait_for_routers(epoch)
