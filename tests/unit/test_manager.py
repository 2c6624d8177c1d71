"""Manager reconcile logic without Ray: a recording backend stands in for Serve deployments."""

import threading

import pytest

from cluster.manager import Manager
from core.contracts import VersionAddress
from core.deployed import Deployed
from core.errors import AspireError


class RecordingBackend:
    """Loads succeed unless the path is in `fail`; `gate` holds loads of chosen versions."""

    def __init__(self):
        self.events = []
        self.fail = {}
        self.gate = {}
        self.lock = threading.Lock()

    def load(self, name, version, path, placements=None):
        if version in self.gate:
            self.gate[version].wait(10)
        with self.lock:
            self.events.append(("load", name, version))
        if path in self.fail:
            raise self.fail[path]
        return Deployed(apps=((f"{name}-{version}", 1),))

    def unload(self, deployed):
        name, _, version = deployed.apps[0][0].rpartition("-")
        with self.lock:
            self.events.append(("unload", name, int(version)))


@pytest.fixture
def backend():
    return RecordingBackend()


@pytest.fixture
def manager(backend):
    m = Manager(backend, num_load_threads=2, max_num_load_retries=0, router_ack_timeout_s=2)
    yield m
    m.shutdown()


def states(manager, name):
    return [(s["version"], s["state"], s["error_code"]) for s in manager.model_status(name)]


def test_first_version_becomes_available_and_enters_serving_map(manager):
    manager.set_aspired_versions("m", {1: "/m/1"})
    assert manager.wait_idle(5)
    assert states(manager, "m") == [(1, "AVAILABLE", "OK")]
    assert manager.serving_map().models == {"m": {1: VersionAddress(apps=(("m-1", 1),))}}


def test_rollout_loads_new_version_before_unloading_old(manager, backend):
    manager.set_aspired_versions("m", {1: "/m/1"})
    manager.wait_idle(5)
    manager.set_aspired_versions("m", {2: "/m/2"})
    assert manager.wait_idle(5)
    assert backend.events == [("load", "m", 1), ("load", "m", 2), ("unload", "m", 1)]
    assert states(manager, "m") == [(2, "AVAILABLE", "OK"), (1, "END", "OK")]
    assert list(manager.serving_map().models["m"]) == [2]


def test_new_version_failure_keeps_old_serving(manager, backend):
    backend.fail["/m/2"] = AspireError("Could not find SavedModel", "NOT_FOUND")
    manager.set_aspired_versions("m", {1: "/m/1"})
    manager.wait_idle(5)
    manager.set_aspired_versions("m", {2: "/m/2"})
    assert manager.wait_idle(5)
    assert states(manager, "m") == [(2, "END", "NOT_FOUND"), (1, "AVAILABLE", "OK")]
    assert manager.model_status("m", 2)[0]["error_message"] == "Could not find SavedModel"
    assert list(manager.serving_map().models["m"]) == [1]


def test_failed_version_is_not_retried_while_it_stays_aspired(manager, backend):
    backend.fail["/m/1"] = AspireError("broken", "DATA_LOSS")
    manager.set_aspired_versions("m", {1: "/m/1"})
    manager.wait_idle(5)
    manager.set_aspired_versions("m", {1: "/m/1"})
    manager.wait_idle(5)
    assert backend.events == [("load", "m", 1)]


def test_unexpected_backend_exception_becomes_state_not_a_crash(manager, backend):
    backend.fail["/m/1"] = RuntimeError("replica died")
    manager.set_aspired_versions("m", {1: "/m/1"})
    assert manager.wait_idle(5)
    assert states(manager, "m") == [(1, "END", "UNKNOWN")]
    assert "replica died" in manager.model_status("m")[0]["error_message"]


def test_empty_aspired_list_unloads_all_versions(manager, backend):
    manager.set_aspired_versions("m", {1: "/m/1", 2: "/m/2"})
    manager.wait_idle(5)
    manager.set_aspired_versions("m", {})
    assert manager.wait_idle(5)
    assert states(manager, "m") == [(2, "END", "OK"), (1, "END", "OK")]
    assert manager.serving_map().models == {}


def test_unloaded_version_aspired_again_is_reloaded(manager, backend):
    manager.set_aspired_versions("m", {1: "/m/1"})
    manager.wait_idle(5)
    manager.set_aspired_versions("m", {})
    manager.wait_idle(5)
    manager.set_aspired_versions("m", {1: "/m/1"})
    assert manager.wait_idle(5)
    assert states(manager, "m") == [(1, "AVAILABLE", "OK")]


