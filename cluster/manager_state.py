"""The manager's state: version records, the form they are stored in, and how a restarted
manager takes over from what its predecessor stored.

The manager actor (cluster/manager_actor.py) is detached with `max_restarts=-1`: when its process
dies, Ray starts it again with the same ManagerConfig. What it learnt since start-up is kept in
a `StateStore`, in production Ray's GCS key-value store (`GcsStore`), which outlives the process.

Layout (namespace "aspire", keys under `state_prefix(manager name)`, values JSON in UTF-8):
1. `config`: the model list, labels and per-model settings in force (cluster/manager_actor.py writes
   it whenever a reload, `set_settings` or the side file changes them).
2. `epoch`: a ceiling of the serving-map epoch. The manager never publishes an epoch above it
   and raises it by `EPOCH_BLOCK` at a time (cluster/publisher.py), so one write covers many
   publications; a restarted manager starts above it, so every router holding an older map
   fetches the new one.
3. `model/<name>`: one key per servable stream: its version policy, the peak VRAM measured per
   version, and every version record (state, error, where it runs under "where": the
   `Deployed` record's document, core/deployed.py, with applications, placements and RAM; the
   admission reservations held, load attempts).

Writes (cluster/journal.py `Journal`, composed into cluster/manager.py's Manager):
1. A change marks its stream dirty; `flush_state()` writes the key of each dirty stream (the
   controller runs it every 100 ms). A stream that did not change is not written again (the
   source repeats the same aspired versions every poll), so a steady state writes nothing.
2. Write-ahead where a restart must not be misled: a version is stored LOADING before its
   deployment is created, AVAILABLE before any router can see it in the serving map, and
   UNLOADING (or END after a lost node) before its deployment is deleted.
3. A failed write is logged and tried again at the next flush; it never stops a loop.

What survives a restart: every version record, reservations (booked again exactly where they
were), labels, traffic splits, settings, the model list, measured VRAM, and serving-map epochs
(they only grow). What does not: metric totals kept by the manager (they restart from zero,
which Prometheus treats as a counter reset; deltas that routers and replicas failed to ship while
the manager was down are shipped afterwards, each shipment applied once: core/metrics.py
`Shipper`), which routers exist and what they acknowledged
(hence the router grace), and loads or unloads in flight (redone, see `Manager.restore`).

A fresh start of the manager clears the prefix; only Ray's restart of the same actor reads it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

from core.deployed import Deployed
from core.names import NAMESPACE
from policies.admission import Placement
from policies.lifecycle import PUBLIC_STATE, HarnessState

log = logging.getLogger("aspire.manager")

# A version whose loads were cut short by this many restarts of the manager (a load that takes
# the manager down with it) ends with ABORTED instead of being loaded again and again.
MAX_INTERRUPTED_LOADS = 3


def state_prefix(manager_name: str) -> str:
    return f"manager/{manager_name}/"


@dataclass
class VersionRecord:
    version: int
    path: str
    state: HarnessState = HarnessState.NEW
    aspired: bool = True
    error_code: str = "OK"
    error_message: str = ""
    deployed: Deployed | None = None  # where it runs, set while its deployment exists
    ram_bytes: int | None = None
    load_seconds: float | None = None
    refused: bool = False  # END for lack of resources: tried again when capacity changes
    reservations: tuple[str, ...] = ()  # keys held in the reservation book
    placements: tuple[Placement, ...] = ()  # what each of those keys holds, in the same order
    attempts: int = 0  # backend loads started for this record
    interrupted: int = 0  # loads of this version cut short by a restart of the manager
    # replicas of an AVAILABLE version lost with a node and not re-placed yet, and why
    # (cluster/repairs.py)
    missing_replicas: int = 0
    missing_reason: str = ""
    # a refused version waiting for a node to join (cluster/capacity.py): (since, until, one Ray
    # bundle per replica), Unix time; kept by its retries, so the deadline is the first wait's
    capacity_wait: tuple[float, float, tuple[dict, ...]] | None = None
    # while a failed load waits for its next try (not stored: a restarted manager starts over):
    # {"attempt": the next try's number, "of": tries in all, "error_code", "error_message" of
    # the last try, "next_try_at": when it is due, Unix time}
    retry: dict | None = None

    def waiting_for_capacity(self, now: float | None = None) -> bool:
        """Refused for lack of room, still aspired, and its wait for a node not over."""
        return (
            self.capacity_wait is not None
            and self.state is HarnessState.ERROR
            and self.refused
            and self.aspired
            and (time.time() if now is None else now) < self.capacity_wait[1]
        )

    def public_state(self, now: float | None = None) -> str:
        """The state clients see: LOADING while it waits for capacity."""
        return "LOADING" if self.waiting_for_capacity(now) else PUBLIC_STATE[self.state]

    def status(self, now: float | None = None) -> dict:
        """TF Serving's status of the version. While it waits for capacity: LOADING, status
        OK (what it waits for is in Aspire's status, `capacity_waits`); once the wait ran out,
        the refusal says how long it waited."""
        if self.waiting_for_capacity(now):
            code, message = "OK", ""
        else:
            code, message = self.error_code, self.error_message
            if self.capacity_wait is not None and self.state is HarnessState.ERROR and self.refused:
                waited = self.capacity_wait[1] - self.capacity_wait[0]
                message += f"; no node with room joined in {waited:.0f} s (--capacity_wait_s)"
        return {
            "version": self.version,
            "state": self.public_state(now),
            "error_code": code,
            "error_message": message,
            "aspired": self.aspired,
        }


@dataclass
class Stream:
    name: str
    policy: str = "availability_preserving"
    versions: dict[int, VersionRecord] = field(default_factory=dict)
    busy: bool = False  # an action is in flight


class StateStore(Protocol):
    """A durable map of str keys to bytes. Each call is atomic on its own; nothing more."""

    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, value: bytes) -> None: ...

    def get_prefix(self, prefix: str) -> dict[str, bytes]: ...

    def delete_prefix(self, prefix: str) -> None: ...


class MemoryStore:
    """A StateStore in this process (unit tests, and a manager run without Ray). It survives a
    Manager, not the process. Counts writes and bytes written."""

    def __init__(self):
        self._data: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self.writes = 0
        self.bytes_written = 0

    def get(self, key: str) -> bytes | None:
        with self._lock:
            return self._data.get(key)

    def put(self, key: str, value: bytes) -> None:
        with self._lock:
            self._data[key] = bytes(value)
            self.writes += 1
            self.bytes_written += len(value)

    def get_prefix(self, prefix: str) -> dict[str, bytes]:
        with self._lock:
            return {k: v for k, v in self._data.items() if k.startswith(prefix)}

    def delete_prefix(self, prefix: str) -> None:
        with self._lock:
            for key in [k for k in self._data if k.startswith(prefix)]:
                del self._data[key]


class GcsStore:
    """Ray's GCS key-value store (ray.experimental.internal_kv), from any process of the
    cluster that called ray.init. A write is one GCS round trip (about 1.5 ms on loopback);
    reading a prefix back is one list plus one multi-get, whatever the number of keys."""

    def __init__(self, namespace: str = NAMESPACE):
        self._namespace = namespace

    def get(self, key: str) -> bytes | None:
        from ray.experimental import internal_kv

        return internal_kv._internal_kv_get(key, namespace=self._namespace)

    def put(self, key: str, value: bytes) -> None:
        from ray.experimental import internal_kv

        internal_kv._internal_kv_put(key, value, overwrite=True, namespace=self._namespace)

    def get_prefix(self, prefix: str) -> dict[str, bytes]:
        from ray.experimental import internal_kv

        keys = internal_kv._internal_kv_list(prefix, namespace=self._namespace)
        if not keys:
            return {}
        client = internal_kv.internal_kv_get_gcs_client()
        if hasattr(client, "internal_kv_multi_get"):
            found = client.internal_kv_multi_get(keys, self._namespace.encode())
        else:  # older Ray: one round trip per key
            found = {k: internal_kv._internal_kv_get(k, namespace=self._namespace) for k in keys}
        return {
            (k.decode() if isinstance(k, bytes) else k): v
            for k, v in found.items()
            if v is not None
        }

    def delete_prefix(self, prefix: str) -> None:
        from ray.experimental import internal_kv

        internal_kv._internal_kv_del(prefix, del_by_prefix=True, namespace=self._namespace)


# ---- version records ------------------------------------------------------------------------
def record_doc(record: VersionRecord) -> dict:
    """A VersionRecord as JSON-able data ("missing" only while replicas are missing)."""
    doc = {
        "version": record.version,
        "path": record.path,
        "state": record.state.value,
        "aspired": record.aspired,
        "error_code": record.error_code,
        "error_message": record.error_message,
        "where": None if record.deployed is None else record.deployed.to_doc(),
        "ram_bytes": record.ram_bytes,
        "load_seconds": record.load_seconds,
        "refused": record.refused,
        "attempts": record.attempts,
        "interrupted": record.interrupted,
        "reservations": [
            [key, p.node_id, p.gpu_index, p.vram_bytes, p.ram_bytes] + ([p.cpus] if p.cpus else [])
            for key, p in zip(record.reservations, record.placements, strict=True)
        ],
    }
    if record.missing_replicas:
        doc["missing"] = [record.missing_replicas, record.missing_reason]
    if record.capacity_wait is not None:
        since, until, bundles = record.capacity_wait
        doc["capacity_wait"] = [since, until, list(bundles)]
    return doc


def record_fields(doc: dict) -> dict:
    """Keyword arguments that rebuild the VersionRecord `record_doc` wrote."""
    held = doc.get("reservations") or []
    missing = doc.get("missing") or (0, "")
    return {
        "version": int(doc["version"]),
        "path": doc["path"],
        "state": HarnessState(doc["state"]),
        "aspired": bool(doc["aspired"]),
        "error_code": doc["error_code"],
        "error_message": doc["error_message"],
        "deployed": None if doc.get("where") is None else Deployed.from_doc(doc["where"]),
        "ram_bytes": doc.get("ram_bytes"),
        "load_seconds": doc.get("load_seconds"),
        "refused": bool(doc.get("refused")),
        "attempts": int(doc.get("attempts", 0)),
        "interrupted": int(doc.get("interrupted", 0)),
        "missing_replicas": int(missing[0]),
        "missing_reason": str(missing[1]),
        "capacity_wait": None
        if doc.get("capacity_wait") is None
        else (
            float(doc["capacity_wait"][0]),
            float(doc["capacity_wait"][1]),
            tuple(dict(b) for b in doc["capacity_wait"][2]),
        ),
        "reservations": tuple(h[0] for h in held),
        "placements": tuple(Placement(*h[1:6]) for h in held),
    }


def stream_doc(
    stream: Stream,
    measured: dict[int, int],
    ready: tuple[VersionRecord, dict[str, object]] | None = None,
) -> dict:
    """The stored document of `stream`, with the peak VRAM measured per version. `ready`: (one
    of its records, fields) writes that record with `fields` set, before they are set in
    memory."""
    records = []
    for record in stream.versions.values():
        if ready is not None and ready[0] is record:
            record = dataclasses.replace(record, **ready[1])  # type: ignore[arg-type]
        records.append(record_doc(record))
    return {
        "name": stream.name,
        "policy": stream.policy,
        "versions": records,
        "measured_vram": {str(v): b for v, b in measured.items()},
    }


def dumps(doc) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode("utf-8")


def loads(data: bytes):
    return json.loads(data.decode("utf-8"))


# ---- the config's dataclasses ---------------------------------------------------------------
def _config_types() -> dict[str, type]:
    from config.aspire_config import Autoscaling, ModelSettings
    from config.model_config import ModelSource
    from policies.aspired import All, Latest, Specific
    from policies.rollout import RolloutSpec, ShadowPhase, Step
    from policies.rollout_judge import Analysis, ShadowLimits
    from policies.traffic import Experiment, TrafficSplit

    return {
        f"{t.__module__}.{t.__qualname__}": t
        for t in (
            ModelSource,
            Latest,
            All,
            Specific,
            ModelSettings,
            Autoscaling,
            TrafficSplit,
            Experiment,
            RolloutSpec,
            ShadowPhase,
            Step,
            Analysis,
            ShadowLimits,
        )
    }


CONFIG_TYPES = _config_types()


def encode_value(value):
    """JSON-able form of config values: dataclasses of CONFIG_TYPES, tuples, lists, dicts
    (any keys), str, numbers, bool and None, each kept exactly (a tuple stays a tuple)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        kind = f"{type(value).__module__}.{type(value).__qualname__}"
        if kind not in CONFIG_TYPES:
            raise TypeError(f"{kind} is not a stored config type")
        return {
            "@type": kind,
            "fields": {
                f.name: encode_value(getattr(value, f.name)) for f in dataclasses.fields(value)
            },
        }
    if isinstance(value, tuple):
        return {"@tuple": [encode_value(v) for v in value]}
    if isinstance(value, list):
        return [encode_value(v) for v in value]
    if isinstance(value, dict):
        return {"@dict": [[encode_value(k), encode_value(v)] for k, v in value.items()]}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} in the manager's state")


def decode_value(doc):
    if isinstance(doc, list):
        return [decode_value(v) for v in doc]
    if isinstance(doc, dict):
        if "@tuple" in doc:
            return tuple(decode_value(v) for v in doc["@tuple"])
        if "@dict" in doc:
            return {decode_value(k): decode_value(v) for k, v in doc["@dict"]}
        kind = CONFIG_TYPES.get(str(doc.get("@type")))
        if kind is None:
            raise ValueError(f"unknown stored type {doc.get('@type')!r}")
        return kind(**{k: decode_value(v) for k, v in doc["fields"].items()})
    return doc


def app_owner(app: str, prefixes: dict[str, str]) -> tuple[str, int] | None:
    """(model, version) of an application named `<prefix><version>[-p<i>]`, for the model
    whose prefix it is; None if no model's."""
    m = re.fullmatch(r"(.*?)(\d+)(-p\d+)?", app)
    if m is None or m.group(1) not in prefixes:
        return None
    return prefixes[m.group(1)], int(m.group(2))
