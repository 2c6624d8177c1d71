"""What the manager reports about its servable streams, as plain functions of them: TF Serving's
model status and the state gauges of the metrics page. Callers hold the manager's lock."""

from __future__ import annotations

import time

from cluster.manager_state import Stream
from core.contracts import ServingMap, VersionAddress
from core.errors import AspireError
from policies.admission import Placement
from policies.lifecycle import HarnessState
from policies.traffic import TrafficSplit, effective_weights


def model_status(stream: Stream | None, name: str, version: int | None = None) -> list[dict]:
    """Every version of `stream` seen, newest first (only `version`, when given); raises
    NOT_FOUND with TF Serving's messages."""
    if stream is None or not stream.versions:
        raise AspireError(f"Could not find any versions of model {name}", "NOT_FOUND")
    if version is not None:
        record = stream.versions.get(version)
        if record is None:
            raise AspireError(f"Could not find version {version} of model {name}", "NOT_FOUND")
        return [record.status()]
    return [stream.versions[v].status() for v in sorted(stream.versions, reverse=True)]


def metrics_state(
    streams: dict[str, Stream],
    labels: dict[str, dict[str, int]],
    traffic: dict[str, tuple],
    held: dict[str, Placement],
) -> dict:
    """The gauges of core/metrics.py `render_aspire`: every version's state, what each version
    reserves where (`held`: the reservation book's placements), and each model's share of
    unversioned traffic."""
    versions: list[dict] = []
    vram: dict[tuple, int] = {}
    shares: list[dict] = []
    waits: list[dict] = []
    now = time.time()
    for name in sorted(streams):
        stream = streams[name]
        available = set()
        for version in sorted(stream.versions):
            record = stream.versions[version]
            versions.append({"model": name, "version": version, "state": record.public_state(now)})
            if record.waiting_for_capacity(now):
                assert record.capacity_wait is not None
                seconds = now - record.capacity_wait[0]
                waits.append({"model": name, "version": version, "seconds": seconds})
            if record.state is HarnessState.READY:
                available.add(version)
            for key in record.reservations:
                p = held.get(key)
                if p is not None and p.gpu_index is not None:
                    slot = (name, version, p.node_id, p.gpu_index)
                    vram[slot] = vram.get(slot, 0) + p.vram_bytes
        split = traffic.get(name)
        weights = effective_weights(
            TrafficSplit(tuple(split)) if split else None, labels.get(name, {}), available
        )
        shares += [{"model": name, "version": v, "weight": w} for v, w in sorted(weights.items())]
    return {
        "versions": versions,
        "traffic": shares,
        "capacity_waits": waits,
        "vram_by_version": [
            {"model": m, "version": v, "node": n, "gpu": g, "bytes": b}
            for (m, v, n, g), b in sorted(vram.items())
        ],
    }


# AVAILABLE or END: where TF Serving's start-up and reload waits end for a model
SETTLED = (HarnessState.READY, HarnessState.ERROR, HarnessState.DISABLED)


def newest_first(stream: Stream | None) -> list:
    return sorted(stream.versions.values(), key=lambda r: -r.version) if stream else []


def settled(record) -> bool:
    """AVAILABLE or END, and not waiting for capacity (which shows as LOADING)."""
    return record.state in SETTLED and not record.waiting_for_capacity()


def models_pending(streams: dict[str, Stream], names: list[str]) -> list[str]:
    """The models among `names` with no version AVAILABLE or END yet."""
    return [n for n in names if not any(settled(r) for r in newest_first(streams.get(n)))]


def models_failed(streams: dict[str, Stream], names: list[str]) -> dict[str, dict]:
    """{name: status of its newest END version} for the models among `names` that have versions
    but none AVAILABLE."""
    failed = {}
    for name in names:
        records = newest_first(streams.get(name))
        if records and not any(r.state is HarnessState.READY for r in records):
            ended = [r for r in records if settled(r)]
            if ended:
                failed[name] = ended[0].status()
    return failed


def retries(streams: dict[str, Stream]) -> dict[str, dict[str, dict]]:
    """{model: {version: its retry}} of the versions loading with a failed try behind them."""
    found: dict[str, dict[str, dict]] = {}
    for name, stream in streams.items():
        for version, record in stream.versions.items():
            if record.retry is not None and record.state is HarnessState.LOADING:
                found.setdefault(name, {})[str(version)] = dict(record.retry)
    return found


def capacity_waits(streams: dict[str, Stream]) -> dict[str, dict[str, dict]]:
    """{model: {version: its wait}} of the versions waiting for capacity (cluster/capacity.py):
    since and until (Unix time), the bundles asked for, and the refusal it waits to get past."""
    found: dict[str, dict[str, dict]] = {}
    now = time.time()
    for name, stream in streams.items():
        for version, record in stream.versions.items():
            if record.waiting_for_capacity(now):
                assert record.capacity_wait is not None
                since, until, bundles = record.capacity_wait
                found.setdefault(name, {})[str(version)] = {
                    "since": since,
                    "until": until,
                    "bundles": [dict(b) for b in bundles],
                    "reason": record.error_message,
                }
    return found


def waiting_bundles(streams: dict[str, Stream]) -> list[dict]:
    """The Ray bundles of every version waiting for capacity now, or retried after a wait and
    not admitted yet (its deadline not passed): what the autoscaler is asked to add room for."""
    bundles: list[dict] = []
    now = time.time()
    for stream in streams.values():
        for record in stream.versions.values():
            wait = record.capacity_wait
            if wait is None or now >= wait[1] or not record.aspired:
                continue
            if record.waiting_for_capacity(now) or (
                record.state in (HarnessState.NEW, HarnessState.LOADING) and not record.reservations
            ):
                bundles += [dict(b) for b in wait[2]]
    return bundles


def serving_map(
    streams: dict[str, Stream],
    labels: dict[str, dict[str, int]],
    traffic: dict[str, tuple],
    epoch: int,
    poll_s: float,
    rollouts: dict | None = None,
    held_back: dict[str, int] | None = None,
    experiments: dict[str, tuple[str, str]] | None = None,
) -> ServingMap:
    """The READY versions and where they run, labels, traffic splits and every known model name,
    at `epoch` (core/contracts.py)."""
    models = {}
    for stream in streams.values():
        ready = {
            r.version: VersionAddress.from_deployed(r.deployed)
            for r in stream.versions.values()
            if r.state is HarnessState.READY and r.deployed is not None
        }
        if ready:
            models[stream.name] = ready
    return ServingMap(
        epoch=epoch,
        models=models,
        labels={name: dict(m) for name, m in labels.items()},
        traffic={name: tuple(split) for name, split in traffic.items() if split},
        rollouts=dict(rollouts or {}),
        held_back=dict(held_back or {}),
        experiments=dict(experiments or {}),
        known=frozenset(streams),
        poll_s=poll_s,
    )
