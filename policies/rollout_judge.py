"""The rollout judge: pure decisions on what a candidate version did beside its baseline.

A progressive rollout runs a candidate version beside the baseline: a shadow phase (copies of
live requests go to the candidate, the two answers are compared) and canary steps (the candidate
takes w% of live traffic). Every `Analysis.interval_s` the rollout's controller hands the judge
one window of per-request figures for both versions and gets a `Judgement`: "pass", "fail" or
"inconclusive", with every figure beside its threshold. Pure: no clock, no I/O, no Ray, no scipy
(the two tests are written out below with numpy and math); the windows are JSON-able so that
routers can ship them to the controller and the journal can record them.

Rules (`min` is the `min_requests` argument when given, else `Analysis.min_requests`):
1. Low traffic is never a failure. Canary: fewer than `min` requests (answers, OK or not) from
   either version -> "inconclusive", no checks. Shadow: fewer than `min` copies answered by the
   baseline (pairs + candidate_errors) -> "inconclusive", except that hard failures with at least
   one pair fail at once, on that check alone (a shape, dtype or NaN mismatch is never noise).
2. `error_rate` (canary) fails when the candidate's error rate > max_error_rate and > the
   baseline's, and the errors are evidence of a true rate above max_error_rate
   (binomial_above < significance: one error in 50 requests, 2 %, is not evidence of a rate
   above 1 %; four are); when the baseline is itself over max_error_rate (clients sending bad
   input to both), the candidate's excess must also be significant (proportion_greater <
   significance), since the cap then says nothing about the candidate and equal true rates
   differ by noise.
3. `error_rate_vs_baseline` (canary) fails when proportion_greater(...) < significance AND the
   candidate's rate exceeds the baseline's by more than max_error_rate / 10: a significant
   regression below the cap fails too, and the effect floor keeps a huge window from failing a
   negligible one. value = the p-value, threshold = significance.
4. Latency (canary): judged when max_latency_p99_ratio is
   set and both versions have at least `min` OK answers, else skipped (said in `reason`). It
   fails only when BOTH ratio = p99(candidate) / p99(baseline) > max_latency_p99_ratio AND
   mann_whitney_greater(candidate, baseline) < significance: a p99 pushed up by a few outliers
   is no evidence, a candidate slower throughout is. Checks `latency_p99_ratio` (value ratio) and
   `latency_rank` (value p) carry that one verdict, so one reads passed=True past its own
   threshold when the other acquits (its detail says so). Known limit: a regression confined to
   the slowest few percent barely moves a rank test, so it fails only with much traffic.
5. Shadow: `hard_failures` fails when > 0; `candidate_errors` when candidate_errors / (pairs +
   candidate_errors) > max_error_rate, with binomial_above < significance as in rule 2 (only
   copies the baseline answered OK count, so its rate is 0). Per output, in name order:
   `mean_abs_diff[name]` fails when its mean > max_mean_abs_diff;
   for class-score outputs `top1_agreement[name]` when < min_top1_agreement, `js_divergence[name]`
   when > max_js_divergence. Unset limits are not checked; a NaN figure fails its check.
   Latency is not judged on copies (a copy is sent after the live answer, beside the next live
   request, so it waits longer by construction); its p99 is shown in `reason`.
6. The result is "fail" exactly when some check has passed=False, "pass" when the window was
   conclusive and none has. `reason` says why in words.

Windows keep at most MAX_SAMPLES latencies per version (a uniform reservoir, deterministic: see
`VersionWindow`); p99 is nearest-rank (an observed value, never interpolated).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

MAX_SAMPLES = 5000  # latencies kept per version per window
MAX_REASONS = 5  # distinct hard-failure reasons kept per window; the rest count as "other"


@dataclass(frozen=True)
class OutputDiff:
    """How one output tensor of the candidate's answer differs from the baseline's, for one
    request answered by both. `top1_agree` and `js_divergence` are None unless the output looks
    like class scores (see deployments/router/shadow_compare.py)."""

    mean_abs_diff: float
    max_abs_diff: float
    top1_agree: float | None = None  # share of rows (0..1) whose arg-max agrees
    js_divergence: float | None = None  # mean over rows, natural log (0..ln 2)


@dataclass(frozen=True)
class Comparison:
    """The comparison of one shadowed request's two answers. `hard_failure` names what makes the
    candidate's answer unusable whatever the thresholds (shape or dtype mismatch, a missing or
    extra output, NaN or Inf where the baseline has none); `outputs` is then empty."""

    outputs: dict[str, OutputDiff] = field(default_factory=dict)
    hard_failure: str | None = None


@dataclass(frozen=True)
class Analysis:
    """The side file's "analysis" object (validated by its parser)."""

    interval_s: float = 10.0
    min_requests: int = 50  # per version per window; fewer: inconclusive
    max_error_rate: float = 0.01
    max_latency_p99_ratio: float | None = 1.5  # None: latency not judged
    significance: float = 0.01  # alpha of the statistical tests


