"""The manager's plan step (cluster/plan.py) as pure functions of streams, all-or-none replica
reservations, and the load harness's retry rules as a scenario table on an injected clock: no
test here waits for a real retry interval."""

import re
import time

import pytest

from cluster import plan
from cluster.manager import Manager
from cluster.manager_state import Stream, VersionRecord
from cluster.reservations import Reservations
from core.deployed import AppPlacement, Deployed
from core.errors import AspireError
from core.units import GIB
from policies.admission import Gpu, Need, Placement, Refusal
from policies.lifecycle import Action, HarnessState
from tests.support.fake_time import FakeTime

READY, NEW, ERROR = HarnessState.READY, HarnessState.NEW, HarnessState.ERROR


def stream(name, *records, busy=False, policy="availability_preserving"):
    s = Stream(name, policy=policy, busy=busy)
    for version, state, aspired in records:
        s.versions[version] = VersionRecord(version, f"/{name}/{version}", state, aspired)
    return s


def test_next_actions_gives_each_idle_stream_its_policys_action_and_skips_busy_ones():
    rollout = stream("a", (1, READY, True), (2, NEW, True))
    busy = stream("b", (1, NEW, True), busy=True)
    settled = stream("c", (1, READY, True))
    retired = stream("d", (1, READY, False), (2, NEW, True), policy="resource_preserving")
    got = [(s.name, a) for s, a in plan.next_actions([rollout, busy, settled, retired])]
    assert got == [("a", Action("load", 2)), ("d", Action("unload", 1))]


def test_replica_keys_name_one_key_per_replica():
    assert plan.replica_keys("{name: m version: 1}", 1) == ["{name: m version: 1}"]
    assert plan.replica_keys("s", 2) == ["s replica 1 of 2", "s replica 2 of 2"]


def test_only_refused_versions_that_stay_aspired_are_retried():
    s = stream("m", (1, ERROR, True), (2, ERROR, True), (3, ERROR, False))
    s.versions[1].refused = s.versions[3].refused = True  # 2 failed to load: not refused
    assert [(st.name, r.version) for st, r in plan.refused_to_retry([s])] == [("m", 1)]


def test_lost_with_nodes_finds_available_versions_with_a_replica_on_a_lost_node():
    s = stream("m", (1, READY, True), (2, READY, True), (3, HarnessState.LOADING, True))

    def on(*nodes):
        return Deployed(apps=(), placements=tuple(AppPlacement("a", node_id=n) for n in nodes))

    s.versions[1].deployed = on("n1", "n2")
    s.versions[2].deployed = on("n3")
    s.versions[3].deployed = on("n1")  # not serving: not hit here
    hit = plan.lost_with_nodes([s], {"n2", "n1"})
    assert [(r.version, gone) for _, r, gone in hit] == [(1, ["n1", "n2"])]


@pytest.mark.parametrize(
    "labels, current, allow_unavailable, refused_version",
    [
        ({"m": {"stable": 1}}, {}, False, None),  # AVAILABLE: always allowed
        ({"m": {"canary": 2}}, {}, False, 2),  # loading: refused
        ({"m": {"canary": 2}}, {}, True, None),  # a new label may wait for its version
        ({"m": {"canary": 2}}, {"m": {"canary": 1}}, True, 2),  # a moved one may not
        ({"m": {"canary": 2}}, {"m": {"canary": 2}}, True, None),  # kept where it is
        ({"other": {"x": 1}}, {}, False, 1),  # unknown model
    ],
)
def test_label_rules(labels, current, allow_unavailable, refused_version):
    streams = {"m": stream("m", (1, READY, True), (2, HarnessState.LOADING, True))}
    refusal = plan.label_refusal(streams, current, labels, allow_unavailable)
    if refused_version is None:
        assert refusal is None
    else:
        assert refusal.code == "FAILED_PRECONDITION"
        assert f"assign label to version {refused_version} " in refusal.message


def test_reserve_all_holds_every_replica_or_none():
    book = Reservations([Gpu("n1", 0, 10 * GIB, 0), Gpu("n1", 1, 8 * GIB, 0)], {"n1": 64 * GIB})
    placed = book.reserve_all(["a1", "a2"], Need(6 * GIB, GIB))
    assert [p.gpu_index for p in placed] == [1, 0]  # best fit: the tighter GPU first
    refused = book.reserve_all(["b1", "b2"], Need(3 * GIB, GIB))  # 4 and 2 GiB free: one fits
    assert isinstance(refused, Refusal) and refused.code == "RESOURCE_EXHAUSTED"
    assert set(book.held()) == {"a1", "a2"}  # b1 was given back
    assert all(isinstance(p, Placement) for p in book.reserve_all(["c1"], Need(3 * GIB, GIB)))


class ScriptedBackend:
    """Each load answers the next outcome of its script (an error code, or "OK") and takes
    `load_s` of fake time."""

    def __init__(self, time, script, load_s=2.0):
        self.time, self.script, self.load_s, self.loads = time, list(script), load_s, 0

    def load(self, name, version, path, placements=None):
        self.loads += 1
        self.time.now += self.load_s
        outcome = self.script.pop(0)
        if outcome != "OK":
            raise AspireError(f"{outcome} on try {self.loads}", outcome)
        return Deployed(apps=((f"{name}-{version}", 1),))

    def unload(self, deployed):
        pass


