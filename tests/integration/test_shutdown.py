"""`aspire serve` stops promptly on SIGTERM whatever its versions are doing: a version waiting
for its next load retry (TF Serving's default interval is one minute) and a version in the middle
of a long load. Before, the manager waited out the retry interval, and a load to its end, before
it unloaded anything; Kubernetes sends SIGKILL 30 s after SIGTERM by default."""

import re
import signal
import subprocess
import time

import pytest

from tests.integration.conftest import ASPIRE, Output, free_port, wait_for

pytestmark = pytest.mark.ray

RETRY_INTERVAL_S = 60  # TF Serving's default --load_retry_interval_micros
WARMUP_SLEEP_S = 600  # how long the mid-load version's warmup request would take


def serve(*flags, grpc_port=None):
    proc = subprocess.Popen(
        [
            ASPIRE,
            "serve",
            "--rest_api_host=127.0.0.1",
            f"--port={grpc_port or free_port()}",
            "--initial_load_timeout_s=900",  # the start-up wait is interrupted, never run out
            *flags,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return proc, Output(proc)


def wait_for_line(proc, out, pattern):
    """Until the server prints a line matching `pattern`, or exits."""
    wait_for(lambda: out.find(pattern) or proc.poll() is not None, 240, 0.2, what=pattern)


def grpc_status(port, name):
    import grpc
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        answer = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
            request, timeout=60
        )
    states = get_model_status_pb2.ModelVersionStatus.State
    return [
        (s.version, states.Name(s.state), s.status.error_code) for s in answer.model_version_status
    ]


def stop_with_sigterm(proc, out) -> float:
    """SIGTERM; the seconds until the process exited (it must exit 0)."""
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(WARMUP_SLEEP_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    took = time.monotonic() - sent
    out.thread.join(10)
    assert code == 0, "".join(out.lines[-40:])
    assert out.find(r"stopped in [\d.]+ s"), "".join(out.lines[-40:])
    return took


def test_sigterm_between_load_retries_exits_0_without_waiting_for_the_retry(tmp_path):
    broken = tmp_path / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    grpc_port = free_port()
    proc, out = serve(
        "--rest_api_port=0",  # gRPC only, as in TF Serving
        "--model_name=broken",
        f"--model_base_path={broken.parent}",
        "--max_num_load_retries=5",
        f"--load_retry_interval_micros={RETRY_INTERVAL_S * 1_000_000}",
        grpc_port=grpc_port,
    )
    try:
        wait_for_line(proc, out, r"Loading servable: \{name: broken version: 1\} failed")
        address = wait_for(lambda: out.find(r"Ray cluster address: (\S+)"), 60).group(1)
        # the retry is visible while it waits: TF Serving's status says LOADING, error OK
        table = subprocess.run(
            [ASPIRE, "status", f"--address={address}"], capture_output=True, text=True, timeout=120
        )
        assert re.search(r"broken\s+1\s+LOADING\s+try 2/6 at \S+ after \w+: ", table.stdout), (
            table.stdout + table.stderr
        )
        # TF Serving's gRPC status shows it as TF Serving does (REST is off: --rest_api_port=0)
        assert grpc_status(grpc_port, "broken") == [(1, "LOADING", 0)]
    except BaseException:
        proc.kill()
        raise
    took = stop_with_sigterm(proc, out)
    print(f"\nSIGTERM between load retries: exited 0 in {took:.1f} s")
    assert took < RETRY_INTERVAL_S  # it used to wait out the interval first


def test_sigterm_in_the_middle_of_a_long_load_exits_0_without_waiting_for_it(tmp_path):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    from tests.integration.export_models import export_sleepy_model, write_warmup_requests

    version = export_sleepy_model(tmp_path / "sleepy" / "1")
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "sleepy"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0], tf.float32))
    request.inputs["sleep_ms"].CopyFrom(tf.make_tensor_proto([WARMUP_SLEEP_S * 1000], tf.int64))
    write_warmup_requests(version, [request])
    proc, out = serve(
        f"--rest_api_port={free_port()}",
        "--model_name=sleepy",
        f"--model_base_path={version.parent}",
    )
    try:
        wait_for_line(proc, out, r"Admitted servable: \{name: sleepy version: 1\}")
        assert proc.poll() is None, "".join(out.lines[-40:])
    except BaseException:
        proc.kill()
        raise
    took = stop_with_sigterm(proc, out)
    print(f"\nSIGTERM in the middle of a load: exited 0 in {took:.1f} s")
    assert took < WARMUP_SLEEP_S / 2