@dataclass(frozen=True)
class ShadowLimits:
    """The side file's "shadow" thresholds; None: not checked."""

    max_mean_abs_diff: float | None = None  # per output tensor, mean over the window's pairs
    min_top1_agreement: float | None = None  # class-score outputs, 0..1
    max_js_divergence: float | None = None  # class-score outputs, mean over pairs


def _num(x: float) -> float | str:
    # Strict JSON has no Infinity or NaN (json.dumps(allow_nan=False) refuses them): send them as
    # strings, which float() reads back.
    return float(x) if math.isfinite(x) else str(float(x))


@dataclass
class VersionWindow:
    """What one version did in one window. `latencies_s` holds the latency of OK answers, at most
    MAX_SAMPLES of them: past that, a uniform reservoir (Algorithm R) whose random.Random is
    seeded with the count of OK answers at the moment it is first needed, so the kept samples
    are a deterministic function of the answers added and merged (and of a doc read back)."""

    requests: int = 0  # answers, OK or not
    errors: int = 0  # answers other than OK
    latencies_s: list[float] = field(default_factory=list)
    _rng: random.Random | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def ok(self) -> int:
        return self.requests - self.errors

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def _random(self) -> random.Random:
        if self._rng is None:
            self._rng = random.Random(self.ok)
        return self._rng

    def add(self, ok: bool, latency_s: float) -> None:
        self.requests += 1
        if not ok:
            self.errors += 1
            return
        if len(self.latencies_s) < MAX_SAMPLES:
            self.latencies_s.append(float(latency_s))
            return
        j = self._random().randrange(self.ok)  # this answer is the ok-th: kept with MAX/ok
        if j < MAX_SAMPLES:
            self.latencies_s[j] = float(latency_s)

    def merge(self, other: VersionWindow) -> None:
        """Adds `other`'s answers. Below MAX_SAMPLES the latencies are concatenated (self's, then
        other's), exactly as if every answer had been added to one window; above, each side
        gives a random subset in proportion to the OK answers it stands for."""
        mine, theirs = list(self.latencies_s), list(other.latencies_s)
        weight_mine, weight_theirs = max(self.ok, len(mine)), max(other.ok, len(theirs))
        self.requests += other.requests
        self.errors += other.errors
        if len(mine) + len(theirs) <= MAX_SAMPLES:
            self.latencies_s = mine + theirs
            return
        k = round(MAX_SAMPLES * weight_mine / (weight_mine + weight_theirs))
        k = min(len(mine), max(MAX_SAMPLES - len(theirs), k))
        rng = self._random()
        self.latencies_s = rng.sample(mine, k) + rng.sample(theirs, MAX_SAMPLES - k)

    def to_doc(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "latencies_s": [_num(x) for x in self.latencies_s],
        }

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> VersionWindow:
        requests, errors = int(doc.get("requests", 0)), int(doc.get("errors", 0))
        latencies = [float(x) for x in doc.get("latencies_s", [])]
        if not 0 <= errors <= requests or len(latencies) > min(requests - errors, MAX_SAMPLES):
            raise ValueError(
                f"inconsistent window: {requests} requests, {errors} errors, "
                f"{len(latencies)} latencies"
            )
        return cls(requests, errors, latencies)


