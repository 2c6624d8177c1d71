"""Run one fuzz target (tests/fuzz/targets.py) under atheris, or replay saved inputs through them.

    python -m tests.fuzz.run TARGET --runs 2000           # a fixed number of inputs
    python -m tests.fuzz.run TARGET --seconds 600         # for a time (make fuzz)
    python -m tests.fuzz.run --replay [TARGET ...]        # every seed and regression input, once
    python -m tests.fuzz.run --open                       # each open finding must still fail
    python -m tests.fuzz.run --list

A fuzzing run starts from the committed seeds (tests/fuzz/corpus/TARGET/) and the regression
inputs (tests/fuzz/regressions/TARGET/), writes the inputs it finds interesting to a work corpus
outside the tree (--work, default $TMPDIR/aspire-fuzz/TARGET; the committed seeds are only read),
and writes an input that fails the target (an unexpected exception, a failed check, more than
--timeout seconds on one input, or a crash) to --artifacts (default: the target's regressions
folder, where the replay test picks it up). Each run is its own process: atheris.Fuzz() ends the
process when the run ends. Exit status 0: no finding.

tests/fuzz/open/TARGET/ holds findings not fixed yet (open/README.md says where the fix goes);
`--open` checks that each still fails, so a fix is noticed and its input moved to regressions/.
While one is open, a fuzzing run of its target passes over inputs that fail the same way (the
same exception from the same line), so that it goes on to find others; `--strict` reports those
too. The target `self_test` (not in `make fuzz`) fails on an input starting with b"FAIL":
tests/unit/test_fuzz_short.py checks with it that a failing input fails the run and is kept.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CORPUS = HERE / "corpus"
REGRESSIONS = HERE / "regressions"
OPEN = HERE / "open"
DICTS = HERE / "dicts"
# What atheris instruments for coverage, per target: the decoders and what they call (each module
# instrumented costs start-up time, protobuf's text-format parser most). The targets are always.
_TEXT_FORMAT = ["google.protobuf.text_format", "google.protobuf.text_encoding", "core.names"]
INSTRUMENTED = {
    "tfs_json": ["deployments.wire", "deployments.replica.inference"],
    "json_parser": ["deployments.wire.json_parser"],
    "grpc_scan": ["deployments.router.tfs_grpc", "deployments.router.v2_grpc", "core.names"],
    "v2_rest": ["deployments.router.v2_rest", "deployments.replica.v2_calls", "core.names"],
    "v2_grpc": ["deployments.replica.v2_calls", "deployments.wire.v2_protos"],
    "model_config": ["config.model_config", *_TEXT_FORMAT],
    "batching_config": ["config.batching_config", "config.model_config", *_TEXT_FORMAT],
    "monitoring_config": ["config.monitoring_config", "config.model_config", *_TEXT_FORMAT],
    "ssl_config": ["config.ssl_config", "config.model_config", *_TEXT_FORMAT],
    "self_test": [],
}
# Each target's libFuzzer dictionary (tests/fuzz/dicts/NAME.dict): tokens its inputs are made of.
DICTIONARY = {
    "tfs_json": "json",
    "json_parser": "json",
    "v2_rest": "v2_rest",
    "model_config": "text_proto",
    "batching_config": "text_proto",
    "monitoring_config": "text_proto",
    "ssl_config": "text_proto",
}


def inputs(target: str) -> list[Path]:
    """The committed seeds and regression inputs of `target`."""
    return sorted(
        p
        for folder in (CORPUS / target, REGRESSIONS / target)
        if folder.is_dir()
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".")
    )


def self_test(data: bytes) -> None:
    """A target with a known finding: any input that starts with b"FAIL"."""
    if data.startswith(b"FAIL"):
        raise RuntimeError("the self test's finding")


def signature(exc: BaseException) -> tuple:
    """How an input fails: the exception's type and the innermost frame it came through (for a
    failed consistency check, the check's caller: targets._check raises them all)."""
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name != "_check":
            frames.append((Path(code.co_filename).name, code.co_name, tb.tb_lineno))
        tb = tb.tb_next
    return (type(exc).__name__, *frames[-1:])


def open_signatures(name: str, target) -> set[tuple]:
    """How the open findings of target `name` (its function: `target`) fail."""
    found = set()
    for path in sorted(p for p in (OPEN / name).glob("*") if p.is_file()):
        try:
            target(path.read_bytes())
        except Exception as exc:  # noqa: BLE001 - the finding
            found.add(signature(exc))
    return found


def still_open() -> int:
    """Each input under open/TARGET/ through its target; 1 if one passes (it is fixed)."""
    from tests.fuzz.targets import TARGETS

    fixed = []
    for path in sorted(p for p in OPEN.glob("*/*") if p.is_file()):
        if path.parent.name not in TARGETS:
            print(f"{path.relative_to(ROOT)}: no target {path.parent.name!r}")
            return 1
        try:
            TARGETS[path.parent.name](path.read_bytes())
        except Exception as exc:  # noqa: BLE001 - the finding, as expected
            print(f"open {path.relative_to(ROOT)}: {type(exc).__name__}: {exc}")
        else:
            fixed.append(str(path.relative_to(ROOT)))
    for path in fixed:
        print(f"FIXED {path}: move it to tests/fuzz/regressions/ and drop it from open/README.md")
    return 1 if fixed else 0


