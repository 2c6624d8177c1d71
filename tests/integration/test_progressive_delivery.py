"""Progressive delivery on the session's real cluster (conftest.py): rollouts declared in the
side file's settings (cluster/rollouts.py), judged from what the real router saw, under REST
and gRPC load.

Every model here is half_plus_two (x/2+2) as version 1 and a candidate as version 2, loaded
into the shared hosts ("placement": "shared") so that a test costs no replica processes of its
own. The answer tells which version served a request where the two differ (half_plus_three
gives x/2+3). Windows are 1 s (`interval_s`); every bound below comes from the rollout's
configured figures, never from a time observed here.
"""

from __future__ import annotations

import threading
import time

import grpc
import pytest
import ray
import requests

from cluster.rollouts import TICK_S
from config.aspire_config import ModelSettings
from config.rollout_config import parse_rollout
from core.metrics_shipper import SHIP_PERIOD_S
from policies.aspired import All
from tests.integration.conftest import wait_for
from tests.integration.export_models import export_failing_model, export_slow_half_plus_two
from tests.integration.test_manager_restart import manager_pid, wait_answering
from tests.support.grpc_requests import predict_request

pytestmark = pytest.mark.ray

V1, V2_THREE = 2.5, 3.5  # answers to x = 1.0 of half_plus_two and half_plus_three
ANALYSIS = {"interval_s": 1, "min_requests": 10, "max_error_rate": 0.01}