@dataclass
class OutputTally:
    """One output tensor's differences over a window's pairs."""

    pairs: int = 0
    sum_mean_abs_diff: float = 0.0
    max_abs_diff: float = 0.0
    class_pairs: int = 0  # pairs with both top1_agree and js_divergence (class scores)
    sum_top1_agree: float = 0.0
    sum_js: float = 0.0

    @property
    def mean_abs_diff(self) -> float | None:
        return self.sum_mean_abs_diff / self.pairs if self.pairs else None

    @property
    def top1_agreement(self) -> float | None:
        return self.sum_top1_agree / self.class_pairs if self.class_pairs else None

    @property
    def js_divergence(self) -> float | None:
        return self.sum_js / self.class_pairs if self.class_pairs else None

    def add(self, diff: OutputDiff) -> None:
        self.pairs += 1
        self.sum_mean_abs_diff += diff.mean_abs_diff
        # NaN-safe maximum: a NaN difference must not vanish behind max()
        if not diff.max_abs_diff <= self.max_abs_diff:
            self.max_abs_diff = diff.max_abs_diff
        if diff.top1_agree is not None and diff.js_divergence is not None:
            self.class_pairs += 1
            self.sum_top1_agree += diff.top1_agree
            self.sum_js += diff.js_divergence

    def merge(self, other: OutputTally) -> None:
        for k in ("pairs", "sum_mean_abs_diff", "class_pairs", "sum_top1_agree", "sum_js"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        if not other.max_abs_diff <= self.max_abs_diff:
            self.max_abs_diff = other.max_abs_diff

    def to_doc(self) -> dict[str, Any]:
        return {k: _num(v) if isinstance(v, float) else v for k, v in vars(self).items()}

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> OutputTally:
        return cls(**{k: type(v)(doc[k]) for k, v in vars(cls()).items()})  # int or float


@dataclass
class ShadowTally:
    """The shadow comparisons of one window. Only copies the baseline answered OK are added."""

    pairs: int = 0  # copies answered by both (hard failures included)
    candidate_errors: int = 0  # copies the candidate failed while the baseline answered OK
    hard_failures: int = 0
    hard_failure_reasons: dict[str, int] = field(default_factory=dict)
    outputs: dict[str, OutputTally] = field(default_factory=dict)
    baseline: VersionWindow = field(default_factory=VersionWindow)  # on the shadowed requests
    candidate: VersionWindow = field(default_factory=VersionWindow)  # on the same requests
    dropped: int = 0  # copies dropped because the shadow queue was full

    def add(
        self,
        comparison: Comparison | None,
        baseline_latency_s: float,
        candidate_latency_s: float,
        candidate_ok: bool,
    ) -> None:
        """`comparison` is None exactly when the candidate failed (`candidate_ok` False); a
        comparison without a failed candidate's answer is a caller's bug: ValueError."""
        if candidate_ok and comparison is None:
            raise ValueError("a candidate that answered OK needs a comparison")
        self.baseline.add(True, baseline_latency_s)
        self.candidate.add(candidate_ok, candidate_latency_s)
        if not candidate_ok or comparison is None:
            self.candidate_errors += 1
            return
        self.pairs += 1
        if comparison.hard_failure is not None:
            self.hard_failures += 1
            self._count_reason(comparison.hard_failure, 1)
        for name, diff in comparison.outputs.items():
            self.outputs.setdefault(name, OutputTally()).add(diff)

    def _count_reason(self, reason: str, n: int) -> None:
        # bounded: reasons are free text, and a window's doc must stay small
        if reason not in self.hard_failure_reasons and len(self.hard_failure_reasons) >= (
            MAX_REASONS if "other" in self.hard_failure_reasons else MAX_REASONS - 1
        ):
            reason = "other"
        self.hard_failure_reasons[reason] = self.hard_failure_reasons.get(reason, 0) + n

    _COUNTS = ("pairs", "candidate_errors", "hard_failures", "dropped")

    def merge(self, other: ShadowTally) -> None:
        for k in self._COUNTS:
            setattr(self, k, getattr(self, k) + getattr(other, k))
        for reason, n in other.hard_failure_reasons.items():
            self._count_reason(reason, n)
        for name, tally in other.outputs.items():
            self.outputs.setdefault(name, OutputTally()).merge(tally)
        self.baseline.merge(other.baseline)
        self.candidate.merge(other.candidate)

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {k: getattr(self, k) for k in self._COUNTS}
        doc["hard_failure_reasons"] = dict(self.hard_failure_reasons)
        doc["outputs"] = {name: t.to_doc() for name, t in self.outputs.items()}
        return doc | {"baseline": self.baseline.to_doc(), "candidate": self.candidate.to_doc()}

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> ShadowTally:
        return cls(
            **{k: int(doc.get(k, 0)) for k in cls._COUNTS},
            hard_failure_reasons={str(k): int(v) for k, v in doc["hard_failure_reasons"].items()},
            outputs={str(k): OutputTally.from_doc(v) for k, v in doc["outputs"].items()},
            baseline=VersionWindow.from_doc(doc["baseline"]),
            candidate=VersionWindow.from_doc(doc["candidate"]),
        )


@dataclass(frozen=True)
class Check:
    """One figure beside its threshold."""

    name: str  # e.g. "error_rate", "latency_p99_ratio", "mean_abs_diff[y]"
    value: float
    threshold: float
    passed: bool
    detail: str = ""  # human words, e.g. "p99 41.2 ms vs 20.1 ms"

    def to_doc(self) -> dict[str, Any]:
        return {**vars(self), "value": _num(self.value), "threshold": _num(self.threshold)}


@dataclass(frozen=True)
class Judgement:
    result: str  # "pass" | "fail" | "inconclusive"
    checks: tuple[Check, ...]
    baseline_requests: int
    candidate_requests: int
    reason: str = ""

    def failed_checks(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.passed)

    def to_doc(self) -> dict[str, Any]:
        return {**vars(self), "checks": [c.to_doc() for c in self.checks]}


def p99(values: Sequence[float]) -> float:
    """Nearest-rank 99th percentile: the ceil(0.99 n)-th smallest value, an observed one (the
    largest of fewer than 100 values, the second largest of 100 to 199); 0.0 for no values."""
    if len(values) == 0:
        return 0.0
    rank = (99 * len(values) + 99) // 100  # ceil in integers: 0.99 * 100 is not exact in floats
    return float(np.partition(np.asarray(values, dtype=float), rank - 1)[rank - 1])


def _upper_tail(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2.0))  # P(Z > z), Z standard normal


