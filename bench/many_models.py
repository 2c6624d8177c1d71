"""Many models per node: shared placement against dedicated replicas and a FastAPI process.

One `aspire serve` with a model config file and a side file, changed while it runs (the config
file is polled):
1. `solo` (dedicated: its own replica) and `m000` (shared) are served; the RSS of solo's replica
   and of the shared host are read.
2. The config grows to `--versions` shared models (copies of half_plus_two); the time until all
   are AVAILABLE is measured, and the host's RSS read again: RSS per extra shared version is
   (host RSS with N - host RSS with 1) / (N - 1).
3. Predict p50 of m000 (shared) against solo (dedicated) at concurrency 1 and 8, interleaved, with
   wrk: the ratio shared / dedicated.
4. Memory that comes back: `--cycle` shared versions are unloaded (the config shrinks), the
   host's RSS is read, then they are loaded again and it is read once more.
The baseline: bench/baseline_server.py (FastAPI, one process) holding 1 and then N copies; its
RSS per extra model is the floor a single-process server pays.

Usage: python bench/many_models.py [--versions 200] [--cycle 50] [--duration 10]
Writes bench/results/many-models-<time>.md and the section between the many-models markers in
bench/README.md (unless --no-readme).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.models import HALF_PLUS_TWO  # noqa: E402
from bench.suite import (  # noqa: E402
    PY,
    ROOT,
    WRK_SCRIPT,
    Server,
    commit,
    ensure_wrk,
    machine,
    pids_titled,
    rss_bytes,
    wrk_point,
)
from tests.support.ports import free_port  # noqa: E402

BEGIN, END = "<!-- many-models:begin -->", "<!-- many-models:end -->"
BODY = b'{"instances": [1.0, 2.0, 5.0]}'
MIB = 1024 * 1024


def write_config(path: Path, base: Path, names: list[str]) -> None:
    entries = "\n".join(
        f'  config {{ name: "{n}" base_path: "{base / n}" model_platform: "tensorflow" }}'
        for n in names
    )
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"model_config_list {{\n{entries}\n}}\n")
    tmp.rename(path)  # the server never reads half a file


def statuses(url: str) -> dict[str, str]:
    """model -> state of its newest version, from GET /v1/models."""
    try:
        models = requests.get(f"{url}/v1/models", timeout=10).json().get("models", [])
    except (requests.RequestException, ValueError):
        return {}
    out = {}
    for m in models:
        versions = m.get("model_version_status") or []
        if versions:
            out[m["name"]] = versions[0]["state"]
    return out


def wait_states(url: str, want: dict[str, str | None], timeout_s: float = 1800) -> float:
    """Seconds until every model in `want` is in its state (None: gone from the list)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        seen = statuses(url)
        if all(seen.get(n) == s if s else seen.get(n) in (None, "END") for n, s in want.items()):
            return time.monotonic() - started
        time.sleep(0.5)
    raise RuntimeError(f"models did not reach their states in {timeout_s:.0f} s")


def host_rss(settle_s: float = 3.0) -> int:
    """RSS of the one shared host process, read after `settle_s` (loads just ended)."""
    time.sleep(settle_s)
    [pid] = pids_titled("ray::ServeReplica:aspire-servable-host-")
    return rss_bytes(pid)


def baseline_rss(paths: dict[str, str]) -> int:
    port = free_port()
    server = Server(
        [PY, str(ROOT / "bench" / "baseline_server.py"), str(port)]
        + [f"{n}={p}" for n, p in paths.items()],
        lambda s: _answers(f"http://127.0.0.1:{port}/v1/models/{next(iter(paths))}:predict"),
        "the FastAPI baseline",
        timeout_s=900,
    )
    try:
        return rss_bytes(server.proc.pid)
    finally:
        server.stop()


