"""`make audit`: the locked dependencies against known vulnerabilities (docs/testing.md, "Supply
chain and fuzzing").

1. security/accepted-vulnerabilities.txt is read: `ID  YYYY-MM-DD  reason` a line; a malformed
   line fails the audit (exit 2).
2. The environment must be what the lock says (`pip freeze --all --exclude-editable` against
   requirements.lock): a distribution installed but not locked, or at another version, means
   the lock is stale (`make lock`). It fails the audit under CI=true (a fresh `make setup`, so
   the lock itself is wrong) and is a warning elsewhere (a developer's own extra tools).
3. pip-audit checks every pin of requirements.lock (`--no-deps --disable-pip`: the lock is the
   whole set, nothing is resolved or installed; `--strict`: a pin it cannot look up fails) on
   PyPI's vulnerability service, each accepted ID passed as `--ignore-vuln`. A vulnerability
   found fails the audit (exit 1).

PyPI's per-release JSON (https://pypi.org/pypi/NAME/VERSION/json), which that service is, is
asked first. Where it does not answer, the audit cannot run: it says so and fails when
AUDIT_REQUIRED=1, and otherwise passes with that warning (AUDIT_REQUIRED=0 is the default
because some build machines reach PyPI's package index but not its JSON API).
"""

from __future__ import annotations

import datetime
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
ACCEPTED = ROOT / "security" / "accepted-vulnerabilities.txt"
SERVICE = "https://pypi.org/pypi/{name}/{version}/json"
_ENTRY = re.compile(r"(?P<id>[A-Z][A-Z0-9]*-[A-Za-z0-9-]+)\s+(?P<date>\S+)\s+(?P<reason>\S.*)")
_PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def accepted(path: Path = ACCEPTED) -> list[str]:
    """The accepted IDs; ValueError naming the line for one that is not `ID DATE reason`."""
    ids = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _ENTRY.fullmatch(line)
        if m is None:
            raise ValueError(f"{path.name}:{number}: expected 'ID YYYY-MM-DD reason', got {line!r}")
        try:
            datetime.date.fromisoformat(m["date"])
        except ValueError:
            raise ValueError(
                f"{path.name}:{number}: {m['date']!r} is not a YYYY-MM-DD date"
            ) from None
        ids.append(m["id"])
    return ids


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(text: str) -> dict[str, str]:
    """{canonical name: version} of the `name==version` lines of a requirements text."""
    found = {}
    for line in text.splitlines():
        m = _PIN.fullmatch(line.split("#", 1)[0].strip())
        if m:
            found[_canonical(m[1])] = m[2]
    return found


def drift(installed: dict[str, str], locked: dict[str, str]) -> list[str]:
    """Installed distributions the lock does not pin at their installed version."""
    return [
        f"{name}=={version} (lock: {locked.get(name, 'absent')})"
        for name, version in sorted(installed.items())
        if locked.get(name) != version
    ]


def service_answers(name: str, version: str) -> str | None:
    """None when PyPI's vulnerability service answers for this pin, else why not."""
    url = SERVICE.format(name=name, version=version)
    try:
        with urllib.request.urlopen(url, timeout=30) as answer:  # noqa: S310 - a fixed https URL
            answer.read(1)
        return None
    except (urllib.error.URLError, OSError) as err:
        return f"{url}: {err}"


def main() -> int:
    try:
        ignore = accepted()
    except ValueError as err:
        print(f"audit: {err}", file=sys.stderr)
        return 2
    locked = pins(LOCK.read_text(encoding="utf-8"))
    freeze = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--all", "--exclude-editable"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    stale = drift(pins(freeze), locked)
    if stale:
        print(
            "audit: installed but not so in requirements.lock (run `make lock`):", file=sys.stderr
        )
        print("".join(f"  {line}\n" for line in stale), end="", file=sys.stderr)
        if os.environ.get("CI") == "true":
            return 1
    name, version = next(iter(locked.items()))
    why = service_answers(name, version)
    if why is not None:
        print(f"audit: PyPI's vulnerability service does not answer ({why})", file=sys.stderr)
        if os.environ.get("AUDIT_REQUIRED", "0") == "1":
            return 1
        print("audit: NOT RUN (AUDIT_REQUIRED=1 makes this a failure)", file=sys.stderr)
        return 0
    command = [sys.executable, "-m", "pip_audit", "--requirement", str(LOCK), "--no-deps"]
    command += ["--disable-pip", "--strict", "--progress-spinner", "off", "--desc", "on"]
    command += [arg for vuln in ignore for arg in ("--ignore-vuln", vuln)]
    print(f"audit: {len(locked)} pins of {LOCK.name}, {len(ignore)} accepted ID(s)")
    return subprocess.run(command, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
