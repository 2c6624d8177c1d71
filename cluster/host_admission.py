"""Admission inside shared hosts: which host a shared version goes to, and when a host opens or
closes ("placement": "shared", docs/design/many-models.md).

A host books one *block* in the reservation book (cluster/reservations.py), as a dedicated
replica books its own need: host RAM on a node, and VRAM on one GPU for a GPU host. Each shared
version then reserves its own need inside a host's block, best fit across the open hosts of its
device (`policies.admission.best_host`); when none has room, a new host is opened if the book
admits a new block. A version that fits in no block, or when no new block fits, is refused with
TF Serving's RESOURCE_EXHAUSTED message, and nothing already placed moves. A host whose last
version leaves gives its block back and is closed (`release` returns its application).

Inside a GPU host, a version's VRAM need leaves out the CUDA context: the host's block holds it
once for every version (policies/admission.py CUDA_CONTEXT_BYTES).

Not thread-safe by itself: the manager calls it under its lock (cluster/harness.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from cluster.reservations import Reservations
from core.deployed import Deployed
from core.names import APP_PREFIX
from core.units import format_bytes
from policies.admission import (
    CUDA_CONTEXT_BYTES,
    HostSlot,
    Need,
    Placement,
    Refusal,
    best_host,
    fits_in_host,
)

HOST_PREFIX = f"{APP_PREFIX}host-"  # a host's Serve application: HOST_PREFIX + its number


def host_need(need: Need) -> Need:
    """A version's need inside a host: the CUDA context is the host's, held once."""
    return Need(max(need.vram_bytes - CUDA_CONTEXT_BYTES, 0), need.ram_bytes)


@dataclass
class _Host:
    slot: HostSlot
    device: str  # "gpu" or "cpu"
    block: Need
    used: Need = Need()
    members: dict[str, Need] = field(default_factory=dict)

    def add(self, servable: str, need: Need) -> None:
        self.members[servable] = need
        self.used = Need(
            self.used.vram_bytes + need.vram_bytes, self.used.ram_bytes + need.ram_bytes
        )

    def remove(self, servable: str) -> None:
        need = self.members.pop(servable)
        self.used = Need(
            self.used.vram_bytes - need.vram_bytes, self.used.ram_bytes - need.ram_bytes
        )


class HostBook:
    def __init__(self, book: Reservations | None, block: Callable[[str], Need], replicas: int = 1):
        self._book = book  # None: no admission (hosts still pack by their block size)
        self._block = block  # device -> the block one host books
        self._replicas = replicas
        self._hosts: dict[str, _Host] = {}
        self._member_of: dict[str, str] = {}  # servable -> host application
        self._next = 1

    def admit(self, servable: str, need: Need, device: str) -> HostSlot | Refusal:
        """Room for `servable` in a host (opened if needed), or the refusal."""
        need = host_need(need)
        block = self._block(device)
        if not fits_in_host(need, block, Need()):
            size, what = (
                (need.vram_bytes, block.vram_bytes)
                if need.vram_bytes > block.vram_bytes
                else (need.ram_bytes, block.ram_bytes)
            )
            kind = "GPU memory" if need.vram_bytes > block.vram_bytes else "host RAM"
            return Refusal(
                "host_block",
                f"Insufficient resources to load servable {servable}; needs "
                f"{format_bytes(size)} of {kind}, a shared host holds {format_bytes(what)} "
                "(--shared_host_ram / --shared_host_vram); give the model "
                '"placement": "dedicated" or a larger host block',
            )
        app = best_host(
            need,
            [(a, h.block, h.used) for a, h in self._hosts.items() if h.device == device],
        )
        if app is None:
            opened = self._open(servable, device, block)
            if isinstance(opened, Refusal):
                return opened
            app = opened
        self._hosts[app].add(servable, need)
        self._member_of[servable] = app
        return self._hosts[app].slot

    def _open(self, servable: str, device: str, block: Need) -> str | Refusal:
        app = f"{HOST_PREFIX}{self._next}"
        keys = [f"{app}#{i}" for i in range(self._replicas)]
        placement: Placement | None = None
        if self._book is not None:
            placed = self._book.reserve_all(keys, block, together=True)
            if isinstance(placed, Refusal):  # named after the version that asked for the host
                message = placed.message.replace(
                    f"servable {keys[0]}", f"servable {servable} (a new shared host's block)"
                )
                return Refusal(placed.reason, message)
            placement = placed[0]
        self._next += 1
        self._hosts[app] = _Host(HostSlot(app, placement, self._replicas), device, block)
        return app

    def release(self, servable: str) -> str | None:
        """`servable` left its host (unloaded or failed); returns the host's application when
        that was its last version: the host is closed and its block given back."""
        app = self._member_of.pop(servable, None)
        if app is None:
            return None
        host = self._hosts[app]
        host.remove(servable)
        if host.members:
            return None
        del self._hosts[app]
        if self._book is not None:
            for i in range(host.slot.replicas):
                self._book.release(f"{app}#{i}")
        return app

    def restore(self, servable: str, deployed: Deployed, need: Need, device: str) -> None:
        """A restarted manager adopts a shared version: its host is booked again as it was."""
        app = deployed.host
        host = self._hosts.get(app)
        if host is None:
            first = deployed.placements[0] if deployed.placements else None
            block = self._block(device)
            placement = None
            if self._book is not None and first is not None and first.node_id:
                gpu = first.gpu
                placement = Placement(
                    first.node_id,
                    gpu,
                    block.vram_bytes if gpu is not None else 0,
                    block.ram_bytes,
                    block.cpus,
                )
                for i in range(self._replicas):
                    self._book.restore(f"{app}#{i}", placement)
            host = self._hosts[app] = _Host(HostSlot(app, placement, self._replicas), device, block)
            number = app[len(HOST_PREFIX) :]
            if number.isdigit():
                self._next = max(self._next, int(number) + 1)
        host.add(servable, host_need(need))
        self._member_of[servable] = app

    def host_of(self, servable: str) -> str | None:
        return self._member_of.get(servable)

    def snapshot(self) -> list[dict]:
        """Per open host: its application, device, block, what its versions use, and them."""
        return [
            {
                "app": app,
                "device": h.device,
                "node": h.slot.placement.node_id if h.slot.placement else None,
                "gpu": h.slot.placement.gpu_index if h.slot.placement else None,
                "block_ram_bytes": h.block.ram_bytes,
                "block_vram_bytes": h.block.vram_bytes,
                "used_ram_bytes": h.used.ram_bytes,
                "used_vram_bytes": h.used.vram_bytes,
                "versions": sorted(h.members),
            }
            for app, h in sorted(self._hosts.items())
        ]
