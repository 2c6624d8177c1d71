"""A model's progressive rollout, as the side file declares it (config/aspire_config.py "rollout").

    {"models": {"m": {"rollout": {
        "candidate": 2,
        "shadow": {"percent": 100, "duration_s": 60, "max_mean_abs_diff": 1e-3},
        "steps": [{"weight": 5, "duration_s": 60}, {"pause": true},
                  {"weight": 25, "duration_s": 120, "min_requests": 200}],
        "analysis": {"interval_s": 10, "min_requests": 50, "max_error_rate": 0.01,
                     "max_latency_p99_ratio": 1.5},
        "on_failure": "rollback"}}}}

Contract (`parse_rollout`; every error a ValueError naming the key, which the side file's reader
turns into its INVALID_ARGUMENT naming the file and the model):
1. "candidate" (required): a version number (int, or a string of digits) or a version label.
   Which version it is, and whether it is loaded, is the manager's business
   (cluster/rollouts.py): a candidate not loaded yet makes the rollout wait for it.
2. "shadow" (optional): "percent" (0 < p <= 100, default 100) of the unversioned requests are
   copied to the candidate for "duration_s" (> 0, default 60) of judged time; thresholds
   "max_mean_abs_diff" (>= 0, per output tensor), "min_top1_agreement" (0..1) and
   "max_js_divergence" (>= 0) for outputs that look like class scores, each optional;
   "max_pending" (int >= 0, default 64): copies each router holds or runs at once, beyond
   which a copy is dropped and counted; "min_requests" (int >= 1) overrides the analysis'.
3. "steps" (optional): each either {"weight": 0 < w <= 100 (% of the unversioned requests),
   "duration_s": > 0, "min_requests": int >= 1 (optional)} or {"pause": true}, a manual gate
   held until `POST /v1/models/NAME/rollout:resume`. At least one of "shadow" and "steps".
4. "analysis" (optional): "interval_s" (> 0, default 10), "min_requests" (int >= 1, default
   50), "max_error_rate" (0..1, default 0.01), "max_latency_p99_ratio" (>= 1, or null: not
   judged; default 1.5), "significance" (0 < a < 1, default 0.01).
5. "on_failure": "rollback" (default: the candidate's weight goes to 0 at once) or "pause"
   (the rollout holds where it is and waits for a person).
6. "paused": true holds the rollout at its phase (windows are still judged, and a failure still
   acts; a passing window does not advance it).
Unknown keys are errors, as everywhere in the side file.
"""

from __future__ import annotations

import math

from policies.rollout import RolloutSpec, ShadowPhase, Step
from policies.rollout_judge import Analysis, ShadowLimits

_ROLLOUT_KEYS = ("candidate", "shadow", "steps", "analysis", "on_failure", "paused")
_SHADOW_KEYS = (
    "percent",
    "duration_s",
    "max_mean_abs_diff",
    "min_top1_agreement",
    "max_js_divergence",
    "max_pending",
    "min_requests",
)
_STEP_KEYS = ("weight", "duration_s", "min_requests", "pause")
_ANALYSIS_KEYS = (
    "interval_s",
    "min_requests",
    "max_error_rate",
    "max_latency_p99_ratio",
    "significance",
)
ON_FAILURE = ("rollback", "pause")


def _unknown(body: dict, allowed: tuple[str, ...], where: str) -> None:
    for key in body:
        if key not in allowed:
            raise ValueError(f"{where}unknown key {key!r} (expected one of {', '.join(allowed)})")


def _optional(
    body: dict,
    key: str,
    where: str,
    default: float | None,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> float | None:
    value = body.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where}{key} must be a finite number, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{where}{key} must be {'>' if low_open else '>='} {low:g}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{where}{key} must be <= {high:g}, got {value!r}")
    return float(value)


def _number(
    body: dict,
    key: str,
    where: str,
    default: float,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> float:
    value = _optional(body, key, where, default, low, high, low_open)
    if value is None:
        raise ValueError(f"{where}{key} must be a number, got null")
    return value


def _count(body: dict, key: str, where: str, default: int | None, low: int = 1) -> int | None:
    value = body.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{where}{key} must be an integer >= {low}, got {value!r}")
    return value


def _object(value: object, where: str) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"{where}must be an object, got {type(value).__name__}")
    return value


