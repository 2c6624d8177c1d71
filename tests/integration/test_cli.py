"""`aspire serve` and `aspire status` as a user runs them: a real process, embedded Ray, Ctrl-C."""
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.integration.conftest import DATA, free_port, wait_for

pytestmark = pytest.mark.ray
ASPIRE = str(Path(sys.executable).parent / "aspire")


class Output:
    def __init__(self, proc):
        self.lines = []
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc):
        for line in proc.stdout:
            self.lines.append(line)

    def find(self, pattern):
        for line in self.lines:
            m = re.search(pattern, line)
            if m:
                return m
        return None


def test_serve_cli_serves_half_plus_two_then_shuts_down_on_ctrl_c():
    port = free_port()
    started = time.monotonic()
    proc = subprocess.Popen(
        [ASPIRE, "serve", "--model_name=half_plus_two",
         f"--model_base_path={DATA / 'saved_model_half_plus_two_cpu'}",
         f"--rest_api_port={port}", "--port=0", "--rest_api_host=127.0.0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = Output(proc)
    try:
        wait_for(lambda: out.find(r"Exporting HTTP/REST API at:127\.0\.0\.1:\d+") or proc.poll() is not None,
                 240, 0.2, what="aspire serve to report ready")
        assert proc.poll() is None, "".join(out.lines[-40:])
        ready_s = time.monotonic() - started
        r = requests.post(f"http://127.0.0.1:{port}/v1/models/half_plus_two:predict",
                          json={"instances": [1.0, 2.0, 5.0]}, timeout=30)
        assert r.json() == {"predictions": [2.5, 3.0, 4.5]}
        assert out.find(r"Successfully loaded servable version \{name: half_plus_two version: 123\}")

        address = out.find(r"Ray cluster address: (\S+)").group(1)
        status = subprocess.run([ASPIRE, "status", f"--address={address}"], capture_output=True,
                                text=True, timeout=120)
        assert status.returncode == 0, status.stderr
        assert re.search(r"half_plus_two\s+123\s+AVAILABLE", status.stdout), status.stdout
        print(f"aspire serve to first AVAILABLE version and REST ready: {ready_s:.1f} s")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, "".join(out.lines[-40:])
    out.thread.join(10)
    assert out.find(r"Unloading servable version \{name: half_plus_two version: 123\}")


@pytest.mark.parametrize("flags,message", [
    (["--model_base_path=/m", "--port=8501", "--rest_api_port=8501"],
     "http_port cannot be same as grpc_port"),
    ([], "Both server_options.model_base_path and server_options.model_config_file are empty!"),
    (["--model_base_path=/m", "--num_replicas=0"], "must be at least 1"),
])
def test_contradictory_flags_are_a_clear_error(flags, message):
    r = subprocess.run([ASPIRE, "serve", *flags], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert message in r.stderr


def test_unknown_flag_is_a_clear_error():
    r = subprocess.run([ASPIRE, "serve", "--model_base_path=/m", "--no_such_flag=1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "unrecognized arguments: --no_such_flag=1" in r.stderr


def test_timeout_and_tensor_content_flags(tmp_path):
    from tests.integration.export_models import export_slow_model
    export_slow_model(tmp_path / "slow" / "1")
    port, grpc_port = free_port(), free_port()
    proc = subprocess.Popen(
        [ASPIRE, "serve", "--model_name=slow", f"--model_base_path={tmp_path / 'slow'}",
         f"--rest_api_port={port}", "--port=0", "--rest_api_host=127.0.0.1",
         "--rest_api_timeout_in_ms=500", f"--port={grpc_port}",
         "--enable_serialization_as_tensor_content"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = Output(proc)
    url = f"http://127.0.0.1:{port}/v1/models/slow:predict"
    try:
        wait_for(lambda: out.find(r"Exporting HTTP/REST API") or proc.poll() is not None,
                 240, 0.2, what="aspire serve to report ready")
        assert proc.poll() is None, "".join(out.lines[-40:])
        fast = requests.post(url, json={"instances": [10]}, timeout=30)
        assert fast.json() == {"predictions": [10]}
        slow = requests.post(url, json={"instances": [2_000_000]}, timeout=30)  # seconds of work
        assert slow.status_code == 504
        assert slow.json()["error"].startswith("Request timed out after 500 ms")
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
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
