"""Resource-aware admission: a reservation book over GPU memory and per-node host RAM.

Pure Python, no Ray, TensorFlow or NVML. The manager asks `Reservations.reserve()` before it
creates any deployment; the answer is one specific (node, GPU) whose memory is then held for the
servable until `release()`. Decisions are made over *reservations* plus the memory NVML reports
as used by processes Aspire does not own (`Gpu.used_by_others_bytes`), never over NVML's
momentary free memory alone, which lags behind loads in flight.

Rules:
- Best fit: a GPU need goes to the GPU with the least free memory that still fits it (ties: the
  lowest (node, index)), and its host RAM is reserved on that GPU's node, which must fit too.
- A CPU-only need (`vram_bytes == 0`) reserves host RAM only, on the node with the most free RAM
  (ties: the lowest node id).
- Nothing is ever over-committed: a need that fits nowhere raises `AspireError` with code
  `RESOURCE_EXHAUSTED`; no existing reservation is moved or shrunk.
- A node or GPU that leaves the inventory keeps its reservations recorded; they are reported by
  `lost()` until released, and count again if the GPU comes back.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass

from core.errors import AspireError
from core.units import GIB, MIB, format_bytes

# VRAM estimate from a SavedModel's variable bytes, used when neither a declared `vram` nor a
# measured peak is known. Weights are held once on the GPU, and inference needs about as much
# again for activations, temporary copies made while restoring variables and allocator
# fragmentation, hence a factor of 2. The workspace covers TF's scratch space inside its
# allocator (autotuning, temporaries) that does not scale with the model.
VRAM_FACTOR = 2.0
VRAM_WORKSPACE_BYTES = 256 * MIB
# Memory a GPU process holds outside any framework allocator: the CUDA context and the cuBLAS and
# cuDNN handles. Measured with NVML on an H100 80GB (driver 580.159.04): context 612 MiB,
# + cuBLAS 226 MiB, + cuDNN 28 MiB = 866 MiB (a PyTorch process; TensorFlow is not on that
# machine). A reservation is a replica's whole footprint, so it includes this, and TensorFlow's
# allocator is capped to what is left (`tf_memory_limit_bytes`).
CUDA_CONTEXT_BYTES = 1 * GIB
MIN_TF_MEMORY_LIMIT_BYTES = 256 * MIB


@dataclass(frozen=True)
class Gpu:
    node_id: str
    index: int
    total_bytes: int
    used_by_others_bytes: int = 0  # memory NVML reports used by processes Aspire does not own


@dataclass(frozen=True)
class Need:
    vram_bytes: int = 0
    ram_bytes: int = 0

    def __post_init__(self):
        if self.vram_bytes < 0 or self.ram_bytes < 0:
            raise ValueError(f"resource needs cannot be negative: {self}")


@dataclass(frozen=True)
class Placement:
    node_id: str
    gpu_index: int | None  # None for a CPU-only placement
    vram_bytes: int
    ram_bytes: int


def estimate_vram_bytes(variable_bytes: int, factor: float = VRAM_FACTOR,
                        workspace_bytes: int = VRAM_WORKSPACE_BYTES + CUDA_CONTEXT_BYTES) -> int:
    """Upper-bound VRAM for one replica: ceil(variable_bytes * factor) + workspace_bytes (TF's
    workspace plus the CUDA context, 1.25 GiB in all).

    Monotone (never decreasing) in `variable_bytes`, so a version's estimate never grows
    once the variables are known, as TF Serving's Loader contract requires.
    """
    if variable_bytes < 0 or factor < 0 or workspace_bytes < 0:
        raise ValueError("variable_bytes, factor and workspace_bytes must be non-negative")
    return int(math.ceil(variable_bytes * factor)) + int(workspace_bytes)


def tf_memory_limit_bytes(reserved_vram_bytes: int) -> int:
    """TensorFlow's allocator cap for a replica that reserved `reserved_vram_bytes`: the
    reservation less the CUDA context, which lives outside the allocator; at least 256 MiB."""
    return max(reserved_vram_bytes - CUDA_CONTEXT_BYTES, MIN_TF_MEMORY_LIMIT_BYTES)


DEVICES = ("gpu", "cpu")


def replica_need(device: str, *, variable_bytes: int, ram_estimate_bytes: int,
                 declared_vram_bytes: int | None = None, declared_ram_bytes: int | None = None,
                 measured_vram_bytes: int | None = None) -> Need:
    """What one replica of a version reserves.

    - Host RAM: the declared `ram`, else the Loader's estimate (files x 1.2).
    - `device == "cpu"`: no VRAM. `device == "gpu"`: the declared `vram`, else
      `estimate_vram_bytes(variable_bytes)`, lowered to the peak measured after an earlier load of
      the same version on a real GPU (an estimate may only go down once known, never up).
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    ram = declared_ram_bytes if declared_ram_bytes is not None else ram_estimate_bytes
    if device == "cpu":
        return Need(0, ram)
    if declared_vram_bytes is not None:
        return Need(declared_vram_bytes, ram)
    vram = estimate_vram_bytes(variable_bytes)
    if measured_vram_bytes:
        vram = min(vram, measured_vram_bytes)
    return Need(vram, ram)


def _key(gpu: Gpu) -> tuple[str, int]:
    return (gpu.node_id, gpu.index)


