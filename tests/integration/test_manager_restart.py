"""The manager actor dies and Ray brings it back: predict traffic never notices, and the new
incarnation carries on from the state the old one kept in the GCS (cluster/manager_state.py)
without loading anything that served.
"""

import os
import signal
import time

import pytest
import ray
from ray import serve

from cluster.manager_state import GcsStore, decode_value, loads, state_prefix
from core.names import APP_PREFIX, MANAGER_NAME, app_name
from policies.lifecycle import PUBLIC_STATE, HarnessState
from tests.integration.conftest import ClosedLoop, wait_for

pytestmark = pytest.mark.ray

V1_ANSWER, V2_ANSWER = 2.5, 3.5  # half_plus_two and half_plus_three for x = 1.0


def servable_apps() -> set[str]:
    return {a for a in serve.status().applications if a.startswith(APP_PREFIX)}


def recorded_pids(aspire) -> dict[str, int]:
    """Application -> the PID its replica had when loaded, for single-replica applications
    (a ping of a multi-replica one may reach any of its replicas)."""
    placements = aspire.get("/v1/aspire/status").json()["placements"]
    return {
        p["app"]: p["pid"]
        for versions in placements.values()
        for ps in versions.values()
        for p in ps
        if p["replicas"] == 1
    }


def replica_pids(apps) -> dict[str, int]:
    """The PID each application's replica answers from now."""
    return {
        app: serve.get_deployment_handle("servable", app).ping.remote().result(timeout_s=30).pid
        for app in sorted(apps)
    }


def stored_state(name: str, version: int) -> str | None:
    """The state of a version in the manager's stored state (what a restart would read)."""
    data = GcsStore().get(f"{state_prefix(MANAGER_NAME)}model/{name}")
    records = {r["version"]: r["state"] for r in loads(data)["versions"]} if data else {}
    return records.get(version)


def manager_pid(manager) -> int:
    return ray.get(manager.__ray_call__.remote(lambda actor: os.getpid()), timeout=30)


