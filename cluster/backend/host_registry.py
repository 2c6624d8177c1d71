"""The manager's side of shared hosts: each host's manifest and what its replicas report.

Lives in the manager actor's process, beside ServeBackend, whose shared-host loader
(cluster/backend/shared_hosts.py) puts a version in a host's manifest and then waits here until
the host's replicas have loaded it (`wait_loaded`), or removes it and waits until they dropped
it (`wait_gone`). Host replicas (deployments/replica/shared_host.py) long-poll `manifest` and
call `report` after each load and unload; the manager actor forwards both calls
(cluster/manager_actor.py `host_manifest`, `host_report`).

A replica counts as live while it polled or reported within `STALE_S`, until it says it leaves
(a report with an empty key). A version is loaded in a
host once at least one live replica reported it loaded and no live replica still lacks it; any
live replica's failure fails the load with that replica's AspireError.

Until `open()` is called (a restarted manager first restores the manifests of the versions it
adopts), `manifest` answers "no change", so no host unloads what it holds because the manager
that restarted did not know it yet.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from core.errors import AspireError

if TYPE_CHECKING:  # what a host loads; its module imports Ray Serve
    from deployments.replica.servable import VersionSpec

STALE_S = 30.0


@dataclass
class _Host:
    epoch: int = 0
    manifest: dict = field(default_factory=dict)  # servable key -> VersionSpec
    seen: dict[str, float] = field(default_factory=dict)  # replica id -> last call (monotonic)
    loaded: dict[str, dict] = field(default_factory=dict)  # replica id -> {key: error or None}


class HostRegistry:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._changed = threading.Condition()
        self._hosts: dict[str, _Host] = {}
        self._open = False

    def open(self) -> None:
        with self._changed:
            self._open = True
            self._changed.notify_all()

    # ---- the manager's side -----------------------------------------------------------------
    def put(self, app: str, key: str, spec: VersionSpec) -> None:
        with self._changed:
            host = self._hosts.setdefault(app, _Host())
            host.manifest = {**host.manifest, key: spec}
            host.epoch += 1
            for loaded in host.loaded.values():  # a failure reported before is forgotten
                loaded.pop(key, None)
            self._changed.notify_all()

    def remove(self, app: str, key: str) -> None:
        with self._changed:
            host = self._hosts.get(app)
            if host is None or key not in host.manifest:
                return
            host.manifest = {k: s for k, s in host.manifest.items() if k != key}
            host.epoch += 1
            self._changed.notify_all()

    def forget(self, app: str) -> None:
        """The host's application was deleted."""
        with self._changed:
            self._hosts.pop(app, None)
            self._changed.notify_all()

    def keys(self, app: str) -> list[str]:
        with self._changed:
            host = self._hosts.get(app)
            return sorted(host.manifest) if host else []

    def _live(self, host: _Host) -> list[str]:
        now = self._clock()
        return [r for r, seen in host.seen.items() if now - seen < STALE_S]

    def _state(self, app: str, key: str) -> tuple[bool, AspireError | None]:
        """(loaded by every live replica, the first failure)."""
        host = self._hosts.get(app)
        if host is None:
            return False, None
        live = self._live(host)
        results = [host.loaded.get(r, {}).get(key, "missing") for r in live]
        for result in results:
            if isinstance(result, AspireError):
                return False, result
        return bool(results) and all(result is None for result in results), None

    def wait_loaded(self, app: str, key: str, deadline: float, check: Callable[[], None]) -> None:
        """Return once the host's live replicas hold `key`; raise the failure one reported, or
        DEADLINE_EXCEEDED past `deadline` (time.monotonic()). `check()` may raise (a stop)."""
        with self._changed:
            while True:
                check()
                done, error = self._state(app, key)
                if error is not None:
                    raise error
                if done:
                    return
                if self._clock() > deadline:
                    raise AspireError(f"Host {app} did not load {key} in time", "DEADLINE_EXCEEDED")
                self._changed.wait(0.5)

    def wait_gone(self, app: str, key: str, timeout_s: float) -> bool:
        """Wait until no live replica of the host holds `key`; False after `timeout_s`."""
        deadline = self._clock() + timeout_s
        with self._changed:
            while True:
                host = self._hosts.get(app)
                if host is None or all(
                    host.loaded.get(r, {}).get(key, "missing") == "missing"
                    or isinstance(host.loaded[r][key], AspireError)
                    for r in self._live(host)
                ):
                    return True
                if self._clock() > deadline:
                    return False
                self._changed.wait(0.5)

    # ---- the host replicas' side ------------------------------------------------------------
    def manifest(
        self, app: str, replica_id: str, known_epoch: int, timeout_s: float
    ) -> tuple[int, dict] | None:
        """(epoch, manifest) once it differs from `known_epoch`, else None after `timeout_s`.
        A replica that asks with epoch -1 (it just started) holds nothing yet."""
        deadline = self._clock() + timeout_s
        with self._changed:
            while True:
                host = self._hosts.get(app)
                if self._open and host is not None:
                    host.seen[replica_id] = self._clock()
                    if known_epoch == -1:
                        host.loaded[replica_id] = {}
                    if host.epoch != known_epoch:
                        return host.epoch, dict(host.manifest)
                left = deadline - self._clock()
                if left <= 0:
                    return None
                self._changed.wait(left)

    def report(
        self, app: str, replica_id: str, key: str, error: AspireError | None, gone: bool
    ) -> None:
        with self._changed:
            host = self._hosts.get(app)
            if host is None:
                return
            if not key and gone:  # the replica is stopping (scaled down, replaced, deleted)
                host.seen.pop(replica_id, None)
                host.loaded.pop(replica_id, None)
                self._changed.notify_all()
                return
            host.seen[replica_id] = self._clock()
            loaded = host.loaded.setdefault(replica_id, {})
            if gone:
                loaded.pop(key, None)
            else:
                loaded[key] = error
            self._changed.notify_all()

    def snapshot(self) -> dict[str, dict]:
        """Per host: its versions and its live replicas (for status)."""
        with self._changed:
            return {
                app: {"versions": sorted(host.manifest), "replicas": len(self._live(host))}
                for app, host in self._hosts.items()
            }