def mann_whitney_greater(candidate: Sequence[float], baseline: Sequence[float]) -> float:
    """One-sided p-value of the Mann-Whitney U test that `candidate` is stochastically greater
    (slower) than `baseline`: normal approximation of U (average ranks for ties, tie-corrected
    variance, continuity correction 0.5), as scipy's mannwhitneyu(alternative="greater",
    method="asymptotic"). Close to the exact test from about 8 values a side. 1.0 for an empty
    side, or when every value is tied."""
    c, b = np.asarray(candidate, dtype=float), np.asarray(baseline, dtype=float)
    n1, n2 = c.size, b.size
    if n1 == 0 or n2 == 0:
        return 1.0
    n = n1 + n2
    _, inverse, counts = np.unique(np.concatenate([c, b]), return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]  # 1-based, ties averaged
    u = float(ranks[:n1].sum()) - n1 * (n1 + 1) / 2.0
    ties = float(np.sum(counts.astype(float) ** 3 - counts))
    variance = n1 * n2 / 12.0 * ((n + 1) - ties / (n * (n - 1)))
    if variance <= 0:
        return 1.0
    return _upper_tail((u - n1 * n2 / 2.0 - 0.5) / math.sqrt(variance))


def proportion_greater(cand_errors: int, cand_n: int, base_errors: int, base_n: int) -> float:
    """One-sided p-value that the candidate's error rate is higher than the baseline's: Fisher's
    exact test (the hypergeometric tail: of all the window's errors, at least this many fell on
    the candidate's requests), exact for the few errors a good window has, where a z-test
    would call one error in 50 against none in 500 significant. 1.0 for an empty side or no
    error at all."""
    total_n, errors = cand_n + base_n, cand_errors + base_errors
    if cand_n <= 0 or base_n <= 0 or errors == 0:
        return 1.0

    def log_choose(n: int, k: int) -> float:
        return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)

    k, top = cand_errors, min(errors, cand_n)
    term = math.exp(
        log_choose(errors, k)
        + log_choose(total_n - errors, cand_n - k)
        - log_choose(total_n, cand_n)
    )
    total = term
    while k < top and term > total * 1e-12:
        term *= (errors - k) * (cand_n - k) / ((k + 1) * (total_n - errors - cand_n + k + 1))
        total += term
        k += 1
    return min(1.0, total)


