"""A reconcile pass looks only at the streams changed since a pass last looked at them
(cluster/manager_events.py `Replan`), and every way a stream can get something to do marks it:
an aspired change, its action ending, a policy change, capacity growing after a refusal (of a
load or of a move), the per-model settings changing, a restore. Also the load threads that run
the actions (cluster/load_threads.py)."""

from __future__ import annotations

import threading
import time

import pytest

from cluster import plan
from cluster.control_plane import ClusterView, ManagerConfig, build_control_plane
from cluster.load_threads import LoadThreads
from cluster.manager import Manager
from cluster.manager_state import MemoryStore
from cluster.reservations import Reservations
from config.aspire_config import ModelSettings
from config.model_config import ModelSource
from core.deployed import Deployed
from core.errors import AspireError
from core.units import GIB, MIB
from policies.admission import Need

BLOCK = {"cpu": Need(0, 1 * GIB), "gpu": Need(4 * GIB, 1 * GIB)}  # one shared host's block


class Backend:
    """Every version needs 600 MiB of RAM; loads succeed unless (name, version) is in `fail`,
    once per entry of `fail_once`. Models in `shared_models` (or with "placement": "shared" in
    `settings`) load into shared hosts."""

    host_replicas = 1

    def __init__(self):
        self.loads: list[tuple[str, int, str]] = []
        self.unloads: list[tuple[str, int]] = []
        self.fail: set[tuple[str, int]] = set()
        self.fail_once: set[tuple[str, int]] = set()
        self.shared_models: set[str] = set()
        self.settings: dict[str, ModelSettings] = {}
        self.lock = threading.Lock()

    def need(self, name, version, path, has_gpus, measured_vram_bytes):
        return Need(0, 600 * MIB), 1

    def shared(self, name):
        settings = self.settings.get(name)
        return name in self.shared_models or bool(settings and settings.placement == "shared")

    def host_block(self, device):
        return BLOCK[device]

    def _loading(self, name, version, where):
        with self.lock:
            self.loads.append((name, version, where))
            if (name, version) in self.fail_once:
                self.fail_once.discard((name, version))
                raise AspireError("not yet", "UNAVAILABLE")
        if (name, version) in self.fail:
            raise AspireError("broken", "INTERNAL")

    def load(self, name, version, path, placements=None):
        self._loading(name, version, "dedicated")
        return Deployed(apps=((f"{name}-{version}", 1),))

    def load_shared(self, name, version, path, slot):
        self._loading(name, version, slot.app)
        return Deployed(apps=((slot.app, 1),), key=f"{version}:{name}", host=slot.app)

    def unload(self, deployed):
        if deployed.shared:  # out of its host: "version:name"
            number, name = deployed.key.split(":")
        else:  # its own application: "name-version"
            name, _, number = deployed.apps[0][0].rpartition("-")
        with self.lock:
            self.unloads.append((name, int(number)))

    def adopt(self, name, version, path, deployed):
        pass

    def close_host(self, app):
        pass

    def cancel_loads(self):
        pass


def ram_book(gib: float) -> Reservations:
    return Reservations([], {"n1": int(gib * GIB)})


@pytest.fixture
def backend():
    return Backend()


@pytest.fixture
def looked_at(monkeypatch):
    """The names of the streams each reconcile pass hands the plan step, one list per pass
    (what `next_actions` and `misplaced` are given: always the same streams)."""
    passes: list[list[str]] = []
    next_actions, misplaced = plan.next_actions, plan.misplaced

    def spy_actions(streams):
        streams = list(streams)
        passes.append([s.name for s in streams])
        return next_actions(streams)

    def spy_misplaced(streams, shared, refused):
        streams = list(streams)
        assert [s.name for s in streams] == passes[-1]
        return misplaced(streams, shared, refused)

    monkeypatch.setattr(plan, "next_actions", spy_actions)
    monkeypatch.setattr(plan, "misplaced", spy_misplaced)
    return passes


@pytest.fixture
def managers():
    made: list[Manager] = []

    def make(backend, **options) -> Manager:
        options.setdefault("num_load_threads", 2)
        options.setdefault("max_num_load_retries", 0)
        options.setdefault("router_ack_timeout_s", 1)
        made.append(Manager(backend, **options))
        return made[-1]

    yield make
    for manager in made:
        manager.shutdown()