def _answers(url: str) -> bool:
    try:
        return requests.post(url, data=BODY, timeout=5).status_code == 200
    except requests.RequestException:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--versions", type=int, default=200)
    parser.add_argument("--cycle", type=int, default=50, help="versions unloaded per cycle")
    parser.add_argument("--cycles", type=int, default=5, help="unload/reload cycles")
    parser.add_argument("--big", type=int, default=4, help="mlp_wide copies loaded and unloaded")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved p50 rounds")
    parser.add_argument("--no-readme", action="store_true")
    args = parser.parse_args()
    started_at = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    host, rev = machine(), commit()
    print(f"machine: {host}\ncommit: {rev}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="aspire-many-"))
    wrk = ensure_wrk()
    script = work / "post.lua"
    script.write_text(WRK_SCRIPT)
    body = work / "body.json"
    body.write_bytes(BODY)
    version_dir = next(p for p in HALF_PLUS_TWO.iterdir() if p.name.isdigit())
    names = [f"m{i:03d}" for i in range(args.versions)]
    for n in ["solo", *names]:
        shutil.copytree(version_dir, work / "models" / n / "1")
    bigs = [f"big{i}" for i in range(args.big)]
    if bigs:
        from bench.models import MLP_SIZES, export_mlp

        export_mlp(work / "models" / bigs[0] / "1", MLP_SIZES["mlp_wide"])
        for n in bigs[1:]:
            shutil.copytree(work / "models" / bigs[0], work / "models" / n)
    config, side = work / "models.config", work / "aspire.json"
    side.write_text(
        json.dumps({"models": {n: {"placement": "shared"} for n in [*names, *bigs]}}, indent=1)
    )
    write_config(config, work / "models", ["solo", names[0]])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = Server(
        [
            str(Path(PY).parent / "aspire"),
            "serve",
            f"--rest_api_port={port}",
            "--port=0",
            f"--model_config_file={config}",
            "--model_config_file_poll_wait_seconds=1",
            f"--aspire_config_file={side}",
        ],
        lambda s: "Exporting HTTP/REST API" in s.output(),
        "aspire serve",
        timeout_s=300,
    )
    result: dict = {
        "versions": args.versions,
        "cycle": args.cycle,
        "cycles": args.cycles,
        "bigs": args.big,
    }
    try:
        wait_states(url, {"solo": "AVAILABLE", names[0]: "AVAILABLE"})
        [solo_pid] = pids_titled("ray::ServeReplica:aspire-servable-solo-")
        time.sleep(3)
        result["dedicated_replica_rss"] = rss_bytes(solo_pid)
        result["host_rss_1"] = host_rss()
        write_config(config, work / "models", ["solo", *names])
        result["load_s"] = wait_states(url, {n: "AVAILABLE" for n in names})
        print(f"{args.versions} shared versions AVAILABLE in {result['load_s']:.1f} s", flush=True)
        result["host_rss_n"] = host_rss()
        result["per_version"] = (result["host_rss_n"] - result["host_rss_1"]) / (args.versions - 1)
        points: dict[tuple[str, int], list[dict]] = {}
        for _ in range(args.rounds):
            for c in (1, 8):
                for model in ("solo", names[0]):
                    point = wrk_point(
                        wrk,
                        script,
                        f"{url}/v1/models/{model}:predict",
                        body,
                        c,
                        args.duration,
                    )
                    points.setdefault((model, c), []).append(point)
                    print(f"{model:5s} c={c}: p50 {point['p50']:.2f} ms, {point['rps']:.0f} req/s")
        result["p50"] = {
            f"{'dedicated' if m == 'solo' else 'shared'} c={c}": statistics.median(
                p["p50"] for p in pts
            )
            for (m, c), pts in points.items()
        }
        result["errors"] = sum(p["errors"] for pts in points.values() for p in pts)
        keep = names[: args.versions - args.cycle]
        result["cycles_rss"] = []
        for _ in range(args.cycles):
            write_config(config, work / "models", ["solo", *keep])
            wait_states(url, {n: None for n in names[len(keep) :]})
            unloaded = host_rss()
            write_config(config, work / "models", ["solo", *names])
            wait_states(url, {n: "AVAILABLE" for n in names})
            result["cycles_rss"].append((unloaded, host_rss()))
            print(
                f"cycle: host RSS {unloaded / MIB:.0f} MiB unloaded, "
                f"{result['cycles_rss'][-1][1] / MIB:.0f} MiB reloaded",
                flush=True,
            )
        if bigs:  # larger models: what a host keeps of them once they are unloaded
            result["big"] = []
            for _ in range(2):
                write_config(config, work / "models", ["solo", *names, *bigs])
                wait_states(url, {n: "AVAILABLE" for n in bigs})
                loaded = host_rss()
                write_config(config, work / "models", ["solo", *names])
                wait_states(url, {n: None for n in bigs})
                result["big"].append((loaded, host_rss()))
                print(
                    f"{len(bigs)} mlp_wide: host RSS {loaded / MIB:.0f} MiB loaded, "
                    f"{result['big'][-1][1] / MIB:.0f} MiB unloaded",
                    flush=True,
                )
    finally:
        server.stop()
    paths = {n: str(work / "models" / n / "1") for n in names}
    result["baseline_rss_1"] = baseline_rss({names[0]: paths[names[0]]})
    result["baseline_rss_n"] = baseline_rss(paths)
    shutil.rmtree(work, ignore_errors=True)
    text = markdown(result, started_at, host, rev)
    out = (
        ROOT
        / "bench"
        / "results"
        / f"many-models-{started_at.replace(' ', '-').replace(':', '')}.md"
    )
    out.parent.mkdir(parents=True, exist_ok=True)  # results/ is not tracked: absent in a clone
    out.write_text(f"# Many-models run {started_at} UTC\n\n{text}")
    print(f"\n{text}\nwritten to {out}")
    if not args.no_readme:
        readme = ROOT / "bench" / "README.md"
        page = readme.read_text()
        head, rest = page.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        readme.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")
        print("bench/README.md updated")


def markdown(r: dict, started: str, host: str, rev: str) -> str:
    n, cycle = r["versions"], r["cycle"]
    base_per = (r["baseline_rss_n"] - r["baseline_rss_1"]) / (n - 1)
    p50 = r["p50"]
    lines = [
        f"Run {started} UTC on {host}, commit {rev}; `python bench/many_models.py` "
        f"(--versions {n} --cycle {cycle} --cycles {r['cycles']}).",
        "",
        "| | figure |",
        "|---|---|",
        f"| {n} shared versions AVAILABLE after the config named them | {r['load_s']:.1f} s |",
        f"| shared host RSS with 1 version / with {n} | {r['host_rss_1'] / MIB:.0f} MiB / "
        f"{r['host_rss_n'] / MIB:.0f} MiB |",
        f"| **RSS per extra shared version** (target <= 30 MiB) | "
        f"**{r['per_version'] / MIB:.2f} MiB** |",
        f"| RSS of one dedicated replica (a version's cost with dedicated placement) | "
        f"{r['dedicated_replica_rss'] / MIB:.0f} MiB |",
        f"| FastAPI baseline RSS with 1 model / with {n}; per extra model | "
        f"{r['baseline_rss_1'] / MIB:.0f} MiB / {r['baseline_rss_n'] / MIB:.0f} MiB; "
        f"{base_per / MIB:.2f} MiB |",
        f"| host RSS after each of {r['cycles']} cycles of unloading {cycle} versions / "
        f"loading them again | "
        + ", ".join(f"{u / MIB:.0f} / {v / MIB:.0f}" for u, v in r["cycles_rss"])
        + " MiB |",
        f"| host RSS growth per version loaded and unloaded, over the cycles | "
        f"{(r['cycles_rss'][-1][1] - r['host_rss_n']) / (r['cycles'] * cycle) / MIB:.2f} MiB |",
        f"| predict p50, shared / dedicated, concurrency 1 (target <= 1.2x) | "
        f"{p50['shared c=1']:.2f} / {p50['dedicated c=1']:.2f} ms = "
        f"**{p50['shared c=1'] / p50['dedicated c=1']:.2f}x** |",
        f"| predict p50, shared / dedicated, concurrency 8 (target <= 1.2x) | "
        f"{p50['shared c=8']:.2f} / {p50['dedicated c=8']:.2f} ms = "
        f"**{p50['shared c=8'] / p50['dedicated c=8']:.2f}x** |",
        *(
            [
                f"| {len(r['big'])} rounds of loading {r['bigs']} mlp_wide copies (77 MiB of "
                "weights each) into the host, then unloading them: host RSS loaded / unloaded | "
                + ", ".join(f"{a / MIB:.0f} / {b / MIB:.0f}" for a, b in r["big"])
                + f" MiB (before them: {r['cycles_rss'][-1][1] / MIB:.0f} MiB) |"
            ]
            if r.get("big")
            else []
        ),
        f"| wrk errors | {r['errors']} |",
        "",
        f"RSS against versions: dedicated placement costs about one replica per version "
        f"({r['dedicated_replica_rss'] / MIB:.0f} MiB each, so {n} versions would need "
        f"{n * r['dedicated_replica_rss'] / 1024**3:.1f} GiB); shared placement "
        f"{r['host_rss_n'] / MIB:.0f} MiB for all {n}; the FastAPI process "
        f"{r['baseline_rss_n'] / MIB:.0f} MiB.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
