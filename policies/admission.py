"""Resource-aware admission: what a replica needs, and where in GPU memory and host RAM it fits.

Pure Python, no Ray, TensorFlow or NVML, no state: `place()` decides where one replica's need
goes, given the inventory and what is free. The reservation book that holds the answers
(cluster/reservations.py) asks it before the manager creates any deployment; the answer is one
specific (node, GPU) whose memory is then held for the servable until released. Decisions are
made over *reservations* plus the memory NVML reports as used by processes Aspire does not own
(`Gpu.used_by_others_bytes`), never over NVML's momentary free memory alone, which lags behind
loads in flight.

Rules:
- Best fit: a GPU need goes to the GPU it leaves the least free memory on (ties: the lowest
  (node, index)), and its host RAM is reserved on that GPU's node, which must fit too.
- A need given as a fraction of a GPU's memory (--per_process_gpu_memory_fraction:
  `Need.vram_fraction`) needs that share of each GPU's total, so it is sized per GPU: a replica
  books ceil(fraction x total) of the GPU it goes to (`Need.vram_on`), and best fit compares
  what each GPU would have left after its own share.
- A CPU-only need (no `vram_bytes`, no `vram_fraction`) reserves host RAM only, on the node
  with the most free RAM (ties: the lowest node id).
- Ray CPUs (`Need.cpus`, --num_cpus_per_replica): every replica books them on its node, as Ray
  does, so a node whose Ray CPUs are all taken admits nothing more, whatever its memory; a node
  without enough is skipped as if it had no room (`free_cpus`, None: CPUs are not counted).
- Anti-affinity first, best fit second: a need given nodes to `avoid` (the nodes a version's
  other replicas run on) goes elsewhere when it fits elsewhere, so that one node's loss leaves
  the version a replica; where it fits only on those nodes, it goes there.
- Nothing is ever over-committed: a need that fits nowhere gets a `Refusal` (a bounded reason
  for metrics and TF Serving's RESOURCE_EXHAUSTED message); no existing reservation is moved
  or shrunk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

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
    """What one replica reserves. `vram_fraction` > 0 (--per_process_gpu_memory_fraction): a
    replica with its own process books that share of the total memory of the GPU it is placed
    on instead of `vram_bytes` (`vram_on`); `vram_bytes` stays the version's own estimate, which
    is what it takes inside a shared host's block (cluster/host_admission.py)."""

    vram_bytes: int = 0
    ram_bytes: int = 0
    vram_fraction: float = 0.0
    cpus: float = 0.0  # Ray CPUs each replica's actor books (--num_cpus_per_replica)

    def __post_init__(self) -> None:
        if self.vram_bytes < 0 or self.ram_bytes < 0 or self.vram_fraction < 0 or self.cpus < 0:
            raise ValueError(f"resource needs cannot be negative: {self}")

    @property
    def gpu(self) -> bool:
        return self.vram_bytes > 0 or self.vram_fraction > 0

    def vram_on(self, gpu: Gpu) -> int:
        """GPU memory this need books on `gpu`."""
        if self.vram_fraction > 0:
            return fraction_vram_bytes(self.vram_fraction, gpu.total_bytes)
        return self.vram_bytes


def fraction_vram_bytes(fraction: float, total_bytes: int) -> int:
    """ceil(fraction x total_bytes): what --per_process_gpu_memory_fraction books on a GPU of
    `total_bytes`. A fraction above 1 (TF's unified-memory oversubscription) books the whole GPU:
    nothing beyond a GPU's memory can be booked on it."""
    return int(math.ceil(min(fraction, 1.0) * total_bytes))


@dataclass(frozen=True)
class Placement:
    node_id: str
    gpu_index: int | None  # None for a CPU-only placement
    vram_bytes: int
    ram_bytes: int
    cpus: float = 0.0


# Ray CPU counts are floats summed and subtracted: a need fits when it is within this of free.
CPU_EPSILON = 1e-6


