"""bench/soak.py's pure figures: the slope per hour, percentiles, the classification of failed
requests against kills and rollouts, process roles, and the per-role table."""

from __future__ import annotations

import pytest

from bench.soak import (
    AFTER_KILL,
    DURING_ROLLOUT,
    IN_FLIGHT_AT_KILL,
    OTHER,
    Event,
    Failure,
    classify,
    percentile,
    role_of,
    role_table,
    slope_per_hour,
    verdict,
)
from core.names import app_name


def test_slope_per_hour_of_a_line_is_its_rate():
    points = [(t, 100 + 2 * t) for t in (0, 10, 20, 30)]  # 2 per second
    assert slope_per_hour(points) == pytest.approx(7200)


def test_slope_per_hour_is_least_squares():
    # y = 1 + t/2 with noise that cancels: (0, 1), (2, 1), (4, 4), (6, 4) -> slope 0.6 per s
    assert slope_per_hour([(0, 1), (2, 1), (4, 4), (6, 4)]) == pytest.approx(0.6 * 3600)


def test_slope_per_hour_needs_two_times():
    assert slope_per_hour([]) is None
    assert slope_per_hour([(5, 1)]) is None
    assert slope_per_hour([(5, 1), (5, 2)]) is None
    assert slope_per_hour([(0, 3), (60, 3)]) == 0


def test_percentile_is_nearest_rank():
    values = list(range(1, 101))  # 1..100
    assert percentile(values, 0.5) == 50
    assert percentile(values, 0.99) == 99
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([], 0.5) is None


def _failure(sent: float, ended: float, model: str = "hpt_a") -> Failure:
    return Failure("rest", model, sent, ended, "HTTP 503")


EVENTS = [
    Event("kill", "hpt_a", at=100.0, detail="pid 1"),
    Event("rollout", "hpt_b", at=200.0, detail="v1 -> v2", done=230.0),
    Event("rollout", "hp3", at=300.0, detail="v1 -> v2"),  # never settled
]


@pytest.mark.parametrize(
    ("failure", "category"),
    [
        (_failure(99.9, 100.2), IN_FLIGHT_AT_KILL),  # sent before the kill, ended after it
        (_failure(100.0, 100.0), IN_FLIGHT_AT_KILL),
        (_failure(101.0, 101.5), AFTER_KILL),  # sent 1 s after it
        (_failure(105.0, 105.1), AFTER_KILL),  # the edge of near_s (5 s)
        (_failure(105.5, 105.6), OTHER),
        (_failure(99.0, 99.5), OTHER),  # ended before the kill
        (_failure(99.9, 100.2, "hpt_b"), OTHER),  # another model's kill
        (_failure(199.0, 200.5, "hpt_b"), DURING_ROLLOUT),
        (_failure(234.0, 234.1, "hpt_b"), DURING_ROLLOUT),  # within near_s of the old END
        (_failure(236.0, 236.1, "hpt_b"), OTHER),
        (_failure(150.0, 199.0, "hpt_b"), OTHER),  # ended before the new version appeared
        (_failure(304.0, 304.1, "hp3"), DURING_ROLLOUT),  # unsettled: at + near_s
        (_failure(306.0, 306.1, "hp3"), OTHER),
    ],
)
def test_classify_against_same_model_events(failure, category):
    assert classify(failure, EVENTS, near_s=5.0) == category


def test_classify_in_flight_wins_over_a_rollout():
    events = [
        Event("rollout", "hpt_a", at=90.0, detail="v1 -> v2", done=120.0),
        Event("kill", "hpt_a", at=100.0, detail="pid 1"),
    ]
    assert classify(_failure(99.0, 101.0), events, 5.0) == IN_FLIGHT_AT_KILL
    assert classify(_failure(110.0, 111.0), events, 5.0) == DURING_ROLLOUT