def states(manager, name):
    return [(s["version"], s["state"], s["error_code"]) for s in manager.model_status(name)]


def aspire(manager, name, *versions):
    manager.set_aspired_versions(name, {v: f"/{name}/{v}" for v in versions})


# ---- nothing changed: nothing looked at ------------------------------------------------------
def test_a_pass_with_nothing_changed_hands_the_plan_step_no_stream(backend, looked_at, managers):
    manager = managers(backend)
    for name in ("a", "b", "c"):
        aspire(manager, name, 1, 2)
    assert manager.wait_idle(5)
    looked_at.clear()
    assert manager.reconcile() == 0
    assert manager.reconcile() == 0
    assert looked_at == [[], []]


def test_the_source_repeating_the_same_aspired_versions_marks_no_stream(
    backend, looked_at, managers
):
    manager = managers(backend)
    aspire(manager, "a", 1)
    assert manager.wait_idle(5)
    aspire(manager, "a", 1)  # the source's next poll, unchanged
    looked_at.clear()
    assert manager.reconcile() == 0
    assert looked_at == [[]]


def test_a_pass_looks_at_streams_per_pass_streams_at_most_first_marked_first(
    backend, looked_at, managers
):
    manager = managers(backend, streams_per_pass=2)
    for name in ("a", "b", "c", "d", "e"):
        aspire(manager, name, 1)
    aspire(manager, "a", 1, 2)  # marked again: keeps its place
    assert manager.reconcile() == 2
    assert manager.reconcile() == 2
    assert looked_at[:2] == [["a", "b"], ["c", "d"]]
    assert manager.wait_idle(5)  # looks at e too, and at a again once its load ended
    assert "e" in looked_at[2]
    for name in ("b", "c", "d", "e"):
        assert states(manager, name) == [(1, "AVAILABLE", "OK")]
    assert states(manager, "a") == [(2, "AVAILABLE", "OK"), (1, "AVAILABLE", "OK")]


# ---- each wake-up leads to the action ---------------------------------------------------------
def test_an_aspired_change_marks_only_its_stream_and_its_version_loads(
    backend, looked_at, managers
):
    manager = managers(backend)
    for name in ("a", "b"):
        aspire(manager, name, 1)
    assert manager.wait_idle(5)
    aspire(manager, "b", 1, 2)
    looked_at.clear()
    assert manager.reconcile() == 1
    assert looked_at == [["b"]]
    assert manager.wait_idle(5)
    assert states(manager, "b") == [(2, "AVAILABLE", "OK"), (1, "AVAILABLE", "OK")]


def test_a_busy_stream_is_not_looked_at_again_until_its_action_ends_then_it_goes_on(
    backend, looked_at, managers
):
    manager = managers(backend)
    aspire(manager, "m", 1)
    assert manager.wait_idle(5)
    loaded, go = threading.Event(), threading.Event()
    load = manager.harness.load

    def held_load(stream, record):  # the action ends once `go` is set, after every event
        load(stream, record)
        loaded.set()
        go.wait(5)

    manager.harness.load = held_load
    aspire(manager, "m", 2)
    assert manager.reconcile() == 1  # the load of 2
    assert loaded.wait(5)  # 2 is AVAILABLE, and its action has not ended
    looked_at.clear()
    assert manager.reconcile() == 0 and manager.reconcile() == 0
    assert looked_at == [[], []]  # busy: its load's own events do not mark it
    go.set()
    assert manager.wait_idle(5)  # the action's end marks m: the unload of 1 follows
    assert backend.unloads == [("m", 1)]
    assert states(manager, "m") == [(2, "AVAILABLE", "OK"), (1, "END", "OK")]


