"""Progressive delivery: the manager's part of each model's rollout (the side file's "rollout",
config/rollout_config.py).

Data flow:
1. `set_specs` takes the rollouts the side file declares. A new or changed one starts waiting
   for its candidate; one that only changed "paused" keeps its state; one removed is dropped
   (the side file's "traffic" is in force again).
2. Routers time every unversioned request of a model whose rollout runs, by version, compare
   the shadow copies' answers (deployments/router/rollout_tap.py) and ship the figures with
   their metrics about once a second; `observe` adds them to the model's open window.
3. `tick` (the control plane runs it every TICK_S) starts a waiting rollout once its candidate
   is AVAILABLE beside another version (the baseline: the version that would take the
   unversioned requests without the candidate), and judges each window once `interval_s` has
   passed (policies/rollout_judge.py); policies/rollout.py decides what follows.
4. `routes` gives the split of every model with a rollout (in place of the side file's
   "traffic") and the routes routers follow (core/contracts.py RolloutRoute); the control
   plane publishes them in the serving map. A rollout waiting for its candidate pins the
   unversioned requests to the baseline and holds the candidate back from them
   (`ServingMap.held_back`, read by the router's resolve), so a candidate that loads takes
   none of them, even in the moment before the next tick names its baseline.
5. Every decision (each judgement with its figures, each change of phase, a person's pause or
   resume) is one JSON event: logged on "aspire.rollout" as one line, and kept with the state
   under `rollout/<model>/state` in the manager's state store before its traffic moves. A
   restarted manager resumes each rollout whose spec is unchanged at the same phase and step,
   with the judged time it had; routers keep the last split while no manager answers, so no
   traffic moves meanwhile.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from core import metrics
from core.contracts import RolloutRoute
from core.errors import AspireError
from policies import rollout as machine
from policies.rollout import RolloutSpec
from policies.rollout_judge import (
    Judgement,
    ShadowTally,
    VersionWindow,
    judge_canary,
    judge_shadow,
)
from policies.traffic import TrafficSplit, effective_weights

log = logging.getLogger("aspire.rollout")

TICK_S = 0.25
EVENTS_KEPT = 100  # per model, in the store and in status


@dataclass
class _Window:
    opened_at: float
    baseline: VersionWindow = field(default_factory=VersionWindow)
    candidate: VersionWindow = field(default_factory=VersionWindow)
    shadow: ShadowTally = field(default_factory=ShadowTally)


class Rollouts:
    def __init__(
        self,
        store=None,
        state_prefix: str = "",
        restarted: bool = False,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ):
        self._store, self._prefix = store, state_prefix + "rollout/"
        self._clock, self._wall = clock, wall
        self._lock = threading.Lock()
        self._specs: dict[str, RolloutSpec] = {}
        self._states: dict[str, machine.RolloutState] = {}
        self._windows: dict[str, _Window] = {}
        self._events: dict[str, deque] = {}
        self._side_traffic: dict[str, tuple] = {}  # the side file's splits: who is baseline
        self.recorder = metrics.Recorder()  # judgements; the control plane drains it
        self._stored: dict[str, dict] = self._read() if restarted and store is not None else {}

    # ---- the side file --------------------------------------------------------------------
    def set_specs(self, specs: dict[str, RolloutSpec]) -> None:
        with self._lock:
            for name in [n for n in self._specs if n not in specs]:
                self._specs.pop(name)
                self._states.pop(name, None)
                self._windows.pop(name, None)
                self._events.pop(name, None)
                self._forget(name)
                log.info(json.dumps({"model": name, "decision": "removed"}))
            for name, spec in specs.items():
                state = self._states.get(name)
                old = self._specs.get(name)
                self._specs[name] = spec
                if state is not None and state.key == spec.key():
                    if old is not None and old.paused != spec.paused:
                        self._event(name, "paused" if spec.paused else "resumed", by="side file")
                        self._save(name)
                    continue
                stored = self._stored.pop(name, None)
                if stored is not None and stored["state"].get("key") == spec.key():
                    self._states[name] = machine.RolloutState.from_doc(stored["state"])
                    self._events[name] = deque(stored.get("events", ()), maxlen=EVENTS_KEPT)
                    self._windows[name] = _Window(self._clock())
                    self._event(name, "resumed_after_restart", **self._where(name))
                else:
                    self._states[name] = machine.RolloutState(spec.key())
                    self._events[name] = deque(maxlen=EVENTS_KEPT)
                    self._windows[name] = _Window(self._clock())
                    self._event(name, "declared", candidate=spec.candidate)
                self._save(name)

    def active(self) -> bool:
        with self._lock:
            return bool(self._specs)

    def declared(self) -> set[str]:
        """The models whose rollout decides their split."""
        with self._lock:
            return set(self._specs)

    # ---- what routers saw -------------------------------------------------------------------
    def observe(self, shipment: dict) -> None:
        """A router's figures: {model: {"versions": {version: VersionWindow doc}, "shadow":
        {"baseline", "candidate", "tally": ShadowTally doc}}}."""
        with self._lock:
            for name, seen in shipment.items():
                state, window = self._states.get(name), self._windows.get(name)
                if state is None or window is None or state.phase not in machine.ACTIVE:
                    continue
                for version, doc in seen.get("versions", {}).items():
                    if int(version) == state.baseline:
                        window.baseline.merge(VersionWindow.from_doc(doc))
                    elif int(version) == state.candidate:
                        window.candidate.merge(VersionWindow.from_doc(doc))
                shadow = seen.get("shadow")
                if shadow and (shadow["baseline"], shadow["candidate"]) == (
                    state.baseline,
                    state.candidate,
                ):
                    window.shadow.merge(ShadowTally.from_doc(shadow["tally"]))

    # ---- the loop ---------------------------------------------------------------------------
    def tick(self, models: dict[str, set[int]], labels: dict[str, dict[str, int]]) -> None:
        """Start rollouts whose candidate serves and judge the windows that are due
        (`models`: the AVAILABLE versions of each model)."""
        with self._lock:
            now = self._clock()
            for name, spec in self._specs.items():
                state = self._states[name]
                available = models.get(name, set())
                candidate = self._candidate(spec, labels.get(name, {}))
                if state.phase == "waiting":
                    baseline = self._baseline(name, available, candidate, labels)
                    if candidate in available and baseline is not None:
                        self._states[name] = machine.begin(spec, baseline, candidate, self._wall())
                        self._windows[name] = _Window(now)
                        self._event(name, "started", **self._where(name))
                        self._save(name)
                    continue
                if state.phase not in machine.ACTIVE:
                    continue
                if state.candidate not in available:
                    machine.after_judgement(
                        state,
                        spec,
                        "fail",
                        0.0,
                        {"result": "fail", "reason": "the candidate stopped serving"},
                        self._wall(),
                    )
                    self._event(name, "rolled_back", reason="the candidate stopped serving")
                    self._save(name)
                    continue
                window = self._windows[name]
                if now - window.opened_at < spec.analysis.interval_s:
                    continue
                self._judge(name, spec, state, window, now)

    def _judge(self, name, spec, state, window: _Window, now: float) -> None:
        phase = state.phase
        least = machine.min_requests(state, spec)
        judgement: Judgement
        if phase == "shadow":
            assert spec.shadow is not None
            judgement = judge_shadow(window.shadow, spec.analysis, spec.shadow.limits, least)
        else:
            judgement = judge_canary(window.baseline, window.candidate, spec.analysis, least)
        doc = judgement.to_doc()
        if phase == "shadow":
            doc["outputs"] = {
                output: {
                    "mean_abs_diff": t.sum_mean_abs_diff / t.pairs if t.pairs else 0.0,
                    "max_abs_diff": t.max_abs_diff,
                    **(
                        {
                            "top1_agreement": t.sum_top1_agree / t.class_pairs,
                            "js_divergence": t.sum_js / t.class_pairs,
                        }
                        if t.class_pairs
                        else {}
                    ),
                }
                for output, t in window.shadow.outputs.items()
            }
            doc["dropped"] = window.shadow.dropped
        doc["window_s"] = round(now - window.opened_at, 3)
        doc["phase"] = phase
        doc["step"] = state.step + 1 if phase in ("step", "gate") else None
        doc["at"] = self._wall()
        self._windows[name] = _Window(now)
        self.recorder.inc(
            metrics.ASPIRE_ROLLOUT_JUDGEMENTS,
            metrics.labels_for(metrics.ASPIRE_ROLLOUT_JUDGEMENTS, name, phase, judgement.result),
        )
        decision = machine.after_judgement(
            state, spec, judgement.result, now - window.opened_at, doc, self._wall()
        )
        self._event(name, "judged", judgement=doc)
        if decision is not None:
            self._event(name, decision, **self._where(name))
        self._save(name)

    # ---- the split ------------------------------------------------------------------------
    def routes(
        self,
        models: dict[str, set[int]],
        labels: dict[str, dict[str, int]],
    ) -> tuple[dict[str, tuple], dict[str, RolloutRoute], dict[str, int]]:
        """(every model's split: the side file's (`set_side_traffic`), or its rollout's; the
        running rollouts' routes; the candidates of rollouts not started, which unversioned
        requests never go to while another version serves)."""
        routes: dict[str, RolloutRoute] = {}
        held_back: dict[str, int] = {}
        with self._lock:
            traffic = dict(self._side_traffic)
            for name, spec in self._specs.items():
                state = self._states[name]
                if state.phase == "waiting":
                    candidate = self._candidate(spec, labels.get(name, {}))
                    baseline = self._baseline(name, models.get(name, set()), candidate, labels)
                    if baseline is not None:
                        traffic[name] = ((baseline, 100.0),)
                    if candidate is not None:
                        held_back[name] = candidate
                    continue
                assert state.baseline is not None and state.candidate is not None
                weight = machine.candidate_weight(state, spec)
                split = [(state.baseline, 100.0 - weight), (state.candidate, weight)]
                traffic[name] = tuple((v, w) for v, w in split if w > 0)
                if state.phase in machine.ACTIVE:
                    routes[name] = RolloutRoute(
                        state.baseline,
                        state.candidate,
                        machine.shadow_percent(state, spec),
                        spec.shadow.max_pending if spec.shadow is not None else 0,
                    )
        return traffic, routes, held_back

    def _candidate(self, spec: RolloutSpec, labels: dict[str, int]) -> int | None:
        if isinstance(spec.candidate, int):
            return spec.candidate
        return labels.get(spec.candidate)

    def _baseline(self, name, available: set[int], candidate, labels) -> int | None:
        """The version that would take the unversioned requests without the candidate."""
        others = available - {candidate}
        if not others:
            return None
        split = self._side_traffic.get(name)
        weights = effective_weights(
            TrafficSplit(split) if split else None, labels.get(name, {}), others
        )
        return max(weights, key=lambda v: (weights[v], v))

    def set_side_traffic(self, traffic: dict[str, tuple]) -> None:
        with self._lock:
            self._side_traffic = dict(traffic)

    # ---- a person's commands --------------------------------------------------------------
    def command(self, name: str, action: str) -> dict:
        """`pause` or `resume` the rollout of `name`; its status after, or AspireError."""
        with self._lock:
            spec, state = self._specs.get(name), self._states.get(name)
            if spec is None or state is None:
                raise AspireError(f"Model {name} has no rollout", "NOT_FOUND")
            try:
                if action == "resume":
                    decision = machine.resume(state, spec, self._wall())
                elif action == "pause":
                    decision = machine.hold(state, spec)
                else:
                    raise AspireError(f"Unknown rollout action: {action}", "INVALID_ARGUMENT")
            except ValueError as exc:
                raise AspireError(str(exc), "FAILED_PRECONDITION") from None
            self._windows[name] = _Window(self._clock())
            self._event(name, decision, by="a person", **self._where(name))
            self._save(name)
            return self._status(name)

    # ---- what people see ------------------------------------------------------------------
    def status(self, name: str | None = None) -> dict:
        """{model: status}; with `name`, that model's status (NOT_FOUND without a rollout)."""
        with self._lock:
            if name is None:
                return {n: self._status(n) for n in sorted(self._specs)}
            if name not in self._specs:
                raise AspireError(f"Model {name} has no rollout", "NOT_FOUND")
            return self._status(name, events=True)

    def _status(self, name: str, events: bool = False) -> dict:
        spec, state = self._specs[name], self._states[name]
        length = machine.duration_s(state, spec)
        window = self._windows.get(name)
        doc: dict[str, object] = {
            "in_force": "rollout",
            "candidate": spec.candidate,
            "baseline_version": state.baseline,
            "candidate_version": state.candidate,
            "phase": machine.shown_phase(state, spec),
            "step": state.step + 1 if state.phase in ("step", "gate") else None,
            "steps": len(spec.steps),
            "candidate_weight": machine.candidate_weight(state, spec),
            "shadow_percent": machine.shadow_percent(state, spec),
            "time_left_s": None if length is None else round(max(0.0, length - state.judged_s), 1),
            "next_judgement_in_s": (
                round(max(0.0, spec.analysis.interval_s - (self._clock() - window.opened_at)), 1)
                if window is not None and state.phase in machine.ACTIVE
                else None
            ),
            "low_traffic": state.low_traffic,
            "latency_strikes": state.strikes,
            "held": state.held,
            "paused": spec.paused,
            "on_failure": spec.on_failure,
            "outcome": state.outcome,
            "judgements": dict(state.judgements),
            "last_judgement": state.last,
        }
        if events:
            doc["events"] = list(self._events.get(name, ()))
        return doc

    def metrics_state(self) -> dict[str, list[dict]]:
        """The gauges' rows (core/metrics.py render_aspire)."""
        phases, weights, divergence = [], [], []
        with self._lock:
            for name, spec in sorted(self._specs.items()):
                state = self._states[name]
                phases.append({"model": name, "phase": machine.shown_phase(state, spec)})
                if state.candidate is not None:
                    weights.append(
                        {
                            "model": name,
                            "candidate": state.candidate,
                            "weight": machine.candidate_weight(state, spec),
                        }
                    )
                for output, figures in ((state.last or {}).get("outputs") or {}).items():
                    for figure, value in figures.items():
                        divergence.append(
                            {"model": name, "output": output, "figure": figure, "value": value}
                        )
        return {"rollouts": phases, "rollout_weights": weights, "rollout_divergence": divergence}

    # ---- events and the store ---------------------------------------------------------------
    def _where(self, name: str) -> dict:
        spec, state = self._specs[name], self._states[name]
        return {
            "phase": machine.shown_phase(state, spec),
            "step": state.step + 1 if state.phase in ("step", "gate") else None,
            "candidate_weight": machine.candidate_weight(state, spec),
            "baseline": state.baseline,
            "candidate": state.candidate,
        }

    def _event(self, name: str, decision: str, **figures) -> None:
        event = {"at": round(self._wall(), 3), "model": name, "decision": decision, **figures}
        self._events.setdefault(name, deque(maxlen=EVENTS_KEPT)).append(event)
        log.info(json.dumps(event, default=str))

    def _save(self, name: str) -> None:
        if self._store is None:
            return
        doc = {"state": self._states[name].to_doc(), "events": list(self._events[name])}
        try:
            self._store.put(f"{self._prefix}{name}/state", json.dumps(doc).encode())
        except Exception as exc:  # the next decision writes it again
            log.error("Storing the rollout of %s failed: %s", name, exc)

    def _forget(self, name: str) -> None:
        if self._store is not None:
            try:
                self._store.delete_prefix(f"{self._prefix}{name}/")
            except Exception as exc:
                log.error("Removing the stored rollout of %s failed: %s", name, exc)

    def _read(self) -> dict[str, dict]:
        try:
            docs = self._store.get_prefix(self._prefix)
        except Exception as exc:
            log.error("Cannot read the stored rollouts: %s", exc)
            return {}
        stored = {}
        for key, data in docs.items():
            name = key[len(self._prefix) :].rsplit("/", 1)[0]
            try:
                stored[name] = json.loads(data)
            except ValueError:
                log.error("The stored rollout of %s cannot be read; it starts again", name)
        return stored