def test_status_lists_every_version_newest_first_and_reports_unknowns(manager):
    manager.set_aspired_versions("m", {3: "/m/3", 10: "/m/10", 2: "/m/2"})
    manager.wait_idle(5)
    assert [s["version"] for s in manager.model_status("m")] == [10, 3, 2]
    with pytest.raises(AspireError, match="Could not find any versions of model nope") as err:
        manager.model_status("nope")
    assert err.value.code == "NOT_FOUND"
    with pytest.raises(AspireError, match="Could not find version 7 of model m"):
        manager.model_status("m", 7)


def test_version_in_loading_is_reported_loading(manager, backend):
    backend.gate[1] = threading.Event()
    manager.set_aspired_versions("m", {1: "/m/1"})
    manager.reconcile()
    assert states(manager, "m") == [(1, "LOADING", "OK")]
    backend.gate[1].set()
    assert manager.wait_idle(5)
    assert states(manager, "m") == [(1, "AVAILABLE", "OK")]


def test_unload_waits_for_live_routers_to_acknowledge_the_new_map(manager, backend):
    manager.set_aspired_versions("m", {1: "/m/1"})
    manager.wait_idle(5)
    epoch = manager.serving_map().epoch
    manager.wait_for_serving_map(epoch, "router-a", 0)  # router-a has applied `epoch`
    manager.set_aspired_versions("m", {})
    manager.reconcile()
    # The version left the serving map at once, but its deployment is not deleted before
    # router-a acknowledges the map without it.
    threading.Event().wait(0.3)
    assert ("unload", "m", 1) not in backend.events
    assert manager.serving_map().models == {}
    new_map = manager.wait_for_serving_map(epoch, "router-a", 1)
    manager.wait_for_serving_map(new_map.epoch, "router-a", 0)
    assert manager.wait_idle(5)
    assert ("unload", "m", 1) in backend.events


def test_unknown_policy_is_rejected(manager):
    with pytest.raises(ValueError):
        manager.set_aspired_versions("m", {1: "/m/1"}, policy="newest_only")


def test_load_is_retried_after_the_interval_then_ends_with_the_last_error(backend):
    # TF Serving's default interval (one minute), waited on an injected sleeper: no real wait
    slept = []
    manager = Manager(backend, max_num_load_retries=2, load_retry_interval_s=60, sleep=slept.append)
    backend.fail["/m/1"] = AspireError("broken", "DATA_LOSS")
    manager.set_aspired_versions("m", {1: "/m/1"})
    assert manager.wait_idle(5)
    assert backend.events == [("load", "m", 1)] * 3
    assert slept == [60, 60]  # one interval before each retry
    assert states(manager, "m") == [(1, "END", "DATA_LOSS")]
    manager.shutdown()


def test_a_version_dir_outside_its_base_path_is_tried_once(backend):
    manager = Manager(backend, max_num_load_retries=2, load_retry_interval_s=0.01)
    backend.fail["/m/1"] = AspireError(
        "Version directory /m/1 resolves outside the model base path /m", "PERMISSION_DENIED"
    )
    manager.set_aspired_versions("m", {1: "/m/1"})
    assert manager.wait_idle(5)
    assert backend.events == [("load", "m", 1)]
    assert states(manager, "m") == [(1, "END", "PERMISSION_DENIED")]
    manager.shutdown()


def test_retries_stop_when_the_version_is_unaspired(backend):
    def unaspire_while_waiting(seconds):  # the version is unaspired during the retry interval
        slept.append(seconds)
        manager.set_aspired_versions("m", {})

    slept = []
    manager = Manager(
        backend, max_num_load_retries=50, load_retry_interval_s=60, sleep=unaspire_while_waiting
    )
    backend.fail["/m/1"] = AspireError("broken", "DATA_LOSS")
    manager.set_aspired_versions("m", {1: "/m/1"})
    assert manager.wait_idle(5)
    assert backend.events == [("load", "m", 1)] and slept == [60]  # no retry after it
    assert states(manager, "m") == [(1, "END", "CANCELLED")]
    manager.shutdown()


def test_transient_failure_then_success_makes_the_version_available(backend):
    slept = []
    manager = Manager(backend, max_num_load_retries=3, load_retry_interval_s=60, sleep=slept.append)
    backend.fail["/m/1"] = AspireError("flaky", "UNAVAILABLE")

    def heal(*_):
        backend.fail.pop("/m/1", None)

    original = backend.load

    def load(name, version, path, placements=None):
        try:
            return original(name, version, path, placements)
        finally:
            heal()

    backend.load = load
    manager.set_aspired_versions("m", {1: "/m/1"})
    assert manager.wait_idle(5)
    assert states(manager, "m") == [(1, "AVAILABLE", "OK")] and slept == [60]
    manager.shutdown()


