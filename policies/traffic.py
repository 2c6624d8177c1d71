"""Weighted canary traffic for the unversioned route of a model (an Aspire extension).

TF Serving sends a request without a version or label to the latest available version. A
`TrafficSplit` instead spreads those requests over several versions by weight, e.g.
`{"stable": 90, "canary": 10}` or `{"3": 80, "4": 20}`. A key is a version label (str) or a
version number (int; a key of ASCII digits is read as one, since JSON keys are always strings).

Contract:
- `TrafficSplit.parse` accepts a non-empty dict of key -> finite number >= 0 (bools rejected)
  whose weights sum to more than 0; anything else is a ValueError naming the offending key.
- `effective_weights` resolves keys against the current labels and available versions and
  returns version -> probability summing to 1. Keys that cannot be served right now are dropped
  rather than failing requests; with nothing left it falls back to TF Serving's behaviour
  (latest available version), and returns {} only when no version is available at all.
- `pick` maps a uniform draw u in [0, 1) to a version, deterministically, so callers control the
  randomness (and tests can seed it).
- `Experiment` is a split with a request key: `sticky_draw(salt, key value)` as the draw keeps
  each value on one arm (sticky A/B assignment).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

_INT64_MAX = 2**63 - 1

Key = str | int


def _parse_key(key: object) -> Key:
    if isinstance(key, bool) or not isinstance(key, (str, int)):
        raise ValueError(f"traffic key {key!r} must be a version label or a version number")
    if isinstance(key, int) or (key.isascii() and key.isdigit()):
        version = int(key)
        if not 0 <= version <= _INT64_MAX:
            raise ValueError(f"traffic key {key!r} is not a valid version number")
        return version
    if not key:
        raise ValueError("traffic key '' must be a non-empty version label")
    return key


@dataclass(frozen=True)
class TrafficSplit:
    weights: tuple[tuple[Key, float], ...]  # in file order

    @staticmethod
    def parse(obj: dict) -> "TrafficSplit":
        if not isinstance(obj, dict):
            raise ValueError(
                f"traffic must be an object of key -> weight, got {type(obj).__name__}"
            )
        if not obj:
            raise ValueError("traffic must name at least one version or label")
        weights = []
        for raw_key, weight in obj.items():
            key = _parse_key(raw_key)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)):
                raise ValueError(f"traffic weight for {raw_key!r} must be a number, got {weight!r}")
            if not math.isfinite(weight) or weight < 0:
                raise ValueError(
                    f"traffic weight for {raw_key!r} must be a finite number >= 0, got {weight!r}"
                )
            weights.append((key, float(weight)))
        if sum(w for _, w in weights) <= 0:
            raise ValueError("traffic weights must not all be 0")
        return TrafficSplit(tuple(weights))


def effective_weights(
    split: TrafficSplit | None, labels: dict[str, int], available: set[int]
) -> dict[int, float]:
    """Version -> probability (sums to 1) for an unversioned request.

    Labels resolve to versions; keys that are unknown labels or name versions not in `available`
    are dropped and the remaining weights renormalised; keys resolving to the same version add up.
    With nothing left (no split, or every remaining weight 0) the answer is {max(available): 1.0},
    TF Serving's Latest, or {} if nothing is available.
    """
    if not available:
        return {}
    totals: dict[int, float] = {}
    for key, weight in split.weights if split is not None else ():
        version = key if isinstance(key, int) else labels.get(key)
        if version in available and weight > 0:
            totals[version] = totals.get(version, 0.0) + weight
    total = sum(totals.values())
    if total <= 0:
        return {max(available): 1.0}
    return {version: weight / total for version, weight in totals.items()}


def pick(weights: dict[int, float], u: float) -> int:
    """The version for a uniform draw u in [0, 1): cumulative over versions in ascending order."""
    if not 0.0 <= u < 1.0:
        raise ValueError(f"draw must be in [0, 1), got {u!r}")
    candidates = [v for v in sorted(weights) if weights[v] > 0]
    if not candidates:
        raise ValueError("no version has a positive weight")
    cumulative = 0.0
    for version in candidates:
        cumulative += weights[version]
        if u < cumulative:
            return version
    # Renormalised probabilities can sum to just under 1; the leftover sliver belongs to the last.
    return candidates[-1]


@dataclass(frozen=True)
class Experiment:
    """Sticky A/B assignment of a model's unversioned requests (the side file's "experiment").

    `arms`: the split over labels or versions, as a TrafficSplit. `key`: the request's HTTP
    header or gRPC metadata entry (lower case) that names who asks, e.g. "x-user-id". `salt`:
    mixed into the hash, so that two experiments on the same users draw them apart.

    Contract: a request that carries the key lands on `pick(weights, sticky_draw(salt, value))`:
    the same value always on the same arm while the arms and their weights stand; the values
    spread over the arms in proportion to the weights. A request without it falls back to the
    weights (a random draw) and is counted apart.
    """

    arms: TrafficSplit
    key: str
    salt: str = ""

    @staticmethod
    def parse(obj: object, default_salt: str = "") -> Experiment:
        if not isinstance(obj, dict):
            raise ValueError(f"experiment must be an object, got {type(obj).__name__}")
        for name in obj:
            if name not in ("arms", "key", "salt"):
                raise ValueError(f"experiment: unknown key {name!r} (expected arms, key, salt)")
        if "arms" not in obj or "key" not in obj:
            raise ValueError("experiment: arms and key are required")
        key = obj["key"]
        if not isinstance(key, str) or not key or not all(c.isalnum() or c in "-_." for c in key):
            raise ValueError(
                f"experiment: key must be a header or metadata name (letters, digits, -, _, .), "
                f"got {key!r}"
            )
        salt = obj.get("salt", default_salt)
        if not isinstance(salt, str):
            raise ValueError(f"experiment: salt must be a string, got {salt!r}")
        try:
            arms = TrafficSplit.parse(obj["arms"])
        except ValueError as e:
            raise ValueError(f"experiment: arms: {e}") from None
        return Experiment(arms, key.lower(), salt)


def sticky_draw(salt: str, value: str) -> float:
    """A draw in [0, 1) that is a function of (salt, value) only: the first 8 bytes of
    SHA-256(salt NUL value), as a fraction of 2**64."""
    digest = hashlib.sha256(salt.encode("utf-8") + b"\0" + value.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64
