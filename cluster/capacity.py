"""Capacity waits: a version that does not fit waits for a node the autoscaler adds for it.

Without an autoscaler, a version that fits nowhere is refused at once with TF Serving's
RESOURCE_EXHAUSTED (policies/admission.py). With --capacity_wait_s > 0 (a cluster whose Ray
autoscaler can add nodes: `ray up`, KubeRay with autoscaling), the manager asks Ray for what it
needs and the version waits instead:

1. `CapacityWaits.begin` (called by the loader harness, cluster/harness.py, at the refusal):
   the version's record keeps the refusal (ERROR, refused, so it is retried whenever capacity
   grows, cluster/admission_state.py) and gets a wait, (since, until, bundles) in Unix time,
   with one Ray resource bundle per replica (`wait_bundles`). While `until` is ahead, the
   version shows as LOADING (cluster/manager_state.py `VersionRecord.waiting_for_capacity`),
   `aspire status` says what it waits for, and `aspire_capacity_wait_seconds` counts its wait.
   A retry keeps the first wait's deadline: a version waits once, for at most the bound.
2. `CapacityRequests.sync` (the control plane's capacity loop, cluster/control_plane.py) turns
   the waits into one `ray.autoscaler.sdk.request_resources` call. Ray reads that request as the
   smallest cluster to keep ("this set of bundles must fit", existing use not taken into
   account), so the request holds what Aspire books now (each reservation's Ray CPUs and GPUs,
   the routers' CPUs: `held_bundles`) plus what waits. Once nothing waits the request is
   cleared, so nodes left idle after versions unload go back through the autoscaler's idle
   timeout.
3. When a node joins, the inventory grows, the refused versions are retried and admitted onto
   it. A version still refused when its wait runs out ends as it would have at once: END with
   RESOURCE_EXHAUSTED, the message saying how long it waited.

What a bundle asks for: the replica's Ray CPUs (--num_cpus_per_replica), one whole GPU for a
GPU replica (Aspire places GPU replicas by memory; a node type is chosen by its GPU count), and
the replica's host RAM when host RAM was what it lacked. A shared-host version does not wait.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Iterable

from core.units import format_bytes
from policies.admission import Need, Placement, Refusal

log = logging.getLogger("aspire.manager")

Bundle = dict[str, float]
# (since, until, bundles): a version's wait for capacity, Unix time
Wait = tuple[float, float, tuple[Bundle, ...]]


def wait_bundles(need: Need, replicas: int, reason: str) -> tuple[Bundle, ...]:
    """One Ray resource bundle per replica of a refused version (the module docstring); empty
    when the need asks Ray for nothing it could add a node for."""
    bundle: Bundle = {}
    if need.cpus > 0:
        bundle["CPU"] = need.cpus
    if need.gpu:
        bundle["GPU"] = 1.0
    if reason == "host_ram" and need.ram_bytes > 0:
        bundle["memory"] = float(need.ram_bytes)
    return tuple(dict(bundle) for _ in range(replicas)) if bundle else ()


def held_bundles(placements: Iterable[Placement], aspire_cpus: dict[str, float]) -> list[Bundle]:
    """What Aspire books now, as bundles: each reservation's Ray CPUs, one whole GPU per GPU that
    holds reservations, and the Ray CPUs Aspire's own actors book per node (`aspire_cpus`)."""
    bundles: list[Bundle] = [{"CPU": cpus} for _, cpus in sorted(aspire_cpus.items()) if cpus > 0]
    gpus = set()
    for p in placements:
        if p.cpus > 0:
            bundles.append({"CPU": p.cpus})
        if p.gpu_index is not None:
            gpus.add((p.node_id, p.gpu_index))
    bundles += [{"GPU": 1.0} for _ in sorted(gpus)]
    return bundles


class CapacityWaits:
    """When a refused version waits, and for how long (`wait_s`; 0: never, refused at once).
    `wanted` is set whenever a wait begins, so the capacity loop asks Ray at once."""

    def __init__(self, wait_s: float = 0.0, clock: Callable[[], float] = time.time):
        self.wait_s = max(0.0, wait_s)
        self._clock = clock
        self.wanted = threading.Event()

    @property
    def enabled(self) -> bool:
        return self.wait_s > 0

    def begin(
        self,
        previous: Wait | None,
        need: Need,
        replicas: int,
        refusal: Refusal,
        shared: bool = False,
    ) -> Wait | None:
        """The wait of a version just refused: from now until `wait_s` later, or the deadline of
        its `previous` wait when it had one (a retry). None: it does not wait (waits off, a
        shared-host version, nothing Ray could add a node for, or its deadline passed)."""
        if not self.enabled or shared:
            return None
        bundles = wait_bundles(need, replicas, refusal.reason)
        if not bundles:
            return None
        now = self._clock()
        since, until = (now, now + self.wait_s) if previous is None else previous[:2]
        if now >= until:
            return None
        self.wanted.set()
        return since, until, bundles


class CapacityRequests:
    """Sends Ray's autoscaler the request for what Aspire books plus what waits (`sync`), when it
    changed since the last one sent. `request(bundles)`: ray.autoscaler.sdk.request_resources;
    `held()`: `held_bundles` now; `waiting()`: the bundles of every version waiting now."""

    def __init__(
        self,
        request: Callable[[list[Bundle]], None],
        held: Callable[[], list[Bundle]],
        waiting: Callable[[], list[Bundle]],
    ):
        self._request, self._held, self._waiting = request, held, waiting
        self._sent: list[Bundle] | None = None  # None: nothing sent yet
        self._lock = threading.Lock()

    def sync(self) -> list[Bundle]:
        """Ask for what is needed now (nothing once nothing waits); returns the request in
        force. Raises what `request` raises (the request is sent again at the next sync)."""
        with self._lock:
            waiting = self._waiting()
            wanted = self._held() + waiting if waiting else []
            if wanted != self._sent:
                if waiting:
                    log.info(
                        "Asking the autoscaler for room for %d waiting replica(s): %s "
                        "(with %d bundle(s) booked now)",
                        len(waiting),
                        summary(waiting),
                        len(wanted) - len(waiting),
                    )
                elif self._sent:
                    log.info("Nothing waits for capacity: clearing the autoscaler request")
                self._request(wanted)
                self._sent = wanted
            return list(self._sent or [])


def _amount(resource: str, value: float) -> str:
    return format_bytes(int(value)) if resource == "memory" else f"{value:g}"


def summary(bundles: list[Bundle]) -> str:
    """Bundles counted by shape: 2 x {CPU: 1}, 1 x {CPU: 1, memory: 1024.0 GiB}."""
    counts: dict[str, int] = {}
    for b in bundles:
        key = "{" + ", ".join(f"{k}: {_amount(k, v)}" for k, v in sorted(b.items())) + "}"
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{n} x {k}" for k, n in counts.items())
