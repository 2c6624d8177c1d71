"""Rollouts without Ray: the side file's "rollout" (config/rollout_config.py), the state machine
(policies/rollout.py) and the manager's part (cluster/rollouts.py) driven by a fake clock."""

from __future__ import annotations

import json

import pytest

from cluster.manager_state import MemoryStore, decode_value, encode_value
from cluster.rollouts import Rollouts, status_lines
from config.aspire_config import parse_aspire_config
from config.rollout_config import parse_rollout
from core.errors import AspireError
from policies import rollout as machine
from policies.rollout_judge import VersionWindow

ISSUE_EXAMPLE = {
    "candidate": 2,
    "shadow": {"percent": 100, "duration_s": 60, "max_mean_abs_diff": 1e-3},
    "steps": [
        {"weight": 5, "duration_s": 60},
        {"weight": 25, "duration_s": 120},
        {"weight": 50, "duration_s": 120},
    ],
    "analysis": {
        "interval_s": 10,
        "min_requests": 50,
        "max_error_rate": 0.01,
        "max_latency_p99_ratio": 1.5,
    },
}


def side_file(rollout: object, **model) -> str:
    return json.dumps({"models": {"m": {"rollout": rollout, **model}}})


# ---- the side file ----------------------------------------------------------------------------
def test_issue_example_parses_with_its_values():
    spec = parse_aspire_config(side_file(ISSUE_EXAMPLE))["m"].rollout
    assert spec.candidate == 2
    assert spec.shadow.percent == 100 and spec.shadow.duration_s == 60
    assert spec.shadow.limits.max_mean_abs_diff == 1e-3
    assert [(s.weight, s.duration_s) for s in spec.steps] == [(5, 60), (25, 120), (50, 120)]
    assert spec.analysis.interval_s == 10 and spec.analysis.max_latency_p99_ratio == 1.5
    assert spec.on_failure == "rollback" and not spec.paused


@pytest.mark.parametrize(
    "rollout, words",
    [
        ({}, "candidate is required"),
        ({"candidate": 2}, "needs a shadow phase or at least one step"),
        ({"candidate": True, "steps": [{"weight": 5, "duration_s": 1}]}, "candidate must be"),
        ({"candidate": 2, "steps": [{"weight": 0, "duration_s": 1}]}, "steps[0].weight"),
        ({"candidate": 2, "steps": [{"weight": 101, "duration_s": 1}]}, "steps[0].weight"),
        ({"candidate": 2, "steps": [{"weight": 5}]}, "steps[0].duration_s is required"),
        ({"candidate": 2, "steps": [{"weight": 5, "duration_s": 1, "wait": 1}]}, "'wait'"),
        ({"candidate": 2, "steps": [{"pause": False}]}, "manual gate"),
        ({"candidate": 2, "shadow": {"percent": 0}}, "shadow.percent"),
        ({"candidate": 2, "shadow": {"max_pending": -1}}, "shadow.max_pending"),
        ({"candidate": 2, "shadow": {}, "analysis": {"interval_s": 0}}, "analysis.interval_s"),
        ({"candidate": 2, "shadow": {}, "analysis": {"max_error_rate": 2}}, "max_error_rate"),
        ({"candidate": 2, "shadow": {}, "on_failure": "abort"}, "on_failure"),
        ({"candidate": 2, "shadow": {}, "paused": "yes"}, "paused"),
        ({"candidate": 2, "shadow": {}, "canary": {}}, "'canary'"),
        ([], "rollout must be an object"),
    ],
)
def test_bad_rollout_is_refused_naming_the_key(rollout, words):
    with pytest.raises(AspireError) as caught:
        parse_aspire_config(side_file(rollout), source="aspire.json")
    assert caught.value.code == "INVALID_ARGUMENT"
    assert "aspire.json" in caught.value.message and "'m'" in caught.value.message
    assert words in caught.value.message


def test_rollout_with_label_candidate_gate_and_pause_on_failure():
    spec = parse_rollout(
        {
            "candidate": "canary",
            "steps": [{"weight": 10, "duration_s": 5, "min_requests": 7}, {"pause": True}],
            "on_failure": "pause",
            "paused": True,
        }
    )
    assert spec.candidate == "canary" and spec.steps[1].pause and spec.steps[0].min_requests == 7
    assert spec.on_failure == "pause" and spec.paused


def test_pausing_keeps_the_rollout_key_and_other_changes_do_not():
    base = parse_rollout(ISSUE_EXAMPLE)
    assert parse_rollout({**ISSUE_EXAMPLE, "paused": True}).key() == base.key()
    assert parse_rollout({**ISSUE_EXAMPLE, "candidate": 3}).key() != base.key()


