"""GPU and host-RAM inventory: per node, read from NVML, or declared where no NVIDIA driver exists.

Both sources return the same `Gpu` records, so the admission code cannot tell them apart.
`cluster_inventory()` builds the whole cluster's inventory from Ray's view of its nodes: each
alive node's host RAM is Ray's `memory` resource; its GPUs are the declared ones (one entry per
Ray logical GPU of the node) or, with no declaration, what NVML reports on that node, read by a
task pinned to it; its Ray CPUs for replicas are Ray's `CPU` resource less what Aspire's own
actors book there (the node's routers).

- `declared_inventory("2x16GiB", node)` / `declared_inventory("16GiB,24GiB", node)`: the value of
  `--gpus=` (or a side config entry), used together with Ray logical GPUs (`--num-gpus`).
- `nvml_inventory(node)`: total memory of each device and the memory used by processes Aspire
  does not own. It returns [] when the NVML library or driver is missing, so it is safe to call
  everywhere; the real GPU path is exercised only on machines with NVIDIA drivers (tests/gpu/).
"""

from __future__ import annotations

import functools
import logging
import os
import re
from typing import Callable, Iterable, Optional

from core.units import parse_bytes
from policies.admission import Gpu

log = logging.getLogger("aspire.inventory")

_ITEM_RE = re.compile(r"^\s*(?:([0-9]+)\s*[xX*]\s*)?(\S.*?)\s*$")


def declared_inventory(spec: str, node_id: str) -> list[Gpu]:
    """GPUs declared as "COUNTxSIZE" and/or comma-separated sizes, indexed from 0 in order.

    "2x16GiB" -> two 16 GiB GPUs; "16GiB,24GiB" -> GPU 0 of 16 GiB and GPU 1 of 24 GiB;
    "2x16GiB,24GiB" mixes both. An empty spec or "0" declares no GPU.
    """
    if not isinstance(spec, str):
        raise ValueError(f"GPU inventory must be a string like '2x16GiB', got {spec!r}")
    if spec.strip() in ("", "0"):
        return []
    gpus: list[Gpu] = []
    for item in spec.split(","):
        m = _ITEM_RE.match(item)
        if not m:
            raise ValueError(
                f"invalid GPU inventory {spec!r}: empty entry; expected "
                "'COUNTxSIZE' or comma-separated sizes, e.g. '2x16GiB' or "
                "'16GiB,24GiB'"
            )
        count = int(m.group(1)) if m.group(1) is not None else 1
        if count < 1:
            raise ValueError(
                f"invalid GPU inventory {spec!r}: GPU count in {item.strip()!r} must be at least 1"
            )
        try:
            size = parse_bytes(m.group(2))
        except ValueError as err:
            raise ValueError(f"invalid GPU inventory {spec!r}: {err}") from None
        if size <= 0:
            raise ValueError(
                f"invalid GPU inventory {spec!r}: GPU memory in {item.strip()!r} must be positive"
            )
        for _ in range(count):
            gpus.append(Gpu(node_id, len(gpus), size))
    return gpus


def nvml_inventory(node_id: str, own_pids: Iterable[int] = ()) -> list[Gpu]:
    """This node's GPUs as NVML reports them; [] where NVML or the driver is unavailable.

    `used_by_others_bytes` is the sum of `usedGpuMemory` over the compute and graphics processes
    running on the device whose pid is not in `own_pids` (Aspire's replicas, whose memory the
    reservations already account for). Where the driver does not report a foreign process's
    usage (`usedGpuMemory` is None, e.g. in some containers), the device's used memory minus
    the known usage of `own_pids` is taken instead. Pids must be in NVML's pid namespace.
    """
    try:
        import pynvml
    except ImportError:
        return []
    own = set(own_pids)
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            procs: dict[int, int | None] = {}
            for getter in (
                "nvmlDeviceGetComputeRunningProcesses",
                "nvmlDeviceGetGraphicsRunningProcesses",
            ):
                try:
                    for proc in getattr(pynvml, getter)(handle):
                        procs.setdefault(proc.pid, proc.usedGpuMemory)
                except (pynvml.NVMLError, AttributeError):
                    pass
            others = {pid: used for pid, used in procs.items() if pid not in own}
            if any(used is None for used in others.values()):
                mine = sum(used or 0 for pid, used in procs.items() if pid in own)
                used_by_others = max(int(memory.used) - mine, 0)
            else:
                used_by_others = sum(used or 0 for used in others.values())  # none is None here
            gpus.append(
                Gpu(node_id, index, int(memory.total), min(int(used_by_others), int(memory.total)))
            )
        return gpus
    except pynvml.NVMLError:
        return []
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass


