"""Model lifecycle on a real local Ray: labels, warmup, and rollouts and rollbacks under load.

half_plus_two answers x/2+2 and half_plus_three x/2+3, so every response names its version.
"""

import shutil

import grpc
import pytest
import ray
from tensorflow_serving.apis import predict_pb2

from tests.integration.conftest import DATA, ClosedLoop, wait_for
from tests.integration.export_models import write_warmup_requests

pytestmark = pytest.mark.ray
ANSWER = {1: 2.5, 2: 3.5}  # version -> prediction for x = 1.0 in these tests


def reload(aspire, models, labels):
    return ray.get(aspire.manager.reload_config.remote(models, labels))


def test_labels_route_rest_and_grpc_and_follow_tf_serving_rules(aspire, model_dir):
    from config.model_config import ModelSource
    from policies.aspired import All

    base, publish = model_dir
    publish(1, "saved_model_half_plus_two_cpu")
    publish(2, "saved_model_half_plus_three")
    models = [m for m in aspire.models if m.name != "labeled"] + [
        ModelSource("labeled", str(base), All())
    ]
    aspire.models = models
    assert reload(aspire, models, {}) == ("OK", "")
    aspire.wait_state("labeled", 1, "AVAILABLE")
    aspire.wait_state("labeled", 2, "AVAILABLE")
    # A label may point only at an AVAILABLE version.
    code, message = reload(aspire, models, {"labeled": {"stable": 1, "canary": 7}})
    assert (code, message) == (
        "FAILED_PRECONDITION",
        "Request to assign label to version 7 of "
        "model labeled, which is not currently available for inference",
    )
    assert reload(aspire, models, {"labeled": {"stable": 1, "canary": 2}}) == ("OK", "")
    for label, version in (("stable", 1), ("canary", 2)):
        r = aspire.post(f"/v1/models/labeled/labels/{label}:predict", {"instances": [1.0]})
        assert r.json() == {"predictions": [ANSWER[version]]}
        r = aspire.get(f"/v1/models/labeled/labels/{label}/metadata")
        assert r.json()["model_spec"]["version"] == str(version)
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    from tests.support.grpc_requests import predict_request

    with grpc.insecure_channel(aspire.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(
            predict_request("labeled", (1.0,), version_label="stable"), timeout=60
        )
    assert response.outputs["y"].float_val == [ANSWER[1]] and response.model_spec.version.value == 1
    r = aspire.post("/v1/models/labeled/labels/beta:predict", {"instances": [1.0]})
    assert r.json() == {"error": "Unrecognized servable version label: beta"}
    # The unversioned route stays on the latest version: labels do not move traffic by themselves.
    assert aspire.post("/v1/models/labeled:predict", {"instances": [1.0]}).json() == {
        "predictions": [ANSWER[2]]
    }
    assert reload(aspire, [m for m in models if m.name != "labeled"], {}) == ("OK", "")
    aspire.models = [m for m in models if m.name != "labeled"]


def test_warmup_requests_are_replayed_before_available(aspire, tmp_path):
    """The counter model counts: N warmup records of incr_counter leave the counter at N."""
    base = tmp_path / "counter"
    shutil.copytree(DATA / "saved_model_counter" / "00000123", base / "1")
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "warm_counter"
    request.model_spec.signature_name = "incr_counter"
    write_warmup_requests(base / "1", [request] * 5)
    aspire.add_model("warm_counter", base)
    aspire.wait_state("warm_counter", 1, "AVAILABLE")
    r = aspire.post(
        "/v1/models/warm_counter:predict",
        {"signature_name": "incr_counter_by", "inputs": {"delta": 0.0}},
    )
    assert r.json() == {"outputs": 5.0}


def test_failing_warmup_fails_the_load_and_old_version_keeps_serving(aspire, model_dir):
    base, publish = model_dir
    publish(1, "saved_model_half_plus_two_cpu")
    aspire.add_model("warm_fail", base)
    aspire.wait_state("warm_fail", 1, "AVAILABLE")
    staging = base.parent / "v2"
    shutil.copytree(DATA / "saved_model_half_plus_two_cpu" / "00000123", staging)
    bad = predict_pb2.PredictRequest()
    bad.model_spec.signature_name = "no_such_signature"
    write_warmup_requests(staging, [bad])
    staging.rename(base / "2")
    aspire.wait_state("warm_fail", 2, "END")
    code, statuses = ray.get(aspire.manager.model_status.remote("warm_fail", 2))
    assert statuses[0]["error_code"] == "FAILED_PRECONDITION"
    assert statuses[0]["error_message"] == 'Serving signature key "no_such_signature" not found.'
    assert aspire.post("/v1/models/warm_fail:predict", {"instances": [1.0]}).json() == {
        "predictions": [2.5]
    }


def test_rollout_failed_version_and_rollback_under_load_lose_no_request(aspire, model_dir):
    base, publish = model_dir
    publish(1, "saved_model_half_plus_two_cpu")
    aspire.add_model("roll", base)
    aspire.wait_state("roll", 1, "AVAILABLE")
    import time

    with ClosedLoop(aspire.url + "/v1/models/roll:predict", clients=8) as load:
        load.wait_more(50)
        appeared = time.monotonic()
        publish(2, "saved_model_half_plus_three")  # roll forward
        wait_for(
            lambda: any(a == ANSWER[2] and t > appeared for t, a in load.answers),
            120,
            what="v2 serving",
        )
        serving_after_s = next(t for t, a in load.answers if a == ANSWER[2]) - appeared
        aspire.wait_state("roll", 1, "END")
        load.wait_more(50)
        staging = base.parent / "v3"  # a version that cannot load
        shutil.copytree(DATA / "bad_half_plus_two" / "00000123", staging)
        staging.rename(base / "3")
        aspire.wait_state("roll", 3, "END")
        load.wait_more(50)
        assert aspire.states("roll")[2] == ("AVAILABLE", "OK")
        shutil.rmtree(base / "3")
        shutil.rmtree(base / "2")  # roll back to 1
        aspire.wait_state("roll", 1, "AVAILABLE")
        aspire.wait_state("roll", 2, "END")
        load.wait_more(50)
    assert load.failures == []
    answers = [a for _, a in load.answers]
    assert set(answers) == {ANSWER[1], ANSWER[2]}
    # v1, then v2 only, then v1 only: every answer came from a version available at that time.
    first_v2 = answers.index(ANSWER[2])
    last_v2 = len(answers) - 1 - answers[::-1].index(ANSWER[2])
    assert set(answers[:first_v2]) == {ANSWER[1]}
    assert set(answers[last_v2 + 1 :]) == {ANSWER[1]} and len(answers[last_v2 + 1 :]) >= 50
    assert aspire.states("roll")[3][1] == "NOT_FOUND"
    print(
        f"rollout under load: {len(answers)} requests, {len(load.failures)} errors, "
        f"v2 served {serving_after_s:.1f} s after its directory appeared"
    )
