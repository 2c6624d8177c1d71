"""A rollout's state machine: pure decisions, no clock, no I/O (the manager's part is
cluster/rollouts.py; the judge of each window is policies/rollout_judge.py; the side file's
"rollout" is parsed into a `RolloutSpec` by config/rollout_config.py).

Phases (`RolloutState.phase`):
  waiting      the candidate is not AVAILABLE yet (or no other version serves as baseline);
               the baseline takes every unversioned request.
  shadow       copies of `percent` % of the unversioned requests go to the candidate too;
               clients get the baseline's answers only.
  step         canary step `step` of the spec: the candidate takes its `weight` %.
  gate         a manual gate (`{"pause": true}`): held at the previous step's weight until
               `resume`.
  promoted     the candidate takes 100 % (after the last step).
  rolled_back  a judgement failed: the candidate takes 0 %, stays loaded.

Guarantees:
1. Time in a phase counts only windows that passed (`judged_s`): an inconclusive window (too
   few requests) holds the rollout where it is (`low_traffic`), it never fails or advances it.
2. A failed window ends the rollout at once (`rolled_back`), or with on_failure "pause" holds
   it where it is (`held`) until `resume`, which starts that phase's time again. A window
   that failed on latency alone acts only when the next conclusive window fails too
   (`LATENCY_STRIKES`); until then it is "suspect" and not counted.
3. A paused rollout (the side file's "paused") is judged as usual and a failure acts as usual;
   a passing window does not advance it.
4. The split only ever names the baseline and the candidate; promoted and rolled-back states
   keep their split until the rollout is removed from the side file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from policies.rollout_judge import Analysis, ShadowLimits


@dataclass(frozen=True)
class ShadowPhase:
    percent: float = 100.0
    duration_s: float = 60.0
    limits: ShadowLimits = ShadowLimits()
    max_pending: int = 64
    min_requests: int | None = None  # None: the analysis' min_requests


@dataclass(frozen=True)
class Step:
    """A canary step (`weight` % for `duration_s` of judged time), or a manual gate (`pause`)."""

    weight: float = 0.0
    duration_s: float = 0.0
    min_requests: int | None = None
    pause: bool = False


@dataclass(frozen=True)
class RolloutSpec:
    candidate: int | str
    shadow: ShadowPhase | None = None
    steps: tuple[Step, ...] = ()
    analysis: Analysis = Analysis()
    on_failure: str = "rollback"
    paused: bool = False

    def key(self) -> str:
        """A digest of what the rollout is, `paused` aside: a side file that changes it starts
        the rollout again; one that only pauses or resumes it does not."""
        doc = json.dumps(
            [
                str(self.candidate),
                repr(self.shadow),
                repr(self.steps),
                repr(self.analysis),
                self.on_failure,
            ]
        )
        return hashlib.sha256(doc.encode()).hexdigest()[:16]


ACTIVE = ("shadow", "step", "gate")  # phases in which windows are judged
# Windows in a row whose only failure is latency before the rollout acts: a latency gate run at
# significance 0.01 on heavy-tailed latencies fails about one window in 200 of a candidate as
# fast as its baseline; two in a row, about one pair in 40,000. Errors, divergence and hard
# failures act on the first window.
LATENCY_STRIKES = 2
ENDED = ("promoted", "rolled_back")


@dataclass
class RolloutState:
    key: str  # RolloutSpec.key() of the rollout this state belongs to
    phase: str = "waiting"
    step: int = 0  # index into the spec's steps while in "step" or "gate"
    judged_s: float = 0.0  # time of passing windows in this phase
    held: str = ""  # "" or why a failure holds it (on_failure "pause")
    low_traffic: bool = False  # the last window had too few requests to judge
    strikes: int = 0  # windows in a row failed on latency alone
    baseline: int | None = None
    candidate: int | None = None
    started_at: float | None = None  # wall clock, when the candidate became AVAILABLE
    phase_started_at: float | None = None
    ended_at: float | None = None
    outcome: str = ""  # in words, once promoted or rolled back
    last: dict | None = None  # the last judgement's document
    judgements: dict[str, int] = field(default_factory=dict)  # result -> count

    def to_doc(self) -> dict:
        return asdict(self)

    @classmethod
    def from_doc(cls, doc: dict) -> RolloutState:
        return cls(**doc)


def begin(spec: RolloutSpec, baseline: int, candidate: int, now: float) -> RolloutState:
    """The rollout's first phase, once the candidate is AVAILABLE beside `baseline`."""
    state = RolloutState(spec.key(), baseline=baseline, candidate=candidate, started_at=now)
    if spec.shadow is not None:
        _enter(state, "shadow", 0, now)
    else:
        _enter_step(state, spec, 0, now)
    return state


