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
4. Where that service (PyPI's per-release JSON, https://pypi.org/pypi/NAME/VERSION/json) does
   not answer, the fallback reads PyPI's project JSON (https://pypi.org/pypi/NAME/json) of each
   pin: its "vulnerabilities" are those of the project's latest release only. A pin that is the
   latest release is checked (an entry whose id or alias is not accepted fails the audit); an
   older pin cannot be checked there and is listed as not checkable (it fails the audit only
   under AUDIT_REQUIRED=1: a required audit covers every pin).
5. Where neither answers, the audit cannot run: it says so and fails when AUDIT_REQUIRED=1, and
   otherwise passes with that warning (AUDIT_REQUIRED=0 is the default because some build
   machines reach PyPI's package index but not its JSON API).

The last line says which check ran, e.g. `audit: pip-audit, 155 pins, 0 vulnerabilities`.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
ACCEPTED = ROOT / "security" / "accepted-vulnerabilities.txt"
SERVICE = "https://pypi.org/pypi/{name}/{version}/json"
PROJECT = "https://pypi.org/pypi/{name}/json"
FETCH_TIMEOUT_S = 10
FETCHERS = 16
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


@dataclass(frozen=True)
class Vulnerability:
    id: str
    package: str
    version: str
    fixed_in: tuple[str, ...]
    summary: str

    def line(self) -> str:
        fixed = ", ".join(self.fixed_in) or "no fixed release"
        return f"  {self.id}  {self.package}=={self.version}  fixed in: {fixed}  {self.summary}"


@dataclass(frozen=True)
class Unverified:
    """A pin the project data cannot check: not the latest release (or no data: latest "")."""

    name: str
    pinned: str
    latest: str

    def short(self) -> str:
        if not self.latest:
            return f"{self.name} {self.pinned} (no project data)"
        return f"{self.name} {self.pinned} (latest {self.latest})"


def _first_line(text: str | None, limit: int = 160) -> str:
    line = (text or "").strip().split("\n", 1)[0].strip()
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _same_version(a: str, b: str) -> bool:
    from packaging.version import InvalidVersion, Version

    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return a == b


def check_pin(
    name: str, pinned: str, project: dict | None, ignore: set[str]
) -> list[Vulnerability] | Unverified:
    """What PyPI's project JSON `project` (None: no answer) says of pin `name==pinned`: the
    vulnerabilities of the latest release not accepted in `ignore` (by id or alias) when the pin
    is the latest release, else Unverified (the data describes the latest release only)."""
    latest = ((project or {}).get("info") or {}).get("version") or ""
    if project is None or not latest:
        return Unverified(name, pinned, "")
    if not _same_version(pinned, latest):
        return Unverified(name, pinned, latest)
    found = []
    for entry in project.get("vulnerabilities") or []:
        ids = {entry.get("id"), *(entry.get("aliases") or [])}
        if entry.get("withdrawn") or ids & ignore:
            continue
        found.append(
            Vulnerability(
                id=str(entry.get("id")),
                package=name,
                version=pinned,
                fixed_in=tuple(str(v) for v in entry.get("fixed_in") or ()),
                summary=_first_line(entry.get("summary") or entry.get("details")),
            )
        )
    return found


def project_data(name: str, timeout: float = FETCH_TIMEOUT_S) -> dict | None:
    """PyPI's project JSON of `name`, asked twice at most; None when it does not answer."""
    for _ in range(2):
        try:
            url = PROJECT.format(name=name)
            with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 - https
                return json.load(answer)
        except urllib.error.HTTPError as err:
            if 400 <= err.code < 500:  # no such project: asking again will not help
                return None
        except (urllib.error.URLError, OSError, ValueError):
            pass
    return None


def fallback(
    locked: dict[str, str], ignore: set[str], fetch: Callable[[str], dict | None] = project_data
) -> tuple[list[Vulnerability], list[Unverified]]:
    """Every pin of `locked` checked against its project data (`fetch`, FETCHERS at a time)."""
    with ThreadPoolExecutor(max_workers=FETCHERS) as pool:
        projects = dict(zip(locked, pool.map(fetch, locked), strict=True))
    found: list[Vulnerability] = []
    unverified: list[Unverified] = []
    for name, pinned in sorted(locked.items()):
        result = check_pin(name, pinned, projects[name], ignore)
        if isinstance(result, Unverified):
            unverified.append(result)
        else:
            found.extend(result)
    return found, unverified


def fallback_summary(pins_count: int, found: list, unverified: list[Unverified]) -> str:
    line = (
        "audit: PyPI project data (pip-audit's service unreachable), "
        f"{pins_count - len(unverified)} of {pins_count} pins checked, "
        f"{len(found)} vulnerabilities"
    )
    if unverified:
        line += f", {len(unverified)} not checkable: " + ", ".join(u.short() for u in unverified)
    return line


def pip_audit_findings(report: dict) -> list[Vulnerability]:
    """The vulnerabilities of pip-audit's JSON report (accepted ones are already left out)."""
    return [
        Vulnerability(
            id=str(vuln.get("id")),
            package=str(dep.get("name")),
            version=str(dep.get("version", "")),
            fixed_in=tuple(str(v) for v in vuln.get("fix_versions") or ()),
            summary=_first_line(vuln.get("description")),
        )
        for dep in report.get("dependencies") or []
        for vuln in dep.get("vulns") or []
    ]


def run_pip_audit(locked: dict[str, str], ignore: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="aspire-audit-") as folder:
        report = Path(folder) / "pip-audit.json"
        command = [sys.executable, "-m", "pip_audit", "--requirement", str(LOCK), "--no-deps"]
        command += ["--disable-pip", "--strict", "--progress-spinner", "off", "--desc", "on"]
        command += ["--aliases", "on", "--format", "json", "--output", str(report)]
        command += [arg for vuln in ignore for arg in ("--ignore-vuln", vuln)]
        code = subprocess.run(command, check=False).returncode
        try:
            doc = json.loads(report.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            doc = None
    if doc is None:
        print(f"audit: pip-audit, {len(locked)} pins, FAILED with no report (exit {code})")
        return code or 1
    found = pip_audit_findings(doc)
    for vuln in found:
        print(vuln.line())
    failed = f" (pip-audit exit {code}: see above)" if code and not found else ""
    print(f"audit: pip-audit, {len(locked)} pins, {len(found)} vulnerabilities{failed}")
    return code or (1 if found else 0)


def run_fallback(locked: dict[str, str], ignore: list[str], required: bool) -> int:
    found, unverified = fallback(locked, set(ignore))
    for vuln in found:
        print(vuln.line())
    if unverified:
        print("not checkable here (PyPI's project data describes the latest release only):")
        print("".join(f"  {u.short()}\n" for u in unverified), end="")
    print(fallback_summary(len(locked), found, unverified))
    return 1 if found or (required and unverified) else 0


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
    required = os.environ.get("AUDIT_REQUIRED", "0") == "1"
    print(f"audit: {len(locked)} pins of {LOCK.name}, {len(ignore)} accepted ID(s)", flush=True)
    name, version = next(iter(locked.items()))
    why = service_answers(name, version)
    if why is None:
        return run_pip_audit(locked, ignore)
    print(f"audit: pip-audit's service (PyPI's per-release JSON) does not answer ({why})")
    if project_data(name) is not None:
        return run_fallback(locked, ignore, required)
    print(
        "audit: NOT RUN: neither pip-audit's service nor PyPI's project data "
        f"({PROJECT.format(name=name)}) answers"
        + ("" if required else " (AUDIT_REQUIRED=1 makes this a failure)")
    )
    return 1 if required else 0


if __name__ == "__main__":
    sys.exit(main())
