"""The fuzz targets (tests/fuzz/targets.py) in `make test`: a short, repeatable atheris run of
each (RUNS inputs from a fixed libFuzzer seed, coverage from the project's modules only, two runs
at a time on the two cores), and a replay of every committed seed and regression input.
`make fuzz` runs them for longer (docs/testing.md, "Supply chain and fuzzing")."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FUZZ = ROOT / "tests" / "fuzz"
TARGETS = sorted(p.name for p in (FUZZ / "corpus").iterdir() if p.is_dir())
RUNS = 2000
RUN_LIMIT_S = 300  # one short run takes seconds; this only ends a hung one


def fuzz_run(target: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """One atheris run of `target` in a process of its own, its findings written under `out`."""
    return subprocess.run(
        [sys.executable, "-m", "tests.fuzz.run", target, "--work", str(out / "work")]
        + ["--artifacts", str(out / "findings"), *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_LIMIT_S,
        env={**os.environ, "PYTHONHASHSEED": "0"},  # with -seed: the same inputs every time
    )


@pytest.fixture(scope="module")
def short_runs(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """Every target's short run, started together, two at a time."""
    root = tmp_path_factory.mktemp("fuzz")
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = {
            t: pool.submit(fuzz_run, t, root / t, "--runs", str(RUNS), "--seed", "1", "--shallow")
            for t in TARGETS
        }
    return {t: run.result() for t, run in runs.items()}


@pytest.mark.parametrize("target", TARGETS)
def test_target_survives_a_short_run_from_its_seeds(target, short_runs):
    run = short_runs[target]
    output = run.stdout + run.stderr
    assert run.returncode == 0, (
        f"{target}: a finding (keep the input below as a regression)\n" + (output[-6000:])
    )
    assert f"Done {RUNS} runs" in output, output[-3000:]


def test_every_seed_and_regression_input_passes_its_target():
    run = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.run", "--replay"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_LIMIT_S,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert sorted(line.split(":")[0] for line in run.stdout.splitlines()) == TARGETS


def test_open_findings_still_fail_until_fixed_then_move_to_regressions():
    """tests/fuzz/open/ holds findings not fixed yet (its README says where each fix goes).
    Each must still fail its target: once one passes, it is fixed and its input moves to
    tests/fuzz/regressions/TARGET/."""
    run = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.run", "--open"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_LIMIT_S,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]


def test_an_input_that_fails_its_target_fails_the_run_and_is_kept(tmp_path):
    """The runner's own check, on run.py's `self_test` target (it fails on b"FAIL..."): the
    failing input, given as the only seed, ends the run with an error and is kept where
    `make fuzz` would keep it."""
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    (seeds / "finding").write_bytes(b"FAIL here")
    (seeds / "fine").write_bytes(b"fine")
    run = fuzz_run("self_test", tmp_path, "--runs", "1", "--seeds", str(seeds))
    assert run.returncode != 0
    kept = [p.read_bytes() for p in (tmp_path / "findings").iterdir()]
    assert kept == [b"FAIL here"], run.stderr[-3000:]
