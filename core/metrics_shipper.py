"""How a process's counts reach the manager: a `Shipper` sends what its `Recorder` gathered to the
manager's `MetricsStore` (core/metrics.py) about once a second, numbered, so that nothing is lost
or counted twice while the manager restarts.

Every process that sees requests (router replicas, model replicas) runs one; the manager, which
holds the store, applies its own recorder's deltas directly.
"""

from __future__ import annotations

import threading
import uuid
from typing import Callable

from core.metrics import Deltas, Recorder

# How often routers and replicas ship their counts to the manager.
SHIP_PERIOD_S = 1.0


class Shipper:
    """Ships a Recorder's deltas to the store every `period_s` with `send(deltas)` (a call to the
    manager actor), on a daemon thread; `flush()` ships now (used before reading totals).

    Each shipment is numbered. One whose send failed is kept and sent again, unchanged, before
    anything newer (counts recorded meanwhile wait in the recorder), so a manager that is
    restarting loses no counts, and the store, which applies a shipment number once, never
    counts one twice when a send timed out but arrived."""

    def __init__(
        self,
        recorder: Recorder,
        send: Callable[[Deltas], None],
        period_s: float = SHIP_PERIOD_S,
        rollout: Callable[[], dict | None] | None = None,
    ):
        self.recorder, self._send, self._period_s = recorder, send, period_s
        self._rollout = rollout  # drains what a router saw of rollouts, shipped alongside
        self._source, self._seq = uuid.uuid4().hex, 0
        self._pending: Deltas | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one shipment at a time, so deltas arrive in order
        self._thread = threading.Thread(target=self._run, name="aspire-metrics", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._period_s):
            self.flush()

    def flush(self) -> bool:
        """Ship the pending shipment, then what was recorded since; False if a send failed."""
        with self._lock:
            for _ in range(2):  # the one kept from a failed send, if any, then a fresh one
                if self._pending is None:
                    deltas = self.recorder.drain()
                    if self._rollout is not None:
                        deltas.rollout = self._rollout()
                    if not deltas:
                        return True
                    self._seq += 1
                    deltas.source, deltas.seq = self._source, self._seq
                    self._pending = deltas
                try:
                    self._send(self._pending)
                except Exception:
                    return False
                self._pending = None
            return True

    def stop(self) -> None:
        self._stop.set()
