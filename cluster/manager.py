"""Manager: reconciles each servable stream's aspired versions with what runs.

Contract:
- `set_aspired_versions(name, {version: path})` is the source's callback. Each call supersedes the
  previous one for that name: a version left out is unaspired (and will be unloaded), an empty
  dict unaspires every version.
- A reconcile pass takes each idle stream's next action from the plan step (cluster/plan.py)
  and runs it on a load thread (cluster/harness.py: admission, TF Serving's retries, unload);
  a stream never has two actions in flight. A pass looks only at the idle streams changed
  since a pass last looked at them (cluster/manager_events.py `Replan`), `STREAMS_PER_PASS` at
  most, first marked first: a stream is marked when its aspired versions or policy change,
  when its action ends, when a load thread changes it outside an action of its own (a refused
  version retried as capacity changes, a lost node), when capacity changes after a move of it
  was refused, and every stream when the per-model settings change (`settings_changed`) or
  the manager is restored. A pass with nothing marked costs nothing, whatever the number of
  versions.
- Every version ever seen stays in the status (START, LOADING, AVAILABLE, UNLOADING, END with
  error code and message), newest first, as TF Serving's ServableStateMonitor reports it.
- A load failure is recorded as state (END + error), never raised into the loops; versions that
  serve keep serving.
- Resource-aware admission (with a reservation book; cluster/harness.py has the rules): a
  version refused for lack of resources that is still aspired is tried again whenever capacity
  changes (a release, a new inventory).
- The serving map (READY versions and where they run) has an epoch. Routers long-poll it and
  acknowledge the epoch they apply. A version is taken out of the map first and its deployment
  deleted only once every live router has acknowledged, so no request is routed to a deployment
  that is going away.
- Restarts (with a `store`, cluster/manager_state.py): every change is written to the store, a
  version's state before what it implies is visible (LOADING before its deployment exists,
  AVAILABLE before routers see it, UNLOADING before its deployment goes). A new Manager given
  the same store takes over with `restore()`: serving versions are adopted without loading
  anything, work cut short is redone, and after a restart no deployment is deleted before every
  live router has had the time to poll (publisher.router_grace_s) and has acknowledged the
  current map.

Parts, each its own object: the loader harness (cluster/harness.py: admission, loads, unloads,
moves), the stream events it reports through (cluster/manager_events.py, which also writes the
journal), the publisher of the serving map (cluster/publisher.py). The backend that creates and
deletes deployments is injected (cluster/backend/interface.py; cluster/backend/serve_backend.py in
production), so this logic is unit-tested without Ray.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from cluster import manager_state, plan, recovery, repairs, status
from cluster.backend.interface import Backend
from cluster.capacity import CapacityWaits
from cluster.harness import PROGRESS_PERIOD_S, LoaderHarness
from cluster.journal import Journal
from cluster.load_threads import LoadThreads
from cluster.manager_events import StreamEvents
from cluster.manager_state import StateStore, Stream, VersionRecord, loads
from cluster.publisher import ROUTER_POLL_S, Publisher
from cluster.reservations import Reservations
from core import metrics
from core.contracts import ServingMap
from core.deployed import Deployed
from policies.lifecycle import ASPIRED_VERSION_POLICIES, Action, HarnessState

log = logging.getLogger("aspire.manager")
# A reconcile pass looks at this many marked streams at most; the others wait for the next pass
# (100 ms later in the controller), first marked first. A pass stays short whatever the number of
# streams, and 10,000 a second are more than the load threads can start.
STREAMS_PER_PASS = 1000


class Manager:
    def __init__(
        self,
        backend: Backend,
        num_load_threads: int = 4,
        max_num_load_retries: int = 5,
        load_retry_interval_s: float = 60.0,
        router_ack_timeout_s: float = 10.0,
        router_lease_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] | None = None,
        book: Reservations | None = None,
        recorder: metrics.Recorder | None = None,
        store: StateStore | None = None,
        state_prefix: str = manager_state.state_prefix("default"),
        router_poll_s: float = ROUTER_POLL_S,
        router_grace_s: float | None = None,
        progress_period_s: float = PROGRESS_PERIOD_S,
        streams_per_pass: int = STREAMS_PER_PASS,
        capacity: CapacityWaits | None = None,
    ):
        self._backend = backend
        self._streams_per_pass = max(1, streams_per_pass)
        self._metrics = recorder or metrics.Recorder()  # load and admission metrics
        self._book = book  # None: no admission (every version is loaded as asked)
        self._streams: dict[str, Stream] = {}
        self._labels: dict[str, dict[str, int]] = {}  # model -> label -> version
        self._traffic: dict[str, tuple] = {}  # model -> ((label or version, weight), ...)
        self._rollouts: dict = {}  # model -> RolloutRoute of its running rollout
        self._held_back: dict[str, int] = {}  # model -> candidate of a rollout not started
        self._experiments: dict[str, tuple[str, str]] = {}  # model -> (request key, salt)
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)  # serving map or status changed
        # the clock times loads and the router grace; the sleeper waits for the grace, and for load
        # retries when given (None: a retry wait ends early once its version is unaspired)
        self._pool = LoadThreads(num_load_threads)  # runs every action (cluster/load_threads.py)
        self._in_flight = 0
        # persistence (None: nothing survives this object). Lock order: the journal's lock, or
        # the admission lock (cluster/admission_state.py), before _lock, never after it.
        self.journal = None if store is None else Journal(store, state_prefix)
        self.publisher = Publisher(
            self._changed,
            store=store,
            ceiling_key=f"{state_prefix}epoch",
            poll_s=router_poll_s,  # routers' long poll; the serving map carries it
            grace_s=router_grace_s,  # None: derived from the poll (tests may set it)
            ack_timeout_s=router_ack_timeout_s,
            lease_s=router_lease_s,
            clock=clock,
            sleep=sleep or time.sleep,
        )
        # what the load threads change in the streams goes through here, and into the journal
        self.events = StreamEvents(
            self._streams, self._changed, self.journal, self.publisher, self._measured
        )
        self.harness = LoaderHarness(
            backend,
            self.events,
            book,
            self._metrics,
            max_num_load_retries,
            load_retry_interval_s,
            clock,
            sleep,
            progress_period_s,
            capacity,
        )
        # replicas lost with a node: dropped, then re-placed (cluster/repairs.py)
        self.repairer = repairs.ReplicaRepairer(
            backend, self.events, self.harness.admission, self._note_missing
        )
        self._list_apps: Callable[[], set[str]] | None = None  # set by restore()
        self._app_prefix: Callable[[str], str] | None = None

    # ---- source side ------------------------------------------------------------------------
    def set_aspired_versions(
        self, name: str, versions: dict[int, str], policy: str | None = None
    ) -> None:
        with self._lock:
            if policy is not None and policy not in ASPIRED_VERSION_POLICIES:
                raise ValueError(f"unknown version policy {policy!r}")
            stream = self._streams.get(name)
            changed = stream is None  # the source repeats itself every poll: write changes only
            if stream is None:
                stream = self._streams[name] = Stream(name)
            if policy is not None and policy != stream.policy:
                stream.policy, changed = policy, True
            for record in stream.versions.values():
                if record.version not in versions and record.aspired:
                    record.aspired, changed = False, True
            for version, path in versions.items():
                known = stream.versions.get(version)
                # A version unloaded (or failed, then unaspired) and aspired again starts over;
                # one that failed and stayed aspired is not retried (TF Serving's rule).
                if (
                    known is None
                    or known.state is HarnessState.DISABLED
                    or (known.state is HarnessState.ERROR and not known.aspired)
                ):
                    stream.versions[version] = VersionRecord(version, path)
                    changed = True
                elif not known.aspired or known.path != path:
                    known.aspired, known.path, changed = True, path, True
            if changed:
                self.touch(stream)
            self._changed.notify_all()

    def forget_stream(self, name: str) -> None:
        """Unaspire every version of `name` (the model left the configuration)."""
        self.set_aspired_versions(name, {})

    # ---- reconcile --------------------------------------------------------------------------
    def reconcile(self) -> int:
        """Start the next action, or else a move to its model's placement, of every idle stream
        marked (cluster/manager_events.py `Replan`), `streams_per_pass` of them at most (the
        others stay marked for the next pass); returns how many were started. A stream looked
        at and left with nothing to do is not looked at again until it changes."""
        with self._lock:
            streams = self.events.replan.take(self._streams_per_pass)
            started = self._start_actions(streams) + self._start_moves(streams)
            started += self._start_repairs()
            if started:
                self._changed.notify_all()
        return started

    def _start_actions(self, streams: list[Stream]) -> int:
        """Start the next action of each idle stream of `streams`, by its policy (under the
        lock); returns how many were started."""
        actions = plan.next_actions(streams)
        for stream, action in actions:
            stream.busy = True
            self._in_flight += 1
            record = stream.versions[action.version]
            if action.kind == "load":
                record.state = HarnessState.LOADING
            else:
                record.state = HarnessState.UNLOADING
                self._publish()  # out of the serving map before anything is deleted
            self.events.store_later(stream)  # its action's end marks it for a coming pass
            self._pool.submit(self._run_action, stream, action)
        return len(actions)

    def _start_moves(self, streams: list[Stream]) -> int:
        """Start moving one misplaced version of each idle stream of `streams` (under the
        lock); returns how many were started."""
        moves = plan.misplaced(streams, self.harness.shared, self.harness.admission.refused_moves)
        for stream, record in moves:
            stream.busy = True
            self._in_flight += 1
            self._pool.submit(self._move, stream, record)
        return len(moves)

    def _move(self, stream: Stream, record: VersionRecord) -> None:
        try:
            self.harness.mover.move(stream, record)
        except Exception:  # a bug here must not wedge the stream
            log.exception("moving %s %d failed unexpectedly", stream.name, record.version)
        finally:
            with self._lock:
                if (stream.name, record.version) in self.harness.admission.refused_moves:
                    self.events.move_refused(stream)  # tried again when capacity changes
                self._action_ended(stream)

    def _run_action(self, stream: Stream, action: Action) -> None:
        try:
            if action.kind == "load":
                self.harness.load(stream, stream.versions[action.version])
            else:
                self.harness.unload(stream, stream.versions[action.version])
        except Exception:  # a bug here must not wedge the stream
            log.exception("action %s on %s failed unexpectedly", action, stream.name)
        finally:
            with self._lock:
                self._action_ended(stream)

    def _action_ended(self, stream: Stream) -> None:
        """`stream`'s action (or move, or repair) ended: it is idle, and a coming pass looks at
        it (under the lock)."""
        stream.busy = False
        self._in_flight -= 1
        self.events.replan.mark(stream)
        self._changed.notify_all()

    def capacity_changed(self, reason: str) -> None:
        """Capacity may have grown (inventory refreshed, node added): retry refused versions
        and refused moves."""
        self.harness.capacity_changed(reason)

    def settings_changed(self) -> None:
        """The per-model settings changed (the side file): coming passes look at every stream
        again, since what `harness.shared(name)` answers, a model's placement, may have changed
        (a version in the other placement is moved). Call it once the backend holds the new
        settings."""
        with self._lock:
            self.events.replan.mark_all()

    def nodes_lost(self, node_ids: set[str]) -> list[str]:
        """Ray nodes left the cluster (cluster/repairs.py has the rules). An AVAILABLE version
        with replicas left elsewhere keeps serving from them: the lost ones leave the serving
        map now, their applications are deleted once routers caught up, and they are re-placed
        where capacity allows. One with nothing left is taken out of the serving map (END,
        UNAVAILABLE), its deployments are deleted and reservations released, and while it is
        aspired it starts over as a new load. Returns the servables that lost replicas."""
        hit = []
        gone_nodes = set(node_ids)
        with self._lock:
            for stream, record, gone in plan.lost_with_nodes(self._streams.values(), node_ids):
                servable = plan.servable_id(stream.name, record.version)
                hit.append(servable)
                self._in_flight += 1  # wait_idle waits for the clean-up too
                loss = repairs.split_loss(record, gone_nodes)
                if loss is not None and loss.survives:
                    repairs.apply_loss(record, loss, gone_nodes)
                    log.warning(
                        "Servable %s lost %d replica(s): node %s left the cluster; it serves "
                        "from the others",
                        servable,
                        loss.replicas,
                        ", ".join(n[:12] for n in gone),
                    )
                    self.touch(stream)
                    self._pool.submit(self._drop_lost, stream, record, loss)
                    continue
                record.state = HarnessState.ERROR
                record.error_code = "UNAVAILABLE"
                record.error_message = (
                    f"Servable {servable} lost its replicas: node "
                    f"{', '.join(n[:12] for n in gone)} left the cluster"
                )
                log.error("%s", record.error_message)
                self.touch(stream)
                self._pool.submit(self._replace, stream, record)
            if hit:
                self._publish()  # out of the serving map now
        return hit

    def _drop_lost(self, stream: Stream, record: VersionRecord, loss: repairs.Loss) -> None:
        try:
            self.repairer.drop(stream, record, loss)
        except Exception:
            log.exception("dropping lost replicas of %s %d failed", stream.name, record.version)
        finally:
            with self._lock:
                self._in_flight -= 1
                self._changed.notify_all()

    def _start_repairs(self) -> int:
        """Start the repair of every version due one whose stream is idle (callers hold the
        lock); returns how many were started."""
        due = self.harness.admission.repairs_due
        started = 0
        for name, version in list(due):
            stream = self._streams.get(name)
            record = stream.versions.get(version) if stream is not None else None
            if (
                stream is None
                or record is None
                or record.state is not HarnessState.READY
                or not record.aspired
                or record.missing_replicas <= 0
            ):
                due.discard((name, version))
                continue
            if stream.busy:
                continue
            due.discard((name, version))
            stream.busy = True
            self._in_flight += 1
            self._pool.submit(self._repair, stream, record)
            started += 1
        return started

    def _repair(self, stream: Stream, record: VersionRecord) -> None:
        try:
            self.repairer.repair(stream, record)
        except Exception:
            log.exception("repairing %s %d failed unexpectedly", stream.name, record.version)
        finally:
            with self._lock:
                self._action_ended(stream)

    def _note_missing(self, stream: Stream, record: VersionRecord, count: int, why: str) -> None:
        """`record` misses `count` replicas for the reason `why` (cluster/repairs.py)."""
        with self._lock:
            record.missing_replicas, record.missing_reason = count, why
            self.touch(stream)
            self._changed.notify_all()

    def _replace(self, stream: Stream, record: VersionRecord) -> None:
        try:
            self.harness.replace(stream, record)
        except Exception:
            log.exception("re-placing %s %d failed unexpectedly", stream.name, record.version)
        finally:
            with self._lock:
                self._in_flight -= 1
                self._changed.notify_all()

    def drain_metrics(self) -> metrics.Deltas:
        return self._metrics.drain()

    def wait_idle(self, timeout_s: float) -> bool:
        """Block until no action is in flight and no stream has one to start."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.reconcile() == 0:
                with self._lock:
                    if self.events.replan:  # marked streams the pass did not look at
                        continue
                    if self._in_flight == 0:
                        return True
                    self._changed.wait(0.05)
        return False

    # ---- serving map and routers ------------------------------------------------------------
    def _publish(self) -> None:
        self.publisher.publish()

    def serving_map(self) -> ServingMap:
        """The READY versions and where they run, labels, traffic splits and every known
        model name, at the current epoch (core/contracts.py)."""
        with self._lock:
            return status.serving_map(
                self._streams,
                self._labels,
                self._traffic,
                self.publisher.epoch,
                self.publisher.poll_s,
                self._rollouts,
                self._held_back,
                self._experiments,
            )

    def wait_for_serving_map(
        self, known_epoch: int, router_id: str, timeout_s: float
    ) -> ServingMap | None:
        """Long poll: acknowledges `known_epoch` for `router_id`; returns the map once it is
        newer, None after `timeout_s` without a newer one."""
        if not self.publisher.wait_for_newer(known_epoch, router_id, timeout_s):
            return None
        return self.serving_map()

    # ---- labels -----------------------------------------------------------------------------
    def check_labels(self, labels: dict[str, dict[str, int]], allow_unavailable: bool) -> None:
        """Raises FAILED_PRECONDITION where `labels` break TF Serving's label rules."""
        with self._lock:
            refusal = plan.label_refusal(self._streams, self._labels, labels, allow_unavailable)
        if refusal is not None:
            raise refusal

    def set_traffic(
        self,
        traffic: dict[str, tuple],
        rollouts: dict | None = None,
        held_back: dict[str, int] | None = None,
        experiments: dict[str, tuple[str, str]] | None = None,
    ) -> None:
        """Replace the weighted traffic splits of unversioned requests (the side file's, with
        the rollouts' in place of their models'), the running rollouts' routes
        (core/contracts.py RolloutRoute), the candidates held back from unversioned requests
        and the sticky experiments' keys; publishes only a change."""
        new = (dict(traffic), dict(rollouts or {}), dict(held_back or {}), dict(experiments or {}))
        with self._lock:
            if (self._traffic, self._rollouts, self._held_back, self._experiments) == new:
                return
            self._traffic, self._rollouts, self._held_back, self._experiments = new
            self._publish()

    def traffic(self) -> dict[str, tuple]:
        with self._lock:
            return dict(self._traffic)

    def set_policy(self, name: str, policy: str) -> None:
        if policy not in ASPIRED_VERSION_POLICIES:
            raise ValueError(f"unknown version policy {policy!r}")
        with self._lock:
            stream = self._streams.get(name)
            if stream is not None and stream.policy != policy:
                stream.policy = policy
                self.touch(stream)

    def set_labels(self, labels: dict[str, dict[str, int]], wait_for_routers: bool = False) -> None:
        """Replace every model's labels (already checked with `check_labels`). With
        `wait_for_routers`, return once every live router has acknowledged the serving map that
        carries them (or after the acknowledgement timeout), so a reload that answers OK is in
        force: a request by the new label right after it is routed, as in TF Serving. Labels
        equal to the current ones publish nothing (a config file polled unchanged)."""
        with self._lock:
            new = {name: dict(m) for name, m in labels.items() if m}
            if new != self._labels:
                self._labels = new
                self._publish()
            epoch = self.publisher.epoch
        if wait_for_routers:
            self.publisher.wait_for_routers(epoch)

    # ---- status -----------------------------------------------------------------------------
    def model_status(self, name: str, version: int | None = None) -> list[dict]:
        """Every version seen, newest first; raises NOT_FOUND with TF Serving's messages."""
        with self._lock:
            return status.model_status(self._streams.get(name), name, version)

    def wait_for_models(self, names: list[str], timeout_s: float) -> dict:
        """Block until each named model has a version AVAILABLE or END (TF Serving's wait at
        start-up and on reload). Returns {"pending": [names still without one],
        "failed": {name: status of its newest END version} for models with none AVAILABLE}."""
        with self._lock:
            self._changed.wait_for(
                lambda: not status.models_pending(self._streams, names), timeout=timeout_s
            )
            return {
                "pending": status.models_pending(self._streams, names),
                "failed": status.models_failed(self._streams, names),
            }

    def retries(self) -> dict[str, dict[str, dict]]:
        """{model: {version: retry}} of the versions whose load failed and waits for its next
        try (VersionRecord.retry); TF Serving's status shows them as LOADING, error OK."""
        with self._lock:
            return status.retries(self._streams)

    def labels(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {name: dict(m) for name, m in self._labels.items()}

    def list_models(self) -> dict[str, list[dict]]:
        with self._lock:
            return {
                name: self.model_status(name)
                for name in sorted(self._streams)
                if self._streams[name].versions
            }

    def stream_names(self) -> list[str]:
        with self._lock:
            return sorted(self._streams)

    def metrics_state(self) -> dict:
        """The gauges of core/metrics.py `render_aspire` (cluster/status.py `metrics_state`)."""
        held = self._book.held() if self._book is not None else {}
        with self._lock:
            return status.metrics_state(self._streams, self._labels, self._traffic, held)

    def shared_hosts(self) -> list[dict]:
        """The open shared hosts: block, use and versions (cluster/host_admission.py)."""
        return self.harness.hosts()

    def capacity_waits(self) -> dict[str, dict[str, dict]]:
        """{model: {version: its wait}} of the versions waiting for capacity (cluster/status.py
        `capacity_waits`); TF Serving's status shows them as LOADING, error OK."""
        with self._lock:
            return status.capacity_waits(self._streams)

    def waiting_bundles(self) -> list[dict]:
        """The Ray bundles of every version waiting for capacity (cluster/capacity.py)."""
        with self._lock:
            self._changed.notify_all()  # a wait that ran out: start-up and reload waits look again
            return status.waiting_bundles(self._streams)

    def missing_replicas(self) -> dict[str, dict[str, dict]]:
        """{model: {version: {"replicas", "reason"}}} of the AVAILABLE versions serving with
        fewer replicas than they were loaded with: lost with a node, not re-placed yet
        (cluster/repairs.py)."""
        with self._lock:
            found: dict[str, dict[str, dict]] = {}
            for s in self._streams.values():
                for r in s.versions.values():
                    if r.missing_replicas > 0 and r.state is HarnessState.READY:
                        found.setdefault(s.name, {})[str(r.version)] = {
                            "replicas": r.missing_replicas,
                            "reason": r.missing_reason,
                        }
            return found

    def deployed(self) -> list[tuple[str, int, Deployed]]:
        """(model, version, where it runs) of every version whose deployment exists."""
        with self._lock:
            return [
                (s.name, r.version, r.deployed)
                for s in self._streams.values()
                for r in s.versions.values()
                if r.deployed is not None
            ]

    # ---- the journal (cluster/journal.py, written by cluster/manager_events.py) and restore --
    def _measured(self, name: str) -> dict[int, int]:
        return self.harness.admission.measured(name)

    def touch(self, stream: Stream) -> None:
        """`stream` changed: a coming reconcile pass looks at it, and the next flush writes its
        key (callers hold the lock)."""
        self.events.touch(stream)

    def flush_state(self, stream: Stream | None = None) -> int:
        """Write the key of every stream changed since the last flush (of `stream` only, when
        given); returns how many were written. Called every 100 ms by the manager actor, and by
        the load threads before they create or delete a deployment. A failed write is logged
        and tried again by the next flush."""
        return self.events.flush_state(stream)

    def wait_for_routers(self) -> None:
        """Block until every live router has acknowledged the current serving map (or the
        acknowledgement timeout passed)."""
        self.events.wait_for_routers()

    def restore(self, list_apps: Callable[[], set[str]], app_prefix: Callable[[str], str]) -> dict:
        """Carry on from a manager that died, from what it stored (cluster/recovery.py has the
        rules). Call it once, on a new Manager, before anything else uses it.

        `list_apps()`: the backend's applications that exist now (Serve applications named with
        core.names.APP_PREFIX); `app_prefix(name)`: how every application name of model `name`
        starts, before the version number (and "-p<i>" for a version's further placements).
        The serving-map epoch continues above every epoch published before, so every router
        fetches the restored map at its next poll. Returns {"models", "adopted", "dropped",
        "orphans"} counts.
        """
        assert self.journal is not None, "restore() needs a store"
        docs, ceiling = self.journal.read()
        plan = recovery.plan_restore(docs, set(list_apps()), app_prefix)
        self.harness.admission.restore_measured(plan.measured_vram)
        adopted = {id(r) for r in plan.adopted}
        for stream in plan.streams:  # booked again exactly where they run, hosts included
            for record in stream.versions.values():
                if id(record) in adopted:
                    self.harness.adopt(stream, record)
                    if record.missing_replicas > 0:  # lost with a node, not re-placed yet
                        self.harness.admission.repairs_due.add((stream.name, record.version))
        with self._lock:
            self._list_apps, self._app_prefix = list_apps, app_prefix
            self._streams.update((s.name, s) for s in plan.streams)
            self.events.restored(plan.streams)  # the next pass looks at every stream
            for name in plan.changed:
                self.journal.touch(name)
            # above every epoch a router may hold; the router grace starts now
            self.publisher.continue_from(loads(ceiling) if ceiling else 0)
            if plan.dropped or plan.orphans:
                for name in plan.recovering:
                    self._streams[name].busy = True
                self._in_flight += 1
                self._pool.submit(self._recover, plan.recovering, plan.dropped)
        summary = plan.summary()
        log.info(
            "Restored the manager's state: %s; serving map epoch %d", summary, self.publisher.epoch
        )
        return summary

    def _recover(self, recovering: set[str], dropped: list) -> None:
        """The recovery action of restore(): delete what a dead manager left, then let the
        dropped versions start over."""
        assert self._list_apps is not None and self._app_prefix is not None
        try:
            self.wait_for_routers()
            apps = set(self._list_apps())
            with self._lock:
                keep = recovery.ready_apps(self._streams.values())
                prefixes = {self._app_prefix(name): name for name in self._streams}
            for names in recovery.doomed_apps(apps, keep, prefixes, recovering).values():
                log.info("Deleting %s, left by the manager that stopped", ", ".join(names))
                try:
                    self._backend.unload(Deployed.of_apps(names))
                except Exception as exc:
                    log.error("Deleting %s raised %s: %s", names, type(exc).__name__, exc)
        except Exception:
            log.exception("recovery after a restart failed")
        finally:
            with self._lock:
                for stream, record, was in dropped:
                    recovery.settle_dropped(stream, record, was)
                for name in recovering:
                    self._streams[name].busy = False
                    self.touch(self._streams[name])
                self._in_flight -= 1
                self._changed.notify_all()

    def shutdown(self) -> None:
        self._pool.shutdown()