def estimate_vram_bytes(
    variable_bytes: int,
    factor: float = VRAM_FACTOR,
    workspace_bytes: int = VRAM_WORKSPACE_BYTES + CUDA_CONTEXT_BYTES,
) -> int:
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
    reservation less the CUDA context, which lives outside the allocator; at least 256 MiB.
    With --per_process_gpu_memory_fraction the reservation is that share of the GPU, so the
    replica's whole footprint (allocator and CUDA context) stays within the share it booked,
    where TF Serving caps the allocator alone to the share and adds the context on top."""
    return max(reserved_vram_bytes - CUDA_CONTEXT_BYTES, MIN_TF_MEMORY_LIMIT_BYTES)


DEVICES = ("gpu", "cpu")


def replica_need(
    device: str,
    *,
    variable_bytes: int,
    ram_estimate_bytes: int,
    declared_vram_bytes: int | None = None,
    declared_ram_bytes: int | None = None,
    measured_vram_bytes: int | None = None,
    gpu_memory_fraction: float = 0.0,
    cpus: float = 0.0,
) -> Need:
    """What one replica of a version reserves.

    - Host RAM: the declared `ram`, else the Loader's estimate (files x 1.2).
    - `device == "cpu"`: no VRAM, whatever `gpu_memory_fraction` says. `device == "gpu"`: the
      declared `vram`, else `estimate_vram_bytes(variable_bytes)`, lowered to the peak measured
      after an earlier load of the same version on a real GPU (an estimate may only go down once
      known, never up).
    - `gpu_memory_fraction` > 0 (--per_process_gpu_memory_fraction, a GPU version without a
      declared `vram`): each replica books that share of its GPU's memory instead of the
      estimate (`Need.vram_fraction`); its TensorFlow is capped to it. A model's declared
      `vram` is more specific than the server-wide flag and wins.
    - `cpus`: the Ray CPUs each replica's actor books (--num_cpus_per_replica).
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    ram = declared_ram_bytes if declared_ram_bytes is not None else ram_estimate_bytes
    if device == "cpu":
        return Need(0, ram, cpus=cpus)
    if declared_vram_bytes is not None:
        return Need(declared_vram_bytes, ram, cpus=cpus)
    vram = estimate_vram_bytes(variable_bytes)
    if measured_vram_bytes:
        vram = min(vram, measured_vram_bytes)
    return Need(vram, ram, max(gpu_memory_fraction, 0.0), cpus)


@dataclass(frozen=True)
class Refusal:
    """A need that fits nowhere: `reason` is a bounded label (the admission-refusals metric),
    `message` TF Serving's RESOURCE_EXHAUSTED text, naming the servable and the largest room."""

    reason: str  # "gpu_memory", "host_ram", "cpus", "no_gpus" or "no_nodes"
    message: str
    code = "RESOURCE_EXHAUSTED"


