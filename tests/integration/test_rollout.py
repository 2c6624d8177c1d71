"""Version lifecycle through the real source -> manager -> Serve deployments path.

The models encode their version in the answer: half_plus_two gives x/2+2, half_plus_three x/2+3,
so every response tells which version served it.
"""

import shutil

import pytest
import ray

from tests.integration.conftest import ClosedLoop

pytestmark = pytest.mark.ray

V1_ANSWER, V2_ANSWER = 2.5, 3.5  # for x = 1.0


def test_new_version_rolls_out_under_load_without_a_failed_request(aspire, model_dir):
    base, publish = model_dir
    publish(1, "saved_model_half_plus_two_cpu")
    aspire.add_model("rollout", base)
    aspire.wait_state("rollout", 1, "AVAILABLE")
    with ClosedLoop(aspire.url + "/v1/models/rollout:predict", clients=4) as load:
        load.wait_more(20)
        publish(2, "saved_model_half_plus_three")
        aspire.wait_state("rollout", 2, "AVAILABLE")
        aspire.wait_state("rollout", 1, "END")
        load.wait_more(20)
    assert load.failures == []
    answers = [a for _, a in load.answers]
    assert V1_ANSWER in answers and V2_ANSWER in answers
    # Once v2 answered, v1 never answers again: the switch is monotonic.
    assert V1_ANSWER not in answers[answers.index(V2_ANSWER) :]
    assert aspire.states("rollout") == {2: ("AVAILABLE", "OK"), 1: ("END", "OK")}


def test_failing_new_version_leaves_old_version_serving(aspire, model_dir):
    base, publish = model_dir
    publish(1, "saved_model_half_plus_two_cpu")
    aspire.add_model("failing_rollout", base)
    aspire.wait_state("failing_rollout", 1, "AVAILABLE")
    publish(2, "bad_half_plus_two")
    aspire.wait_state("failing_rollout", 2, "END")
    states = aspire.states("failing_rollout")
    assert states[1] == ("AVAILABLE", "OK")
    assert states[2][1] == "NOT_FOUND"
    r = aspire.post("/v1/models/failing_rollout:predict", {"instances": [1.0]})
    assert r.json() == {"predictions": [V1_ANSWER]}


def test_version_failing_inside_its_replica_is_reported_and_old_keeps_serving(aspire, model_dir):
    # saved_model.pb is fine (so the manager's pre-check passes) but the variables are garbage:
    # the replica's TF restore fails, and that failure must come back as the version's state.
    base, publish = model_dir
    publish(1, "saved_model_half_plus_two_cpu")
    aspire.add_model("corrupt_rollout", base)
    aspire.wait_state("corrupt_rollout", 1, "AVAILABLE")
    staging = base.parent / "corrupt"
    shutil.copytree(base / "1", staging)
    (staging / "variables" / "variables.index").write_bytes(b"garbage")
    staging.rename(base / "2")
    aspire.wait_state("corrupt_rollout", 2, "END")
    code, statuses = ray.get(aspire.manager.model_status.remote("corrupt_rollout", 2))
    assert statuses[0]["error_code"] == "DATA_LOSS"
    assert "file is too short to be an sstable" in statuses[0]["error_message"]
    assert aspire.states("corrupt_rollout")[1] == ("AVAILABLE", "OK")
    r = aspire.post("/v1/models/corrupt_rollout:predict", {"instances": [1.0]})
    assert r.json() == {"predictions": [V1_ANSWER]}
    from core.names import app_name

    assert app_name("corrupt_rollout", 2) not in serve_apps()  # nothing left behind
    assert app_name("corrupt_rollout", 1) in serve_apps()


def serve_apps() -> list[str]:
    from ray import serve

    return list(serve.status().applications)


def test_missing_base_path_keeps_serving_and_emptied_base_path_unloads(aspire, model_dir):
    base, publish = model_dir
    publish(1, "saved_model_half_plus_two_cpu")
    aspire.add_model("moving", base)
    aspire.wait_state("moving", 1, "AVAILABLE")
    hidden = base.with_name("hidden")
    base.rename(hidden)  # base path gone: logged, nothing unloads
    ray.get(aspire.manager.poll_now.remote())  # a poll has certainly seen the missing path
    code, statuses = ray.get(aspire.manager.model_status.remote("moving"))
    assert [(s["version"], s["state"], s["aspired"]) for s in statuses] == [(1, "AVAILABLE", True)]
    assert aspire.post("/v1/models/moving:predict", {"instances": [1.0]}).status_code == 200
    hidden.rename(base)
    shutil.rmtree(base / "1")  # base path present but empty: every version is unloaded
    aspire.wait_state("moving", 1, "END")
    r = aspire.post("/v1/models/moving:predict", {"instances": [1.0]})
    assert (r.status_code, r.json()) == (
        404,
        {"error": "Servable not found for request: Latest(moving)"},
    )