def replay(names: list[str]) -> int:
    """Each saved input through its target once, in this process; 1 if any fails."""
    from tests.fuzz.targets import TARGETS

    unknown = sorted(set(names) - set(TARGETS))
    without = sorted(t for t in TARGETS if not (CORPUS / t).is_dir())
    stray = sorted(
        p.name for d in (CORPUS, REGRESSIONS, OPEN) if d.is_dir() for p in d.iterdir() if p.is_dir()
    )
    stray = sorted(set(stray) - set(TARGETS))
    for what, found in (
        ("unknown target", unknown),
        ("target without seeds", without),
        ("folder of no target", stray),
    ):
        if found:
            print(f"{what}: {', '.join(found)}")
            return 1
    failed = 0
    for name in names or sorted(TARGETS):
        paths = inputs(name)
        for path in paths:
            try:
                TARGETS[name](path.read_bytes())
            except Exception:  # noqa: BLE001 - every failure is reported, then the next input
                failed += 1
                print(f"FAIL {name} {path.relative_to(ROOT)}")
                traceback.print_exc()
        print(f"{name}: {len(paths)} inputs replayed")
    return 1 if failed else 0


def fuzz(args: argparse.Namespace) -> None:
    import atheris

    work = Path(args.work or Path(tempfile.gettempdir()) / "aspire-fuzz" / args.target)
    files = work.parent / f"{work.name}-files"  # beside the corpus: libFuzzer reads all inside it
    files.mkdir(parents=True, exist_ok=True)
    os.environ["ASPIRE_FUZZ_FILES"] = str(files)
    include = INSTRUMENTED.get(args.target, ["core", "config", "deployments"])
    if args.shallow:  # the project's modules only: protobuf's parser takes seconds to instrument
        include = [m for m in include if not m.startswith("google.")]
    with atheris.instrument_imports(include=[*include, "tests.fuzz.targets"]):
        from tests.fuzz.targets import TARGETS
    targets = {**TARGETS, "self_test": self_test}
    if args.target not in targets:
        sys.exit(f"unknown target {args.target!r}; targets: {', '.join(sorted(TARGETS))}")
    artifacts = Path(args.artifacts or REGRESSIONS / args.target)
    work.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    libfuzzer = [
        sys.argv[0],
        f"-artifact_prefix={artifacts}{os.sep}",
        f"-timeout={args.timeout}",
        f"-max_len={args.max_len}",
        f"-rss_limit_mb={args.rss_limit_mb}",
        "-print_final_stats=1",
    ]
    if args.runs is not None:
        libfuzzer.append(f"-runs={args.runs}")
    if args.seconds is not None:
        libfuzzer.append(f"-max_total_time={args.seconds}")
    if args.seed is not None:
        libfuzzer.append(f"-seed={args.seed}")
    if args.target in DICTIONARY:
        libfuzzer.append(f"-dict={DICTS / (DICTIONARY[args.target] + '.dict')}")
    # libFuzzer adds what it finds to the first folder only: the work corpus, not the seeds.
    seeds = args.seeds or [CORPUS / args.target, REGRESSIONS / args.target]
    libfuzzer += [str(work)] + [str(d) for d in seeds if Path(d).is_dir()]
    target = targets[args.target]
    known = set() if args.strict else open_signatures(args.target, target)

    def one_input(data: bytes) -> None:
        try:
            target(data)
        except Exception as exc:
            if signature(exc) not in known:
                raise

    atheris.Setup(libfuzzer, one_input if known else target)
    atheris.Fuzz()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("target", nargs="?")
    parser.add_argument("--runs", type=int, help="inputs to try (libFuzzer -runs)")
    parser.add_argument("--seconds", type=int, help="time to fuzz (libFuzzer -max_total_time)")
    parser.add_argument("--seed", type=int, help="libFuzzer's random seed (a repeatable run)")
    parser.add_argument("--timeout", type=int, default=10, help="seconds one input may take")
    parser.add_argument("--max-len", type=int, default=8192, help="longest input tried")
    # the v2 targets import TensorFlow (the replica's decoder), about 2 GiB resident before the
    # first input: libFuzzer's default 2,048 MB limit would count that as an out-of-memory finding
    parser.add_argument("--rss-limit-mb", type=int, default=8192)
    parser.add_argument("--work", help="the corpus the run grows")
    parser.add_argument("--artifacts", help="where a failing input is written")
    parser.add_argument("--seeds", nargs="+", help="seed folders instead of the committed ones")
    parser.add_argument("--replay", nargs="*", metavar="TARGET", help="replay saved inputs")
    parser.add_argument("--open", action="store_true", help="check the open findings fail")
    parser.add_argument("--strict", action="store_true", help="report open findings too")
    parser.add_argument("--shallow", action="store_true", help="instrument no dependency")
    parser.add_argument("--list", action="store_true", help="print the targets")
    args = parser.parse_args()
    if args.target and args.replay is None and not args.open and not args.list:
        fuzz(args)  # atheris.Fuzz() ends the process
        return
    if not (args.list or args.open or args.replay is not None):
        parser.error("name a target, or --replay, --open or --list")
    with tempfile.TemporaryDirectory(prefix="aspire-fuzz-") as files:
        os.environ["ASPIRE_FUZZ_FILES"] = files
        if args.list:
            from tests.fuzz.targets import TARGETS

            print("\n".join(TARGETS))
            code = 0
        else:
            code = still_open() if args.open else replay(args.replay)
    sys.exit(code)


if __name__ == "__main__":
    main()