# ---- `aspire status` ------------------------------------------------------------------------
def phase_words(status: dict) -> str:
    """A rollout's phase as `aspire status` shows it: "shadowing 100%", "step 2 of 3 at 25%",
    "paused at step 2 of 3 (...)", "gate before step 3 of 3", "promoted", "rolled back"."""
    phase, step, steps = status["phase"], status["step"], status["steps"]
    where = f"step {step} of {steps}" if step else "shadowing"
    if phase == "waiting":
        return "waiting for the candidate to be AVAILABLE"
    if phase == "shadow":
        return f"shadowing {status['shadow_percent']:g}%"
    if phase == "step":
        return f"step {step} of {steps} at {status['candidate_weight']:g}%"
    if phase == "gate":
        return f"gate {step} of {steps}: held at {status['candidate_weight']:g}% until resumed"
    if phase == "paused":
        why = status["held"] or "paused in the side file"
        return f"paused at {where} ({why})"
    return phase.replace("_", " ")


def status_lines(rollouts: dict[str, dict]) -> list[str]:
    """The rollouts section of `aspire status`: one row per model, then the last judgement's
    figures beside their thresholds."""
    if not rollouts:
        return []
    rows = [("ROLLOUT", "PHASE", "BASELINE", "CANDIDATE", "WEIGHT", "STEP TIME LEFT", "LAST")]
    details = []
    for name, s in rollouts.items():
        last = s.get("last_judgement") or {}
        left = s["time_left_s"]
        if left is not None and s["low_traffic"]:
            left_cell = f"{left:g} s (held: too few requests)"
        else:
            left_cell = "" if left is None else f"{left:g} s"
        rows.append(
            (
                name,
                phase_words(s),
                "" if s["baseline_version"] is None else str(s["baseline_version"]),
                str(
                    s["candidate_version"] if s["candidate_version"] is not None else s["candidate"]
                ),
                f"{s['candidate_weight']:g}%",
                left_cell,
                last.get("result", ""),
            )
        )
        if s["outcome"]:
            details.append(f"  {name}: {s['outcome']}")
        if last:
            figures = "; ".join(
                f"{c['name']} {c['value']:.4g} ({'ok' if c['passed'] else 'CROSSED'}, "
                f"limit {c['threshold']:.4g})"
                for c in last.get("checks", ())
            )
            reason = f" [{last['reason']}]" if last.get("reason") else ""
            details.append(f"  {name}: last judgement {last['result']}{reason}: {figures}")
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    table = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return table + details
