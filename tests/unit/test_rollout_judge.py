"""The rollout judge: canary and shadow verdicts, the two tests, and the windows' docs."""

import itertools
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.rollout_judge import (
    MAX_REASONS,
    MAX_SAMPLES,
    Analysis,
    Comparison,
    OutputDiff,
    ShadowLimits,
    ShadowTally,
    VersionWindow,
    judge_canary,
    judge_shadow,
    mann_whitney_greater,
    p99,
    proportion_greater,
)

ANALYSIS = Analysis(min_requests=50, max_error_rate=0.01, max_latency_p99_ratio=1.5)


def window(latencies=(), errors=0):
    w = VersionWindow()
    for x in latencies:
        w.add(True, float(x))
    for _ in range(errors):
        w.add(False, 0.001)
    return w


def realistic_latencies(rng, n):
    """About 5 ms lognormal, a heavy tail (3% around 20 ms) and rare outliers (0.5%, 0.2-1 s)."""
    x = rng.lognormal(math.log(0.005), 0.35, n)
    tail = rng.random(n) < 0.03
    x[tail] = rng.lognormal(math.log(0.02), 0.6, tail.sum())
    outliers = rng.random(n) < 0.005
    x[outliers] = rng.uniform(0.2, 1.0, outliers.sum())
    return x


def names(checks):
    return {c.name for c in checks}


# --- latency ----------------------------------------------------------------------------------


def test_same_latency_never_fails_in_20_windows():
    rng = np.random.default_rng(20240611)
    ratios = []
    for _ in range(20):
        base = realistic_latencies(rng, int(rng.integers(50, 501)))
        cand = realistic_latencies(rng, int(rng.integers(50, 501)))
        judgement = judge_canary(window(base), window(cand), ANALYSIS)
        assert judgement.result == "pass", judgement.to_doc()
        ratios.append(next(c.value for c in judgement.checks if c.name == "latency_p99_ratio"))
    # the windows do push p99 past the threshold by noise: the rank test is what keeps them
    assert max(ratios) > ANALYSIS.max_latency_p99_ratio


def test_slower_candidate_fails_latency():
    rng = np.random.default_rng(7)
    base = rng.lognormal(math.log(0.005), 0.35, 200)
    cand = 2 * rng.lognormal(math.log(0.005), 0.35, 200)
    judgement = judge_canary(window(base), window(cand), ANALYSIS)
    assert judgement.result == "fail"
    assert {"latency_p99_ratio", "latency_rank"} <= names(judgement.failed_checks())
    assert "latency_p99_ratio" in judgement.reason


def test_one_outlier_does_not_fail_latency():
    rng = np.random.default_rng(3)
    base = rng.lognormal(math.log(0.005), 0.3, 100)
    cand = rng.lognormal(math.log(0.005), 0.3, 100)
    cand[:2] = 0.5  # two stalls: the nearest-rank p99 of 100 values is the second largest
    judgement = judge_canary(window(base), window(cand), ANALYSIS)
    ratio, rank = judgement.checks[-2], judgement.checks[-1]
    assert (ratio.name, rank.name) == ("latency_p99_ratio", "latency_rank")
    assert ratio.value > 1.5 and rank.value >= ANALYSIS.significance
    assert ratio.passed and rank.passed and "not significant" in ratio.detail
    assert judgement.result == "pass"


def test_significantly_but_slightly_slower_candidate_passes():
    base = np.linspace(0.004, 0.006, 400)
    judgement = judge_canary(window(base), window(base * 1.1), ANALYSIS)
    rank = next(c for c in judgement.checks if c.name == "latency_rank")
    assert rank.value < ANALYSIS.significance and rank.passed
    assert judgement.result == "pass"


def test_latency_skipped_with_few_ok_answers_but_errors_still_judged():
    judgement = judge_canary(window([0.005] * 60), window([0.5] * 10, errors=50), ANALYSIS)
    assert judgement.result == "fail"
    assert names(judgement.checks) == {"error_rate", "error_rate_vs_baseline"}
    assert judgement.reason.startswith("error_rate")


