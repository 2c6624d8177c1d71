"""The router's part of a rollout (cluster/rollouts.py): timing the two versions' answers, and
shadow copies of the baseline's requests to the candidate.

For a model whose rollout runs, the serving map carries a `RolloutRoute`. Every unversioned
inference request (REST, gRPC and v2) that the split sends to the baseline or the candidate
goes through `RolloutTap.call`:
1. Its version call is timed; OK or not and the latency go into that version's window
   (policies/rollout_judge.py VersionWindow). A client that went away is not counted.
2. In the shadow phase, after the baseline answered OK, a copy of `shadow_percent` % of the
   requests is sent to the candidate as a task of its own: the client has its answer already
   and never waits on the copy, nor sees its answer or its error.
3. Copies go through a bounded queue: at most `max_pending` per model are pending or running
   at this router; a copy beyond that is dropped and counted, never waited for.
4. The two answers are compared (deployments/router/shadow_compare.py) and added to the
   model's ShadowTally, with both latencies.
5. `drain()` hands what was gathered since the last call to the router's metrics shipper
   (core/metrics_shipper.py), which ships it to the manager with the counts about once a second.
Shadow copies are counted in aspire_rollout_shadow_requests_total by outcome: compared,
candidate_error, hard_failure, dropped.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from typing import Any

from core import metrics
from core.contracts import RolloutRoute, VersionAddress
from core.errors import AspireError
from deployments.router.shadow_compare import SHADOWED_METHODS, compare_answers
from policies.rollout_judge import ShadowTally, VersionWindow

log = logging.getLogger("aspire.router")

# The version calls a rollout judges: inference, on every API (not metadata).
OBSERVED_METHODS = frozenset(
    {
        "predict",
        "classify",
        "regress",
        "Predict",
        "Classify",
        "Regress",
        "MultiInference",
        "v2_infer",
        "v2_grpc_infer",
    }
)


class RolloutTap:
    def __init__(self, recorder: metrics.Recorder):
        self._recorder = recorder
        self._lock = threading.Lock()  # the event loop adds; the shipper's thread drains
        self._versions: dict[str, dict[int, VersionWindow]] = {}
        self._shadow: dict[str, tuple[int, int, ShadowTally]] = {}
        self._pending: dict[str, int] = {}  # shadow copies pending or running (event loop only)
        self._tasks: set[asyncio.Task] = set()

    async def call(
        self,
        core: Any,  # deployments/router/core.py RouterCore: its `call` and `map`
        name: str,
        route: RolloutRoute,
        version: int,
        address: VersionAddress,
        method: str,
        payload: bytes,
    ) -> bytes:
        started = time.perf_counter()
        try:
            answer = await core.call(address, method, payload)
        except AspireError as err:
            if err.code != "CANCELLED":
                self._note(name, version, False, time.perf_counter() - started)
            raise
        latency = time.perf_counter() - started
        self._note(name, version, True, latency)
        if (
            version == route.baseline
            and route.shadow_percent > 0
            and method in SHADOWED_METHODS
            and (route.shadow_percent >= 100 or random.random() * 100 < route.shadow_percent)
        ):
            self._copy(core, name, route, method, payload, answer, latency)
        return answer

    def _note(self, name: str, version: int, ok: bool, latency_s: float) -> None:
        with self._lock:
            windows = self._versions.setdefault(name, {})
            window = windows.get(version)
            if window is None:
                window = windows[version] = VersionWindow()
            window.add(ok, latency_s)

    def _tally(self, name: str, route: RolloutRoute) -> ShadowTally:
        # callers hold the lock
        held = self._shadow.get(name)
        if held is None or held[:2] != (route.baseline, route.candidate):
            held = self._shadow[name] = (route.baseline, route.candidate, ShadowTally())
        return held[2]

    def _copy(
        self,
        core: Any,
        name: str,
        route: RolloutRoute,
        method: str,
        payload: bytes,
        answer: bytes,
        latency_s: float,
    ) -> None:
        pending = self._pending.get(name, 0)
        address = core.map.models.get(name, {}).get(route.candidate)
        if pending >= route.max_pending or address is None:
            with self._lock:
                self._tally(name, route).dropped += 1
            self._count(name, "dropped")
            return
        self._pending[name] = pending + 1
        task = asyncio.get_running_loop().create_task(
            self._shadow_call(core, name, route, address, method, payload, answer, latency_s)
        )
        self._tasks.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._tasks.discard)

    async def _shadow_call(
        self,
        core: Any,
        name: str,
        route: RolloutRoute,
        address: VersionAddress,
        method: str,
        payload: bytes,
        baseline_answer: bytes,
        baseline_latency_s: float,
    ) -> None:
        try:
            started = time.perf_counter()
            try:
                candidate_answer = await core.call(address, method, payload)
                ok = True
            except AspireError:
                candidate_answer, ok = b"", False
            latency = time.perf_counter() - started
            comparison = compare_answers(method, baseline_answer, candidate_answer) if ok else None
            with self._lock:
                self._tally(name, route).add(comparison, baseline_latency_s, latency, ok)
            if not ok:
                outcome = "candidate_error"
            elif comparison is not None and comparison.hard_failure:
                outcome = "hard_failure"
            else:
                outcome = "compared"
            self._count(name, outcome)
        except Exception:  # a copy never takes anything down with it
            log.exception("shadow copy to %s version %d failed", name, route.candidate)
        finally:
            self._pending[name] -= 1

    def _count(self, name: str, outcome: str) -> None:
        self._recorder.inc(
            metrics.ASPIRE_SHADOW_REQUESTS,
            metrics.labels_for(metrics.ASPIRE_SHADOW_REQUESTS, name, outcome),
        )

    def drain(self) -> dict | None:
        """What was gathered since the last drain, for the manager (cluster/rollouts.py
        `Rollouts.observe`); None when nothing was."""
        with self._lock:
            versions, shadow = self._versions, self._shadow
            self._versions, self._shadow = {}, {}
        if not versions and not shadow:
            return None
        shipment: dict[str, dict] = {}
        for name, windows in versions.items():
            shipment.setdefault(name, {})["versions"] = {
                str(v): w.to_doc() for v, w in windows.items()
            }
        for name, (baseline, candidate, tally) in shadow.items():
            shipment.setdefault(name, {})["shadow"] = {
                "baseline": baseline,
                "candidate": candidate,
                "tally": tally.to_doc(),
            }
        return shipment