def binomial_above(errors: int, n: int, rate: float) -> float:
    """One-sided p-value that a true error rate above `rate` made `errors` of `n`: P(X >=
    errors) for X ~ Binomial(n, rate), exact (the tail is summed from `errors` up until its
    terms no longer count). 1.0 when errors <= n * rate (no evidence of more), 0.0 for a rate
    of 0 and any error."""
    if n <= 0 or errors <= n * rate:
        return 1.0
    if rate <= 0.0:
        return 0.0
    if rate >= 1.0:
        return 1.0
    log_p, log_q = math.log(rate), math.log1p(-rate)
    log_choose = math.lgamma(n + 1) - math.lgamma(errors + 1) - math.lgamma(n - errors + 1)
    term = math.exp(log_choose + errors * log_p + (n - errors) * log_q)
    total, k = term, errors
    # past the mode (errors > n * rate) each term is smaller than the one before it
    while k < n and term > total * 1e-12:
        term *= (n - k) / (k + 1) * rate / (1.0 - rate)
        total += term
        k += 1
    return min(1.0, total)


def _latency_checks(
    baseline: VersionWindow, candidate: VersionWindow, analysis: Analysis, minimum: int
) -> tuple[list[Check], str]:
    """Rule 4: the two latency checks, or none and a note saying why they were skipped."""
    max_ratio = analysis.max_latency_p99_ratio
    if max_ratio is None:
        return [], ""
    short = [
        f"{w.ok} OK {who} answers"
        for who, w in (("baseline", baseline), ("candidate", candidate))
        if w.ok < minimum or not w.latencies_s
    ]
    if short:
        return [], f"latency not judged: {' and '.join(short)} < min_requests {minimum}"
    p_base, p_cand = p99(baseline.latencies_s), p99(candidate.latencies_s)
    ratio = p_cand / p_base if p_base > 0 else (math.inf if p_cand > 0 else 1.0)
    p = mann_whitney_greater(candidate.latencies_s, baseline.latencies_s)
    over, significant = not ratio <= max_ratio, p < analysis.significance
    passed = not (over and significant)
    ratio_words = f"p99 {p_cand * 1e3:.1f} ms vs {p_base * 1e3:.1f} ms"
    rank_words = f"Mann-Whitney U p={p:.3g}"
    if over and not significant:
        ratio_words += f"; not failed: rank test not significant ({rank_words})"
    if significant and not over:
        rank_words += f"; not failed: p99 ratio {ratio:.2f} within {max_ratio:g}"
    return [
        Check("latency_p99_ratio", ratio, max_ratio, passed, ratio_words),
        Check("latency_rank", p, analysis.significance, passed, rank_words),
    ], ""


def _verdict(checks: list[Check], base_n: int, cand_n: int, notes: str) -> Judgement:
    failed = [c for c in checks if not c.passed]
    if not failed:
        return Judgement("pass", tuple(checks), base_n, cand_n, notes)
    words = "; ".join(f"{c.name} {c.value:.4g} vs {c.threshold:g} ({c.detail})" for c in failed)
    return Judgement("fail", tuple(checks), base_n, cand_n, words)


