"""Version lifecycle through the real source -> manager -> Serve deployments path.

The models encode their version in the answer: half_plus_two gives x/2+2, half_plus_three x/2+3,
so every response tells which version served it.
"""
import shutil
import threading

import pytest
import ray
import requests

from tests.integration.conftest import wait_for

pytestmark = pytest.mark.ray

V1_ANSWER, V2_ANSWER = 2.5, 3.5  # for x = 1.0


class Load:
    """Sequential clients predicting until stopped; records every answer and every failure."""

    def __init__(self, url: str, clients: int = 4):
        self.url, self.stop = url, threading.Event()
        self.answers, self.failures = [], []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self):
        session = requests.Session()
        while not self.stop.is_set():
            try:
                r = session.post(self.url, json={"instances": [1.0]}, timeout=30)
                if r.status_code == 200:
                    self.answers.append(r.json()["predictions"][0])
                else:
                    self.failures.append((r.status_code, r.text))
            except requests.RequestException as exc:
                self.failures.append(("exception", repr(exc)))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(30)


def test_new_version_rolls_out_under_load_without_a_failed_request(aspire, model_dir):
    base, publish = model_dir
    publish(1, "saved_model_half_plus_two_cpu")
    aspire.add_model("rollout", base)
    aspire.wait_state("rollout", 1, "AVAILABLE")
    with Load(aspire.url + "/v1/models/rollout:predict") as load:
        wait_for(lambda: len(load.answers) > 20, 30, what="traffic on v1")
        publish(2, "saved_model_half_plus_three")
        aspire.wait_state("rollout", 2, "AVAILABLE")
        aspire.wait_state("rollout", 1, "END")
        seen = len(load.answers)
        wait_for(lambda: len(load.answers) > seen + 20, 30, what="traffic after the rollout")
    assert load.failures == []
    assert V1_ANSWER in load.answers and V2_ANSWER in load.answers
    # Once v2 answered, v1 never answers again: the switch is monotonic.
    first_v2 = load.answers.index(V2_ANSWER)
    assert V1_ANSWER not in load.answers[first_v2:]
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
    from deployments.servable import app_name
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
    assert (r.status_code, r.json()) == (404, {"error": "Servable not found for request: Latest(moving)"})