def test_settings_with_a_rollout_survive_the_stored_config_round_trip():
    settings = parse_aspire_config(side_file(ISSUE_EXAMPLE, traffic={"1": 100}))
    assert decode_value(json.loads(json.dumps(encode_value(settings)))) == settings


# ---- the state machine --------------------------------------------------------------------------
SPEC = parse_rollout(
    {
        "candidate": 2,
        "shadow": {"duration_s": 20},
        "steps": [
            {"weight": 10, "duration_s": 10},
            {"pause": True},
            {"weight": 50, "duration_s": 10},
        ],
        "analysis": {"interval_s": 10},
    }
)


def test_passing_windows_walk_shadow_steps_gate_and_promote():
    # given a shadow of 20 s and two steps around a gate -> expect each to advance in turn
    state = machine.begin(SPEC, 1, 2, now=0)
    assert state.phase == "shadow" and machine.candidate_weight(state, SPEC) == 0
    assert machine.after_judgement(state, SPEC, "pass", 10, {}, 1) is None
    assert machine.after_judgement(state, SPEC, "pass", 10, {}, 2) == "advanced"
    assert (state.phase, machine.candidate_weight(state, SPEC)) == ("step", 10)
    assert machine.after_judgement(state, SPEC, "pass", 10, {}, 3) == "advanced"
    assert state.phase == "gate" and machine.candidate_weight(state, SPEC) == 10
    assert machine.after_judgement(state, SPEC, "pass", 10, {}, 4) is None  # a gate waits
    assert machine.resume(state, SPEC, 5) == "advanced"
    assert machine.candidate_weight(state, SPEC) == 50
    assert machine.after_judgement(state, SPEC, "pass", 10, {}, 6) == "promoted"
    assert machine.candidate_weight(state, SPEC) == 100


def test_low_traffic_holds_the_step_and_never_rolls_back():
    state = machine.begin(SPEC, 1, 2, now=0)
    for t in range(50):
        assert machine.after_judgement(state, SPEC, "inconclusive", 10, {}, t) is None
    assert state.phase == "shadow" and state.judged_s == 0 and state.low_traffic
    assert machine.shown_phase(state, SPEC) == "shadow"


def test_a_failed_window_rolls_back_at_once():
    state = machine.begin(SPEC, 1, 2, now=0)
    machine.after_judgement(state, SPEC, "pass", 20, {}, 1)
    decision = machine.after_judgement(state, SPEC, "fail", 10, {"reason": "error_rate"}, 2)
    assert decision == "rolled_back" and machine.candidate_weight(state, SPEC) == 0
    assert "error_rate" in state.outcome


def test_on_failure_pause_holds_the_weight_until_resumed():
    spec = parse_rollout(
        {"candidate": 2, "steps": [{"weight": 30, "duration_s": 10}], "on_failure": "pause"}
    )
    state = machine.begin(spec, 1, 2, now=0)
    assert machine.after_judgement(state, spec, "fail", 10, {}, 1) == "held"
    assert (
        machine.shown_phase(state, spec) == "paused" and machine.candidate_weight(state, spec) == 30
    )
    assert machine.after_judgement(state, spec, "pass", 10, {}, 2) is None  # held: no advance
    assert machine.resume(state, spec, 3) == "resumed"
    assert machine.after_judgement(state, spec, "pass", 10, {}, 4) == "promoted"


def test_resume_with_nothing_held_is_refused():
    state = machine.begin(SPEC, 1, 2, now=0)
    with pytest.raises(ValueError, match="nothing waits"):
        machine.resume(state, SPEC, 1)


# ---- the manager's part -------------------------------------------------------------------------
class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def window(requests: int, errors: int = 0, latency_s: float = 0.005) -> dict:
    w = VersionWindow()
    for i in range(requests):
        w.add(i >= errors, latency_s * (1 + (i % 7) / 10))
    return w.to_doc()


def rollouts_with(spec_doc: dict, store=None, restarted=False):
    clock = Clock()
    r = Rollouts(store, "manager/m/", restarted=restarted, clock=clock, wall=clock)
    r.set_specs({"m": parse_rollout(spec_doc)})
    return r, clock


def test_waiting_rollout_pins_the_baseline_and_starts_once_the_candidate_serves():
    r, clock = rollouts_with({"candidate": 2, "steps": [{"weight": 20, "duration_s": 1}]})
    traffic, routes, held_back = r.routes({"m": {1}}, {})
    assert traffic["m"] == ((1, 100.0),) and routes == {} and held_back == {"m": 2}
    r.tick({"m": {1, 2}}, {})
    traffic, routes, _ = r.routes({"m": {1, 2}}, {})
    assert traffic["m"] == ((1, 80.0), (2, 20.0))
    assert (routes["m"].baseline, routes["m"].candidate) == (1, 2)


