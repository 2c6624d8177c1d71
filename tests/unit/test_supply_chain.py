"""security/audit.py (`make audit`) without the network: the accepted-vulnerabilities file's
format, the lock's pins, and the check that the venv holds what the lock pins."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("audit", ROOT / "security" / "audit.py")
assert _spec is not None and _spec.loader is not None
audit = importlib.util.module_from_spec(_spec)
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