def _enter(state: RolloutState, phase: str, step: int, now: float) -> None:
    state.phase, state.step, state.judged_s = phase, step, 0.0
    state.held, state.low_traffic, state.phase_started_at = "", False, now
    state.strikes = 0


def _enter_step(state: RolloutState, spec: RolloutSpec, index: int, now: float) -> None:
    if index >= len(spec.steps):
        _enter(state, "promoted", index, now)
        state.ended_at = now
        state.outcome = "promoted: the candidate takes every unversioned request"
    else:
        _enter(state, "gate" if spec.steps[index].pause else "step", index, now)


def duration_s(state: RolloutState, spec: RolloutSpec) -> float | None:
    """Judged time the current phase lasts (None: a gate, or an ended rollout)."""
    if state.phase == "shadow" and spec.shadow is not None:
        return spec.shadow.duration_s
    if state.phase == "step":
        return spec.steps[state.step].duration_s
    return None


def min_requests(state: RolloutState, spec: RolloutSpec) -> int:
    """Requests each version needs in a window of the current phase for it to be judged."""
    own = None
    if state.phase == "shadow" and spec.shadow is not None:
        own = spec.shadow.min_requests
    elif state.phase in ("step", "gate") and state.step < len(spec.steps):
        own = spec.steps[state.step].min_requests
    return own if own is not None else spec.analysis.min_requests


def candidate_weight(state: RolloutState, spec: RolloutSpec) -> float:
    """Percent of the unversioned requests the candidate takes now."""
    if state.phase == "promoted":
        return 100.0
    if state.phase == "step":
        return spec.steps[state.step].weight
    if state.phase == "gate":  # the last step before it, else nothing
        earlier = [s.weight for s in spec.steps[: state.step] if not s.pause]
        return earlier[-1] if earlier else 0.0
    return 0.0


def shadow_percent(state: RolloutState, spec: RolloutSpec) -> float:
    return spec.shadow.percent if state.phase == "shadow" and spec.shadow is not None else 0.0


def shown_phase(state: RolloutState, spec: RolloutSpec) -> str:
    """The phase as people see it: an active rollout that a person or a failure holds is
    "paused"."""
    if state.phase in ACTIVE and (spec.paused or state.held):
        return "paused"
    return state.phase


def after_judgement(
    state: RolloutState,
    spec: RolloutSpec,
    result: str,
    window_s: float,
    doc: dict,
    now: float,
) -> str | None:
    """Apply one window's judgement (`result` "pass", "fail" or "inconclusive", `doc` its
    document) to an active rollout. Returns the decision it led to ("advanced", "promoted",
    "rolled_back", "held", "suspect") or None when the rollout stays in its phase."""
    state.last = doc
    state.judgements[result] = state.judgements.get(result, 0) + 1
    crossed = [c.get("name", "") for c in doc.get("checks", ()) if not c.get("passed", True)]
    if result == "fail" and crossed and all(n.startswith("latency_") for n in crossed):
        state.strikes += 1
        if state.strikes < LATENCY_STRIKES:
            return "suspect"  # the window is not counted; the next one decides
    elif result == "pass":
        state.strikes = 0
    if result == "fail":
        if spec.on_failure == "pause":
            state.held = "a judgement failed (on_failure: pause)"
            return "held"
        _enter(state, "rolled_back", state.step, now)
        state.ended_at = now
        state.outcome = "rolled back: " + (doc.get("reason") or "a judgement failed")
        return "rolled_back"
    state.low_traffic = result == "inconclusive"
    if result != "pass" or spec.paused or state.held or state.phase == "gate":
        return None
    state.judged_s += window_s
    length = duration_s(state, spec)
    if length is None or state.judged_s < length:
        return None
    _enter_step(state, spec, 0 if state.phase == "shadow" else state.step + 1, now)
    return "promoted" if state.phase == "promoted" else "advanced"


def resume(state: RolloutState, spec: RolloutSpec, now: float) -> str:
    """A person's go-ahead: passes a manual gate, or lets a rollout that a failure held run
    its phase again from the start. Returns the decision; ValueError if there is nothing to
    resume."""
    if state.phase == "gate":
        _enter_step(state, spec, state.step + 1, now)
        return "promoted" if state.phase == "promoted" else "advanced"
    if state.phase in ACTIVE and state.held:
        _enter(state, state.phase, state.step, now)
        return "resumed"
    raise ValueError(f"the rollout is {shown_phase(state, spec)}: nothing waits to be resumed")


def hold(state: RolloutState, spec: RolloutSpec) -> str:
    """A person's stop: an active rollout holds where it is until `resume`."""
    if state.phase not in ACTIVE:
        raise ValueError(f"the rollout is {shown_phase(state, spec)}: nothing runs to pause")
    state.held = "paused by a person"
    return "held"
