"""security/audit.py (`make audit`) without the network: the accepted-vulnerabilities file's
format, the lock's pins, the check that the venv holds what the lock pins, the fallback's
decisions on PyPI's project JSON (fed as dicts) and the reading of pip-audit's JSON report."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("security_audit", ROOT / "security" / "audit.py")
assert _spec is not None and _spec.loader is not None
audit = importlib.util.module_from_spec(_spec)
sys.modules["security_audit"] = audit  # its dataclasses look their module up there
_spec.loader.exec_module(audit)


def test_the_committed_accepted_file_and_lock_parse():
    assert all(isinstance(i, str) for i in audit.accepted())
    locked = audit.pins(audit.LOCK.read_text())
    assert locked["tensorflow"] == "2.21.0" and locked["ray"] == "2.60.0"


def test_accepted_entries_give_their_ids_and_comments_are_skipped(tmp_path):
    path = tmp_path / "accepted.txt"
    path.write_text(
        "# a comment\n\nPYSEC-2024-12  2026-01-31  not reachable: the CLI is not installed\n"
        "GHSA-abcd-1234-wxyz 2026-02-01 fixed in 9.0 only, which tensorflow excludes\n"
    )
    assert audit.accepted(path) == ["PYSEC-2024-12", "GHSA-abcd-1234-wxyz"]


@pytest.mark.parametrize(
    "line",
    ["PYSEC-2024-12", "PYSEC-2024-12 2026-01-31", "PYSEC-2024-12 31.01.2026 a reason"],
    ids=["no date or reason", "no reason", "not an ISO date"],
)
def test_an_accepted_entry_without_id_date_and_reason_is_refused_naming_its_line(tmp_path, line):
    path = tmp_path / "accepted.txt"
    path.write_text(f"# header\n{line}\n")
    with pytest.raises(ValueError, match="accepted.txt:2"):
        audit.accepted(path)


def test_drift_lists_what_is_installed_unlocked_or_at_another_version():
    locked = audit.pins("# lock\nNumPy==2.4.6\nrequests==2.34.2\nextra==1.0\n")
    installed = audit.pins("numpy==2.4.6\nrequests==2.35.0\natheris==3.0.0\n")
    assert audit.drift(installed, locked) == [
        "atheris==3.0.0 (lock: absent)",
        "requests==2.35.0 (lock: 2.34.2)",
    ]


def project(latest: str, *vulnerabilities: dict) -> dict:
    """PyPI's project JSON (https://pypi.org/pypi/NAME/json), the parts the fallback reads."""
    return {
        "info": {"version": latest},
        "releases": {"1.0": [], latest: []},
        "vulnerabilities": list(vulnerabilities),
    }


ADVISORY = {
    "id": "PYSEC-2026-1",
    "aliases": ["GHSA-aaaa-bbbb-cccc", "CVE-2026-0001"],
    "fixed_in": ["2.0.1"],
    "summary": "a crafted header crashes the parser",
    "details": "Long text.\nMore.",
    "withdrawn": None,
}


def test_a_pin_at_the_latest_release_with_a_vulnerability_fails_with_its_details():
    found = audit.check_pin("pkg", "2.0", project("2.0", ADVISORY), set())
    assert found == [
        audit.Vulnerability(
            "PYSEC-2026-1", "pkg", "2.0", ("2.0.1",), "a crafted header crashes the parser"
        )
    ]
    assert found[0].line() == (
        "  PYSEC-2026-1  pkg==2.0  fixed in: 2.0.1  a crafted header crashes the parser"
    )


@pytest.mark.parametrize("accepted_id", ["PYSEC-2026-1", "GHSA-aaaa-bbbb-cccc", "CVE-2026-0001"])
def test_a_vulnerability_accepted_by_its_id_or_an_alias_passes(accepted_id):
    assert audit.check_pin("pkg", "2.0", project("2.0", ADVISORY), {accepted_id}) == []


def test_a_withdrawn_advisory_does_not_fail_the_pin():
    withdrawn = {**ADVISORY, "withdrawn": "2026-02-01T00:00:00Z"}
    assert audit.check_pin("pkg", "2.0", project("2.0", withdrawn), set()) == []


def test_a_pin_older_than_the_latest_release_is_unverified_not_passed_or_failed():
    result = audit.check_pin("pkg", "1.0", project("2.0", ADVISORY), set())
    assert result == audit.Unverified("pkg", "1.0", "2.0")
    assert result.short() == "pkg 1.0 (latest 2.0)"


def test_a_pin_without_project_data_is_unverified():
    assert audit.check_pin("pkg", "1.0", None, set()) == audit.Unverified("pkg", "1.0", "")


def test_the_latest_release_is_compared_as_a_version_not_as_text():
    assert audit.check_pin("pkg", "2.0", project("2.0.0"), set()) == []


def test_the_fallback_checks_every_pin_and_its_summary_counts_checked_and_unverified():
    data = {"fine": project("1.0"), "bad": project("3.1", ADVISORY), "old": project("9.0")}
    locked = {"fine": "1.0", "bad": "3.1", "old": "8.0", "gone": "1.0"}
    found, unverified = audit.fallback(locked, set(), fetch=data.get)
    assert [(v.id, v.package) for v in found] == [("PYSEC-2026-1", "bad")]
    assert unverified == [
        audit.Unverified("gone", "1.0", ""),
        audit.Unverified("old", "8.0", "9.0"),
    ]
    assert audit.fallback_summary(len(locked), found, unverified) == (
        "audit: PyPI project data (pip-audit's service unreachable), 2 of 4 pins checked, "
        "1 vulnerabilities, 2 not checkable: gone 1.0 (no project data), old 8.0 (latest 9.0)"
    )


def test_pip_audits_json_report_gives_each_vulnerability_with_its_fixed_versions():
    report = {
        "dependencies": [
            {"name": "ok", "version": "1.0", "vulns": []},
            {"name": "local", "skip_reason": "not on PyPI"},
            {
                "name": "pkg",
                "version": "2.0",
                "vulns": [
                    {
                        "id": "GHSA-aaaa-bbbb-cccc",
                        "fix_versions": ["2.0.1", "2.1"],
                        "aliases": ["CVE-2026-0001"],
                        "description": "First line.\nSecond line.",
                    }
                ],
            },
        ],
        "fixes": [],
    }
    assert audit.pip_audit_findings(report) == [
        audit.Vulnerability("GHSA-aaaa-bbbb-cccc", "pkg", "2.0", ("2.0.1", "2.1"), "First line.")
    ]