def test_canary_windows_are_judged_each_interval_and_promote():
    spec = {
        "candidate": 2,
        "steps": [{"weight": 20, "duration_s": 2}],
        "analysis": {"interval_s": 1, "min_requests": 10},
    }
    r, clock = rollouts_with(spec)
    r.tick({"m": {1, 2}}, {})
    for _ in range(2):
        r.observe({"m": {"versions": {"1": window(40), "2": window(10)}}})
        clock.now += 1.0
        r.tick({"m": {1, 2}}, {})
    status = r.status("m")
    assert status["phase"] == "promoted" and status["judgements"] == {"pass": 2}
    assert r.routes({"m": {1, 2}}, {})[0]["m"] == ((2, 100.0),)
    assert [e["decision"] for e in status["events"]].count("judged") == 2


def test_failing_candidate_is_rolled_back_with_its_figures():
    spec = {
        "candidate": 2,
        "steps": [{"weight": 20, "duration_s": 5}],
        "analysis": {"interval_s": 1, "min_requests": 10},
    }
    r, clock = rollouts_with(spec)
    r.tick({"m": {1, 2}}, {})
    r.observe({"m": {"versions": {"1": window(40), "2": window(10, errors=10)}}})
    clock.now += 1.0
    r.tick({"m": {1, 2}}, {})
    status = r.status("m")
    assert status["phase"] == "rolled_back" and status["candidate_weight"] == 0
    crossed = [c["name"] for c in status["last_judgement"]["checks"] if not c["passed"]]
    assert "error_rate" in crossed
    assert r.routes({"m": {1, 2}}, {})[0]["m"] == ((1, 100.0),)
    assert any("CROSSED" in line for line in status_lines({"m": status}))


def test_restarted_manager_resumes_the_rollout_at_the_same_step():
    spec = {
        "candidate": 2,
        "steps": [{"weight": 10, "duration_s": 1}, {"weight": 40, "duration_s": 100}],
        "analysis": {"interval_s": 1, "min_requests": 10},
    }
    store = MemoryStore()
    r, clock = rollouts_with(spec, store)
    r.tick({"m": {1, 2}}, {})
    r.observe({"m": {"versions": {"1": window(40), "2": window(10)}}})
    clock.now += 1.0
    r.tick({"m": {1, 2}}, {})
    assert r.status("m")["step"] == 2
    again, _ = rollouts_with(spec, store, restarted=True)
    status = again.status("m")
    assert (status["phase"], status["step"], status["candidate_weight"]) == ("step", 2, 40)
    assert status["events"][-1]["decision"] == "resumed_after_restart"
    fresh, _ = rollouts_with(spec, MemoryStore(), restarted=True)
    assert fresh.status("m")["phase"] == "waiting"


def test_person_pauses_and_resumes_and_unknown_model_is_not_found():
    r, _ = rollouts_with({"candidate": 2, "steps": [{"weight": 20, "duration_s": 5}]})
    r.tick({"m": {1, 2}}, {})
    assert r.command("m", "pause")["phase"] == "paused"
    assert r.command("m", "resume")["phase"] == "step"
    with pytest.raises(AspireError) as caught:
        r.command("other", "resume")
    assert caught.value.code == "NOT_FOUND"


def test_removing_the_rollout_hands_the_split_back_to_traffic():
    r, _ = rollouts_with({"candidate": 2, "steps": [{"weight": 20, "duration_s": 5}]})
    r.tick({"m": {1, 2}}, {})
    r.set_specs({})
    r.set_side_traffic({"m": ((1, 50.0), (2, 50.0))})
    traffic, routes, _ = r.routes({"m": {1, 2}}, {})
    assert traffic["m"] == ((1, 50.0), (2, 50.0)) and routes == {}


def test_router_never_sends_unversioned_requests_to_a_held_back_candidate():
    from core.contracts import ServingMap, VersionAddress
    from deployments.router.core import resolve

    address = VersionAddress(apps=(("app", 1),))
    both = ServingMap(models={"m": {1: address, 2: address}}, held_back={"m": 2})
    assert {resolve(both, "m", None, None)[0] for _ in range(50)} == {1}
    assert resolve(both, "m", 2, None)[0] == 2  # asked for by number: served
    alone = ServingMap(models={"m": {2: address}}, held_back={"m": 2})
    assert resolve(alone, "m", None, None)[0] == 2  # nothing else serves


