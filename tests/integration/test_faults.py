"""Faults under closed-loop load, on the session's real Ray cluster (reliability plan R4, R5, R8,
R12): a version replica SIGKILLed, a replica that hangs (SIGSTOP: alive, answering nothing), the
router process SIGKILLed, and a version unloaded with slow requests in flight. Each test prints the
figures docs/reliability.md quotes."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import requests

from tests.integration.conftest import DATA, ClosedLoop, the_router_app, wait_for
from tests.support.replicas import alive_replica_pids, running_replicas

pytestmark = pytest.mark.ray
HALF_PLUS_TWO = DATA / "saved_model_half_plus_two_cpu" / "00000123"


@pytest.fixture(scope="module")
def two_replicas(aspire, tmp_path_factory):
    """A half_plus_two of its own with two replicas; yields (model name, Serve application)."""
    import shutil

    import ray

    from config.aspire_config import ModelSettings
    from core.names import app_name

    base = tmp_path_factory.mktemp("faults") / "faulty"
    shutil.copytree(HALF_PLUS_TWO, base / "1")
    # Health checks every 1 s with a 3 s timeout for this model only (the side file's fields):
    # a hung replica is found in about 3 x (1 + 3) s.
    ray.get(
        aspire.manager.set_settings.remote(
            {
                "faulty": ModelSettings(
                    num_replicas=2, health_check_period_s=1, health_check_timeout_s=3
                )
            }
        )
    )
    aspire.add_model("faulty", base)
    aspire.wait_state("faulty", 1, "AVAILABLE")
    app = app_name("faulty", 1)
    wait_for(lambda: len(alive_replica_pids(app)) == 2, 60, what="two replicas")
    yield "faulty", app
    ray.get(aspire.manager.set_settings.remote({}))


def _replaced(app: str, victim: int, others: set[int]) -> bool:
    pids = alive_replica_pids(app)
    return victim not in pids and others <= pids and len(pids) == 2 and running_replicas(app) == 2


def test_killed_replica_costs_no_request_and_is_replaced(aspire, two_replicas):
    name, app = two_replicas
    victim, *others = sorted(alive_replica_pids(app))
    with ClosedLoop(f"{aspire.url}/v1/models/{name}:predict", clients=8) as load:
        load.wait_more(100)
        before = len(load.answers)
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        # as long as a version load may take (a replacement is one more replica of it)
        wait_for(
            lambda: _replaced(app, victim, set(others)), 300, 0.2, what="a replacement replica"
        )
        replaced_s = time.monotonic() - killed
        load.wait_more(100)
    # Aspire's status follows the replacement: its placement lists the live pids
    [placement] = aspire.get("/v1/aspire/status").json()["placements"][name]["1"]
    assert placement["pids"] == sorted(alive_replica_pids(app))
    assert victim not in placement["pids"]
    answered = len(load.answers) - before
    print(
        f"\nreplica SIGKILL under 8 clients: {answered} requests after the kill, "
        f"{len(load.failures)} failed; replacement RUNNING after {replaced_s:.1f} s"
    )
    assert load.failures == []
    assert {p for _, p in load.answers} == {2.5}


def test_hung_replica_is_replaced_and_only_it(aspire, two_replicas):
    name, app = two_replicas
    victim, *others = sorted(alive_replica_pids(app))
    try:
        with ClosedLoop(f"{aspire.url}/v1/models/{name}:predict", clients=8) as load:
            load.wait_more(100)
            os.kill(victim, signal.SIGSTOP)  # alive, holding its requests, answering nothing
            stopped = time.monotonic()
            wait_for(
                lambda: _replaced(app, victim, set(others)),
                90,
                0.2,
                what="the hung replica to be replaced",
            )
            replaced_s = time.monotonic() - stopped
            load.wait_more(100)
    finally:
        try:
            os.kill(victim, signal.SIGKILL)  # never leave a stopped process behind
        except ProcessLookupError:
            pass
    print(
        f"\nhung replica (SIGSTOP), health check every 1 s with a 3 s timeout: replaced after "
        f"{replaced_s:.1f} s; the other replica kept its pid; {len(load.answers)} answers, "
        f"{len(load.failures)} failed"
    )
    assert load.failures == []
    assert set(others) <= alive_replica_pids(app)  # only the hung one was replaced


def test_killed_router_fails_only_requests_sent_before_its_socket_closed(aspire):
    """Killing the router fails only requests it held or that reached its socket while the
    process died: every failed request was sent before the first refused connection (proof that
    the old socket had closed), failures are transport errors (a reset connection or a reply cut
    short, never an HTTP error), and the new router fails nothing. Clients that retry refused
    connections (nothing was sent) lose nothing else."""
    [router] = alive_replica_pids(the_router_app(), "router")
    url = f"{aspire.url}/v1/models/half_plus_two:predict"
    stop, lock = threading.Event(), threading.Lock()
    # (sent, ended, ...) per attempt, from time.monotonic(): `sent` is taken before connecting
    sent_failures, refused, answers = [], [], []

    def client():
        session = requests.Session()
        while not stop.is_set():
            sent = time.monotonic()
            try:
                r = session.post(url, json={"instances": [1.0]}, timeout=60)
                with lock:
                    answers.append((sent, time.monotonic(), r.status_code))
            except requests.RequestException as exc:  # a reply cut short is ChunkedEncodingError
                was_refused = (
                    isinstance(exc, requests.ConnectionError) and "refused" in repr(exc).lower()
                )
                with lock:
                    if was_refused:
                        refused.append((sent, time.monotonic()))
                    else:
                        sent_failures.append((sent, time.monotonic(), repr(exc)[:120]))
                session = requests.Session()
                if was_refused:
                    stop.wait(0.05)  # nothing was sent: retry shortly

    threads = [threading.Thread(target=client, daemon=True) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(answers) >= 100, 60, what="100 answers before the kill")
        os.kill(router, signal.SIGKILL)
        killed = time.monotonic()
        wait_for(
            lambda: any(sent > killed and code == 200 for sent, _, code in list(answers)),
            120,
            0.1,
            what="answers from a new router",
        )
        wait_for(
            lambda: sum(1 for sent, _, _ in list(answers) if sent > killed) >= 100,
            60,
            what="100 answers sent after the kill",
        )
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    back_s = min(sent for sent, _, code in answers if sent > killed and code == 200) - killed
    closed = min((ended for _, ended in refused), default=None)
    held = sum(1 for sent, _, _ in sent_failures if sent < killed)
    print(
        f"\nrouter SIGKILL under 8 clients: a request sent {back_s:.1f} s after the kill was the "
        f"first answered by the new router; {len(sent_failures)} requests failed ({held} held by "
        f"the router, the others sent to its socket while it died, last sent "
        f"{max((s for s, _, _ in sent_failures), default=killed) - killed:.2f} s after the kill), "
        f"{len(refused)} connections refused (retried), {len(answers)} answered"
    )
    assert {code for _, _, code in answers} == {200}
    assert held <= 8  # one request in flight per client
    if closed is None:  # the new router bound the port before any client was refused
        assert all(sent < killed for sent, _, _ in sent_failures)
    else:
        assert all(sent < closed for sent, _, _ in sent_failures), (closed - killed, sent_failures)
    assert alive_replica_pids(the_router_app(), "router") - {router}


def test_unloaded_version_finishes_its_slow_requests(aspire, tmp_path):
    import ray
    from ray import serve

    from core.names import app_name
    from tests.integration.export_models import export_sleepy_model

    export_sleepy_model(tmp_path / "drain" / "1")
    aspire.add_model("drain", tmp_path / "drain")
    aspire.wait_state("drain", 1, "AVAILABLE")
    app = app_name("drain", 1)
    handle = serve.get_deployment_handle("servable", app)
    url = f"{aspire.url}/v1/models/drain/versions/1:predict"
    results = []

    def slow_request(i):
        started = time.monotonic()
        r = requests.post(url, json={"inputs": {"x": [float(i)], "sleep_ms": [2000]}}, timeout=60)
        results.append((r.status_code, r.json(), i, time.monotonic() - started, time.monotonic()))

    def received() -> int:
        return sum(handle.ping.remote().result(timeout_s=30).calls.values())

    before = received()
    threads = [threading.Thread(target=slow_request, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    # All 8 reached the replica; its inference threads run them a few at a time (2 s each), so
    # most are still running or queued in it when the unload begins.
    wait_for(lambda: received() - before == 8, 60, what="8 requests received by the replica")
    unloading = time.monotonic()
    ray.get(aspire.manager.set_models.remote([m for m in aspire.models if m.name != "drain"]))
    aspire.models = [m for m in aspire.models if m.name != "drain"]
    for t in threads:
        t.join(60)
    aspire.wait_state("drain", 1, "END", 60)  # as in TF Serving, an unloaded version stays listed
    wait_for(lambda: app not in serve.status().applications, 60, what="its application deleted")
    gone_s = time.monotonic() - unloading
    late = aspire.post(
        "/v1/models/drain/versions/1:predict", {"inputs": {"x": [1.0], "sleep_ms": [0]}}
    )
    in_flight = sum(1 for *_, ended in results if ended > unloading)
    print(
        f"\nunload with 8 requests of 2 s received, {in_flight} of them still in flight: "
        f"{sum(c == 200 for c, *_ in results)}/8 "
        f"answered 200 (slowest {max(d for *_, d, _ in results):.2f} s); the version was gone "
        f"{gone_s:.1f} s after the unload began; a request after it: {late.status_code}"
    )
    assert sorted((c, body["outputs"], i) for c, body, i, _, _ in results) == [
        (200, [i * 0.5 + 2.0], i) for i in range(8)
    ]
    assert in_flight >= 1  # the unload met requests in flight (else this test checked nothing)
    assert late.status_code == 404
    assert late.json() == {"error": "Servable not found for request: Specific(drain, 1)"}


def test_hung_manager_costs_no_prediction_and_status_answers_503(aspire):
    """A manager that answers nothing (SIGSTOP): predictions go on from the routers' last
    serving map; status calls get 503 after the router's 5 s wait instead of hanging."""
    from ray._private import state

    from deployments.router.core import MANAGER_CALL_S, SLOW_MANAGER_CALL_S

    [manager] = [
        a["Pid"]
        for a in state.actors().values()
        if a["ActorClassName"] == "ManagerActor" and a["State"] == "ALIVE"
    ]
    os.kill(manager, signal.SIGSTOP)
    try:
        with ClosedLoop(f"{aspire.url}/v1/models/half_plus_two:predict", clients=4) as load:
            load.wait_more(50)
            asked = time.monotonic()
            status = aspire.get("/v1/models/half_plus_two")
            status_s = time.monotonic() - asked
            load.wait_more(50)
    finally:
        os.kill(manager, signal.SIGCONT)
    print(
        f"\nmanager stopped: {len(load.answers)} predictions answered, {len(load.failures)} "
        f"failed; a status call answered {status.status_code} after {status_s:.2f} s"
    )
    assert load.failures == []
    assert status.status_code == 503
    assert status.json()["error"].startswith(
        f"The Aspire manager did not answer within {MANAGER_CALL_S:g} s"
    )
    # The router waited its status window, and answered then: before SLOW_MANAGER_CALL_S, the
    # window of the slow calls (Aspire's status, metrics, reloads), the next one it could have used
    assert MANAGER_CALL_S <= status_s < SLOW_MANAGER_CALL_S
    wait_for(
        lambda: aspire.get("/v1/models/half_plus_two").status_code == 200,
        60,
        what="status to answer again",
    )
