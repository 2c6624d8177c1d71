"""The restore plan as values (cluster/recovery.py): what a restarted manager adopts, drops and
deletes, from stored stream documents and the applications that exist, with no manager, store
or threads."""

import pytest

from cluster.manager_state import MAX_INTERRUPTED_LOADS, Stream, VersionRecord, dumps, record_doc
from cluster.recovery import doomed_apps, plan_restore, settle_dropped
from core.deployed import Deployed
from policies.lifecycle import HarnessState as H


def prefix(name):
    return f"{name}-v"


def stored(name, *records):
    doc = {
        "name": name,
        "policy": "availability_preserving",
        "versions": [record_doc(r) for r in records],
        "measured_vram": {"1": 7},
    }
    return {f"model/{name}": dumps(doc)}


def running(*apps):
    return Deployed(apps=tuple((a, 1) for a in apps))


def test_available_with_its_apps_is_adopted_and_nothing_else_moves():
    docs = stored(
        "m",
        VersionRecord(1, "/m/1", H.READY, deployed=running("m-v1")),
        VersionRecord(2, "/m/2", H.ERROR, error_code="DATA_LOSS"),
    )
    plan = plan_restore(docs, {"m-v1"}, prefix)
    assert [r.version for r in plan.adopted] == [1]
    assert plan.dropped == [] and plan.orphans == [] and plan.recovering == set()
    assert plan.measured_vram == {"m": {1: 7}}
    [stream] = plan.streams
    assert stream.versions[2].state is H.ERROR and stream.versions[2].error_code == "DATA_LOSS"
    assert plan.summary() == {"models": 1, "adopted": 1, "dropped": 0, "orphans": 0}


@pytest.mark.parametrize(
    "state, aspired, becomes",
    [
        (H.READY, True, H.LOADING),  # an application is missing: loaded again
        (H.READY, False, H.UNLOADING),  # ... or, unaspired, unloaded
        (H.LOADING, True, H.LOADING),
        (H.UNLOADING, False, H.UNLOADING),
    ],
)
def test_versions_in_flight_or_missing_an_app_are_dropped_for_the_recovery(state, aspired, becomes):
    docs = stored("m", VersionRecord(1, "/m/1", state, aspired=aspired, deployed=running("m-v1")))
    plan = plan_restore(docs, set(), prefix)  # m-v1 does not exist any more
    [(stream, record, was)] = plan.dropped
    assert (was, record.state, record.deployed) == (state, becomes, None)
    assert plan.recovering == plan.changed == {"m"} and plan.adopted == []


def test_applications_nobody_owns_are_orphans_of_their_model_or_of_none():
    docs = stored("m", VersionRecord(1, "/m/1", H.READY, deployed=running("m-v1")))
    plan = plan_restore(docs, {"m-v1", "m-v2", "stray"}, prefix)
    assert plan.orphans == ["m-v2", "stray"]
    assert plan.recovering == {"m"}  # m-v2 is m's, half-loaded; "stray" is no model's
    doomed = doomed_apps(
        {"m-v1", "m-v2", "stray", "n-v1"}, {"m-v1"}, {"m-v": "m", "n-v": "n"}, plan.recovering
    )
    # n is not recovering: its application may be a load in flight, so it is left alone
    assert doomed == {("m", 2): ["m-v2"], ("", 0): ["stray"]}


def test_an_unreadable_document_is_skipped_and_the_others_restored():
    docs = {"model/broken": b"{not json", **stored("m", VersionRecord(1, "/m/1"))}
    plan = plan_restore(docs, set(), prefix)
    assert [s.name for s in plan.streams] == ["m"]


@pytest.mark.parametrize(
    "was, aspired, interrupted, state, code",
    [
        (H.LOADING, True, 0, H.NEW, "OK"),  # starts over
        (H.LOADING, True, MAX_INTERRUPTED_LOADS - 1, H.ERROR, "ABORTED"),  # the last straw
        (
            H.READY,
            True,
            MAX_INTERRUPTED_LOADS - 1,
            H.NEW,
            "OK",
        ),  # a lost app is no interrupted load
        (H.UNLOADING, False, 0, H.DISABLED, "OK"),
        (H.LOADING, False, 0, H.DISABLED, "OK"),
    ],
)
def test_settling_a_dropped_version(was, aspired, interrupted, state, code):
    stream = Stream("m")
    record = stream.versions[1] = VersionRecord(
        1, "/m/1", H.LOADING, aspired=aspired, interrupted=interrupted
    )
    settle_dropped(stream, record, was)
    assert (stream.versions[1].state, stream.versions[1].error_code) == (state, code)


def test_a_version_replaced_meanwhile_is_left_as_it_is():
    stream = Stream("m")
    dropped = VersionRecord(1, "/m/1", H.LOADING)
    stream.versions[1] = fresh = VersionRecord(1, "/m/1")  # unaspired, then aspired again
    settle_dropped(stream, dropped, H.LOADING)
    assert stream.versions[1] is fresh and fresh.state is H.NEW
