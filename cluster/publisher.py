"""The serving map's publication: epochs, the routers that follow them, and the waits for them.

The manager builds the map (cluster/manager.py `serving_map`); this part numbers it and keeps
track of which router has seen which number:
1. `publish()` makes a new epoch visible (under the manager's lock). Epochs only grow,
   across restarts too: a ceiling is stored before any epoch above the last one becomes
   visible, `EPOCH_BLOCK` epochs at a time (one write covers many publications), and a
   restarted manager continues above it (`continue_from`), so every router holding an older
   map fetches the new one.
2. Routers long-poll `wait_for_newer(known, router_id, timeout_s)` for `poll_s`; each poll
   acknowledges the epoch the router applies.
3. Before a deployment is deleted, `wait_for_routers(epoch)` waits until every live router (one
   that polled within `lease_s`) has acknowledged `epoch`, for at most `ack_timeout_s`. After a
   restart the manager does not know which routers exist, so it first waits out the grace
   (`router_grace_s`), by which time every live router has polled.

Time comes from the injected `clock` and `sleep`: a test drives the grace and the leases with a
fake clock instead of waiting for them.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from cluster.manager_state import StateStore, dumps

log = logging.getLogger("aspire.manager")

EPOCH_BLOCK = 1000  # serving-map epochs covered by one write of the ceiling
# A router long-polls for `poll_s` (the serving map carries it; ROUTER_POLL_S by default) and
# polls again at most 1 s after a failed poll (deployments/router/core.py), so
# `router_grace_s(poll_s)` after a restarted manager answers again, every live router has polled
# and is known. (Counted from the restore, moments before the new incarnation answers; the last
# second is margin.)
ROUTER_POLL_S = 5.0


def router_grace_s(poll_s: float) -> float:
    return poll_s + 1.0 + 1.0


class Publisher:
    """Shares the manager's condition: `publish()` and the waits use its lock, and a
    publication or an acknowledgement wakes whoever waits on it."""

    def __init__(
        self,
        changed: threading.Condition,
        *,
        store: StateStore | None = None,
        ceiling_key: str = "epoch",
        poll_s: float = ROUTER_POLL_S,
        grace_s: float | None = None,
        ack_timeout_s: float = 10.0,
        lease_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self._changed = changed
        self._store, self._ceiling_key = store, ceiling_key
        self.poll_s = poll_s
        self.grace_s = router_grace_s(poll_s) if grace_s is None else grace_s
        self._ack_timeout_s, self._lease_s = ack_timeout_s, lease_s
        self._clock, self._sleep = clock, sleep
        self.epoch = 0
        self._ceiling = 0
        self._acks: dict[str, tuple[int, float]] = {}  # router id -> (epoch, last seen)
        self._grace_until = float("-inf")  # set by continue_from(): routers unknown until then

    def publish(self) -> None:
        """A new epoch, shown to every waiting router."""
        with self._changed:
            self.epoch += 1
            if self._store is not None and self.epoch > self._ceiling:
                ceiling = self.epoch + EPOCH_BLOCK  # written before the epoch is visible
                try:
                    self._store.put(self._ceiling_key, dumps(ceiling))
                    self._ceiling = ceiling
                except Exception as exc:  # tried again at the next publication
                    log.error("Writing the serving map epoch failed: %s", exc)
            self._changed.notify_all()

    def continue_from(self, ceiling: int) -> None:
        """A restarted manager: publish above every epoch its predecessors may have shown, and
        wait the grace before trusting the routers it knows."""
        with self._changed:
            self._grace_until = self._clock() + self.grace_s
            self.epoch = ceiling
            self.publish()

    def wait_for_newer(self, known_epoch: int, router_id: str, timeout_s: float) -> bool:
        """A router's long poll: acknowledges `known_epoch` for `router_id`; True once a newer
        epoch is published, False after `timeout_s` without one."""
        with self._changed:
            self._acks[router_id] = (known_epoch, self._clock())
            self._changed.notify_all()
            self._changed.wait_for(lambda: self.epoch != known_epoch, timeout=timeout_s)
            return self.epoch != known_epoch

    def wait_for_routers(self, epoch: int) -> None:
        """Wait until every live router acknowledged `epoch` (at most the ack timeout; a router
        that does not is logged and passed over)."""
        grace = self._grace_until - self._clock()
        if grace > 0:  # just restarted: a router that has not polled yet is not known to wait for
            self._sleep(grace)
        with self._changed:

            def caught_up() -> bool:
                now = self._clock()
                return all(
                    acked >= epoch
                    for acked, seen in self._acks.values()
                    if now - seen < self._lease_s
                )

            if not self._changed.wait_for(caught_up, timeout=self._ack_timeout_s):
                lagging = [r for r, (acked, _) in self._acks.items() if acked < epoch]
                log.warning(
                    "routers %s did not acknowledge serving map %d in %.0f s; going on",
                    lagging,
                    epoch,
                    self._ack_timeout_s,
                )