def test_latency_not_judged_without_a_ratio():
    analysis = Analysis(max_latency_p99_ratio=None)
    judgement = judge_canary(window([0.005] * 60), window([0.5] * 60), analysis)
    assert judgement.result == "pass" and "latency_rank" not in names(judgement.checks)


# --- traffic and errors -----------------------------------------------------------------------


def test_low_traffic_is_inconclusive_not_fail():
    judgement = judge_canary(window([0.005] * 100), window(errors=10), ANALYSIS)
    assert judgement.result == "inconclusive" and judgement.checks == ()
    assert judgement.reason == "10 candidate requests < min_requests 50"
    # a step's own minimum overrides the analysis's
    assert judge_canary(window([0.005] * 100), window(errors=10), ANALYSIS, 10).result == "fail"


def test_failing_candidate_fails_error_rate():
    judgement = judge_canary(window([0.005] * 50), window(errors=50), ANALYSIS)
    assert judgement.result == "fail"
    assert names(judgement.failed_checks()) == {"error_rate", "error_rate_vs_baseline"}


def test_equal_error_rates_pass():
    base = window([0.005] * 95, errors=5)
    cand = window([0.005] * 95, errors=5)
    judgement = judge_canary(base, cand, ANALYSIS)
    assert judgement.result == "pass"
    assert next(c for c in judgement.checks if c.name == "error_rate").value == 0.05


def test_baseline_failing_as_much_is_not_the_candidates_fault():
    # 7% vs 5% of 100: above the cap and above the baseline, but within noise of it
    judgement = judge_canary(window([0.005] * 95, 5), window([0.005] * 93, 7), ANALYSIS)
    assert judgement.result == "pass"
    # significantly worse than a failing baseline still fails
    judgement = judge_canary(window([0.005] * 95, 5), window([0.005] * 60, 40), ANALYSIS)
    assert names(judgement.failed_checks()) == {"error_rate", "error_rate_vs_baseline"}


def test_significant_regression_below_the_cap_fails():
    base = window([0.005] * 100_000)
    cand = window([0.005] * 99_100, errors=900)  # 0.9%: under the 1% cap, far above 0%
    judgement = judge_canary(base, cand, ANALYSIS)
    assert names(judgement.failed_checks()) == {"error_rate_vs_baseline"}


def test_proportion_greater_is_fishers_exact_test():
    from math import comb

    assert proportion_greater(0, 50, 0, 50) == 1.0
    assert proportion_greater(1, 0, 0, 50) == 1.0
    # every request failed on both sides: all the errors had to fall where they did
    assert proportion_greater(50, 50, 50, 50) == pytest.approx(1.0)

    def exact(a: int, n1: int, b: int, n2: int) -> float:
        errors, total = a + b, n1 + n2
        return sum(
            comb(errors, k) * comb(total - errors, n1 - k) / comb(total, n1)
            for k in range(a, min(errors, n1) + 1)
        )

    for case in [(5, 100, 5, 100), (10, 100, 0, 100), (1, 50, 0, 500), (0, 100, 10, 100)]:
        assert proportion_greater(*case) == pytest.approx(exact(*case), rel=1e-9)
    assert proportion_greater(1, 50, 0, 500) == pytest.approx(50 / 550)  # one error: no evidence
    assert proportion_greater(10, 100, 0, 100) < 0.001


# --- the statistics ---------------------------------------------------------------------------


