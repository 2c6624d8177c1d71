"""The benchmark suite runs end to end (`bench/suite.py --smoke`: 1 s per point, concurrency 1):
every system answers every model with no error, and the report has every row. No assertion on
speed: figures come from `make bench` and go in bench/README.md. Marked `bench`: outside the
default run (`make test`), run by `make bench-smoke`."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

# the suite runs in a subprocess bounded at 900 s: pytest-timeout's limit (600 s, pyproject.toml)
# raised above it
pytestmark = [pytest.mark.ray, pytest.mark.bench, pytest.mark.timeout(960)]
ROOT = Path(__file__).resolve().parents[2]


def test_benchmark_smoke_run_measures_every_system_on_every_model():
    from bench.suite import SYSTEMS

    done = subprocess.run(
        [sys.executable, "bench/suite.py", "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = Path(re.search(r"written to (\S+\.md)", done.stdout).group(1)).read_text()
    for model in ("half_plus_two", "mlp", "mlp_wide"):
        section = report.split(f"**{model}**", 1)[1].split("\n\n**", 1)[0]
        rows = {
            m.group(1): m.group(2)
            for m in re.finditer(r"^\| \([a-z]\) (\S+) \| 1 \| (.*)$", section, re.M)
        }
        assert sorted(rows) == sorted(SYSTEMS.values()), section
        for system, cells in rows.items():
            rps, _p50, _p90, _p99, errors = cells.split(" | ")[:5]
            assert float(rps) > 0 and errors == "0", (model, system, cells)
    assert "Aspire replica of mlp v1" in report and "Reconcile" in report
    print(report)