def place(
    servable: str,
    need: Need,
    gpus: list[Gpu],
    nodes: list[str],
    free_vram: Callable[[Gpu], int],
    free_ram: Callable[[str], int],
    on: tuple[str, int | None] | None = None,
    avoid: frozenset[str] = frozenset(),
    free_cpus: Callable[[str], float] | None = None,
) -> Placement | Refusal:
    """Where one replica's `need` goes (the rules above), or why it fits nowhere.

    `gpus` and `nodes` are the inventory; `free_vram(gpu)`, `free_ram(node)` and
    `free_cpus(node)` what is left there after the reservations held now (`free_cpus` None:
    Ray CPUs are not counted). `on` = (node, GPU index or None) allows that place only (a
    shared host's further replicas go where its first one went). `avoid`: nodes taken only
    when the need fits nowhere else (anti-affinity)."""
    if on is not None:
        nodes = [n for n in nodes if n == on[0]]
        gpus = [g for g in gpus if (g.node_id, g.index) == on]
    if avoid:
        elsewhere = place(
            servable,
            need,
            [g for g in gpus if g.node_id not in avoid],
            [n for n in nodes if n not in avoid],
            free_vram,
            free_ram,
            free_cpus=free_cpus,
        )
        if isinstance(elsewhere, Placement):
            return elsewhere
    prefix = f"Insufficient resources to load servable {servable}"
    if free_cpus is not None and need.cpus > 0 and nodes:
        cpu_nodes = {n for n in nodes if free_cpus(n) + CPU_EPSILON >= need.cpus}
        if not cpu_nodes:  # no node can start the replica's actor
            without = place(servable, need, gpus, nodes, free_vram, free_ram)
            if isinstance(without, Refusal):  # memory is short too: that reason comes first
                return without
            most = min(nodes, key=lambda n: (-free_cpus(n), n))
            return Refusal(
                "cpus",
                f"{prefix}; needs {need.cpus:g} Ray CPUs (--num_cpus_per_replica), most free "
                f"on a node is {max(free_cpus(most), 0.0):g} (node {most[:12]})",
            )
        nodes = [n for n in nodes if n in cpu_nodes]
        gpus = [g for g in gpus if g.node_id in cpu_nodes]
    if not need.gpu:
        if not nodes:
            return Refusal(
                "no_nodes",
                f"{prefix}; needs {format_bytes(need.ram_bytes)} of host RAM, no nodes are known",
            )
        node = min(nodes, key=lambda n: (-free_ram(n), n))
        free = free_ram(node)
        if free < need.ram_bytes:
            return Refusal(
                "host_ram",
                f"{prefix}; needs {format_bytes(need.ram_bytes)} of host RAM, largest free "
                f"block is {format_bytes(max(free, 0))} (node {node[:12]})",
            )
        return Placement(node, None, 0, need.ram_bytes, need.cpus)

    gpus = sorted(gpus, key=lambda g: (g.node_id, g.index))
    left = {(g.node_id, g.index): free_vram(g) - need.vram_on(g) for g in gpus}

    def room(g: Gpu) -> int:  # what the GPU would have left after this need
        return left[(g.node_id, g.index)]

    fits = [g for g in gpus if room(g) >= 0]
    both = [g for g in fits if free_ram(g.node_id) >= need.ram_bytes]
    if both:
        best = min(both, key=lambda g: (room(g), g.node_id, g.index))
        return Placement(best.node_id, best.index, need.vram_on(best), need.ram_bytes, need.cpus)
    if not gpus:
        what = (
            f"{need.vram_fraction:g} of a GPU's memory (--per_process_gpu_memory_fraction)"
            if need.vram_fraction > 0
            else f"{format_bytes(need.vram_bytes)} of GPU memory"
        )
        return Refusal("no_gpus", f"{prefix}; needs {what}, no GPUs are known")
    if not fits:
        if need.vram_fraction > 0:  # the GPU that comes closest to its own share
            closest = min(gpus, key=lambda g: (-room(g), g.node_id, g.index))
            return Refusal(
                "gpu_memory",
                f"{prefix}; needs {format_bytes(need.vram_on(closest))} of GPU memory "
                f"({need.vram_fraction:g} of GPU {closest.index}'s "
                f"{format_bytes(closest.total_bytes)}, --per_process_gpu_memory_fraction), "
                f"largest free block is {format_bytes(max(free_vram(closest), 0))} "
                f"(node {closest.node_id[:12]} GPU {closest.index})",
            )
        largest = min(gpus, key=lambda g: (-free_vram(g), g.node_id, g.index))
        return Refusal(
            "gpu_memory",
            f"{prefix}; needs {format_bytes(need.vram_bytes)} of GPU memory, largest free "
            f"block is {format_bytes(max(free_vram(largest), 0))} "
            f"(node {largest.node_id[:12]} GPU {largest.index})",
        )
    node = min({g.node_id for g in fits}, key=lambda n: (-free_ram(n), n))
    vram = max(need.vram_on(g) for g in fits if g.node_id == node)
    return Refusal(
        "host_ram",
        f"{prefix}; needs {format_bytes(vram)} of GPU memory and "
        f"{format_bytes(need.ram_bytes)} of host RAM on the same node, largest free host RAM "
        f"next to a fitting GPU is {format_bytes(max(free_ram(node), 0))} (node {node[:12]})",
    )


# ---- admission inside shared hosts ("placement": "shared") ----------------------------------
@dataclass(frozen=True)
class HostSlot:
    """A shared host (deployments/replica/shared_host.py) as admission sees it: its Serve
    application, where its block is booked (`placement`: the block's node, GPU and sizes; None
    without admission) and its replica count. Each replica of the host holds every version in it."""

    app: str
    placement: Placement | None
    replicas: int = 1


def fits_in_host(need: Need, block: Need, used: Need) -> bool:
    return (
        used.vram_bytes + need.vram_bytes <= block.vram_bytes
        and used.ram_bytes + need.ram_bytes <= block.ram_bytes
    )


def best_host(need: Need, hosts: list[tuple[str, Need, Need]]) -> str | None:
    """Best fit among open hosts, given as (app, block, used): the host with the least room
    left that still fits `need` (room: VRAM first for GPU hosts, then RAM; ties: the lowest
    app name), or None when none fits."""
    fitting = [(app, block, used) for app, block, used in hosts if fits_in_host(need, block, used)]
    if not fitting:
        return None
    return min(
        fitting,
        key=lambda h: (h[1].vram_bytes - h[2].vram_bytes, h[1].ram_bytes - h[2].ram_bytes, h[0]),
    )[0]
