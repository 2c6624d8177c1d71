"""Overload (reliability plan I7): a version whose replica runs 1 request at a time and whose
router may hold 4 more answers a burst of 50 with exactly 5 accepted and the rest refused at once
with 429 RESOURCE_EXHAUSTED, TF Serving's status for it; the accepted ones all complete."""

from __future__ import annotations

import threading
import time

import pytest
import requests

from tests.integration.conftest import the_router_app, wait_for

pytestmark = pytest.mark.ray
SLEEP_MS = 2000


@pytest.fixture(scope="module")
def busy(aspire, tmp_path_factory):
    import ray

    from config.aspire_config import ModelSettings
    from tests.integration.export_models import export_sleepy_model

    base = tmp_path_factory.mktemp("overload") / "busy"
    export_sleepy_model(base / "1")
    ray.get(
        aspire.manager.set_settings.remote(
            {"busy": ModelSettings(max_ongoing_requests=1, max_queued_requests=4)}
        )
    )
    aspire.add_model("busy", base)
    aspire.wait_state("busy", 1, "AVAILABLE")
    # The burst goes through the router's direct path, whose limits are exact at one router:
    # wait until the router knows the replica's port (until then calls take Serve's handle).
    from ray import serve

    from core.names import app_name

    router = serve.get_deployment_handle("router", the_router_app())
    wait_for(
        lambda: router.direct_replicas.remote().result(timeout_s=30).get(app_name("busy", 1)) == 1,
        60,
        0.2,
        what="the router to call the replica directly",
    )
    yield "busy"
    ray.get(aspire.manager.set_settings.remote({}))


@pytest.fixture(scope="module")
def burst(aspire, busy):
    """50 requests at once at the busy version, then one client alone while it is still full.
    Every test that needs the burst asks for this fixture, so each runs after one, alone too.
    Returns (results, alone): results are (status, content type, body, seconds, i, ended) per
    request; alone are (status, seconds, sent) per lone request."""
    url = f"{aspire.url}/v1/models/{busy}:predict"
    results, start = [], threading.Barrier(50)

    def one(i):
        session = requests.Session()
        start.wait(60)
        sent = time.monotonic()
        r = session.post(
            url, json={"inputs": {"x": [float(i)], "sleep_ms": [SLEEP_MS]}}, timeout=120
        )
        ended = time.monotonic()
        results.append(
            (r.status_code, r.headers.get("content-type"), r.json(), ended - sent, i, ended)
        )

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(50)]
    for t in threads:
        t.start()
    # While the version is still full, one client alone: what a refusal costs without 49 other
    # requests from the same 2 cores ahead of it.
    wait_for(
        lambda: sum(1 for r in list(results) if r[0] != 200) >= 40,
        60,
        0.01,
        what="the burst's refusals",
    )
    alone, session = [], requests.Session()
    for _ in range(30):
        sent = time.monotonic()
        r = session.post(url, json={"inputs": {"x": [0.0], "sleep_ms": [0]}}, timeout=120)
        alone.append((r.status_code, time.monotonic() - sent, sent))
    for t in threads:
        t.join(180)
    assert not any(t.is_alive() for t in threads), "burst requests still unanswered after 180 s"
    return results, alone


def test_burst_past_the_queue_is_refused_at_once_with_429(burst):
    results, alone = burst
    accepted = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] != 200]
    latencies = sorted(r[3] for r in refused)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else None
    print(
        f"\nburst of 50 (max_ongoing_requests=1, max_queued_requests=4, {SLEEP_MS} ms each): "
        f"{len(accepted)} accepted, {len(refused)} refused with "
        f"{sorted({r[0] for r in refused})}; refused p50 "
        f"{latencies[len(latencies) // 2] * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
        f"slowest accepted {max(r[3] for r in accepted):.1f} s"
    )
    # The version is full until its first accepted request ends (then one queued call moves to
    # the replica and one place opens): every request the lone client sent before that is refused.
    first_done = min(r[5] for r in results if r[0] == 200)
    while_full = [(code, d) for code, d, sent in alone if sent < first_done]
    alone_ms = sorted(d * 1000 for code, d in while_full if code == 429) or [float("nan")]
    print(
        f"one client alone while the version is full: {len(while_full)} requests sent, "
        f"{len(alone_ms)} refused, p50 {alone_ms[len(alone_ms) // 2]:.1f} ms, "
        f"max {alone_ms[-1]:.1f} ms"
    )
    assert len(results) == 50
    # 1 running + 4 queued = 5 by the limits, which the router counts exactly
    # (deployments/router/replica_client.py VersionApp)
    assert len(accepted) == 5
    assert len(refused) == 45
    assert {r[0] for r in refused} == {429}
    assert all(r[1] == "application/json" for r in refused)
    assert all(
        r[2]["error"].startswith(
            "Too many requests for this servable: 4 already wait for a "
            "replica at this router (max_queued_requests)"
        )
        for r in refused
    )
    assert sorted(r[2]["outputs"] for r in accepted) == sorted(
        [[r[4] * 0.5 + 2.0] for r in accepted]
    )
    # Refused without waiting for a replica: every refusal arrived before the first accepted
    # request (SLEEP_MS of run time) ended, which a request that waited for a place could not.
    assert all(r[5] < first_done for r in refused)
    assert {code for code, _ in while_full} <= {429}


def test_version_serves_normally_after_the_burst(aspire, busy, burst):
    results, _ = burst
    assert sum(r[0] == 429 for r in results) > 0  # the burst did fill the version
    wait_for(
        lambda: (
            aspire.post(
                f"/v1/models/{busy}:predict", {"inputs": {"x": [4.0], "sleep_ms": [0]}}
            ).status_code
            == 200
        ),
        30,
        what="the version to take requests again",
    )
    r = aspire.post(f"/v1/models/{busy}:predict", {"inputs": {"x": [4.0], "sleep_ms": [0]}})
    assert r.json() == {"outputs": [4.0]}