def parse_rollout(body: object) -> RolloutSpec:
    body = _object(body, "rollout ")
    _unknown(body, _ROLLOUT_KEYS, "rollout: ")
    if "candidate" not in body:
        raise ValueError("rollout: candidate is required (a version number or a label)")
    candidate = body["candidate"]
    if isinstance(candidate, bool) or not isinstance(candidate, (int, str)) or candidate == "":
        raise ValueError(f"rollout: candidate must be a version number or label, got {candidate!r}")
    if isinstance(candidate, str) and candidate.isascii() and candidate.isdigit():
        candidate = int(candidate)
    if isinstance(candidate, int) and not 0 <= candidate < 2**63:
        raise ValueError(f"rollout: candidate {candidate!r} is not a valid version number")
    shadow = None
    if body.get("shadow") is not None:
        raw = _object(body["shadow"], "rollout: shadow ")
        where = "rollout: shadow."
        _unknown(raw, _SHADOW_KEYS, where)
        shadow = ShadowPhase(
            percent=_number(raw, "percent", where, 100.0, 0.0, 100.0, low_open=True),
            duration_s=_number(raw, "duration_s", where, 60.0, 0.0, low_open=True),
            limits=ShadowLimits(
                max_mean_abs_diff=_optional(raw, "max_mean_abs_diff", where, None, 0.0),
                min_top1_agreement=_optional(raw, "min_top1_agreement", where, None, 0.0, 1.0),
                max_js_divergence=_optional(raw, "max_js_divergence", where, None, 0.0),
            ),
            max_pending=_count(raw, "max_pending", where, 64, low=0) or 0,
            min_requests=_count(raw, "min_requests", where, None),
        )
    raw_steps = body.get("steps", [])
    if not isinstance(raw_steps, list):
        raise ValueError(f"rollout: steps must be a list, got {type(raw_steps).__name__}")
    steps = []
    for i, raw in enumerate(raw_steps):
        where = f"rollout: steps[{i}]."
        raw = _object(raw, f"rollout: steps[{i}] ")
        _unknown(raw, _STEP_KEYS, where)
        if "pause" in raw:
            if raw["pause"] is not True or len(raw) != 1:
                raise ValueError(f'{where}pause: a manual gate is exactly {{"pause": true}}')
            steps.append(Step(pause=True))
            continue
        for key in ("weight", "duration_s"):
            if raw.get(key) is None:
                raise ValueError(f"{where}{key} is required")
        steps.append(
            Step(
                weight=_number(raw, "weight", where, 0.0, 0.0, 100.0, low_open=True),
                duration_s=_number(raw, "duration_s", where, 0.0, 0.0, low_open=True),
                min_requests=_count(raw, "min_requests", where, None),
            )
        )
    if shadow is None and not steps:
        raise ValueError("rollout: needs a shadow phase or at least one step")
    where = "rollout: analysis."
    raw = _object(body.get("analysis", {}), "rollout: analysis ")
    _unknown(raw, _ANALYSIS_KEYS, where)
    analysis = Analysis(
        interval_s=_number(raw, "interval_s", where, 10.0, 0.0, low_open=True),
        min_requests=_count(raw, "min_requests", where, 50) or 50,
        max_error_rate=_number(raw, "max_error_rate", where, 0.01, 0.0, 1.0),
        max_latency_p99_ratio=_optional(raw, "max_latency_p99_ratio", where, 1.5, 1.0),
        significance=_number(raw, "significance", where, 0.01, 0.0, 1.0, low_open=True),
    )
    if analysis.significance >= 1.0:
        raise ValueError(f"{where}significance must be < 1, got {analysis.significance!r}")
    on_failure = body.get("on_failure", "rollback")
    if on_failure not in ON_FAILURE:
        raise ValueError(f"rollout: on_failure must be 'rollback' or 'pause', got {on_failure!r}")
    paused = body.get("paused", False)
    if not isinstance(paused, bool):
        raise ValueError(f"rollout: paused must be true or false, got {paused!r}")
    return RolloutSpec(candidate, shadow, tuple(steps), analysis, on_failure, paused)