def test_mann_whitney_matches_known_values():
    # scipy's docs: mannwhitneyu(males, females, method="asymptotic") p = 0.11134688653314041
    # (two-sided); U = 17, one-sided is half
    males, females = [19, 22, 16, 29, 24], [20, 11, 17, 12]
    assert mann_whitney_greater(males, females) == pytest.approx(0.11134688653314041 / 2)
    # by hand, with ties: ranks 1 | 3 3 3 | 5, U = 3 + 3 + 5 - 6 = 5, mean 3,
    # variance 3 * 2 / 12 * (6 - (27 - 3) / 20) = 2.4
    expected = 0.5 * math.erfc((5 - 3 - 0.5) / math.sqrt(2.4) / math.sqrt(2))
    assert mann_whitney_greater([2, 2, 3], [1, 2]) == pytest.approx(expected)
    assert mann_whitney_greater([], [1.0]) == 1.0
    assert mann_whitney_greater([1.0, 1.0], [1.0, 1.0]) == 1.0


def exact_greater(cand, base):
    """Exact permutation p-value of the rank-sum statistic, P(U >= observed)."""
    values = np.concatenate([cand, base])
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    for v in np.unique(values):  # average ranks for ties
        ranks[values == v] = ranks[values == v].mean()
    observed = ranks[: len(cand)].sum()
    sums = [ranks[list(i)].sum() for i in itertools.combinations(range(len(values)), len(cand))]
    return np.mean(np.array(sums) >= observed - 1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_mann_whitney_close_to_the_exact_permutation_test(seed):
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 1, 8).round(1)  # rounding makes ties
    cand = rng.normal(seed * 0.3, 1, 8).round(1)
    assert mann_whitney_greater(cand, base) == pytest.approx(exact_greater(cand, base), abs=0.01)


def test_p99_is_nearest_rank():
    assert p99([]) == 0.0
    assert p99([3.0]) == 3.0
    assert p99(list(range(1, 101))) == 99  # ceil(0.99 * 100) = 99th smallest
    assert p99(list(range(1, 51))) == 50
    assert p99(list(range(1, 1001))) == 990


# --- shadow -----------------------------------------------------------------------------------


def same(names_=("y",)):
    return Comparison({n: OutputDiff(0.0, 0.0) for n in names_})


def test_shadow_hard_failure_fails_at_once():
    tally = ShadowTally()
    tally.add(same(), 0.005, 0.005, True)
    tally.add(Comparison(hard_failure="shape [2,3] vs [2,4]"), 0.005, 0.005, True)
    judgement = judge_shadow(tally, ANALYSIS, ShadowLimits())
    assert judgement.result == "fail"  # 2 pairs, far below min_requests 50
    (check,) = judgement.failed_checks()
    assert (check.name, check.value, check.threshold) == ("hard_failures", 1.0, 0.0)
    assert "shape [2,3] vs [2,4] x1" in check.detail


def test_shadow_low_traffic_is_inconclusive():
    tally = ShadowTally()
    tally.add(None, 0.005, 0.005, False)
    assert judge_shadow(tally, ANALYSIS, ShadowLimits()).result == "inconclusive"


def test_shadow_divergence_over_threshold_fails():
    tally = ShadowTally()
    for _ in range(60):
        tally.add(Comparison({"y": OutputDiff(1.0, 2.0)}), 0.005, 0.005, True)
    judgement = judge_shadow(tally, ANALYSIS, ShadowLimits(max_mean_abs_diff=1e-3))
    (check,) = judgement.failed_checks()
    assert (check.name, check.value, check.threshold) == ("mean_abs_diff[y]", 1.0, 1e-3)
    assert judgement.result == "fail"


def test_shadow_class_scores_and_nan():
    tally = ShadowTally()
    for _ in range(60):
        probs = OutputDiff(0.01, 0.1, top1_agree=0.5, js_divergence=0.2)
        tally.add(
            Comparison({"probs": probs, "y": OutputDiff(math.nan, math.nan)}), 0.005, 0.005, True
        )
    limits = ShadowLimits(max_mean_abs_diff=0.1, min_top1_agreement=0.9, max_js_divergence=0.05)
    judgement = judge_shadow(tally, ANALYSIS, limits)
    assert names(judgement.failed_checks()) == {
        "top1_agreement[probs]",
        "js_divergence[probs]",
        "mean_abs_diff[y]",
    }
    assert "top1_agreement[y]" not in names(judgement.checks)  # not class scores


