"""Runs one version's load or unload: TF Serving's LoaderHarness, for the manager.

Contract:
- `load(stream, record)`: admission first (every replica reserves its RAM and VRAM, all or none,
  cluster/reservations.py); a refusal ends the version at once (END, RESOURCE_EXHAUSTED, no
  retries). Then the backend load, retried as TF Serving's retrier does (`max_num_load_retries`
  more attempts, `load_retry_interval_s` apart, given up early once the version is unaspired,
  never for a non-retriable code). Success stores AVAILABLE and publishes it (host.commit_ready);
  failure releases the reservations and records END with the error. Nothing is raised.
- `unload(stream, record)`: waits until every live router has dropped the version from its map,
  stores UNLOADING, deletes the deployment, then releases the reservations.
- `replace(stream, record)`: clean-up after the version's node left the cluster; a version still
  aspired starts over as a new load.
- Every state change is made under the manager's lock, marked for the journal (host.touch) and
  flushed before the deployment it implies is created or deleted (host.flush_state).

The clock and sleeper are injected, so the retry rules run in unit tests without sleeping. Without
an injected sleeper, a retry wait ends early once its version is unaspired, as TF Serving cancels
retries on unload.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Callable, Protocol

from cluster.host_admission import HostBook
from cluster.logs import servable_fields
from cluster.manager_state import Stream, VersionRecord
from cluster.moves import PlacementMover
from cluster.plan import replica_keys, servable_id, version_need
from cluster.reservations import Reservations
from core import metrics
from core.errors import AspireError
from policies.admission import HostSlot, Need, Placement, Refusal
from policies.lifecycle import HarnessState

log = logging.getLogger("aspire.manager")
# Load failures another attempt cannot fix: a version directory refused by the containment rule
# (deployments/replica/loader.py check_contained) stays refused however often it is retried.
NON_RETRIABLE_LOAD_CODES = frozenset({"PERMISSION_DENIED"})
# A load that runs longer says so this often, with what it waits for.
PROGRESS_PERIOD_S = 10.0


def _where(placements: list[Placement] | None) -> str:
    return ", ".join(
        f"node {p.node_id[:12]} " + (f"GPU {p.gpu_index}" if p.gpu_index is not None else "CPU")
        for p in placements or []
    )


def _phase(placements: list[Placement] | None) -> str:
    where = _where(placements)
    return f"replica starting{' on ' + where if where else ''} (process start, TF load, warmup)"


class Backend(Protocol):
    def need(
        self, name: str, version: int, path: str, has_gpus: bool, measured_vram_bytes: int | None
    ) -> tuple[Need, int]:
        """(what one replica needs, how many replicas) for admission. Raises AspireError."""

    def load(self, name: str, version: int, path: str, placements: list[Placement] | None) -> dict:
        """Create the version's deployment, one replica per placement (None: no admission);
        return where it runs once it answers. Raises AspireError."""

    def unload(self, name: str, version: int, where: dict) -> None:
        """Delete the version's deployment (a shared version: take it out of its host)."""

    # Shared placement (cluster/host_admission.py); a backend without these methods places every
    # version in its own replicas.
    #   shared(name) -> bool: the model's versions go into shared hosts
    #   host_block(device) -> Need: what one host books ("cpu" or "gpu")
    #   load_shared(name, version, path, slot: HostSlot) -> dict: load into the host
    #   close_host(app) -> None: delete a host that holds no version any more


class Host(Protocol):
    """What the harness asks of the manager that owns the streams (cluster/manager.py)."""

    def touch(self, stream: Stream) -> None: ...

    def flush_state(self, stream: Stream | None = None) -> int: ...

    def commit_ready(self, stream: Stream, record: VersionRecord, fields: dict) -> None: ...

    def capacity_changed(self, reason: str) -> None: ...

    def wait_for_routers(self) -> None: ...


