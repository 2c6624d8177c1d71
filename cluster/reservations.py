"""The reservation book: GPU memory and per-node host RAM held for placed servables.

Beside the inventory it is built from (cluster/inventory.py): the manager holds one book, asks
it before it creates any deployment, and releases what a version held once its deployment is
gone. Where a need goes is decided by `policies.admission.place` (best fit, never over-commit);
the book keeps the answers, atomically, and the totals that decision reads. A node or GPU that
leaves the inventory keeps its reservations recorded; they are reported by `lost()` until
released, and count again if the GPU comes back. Given each node's Ray CPUs (what replicas may
book there: cluster/inventory.py), it books each placement's CPUs too; without them, CPUs are
not counted.
"""

from __future__ import annotations

import threading

from policies.admission import Gpu, Need, Placement, Refusal, place


def _key(gpu: Gpu) -> tuple[str, int]:
    return (gpu.node_id, gpu.index)


class Reservations:
    """Atomic (thread-safe) reservation book over a GPU inventory and per-node host RAM.

    `servable` keys must be unique per held reservation (one per replica for multi-replica
    versions); the refusal message names the key as given.
    """

    def __init__(
        self,
        gpus: list[Gpu],
        ram_bytes_by_node: dict[str, int],
        cpus_by_node: dict[str, float] | None = None,
    ):
        self._lock = threading.RLock()  # reserve_all holds it across reserve calls
        self._gpus: dict[tuple[str, int], Gpu] = {}
        self._ram: dict[str, int] = dict(ram_bytes_by_node)
        self._cpus: dict[str, float] | None = None if cpus_by_node is None else dict(cpus_by_node)
        self._held: dict[str, Placement] = {}
        # running totals of what _held reserves, so a placement costs O(GPUs), not
        # O(GPUs x reservations) (bench/reconcile.py: 3,000 reservations)
        self._vram_held: dict[tuple[str, int], int] = {}
        self._ram_held: dict[str, int] = {}
        self._cpus_held: dict[str, float] = {}
        self._set_gpus(gpus)

    # -- inventory -------------------------------------------------------------------------

    def _set_gpus(self, gpus: list[Gpu]) -> None:
        table: dict[tuple[str, int], Gpu] = {}
        for gpu in gpus:
            if gpu.total_bytes < 0 or gpu.used_by_others_bytes < 0:
                raise ValueError(f"GPU memory cannot be negative: {gpu}")
            if _key(gpu) in table:
                raise ValueError(f"duplicate GPU {gpu.index} on node {gpu.node_id}")
            table[_key(gpu)] = gpu
        self._gpus = table

    def update_inventory(
        self,
        gpus: list[Gpu],
        ram_bytes_by_node: dict[str, int] | None = None,
        cpus_by_node: dict[str, float] | None = None,
    ) -> None:
        """Replace the GPU inventory (and host RAM and Ray CPUs, when given). Reservations are
        kept as they are, even when a GPU shrank below them or left; new admissions see the new
        numbers."""
        with self._lock:
            self._set_gpus(gpus)
            if ram_bytes_by_node is not None:
                self._ram = dict(ram_bytes_by_node)
            if cpus_by_node is not None:
                self._cpus = dict(cpus_by_node)

    def has_gpus(self) -> bool:
        with self._lock:
            return bool(self._gpus)

    # -- accounting (callers hold the lock) ------------------------------------------------

    def restore(self, servable: str, placement: Placement) -> None:
        """Hold `placement` for `servable` as it was booked before (a restarted manager adopting
        a running version): no fit check, the replicas already run there."""
        with self._lock:
            if servable in self._held:
                raise ValueError(f"{servable} already holds a reservation")
            self._hold(servable, placement)

    def _hold(self, servable: str, placement: Placement) -> None:
        self._held[servable] = placement
        self._count(placement, +1)

    def _count(self, p: Placement, sign: int) -> None:
        if p.gpu_index is not None:
            key = (p.node_id, p.gpu_index)
            self._vram_held[key] = self._vram_held.get(key, 0) + sign * p.vram_bytes
        self._ram_held[p.node_id] = self._ram_held.get(p.node_id, 0) + sign * p.ram_bytes
        if p.cpus:
            self._cpus_held[p.node_id] = self._cpus_held.get(p.node_id, 0.0) + sign * p.cpus

    def _free_vram(self, gpu: Gpu) -> int:
        return gpu.total_bytes - gpu.used_by_others_bytes - self._vram_held.get(_key(gpu), 0)

    def _free_ram(self, node: str) -> int:
        return self._ram.get(node, 0) - self._ram_held.get(node, 0)

    def _free_cpus(self, node: str) -> float:
        assert self._cpus is not None
        return self._cpus.get(node, 0.0) - self._cpus_held.get(node, 0.0)

    def _nodes(self) -> list[str]:
        return sorted(set(self._ram) | {node for node, _ in self._gpus})

    # -- reserve / release -----------------------------------------------------------------

    def reserve(
        self,
        servable: str,
        need: Need,
        on: tuple[str, int | None] | None = None,
        avoid: frozenset[str] = frozenset(),
    ) -> Placement | Refusal:
        """Hold room for `need` where `policies.admission.place` puts it (only at `on`, a
        (node, GPU index or None), when given; off the nodes in `avoid` where it fits
        elsewhere), or hold nothing and return its refusal."""
        with self._lock:
            if servable in self._held:
                raise ValueError(f"{servable} already holds a reservation")
            placed = place(
                servable,
                need,
                list(self._gpus.values()),
                self._nodes(),
                self._free_vram,
                self._free_ram,
                on,
                avoid,
                None if self._cpus is None else self._free_cpus,
            )
            if isinstance(placed, Placement):
                self._hold(servable, placed)
            return placed

    def reserve_all(
        self,
        keys: list[str],
        need: Need,
        together: bool = False,
        avoid: frozenset[str] = frozenset(),
    ) -> list[Placement] | Refusal:
        """Hold `need` once per key (a version's replicas), all or none: on the first refusal,
        give back what the earlier keys took and return the refusal. `together`: every key on
        the (node, GPU) the first one got (a shared host's replicas). Otherwise the replicas
        spread: each key goes off the nodes in `avoid` and those the earlier keys got, where it
        fits elsewhere (policies/admission.py, anti-affinity first, best fit second), so one
        node's loss leaves the version a replica wherever the cluster allows."""
        with self._lock:
            placements: list[Placement] = []
            for key in keys:
                first = placements[0] if together and placements else None
                placed = self.reserve(
                    key,
                    need,
                    (first.node_id, first.gpu_index) if first is not None else None,
                    avoid if together else avoid | {p.node_id for p in placements},
                )
                if isinstance(placed, Refusal):
                    for held in keys[: len(placements)]:
                        self.release(held)
                    return placed
                placements.append(placed)
            return placements

    def release(self, servable: str) -> None:
        """Free what `servable` holds; releasing twice, or what was never held, does nothing."""
        with self._lock:
            placement = self._held.pop(servable, None)
            if placement is not None:
                self._count(placement, -1)

    # -- views -----------------------------------------------------------------------------

    def held(self) -> dict[str, Placement]:
        with self._lock:
            return dict(self._held)

    def lost(self) -> dict[str, Placement]:
        """Reservations whose GPU (or, for CPU-only ones, whose node) left the inventory."""
        with self._lock:
            nodes = set(self._nodes())
            return {
                s: p
                for s, p in self._held.items()
                if (p.gpu_index is not None and (p.node_id, p.gpu_index) not in self._gpus)
                or (p.gpu_index is None and p.node_id not in nodes)
            }

    def snapshot(self) -> list[dict]:
        """Per GPU, sorted by (node, index): node, index, total, reserved, used_by_others, free
        (never below 0) and holders {servable: bytes}."""
        with self._lock:
            rows = []
            for key in sorted(self._gpus):
                gpu = self._gpus[key]
                holders = {
                    s: p.vram_bytes
                    for s, p in sorted(self._held.items())
                    if p.gpu_index is not None and (p.node_id, p.gpu_index) == key
                }
                reserved = sum(holders.values())
                rows.append(
                    {
                        "node": gpu.node_id,
                        "index": gpu.index,
                        "total": gpu.total_bytes,
                        "reserved": reserved,
                        "used_by_others": gpu.used_by_others_bytes,
                        "free": max(gpu.total_bytes - gpu.used_by_others_bytes - reserved, 0),
                        "holders": holders,
                    }
                )
            return rows

    def ram_snapshot(self) -> list[dict]:
        """Per node, sorted: node, total, reserved, free (never below 0), holders
        {servable: bytes}; with Ray CPUs counted, `cpus` {total, reserved, free} too."""
        with self._lock:
            rows = []
            for node in self._nodes():
                holders = {
                    s: p.ram_bytes
                    for s, p in sorted(self._held.items())
                    if p.node_id == node and p.ram_bytes
                }
                total = self._ram.get(node, 0)
                reserved = sum(holders.values())
                row = {
                    "node": node,
                    "total": total,
                    "reserved": reserved,
                    "free": max(total - reserved, 0),
                    "holders": holders,
                }
                if self._cpus is not None:
                    held = round(self._cpus_held.get(node, 0.0), 6)
                    cpus = self._cpus.get(node, 0.0)
                    row["cpus"] = {"total": cpus, "reserved": held, "free": max(cpus - held, 0.0)}
                rows.append(row)
            return rows
