"""Byte sizes: the units Aspire's settings and messages use, parsed and printed one way."""

from __future__ import annotations

import re

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ki": KIB,
    "kib": KIB,
    "mi": MIB,
    "mib": MIB,
    "gi": GIB,
    "gib": GIB,
    "ti": 1024**4,
    "tib": 1024**4,
}
_BYTES_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z]*)\s*$")


def parse_bytes(text: str) -> int:
    """Bytes in a size such as "16GiB", "512MiB", "1.5GB" or "1000".

    Binary units: KiB/MiB/GiB/TiB (or Ki/Mi/Gi/Ti); decimal units: KB/MB/GB/TB (or K/M/G/T);
    a bare number or "B" is bytes. Units are case-insensitive. Fractions are rounded down to a
    whole byte.
    """
    if not isinstance(text, str):
        raise ValueError(f"size must be a string like '16GiB', got {text!r}")
    m = _BYTES_RE.match(text)
    if not m:
        raise ValueError(
            f"invalid size {text!r}: expected a non-negative number with an "
            "optional unit, e.g. '16GiB', '512MiB', '1.5GB' or '1000'"
        )
    unit = m.group(2).lower()
    if unit not in _UNITS:
        raise ValueError(
            f"invalid size {text!r}: unknown unit {m.group(2)!r} (use B, KB, MB, GB, "
            "TB, KiB, MiB, GiB or TiB)"
        )
    return int(float(m.group(1)) * _UNITS[unit])


def format_bytes(n: int) -> str:
    """Human-readable size used in refusal messages: "10.0 GiB", "512.0 MiB", "100 B"."""
    if n >= GIB:
        return f"{n / GIB:.1f} GiB"
    if n >= MIB:
        return f"{n / MIB:.1f} MiB"
    if n >= KIB:
        return f"{n / KIB:.1f} KiB"
    return f"{n} B"