def test_roles_from_command_lines():
    replica = f"ray::ServeReplica:{app_name('hpt_b', 3)}:servable"
    ray = "/venv/lib/python3.11/site-packages/ray"
    cases = {
        ("ray::ServeReplica:aspire-router:router",): "router",
        ("ray::ServeReplica:aspire-router-2bd452e7c249:router.check_health",): "router",
        (replica,): "replicas hpt_b",
        (replica + ".initialize_and_get_",): "replicas hpt_b",
        # the title while the actor starts
        (f"ray::SERVE_REPLICA::{app_name('hp3', 2)}#servable#er010xfj:ServeRepli",): "replicas hp3",
        ("ray::ServeReplica:aspire-servable-host-1:servable",): "shared host",
        ("ray::ServeReplica:aspire-servable-other-0123abcd-v1:servable",): "replicas (other)",
        ("ray::ManagerActor.events",): "manager",
        ("ray::ServeController.listen_for_change",): "serve controller",
        ("ray::IDLE",): "idle workers",
        ("ray::DashboardAgent",): "dashboard agent",
        ("ray::RuntimeEnvAgent",): "runtime env agent",
        ("ray::SomethingElse",): "other ray actors",
        (f"{ray}/core/src/ray/gcs/gcs_server", "--node-ip-address=1"): "gcs",
        (f"{ray}/core/src/ray/raylet/raylet", "--raylet_socket_name=/s/raylet.1"): "raylet",
        # a worker starting: its flags name the raylet and the GCS, it is neither
        (
            "/venv/bin/python",
            f"{ray}/_private/workers/setup_worker.py",
            f"{ray}/_private/workers/default_worker.py",
            "--raylet-name=/tmp/ray/session/sockets/raylet",
            "--gcs-address=127.0.0.1:6379",
        ): "starting workers",
        ("/venv/bin/python", "-u", f"{ray}/dashboard/agent.py", "--x=1"): "dashboard agent",
        ("/venv/bin/python", f"{ray}/dashboard/dashboard.py", "--host=1"): "dashboard",
        ("/venv/bin/python", "-u", f"{ray}/_private/log_monitor.py"): "log monitor",
        ("/venv/bin/python", "-u", f"{ray}/autoscaler/_private/monitor.py"): "monitor",
        ("/bin/sh", "-c", "true"): "other",
        (): "other",
    }
    for argv, role in cases.items():
        assert role_of(list(argv), pid=10, server_pid=1) == role, argv
    assert role_of(["/venv/bin/python", "/venv/bin/aspire", "serve"], 1, 1) == "aspire serve"


def test_a_process_keeps_its_role_through_a_title_read_empty(monkeypatch):
    import bench.soak as soak

    procs = {
        5: [f"ray::ServeReplica:{app_name('hpt_a', 1)}:servable"],
        6: ["/venv/bin/python", "/ray/_private/workers/default_worker.py"],
    }
    monkeypatch.setattr(soak, "server_processes", lambda root: procs)
    monkeypatch.setattr(soak, "rss_and_fds", lambda pid: (pid * 1024, pid))
    titles: dict = {}
    known: dict = {}
    assert soak.sample_roles(1, titles, known) == {
        "replicas hpt_a": [5 * 1024, 5, 1],
        "starting workers": [6 * 1024, 6, 1],
    }
    procs[5] = []  # read while Ray rewrote the title
    procs[6] = [f"ray::ServeReplica:{app_name('hp3', 1)}:servable"]  # the worker became a replica
    assert soak.sample_roles(1, titles, known) == {
        "replicas hpt_a": [5 * 1024, 5, 1],
        "replicas hp3": [6 * 1024, 6, 1],
    }


def test_role_table_sums_and_slopes_after_the_warmup():
    mib = 1024 * 1024
    samples = [
        {"t": 0, "roles": {"router": [500 * mib, 90, 1]}},  # warm-up: left out of slopes
        {"t": 60, "roles": {"router": [100 * mib, 50, 1], "replicas hpt_a": [200 * mib, 40, 2]}},
        {"t": 120, "roles": {"router": [101 * mib, 51, 1], "replicas hpt_a": [300 * mib, 60, 3]}},
        {"t": 180, "roles": {"router": [102 * mib, 52, 1], "replicas hpt_a": [200 * mib, 40, 2]}},
    ]
    rows = {r["role"]: r for r in role_table(samples, warmup_s=60)}
    router = rows["router"]
    assert router["procs"] == (1, 1)
    assert router["rss"] == (500 * mib, 102 * mib, 500 * mib)
    assert router["fds"] == (90, 52, 90)
    assert router["rss_slope"] == pytest.approx(60 * mib)  # 1 MiB a minute
    assert router["fds_slope"] == pytest.approx(60)
    replicas = rows["replicas hpt_a"]
    assert replicas["procs"] == (0, 3)  # absent from the first sample: 0 there
    assert replicas["rss"] == (0, 200 * mib, 300 * mib)
    assert replicas["rss_slope"] == pytest.approx(0)
    assert replicas["rss_per_proc_slope"] == pytest.approx(0)


def _result(in_flight=0, after=0, rollout=0, other=0, alive=True) -> dict:
    counts = {
        IN_FLIGHT_AT_KILL: in_flight,
        AFTER_KILL: after,
        DURING_ROLLOUT: rollout,
        OTHER: other,
    }
    return {"failure_counts": counts, "kills": 2, "clients_total": 8, "server_alive": alive}


def test_verdict_allows_only_failures_in_flight_at_kills_up_to_the_clients():
    assert verdict(_result())[0]
    assert verdict(_result(in_flight=16))[0]  # 2 kills x 8 clients
    assert not verdict(_result(in_flight=17))[0]
    assert not verdict(_result(after=1))[0]
    assert not verdict(_result(rollout=1))[0]
    assert not verdict(_result(other=1))[0]
    assert not verdict(_result(alive=False))[0]