def test_shadow_candidate_errors():
    tally = ShadowTally()
    for i in range(100):
        if i % 10:
            tally.add(same(), 0.005, 0.005, True)
        else:
            tally.add(None, 0.005, 0.005, False)
    judgement = judge_shadow(tally, ANALYSIS, ShadowLimits())
    assert names(judgement.failed_checks()) == {"candidate_errors"}
    assert judgement.failed_checks()[0].value == pytest.approx(0.1)
    with pytest.raises(ValueError):
        tally.add(None, 0.005, 0.005, True)


def test_identical_shadow_passes():
    rng = np.random.default_rng(5)
    tally = ShadowTally(dropped=3)
    for x in realistic_latencies(rng, 200):
        tally.add(same(("y", "probs")), float(x), float(x), True)
    limits = ShadowLimits(max_mean_abs_diff=1e-6, min_top1_agreement=0.99, max_js_divergence=1e-3)
    judgement = judge_shadow(tally, ANALYSIS, limits)
    assert judgement.result == "pass", judgement.to_doc()
    assert {"hard_failures", "candidate_errors", "mean_abs_diff[probs]"} <= names(judgement.checks)
    assert "3 copies dropped" in judgement.reason


def test_hard_failure_reasons_are_bounded():
    tally = ShadowTally()
    for i in range(20):
        tally.add(Comparison(hard_failure=f"reason {i}"), 0.005, 0.005, True)
    assert len(tally.hard_failure_reasons) == MAX_REASONS
    assert sum(tally.hard_failure_reasons.values()) == 20
    assert tally.hard_failure_reasons["other"] == 20 - (MAX_REASONS - 1)


# --- windows and docs -------------------------------------------------------------------------


def test_windows_round_trip_through_docs():
    rng = np.random.default_rng(11)
    w = window(realistic_latencies(rng, 300), errors=4)
    doc = json.loads(json.dumps(w.to_doc(), allow_nan=False))
    assert VersionWindow.from_doc(doc) == w
    tally = ShadowTally(dropped=2)
    tally.add(Comparison({"p": OutputDiff(0.1, math.inf, 1.0, 0.0)}), 0.004, 0.006, True)
    tally.add(Comparison(hard_failure="dtype"), 0.004, 0.006, True)
    tally.add(None, 0.004, 0.5, False)
    doc = json.loads(json.dumps(tally.to_doc(), allow_nan=False))
    assert ShadowTally.from_doc(doc) == tally
    with pytest.raises(ValueError):
        VersionWindow.from_doc({"requests": 1, "errors": 2, "latencies_s": []})


def test_judgement_doc_lists_every_figure_beside_threshold():
    rng = np.random.default_rng(2)
    base = window(rng.lognormal(math.log(0.005), 0.3, 100))
    cand = window(2 * rng.lognormal(math.log(0.005), 0.3, 100), errors=3)
    judgement = judge_canary(base, cand, ANALYSIS)
    doc = json.loads(json.dumps(judgement.to_doc(), allow_nan=False))
    assert doc["result"] == "fail" and doc["reason"]
    assert (doc["baseline_requests"], doc["candidate_requests"]) == (100, 103)
    assert [c["name"] for c in doc["checks"]] == [
        "error_rate",
        "error_rate_vs_baseline",
        "latency_p99_ratio",
        "latency_rank",
    ]
    for check in doc["checks"]:
        assert set(check) == {"name", "value", "threshold", "passed", "detail"}
        assert check["detail"]
    ratio = doc["checks"][2]
    assert ratio["threshold"] == 1.5 and "ms vs" in ratio["detail"] and not ratio["passed"]


latency_lists = st.lists(st.floats(0, 10, allow_nan=False), max_size=40)