class Reservations:
    """Atomic (thread-safe) reservation book over a GPU inventory and per-node host RAM.

    `servable` keys must be unique per held reservation (one per replica for multi-replica
    versions); the refusal message names the key as given.
    """

    def __init__(self, gpus: list[Gpu], ram_bytes_by_node: dict[str, int]):
        self._lock = threading.Lock()
        self._gpus: dict[tuple[str, int], Gpu] = {}
        self._ram: dict[str, int] = dict(ram_bytes_by_node)
        self._held: dict[str, Placement] = {}
        # running totals of what _held reserves, so a placement costs O(GPUs), not
        # O(GPUs x reservations) (bench/reconcile.py: 3,000 reservations)
        self._vram_held: dict[tuple[str, int], int] = {}
        self._ram_held: dict[str, int] = {}
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

    def update_inventory(self, gpus: list[Gpu],
                         ram_bytes_by_node: dict[str, int] | None = None) -> None:
        """Replace the GPU inventory (and host RAM, when given). Reservations are kept as they
        are, even when a GPU shrank below them or left; new admissions see the new numbers."""
        with self._lock:
            self._set_gpus(gpus)
            if ram_bytes_by_node is not None:
                self._ram = dict(ram_bytes_by_node)

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

    def _free_vram(self, gpu: Gpu) -> int:
        return gpu.total_bytes - gpu.used_by_others_bytes - self._vram_held.get(_key(gpu), 0)

    def _free_ram(self, node: str) -> int:
        return self._ram.get(node, 0) - self._ram_held.get(node, 0)

    def _nodes(self) -> list[str]:
        return sorted(set(self._ram) | {node for node, _ in self._gpus})

    # -- reserve / release -----------------------------------------------------------------

    def reserve(self, servable: str, need: Need) -> Placement:
        with self._lock:
            if servable in self._held:
                raise ValueError(f"{servable} already holds a reservation")
            placement = self._place(servable, need)
            self._hold(servable, placement)
            return placement

    def _place(self, servable: str, need: Need) -> Placement:
        prefix = f"Insufficient resources to load servable {servable}"
        if need.vram_bytes == 0:
            nodes = self._nodes()
            if not nodes:
                raise AspireError(f"{prefix}; needs {format_bytes(need.ram_bytes)} of host RAM, "
                                  "no nodes are known", "RESOURCE_EXHAUSTED")
            node = min(nodes, key=lambda n: (-self._free_ram(n), n))
            free = self._free_ram(node)
            if free < need.ram_bytes:
                raise AspireError(
                    f"{prefix}; needs {format_bytes(need.ram_bytes)} of host RAM, largest free "
                    f"block is {format_bytes(max(free, 0))} (node {node[:12]})", "RESOURCE_EXHAUSTED")
            return Placement(node, None, 0, need.ram_bytes)

        gpus = sorted(self._gpus.values(), key=_key)
        fits = [g for g in gpus if self._free_vram(g) >= need.vram_bytes]
        both = [g for g in fits if self._free_ram(g.node_id) >= need.ram_bytes]
        if both:
            best = min(both, key=lambda g: (self._free_vram(g), g.node_id, g.index))
            return Placement(best.node_id, best.index, need.vram_bytes, need.ram_bytes)
        if not gpus:
            raise AspireError(f"{prefix}; needs {format_bytes(need.vram_bytes)} of GPU memory, "
                              "no GPUs are known", "RESOURCE_EXHAUSTED")
        if not fits:
            largest = min(gpus, key=lambda g: (-self._free_vram(g), g.node_id, g.index))
            raise AspireError(
                f"{prefix}; needs {format_bytes(need.vram_bytes)} of GPU memory, largest free "
                f"block is {format_bytes(max(self._free_vram(largest), 0))} "
                f"(node {largest.node_id[:12]} GPU {largest.index})", "RESOURCE_EXHAUSTED")
        node = min({g.node_id for g in fits}, key=lambda n: (-self._free_ram(n), n))
        raise AspireError(
            f"{prefix}; needs {format_bytes(need.vram_bytes)} of GPU memory and "
            f"{format_bytes(need.ram_bytes)} of host RAM on the same node, largest free host RAM "
            f"next to a fitting GPU is {format_bytes(max(self._free_ram(node), 0))} "
            f"(node {node[:12]})", "RESOURCE_EXHAUSTED")

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
            return {s: p for s, p in self._held.items()
                    if (p.gpu_index is not None and (p.node_id, p.gpu_index) not in self._gpus)
                    or (p.gpu_index is None and p.node_id not in nodes)}

    def snapshot(self) -> list[dict]:
        """Per GPU, sorted by (node, index): node, index, total, reserved, used_by_others, free
        (never below 0) and holders {servable: bytes}."""
        with self._lock:
            rows = []
            for key in sorted(self._gpus):
                gpu = self._gpus[key]
                holders = {s: p.vram_bytes for s, p in sorted(self._held.items())
                           if p.gpu_index is not None and (p.node_id, p.gpu_index) == key}
                reserved = sum(holders.values())
                rows.append({
                    "node": gpu.node_id, "index": gpu.index, "total": gpu.total_bytes,
                    "reserved": reserved, "used_by_others": gpu.used_by_others_bytes,
                    "free": max(gpu.total_bytes - gpu.used_by_others_bytes - reserved, 0),
                    "holders": holders,
                })
            return rows

    def ram_snapshot(self) -> list[dict]:
        """Per node, sorted: node, total, reserved, free (never below 0), holders {servable: bytes}."""
        with self._lock:
            rows = []
            for node in self._nodes():
                holders = {s: p.ram_bytes for s, p in sorted(self._held.items())
                           if p.node_id == node and p.ram_bytes}
                total = self._ram.get(node, 0)
                reserved = sum(holders.values())
                rows.append({"node": node, "total": total, "reserved": reserved,
                             "free": max(total - reserved, 0), "holders": holders})
            return rows
