"""Runs one version's load or unload: TF Serving's LoaderHarness, for the manager.

Contract:
- `load(stream, record)`: admission first (every replica reserves its RAM and VRAM, all or none,
  cluster/reservations.py, or room in a shared host, cluster/host_admission.py); a refusal ends
  the version at once (END, RESOURCE_EXHAUSTED, no retries). Then the backend load, retried as
  TF Serving's retrier does (`max_num_load_retries` more attempts, `load_retry_interval_s`
  apart, given up early once the version is unaspired, never for a non-retriable code). Success
  stores AVAILABLE and publishes it (events.loaded); failure releases the reservations and
  records END with the error. Nothing is raised.
- `unload(stream, record)`: waits until every live router has dropped the version from its map,
  stores UNLOADING, deletes the deployment, then releases the reservations.
- `replace(stream, record)`: clean-up after the version's node left the cluster; a version still
  aspired starts over as a new load.
- `adopt(stream, record)`: a restarted manager's AVAILABLE version is booked again as it runs.
- The harness changes no version record itself: every change is an event its owner makes
  (cluster/harness_events.py), stored before the deployment it implies is created or deleted.
  What admission holds, and the peak VRAM measured after each load, are the harness's own
  (`admission`, cluster/admission_state.py).

The clock and sleeper are injected, so the retry rules run in unit tests without sleeping. Without
an injected sleeper, a retry wait ends early once its version is unaspired, as TF Serving cancels
retries on unload.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Callable, Iterator

from cluster.admission_state import Admission
from cluster.backend.interface import Backend
from cluster.capacity import CapacityWaits
from cluster.harness_events import HarnessEvents
from cluster.logs import servable_fields
from cluster.manager_state import Stream, VersionRecord
from cluster.moves import PlacementMover
from cluster.plan import replica_keys, servable_id
from cluster.reservations import Reservations
from core import metrics
from core.deployed import Deployed
from core.errors import AspireError
from core.names import app_name
from policies.admission import HostSlot, Need, Placement, Refusal
from policies.lifecycle import HarnessState

log = logging.getLogger("aspire.manager")
# Load failures another attempt cannot fix: a version directory refused by the containment rule
# (deployments/replica/loader.py check_contained) stays refused however often it is retried.
NON_RETRIABLE_LOAD_CODES = frozenset({"PERMISSION_DENIED"})
# A load that runs longer says so this often, with what it waits for.
PROGRESS_PERIOD_S = 10.0

# Where admission put a version: its replicas' placements (None: no admission), or a shared
# host with the version's need inside it.
Admitted = list[Placement] | tuple[HostSlot, Need] | None


def _where(placements: list[Placement] | None) -> str:
    return ", ".join(
        f"node {p.node_id[:12]} " + (f"GPU {p.gpu_index}" if p.gpu_index is not None else "CPU")
        for p in placements or []
    )


def _phase(placements: list[Placement] | None) -> str:
    where = _where(placements)
    return f"replica starting{' on ' + where if where else ''} (process start, TF load, warmup)"


class LoaderHarness:
    def __init__(
        self,
        backend: Backend,
        events: HarnessEvents,
        book: Reservations | None,
        recorder: metrics.Recorder,
        max_num_load_retries: int,
        load_retry_interval_s: float,
        clock: Callable[[], float],
        sleep: Callable[[float], None] | None,
        progress_period_s: float = PROGRESS_PERIOD_S,
        capacity: CapacityWaits | None = None,
    ):
        self._backend, self._events, self._metrics = backend, events, recorder
        self.admission = Admission(backend, book, capacity)  # book None: no admission
        self._max_num_load_retries = max(0, max_num_load_retries)
        self._load_retry_interval_s = max(0.0, load_retry_interval_s)
        self._clock, self._sleep = clock, sleep
        self._progress_period_s = progress_period_s
        # moves between placements when the side file changes a model's (cluster/moves.py)
        self.mover = PlacementMover(backend, events, self.admission, clock)

    def shared(self, name: str) -> bool:
        return self.admission.shared(name)

    def hosts(self) -> list[dict]:
        """The open shared hosts (status)."""
        return self.admission.hosts()

    def capacity_changed(self, reason: str) -> None:
        """Capacity may have grown: refused moves and refused versions are tried again."""
        self.admission.capacity_changed(self._events, reason)

    def adopt(self, stream: Stream, record: VersionRecord) -> None:
        """A restarted manager adopts an AVAILABLE version: its reservations and its place in
        a shared host are booked again as they were, and a shared version goes back into its
        host's manifest."""
        self.admission.adopt(servable_id(stream.name, record.version), record)
        deployed, hosts = record.deployed, self.admission.shared_hosts
        if deployed is not None and deployed.shared and hosts is not None:
            hosts.adopt(stream.name, record.version, record.path, deployed)

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
        deployed, code, message = self._load_with_retries(stream, record, servable, placements)
        if deployed is None:
            self._release(stream, record, servable, "released its reservation after a failed load")
            self._fail(stream, record, servable, code, message)
            return
        if isinstance(placements, tuple):
            deployed = deployed.with_host_need(need.vram_bytes, need.ram_bytes)
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
        if deployed.measured_vram_bytes:
            self.admission.measure(stream.name, record.version, deployed.measured_vram_bytes)
        ready: dict[str, object] = {
            "state": HarnessState.READY,
            "deployed": deployed,
            "load_seconds": elapsed,
            "ram_bytes": deployed.ram_bytes,
        }
        self._events.loaded(stream, record, ready)
        log.info(
            "Successfully loaded servable version %s in %.2f s",
            servable,
            elapsed,
            extra=servable_fields(stream.name, record.version, "loaded", elapsed),
        )

    def _load_with_retries(
        self, stream: Stream, record: VersionRecord, servable: str, placements: Admitted
    ) -> tuple[Deployed | None, str, str]:
        """(where it runs, "OK", "") once a load succeeds, else (None, code, message) of the
        last try."""
        code, message = "UNKNOWN", ""
        for attempt in range(self._max_num_load_retries + 1):
            if attempt:
                # TF Serving's retrier: wait, and give up once the version is unaspired.
                self._wait_to_retry(record)
            # Stored LOADING before any deployment exists: a restarted manager knows which
            # deployments may be half-created and deletes them (Manager.restore()).
            if not self._events.attempt(stream, record, retry=attempt > 0):
                return None, "CANCELLED", "Loading of servable cancelled"
            if attempt:
                log.info(
                    "Retrying of Loading servable: %s retry: %d",
                    servable,
                    attempt,
                    extra=servable_fields(stream.name, record.version, "retrying"),
                )
            try:
                deployed = self._backend_load(stream, record, servable, placements)
            except AspireError as err:
                code, message = err.code, err.message
            except Exception as exc:
                code, message = "UNKNOWN", f"{type(exc).__name__}: {exc}"
            else:
                self._count_attempt(stream.name, record.path, "OK")
                return deployed, "OK", ""
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
            retry = {  # shown by `aspire status` until the next try starts
                "attempt": attempt + 2,
                "of": self._max_num_load_retries + 1,
                "error_code": code,
                "error_message": message,
                "next_try_at": time.time() + self._load_retry_interval_s,
            }
            self._events.retry_pending(stream, record, retry)
        return None, code, message

    def _backend_load(
        self, stream: Stream, record: VersionRecord, servable: str, placements: Admitted
    ) -> Deployed:
        if isinstance(placements, tuple):
            hosts = self.admission.shared_hosts
            assert hosts is not None  # a shared host was admitted
            phase = f"loading into shared host {placements[0].app}"
            with self._progress(stream, record, servable, phase):
                return hosts.load_shared(stream.name, record.version, record.path, placements[0])
        with self._progress(stream, record, servable, _phase(placements)):
            return self._backend.load(stream.name, record.version, record.path, placements)

    @contextlib.contextmanager
    def _progress(
        self, stream: Stream, record: VersionRecord, servable: str, phase: str
    ) -> Iterator[None]:
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
        self._events.wait_unaspired(record, self._load_retry_interval_s)

    def _admit(self, stream: Stream, record: VersionRecord, servable: str) -> Admitted | Refusal:
        """Reserve every replica's resources, all or none (None: no admission), or room in a
        shared host (the host and the version's need), or return the refusal when they do not
        fit. The refusal is recorded under the admission lock that the reservation held, so a
        release racing with it always sees the version as refused and retries it."""
        admission = self.admission
        shared = admission.shared(stream.name)
        if not admission.admits(stream.name):
            return None
        need, replicas = admission.need(stream, record)
        keys = replica_keys(servable, replicas)
        with admission.lock:
            placed = admission.place(servable, need, keys, shared)
            if isinstance(placed, Refusal):
                self._metrics.inc(
                    metrics.ASPIRE_ADMISSION_REFUSALS,
                    metrics.labels_for(
                        metrics.ASPIRE_ADMISSION_REFUSALS, stream.name, placed.reason
                    ),
                )
                wait = admission.capacity.begin(
                    record.capacity_wait, need, len(keys), placed, shared
                )
                if wait is None:
                    self._fail(stream, record, servable, placed.code, placed.message, refused=True)
                else:
                    self._events.failed(stream, record, placed.code, placed.message, True, wait)
                    log.info(
                        "Waiting for capacity for servable %s until %s (--capacity_wait_s): %s",
                        servable,
                        time.strftime("%H:%M:%S", time.localtime(wait[1])),
                        placed.message,
                        extra=servable_fields(stream.name, record.version, "capacity_wait"),
                    )
                return placed
            if record.capacity_wait is not None:
                log.info(
                    "Capacity came for servable %s after %.1f s of waiting",
                    servable,
                    time.time() - record.capacity_wait[0],
                    extra=servable_fields(stream.name, record.version, "capacity_came"),
                )
            if isinstance(placed, HostSlot):
                return placed, need
            assert placed is not None  # a book, since it was not shared
            self._events.held(stream, record, tuple(keys), tuple(placed))
        return placed

    def _release(self, stream: Stream, record: VersionRecord, servable: str, why: str) -> None:
        admission, closed = self.admission, None
        with admission.lock:
            if admission.in_host(servable):
                closed = admission.release_host(servable)
                self.capacity_changed(f"{servable} {why}")
            if admission.book is not None and record.reservations:
                admission.release_keys(record.reservations)
                self._events.held(stream, record, (), ())
                self.capacity_changed(f"{servable} {why}")
        if closed is not None:  # its last version left: the host goes, its block is free
            log.info("Closing shared host %s: it holds no version", closed)
            try:
                admission.close_host(closed)
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
        self,
        stream: Stream,
        record: VersionRecord,
        servable: str,
        code: str,
        message: str,
        refused: bool = False,
    ) -> None:
        self._events.failed(stream, record, code, message, refused)
        log.error(
            "Loading servable: %s failed: %s: %s",
            servable,
            code,
            message,
            extra=servable_fields(stream.name, record.version, "load_failed"),
        )

    # ---- unload -----------------------------------------------------------------------------
    @staticmethod
    def _deployed(stream: Stream, record: VersionRecord) -> Deployed:
        """What the backend deletes: where the version runs, or, without a record of it, the
        application its first placement would have."""
        return record.deployed or Deployed.of_apps([app_name(stream.name, record.version)])

    def unload(self, stream: Stream, record: VersionRecord) -> None:
        servable = servable_id(stream.name, record.version)
        log.info(
            "Unloading servable version %s",
            servable,
            extra=servable_fields(stream.name, record.version, "unloading"),
        )
        self._events.wait_for_routers()
        self._events.flush_state(stream)  # UNLOADING is stored before the deployment goes
        try:
            self._backend.unload(self._deployed(stream, record))
        except Exception as exc:  # the version is out of the map either way; report, don't wedge
            log.error("Unloading servable %s raised %s: %s", servable, type(exc).__name__, exc)
        self._events.unloaded(stream, record, start_over=False)
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
        self._events.flush_state(stream)  # recorded out of service before its deployments go
        try:
            self._backend.unload(self._deployed(stream, record))
        except Exception as exc:
            log.error(
                "Deleting the deployments of %s raised %s: %s", servable, type(exc).__name__, exc
            )
        # released before the version starts over, so its new load finds the room it left
        self._release(stream, record, servable, "lost a node")
        self._events.unloaded(stream, record, start_over=True)
