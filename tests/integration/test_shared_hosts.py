"""Many models per node ("placement": "shared"), on the session's real Ray cluster, whose shared
hosts have two replicas (conftest.py): 50 versions in one shared host, each answering as its
own model; a failed load in the host; an availability-preserving rollout inside the host under
load; a version moved to dedicated placement under load; a host replica SIGKILLed under load;
and the host closed once its last version is unloaded. A test that changes the fleet (the
rollout, the move, the unloading) puts it back before it ends, so each holds in any order. Each
test prints its figures."""

from __future__ import annotations

import os
import shutil
import signal
import time

import pytest

from tests.integration.conftest import BASE_MODELS, DATA, ClosedLoop, wait_for
from tests.support.replicas import alive_replica_pids, running_replicas

pytestmark = pytest.mark.ray
HALF_PLUS_TWO = DATA / "saved_model_half_plus_two_cpu" / "00000123"
HALF_PLUS_THREE = DATA / "saved_model_half_plus_three" / "00000123"
BAD = DATA / "bad_half_plus_two" / "00000123"
N = 50


def describe(aspire) -> dict:
    return aspire.get("/v1/aspire/status").json()


def host_apps() -> set[str]:
    from ray import serve

    from cluster.host_admission import HOST_PREFIX

    return {app for app in serve.status().applications if app.startswith(HOST_PREFIX)}


@pytest.fixture(scope="module")
def fleet(aspire, tmp_path_factory):
    """N copies of half_plus_two, each a model of its own with "placement": "shared"."""
    import ray

    from config.aspire_config import ModelSettings
    from config.model_config import ModelSource
    from policies.aspired import Latest

    root = tmp_path_factory.mktemp("fleet")
    names = [f"fleet{i:02d}" for i in range(N)]
    for name in names:
        shutil.copytree(HALF_PLUS_TWO, root / name / "1")
    shutil.copytree(BAD, root / "fleetbad" / "1")
    # device "cpu": the same hosts on a GPU machine (the inventory is NVML's there)
    settings = {n: ModelSettings(placement="shared", device="cpu") for n in [*names, "fleetbad"]}
    ray.get(aspire.manager.set_settings.remote(settings))
    started = time.monotonic()
    aspire.models = aspire.models + [ModelSource(n, str(root / n), Latest(1)) for n in names]
    ray.get(aspire.manager.set_models.remote(aspire.models))
    wait_for(
        lambda: all(aspire.states(n).get(1, ("",))[0] == "AVAILABLE" for n in names),
        600,
        0.5,
        what=f"{N} shared versions AVAILABLE",
    )
    print(
        f"\n{N} shared versions AVAILABLE {time.monotonic() - started:.1f} s after they were added"
    )
    yield names, root
    aspire.remove_added_models()
    ray.get(aspire.manager.set_settings.remote({}))


def test_fifty_shared_versions_run_in_one_host_process_and_each_answers_as_its_own_model(
    aspire, fleet
):
    names, _ = fleet
    described = describe(aspire)
    [host] = described["shared_hosts"]
    assert len(host["versions"]) == N
    apps = {described["placements"][n]["1"][0]["host"] for n in names}
    assert apps == {host["app"]}
    assert len(alive_replica_pids(host["app"])) == 2  # --shared_host_replicas=2
    for name in names:
        r = aspire.post(f"/v1/models/{name}:predict", {"instances": [1.0, 2.0, 5.0]})
        assert r.status_code == 200, r.text
        assert r.json() == {"predictions": [2.5, 3.0, 4.5]}
    import ray

    def runtime_counted(name: str) -> bool:  # recorded inside the host, by version
        page = ray.get(aspire.manager.metrics_page.remote())
        return any(
            line.startswith(":tensorflow:serving:runtime_latency_count{")
            and f'model_name="{name}"' in line
            for line in page.splitlines()
        )

    wait_for(lambda: runtime_counted(names[7]), 30, 0.5, what="the host's metrics shipped")
    meta = aspire.get(f"/v1/models/{names[7]}/metadata").json()
    assert meta["model_spec"] == {"name": names[7], "signature_name": "", "version": "1"}
    # the Open Inference Protocol reaches versions in a host too, on both transports
    import numpy as np
    import tritonclient.grpc as grpcclient

    x = grpcclient.InferInput("x", [1, 1], "FP32")
    x.set_data_from_numpy(np.array([[4.0]], np.float32))
    triton = grpcclient.InferenceServerClient(aspire.grpc_target)
    assert triton.infer(names[5], [x]).as_numpy("y").tolist() == [[4.0]]
    body = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [4.0]}]}
    assert aspire.post(f"/v2/models/{names[5]}/infer", body).json()["outputs"][0]["data"] == [4.0]
    r = aspire.post(f"/v1/models/{names[3]}/versions/2:predict", {"instances": [1.0]})
    assert r.status_code == 404
    assert r.json() == {"error": f"Servable not found for request: Specific({names[3]}, 2)"}