def test_an_aspired_change_while_a_load_waits_to_retry_is_acted_on_when_the_load_ends(
    backend, managers
):
    waiting, resume = threading.Event(), threading.Event()

    def sleep(seconds):  # the harness's wait between two tries of a load
        waiting.set()
        resume.wait(10)

    manager = managers(backend, max_num_load_retries=1, sleep=sleep)
    backend.fail_once.add(("m", 1))
    aspire(manager, "m", 1)
    assert manager.reconcile() == 1
    assert waiting.wait(5)
    aspire(manager, "m", 2)  # 1 is unaspired while its retry waits
    assert manager.reconcile() == 0  # m is busy: its mark is dropped
    resume.set()
    assert manager.wait_idle(5)
    assert states(manager, "m") == [(2, "AVAILABLE", "OK"), (1, "END", "CANCELLED")]


def test_a_policy_change_is_acted_on_at_the_next_pass(backend, managers):
    manager = managers(backend)
    aspire(manager, "m", 1)
    assert manager.wait_idle(5)
    backend.fail.add(("m", 2))
    aspire(manager, "m", 2)
    assert manager.wait_idle(5)  # availability preserving: 1 serves while 2 failed
    assert states(manager, "m") == [(2, "END", "INTERNAL"), (1, "AVAILABLE", "OK")]
    manager.set_policy("m", "resource_preserving")
    assert manager.reconcile() == 1  # resource preserving: the unaspired 1 goes
    assert manager.wait_idle(5)
    assert states(manager, "m") == [(2, "END", "INTERNAL"), (1, "END", "OK")]


def test_a_refused_version_is_looked_at_again_when_capacity_changes_and_then_loads(
    backend, looked_at, managers
):
    book = ram_book(1)  # room for one version of 600 MiB
    manager = managers(backend, book=book)
    aspire(manager, "a", 1)
    assert manager.wait_idle(5)
    aspire(manager, "b", 1)
    assert manager.wait_idle(5)
    assert states(manager, "b") == [(1, "END", "RESOURCE_EXHAUSTED")]
    looked_at.clear()
    assert manager.reconcile() == 0 and looked_at == [[]]
    book.update_inventory([], {"n1": 2 * GIB})
    manager.capacity_changed("the inventory grew")
    assert manager.reconcile() == 1 and looked_at[-1] == ["b"]
    assert manager.wait_idle(5)
    assert states(manager, "b") == [(1, "AVAILABLE", "OK")]


def test_a_settings_change_marks_every_stream_and_a_misplaced_version_moves(
    backend, looked_at, managers
):
    manager = managers(backend, book=ram_book(8))
    for name in ("a", "b"):
        aspire(manager, name, 1)
    assert manager.wait_idle(5)
    backend.shared_models = {"a"}  # the backend's settings say "shared" now
    assert manager.reconcile() == 0  # not yet told
    looked_at.clear()
    manager.settings_changed()
    assert manager.reconcile() == 1
    assert looked_at == [["a", "b"]]
    assert manager.wait_idle(5)
    assert backend.loads[-1][:2] == ("a", 1) and backend.loads[-1][2] != "dedicated"
    assert manager.serving_map().models["a"][1].key == "1:a"
    assert states(manager, "a") == [(1, "AVAILABLE", "OK")]


def test_a_move_refused_for_lack_of_room_is_tried_again_when_capacity_changes(
    backend, looked_at, managers
):
    book = ram_book(1.5)  # 600 MiB dedicated, then no room for a host's 1 GiB block
    manager = managers(backend, book=book)
    aspire(manager, "a", 1)
    assert manager.wait_idle(5)
    backend.shared_models = {"a"}
    manager.settings_changed()
    assert manager.wait_idle(5)  # refused: a keeps serving in its own replica
    assert [where for _, _, where in backend.loads] == ["dedicated"]
    looked_at.clear()
    assert manager.reconcile() == 0 and looked_at == [[]]
    book.update_inventory([], {"n1": 4 * GIB})
    manager.capacity_changed("the inventory grew")
    assert manager.reconcile() == 1 and looked_at[-1] == ["a"]
    assert manager.wait_idle(5)
    assert backend.loads[-1][2] != "dedicated"
    assert manager.serving_map().models["a"][1].key == "1:a"