LABEL_CASES = [
    # (label currently -> version, requested mapping, allow_unavailable, error?)
    ({}, {"stable": 1}, False, False),  # 1 is AVAILABLE
    ({}, {"canary": 2}, False, True),  # 2 is not loaded
    ({}, {"canary": 2}, True, False),  # new label may point ahead with the flag
    ({"canary": 1}, {"canary": 2}, True, True),  # moving a label to an unavailable version
    ({"canary": 2}, {"canary": 2}, True, False),  # keeping it where it is
]


@pytest.mark.parametrize("current,requested,allow,fails", LABEL_CASES)
def test_label_rules_follow_tf_serving(manager, current, requested, allow, fails):
    manager.set_aspired_versions("m", {1: "/m/1"})
    manager.wait_idle(5)
    manager.set_labels({"m": current})
    if fails:
        with pytest.raises(AspireError) as err:
            manager.check_labels({"m": requested}, allow)
        assert err.value.code == "FAILED_PRECONDITION"
        assert err.value.message == (
            "Request to assign label to version 2 of model m, which is not "
            "currently available for inference"
        )
    else:
        manager.check_labels({"m": requested}, allow)


def test_labels_are_published_in_the_serving_map(manager):
    manager.set_aspired_versions("m", {1: "/m/1"})
    manager.wait_idle(5)
    epoch = manager.serving_map().epoch
    manager.set_labels({"m": {"stable": 1}})
    assert manager.serving_map().labels == {"m": {"stable": 1}}
    assert manager.serving_map().epoch > epoch


def test_a_reload_returns_its_labels_once_live_routers_acknowledged_them(manager):
    manager.set_aspired_versions("m", {1: "/m/1"})
    manager.wait_idle(5)
    epoch = manager.serving_map().epoch
    manager.wait_for_serving_map(epoch, "router-a", 0)  # router-a is live and has applied `epoch`
    done = threading.Event()
    setter = threading.Thread(
        target=lambda: (manager.set_labels({"m": {"stable": 1}}, wait_for_routers=True), done.set())
    )
    setter.start()
    new_map = manager.wait_for_serving_map(epoch, "router-a", 5)  # router-a fetches the labels
    assert new_map.labels == {"m": {"stable": 1}}
    assert not done.is_set()  # fetched, not yet acknowledged
    manager.wait_for_serving_map(new_map.epoch, "router-a", 0)  # its next poll acknowledges
    assert done.wait(5)
    setter.join(5)


def test_routers_poll_for_the_configured_period_and_the_restart_grace_follows_it(backend):
    default = Manager(backend)
    short = Manager(backend, router_poll_s=1.0)
    try:
        assert default.serving_map().poll_s == 5.0
        assert short.serving_map().poll_s == 1.0
        # every router has polled once a poll period and a retry (1 s) have passed
        assert default.publisher.grace_s == 7.0 and short.publisher.grace_s == 3.0
    finally:
        default.shutdown()
        short.shutdown()


def test_unchanged_labels_publish_no_new_serving_map(manager):
    manager.set_aspired_versions("m", {1: "/m/1"})
    manager.wait_idle(5)
    manager.set_labels({"m": {"stable": 1}})
    epoch = manager.serving_map().epoch
    manager.set_labels({"m": {"stable": 1}, "other": {}})  # a config file polled unchanged
    assert manager.serving_map().epoch == epoch
    manager.set_labels({"m": {"stable": 1, "canary": 1}})
    assert manager.serving_map().epoch == epoch + 1
    assert manager.serving_map().labels == {"m": {"stable": 1, "canary": 1}}


def test_wait_for_models_returns_once_each_model_is_available_or_ended(manager, backend):
    backend.fail["/bad/1"] = AspireError("broken", "NOT_FOUND")
    manager.set_aspired_versions("good", {1: "/good/1"})
    manager.set_aspired_versions("bad", {1: "/bad/1"})
    manager.set_aspired_versions("empty", {})
    stop = threading.Event()

    def reconcile_loop():
        while not stop.wait(0.01):
            manager.reconcile()

    threading.Thread(target=reconcile_loop, daemon=True).start()
    try:
        result = manager.wait_for_models(["good", "bad"], 5)
        assert result["pending"] == []
        assert result["failed"]["bad"]["error_code"] == "NOT_FOUND"
        assert "good" not in result["failed"]
        # A model without versions never settles: the wait ends at its timeout and says so.
        assert manager.wait_for_models(["empty", "good"], 0.2)["pending"] == ["empty"]
    finally:
        stop.set()