def test_a_version_that_fails_to_load_in_a_host_ends_alone_and_the_host_keeps_serving(
    aspire, fleet
):
    names, root = fleet
    [host] = describe(aspire)["shared_hosts"]
    pids = alive_replica_pids(host["app"])
    aspire.add_model("fleetbad", root / "fleetbad")
    aspire.wait_state("fleetbad", 1, "END")
    status = aspire.get("/v1/models/fleetbad").json()["model_version_status"][0]["status"]
    assert status["error_code"] != "OK" and status["error_message"]
    assert alive_replica_pids(host["app"]) == pids  # the host was not restarted
    r = aspire.post(f"/v1/models/{names[0]}:predict", {"instances": [1.0]})
    assert r.json() == {"predictions": [2.5]}
    assert [h["versions"] for h in describe(aspire)["shared_hosts"]] == [host["versions"]]


def test_a_rollout_inside_the_host_under_load_fails_no_request(aspire, fleet):
    names, root = fleet
    name = names[0]
    try:
        [host] = describe(aspire)["shared_hosts"]
        pids = alive_replica_pids(host["app"])
        with ClosedLoop(f"{aspire.url}/v1/models/{name}:predict", clients=8) as load:
            load.wait_more(100)
            shutil.copytree(HALF_PLUS_THREE, root / name / "2")  # x/2 + 3
            started = time.monotonic()
            wait_for(
                lambda: (
                    aspire.states(name).get(1, ("",))[0] == "END"
                    and aspire.states(name).get(2, ("",))[0] == "AVAILABLE"
                ),
                300,
                0.2,
                what="v2 AVAILABLE and v1 unloaded",
            )
            rolled_s = time.monotonic() - started
            load.wait_more(100)
        print(
            f"\nrollout inside a shared host under 8 clients: {len(load.answers)} answers, "
            f"{len(load.failures)} failed; v2 served and v1 unloaded {rolled_s:.1f} s after v2 "
            "appeared"
        )
        assert load.failures == []
        assert {p for _, p in load.answers} == {2.5, 3.5}
        assert load.answers[-1][1] == 3.5
        assert alive_replica_pids(host["app"]) == pids  # loaded and unloaded without a restart
    finally:  # back to v1 alone in the host, as the module's other tests expect it
        shutil.rmtree(root / name / "2", ignore_errors=True)
        wait_for(
            lambda: (
                aspire.states(name).get(1, ("",))[0] == "AVAILABLE"
                and aspire.states(name).get(2, ("END",))[0] == "END"
            ),
            300,
            0.5,
            what=f"{name} back to version 1 alone",
        )