def judge_canary(
    baseline: VersionWindow,
    candidate: VersionWindow,
    analysis: Analysis,
    min_requests: int | None = None,
) -> Judgement:
    """Judges one canary window (rules 1-4 and 6 of the module's docstring)."""
    minimum = max(1, analysis.min_requests if min_requests is None else min_requests)
    base_n, cand_n = baseline.requests, candidate.requests
    short = [
        f"{w.requests} {who} requests"
        for who, w in (("baseline", baseline), ("candidate", candidate))
        if w.requests < minimum
    ]
    if short:
        reason = f"{' and '.join(short)} < min_requests {minimum}"
        return Judgement("inconclusive", (), base_n, cand_n, reason)
    alpha, cap = analysis.significance, analysis.max_error_rate
    cand_rate, base_rate = candidate.error_rate, baseline.error_rate
    p = proportion_greater(candidate.errors, cand_n, baseline.errors, base_n)
    rates = f"{cand_rate:.2%} vs baseline {base_rate:.2%}"
    above = binomial_above(candidate.errors, cand_n, cap)
    over_cap = (
        cand_rate > cap
        and cand_rate > base_rate
        and above < alpha
        and (base_rate <= cap or p < alpha)
    )
    if cand_rate > cap and not over_cap:
        rates += (
            f"; not failed: {candidate.errors} of {cand_n} is no evidence of a rate above "
            f"{cap:.2%} (binomial p={above:.3g})"
            if above >= alpha
            else "; not failed: the baseline fails as much"
        )
    floor = cap / 10.0
    regressed = p < alpha and cand_rate - base_rate > floor
    z_words = f"{rates}, Fisher's exact p={p:.3g}, fails past {floor:.3%} more"
    checks = [
        Check("error_rate", cand_rate, cap, not over_cap, rates),
        Check("error_rate_vs_baseline", p, alpha, not regressed, z_words),
    ]
    latency, notes = _latency_checks(baseline, candidate, analysis, minimum)
    return _verdict(checks + latency, base_n, cand_n, notes)


def judge_shadow(
    tally: ShadowTally,
    analysis: Analysis,
    limits: ShadowLimits,
    min_requests: int | None = None,
) -> Judgement:
    """Judges one shadow window (rules 1 and 4-6 of the module's docstring)."""
    minimum = max(1, analysis.min_requests if min_requests is None else min_requests)
    copies = tally.pairs + tally.candidate_errors
    reasons = ", ".join(f"{r} x{n}" for r, n in sorted(tally.hard_failure_reasons.items()))
    hard = Check("hard_failures", float(tally.hard_failures), 0.0, not tally.hard_failures, reasons)
    if copies < minimum:
        if tally.hard_failures > 0 and tally.pairs >= 1:
            return _verdict([hard], copies, copies, "")
        reason = f"{copies} shadowed requests < min_requests {minimum}"
        return Judgement("inconclusive", (), copies, copies, reason)
    rate, cap = tally.candidate_errors / copies, analysis.max_error_rate
    words = f"{tally.candidate_errors} of {copies} copies failed by the candidate only"
    above = binomial_above(tally.candidate_errors, copies, cap)
    if rate > cap and above >= analysis.significance:
        words += f"; not failed: no evidence of a rate above {cap:.2%} (binomial p={above:.3g})"
    checks = [
        hard,
        Check("candidate_errors", rate, cap, rate <= cap or above >= analysis.significance, words),
    ]
    for name in sorted(tally.outputs):
        out = tally.outputs[name]
        figures = (
            ("mean_abs_diff", out.mean_abs_diff, limits.max_mean_abs_diff, False),
            ("top1_agreement", out.top1_agreement, limits.min_top1_agreement, True),
            ("js_divergence", out.js_divergence, limits.max_js_divergence, False),
        )
        for label, value, limit, is_floor in figures:
            if value is None or limit is None:
                continue
            # written so that a NaN figure fails
            passed = value >= limit if is_floor else value <= limit
            detail = f"mean over {out.class_pairs} class-score pairs"
            if label == "mean_abs_diff":
                detail = f"mean over {out.pairs} pairs, max |diff| {out.max_abs_diff:.4g}"
            checks.append(Check(f"{label}[{name}]", value, limit, passed, detail))
    # Latency is not judged here: a copy is sent after the live answer, beside the next live
    # request, so it waits longer than the live call by construction. Its figures are shown.
    notes = (
        f"latency not judged in the shadow phase: p99 {p99(tally.candidate.latencies_s) * 1000:.1f}"
        f" ms (candidate, on copies) vs {p99(tally.baseline.latencies_s) * 1000:.1f} ms (baseline)"
    )
    if tally.dropped:  # not judged: a full shadow queue says nothing about the candidate
        notes += f"; {tally.dropped} copies dropped"
    return _verdict(checks, copies, copies, notes)
