"""`aspire serve` and `aspire status` as a user runs them: a real process, embedded Ray, Ctrl-C."""

import os
import re
import subprocess
import time

import pytest
import requests

from tests.integration.conftest import ASPIRE, DATA, Served, free_port, wait_for

pytestmark = pytest.mark.ray


@pytest.mark.parametrize(
    "flags,message",
    [
        (
            ["--model_base_path=/m", "--port=8501", "--rest_api_port=8501"],
            "http_port cannot be same as grpc_port",
        ),
        ([], "Both server_options.model_base_path and server_options.model_config_file are empty!"),
        (
            ["--model_base_path=/m", "--port=0", "--rest_api_port=0"],
            "--rest_api_port=0 and --port=0 leave no API to serve",
        ),
        (["--model_base_path=/m", "--rest_api_max_connections=0"], "must be at least 1"),
        (["--model_base_path=/m", "--num_replicas=0"], "must be at least 1"),
        (
            [
                "--model_base_path=/m",
                "--tensorflow_session_parallelism=2",
                "--tensorflow_intra_op_parallelism=1",
                "--tensorflow_inter_op_parallelism=1",
            ],
            "You cannot configure all.",
        ),
    ],
)
def test_contradictory_flags_are_a_clear_error(flags, message):
    r = subprocess.run([ASPIRE, "serve", *flags], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert message in r.stderr


def test_unknown_flag_is_warned_as_tf_serving_does_and_start_up_goes_on():
    # TF Serving prints `unknown argument: <arg>` and keeps going; here the start then stops at
    # the next check (no model to serve), which shows the unknown flag did not end it
    r = subprocess.run(
        [ASPIRE, "serve", "--no_such_flag=1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert "unknown argument: --no_such_flag=1" in r.stderr
    assert "Both server_options.model_base_path and server_options.model_config_file" in r.stderr


class replica_cpu_seconds:
    """User + system CPU time of a process, from /proc. `idle_for(s)`: it used under a fifth of a
    core over the last `s` seconds (a spinning TF run uses a whole one; Ray's own threads a few
    per cent)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.last, self.since = self.read(), time.monotonic()

    def read(self) -> float:
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def idle_for(self, seconds: float) -> bool:
        now, cpu = time.monotonic(), self.read()
        if now - self.since < seconds:
            return False
        busy = (cpu - self.last) / (now - self.since)
        self.last, self.since = cpu, now
        return busy < 0.2


def test_serve_cli_honours_timeout_thread_and_tensor_content_flags_then_exits_0_on_ctrl_c(tmp_path):
    """`aspire serve --model_name --model_base_path` as the README starts it, with TF Serving's
    timeout, session-thread and tensor-content flags; `aspire status` lists the version; Ctrl-C
    unloads it and exits 0."""
    from tests.integration.export_models import export_slow_model

    export_slow_model(tmp_path / "slow" / "1")
    port, grpc_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}/v1/models/slow:predict"
    started = time.monotonic()
    with Served(
        "--model_name=slow",
        f"--model_base_path={tmp_path / 'slow'}",
        f"--rest_api_port={port}",
        "--rest_api_host=127.0.0.1",
        "--rest_api_timeout_in_ms=500",
        f"--port={grpc_port}",
        "--enable_serialization_as_tensor_content",
        "--tensorflow_intra_op_parallelism=1",
        "--tensorflow_inter_op_parallelism=2",
    ) as server:
        ready_s = time.monotonic() - started
        # The manager's log lines reach the CLI's output through Ray's log monitor, which may
        # deliver them after the ready line.
        wait_for(
            lambda: server.out.find(
                r"Successfully loaded servable version \{name: slow version: 1\}"
            ),
            30,
            what="the load's log line",
        )
        address = server.out.find(r"Ray cluster address: (\S+)").group(1)
        table = subprocess.run(
            [ASPIRE, "status", f"--address={address}"], capture_output=True, text=True, timeout=120
        )
        assert table.returncode == 0, table.stderr
        assert re.search(r"slow\s+1\s+AVAILABLE", table.stdout), table.stdout
        # `--address=auto` (README's command): Ray finds the cluster and sends its token itself
        auto = subprocess.run(
            [ASPIRE, "status", "--address=auto"],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "RAY_ADDRESS": address},
        )
        assert auto.returncode == 0 and auto.stdout == table.stdout, auto.stderr
        print(f"aspire serve to first AVAILABLE version and REST ready: {ready_s:.1f} s")
        status = requests.get(f"http://127.0.0.1:{port}/v1/aspire/status", timeout=30).json()
        [replica] = status["placements"]["slow"]["1"]
        assert replica["session_threads"] == [1, 2]  # read back from the replica's TF session
        fast = requests.post(url, json={"instances": [10]}, timeout=30)
        assert fast.json() == {"predictions": [10]}
        slow = requests.post(url, json={"instances": [2_000_000]}, timeout=30)  # seconds of work
        answered = time.monotonic()
        assert slow.status_code == 504
        assert slow.json()["error"].startswith("Request timed out after 500 ms")
        # The work is cancelled too: TF stops the run (RunOptions.timeout_in_ms), so the
        # replica's CPU time stops growing instead of spinning on for ~30 s.
        cpu = replica_cpu_seconds(replica["pid"])
        wait_for(lambda: cpu.idle_for(0.5), 10, 0.1, what="the replica's CPU to go idle")
        print(
            f"\n504 after 500 ms; the replica's CPU idle within "
            f"{time.monotonic() - answered:.2f} s of the answer (measured over 0.5 s windows)"
        )
        # --enable_serialization_as_tensor_content: gRPC outputs come as raw bytes
        import grpc
        import numpy as np
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

        request = predict_pb2.PredictRequest()
        request.model_spec.name = "slow"
        request.inputs["iterations"].CopyFrom(tf.make_tensor_proto(np.array([7, 3], np.int64)))
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            done = stub.Predict(request, timeout=60).outputs["done"]
        assert done.tensor_content and not done.int64_val
        assert tf.make_ndarray(done).tolist() == [7, 7]
    assert server.exit_code == 0, "".join(server.out.lines[-40:])
    assert server.out.find(r"Unloading servable version \{name: slow version: 1\}")


def test_bad_model_config_file_fails_start_up_with_the_parse_error():
    r = subprocess.run(
        [ASPIRE, "serve", f"--model_config_file={DATA / 'bad_model_config.txt'}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 255
    assert "Failed to start server. Error: INVALID_ARGUMENT: Invalid protobuf file:" in r.stderr
    assert (
        "bad_model_config.txt': Error parsing text-format tensorflow.serving.ModelServerConfig: 1:1"
        in r.stderr
    )


def test_labels_at_start_up_need_the_allow_flag(tmp_path):
    config = tmp_path / "models.config"
    config.write_text(
        "model_config_list { config { name: 'm' "
        f"base_path: '{DATA / 'saved_model_half_plus_two_cpu'}'\n"
        "        model_platform: 'tensorflow' version_labels { key: 'stable' value: 123 } } }"
    )
    r = subprocess.run(
        [ASPIRE, "serve", f"--model_config_file={config}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 255
    assert (
        "FAILED_PRECONDITION: Request to assign label to version 123 of model m, which is not "
        "currently available for inference"
    ) in r.stderr


def write_config(path, entries):
    body = "".join(
        f"config {{ name: '{name}' base_path: '{base}' model_platform: 'tensorflow' "
        f"model_version_policy {{ all {{}} }} "
        + "".join(f"version_labels {{ key: '{k}' value: {v} }} " for k, v in labels.items())
        + "} "
        for name, base, labels in entries
    )
    staging = path.with_suffix(".tmp")
    staging.write_text(f"model_config_list {{ {body} }}")
    staging.rename(path)  # the poller never reads a half-written file


def binomial_bounds(n: int, p: float, false_failure: float) -> tuple[int, int]:
    """The narrowest [lo, hi] with P(X < lo) and P(X > hi) each under false_failure / 2 for
    X ~ Binomial(n, p)."""
    from math import comb

    mass = [comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1)]
    lo, below = 0, 0.0
    while below + mass[lo] < false_failure / 2:
        below += mass[lo]
        lo += 1
    hi, above = n, 0.0
    while above + mass[hi] < false_failure / 2:
        above += mass[hi]
        hi -= 1
    return lo, hi


def test_binomial_bounds_hold_the_stated_false_failure_rate():
    lo, hi = binomial_bounds(500, 0.2, 1e-6)
    assert (lo, hi) == (59, 146)  # checked by summing the exact tails: 4.1e-7 below, 3.5e-7 above
    assert binomial_bounds(10, 0.5, 0.5)[0] <= 5 <= binomial_bounds(10, 0.5, 0.5)[1]


def test_config_file_side_file_canary_split_and_polling(tmp_path):
    """--model_config_file with labels, Aspire's side file splitting traffic 80/20 by label, a
    weight change applied without reloading models, and config polling removing a model."""
    import json
    import shutil

    canary = tmp_path / "canary"
    shutil.copytree(DATA / "saved_model_half_plus_two_cpu" / "00000123", canary / "1")
    shutil.copytree(DATA / "saved_model_half_plus_three" / "00000123", canary / "2")
    config, side = tmp_path / "models.config", tmp_path / "aspire.json"
    write_config(
        config,
        [
            ("canary", canary, {"stable": 1, "canary": 2}),
            ("half_plus_two", DATA / "saved_model_half_plus_two_cpu", {}),
        ],
    )
    side.write_text(json.dumps({"models": {"canary": {"traffic": {"stable": 80, "canary": 20}}}}))
    port = free_port()
    base = f"http://127.0.0.1:{port}/v1/models"
    session = requests.Session()

    def states(name):
        r = session.get(f"{base}/{name}", timeout=30)
        return {s["version"]: s["state"] for s in r.json().get("model_version_status", [])}

    with Served(
        f"--model_config_file={config}",
        "--model_config_file_poll_wait_seconds=0.5",
        f"--aspire_config_file={side}",
        "--aspire_config_file_poll_wait_seconds=0.5",
        "--allow_version_labels_for_unavailable_models",
        f"--rest_api_port={port}",
        "--port=0",
        "--rest_api_host=127.0.0.1",
    ) as server:
        wait_for(
            lambda: states("canary") == {"2": "AVAILABLE", "1": "AVAILABLE"},
            120,
            what="both canary versions",
        )
        answers = [
            session.post(f"{base}/canary:predict", json={"instances": [1.0]}, timeout=30).json()[
                "predictions"
            ][0]
            for _ in range(500)
        ]
        share = answers.count(3.5) / len(answers)
        print(f"canary share over 500 requests with an 80/20 split: {share:.3f}")
        assert answers.count(2.5) + answers.count(3.5) == 500
        # Each unversioned request draws the canary with p = 0.2: the count is Binomial(500, 0.2).
        # Outside [lo, hi] with probability under 1e-6 (exact tails, so a correct split fails this
        # test less than once in a million runs); a 0/100 or 50/50 split lands far outside.
        lo, hi = binomial_bounds(500, 0.2, 1e-6)
        assert lo <= answers.count(3.5) <= hi, (lo, hi)
        # Move all traffic to the canary: no model is reloaded, only the router's weights change.
        side.write_text(
            json.dumps({"models": {"canary": {"traffic": {"stable": 0, "canary": 100}}}})
        )
        wait_for(
            lambda: all(
                session.post(
                    f"{base}/canary:predict", json={"instances": [1.0]}, timeout=30
                ).json()["predictions"][0]
                == 3.5
                for _ in range(20)
            ),
            30,
            0.2,
            what="the new split",
        )
        assert states("canary") == {"2": "AVAILABLE", "1": "AVAILABLE"}
        address = server.out.find(r"Ray cluster address: (\S+)").group(1)
        status = subprocess.run(
            [ASPIRE, "status", f"--address={address}"], capture_output=True, text=True, timeout=120
        )
        assert re.search(r"canary\s+2\s+AVAILABLE\s+1/1\s+canary\s+100%", status.stdout), (
            status.stdout
        )
        assert re.search(r"canary\s+1\s+AVAILABLE\s+1/1\s+stable\s*$", status.stdout, re.M), (
            status.stdout
        )
        # Config polling: a model removed from the file is unloaded, the others stay.
        write_config(config, [("canary", canary, {"stable": 1, "canary": 2})])
        wait_for(
            lambda: states("half_plus_two") == {"123": "END"}, 120, what="half_plus_two unloaded"
        )
        assert states("canary") == {"2": "AVAILABLE", "1": "AVAILABLE"}


def test_status_against_a_ray_without_aspire_says_so_and_exits_1(tmp_path):
    """A Ray cluster runs, Aspire does not: `aspire status` connects, finds no manager, says so."""
    import signal
    import sys

    ready = tmp_path / "address"
    host = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import pathlib, sys, time, ray\n"
            "ray.init(address='local', include_dashboard=False, num_cpus=1)\n"
            "pathlib.Path(sys.argv[1]).write_text(ray.get_runtime_context().gcs_address)\n"
            "time.sleep(600)\n",
            str(ready),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: ready.exists() and ready.read_text(), 120, what="a bare Ray to start")
        address = ready.read_text()
        started = time.monotonic()
        r = subprocess.run(
            [ASPIRE, "status", f"--address={address}"], capture_output=True, text=True, timeout=120
        )
        took = time.monotonic() - started
    finally:
        host.send_signal(signal.SIGINT)
        try:
            host.wait(60)
        except subprocess.TimeoutExpired:
            host.kill()
    assert r.returncode == 1, r.stdout + r.stderr
    assert (
        f"aspire status: no Aspire server found at {address}: Ray runs there, Aspire does not"
        in r.stderr
    )
    assert r.stdout == ""
    print(f"\naspire status against a Ray without Aspire: exit 1 in {took:.1f} s")
