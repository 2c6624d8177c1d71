"""Dynamic batching through `aspire serve --enable_batching`, as a TF Serving user enables it:
concurrent requests are batched by the replica and each gets its own answer; TF Serving's errors
come back for a task larger than the batch limit and for a bad parameters file."""

import re
import subprocess
import threading

import pytest
import requests

from tests.integration.conftest import ASPIRE, DATA, Served, free_port, wait_for

pytestmark = pytest.mark.ray
PARAMS = """
max_batch_size { value: 4 }
batch_timeout_micros { value: 20000 }
max_enqueued_batches { value: 1000 }
num_batch_threads { value: 2 }
allowed_batch_sizes: 2
allowed_batch_sizes: 4
"""


def test_batched_requests_each_get_their_own_answer(tmp_path):
    params = tmp_path / "batching.txt"
    params.write_text(PARAMS)
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1/models/half_plus_two:predict"
    with Served(
        "--model_name=half_plus_two",
        f"--model_base_path={DATA / 'saved_model_half_plus_two_cpu'}",
        "--enable_batching",
        f"--batching_parameters_file={params}",
        f"--rest_api_port={port}",
        f"--monitoring_config_file={DATA / 'monitoring_config.txt'}",
        "--port=0",
        "--rest_api_host=127.0.0.1",
    ):
        wrong, lock = [], threading.Lock()

        def client(k):
            session = requests.Session()
            for i in range(20):
                x = [float(k * 100 + i)] * (1 + (k + i) % 3)  # 1 to 3 rows, padded to 2 or 4
                r = session.post(url, json={"instances": x}, timeout=60)
                if r.status_code != 200 or r.json() != {"predictions": [v / 2 + 2 for v in x]}:
                    with lock:
                        wrong.append((x, r.status_code, r.text))

        threads = [threading.Thread(target=client, args=(k,)) for k in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert wrong == []

        # The replica ran fewer batches than it got requests: they were batched.
        def batch_stats():
            page = requests.get(
                f"http://127.0.0.1:{port}/monitoring/prometheus/metrics", timeout=30
            ).text
            found = dict(
                re.findall(
                    r'aspire_batch_tasks_(sum|count)\{model="half_plus_two",'
                    r'version="123"\} (\d+)',
                    page,
                )
            )
            return {k: int(v) for k, v in found.items()}

        stats = wait_for(
            lambda: (s := batch_stats()).get("sum", 0) >= 12 * 20 and s,
            30,
            0.5,
            what="batch metrics of 240 requests (plus warmup)",
        )
        print(
            f"{stats['sum']} requests ran in {stats['count']} batches "
            f"({stats['sum'] / stats['count']:.2f} per batch)"
        )
        assert stats["count"] < stats["sum"]
        r = requests.post(url, json={"instances": [1.0] * 5}, timeout=60)
        assert r.status_code == 400
        assert r.json() == {"error": "Task size 5 is larger than maximum input batch size 4"}


def test_a_bad_batching_parameters_file_stops_start_up(tmp_path):
    params = tmp_path / "batching.txt"
    params.write_text("max_batch_size { value: 4 }\nallowed_batch_sizes: 2\n")
    r = subprocess.run(
        [
            ASPIRE,
            "serve",
            "--model_name=m",
            f"--model_base_path={tmp_path}",
            "--enable_batching",
            f"--batching_parameters_file={params}",
            "--port=0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 255
    assert (
        "Failed to start server. Error: INVALID_ARGUMENT: Last entry in allowed_batch_sizes must "
        "match max_batch_size; last entry was 2; expected 4"
    ) in r.stderr
