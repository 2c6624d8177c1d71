"""Weighted canary traffic: split validation, resolution to version probabilities, and the draw."""

import math
import random

import pytest

from policies.traffic import TrafficSplit, effective_weights, pick


def split(obj):
    return TrafficSplit.parse(obj)


# --- parse ---------------------------------------------------------------------------------


def test_parse_keeps_file_order_and_reads_digit_keys_as_versions():
    assert split({"stable": 90, "7": 5, "canary": 5.5}).weights == (
        ("stable", 90.0),
        (7, 5.0),
        ("canary", 5.5),
    )


def test_parse_reads_leading_zero_digit_keys_as_the_same_version_number():
    assert split({"007": 1}).weights == ((7, 1.0),)


def test_parse_accepts_int_keys_from_python_callers():
    assert split({3: 1, 4: 3}).weights == ((3, 1.0), (4, 3.0))


def test_parse_accepts_zero_weights_when_some_weight_is_positive():
    assert split({"a": 0, "b": 1}).weights == (("a", 0.0), ("b", 1.0))


def test_parse_treats_non_ascii_digits_and_signed_numbers_as_labels():
    assert split({"²": 1, "-1": 1, "v2": 1}).weights == (("²", 1.0), ("-1", 1.0), ("v2", 1.0))


@pytest.mark.parametrize(
    "obj, fragment",
    [
        ({}, "at least one"),
        ([("a", 1)], "must be an object"),
        ({"a": -1}, "'a'"),
        ({"a": True}, "'a'"),
        ({"a": "10"}, "'a'"),
        ({"a": None}, "'a'"),
        ({"a": math.nan}, "'a'"),
        ({"a": math.inf}, "'a'"),
        ({"a": 0, "b": 0}, "all be 0"),
        ({"": 1}, "non-empty"),
        ({1.5: 1}, "1.5"),
        ({True: 1}, "True"),
        ({-1: 1}, "-1"),
        ({str(2**63): 1}, str(2**63)),
    ],
)
def test_parse_rejects_invalid_splits_naming_the_bad_key(obj, fragment):
    with pytest.raises(ValueError) as info:
        TrafficSplit.parse(obj)
    assert fragment in str(info.value)


# --- effective_weights ---------------------------------------------------------------------


def test_labels_resolve_to_their_versions():
    got = effective_weights(split({"stable": 90, "canary": 10}), {"stable": 1, "canary": 2}, {1, 2})
    assert got == pytest.approx({1: 0.9, 2: 0.1})


def test_version_number_keys_are_used_directly():
    assert effective_weights(split({"3": 1, "4": 3}), {}, {3, 4}) == pytest.approx(
        {3: 0.25, 4: 0.75}
    )


def test_unavailable_versions_are_dropped_and_the_rest_renormalised():
    got = effective_weights(split({"1": 50, "2": 30, "3": 20}), {}, {1, 3})
    assert got == pytest.approx({1: 50 / 70, 3: 20 / 70})


def test_unknown_labels_are_dropped_and_the_rest_renormalised():
    got = effective_weights(split({"stable": 60, "canary": 40}), {"stable": 1}, {1, 2})
    assert got == {1: 1.0}


def test_labels_pointing_at_unavailable_versions_are_dropped():
    got = effective_weights(split({"stable": 60, "canary": 40}), {"stable": 1, "canary": 9}, {1})
    assert got == {1: 1.0}


def test_keys_resolving_to_the_same_version_add_up():
    got = effective_weights(
        split({"stable": 50, "2": 25, "canary": 25}), {"stable": 2, "canary": 3}, {2, 3}
    )
    assert got == pytest.approx({2: 0.75, 3: 0.25})


def test_zero_weight_versions_get_no_traffic():
    got = effective_weights(split({"1": 0, "2": 1}), {}, {1, 2})
    assert got == {2: 1.0}


def test_probabilities_sum_to_one():
    got = effective_weights(split({"1": 1, "2": 1, "3": 1}), {}, {1, 2, 3})
    assert math.isclose(sum(got.values()), 1.0)


def test_no_split_means_latest_available_version():
    assert effective_weights(None, {"stable": 1}, {1, 5, 3}) == {5: 1.0}


def test_nothing_servable_left_falls_back_to_latest_available_version():
    assert effective_weights(split({"canary": 10, "9": 90}), {"stable": 1}, {1, 2}) == {2: 1.0}


def test_only_zero_weights_left_falls_back_to_latest_available_version():
    assert effective_weights(split({"1": 0, "9": 5}), {}, {1, 2}) == {2: 1.0}


@pytest.mark.parametrize("s", [None, TrafficSplit(((1, 1.0),))])
def test_no_available_versions_means_no_weights(s):
    assert effective_weights(s, {}, set()) == {}


# --- pick ----------------------------------------------------------------------------------

W = {1: 0.8, 2: 0.2}


def test_pick_draw_zero_selects_the_lowest_version():
    assert pick(W, 0.0) == 1