@settings(max_examples=200, deadline=None)
@given(latency_lists, st.integers(0, 5), latency_lists, st.integers(0, 5))
def test_merge_equals_adding_all_samples(a, errors_a, b, errors_b):
    merged = window(a, errors_a)
    merged.merge(window(b, errors_b))
    one = window(a, errors_a)
    for x in b:
        one.add(True, x)
    for _ in range(errors_b):
        one.add(False, 0.001)
    assert merged == one


def test_reservoir_is_bounded_uniform_and_deterministic():
    def big(start):
        return window(np.arange(start, start + 3 * MAX_SAMPLES, dtype=float))

    a, b = big(0), big(0)
    assert a == b and len(a.latencies_s) == MAX_SAMPLES and a.ok == 3 * MAX_SAMPLES
    assert 0.2 < np.mean(np.array(a.latencies_s) < MAX_SAMPLES) < 0.47  # about a third early
    a.merge(window(np.full(MAX_SAMPLES, -1.0)))  # a quarter of the OK answers
    assert len(a.latencies_s) == MAX_SAMPLES and a.requests == 4 * MAX_SAMPLES
    assert a.latencies_s.count(-1.0) == MAX_SAMPLES // 4
    b.merge(window(np.full(MAX_SAMPLES, -1.0)))
    assert a == b


def test_shadow_tallies_merge_like_one():
    rng = np.random.default_rng(9)
    events = []
    for i in range(40):
        if i % 7 == 0:
            events.append((None, 0.004, float(rng.random()), False))
        elif i % 11 == 0:
            events.append((Comparison(hard_failure=f"r{i % 3}"), 0.004, 0.005, True))
        else:
            diff = OutputDiff(float(rng.random()), float(rng.random()), 1.0, float(rng.random()))
            events.append((Comparison({"p": diff}), float(rng.random()), 0.005, True))
    one, first, second = ShadowTally(), ShadowTally(dropped=1), ShadowTally(dropped=2)
    for k, event in enumerate(events):
        one.add(*event)
        (first if k < 25 else second).add(*event)
    first.merge(second)
    assert first.dropped == 3
    first.dropped = 0
    assert (first.pairs, first.candidate_errors, first.hard_failures) == (
        one.pairs,
        one.candidate_errors,
        one.hard_failures,
    )
    assert first.hard_failure_reasons == one.hard_failure_reasons
    assert first.baseline == one.baseline and first.candidate == one.candidate
    merged, whole = first.outputs["p"], one.outputs["p"]
    assert (merged.pairs, merged.class_pairs, merged.max_abs_diff) == (
        whole.pairs,
        whole.class_pairs,
        whole.max_abs_diff,
    )
    assert merged.mean_abs_diff == pytest.approx(whole.mean_abs_diff)
    assert merged.js_divergence == pytest.approx(whole.js_divergence)


def test_binomial_above_matches_the_exact_sum():
    from math import comb

    from policies.rollout_judge import binomial_above

    for errors, n, rate in [(1, 50, 0.01), (4, 50, 0.01), (10, 10, 0.01), (30, 200, 0.1)]:
        exact = sum(comb(n, k) * rate**k * (1 - rate) ** (n - k) for k in range(errors, n + 1))
        assert binomial_above(errors, n, rate) == pytest.approx(exact, rel=1e-9)
    assert binomial_above(0, 50, 0.01) == 1.0  # no error: no evidence
    assert binomial_above(1, 50, 0.0) == 0.0  # a cap of 0: any error is one too many


def test_one_error_in_fifty_is_no_evidence_but_four_are():
    base = VersionWindow(requests=500, errors=0, latencies_s=[0.005] * 500)

    def judged(errors: int) -> str:
        cand = VersionWindow(requests=50, errors=errors, latencies_s=[0.005] * (50 - errors))
        return judge_canary(base, cand, Analysis(max_latency_p99_ratio=None)).result

    assert judged(1) == "pass"
    assert judged(4) == "fail"
    assert judged(50) == "fail"