class LoaderHarness:
    def __init__(
        self,
        backend: Backend,
        host: Host,
        changed: threading.Condition,
        book: Reservations | None,
        recorder: metrics.Recorder,
        measured_vram: dict[str, dict[int, int]],
        max_num_load_retries: int,
        load_retry_interval_s: float,
        clock: Callable[[], float],
        sleep: Callable[[float], None] | None,
        progress_period_s: float = PROGRESS_PERIOD_S,
    ):
        # `changed`: the manager's condition (on its lock), notified whenever a stream changes
        self._backend, self._host, self._lock = backend, host, changed
        self._book, self._metrics = book, recorder  # book None: no admission
        self._measured_vram = measured_vram  # the manager's: peak seen after a real GPU load
        self._max_num_load_retries = max(0, max_num_load_retries)
        self._load_retry_interval_s = max(0.0, load_retry_interval_s)
        self._clock, self._sleep = clock, sleep
        self._progress_period_s = progress_period_s
        block = getattr(backend, "host_block", None)
        replicas = getattr(backend, "host_replicas", 1)
        self._hosts = HostBook(book, block, replicas) if block is not None else None
        # moves between placements when the side file changes a model's (cluster/moves.py)
        self.mover = PlacementMover(backend, host, changed, book, self._hosts, measured_vram, clock)

    def shared(self, name: str) -> bool:
        shared = getattr(self._backend, "shared", None)
        return self._hosts is not None and shared is not None and shared(name)

    def hosts(self) -> list[dict]:
        """The open shared hosts (status)."""
        with self._lock:
            return self._hosts.snapshot() if self._hosts is not None else []

    def restore_shared(self, stream: Stream, record: VersionRecord) -> None:
        """A restarted manager adopts a shared version (call under the manager's lock)."""
        where = record.where or {}
        if self._hosts is None or not where.get("host"):
            return
        vram, ram = where.get("host_need") or (0, 0)
        device = "gpu" if (where.get("placements") or [{}])[0].get("gpu") is not None else "cpu"
        self._hosts.restore(
            servable_id(stream.name, record.version), where, Need(int(vram), int(ram)), device
        )

    # ---- load -------------------------------------------------------------------------------
    def load(self, stream: Stream, record: VersionRecord) -> None:
        servable = servable_id(stream.name, record.version)
        log.info(
            "Loading servable: %s from %s",
            servable,
            record.path,
            extra=servable_fields(stream.name, record.version, "loading"),
        )
        started = self._clock()
        try:
            placements = self._admit(stream, record, servable)
            if isinstance(placements, Refusal):
                return
        except AspireError as err:
            self._fail(stream, record, servable, err.code, err.message)
            return
        except Exception as exc:  # estimating the need failed (I/O, a bug): report it as state
            self._fail(stream, record, servable, "UNKNOWN", f"{type(exc).__name__}: {exc}")
            return
        if isinstance(placements, tuple):  # shared: (host, the version's need inside it)
            slot, need = placements
            log.info(
                "Admitted servable: %s into shared host %s",
                servable,
                slot.app,
                extra=servable_fields(stream.name, record.version, "admitted"),
            )
        elif placements:
            log.info(
                "Admitted servable: %s on %s",
                servable,
                _where(placements),
                extra=servable_fields(stream.name, record.version, "admitted"),
            )
        where, code, message = self._load_with_retries(stream, record, servable, placements)
        if where is not None and isinstance(placements, tuple):
            where = {**where, "host_need": [need.vram_bytes, need.ram_bytes]}
        if where is None:
            self._release(stream, record, servable, "released its reservation after a failed load")
            self._fail(stream, record, servable, code, message)
            return
        elapsed = self._clock() - started
        self._metrics.observe(
            metrics.ASPIRE_LOAD_DURATION,
            metrics.labels_for(metrics.ASPIRE_LOAD_DURATION, stream.name),
            elapsed,
        )
        self._metrics.inc(
            metrics.TF_LOAD_LATENCY,
            metrics.labels_for(metrics.TF_LOAD_LATENCY, record.path),
            elapsed * 1e6,
        )
        with self._lock:
            measured = where.get("measured_vram_bytes")
            if measured:
                seen = self._measured_vram.setdefault(stream.name, {})
                seen[record.version] = min(measured, seen.get(record.version, measured))
        ready = {
            "state": HarnessState.READY,
            "where": where,
            "load_seconds": elapsed,
            "ram_bytes": where.get("ram_bytes"),
        }
        self._host.commit_ready(stream, record, ready)
        log.info(
            "Successfully loaded servable version %s in %.2f s",
            servable,
            elapsed,
            extra=servable_fields(stream.name, record.version, "loaded", elapsed),
        )

    def _load_with_retries(
        self,
        stream: Stream,
        record: VersionRecord,
        servable: str,
        placements: list[Placement] | tuple[HostSlot, Need] | None,
    ) -> tuple[dict | None, str, str]:
        """(where, "OK", "") once a load succeeds, else (None, code, message) of the last try."""
        code, message = "UNKNOWN", ""
        for attempt in range(self._max_num_load_retries + 1):
            if attempt:
                # TF Serving's retrier: wait, and give up once the version is unaspired.
                self._wait_to_retry(record)
                with self._lock:
                    if not record.aspired:
                        record.retry = None
                        return None, "CANCELLED", "Loading of servable cancelled"
                log.info(
                    "Retrying of Loading servable: %s retry: %d",
                    servable,
                    attempt,
                    extra=servable_fields(stream.name, record.version, "retrying"),
                )
            with self._lock:
                record.attempts += 1
                record.retry = None
                self._host.touch(stream)
            # Recorded as LOADING before any deployment exists: a restarted manager knows which
            # deployments may be half-created and deletes them (Manager.restore()).
            self._host.flush_state(stream)
            try:
                if isinstance(placements, tuple):
                    with self._progress(
                        stream, record, servable, f"loading into shared host {placements[0].app}"
                    ):
                        where = self._backend.load_shared(  # type: ignore[attr-defined]
                            stream.name, record.version, record.path, placements[0]
                        )
                else:
                    with self._progress(stream, record, servable, _phase(placements)):
                        where = self._backend.load(
                            stream.name, record.version, record.path, placements
                        )
            except AspireError as err:
                code, message = err.code, err.message
            except Exception as exc:
                code, message = "UNKNOWN", f"{type(exc).__name__}: {exc}"
            else:
                self._count_attempt(stream.name, record.path, "OK")
                return where, "OK", ""
            self._count_attempt(stream.name, record.path, code)
            log.warning(
                "Loading servable: %s failed: %s: %s",
                servable,
                code,
                message,
                extra=servable_fields(stream.name, record.version, "load_attempt_failed"),
            )
            if code in NON_RETRIABLE_LOAD_CODES or attempt == self._max_num_load_retries:
                break
            with self._lock:  # shown by `aspire status` until the next try starts
                record.retry = {
                    "attempt": attempt + 2,
                    "of": self._max_num_load_retries + 1,
                    "error_code": code,
                    "error_message": message,
                    "next_try_at": time.time() + self._load_retry_interval_s,
                }
        return None, code, message

    @contextlib.contextmanager
    def _progress(self, stream: Stream, record: VersionRecord, servable: str, phase: str):
        """While the body runs: a line every `progress_period_s` saying the load goes on."""
        if self._progress_period_s <= 0:
            yield
            return
        done, started = threading.Event(), time.monotonic()

        def tick() -> None:
            while not done.wait(self._progress_period_s):
                elapsed = time.monotonic() - started
                log.info(
                    "Still loading servable %s after %.0f s: %s",
                    servable,
                    elapsed,
                    phase,
                    extra=servable_fields(stream.name, record.version, "load_progress", elapsed),
                )

        ticker = threading.Thread(target=tick, name="aspire-progress", daemon=True)
        ticker.start()
        try:
            yield
        finally:
            done.set()
            ticker.join()  # no progress line once the load has ended

    def _wait_to_retry(self, record: VersionRecord) -> None:
        """Wait the retry interval, or less: the wait ends as soon as the version is unaspired
        (an unload, a new version under resource preservation, the server stopping), so a
        pending retry never holds up a stop. An injected sleeper (tests) waits as it likes."""
        if self._sleep is not None:
            self._sleep(self._load_retry_interval_s)
            return
        with self._lock:
            self._lock.wait_for(lambda: not record.aspired, timeout=self._load_retry_interval_s)

    def _admit(
        self, stream: Stream, record: VersionRecord, servable: str
    ) -> list[Placement] | tuple[HostSlot, Need] | Refusal | None:
        """Reserve every replica's resources, all or none (None: no admission), or room in a
        shared host (the host and the version's need), or return the refusal when they do not
        fit. The refusal is recorded under the same lock as the reservation, so a release
        racing with it always sees the version as refused and retries it."""
        shared = self.shared(stream.name)
        if self._book is None and not shared:
            return None
        book, measured = self._book, self._measured_vram
        need, replicas = version_need(self._backend, book, measured, stream, record)
        keys = replica_keys(servable, replicas)
        with self._lock:
            if shared:
                assert self._hosts is not None
                device = "gpu" if need.vram_bytes else "cpu"
                placed: list[Placement] | HostSlot | Refusal = self._hosts.admit(
                    servable, need, device
                )
            else:
                assert self._book is not None
                placed = self._book.reserve_all(keys, need)
            if isinstance(placed, Refusal):
                record.refused = True
                self._metrics.inc(
                    metrics.ASPIRE_ADMISSION_REFUSALS,
                    metrics.labels_for(
                        metrics.ASPIRE_ADMISSION_REFUSALS, stream.name, placed.reason
                    ),
                )
                self._fail(stream, record, servable, placed.code, placed.message)
                return placed
            if isinstance(placed, HostSlot):
                return placed, need
            record.reservations, record.placements = tuple(keys), tuple(placed)
            self._host.touch(stream)
        return placed

    def _release(self, stream: Stream, record: VersionRecord, servable: str, why: str) -> None:
        closed = None
        with self._lock:
            if self._hosts is not None and self._hosts.host_of(servable) is not None:
                closed = self._hosts.release(servable)
                self._host.capacity_changed(f"{servable} {why}")
            if self._book is not None and record.reservations:
                for k in record.reservations:
                    self._book.release(k)
                record.reservations, record.placements = (), ()
                self._host.touch(stream)
                self._host.capacity_changed(f"{servable} {why}")
        if closed is not None:  # its last version left: the host goes, its block is free
            log.info("Closing shared host %s: it holds no version", closed)
            try:
                self._backend.close_host(closed)  # type: ignore[attr-defined]
            except Exception as exc:
                log.error("Closing shared host %s raised %s: %s", closed, type(exc).__name__, exc)

    def _count_attempt(self, name: str, path: str, code: str) -> None:
        self._metrics.inc(
            metrics.ASPIRE_LOAD_ATTEMPTS,
            metrics.labels_for(metrics.ASPIRE_LOAD_ATTEMPTS, name, code),
        )
        self._metrics.inc(
            metrics.TF_LOAD_ATTEMPT_COUNT,
            metrics.labels_for(
                metrics.TF_LOAD_ATTEMPT_COUNT, path, "success" if code == "OK" else "fail"
            ),
        )

    def _fail(
        self, stream: Stream, record: VersionRecord, servable: str, code: str, message: str
    ) -> None:
        with self._lock:
            record.state = HarnessState.ERROR
            record.error_code, record.error_message = code, message
            self._host.touch(stream)
        log.error(
            "Loading servable: %s failed: %s: %s",
            servable,
            code,
            message,
            extra=servable_fields(stream.name, record.version, "load_failed"),
        )

    # ---- unload -----------------------------------------------------------------------------
    def unload(self, stream: Stream, record: VersionRecord) -> None:
        servable = servable_id(stream.name, record.version)
        log.info(
            "Unloading servable version %s",
            servable,
            extra=servable_fields(stream.name, record.version, "unloading"),
        )
        self._host.wait_for_routers()
        self._host.flush_state(stream)  # UNLOADING is stored before the deployment goes
        try:
            self._backend.unload(stream.name, record.version, record.where or {})
        except Exception as exc:  # the version is out of the map either way; report, don't wedge
            log.error("Unloading servable %s raised %s: %s", servable, type(exc).__name__, exc)
        with self._lock:
            record.where = None
            record.state = HarnessState.DISABLED
            self._host.touch(stream)
        self._release(stream, record, servable, "was unloaded")
        log.info(
            "Done unloading servable version %s",
            servable,
            extra=servable_fields(stream.name, record.version, "unloaded"),
        )

    def replace(self, stream: Stream, record: VersionRecord) -> None:
        """After a node loss: delete what is left of the version's deployments, release its
        reservations and, while it is aspired, start it over as a new load."""
        servable = servable_id(stream.name, record.version)
        self._host.flush_state(stream)  # recorded out of service before its deployments go
        try:
            self._backend.unload(stream.name, record.version, record.where or {})
        except Exception as exc:
            log.error(
                "Deleting the deployments of %s raised %s: %s", servable, type(exc).__name__, exc
            )
        with self._lock:
            record.where = None
            if record.aspired and stream.versions.get(record.version) is record:
                log.info("Re-placing servable %s", servable)
                stream.versions[record.version] = VersionRecord(record.version, record.path)
            self._host.touch(stream)
            self._release(stream, record, servable, "lost a node")