class Load:
    """REST clients (and optionally a gRPC client) predicting back to back on the unversioned
    route; every outcome kept with the time it was received."""

    def __init__(self, aspire, name: str, rest_clients: int = 2, grpc_clients: int = 0):
        self.url = f"{aspire.url}/v1/models/{name}:predict"
        self.name, self.target = name, aspire.grpc_target
        self.stop = threading.Event()
        self.outcomes: list[tuple[float, str, object]] = []  # (time, "ok"|"failed", answer)
        self.threads = [
            threading.Thread(target=self._rest, daemon=True) for _ in range(rest_clients)
        ]
        self.threads += [
            threading.Thread(target=self._grpc, daemon=True) for _ in range(grpc_clients)
        ]

    def _rest(self):
        session = requests.Session()
        while not self.stop.is_set():
            try:
                r = session.post(self.url, json={"instances": [1.0]}, timeout=60)
                ok = r.status_code == 200
                answer = r.json()["predictions"][0] if ok else r.text
            except requests.RequestException as exc:
                ok, answer = False, repr(exc)
            self.outcomes.append((time.monotonic(), "ok" if ok else "failed", answer))

    def _grpc(self):
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        with grpc.insecure_channel(self.target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            request = predict_request(self.name, x=(1.0,))
            while not self.stop.is_set():
                try:
                    answer = stub.Predict(request, timeout=60).outputs["y"].float_val[0]
                    self.outcomes.append((time.monotonic(), "ok", answer))
                except grpc.RpcError as err:
                    self.outcomes.append((time.monotonic(), "failed", err.code().name))

    def failures(self, since: float = 0.0) -> list:
        return [o for o in self.outcomes if o[1] == "failed" and o[0] >= since]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(60)


@pytest.fixture
def rollout_model(aspire, model_dir):
    """`start(name, candidate_dir_or_exporter, rollout)`: version 1 half_plus_two, version 2
    the candidate, both loaded (All) into the shared hosts with `rollout` declared; returns
    once both are AVAILABLE. The settings are cleared after the test."""
    base, publish = model_dir

    def start(name: str, candidate, rollout: dict):
        publish(1, "saved_model_half_plus_two_cpu")
        if callable(candidate):
            staging = base.parent / "staging"
            candidate(staging)
            staging.rename(base / "2")
        else:
            publish(2, candidate)
        settings = {
            name: ModelSettings(placement="shared", device="cpu", rollout=parse_rollout(rollout))
        }
        ray.get(aspire.manager.set_settings.remote(settings))
        aspire.add_model(name, base, policy=All())
        aspire.wait_state(name, 1, "AVAILABLE")
        aspire.wait_state(name, 2, "AVAILABLE")
        return name

    yield start
    ray.get(aspire.manager.set_settings.remote({}))


def rollout(aspire, name: str) -> dict:
    r = aspire.get(f"/v1/models/{name}/rollout")
    assert r.status_code == 200, r.text
    return r.json()


def wait_phase(aspire, name: str, phases: tuple[str, ...], timeout_s: float = 180) -> dict:
    return wait_for(
        lambda: (s := rollout(aspire, name))["phase"] in phases and s,
        timeout_s,
        0.2,
        what=f"the rollout of {name} to be {' or '.join(phases)}",
    )


def decisions(status: dict, decision: str) -> list[dict]:
    return [e for e in status["events"] if e["decision"] == decision]


def test_identical_candidate_is_promoted_through_shadow_and_three_steps_with_no_failed_request(
    aspire, rollout_model
):
    name = rollout_model(
        "pd_same",
        "saved_model_half_plus_two_cpu",
        {
            "candidate": 2,
            "shadow": {"percent": 100, "duration_s": 1, "max_mean_abs_diff": 1e-6},
            "steps": [
                {"weight": 10, "duration_s": 1},
                {"weight": 30, "duration_s": 1},
                {"weight": 60, "duration_s": 1},
            ],
            "analysis": ANALYSIS,
        },
    )
    with Load(aspire, name, rest_clients=2, grpc_clients=1) as load:
        status = wait_phase(aspire, name, ("promoted", "rolled_back"))
    assert status["phase"] == "promoted", status["outcome"]
    print(
        f"\nidentical candidate promoted: {len(load.outcomes)} requests (REST and gRPC), "
        f"{len(load.failures())} failed, judgements {status['judgements']}"
    )
    assert load.failures() == []
    assert {answer for _, _, answer in load.outcomes} == {V1}
    shadow = [
        e["judgement"] for e in decisions(status, "judged") if e["judgement"]["phase"] == "shadow"
    ]
    passed = [j for j in shadow if j["result"] == "pass"]
    assert passed, shadow
    for judgement in passed:
        assert all(
            o["mean_abs_diff"] == 0 and o["max_abs_diff"] == 0
            for o in judgement["outputs"].values()
        )
    advanced = [e["step"] for e in decisions(status, "advanced")]
    assert advanced == [1, 2, 3], status["events"]
    grpc_answers = [o for o in load.outcomes if isinstance(o[2], float)]
    assert grpc_answers, "the gRPC client was answered"
    page = ray.get(aspire.manager.metrics_page.remote())
    assert f'aspire_rollout_phase{{model="{name}",phase="promoted"}} 1' in page
    assert f'aspire_rollout_shadow_requests_total{{model="{name}",outcome="compared"}}' in page


def test_failing_candidate_is_rolled_back_in_the_shadow_phase_with_no_failed_client_request(
    aspire, rollout_model
):
    name = rollout_model(
        "pd_fail_shadow",
        export_failing_model,
        {
            "candidate": 2,
            "shadow": {"percent": 100, "duration_s": 600},
            "steps": [{"weight": 50, "duration_s": 600}],
            "analysis": ANALYSIS,
        },
    )
    with Load(aspire, name, rest_clients=2, grpc_clients=1) as load:
        status = wait_phase(aspire, name, ("rolled_back", "step"))
    assert status["phase"] == "rolled_back", status
    assert load.failures() == [], load.failures()[:3]
    [started] = decisions(status, "started")
    [back] = decisions(status, "rolled_back")
    print(
        f"\nfailing candidate with a shadow phase: rolled back {back['at'] - started['at']:.2f} s "
        f"after the shadow began, {len(load.outcomes)} client requests, 0 failed"
    )
    crossed = [c["name"] for c in status["last_judgement"]["checks"] if not c["passed"]]
    assert "candidate_errors" in crossed, status["last_judgement"]
    assert status["candidate_weight"] == 0


def test_failing_candidate_without_shadow_is_rolled_back_within_two_intervals_of_its_step(
    aspire, rollout_model
):
    interval_s, weight = ANALYSIS["interval_s"], 30
    name = rollout_model(
        "pd_fail_canary",
        export_failing_model,
        {"candidate": 2, "steps": [{"weight": weight, "duration_s": 600}], "analysis": ANALYSIS},
    )
    with Load(aspire, name, rest_clients=3) as load:
        status = wait_phase(aspire, name, ("rolled_back",))
        seen_back = time.monotonic()
        time.sleep(1.0)  # answers after the rollback still come in
    [started] = decisions(status, "started")
    [back] = decisions(status, "rolled_back")
    # two windows, the last second of the second still being shipped, and one tick of the loop
    assert back["at"] - started["at"] <= 2 * interval_s + SHIP_PERIOD_S + TICK_S + 0.5
    failed = load.failures()
    print(
        f"\nfailing candidate without shadow: rolled back {back['at'] - started['at']:.2f} s after "
        f"its step began (windows of {interval_s} s); {len(failed)} failed of "
        f"{len([o for o in load.outcomes if o[0] <= seen_back + 1.0])} answered"
    )
    assert failed, "the candidate took requests and failed them"
    # no failure once the rollback was published: routers follow the map by long poll
    assert load.failures(since=seen_back + 1.0) == []
    # the failed requests are those the candidate took: at most its weight of the requests
    # answered until the rollback (5 sigma of binomial noise, plus one in flight per client)
    answered = [o for o in load.outcomes if o[0] <= seen_back + 1.0]
    share, n = weight / 100, len(answered)
    assert len(failed) <= share * n + 5 * (share * (1 - share) * n) ** 0.5 + 3, (len(failed), n)


def test_diverging_candidate_is_rolled_back_by_the_shadow_gate_and_no_client_sees_its_answers(
    aspire, rollout_model
):
    name = rollout_model(
        "pd_diverge",
        "saved_model_half_plus_three",
        {
            "candidate": 2,
            "shadow": {"percent": 100, "duration_s": 600, "max_mean_abs_diff": 1e-3},
            "steps": [{"weight": 50, "duration_s": 600}],
            "analysis": ANALYSIS,
        },
    )
    with Load(aspire, name, rest_clients=2, grpc_clients=1) as load:
        status = wait_phase(aspire, name, ("rolled_back", "step"))
    assert status["phase"] == "rolled_back", status
    assert load.failures() == []
    assert {answer for _, _, answer in load.outcomes} == {V1}
    judgement = status["last_judgement"]
    print(f"\ndiverging candidate rolled back: {len(load.outcomes)} requests, all answered 2.5")
    crossed = [c for c in judgement["checks"] if not c["passed"]]
    # the output is "y" on gRPC and unnamed ("predictions") in REST's row format
    assert crossed and {c["name"].split("[")[0] for c in crossed} == {"mean_abs_diff"}, judgement
    for check in crossed:
        assert check["value"] == pytest.approx(1.0) and check["threshold"] == 1e-3


def test_slower_candidate_is_rolled_back_by_the_latency_gate(aspire, rollout_model):
    name = rollout_model(
        "pd_slow",
        export_slow_half_plus_two,
        {
            "candidate": 2,
            "steps": [{"weight": 50, "duration_s": 600}],
            "analysis": {**ANALYSIS, "max_latency_p99_ratio": 1.5},
        },
    )
    with Load(aspire, name, rest_clients=4) as load:
        status = wait_phase(aspire, name, ("rolled_back",))
    assert load.failures() == []
    crossed = [c["name"] for c in status["last_judgement"]["checks"] if not c["passed"]]
    assert "latency_p99_ratio" in crossed, status["last_judgement"]
    ratio = next(c for c in status["last_judgement"]["checks"] if c["name"] == "latency_p99_ratio")
    print(f"\nslower candidate rolled back: p99 ratio {ratio['value']:.1f}, {ratio['detail']}")
    assert decisions(status, "suspect"), "a latency failure acts on the second window in a row"


def test_low_traffic_holds_the_step_and_never_rolls_back(aspire, rollout_model):
    name = rollout_model(
        "pd_quiet",
        "saved_model_half_plus_two_cpu",
        {
            "candidate": 2,
            "steps": [{"weight": 50, "duration_s": 2}],
            "analysis": {**ANALYSIS, "min_requests": 1000},
        },
    )
    wait_phase(aspire, name, ("step",))
    for _ in range(10):  # a trickle: a few requests per window
        aspire.post(f"/v1/models/{name}:predict", {"instances": [1.0]})
    status = wait_for(
        lambda: (s := rollout(aspire, name))["judgements"].get("inconclusive", 0) >= 3 and s,
        60,
        0.2,
        what="three inconclusive windows",
    )
    assert status["phase"] == "step" and status["low_traffic"]
    assert status["judgements"].get("fail", 0) == 0
    assert status["time_left_s"] == 2  # no time passed in the step
    assert status["candidate_weight"] == 50
    assert "< min_requests 1000" in status["last_judgement"]["reason"]


def test_killed_manager_resumes_the_rollout_at_the_same_step_and_routers_keep_the_split(
    aspire, rollout_model
):
    weight = 40
    name = rollout_model(
        "pd_restart",
        "saved_model_half_plus_three",  # answers tell the versions apart; canary judges no outputs
        {
            "candidate": 2,
            "steps": [{"weight": 10, "duration_s": 1}, {"weight": weight, "duration_s": 600}],
            "analysis": ANALYSIS,
        },
    )
    with Load(aspire, name, rest_clients=3) as load:
        before = wait_for(
            lambda: (
                (s := rollout(aspire, name))["step"] == 2
                and s["judgements"].get("pass", 0) >= 3
                and s
            ),
            120,
            0.2,
            what="step 2 judged",
        )
        old_pid = manager_pid(aspire.manager)
        killed_at = time.monotonic()
        ray.kill(aspire.manager, no_restart=False)
        back_s = wait_answering(aspire.manager, killed_at, old_pid)
        after = wait_for(
            lambda: (s := rollout(aspire, name))["phase"] != "waiting" and s, 60, 0.2, what="status"
        )
        time.sleep(1.0)
    assert (after["phase"], after["step"], after["candidate_weight"]) == ("step", 2, weight)
    assert after["time_left_s"] <= before["time_left_s"]
    assert decisions(after, "resumed_after_restart")
    assert load.failures() == []
    # the routers kept the split while the manager was away: v2's share stays at the weight
    away = [a for t, _, a in load.outcomes if killed_at <= t <= killed_at + back_s]
    assert len(away) >= 50, f"{len(away)} answers while the manager was away"
    share = sum(1 for a in away if a == V2_THREE) / len(away)
    sigma = (weight / 100 * (1 - weight / 100) / len(away)) ** 0.5
    assert abs(share - weight / 100) <= 5 * sigma, (share, len(away))
    print(
        f"\nmanager killed at step 2: back in {back_s:.2f} s, {len(away)} answers meanwhile, "
        f"{sum(1 for a in away if a == V2_THREE) / max(1, len(away)):.1%} from the candidate "
        f"(weight {weight} %), resumed at step {after['step']}"
    )


def test_sticky_experiment_keeps_each_user_on_one_arm_over_rest_and_grpc(aspire, model_dir):
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    from policies.traffic import Experiment

    base, publish = model_dir
    publish(1, "saved_model_half_plus_two_cpu")
    publish(2, "saved_model_half_plus_three")
    experiment = Experiment.parse({"arms": {"1": 50, "2": 50}, "key": "x-user-id", "salt": "t"})
    settings = {"pd_ab": ModelSettings(placement="shared", device="cpu", experiment=experiment)}
    ray.get(aspire.manager.set_settings.remote(settings))
    try:
        aspire.add_model("pd_ab", base, policy=All())
        aspire.wait_state("pd_ab", 1, "AVAILABLE")
        aspire.wait_state("pd_ab", 2, "AVAILABLE")
        url = "/v1/models/pd_ab:predict"
        rest: dict[str, set] = {}
        for user in range(30):
            for _ in range(4):
                r = aspire.post(url, {"instances": [1.0]}, headers={"X-User-Id": f"u{user}"})
                rest.setdefault(f"u{user}", set()).add(r.json()["predictions"][0])
        assert all(len(answers) == 1 for answers in rest.values()), rest
        assert {a for answers in rest.values() for a in answers} == {V1, V2_THREE}
        with grpc.insecure_channel(aspire.grpc_target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            request = predict_request("pd_ab", x=(1.0,))
            for user in ("u0", "u1", "u2", "u3", "u4"):
                answer = stub.Predict(request, metadata=(("x-user-id", user),), timeout=60)
                assert {answer.outputs["y"].float_val[0]} == rest[user]  # the same arm as REST
        for _ in range(5):  # without the key: by the weights, counted apart
            assert aspire.post(url, {"instances": [1.0]}).status_code == 200
        counted = (
            'aspire_experiment_requests_total{model="pd_ab",assignment="keyed"} 125',
            'aspire_experiment_requests_total{model="pd_ab",assignment="unkeyed"} 5',
        )
        wait_for(
            lambda: all(c in ray.get(aspire.manager.metrics_page.remote()) for c in counted),
            30,
            0.2,
            what="120 REST and 5 gRPC requests counted keyed, 5 unkeyed",
        )
    finally:
        ray.get(aspire.manager.set_settings.remote({}))