# ---- the router's tap ---------------------------------------------------------------------------
class TapCore:
    """RouterCore's part the tap uses: `map` and `call`; the candidate (version 2) fails or
    answers differently, slowly, as told."""

    def __init__(self, candidate_fails: bool = False, candidate_delay_s: float = 0.0):
        from core.contracts import ServingMap, VersionAddress

        self.v1, self.v2 = VersionAddress(apps=(("v1", 1),)), VersionAddress(apps=(("v2", 1),))
        self.map = ServingMap(models={"m": {1: self.v1, 2: self.v2}})
        self.candidate_fails, self.delay_s = candidate_fails, candidate_delay_s
        self.calls: list[str] = []

    async def call(self, address, method, payload):
        import asyncio

        self.calls.append(address.apps[0][0])
        if address is self.v2:
            await asyncio.sleep(self.delay_s)
            if self.candidate_fails:
                raise AspireError("candidate broke", "INTERNAL")
            return b'{"predictions": [3.5]}'
        return b'{"predictions": [2.5]}'


def run_tap(core, route, requests: int):
    import asyncio

    from core import metrics
    from deployments.router.rollout_tap import RolloutTap

    tap = RolloutTap(metrics.Recorder())

    async def go():
        answers = [
            await tap.call(core, "m", route, 1, core.v1, "predict", b"{}") for _ in range(requests)
        ]
        while tap._tasks:  # the copies, which the client never waited for
            await asyncio.sleep(0.01)
        return answers

    return asyncio.run(go()), tap.drain()


def test_client_gets_the_baseline_answer_and_never_the_candidates_error():
    from core.contracts import RolloutRoute

    answers, shipped = run_tap(TapCore(candidate_fails=True), RolloutRoute(1, 2, 100.0, 64), 20)
    assert answers == [b'{"predictions": [2.5]}'] * 20
    tally = shipped["m"]["shadow"]["tally"]
    assert tally["candidate_errors"] == 20 and tally["pairs"] == 0


def test_shadow_copies_are_compared_per_request():
    from core.contracts import RolloutRoute

    _, shipped = run_tap(TapCore(), RolloutRoute(1, 2, 100.0, 64), 10)
    outputs = shipped["m"]["shadow"]["tally"]["outputs"]
    assert outputs["predictions"]["pairs"] == 10
    assert outputs["predictions"]["sum_mean_abs_diff"] == 10.0  # |3.5 - 2.5| each time


def test_a_full_shadow_queue_drops_copies_and_the_client_never_waits_for_them():
    import asyncio
    import time

    from core import metrics
    from core.contracts import RolloutRoute
    from deployments.router.rollout_tap import RolloutTap

    core = TapCore(candidate_delay_s=30.0)  # a candidate that holds every copy for 30 s
    tap = RolloutTap(metrics.Recorder())
    route = RolloutRoute(1, 2, 100.0, 2)  # two copies pending fill the queue

    async def go() -> float:
        started = time.monotonic()
        for _ in range(10):
            await tap.call(core, "m", route, 1, core.v1, "predict", b"{}")
            await asyncio.sleep(0)  # the copies start
        answered_s = time.monotonic() - started
        for task in list(tap._tasks):
            task.cancel()
        await asyncio.sleep(0)
        return answered_s

    assert asyncio.run(go()) < 30.0  # the ten answers came before any copy's
    assert core.calls.count("v2") == 2
    assert tap.drain()["m"]["shadow"]["tally"]["dropped"] == 8


LATENCY_FAIL = {
    "checks": [
        {"name": "error_rate", "passed": True},
        {"name": "latency_p99_ratio", "passed": False},
        {"name": "latency_rank", "passed": False},
    ]
}


def test_a_latency_failure_acts_only_when_the_next_window_fails_too():
    spec = parse_rollout({"candidate": 2, "steps": [{"weight": 30, "duration_s": 60}]})
    state = machine.begin(spec, 1, 2, now=0)
    assert machine.after_judgement(state, spec, "fail", 10, LATENCY_FAIL, 1) == "suspect"
    assert machine.after_judgement(state, spec, "pass", 10, {}, 2) is None  # cleared
    assert machine.after_judgement(state, spec, "fail", 10, LATENCY_FAIL, 3) == "suspect"
    assert state.judged_s == 10  # a suspect window is not counted
    assert machine.after_judgement(state, spec, "fail", 10, LATENCY_FAIL, 4) == "rolled_back"


def test_an_error_failure_acts_on_the_first_window():
    spec = parse_rollout({"candidate": 2, "steps": [{"weight": 30, "duration_s": 60}]})
    state = machine.begin(spec, 1, 2, now=0)
    doc = {"checks": [{"name": "error_rate", "passed": False}]}
    assert machine.after_judgement(state, spec, "fail", 10, doc, 1) == "rolled_back"