def test_a_shared_version_moved_to_dedicated_under_load_fails_no_request(aspire, fleet):
    import ray

    from config.aspire_config import ModelSettings
    from core.names import app_name

    names, _ = fleet
    name = names[2]
    settings = {n: ModelSettings(placement="shared", device="cpu") for n in names if n != name}
    settings[name] = ModelSettings(device="cpu")
    try:
        with ClosedLoop(f"{aspire.url}/v1/models/{name}:predict", clients=8) as load:
            load.wait_more(100)
            # the side file: name is dedicated
            ray.get(aspire.manager.set_settings.remote(settings))
            started = time.monotonic()
            wait_for(
                lambda: "host" not in describe(aspire)["placements"][name]["1"][0],
                300,
                0.2,
                what=f"{name} in replicas of its own",
            )
            moved_s = time.monotonic() - started
            load.wait_more(100)
        print(
            f"\nshared -> dedicated under 8 clients: {len(load.answers)} answers, "
            f"{len(load.failures)} failed; moved {moved_s:.1f} s after the side file changed"
        )
        assert load.failures == []
        assert len(alive_replica_pids(app_name(name, 1))) == 1
        # the old copy leaves the host after the serving map switched and the routers caught up
        wait_for(
            lambda: all(
                f"{{name: {name} version: 1}}" not in host["versions"]
                for host in describe(aspire)["shared_hosts"]
            ),
            60,
            0.2,
            what=f"{name}'s old copy unloaded from the host",
        )
        assert aspire.states(name) == {1: ("AVAILABLE", "OK")}
    finally:  # back into the host, as the module's other tests expect it
        shared = {n: ModelSettings(placement="shared", device="cpu") for n in [*names, "fleetbad"]}
        ray.get(aspire.manager.set_settings.remote(shared))
        wait_for(
            lambda: "host" in describe(aspire)["placements"][name]["1"][0],
            300,
            0.5,
            what=f"{name} back in the shared host",
        )


def test_a_host_replica_killed_under_load_comes_back_with_every_version_and_fails_no_request(
    aspire, fleet
):
    names, _ = fleet
    name = names[1]
    [host] = describe(aspire)["shared_hosts"]
    app = host["app"]
    victim, other = sorted(alive_replica_pids(app))
    with ClosedLoop(f"{aspire.url}/v1/models/{name}:predict", clients=8) as load:
        load.wait_more(100)
        before = len(load.answers)
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        wait_for(
            lambda: (
                len(pids := alive_replica_pids(app)) == 2
                and victim not in pids
                and other in pids
                and running_replicas(app) == 2
            ),
            300,
            0.2,
            what="a replacement host replica",
        )
        back_s = time.monotonic() - killed
        load.wait_more(100)
    print(
        f"\none of a shared host's 2 replicas ({len(host['versions'])} versions) SIGKILLed "
        "under 8 clients: "
        f"{len(load.answers) - before} answers after the kill, {len(load.failures)} failed; "
        f"replacement RUNNING {back_s:.1f} s after the kill"
    )
    assert load.failures == []
    for model in names[1:]:  # every version answers, from either replica
        r = aspire.post(f"/v1/models/{model}:predict", {"instances": [1.0]})
        assert r.status_code == 200 and r.json() == {"predictions": [2.5]}, (model, r.text)
    assert all(aspire.states(n).get(1, ("",))[0] == "AVAILABLE" for n in names[1:])


def settled_versions(aspire, name: str) -> dict[int, str]:
    """`name`'s versions in a lasting state: AVAILABLE, or END after a failed load."""
    return {
        version: state
        for version, (state, code) in aspire.states(name).items()
        if state == "AVAILABLE" or (state == "END" and code != "OK")
    }


def test_unloading_every_shared_version_closes_the_host_and_frees_its_block(aspire, fleet):
    # This test unloads the whole fleet the other tests share: whatever ran before it, it puts
    # back every model it removed and waits until they are served as before (the same settled
    # versions, in hosts with the same versions and replicas), so the tests after it, in any
    # order, find the fleet as it was.
    names, _ = fleet
    models = list(aspire.models)
    added = [m.name for m in models if m.name not in BASE_MODELS]

    def fleet_state():
        return (
            {n: settled_versions(aspire, n) for n in added},
            sorted(
                (h["versions"], running_replicas(h["app"]), len(alive_replica_pids(h["app"])))
                for h in describe(aspire)["shared_hosts"]
            ),
        )

    before = fleet_state()
    try:
        assert host_apps()
        aspire.remove_added_models()
        wait_for(lambda: not host_apps(), 300, 0.2, what="the shared host deleted")
        described = describe(aspire)
        assert described["shared_hosts"] == []
        held = [h for n in described["resources"]["hosts"] for h in n["holders"]]
        assert not [h for h in held if "host-" in h]
    finally:
        import ray

        aspire.models = models
        ray.get(aspire.manager.set_models.remote(models))
        wait_for(
            lambda: fleet_state() == before,
            600,
            0.5,
            what=f"the {len(added)} removed models ({len(names)} fleet versions) served again "
            "as before the test: the same AVAILABLE and failed versions, shared hosts with the "
            "same versions and RUNNING/ALIVE replicas",
        )
