"""The next load or unload action for one servable stream: TF Serving's AspiredVersionPolicy.

Input is a snapshot of every version the manager tracks for one servable name: its harness state
and whether it is still aspired. Output is at most one action. The manager executes it and asks
again; it never runs two actions for the same stream at once.

- availability-preserving (TF Serving's default): load the new version before unloading the
  old one, so the stream never has zero available versions during a rollout; a new version that
  fails to load leaves the old one serving.
- resource-preserving: unload the old version first, so two versions are never held at once.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable, Iterable


class HarnessState(enum.Enum):
    """Internal state of one version (TF Serving's LoaderHarness, folded)."""

    NEW = "new"  # aspired, load not started
    LOADING = "loading"  # resources reserved, deployment being created
    READY = "ready"  # deployment answers; in the serving map
    UNLOADING = "unloading"  # out of the serving map; deployment being deleted
    DISABLED = "disabled"  # unloaded cleanly
    ERROR = "error"  # load failed or was refused


# HarnessState state -> the ModelVersionStatus.State clients see.
PUBLIC_STATE = {
    HarnessState.NEW: "START",
    HarnessState.LOADING: "LOADING",
    HarnessState.READY: "AVAILABLE",
    HarnessState.UNLOADING: "UNLOADING",
    HarnessState.DISABLED: "END",
    HarnessState.ERROR: "END",
}


@dataclass(frozen=True)
class VersionSnapshot:
    version: int
    state: HarnessState
    aspired: bool


@dataclass(frozen=True)
class Action:
    kind: str  # "load" | "unload"
    version: int


def availability_preserving(versions: Iterable[VersionSnapshot]) -> Action | None:
    versions = list(versions)
    unaspired_ready = [v for v in versions if not v.aspired and v.state is HarnessState.READY]
    any_aspired = any(v.aspired for v in versions)
    aspired_ready = any(v.aspired and v.state is HarnessState.READY for v in versions)
    if unaspired_ready and (not any_aspired or aspired_ready or len(unaspired_ready) > 1):
        return Action("unload", min(v.version for v in unaspired_ready))
    aspired_new = [v.version for v in versions if v.aspired and v.state is HarnessState.NEW]
    if aspired_new:
        return Action("load", max(aspired_new))
    return None


def resource_preserving(versions: Iterable[VersionSnapshot]) -> Action | None:
    versions = list(versions)
    for v in versions:  # list order, as TF Serving does
        if not v.aspired and v.state is HarnessState.READY:
            return Action("unload", v.version)
    settled = (HarnessState.DISABLED, HarnessState.ERROR)
    if any(not v.aspired and v.state not in settled for v in versions):
        return None  # an old version is still loading or unloading: wait for it to release
    aspired_new = [v.version for v in versions if v.aspired and v.state is HarnessState.NEW]
    if aspired_new:
        return Action("load", max(aspired_new))
    return None


# TF Serving's AspiredVersionPolicy: the stream's versions -> its next action, if any. (Which
# versions are aspired at all is the ServableVersionPolicy's choice, policies/aspired.py.)
AspiredVersionPolicy = Callable[[Iterable[VersionSnapshot]], Action | None]

ASPIRED_VERSION_POLICIES: dict[str, AspiredVersionPolicy] = {
    "availability_preserving": availability_preserving,
    "resource_preserving": resource_preserving,
}
