"""`Deployed`: the manager's record of a loaded servable version, where it runs and what it holds.

Contract:
1. Written by the backend that created the version's Serve applications
   (cluster/backend/serve_backend.py `ServeBackend.load`, cluster/backend/shared_hosts.py
   `SharedHostLoader.load_shared`), once a replica of every application answered; the harness
   (cluster/harness.py) and the placement mover (cluster/moves.py) add `host_need` to a shared
   version's record. Nobody changes it afterwards: it is frozen, and a version moved elsewhere
   gets a new one.
   A node loss makes a new record of what survives (`split_by_nodes`), and re-placed replicas
   another (`merged`), cluster/repairs.py.
2. Read by the manager's parts: the serving map (core/contracts.py `VersionAddress.from_deployed`:
   apps, key, max_queued_requests), the plan (cluster/plan.py: shared or not, the nodes it runs
   on), the restore (cluster/recovery.py: its applications; cluster/harness.py: a shared
   version's host and need), the backend's unload (applications, or host and key), and the
   status API (`placements`, each as `AppPlacement.to_doc()`, docs/api.md).
3. Stored in the manager's journal as the version record's "where" (cluster/manager_state.py):
   `to_doc()` writes the JSON document the manager has always stored under that key, and
   `from_doc(to_doc())` gives back an equal record. `from_doc` reads every document stored so
   far; a key missing from an older document takes its field's default.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Iterable


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


@dataclass(frozen=True)
class AppPlacement:
    """One Serve application of a version (or the shared host holding it) and its replicas.

    `app`: the application's name. `host`: the shared host's application ("" for a version with
    its own replicas; stored only when set). `replicas`: replicas reserved for it;
    `min_replicas`: the autoscaling floor (`replicas` when not autoscaled). `node_id`, `pid`,
    `cuda_visible_devices`: what the first replica that answered reported (core/contracts.py
    `ReplicaPing`). `gpu`: the GPU index its replicas were placed on (None: CPU);
    `vram_bytes`: GPU memory reserved per replica (0 inside a shared host, whose block holds
    it). `measured_vram_bytes`: peak GPU memory the replica measured after its load (None
    without NVML or in a shared host). `session_threads`: the TensorFlow session's (intra-op,
    inter-op) threads, None in a shared host.
    """

    app: str
    replicas: int = 1
    min_replicas: int = 1
    node_id: str | None = None
    pid: int | None = None
    gpu: int | None = None
    vram_bytes: int = 0
    cuda_visible_devices: str | None = None
    measured_vram_bytes: int | None = None
    session_threads: tuple[int, int] | None = None
    host: str = ""

    def to_doc(self) -> dict[str, Any]:
        """The JSON form, as stored in the journal and answered by the status API."""
        doc: dict[str, Any] = {"app": self.app}
        if self.host:
            doc["host"] = self.host
        doc.update(
            {
                "replicas": self.replicas,
                "min_replicas": self.min_replicas,
                "node_id": self.node_id,
                "pid": self.pid,
                "gpu": self.gpu,
                "vram_bytes": self.vram_bytes,
                "cuda_visible_devices": self.cuda_visible_devices,
                "measured_vram_bytes": self.measured_vram_bytes,
                "session_threads": None
                if self.session_threads is None
                else list(self.session_threads),
            }
        )
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> AppPlacement:
        threads = doc.get("session_threads")
        replicas = int(doc.get("replicas", 1))
        return cls(
            app=str(doc.get("app") or ""),
            replicas=replicas,
            min_replicas=int(doc.get("min_replicas", replicas)),
            node_id=doc.get("node_id"),
            pid=_int_or_none(doc.get("pid")),
            gpu=_int_or_none(doc.get("gpu")),
            vram_bytes=int(doc.get("vram_bytes") or 0),
            cuda_visible_devices=doc.get("cuda_visible_devices"),
            measured_vram_bytes=_int_or_none(doc.get("measured_vram_bytes")),
            session_threads=None if threads is None else (int(threads[0]), int(threads[1])),
            host=str(doc.get("host") or ""),
        )


@dataclass(frozen=True)
class Deployed:
    """Where a loaded version runs: its Serve applications and what routers and the manager need
    to reach, restore and delete it.

    `apps`: (application, replicas) per application; a version with its own replicas has one
    application per (node, GPU) its replicas were placed on, a shared version the one of its
    host. `placements`: one `AppPlacement` per application, in the same order. `ram_bytes`:
    the host RAM one replica was estimated to need (the SavedModel's estimate).
    `measured_vram_bytes`: the largest of the placements' measured peaks (None: none measured).
    `max_queued_requests`: calls a router may hold for the version while its replicas are full
    (-1: no limit).

    A shared version (`host` set) also has: `key`, its servable key inside the host, sent with
    every call; `host_vram_bytes`, the GPU memory of the host's block (0 for a CPU host), which
    bounds TensorFlow's GPU memory when a restarted manager hands it back to its host; and
    `host_need`, (VRAM, RAM) the version holds inside the host's block, booked again by a
    restarted manager.
    """

    apps: tuple[tuple[str, int], ...]
    placements: tuple[AppPlacement, ...] = ()
    ram_bytes: int | None = None
    measured_vram_bytes: int | None = None
    max_queued_requests: int = 1000
    key: str = ""
    host: str = ""
    host_vram_bytes: int = 0
    host_need: tuple[int, int] | None = None

    @classmethod
    def of_apps(cls, apps: Iterable[str]) -> Deployed:
        """Just the applications, to delete what a record no longer describes (a restarted
        manager's recovery)."""
        return cls(apps=tuple((app, 0) for app in apps))

    @property
    def shared(self) -> bool:
        """Whether the version runs inside a shared host."""
        return bool(self.host)

    @property
    def device(self) -> str:
        """ "gpu" when its (first) placement is on a GPU, else "cpu"."""
        return "gpu" if self.placements and self.placements[0].gpu is not None else "cpu"

    def app_names(self) -> list[str]:
        return [app for app, _ in self.apps]

    def node_ids(self) -> set[str]:
        """The Ray nodes its replicas run on, as they reported them."""
        return {p.node_id for p in self.placements if p.node_id is not None}

    def split_by_nodes(self, gone: set[str]) -> tuple[Deployed, tuple[AppPlacement, ...]]:
        """(this record without the applications whose replicas ran on the nodes `gone`, those
        applications' placements): what a node loss leaves of a version with its own replicas."""
        lost = tuple(p for p in self.placements if p.node_id in gone)
        names = {p.app for p in lost}
        return (
            replace(
                self,
                apps=tuple((a, n) for a, n in self.apps if a not in names),
                placements=tuple(p for p in self.placements if p.app not in names),
            ),
            lost,
        )

    def merged(self, more: Deployed) -> Deployed:
        """This record with the applications of `more` (further replicas of the same version,
        cluster/repairs.py) added after its own."""
        measured = [m for m in (self.measured_vram_bytes, more.measured_vram_bytes) if m]
        return replace(
            self,
            apps=self.apps + more.apps,
            placements=self.placements + more.placements,
            measured_vram_bytes=max(measured) if measured else None,
        )

    def with_host_need(self, vram_bytes: int, ram_bytes: int) -> Deployed:
        return replace(self, host_need=(vram_bytes, ram_bytes))

    def to_doc(self) -> dict[str, Any]:
        """The JSON document stored as the version record's "where" (cluster/manager_state.py),
        key for key as the manager has stored it: the shared keys only for a shared version,
        "host_need" only once set."""
        doc: dict[str, Any] = {"apps": [[app, count] for app, count in self.apps]}
        if self.shared:
            doc.update(
                {"key": self.key, "host": self.host, "host_vram_bytes": self.host_vram_bytes}
            )
        doc.update(
            {
                "ram_bytes": self.ram_bytes,
                "placements": [p.to_doc() for p in self.placements],
                "measured_vram_bytes": self.measured_vram_bytes,
                "max_queued_requests": self.max_queued_requests,
            }
        )
        if self.host_need is not None:
            doc["host_need"] = list(self.host_need)
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Deployed:
        """The record `to_doc` wrote (or an older manager stored under "where")."""
        need = doc.get("host_need")
        return cls(
            apps=tuple((str(app), int(count)) for app, count in doc.get("apps") or ()),
            placements=tuple(AppPlacement.from_doc(p) for p in doc.get("placements") or ()),
            ram_bytes=_int_or_none(doc.get("ram_bytes")),
            measured_vram_bytes=_int_or_none(doc.get("measured_vram_bytes")),
            max_queued_requests=int(doc.get("max_queued_requests", 1000)),
            key=str(doc.get("key") or ""),
            host=str(doc.get("host") or ""),
            host_vram_bytes=int(doc.get("host_vram_bytes") or 0),
            host_need=None if need is None else (int(need[0]), int(need[1])),
        )
