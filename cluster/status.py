"""What the manager reports about its servable streams, as plain functions of them: TF Serving's
model status and the state gauges of the metrics page. Callers hold the manager's lock."""

from __future__ import annotations

from cluster.manager_state import Stream
from core.contracts import ServingMap, VersionAddress
from core.errors import AspireError
from policies.admission import Placement
from policies.lifecycle import PUBLIC_STATE, HarnessState
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
    for name in sorted(streams):
        stream = streams[name]
        available = set()
        for version in sorted(stream.versions):
            record = stream.versions[version]
            versions.append(
                {"model": name, "version": version, "state": PUBLIC_STATE[record.state]}
            )
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
        "vram_by_version": [
            {"model": m, "version": v, "node": n, "gpu": g, "bytes": b}
            for (m, v, n, g), b in sorted(vram.items())
        ],
    }


# AVAILABLE or END: where TF Serving's start-up and reload waits end for a model
SETTLED = (HarnessState.READY, HarnessState.ERROR, HarnessState.DISABLED)


def newest_first(stream: Stream | None) -> list:
    return sorted(stream.versions.values(), key=lambda r: -r.version) if stream else []


def models_pending(streams: dict[str, Stream], names: list[str]) -> list[str]:
    """The models among `names` with no version AVAILABLE or END yet."""
    return [n for n in names if not any(r.state in SETTLED for r in newest_first(streams.get(n)))]


def models_failed(streams: dict[str, Stream], names: list[str]) -> dict[str, dict]:
    """{name: status of its newest END version} for the models among `names` that have versions
    but none AVAILABLE."""
    failed = {}
    for name in names:
        records = newest_first(streams.get(name))
        if records and not any(r.state is HarnessState.READY for r in records):
            ended = [r for r in records if r.state in SETTLED]
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


def serving_map(
    streams: dict[str, Stream],
    labels: dict[str, dict[str, int]],
    traffic: dict[str, tuple],
    epoch: int,
    poll_s: float,
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
        known=frozenset(streams),
        poll_s=poll_s,
    )