def wait_answering(manager, started: float, old_pid: int, timeout_s: float = 60) -> float:
    """Seconds from `started` until a new incarnation of the manager (not `old_pid`: ray.kill
    takes effect after it returns) answers a call."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if manager_pid(manager) != old_pid:
                return time.monotonic() - started
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"the manager did not come back within {timeout_s} s")
        time.sleep(0.05)


def test_killed_manager_comes_back_with_the_same_state_and_predict_never_fails(aspire):
    assert ray.get(aspire.manager.settle.remote(120))
    before = ray.get(aspire.manager.list_models.remote())
    assert before["bad_half_plus_two"][0]["state"] == "END"  # an END version, with its error
    apps = servable_apps()
    pids = recorded_pids(aspire)
    assert set(pids) <= apps and "aspire-servable-half_plus_two-" in " ".join(pids)
    live = replica_pids(pids)
    with ClosedLoop(aspire.url + "/v1/models/half_plus_two:predict", clients=4) as load:
        load.wait_more(20)
        old_pid = manager_pid(aspire.manager)
        killed_at = time.monotonic()
        ray.kill(aspire.manager, no_restart=False)
        back_s = wait_answering(aspire.manager, killed_at, old_pid)
        answered_while_down = len(
            [t for t, _ in load.answers if killed_at <= t <= killed_at + back_s]
        )
        load.wait_more(20)
        # status calls, which routers send to the manager, answer again
        wait_for(lambda: aspire.get("/v1/models/half_plus_two").status_code == 200, 30)
        load.wait_more(20)
    print(
        f"\nmanager answered again {back_s:.2f} s after ray.kill; {answered_while_down} predicts "
        f"answered meanwhile, {len(load.answers)} in all, {len(load.failures)} failed"
    )
    assert load.failures == []
    assert ray.get(aspire.manager.list_models.remote()) == before
    restored = aspire.get("/v1/aspire/status").json()["manager"]["restored"]
    available = sum(s["state"] == "AVAILABLE" for ss in before.values() for s in ss)
    assert (restored["adopted"], restored["dropped"], restored["orphans"]) == (available, 0, 0)
    assert restored["models"] >= len(before)  # models without any version are kept too
    assert servable_apps() == apps  # nothing deleted, nothing created
    assert recorded_pids(aspire) == pids
    assert replica_pids(pids) == live  # the same replicas answer: nothing was loaded again


def test_manager_killed_during_a_rollout_finishes_it_once_without_orphans(aspire, model_dir):
    base, publish = model_dir
    name = "restart_rollout"
    publish(1, "saved_model_half_plus_two_cpu")
    aspire.add_model(name, base)
    aspire.wait_state(name, 1, "AVAILABLE")
    # Asked before the window opens: no further actor call may delay the kill once it is open.
    pid = manager_pid(aspire.manager)
    with ClosedLoop(aspire.url + f"/v1/models/{name}:predict", clients=4) as load:
        load.wait_more(20)
        publish(2, "saved_model_half_plus_three")
        started = time.monotonic()
        # the window: v2 stored LOADING and its application created, its replica not yet serving
        wait_for(
            lambda: (
                stored_state(name, 2) == "loading"
                and app_name(name, 2) in servable_apps()
                and aspire.states(name).get(2, ("",))[0] == "LOADING"
            ),
            60,
            0.05,
            what="v2 half-loaded",
        )
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)  # the process dies mid-load, as in a crash
        back_s = wait_answering(aspire.manager, killed_at, pid)
        aspire.wait_state(name, 2, "AVAILABLE", timeout_s=120)
        available_s = time.monotonic() - killed_at
        aspire.wait_state(name, 1, "END", timeout_s=60)
        done_s = time.monotonic() - killed_at
        load.wait_more(20)
    print(
        f"\nv2 half-loaded {killed_at - started:.2f} s after publishing; manager back "
        f"{back_s:.2f} s after SIGKILL; v2 AVAILABLE after {available_s:.2f} s, v1 unloaded after "
        f"{done_s:.2f} s; {len(load.answers)} predicts, {len(load.failures)} failed"
    )
    assert load.failures == []
    assert aspire.states(name) == {2: ("AVAILABLE", "OK"), 1: ("END", "OK")}
    restored = aspire.get("/v1/aspire/status").json()["manager"]["restored"]
    # v2's load was cut short: its half-loaded application deleted, then loaded again
    assert (restored["dropped"], restored["orphans"]) == (1, 1)
    ours = {a for a in servable_apps() if a.startswith(app_name(name, 0)[:-1])}
    assert ours == {app_name(name, 2)}  # exactly v2: no half-loaded copy, no v1
    answers = [a for _, a in load.answers]
    assert V2_ANSWER in answers
    assert V1_ANSWER not in answers[answers.index(V2_ANSWER) :]  # switched once, never back


def test_state_in_the_gcs_matches_the_manager_and_its_cost(aspire):
    """What a restart reads is what the manager reports; and what 1,000 model keys cost."""
    store = GcsStore()
    prefix = state_prefix(MANAGER_NAME)
    assert ray.get(aspire.manager.settle.remote(120))
    wait_for(
        lambda: (
            ray.get(aspire.manager.__ray_call__.remote(lambda actor: actor._manager.flush_state()))
            == 0
        ),
        10,
        what="a flush with nothing to write",
    )
    stored = [loads(v) for v in store.get_prefix(prefix + "model/").values()]
    listed = ray.get(aspire.manager.list_models.remote())
    assert {
        doc["name"]: sorted(
            (
                r["version"],
                PUBLIC_STATE[HarnessState(r["state"])],
                r["error_code"],
                r["error_message"],
            )
            for r in doc["versions"]
        )
        for doc in stored
        if doc["versions"]
    } == {
        name: sorted((s["version"], s["state"], s["error_code"], s["error_message"]) for s in ss)
        for name, ss in listed.items()
    }
    assert decode_value(loads(store.get(prefix + "config"))["models"]) == aspire.models

    scratch = "manager/cost-probe/model/"
    doc = next(iter(store.get_prefix(prefix + "model/").values()))
    started = time.perf_counter()
    for i in range(1000):
        store.put(f"{scratch}m{i:04d}", doc)
    put_s = time.perf_counter() - started
    started = time.perf_counter()
    read = store.get_prefix(scratch)
    get_s = time.perf_counter() - started
    store.delete_prefix(scratch)
    print(
        f"\nGCS: 1,000 model keys of {len(doc)} B written in {put_s:.2f} s "
        f"({put_s * 1000 / len(read):.2f} ms each), read back in {get_s * 1000:.0f} ms"
    )
    assert len(read) == 1000 and store.get_prefix(scratch) == {}