def test_the_control_plane_applying_settings_moves_a_version_to_its_new_placement(
    backend, tmp_path
):
    (tmp_path / "m" / "1").mkdir(parents=True)
    plane = build_control_plane(
        ManagerConfig(
            [ModelSource("m", str(tmp_path / "m"))], num_load_threads=1, max_num_load_retries=0
        ),
        backend,
        MemoryStore(),
        ClusterView(
            inventory=lambda declared: ([], {"n1": 8 * GIB}, {"n1": 8.0}),
            servable_apps=set,
            app_prefix=lambda name: f"{name}-",
        ),
        restarted=False,
        state_prefix="manager/test/",
    )
    try:
        plane.source.poll_once()
        assert plane.manager.wait_idle(5)
        assert backend.loads == [("m", 1, "dedicated")]
        plane.set_settings({"m": ModelSettings(placement="shared", device="cpu")})
        assert plane.manager.wait_idle(5)
        assert [where != "dedicated" for _, _, where in backend.loads] == [False, True]
        assert backend.unloads == [("m", 1)]  # the dedicated replica, once the host serves
        assert plane.serving_map().models["m"][1].key == "1:m"
    finally:
        plane.shutdown(5)
        plane.manager.shutdown()


def test_a_restored_manager_looks_at_every_stream_and_loads_what_was_left_to_load(
    backend, looked_at, managers
):
    store = MemoryStore()
    first = managers(backend, store=store)
    aspire(first, "served", 1)
    assert first.wait_idle(5)
    aspire(first, "waiting", 1)  # stored START: the manager stops before loading it
    first.flush_state()
    second = managers(backend, store=store, router_grace_s=0)
    second.restore(lambda: {"served-1"}, lambda name: f"{name}-")
    looked_at.clear()
    assert second.reconcile() == 1
    assert looked_at == [["served", "waiting"]]
    assert second.wait_idle(5)
    assert states(second, "waiting") == [(1, "AVAILABLE", "OK")]
    looked_at.clear()
    assert second.reconcile() == 0 and looked_at == [[]]
    assert [(name, v) for name, v, _ in backend.loads] == [("served", 1), ("waiting", 1)]


# ---- the load threads --------------------------------------------------------------------------
def test_load_threads_start_calls_in_the_order_they_were_submitted():
    threads, ran, done = LoadThreads(1), [], threading.Event()
    for i in range(5):
        threads.submit(ran.append, i)
    threads.submit(done.set)
    assert done.wait(5)
    threads.shutdown()
    assert ran == [0, 1, 2, 3, 4]


def test_load_threads_run_at_most_count_calls_at_once():
    threads = LoadThreads(2)
    running, most, finished = [0], [0], []
    lock, release, all_done = threading.Lock(), threading.Event(), threading.Event()

    def call(i):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        release.wait(5)
        with lock:
            running[0] -= 1
            finished.append(i)
            if len(finished) == 6:
                all_done.set()

    for i in range(6):
        threads.submit(call, i)
    deadline = time.monotonic() + 5
    while running[0] < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)  # a third call would have started by now
    assert running[0] == 2
    release.set()
    assert all_done.wait(5)
    threads.shutdown()
    assert most[0] == 2 and sorted(finished) == list(range(6))


def test_load_threads_shutdown_drops_waiting_calls_and_waits_for_running_ones():
    threads = LoadThreads(1)
    entered, release, ran = threading.Event(), threading.Event(), []

    def first():
        entered.set()
        release.wait(5)
        ran.append("first")

    threads.submit(first)
    threads.submit(ran.append, "second")
    assert entered.wait(5)
    stopper = threading.Thread(target=threads.shutdown)
    stopper.start()
    deadline = time.monotonic() + 5
    while not threads._closed and time.monotonic() < deadline:  # "second" was dropped
        time.sleep(0.01)
    assert stopper.is_alive()  # waits for "first"
    release.set()
    stopper.join(5)
    assert ran == ["first"]
    with pytest.raises(RuntimeError):
        threads.submit(ran.append, "third")


def test_a_call_that_raises_is_logged_and_the_next_call_still_runs(caplog):
    threads = LoadThreads(1)
    done = threading.Event()

    def broken():
        raise ValueError("a bug")

    threads.submit(broken)
    threads.submit(done.set)
    assert done.wait(5)
    threads.shutdown()
    assert "a call on a load thread failed unexpectedly" in caplog.text
