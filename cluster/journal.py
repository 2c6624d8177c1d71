"""The manager's journal: which servable streams changed, and writing them to the state store.

Composed into the manager (cluster/manager.py), which builds each stream's document
(cluster/manager_state.py `record_doc`) and decides when to write: every 100 ms for whatever
changed, and ahead of the steps a restart must not be misled about (LOADING before a deployment
is created, AVAILABLE before a router can see it, UNLOADING before it is deleted). A failed
write is logged and the stream stays marked, so the next flush tries again.
"""

from __future__ import annotations

import logging
import threading

from cluster.manager_state import StateStore

log = logging.getLogger("aspire.manager")


class Journal:
    def __init__(self, store: StateStore, prefix: str):
        self._store, self._prefix = store, prefix
        # One writer at a time, so a stream's key never goes back in time. Taken before the
        # manager's lock, never while holding it.
        self.lock = threading.Lock()
        self._dirty: set[str] = set()  # streams changed since their key was last written
        self._dirty_lock = threading.Lock()

    def touch(self, name: str) -> None:
        """Stream `name` changed: the next write of it, or of everything dirty, stores it."""
        with self._dirty_lock:
            self._dirty.add(name)

    def take(self, name: str | None = None) -> set[str]:
        """The streams to write now (only `name`, when given), no longer marked."""
        with self._dirty_lock:
            if name is None:
                names, self._dirty = self._dirty, set()
                return names
            self._dirty.discard(name)
            return {name}

    def write(self, docs: dict[str, bytes]) -> int:
        """Store each stream's document (callers hold `lock`); returns how many were written."""
        written = 0
        for name, data in docs.items():
            try:
                self._store.put(f"{self._prefix}model/{name}", data)
                written += 1
            except Exception as exc:
                log.warning("Writing the state of model %s failed: %s", name, exc)
                self.touch(name)
        return written

    def read(self) -> tuple[dict[str, bytes], bytes | None]:
        """What a predecessor stored: every stream's document by key, and the epoch ceiling."""
        docs = self._store.get_prefix(f"{self._prefix}model/")
        return docs, self._store.get(f"{self._prefix}epoch")
