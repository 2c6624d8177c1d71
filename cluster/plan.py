"""The manager's plan step: what to do next, as values computed from its servable streams.

Pure functions of the streams (cluster/manager_state.py); the manager applies what they return
under its lock and runs the actions on its load threads (cluster/harness.py). Policies come from
policies/: the AspiredVersionPolicy picks each stream's next action (policies/lifecycle.py); the
reservation book places replicas best fit (policies/admission.py, cluster/reservations.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from cluster.manager_state import Stream, VersionRecord
from core.errors import AspireError
from policies.lifecycle import ASPIRED_VERSION_POLICIES, Action, HarnessState, VersionSnapshot


def servable_id(name: str, version: int) -> str:
    """How TF Serving names a servable in its log lines: `{name: X version: N}`."""
    return f"{{name: {name} version: {version}}}"


def next_actions(streams: Iterable[Stream]) -> list[tuple[Stream, Action]]:
    """The next action of every idle stream, by its AspiredVersionPolicy (at most one each)."""
    actions = []
    for stream in streams:
        if stream.busy:
            continue
        snapshots = [
            VersionSnapshot(r.version, r.state, r.aspired) for r in stream.versions.values()
        ]
        action = ASPIRED_VERSION_POLICIES[stream.policy](snapshots)
        if action is not None:
            actions.append((stream, action))
    return actions


def misplaced(
    streams: Iterable[Stream], shared: Callable[[str], bool], refused: set[tuple[str, int]]
) -> list[tuple[Stream, VersionRecord]]:
    """AVAILABLE versions of idle streams whose placement is not their model's now (the side
    file moved the model between "dedicated" and "shared"), except moves already refused."""
    found = []
    for stream in streams:
        if stream.busy:
            continue
        want = shared(stream.name)
        for record in stream.versions.values():
            if (
                record.state is HarnessState.READY
                and record.aspired
                and record.deployed is not None
                and record.deployed.shared != want
                and (stream.name, record.version) not in refused
            ):
                found.append((stream, record))
                break  # one move per stream at a time
    return found


def replica_keys(servable: str, replicas: int) -> list[str]:
    """The reservation-book keys of a version's replicas, one per replica."""
    if replicas == 1:
        return [servable]
    return [f"{servable} replica {i + 1} of {replicas}" for i in range(replicas)]


def refused_to_retry(streams: Iterable[Stream]) -> list[tuple[Stream, VersionRecord]]:
    """Versions refused for lack of resources and still aspired: tried again when capacity
    may have grown."""
    return [
        (stream, record)
        for stream in streams
        for record in stream.versions.values()
        if record.state is HarnessState.ERROR and record.refused and record.aspired
    ]


def lost_with_nodes(
    streams: Iterable[Stream], node_ids: set[str]
) -> list[tuple[Stream, VersionRecord, list[str]]]:
    """AVAILABLE versions with a replica on one of `node_ids`, with the nodes they lost."""
    hit = []
    for stream in streams:
        for record in stream.versions.values():
            nodes = record.deployed.node_ids() if record.deployed is not None else set()
            gone = sorted(nodes & set(node_ids))
            if record.state is HarnessState.READY and gone:
                hit.append((stream, record, gone))
    return hit


def label_refusal(
    streams: dict[str, Stream],
    current: dict[str, dict[str, int]],
    labels: dict[str, dict[str, int]],
    allow_unavailable: bool,
) -> AspireError | None:
    """TF Serving's label rules: a label may point only at an AVAILABLE version; with
    `allow_unavailable`, also a new label, or one that keeps its version. Returns the error of
    the first label that breaks them, None when all hold."""
    for name, mapping in labels.items():
        stream = streams.get(name)
        for label, version in mapping.items():
            record = stream.versions.get(version) if stream else None
            if record is not None and record.state is HarnessState.READY:
                continue
            if allow_unavailable and current.get(name, {}).get(label, version) == version:
                continue
            return AspireError(
                f"Request to assign label to version {version} of model {name}, which is "
                "not currently available for inference",
                "FAILED_PRECONDITION",
            )
    return None