def test_pick_draw_just_below_the_first_edge_stays_in_the_first_version():
    assert pick(W, math.nextafter(0.8, 0.0)) == 1


def test_pick_draw_at_the_first_edge_moves_to_the_next_version():
    assert pick(W, 0.8) == 2


def test_pick_draw_close_to_one_selects_the_highest_version():
    assert pick(W, math.nextafter(1.0, 0.0)) == 2


def test_pick_orders_versions_ascending_regardless_of_dict_order():
    assert pick({2: 0.2, 1: 0.8}, 0.1) == 1


def test_pick_draw_close_to_one_is_served_when_probabilities_sum_below_one():
    thirds = effective_weights(split({"1": 1, "2": 1, "3": 1}), {}, {1, 2, 3})
    assert pick(thirds, math.nextafter(1.0, 0.0)) == 3


def test_pick_never_selects_a_zero_weight_version():
    assert pick({1: 0.0, 2: 1.0, 3: 0.0}, 0.0) == 2
    assert pick({1: 0.0, 2: 1.0, 3: 0.0}, math.nextafter(1.0, 0.0)) == 2


@pytest.mark.parametrize("u", [-0.1, 1.0, 1.5])
def test_pick_rejects_draws_outside_unit_interval(u):
    with pytest.raises(ValueError):
        pick(W, u)


@pytest.mark.parametrize(
    "weights",
    [
        {},
        {1: 0.0},  # one version, weight 0
        {1: 0.0, 2: 0.0, 3: 0.0},  # all zero
        {1: -0.5},  # negative: not a positive weight, skipped as 0 is
        {1: -1.0, 2: 0.0},
        {1: math.nan},  # NaN is not > 0 either
    ],
)
@pytest.mark.parametrize("u", [0.0, 0.5, math.nextafter(1.0, 0.0)])
def test_pick_rejects_weights_with_no_positive_entry(weights, u):
    with pytest.raises(ValueError, match="^no version has a positive weight$"):
        pick(weights, u)


def test_pick_distributes_draws_by_weight_within_two_points():
    rng = random.Random(1234)
    weights = effective_weights(
        split({"stable": 80, "canary": 20}), {"stable": 4, "canary": 5}, {4, 5}
    )
    n = 10_000
    hits = sum(pick(weights, rng.random()) == 4 for _ in range(n))
    assert abs(hits / n - 0.80) <= 0.02


# ---- sticky experiments -------------------------------------------------------------------------
def test_experiment_parses_arms_key_and_salt():
    from policies.traffic import Experiment

    e = Experiment.parse({"arms": {"stable": 90, "2": 10}, "key": "X-User-Id", "salt": "exp-1"})
    assert e.arms.weights == (("stable", 90.0), (2, 10.0))
    assert (e.key, e.salt) == ("x-user-id", "exp-1")  # header names are case-insensitive


@pytest.mark.parametrize(
    "body, words",
    [
        ({"arms": {"1": 1}}, "arms and key are required"),
        ({"arms": {"1": 1}, "key": "a b"}, "key must be a header"),
        ({"arms": {}, "key": "k"}, "arms"),
        ({"arms": {"1": 1}, "key": "k", "salt": 3}, "salt"),
        ({"arms": {"1": 1}, "key": "k", "seed": 1}, "'seed'"),
    ],
)
def test_bad_experiment_is_refused(body, words):
    from policies.traffic import Experiment

    with pytest.raises(ValueError, match=words):
        Experiment.parse(body)


def test_traffic_and_experiment_together_are_refused():
    import json

    from config.aspire_config import parse_aspire_config
    from core.errors import AspireError

    doc = {"models": {"m": {"traffic": {"1": 1}, "experiment": {"arms": {"1": 1}, "key": "k"}}}}
    with pytest.raises(AspireError, match="cannot both be set"):
        parse_aspire_config(json.dumps(doc))


def test_the_same_key_always_lands_on_the_same_arm_and_keys_spread_by_weight():
    from core.contracts import ServingMap, VersionAddress
    from deployments.router.core import resolve

    address = VersionAddress(apps=(("app", 1),))
    served = ServingMap(
        models={"m": {1: address, 2: address}},
        traffic={"m": ((1, 80.0), (2, 20.0))},
        experiments={"m": ("x-user-id", "salt")},
    )
    arms = {}
    for user in range(2000):
        seen = {resolve(served, "m", None, None, f"user-{user}")[0] for _ in range(5)}
        assert len(seen) == 1  # sticky
        arms[user] = seen.pop()
    share = sum(1 for v in arms.values() if v == 2) / len(arms)
    assert abs(share - 0.2) < 5 * (0.2 * 0.8 / len(arms)) ** 0.5  # 5 sigma of the weights
    other_salt = ServingMap(**{**served.__dict__, "experiments": {"m": ("x-user-id", "other")}})
    moved = sum(
        1 for u in range(2000) if resolve(other_salt, "m", None, None, f"user-{u}")[0] != arms[u]
    )
    assert moved > 0  # another salt draws the users apart
