"""TF Serving's version-policy scenario tables (availability_preserving_policy_test.cc,
resource_preserving_policy_test.cc), plus the aspired-version selection rules of the source."""

import pytest

from policies.aspired import All, Latest, Specific, parse_version, versions_in
from policies.lifecycle import (
    Action,
    HarnessState,
    VersionSnapshot,
    availability_preserving,
    resource_preserving,
)

S = {
    "new": HarnessState.NEW,
    "loading": HarnessState.LOADING,
    "ready": HarnessState.READY,
    "unloading": HarnessState.UNLOADING,
    "unload-requested": HarnessState.UNLOADING,
    "disabled": HarnessState.DISABLED,
    "error": HarnessState.ERROR,
}


def snap(*rows):
    return [VersionSnapshot(v, S[state], aspired) for v, state, aspired in rows]


AVAILABILITY_PRESERVING = [
    (
        snap(
            (1, "unloading", False),
            (2, "error", False),
            (3, "ready", True),
            (4, "new", True),
            (5, "new", True),
        ),
        Action("load", 5),
    ),
    (
        snap(
            (1, "unloading", False),
            (2, "error", False),
            (3, "ready", False),
            (4, "ready", True),
            (5, "new", True),
        ),
        Action("unload", 3),
    ),
    (snap((1, "disabled", False), (2, "ready", False), (3, "error", False)), Action("unload", 2)),
    (
        snap(
            (1, "ready", True),
            (2, "error", True),
            (3, "loading", True),
            (4, "unloading", False),
            (5, "disabled", False),
        ),
        None,
    ),
    (snap((1, "ready", False), (2, "loading", True)), None),
    (snap((1, "ready", False), (2, "error", True)), None),
    (snap((1, "ready", False), (2, "loading", True), (3, "ready", True)), Action("unload", 1)),
    (snap((1, "ready", False), (2, "error", True), (3, "ready", True)), Action("unload", 1)),
    (
        snap((2, "ready", False), (1, "ready", False), (3, "error", True), (4, "loading", True)),
        Action("unload", 1),
    ),
]

RESOURCE_PRESERVING = [
    (
        snap(
            (1, "unloading", False),
            (2, "ready", True),
            (3, "ready", False),
            (4, "new", True),
            (5, "ready", False),
        ),
        Action("unload", 3),
    ),
    (
        snap(
            (1, "ready", True),
            (2, "loading", True),
            (3, "new", True),
            (4, "disabled", False),
            (5, "new", True),
        ),
        Action("load", 5),
    ),
    (
        snap(
            (1, "ready", True),
            (2, "error", True),
            (3, "loading", True),
            (4, "unloading", False),
            (5, "disabled", False),
        ),
        None,
    ),
    (snap((1, "unload-requested", False), (2, "new", True)), None),
    (snap((1, "error", False), (2, "new", True)), Action("load", 2)),
    (snap((1, "error", False), (2, "unload-requested", False), (3, "new", True)), None),
    (snap((1, "error", False), (2, "disabled", False), (3, "new", True)), Action("load", 3)),
]


@pytest.mark.parametrize("versions,expected", AVAILABILITY_PRESERVING)
def test_availability_preserving_policy_matches_tf_serving_table(versions, expected):
    assert availability_preserving(versions) == expected


@pytest.mark.parametrize("versions,expected", RESOURCE_PRESERVING)
def test_resource_preserving_policy_matches_tf_serving_table(versions, expected):
    assert resource_preserving(versions) == expected


def test_availability_preserving_loads_new_before_unloading_old():
    # A rollout from 1 to 2, step by step: 1 is unloaded only once 2 is ready.
    assert availability_preserving(snap((1, "ready", False), (2, "new", True))) == Action("load", 2)
    assert availability_preserving(snap((1, "ready", False), (2, "loading", True))) is None
    assert availability_preserving(snap((1, "ready", False), (2, "ready", True))) == Action(
        "unload", 1
    )


def test_failed_new_version_keeps_old_serving():
    assert availability_preserving(snap((1, "ready", False), (2, "error", True))) is None


def test_empty_aspired_list_unloads_everything():
    assert availability_preserving(snap((1, "ready", False))) == Action("unload", 1)


@pytest.mark.parametrize(
    "name,version",
    [
        ("1", 1),
        ("00000123", 123),
        ("20170111173521", 20170111173521),
        ("0", 0),
        ("v2", None),
        ("1.5", None),
        ("2.denied", None),
        ("-1", None),
        ("", None),
        ("1a", None),
        (str(2**63), None),
    ],
)
def test_only_integer_directory_names_are_versions(name, version):
    assert parse_version(name) == version


def test_duplicate_version_directories_keep_one_and_warn():
    found, warnings = versions_in(["001", "0001", "2", "tmp"])
    assert found == {1: "0001", 2: "2"}
    assert warnings == [
        "Duplicate version directories detected. Version 1 will be loaded from "
        "0001, 001 will be ignored."
    ]


@pytest.mark.parametrize(
    "policy,available,expected",
    [
        (Latest(), [1, 3, 2], [3]),
        (Latest(2), [1, 3, 2], [2, 3]),
        (Latest(0), [1, 2], [2]),
        (Latest(5), [1, 2], [1, 2]),
        (Latest(), [], []),
        (All(), [3, 1], [1, 3]),
        (Specific((2, 7)), [1, 2, 3], [2]),
        (Specific(()), [1, 2], []),
    ],
)
def test_version_policy_selects_aspired_versions(policy, available, expected):
    assert policy.select(available) == expected