# script of load outcomes, max retries -> loads made, sleeps, final state and code
RETRY_SCENARIOS = [
    (["OK"], 5, 1, [], "AVAILABLE", "OK"),
    (["UNAVAILABLE", "OK"], 5, 2, [60], "AVAILABLE", "OK"),
    (["DATA_LOSS"] * 3, 2, 3, [60, 60], "END", "DATA_LOSS"),
    (["DATA_LOSS"], 0, 1, [], "END", "DATA_LOSS"),
    (["PERMISSION_DENIED"], 5, 1, [], "END", "PERMISSION_DENIED"),  # not retriable
    (["UNAVAILABLE", "INTERNAL", "OK"], 5, 3, [60, 60], "AVAILABLE", "OK"),
]


@pytest.mark.parametrize("script, retries, loads, slept, state, code", RETRY_SCENARIOS)
def test_load_retries_follow_tf_servings_retrier(script, retries, loads, slept, state, code):
    fake = FakeTime()
    backend = ScriptedBackend(fake, script)
    manager = Manager(
        backend,
        max_num_load_retries=retries,
        load_retry_interval_s=60,
        clock=fake.clock,
        sleep=fake.sleep,
    )
    try:
        manager.set_aspired_versions("m", {1: "/m/1"})
        assert manager.wait_idle(10)
        assert backend.loads == loads and fake.slept == slept
        status = manager.model_status("m")[0]
        assert (status["state"], status["error_code"]) == (state, code)
        if state == "AVAILABLE":  # the load time is read on the injected clock
            load_seconds = manager._streams["m"].versions[1].load_seconds
            assert load_seconds == loads * backend.load_s + sum(slept)
    finally:
        manager.shutdown()


def test_a_load_waiting_for_its_retry_shows_the_try_the_last_error_and_when_it_is_due():
    seen = []

    def look_while_waiting(seconds):  # the harness's retry wait, injected
        seen.append(manager.retries())

    backend = ScriptedBackend(FakeTime(), ["UNAVAILABLE", "INTERNAL", "OK"])
    manager = Manager(
        backend, max_num_load_retries=5, load_retry_interval_s=60, sleep=look_while_waiting
    )
    try:
        before = time.time()
        manager.set_aspired_versions("m", {1: "/m/1"})
        assert manager.wait_idle(10)
        first, second = (s["m"]["1"] for s in seen)
        assert (first["attempt"], first["of"], first["error_code"]) == (2, 6, "UNAVAILABLE")
        assert first["error_message"] == "UNAVAILABLE on try 1"
        assert (second["attempt"], second["error_code"]) == (3, "INTERNAL")
        assert before + 60 <= first["next_try_at"] <= time.time() + 60
        assert manager.retries() == {}  # loaded: nothing pending
        assert manager.model_status("m")[0]["error_code"] == "OK"  # TF Serving's view unchanged
    finally:
        manager.shutdown()


def test_the_status_table_shows_a_pending_retry_in_the_error_column():
    from cluster.cli import status_table

    described = {
        "models": {
            "m": [{"version": 1, "state": "LOADING", "error_code": "OK", "error_message": ""}]
        },
        "retries": {
            "m": {
                "1": {
                    "attempt": 2,
                    "of": 6,
                    "error_code": "UNAVAILABLE",
                    "error_message": "no replica",
                    "next_try_at": 0.0,
                }
            }
        },
    }
    table = status_table(described)
    assert re.search(
        r"m\s+1\s+LOADING\s+try 2/6 at \d\d:\d\d:\d\d after UNAVAILABLE: no replica", table
    ), table


def test_unaspiring_a_version_ends_its_retry_wait_at_once():
    """Without an injected sleeper the wait is on the manager's condition: a stop (every version
    unaspired) does not wait out TF Serving's one-minute retry interval."""
    backend = ScriptedBackend(FakeTime(), ["UNAVAILABLE"] * 6)
    manager = Manager(backend, max_num_load_retries=5, load_retry_interval_s=600)
    try:
        manager.set_aspired_versions("m", {1: "/m/1"})
        deadline = time.monotonic() + 60
        while not manager.retries() and time.monotonic() < deadline:
            manager.reconcile()  # the manager actor's loop does this every 100 ms
            time.sleep(0.01)
        assert manager.retries()["m"]["1"]["attempt"] == 2
        manager.set_aspired_versions("m", {})
        assert manager.wait_idle(60)  # far under the 600 s interval it would otherwise wait
        assert backend.loads == 1
        assert manager.model_status("m")[0]["error_code"] == "CANCELLED"
    finally:
        manager.shutdown()


def test_a_long_load_says_every_period_that_it_goes_on_and_what_it_waits_for(caplog):
    import threading

    release = threading.Event()

    class SlowBackend(ScriptedBackend):
        def load(self, name, version, path, placements=None):
            release.wait(60)
            return super().load(name, version, path, placements)

    period = 0.05
    backend = SlowBackend(FakeTime(), ["OK"])
    manager = Manager(backend, progress_period_s=period)
    caplog.set_level("INFO", logger="aspire.manager")
    try:
        manager.set_aspired_versions("m", {1: "/m/1"})
        manager.reconcile()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(progress(caplog)) < 2:
            time.sleep(period)
        release.set()
        assert manager.wait_idle(60)
        lines = progress(caplog)
        assert len(lines) >= 2
        first = lines[0]
        assert first.getMessage().startswith("Still loading servable {name: m version: 1} after ")
        assert first.getMessage().endswith(": replica starting (process start, TF load, warmup)")
        assert (first.model, first.version, first.event) == ("m", 1, "load_progress")
        # the load ended: no progress line after the one that says it loaded
        loaded = [r.getMessage().startswith("Successfully loaded") for r in caplog.records]
        assert not any(
            getattr(r, "event", None) == "load_progress"
            for r in caplog.records[loaded.index(True) :]
        )
    finally:
        release.set()
        manager.shutdown()


def progress(caplog):
    return [r for r in caplog.records if getattr(r, "event", None) == "load_progress"]