def aspire_pids() -> list[int]:
    """Pids of this node's Aspire replicas (their environment carries ASPIRE_SERVABLE)."""
    pids = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if b"ASPIRE_SERVABLE=" in f.read():
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


# GPUs; host RAM per node; Ray CPUs per node that replicas may book
Inventory = tuple[list[Gpu], dict[str, int], dict[str, float]]
# Ray CPUs Aspire's own actors book on a node, given (node id, whether it is the head)
HeldCpus = Callable[[str, bool], float]


def nodes_inventory(
    nodes: list[dict],
    declared: str | None,
    probe: Callable[[str], list[Gpu]],
    held_cpus: Optional[HeldCpus] = None,
) -> Inventory:
    """(GPUs, host RAM by node, Ray CPUs by node) of the alive nodes among `ray.nodes()`-shaped
    records.

    With a declared spec, a node gets the spec's GPUs up to its number of Ray logical GPUs (a
    node without Ray GPUs gets none, so a declaration never invents GPUs Ray cannot see);
    without one, `probe(node_id)` reads the GPUs of each node where Ray found some. A node's
    Ray CPUs are its `CPU` resource less `held_cpus(node, is_head)` (never below 0)."""
    gpus: list[Gpu] = []
    ram: dict[str, int] = {}
    cpus: dict[str, float] = {}
    for node in nodes:
        if not node.get("Alive", node.get("alive", False)):
            continue
        node_id = node["NodeID"]
        resources = node.get("Resources", {})
        ram[node_id] = int(resources.get("memory", 0))
        held = held_cpus(node_id, "node:__internal_head__" in resources) if held_cpus else 0.0
        cpus[node_id] = max(float(resources.get("CPU", 0.0)) - held, 0.0)
        ray_gpus = int(resources.get("GPU", 0))
        if declared is not None:
            mine = declared_inventory(declared, node_id)
            if ray_gpus and len(mine) != ray_gpus:
                log.warning(
                    "node %s has %d Ray GPUs but %d are declared (%s); using %d",
                    node_id[:12],
                    ray_gpus,
                    len(mine),
                    declared,
                    min(ray_gpus, len(mine)),
                )
            gpus.extend(mine[:ray_gpus])
        elif ray_gpus:  # Ray found no GPU on a node (or they are hidden from it): nothing to read
            gpus.extend(probe(node_id))
    return gpus, ram, cpus


@functools.cache
def _probe_task():
    import ray

    @ray.remote(num_cpus=0)
    def probe(node_id: str) -> list[Gpu]:
        return nvml_inventory(node_id, aspire_pids())

    return probe


def cluster_inventory(
    declared: str | None, held_cpus: Optional[HeldCpus] = None, timeout_s: float = 10.0
) -> Inventory:
    """The inventory of the Ray cluster this process is connected to (`held_cpus`: what
    Aspire's own actors book on a node, `nodes_inventory`)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    def probe(node_id: str) -> list[Gpu]:
        try:
            return ray.get(
                _probe_task()
                .options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))
                .remote(node_id),
                timeout=timeout_s,
            )
        except Exception as exc:
            log.warning("reading the GPUs of node %s failed: %s", node_id[:12], exc)
            return []

    return nodes_inventory(ray.nodes(), declared, probe, held_cpus)


def capacity_grew(old: Inventory, new: Inventory) -> bool:
    """True when some GPU or node has more usable memory or Ray CPUs in `new` than in `old`
    (or is new)."""

    def usable(gpus):
        return {(g.node_id, g.index): g.total_bytes - g.used_by_others_bytes for g in gpus}

    old_gpus, new_gpus = usable(old[0]), usable(new[0])
    return (
        any(v > old_gpus.get(k, -1) for k, v in new_gpus.items())
        or any(v > old[1].get(k, -1) for k, v in new[1].items())
        or any(v > old[2].get(k, -1) for k, v in new[2].items())
    )


def head_node_id() -> str:
    """The Ray head node (the one holding `node:__internal_head__`), else this process's node."""
    import ray

    return next(
        (
            n["NodeID"]
            for n in ray.nodes()
            if n.get("Alive") and "node:__internal_head__" in n.get("Resources", {})
        ),
        ray.get_runtime_context().get_node_id(),
    )
