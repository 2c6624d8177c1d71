"""Metrics end to end: `aspire serve` with 2 router replicas and 2 logical GPUs, scraped by a
real Prometheus (Debian's package) during a real rollout under load. Every PromQL expression of
the Grafana dashboard must return data, and Prometheus's totals must equal what the test sent."""

import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.integration.conftest import DATA, ClosedLoop, Served, free_port, wait_for
from tests.support.dashboards import dashboard_expressions
from tests.support.prometheus import PrometheusServer

# Prometheus is installed (on first use) in setup, outside the time limit (tests/conftest.py)
pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("prometheus_binary")]
ROOT = Path(__file__).resolve().parents[2]
METRICS_PATH = "/monitoring/prometheus/metrics"


def render_module():
    spec = importlib.util.spec_from_file_location(
        "render_rollout", ROOT / "cluster/grafana/render_rollout.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_rollout_is_observable_through_a_real_prometheus(tmp_path):
    base = tmp_path / "models"
    shutil.copytree(DATA / "saved_model_half_plus_two_cpu" / "00000123", base / "rollout" / "1")
    shutil.copytree(DATA / "saved_model_half_plus_two_cpu" / "00000123", base / "huge" / "1")
    config = tmp_path / "models.config"
    config.write_text(
        "model_config_list {\n"
        + "".join(
            f'config {{ name: "{n}" base_path: "{base / n}" model_platform: "tensorflow" }}\n'
            for n in ("rollout", "huge")
        )
        + "}\n"
    )
    settings = tmp_path / "aspire.json"
    settings.write_text(
        json.dumps({"models": {"rollout": {"vram": "4GiB"}, "huge": {"vram": "20GiB"}}})
    )  # never fits
    port, grpc_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    with (
        Served(
            f"--model_config_file={config}",
            f"--aspire_config_file={settings}",
            f"--monitoring_config_file={DATA / 'monitoring_config.txt'}",
            "--gpus=2x16GiB",
            "--num_router_replicas=2",
            f"--rest_api_port={port}",
            f"--port={grpc_port}",
            "--rest_api_host=127.0.0.1",
        ),
        PrometheusServer(
            [f"127.0.0.1:{port}"], scrape_interval_s=1.0, metrics_path=METRICS_PATH
        ) as prom,
    ):
        page = requests.get(url + METRICS_PATH, timeout=30)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/plain")
        assert "# TYPE :tensorflow:cc:saved_model:load_attempt_count counter" in page.text
        assert 'aspire_admission_refusals_total{model="huge",reason="gpu_memory"} 1' in page.text
        prom.wait_for_scrapes(3, timeout_s=60)
        start = time.time()

        # A rollout v1 -> v2 under load, through both router replicas.
        with ClosedLoop(f"{url}/v1/models/rollout:predict", clients=4) as load:
            load.wait_more(100)
            shutil.copytree(
                DATA / "saved_model_half_plus_three" / "00000123", base / "rollout" / "2"
            )
            wait_for(
                lambda: (
                    requests.get(f"{url}/v1/models/rollout/versions/1", timeout=30).json()[
                        "model_version_status"
                    ][0]["state"]
                    == "END"
                ),
                180,
                0.2,
                what="v1 unloaded after v2 took over",
            )
            load.wait_more(100)
        sent_ok = len(load.answers)
        assert load.failures == []
        # Errors: bad JSON, and 50 distinct names the server does not know.
        for _ in range(7):
            r = requests.post(f"{url}/v1/models/rollout:predict", data="{bad", timeout=30)
            assert r.status_code == 400
        for i in range(50):
            assert (
                requests.post(
                    f"{url}/v1/models/nope{i}:predict", json={"instances": [1]}, timeout=30
                ).status_code
                == 404
            )
        sent = sent_ok + 7
        grpc_predicts(f"127.0.0.1:{grpc_port}", "rollout", 5)

        def total(expr):
            result = prom.query(expr)
            return float(result[0]["value"][1]) if result else None

        # Counts from 2 router processes, shipped to the manager and scraped: exactly what was sent.
        try:
            wait_for(
                lambda: (
                    total(
                        'sum(aspire_requests_total{model="rollout",api="predict",protocol="rest"})'
                    )
                    == sent
                    and total('sum(aspire_requests_total{model="_unknown"})') == 50
                    and total('sum(aspire_requests_total{model="rollout",protocol="grpc"})') == 5
                ),
                60,
                0.5,
                what=f"Prometheus to count {sent} + 50 requests",
            )
        except AssertionError:
            print(prom.query('aspire_requests_total{model="rollout"}'), prom.targets())
            print(requests.get(url + METRICS_PATH, timeout=30).text)
            raise
        # (the test's own status polls are requests too: count predicts only)
        assert (
            total(
                'sum(:tensorflow:serving:request_latency_count{model_name="rollout",API="predict",'
                'entrypoint="REST"})'
            )
            == sent_ok
        )
        assert (
            total(
                'sum(:tensorflow:serving:request_latency_count{model_name="rollout",API="Predict",'
                'entrypoint="GRPC"})'
            )
            == 5
        )
        assert (
            total(
                'sum(aspire_requests_total{model="rollout",api="predict",protocol="rest",code="OK"})'
            )
            == sent_ok
        )
        assert total('sum(aspire_requests_total{model="rollout",code="INVALID_ARGUMENT"})') == 7
        assert total('count(aspire_requests_total{model="_unknown"})') == 1  # one series, not 50
        assert total('sum(aspire_requests_total{model="_unknown"})') == 50
        by_version = {
            s["metric"]["version"]: float(s["value"][1])
            for s in prom.query(
                'sum by (version) (aspire_requests_total{model="rollout",protocol="rest",'
                'api="predict",code="OK"})'
            )
        }
        assert set(by_version) == {"1", "2"} and all(v > 0 for v in by_version.values())
        print(
            f"rollout under load: {sent} requests sent, Prometheus counted {sent} "
            f"(v1 {by_version['1']:.0f}, v2 {by_version['2']:.0f}) through 2 routers"
        )

        prom.wait_for_scrapes(prom_scrapes(prom) + 3, timeout_s=60)  # a window for rate()
        # The "Progressive delivery" row's series exist only while a model has a side-file
        # rollout, which this one has not (a version rollout); tests/integration/
        # test_dashboard_promql.py checks those expressions against a real Prometheus.
        empty = [
            e for e in dashboard_expressions() if "aspire_rollout_" not in e and not prom.query(e)
        ]
        assert empty == [], f"dashboard expressions without data: {empty}"
        end = time.time()

        out = Path(os.environ.get("ASPIRE_ROLLOUT_PNG", tmp_path / "rollout.png"))
        render_module().render(
            prom.url,
            "rollout",
            start - 5,
            end,
            str(out),
            step=1,
            rate_window="5s",
            title="Aspire: rollout v1 -> v2 under load (real Prometheus data)",
        )
        assert out.stat().st_size > 20_000


def grpc_predicts(target: str, model: str, n: int) -> None:
    import grpc
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for _ in range(n):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model
            request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([1.0], np.float32)))
            stub.Predict(request, timeout=60)


def prom_scrapes(prom) -> int:
    result = prom.query("min(sum_over_time(up[1d]))")
    return int(float(result[0]["value"][1])) if result else 0
