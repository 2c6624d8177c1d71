"""Which versions of a servable stream to aspire, given the version directories found on disk.

TF Serving's FileSystemStoragePathSource rules: a child of the base path is a version when its
name parses as a (non-negative) int64 (`00000123` is 123; `v2`, `1.5`, `2.denied` are not). The
servable version policy (latest N, all, specific) picks the aspired versions from those found.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_INT64_MAX = 2**63 - 1
# absl::SimpleAtoi accepts surrounding whitespace and a sign; version dirs in practice are digits.
_VERSION_DIR = re.compile(r"^\+?[0-9]+$")


def parse_version(name: str) -> int | None:
    """The version number a directory name stands for, or None if it is not a version."""
    if not _VERSION_DIR.match(name):
        return None
    value = int(name)
    return value if value <= _INT64_MAX else None


def versions_in(names: list[str]) -> tuple[dict[int, str], list[str]]:
    """Map version -> directory name for the numeric children; warnings for duplicates.

    Duplicates (`001` and `0001`) keep the first name in sorted order, as TF Serving keeps one.
    """
    found: dict[int, str] = {}
    warnings: list[str] = []
    for name in sorted(names):
        version = parse_version(name)
        if version is None:
            continue
        if version in found:
            warnings.append(
                f"Duplicate version directories detected. Version {version} will be loaded "
                f"from {found[version]}, {name} will be ignored."
            )
            continue
        found[version] = name
    return found, warnings


@dataclass(frozen=True)
class Latest:
    num_versions: int = 1

    def select(self, available: list[int]) -> list[int]:
        n = self.num_versions if self.num_versions > 0 else 1  # 0 is treated as 1
        return sorted(available)[-n:]


@dataclass(frozen=True)
class All:
    def select(self, available: list[int]) -> list[int]:
        return sorted(available)


@dataclass(frozen=True)
class Specific:
    versions: tuple[int, ...] = field(default_factory=tuple)

    def select(self, available: list[int]) -> list[int]:
        present = set(available)
        return sorted(v for v in set(self.versions) if v in present)


# TF Serving's ServableVersionPolicy (model_version_policy in a model config): which versions
# found on disk are aspired. (How a stream moves to them is the AspiredVersionPolicy's choice,
# policies/lifecycle.py.)
ServableVersionPolicy = Latest | All | Specific
