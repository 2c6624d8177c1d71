"""Every PromQL expression of the Grafana dashboard, through a real Prometheus.

First syntax: each expression (Grafana variables substituted by `dashboard_expressions()`) is sent
to Prometheus's /api/v1/query before anything was scraped; a parse error raises PrometheusError.
Then semantics: a tiny in-process exporter serves every metric the dashboard reads, with the
names, labels and types Aspire exports, and every expression must return at least one series,
so a misspelt metric or label shows up here as an empty panel would in Grafana.
"""

from __future__ import annotations

import time

import pytest

from tests.support.dashboards import dashboard_expressions
from tests.support.exporter import TextExporter
from tests.support.prometheus import PrometheusError, PrometheusServer

# Prometheus is installed (on first use) in setup, outside the time limit (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("prometheus_binary")
BUCKETS_S = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0]
BUCKETS_US = [1000, 5000, 10000, 50000, 100000]


def _histogram(name: str, labels: str, buckets: list[float], n: int, value: float) -> list[str]:
    lines = []
    for le in buckets:
        lines.append(f'{name}_bucket{{{labels},le="{le:g}"}} {n if value <= le else 0}')
    lines.append(f'{name}_bucket{{{labels},le="+Inf"}} {n}')
    lines.append(f"{name}_sum{{{labels}}} {n * value}")
    lines.append(f"{name}_count{{{labels}}} {n}")
    return lines


def exposition(scrape: int) -> str:
    """Every metric of Aspire's list, counters growing with each scrape."""
    n = 10 * (scrape + 1)
    lines = ["# TYPE aspire_requests_total counter"]
    for version, code in [("1", "OK"), ("2", "OK"), ("2", "INVALID_ARGUMENT"), ("", "NOT_FOUND")]:
        lines.append(
            f'aspire_requests_total{{model="m",version="{version}",api="predict",'
            f'protocol="rest",code="{code}"}} {n}'
        )
    lines.append("# TYPE aspire_request_latency_seconds histogram")
    for version in ("1", "2"):
        lines += _histogram(
            "aspire_request_latency_seconds",
            f'model="m",version="{version}",api="predict",protocol="rest"',
            BUCKETS_S,
            n,
            0.004,
        )
    lines.append("# TYPE aspire_servable_state gauge")
    current = {"1": "UNLOADING", "2": "AVAILABLE"}
    for version, now in current.items():
        for state in ("START", "LOADING", "AVAILABLE", "UNLOADING", "END"):
            lines.append(
                f'aspire_servable_state{{model="m",version="{version}",state="{state}"}} '
                f"{1 if state == now else 0}"
            )
    lines.append("# TYPE aspire_load_attempts_total counter")
    lines.append(f'aspire_load_attempts_total{{model="m",status="OK"}} {2 + scrape}')
    lines.append('aspire_load_attempts_total{model="m",status="RESOURCE_EXHAUSTED"} 1')
    lines.append("# TYPE aspire_load_duration_seconds histogram")
    lines += _histogram("aspire_load_duration_seconds", 'model="m"', BUCKETS_S, 2 + scrape, 0.4)
    lines.append("# TYPE aspire_admission_refusals_total counter")
    lines.append(f'aspire_admission_refusals_total{{model="m",reason="vram"}} {scrape}')
    lines.append("# TYPE aspire_gpu_memory_total_bytes gauge")
    lines.append('aspire_gpu_memory_total_bytes{node="n1",gpu="0"} 85899345920')
    lines.append("# TYPE aspire_gpu_memory_reserved_bytes gauge")
    lines.append('aspire_gpu_memory_reserved_bytes{node="n1",gpu="0"} 4294967296')
    lines.append("# TYPE aspire_servable_vram_reserved_bytes gauge")
    lines.append(
        'aspire_servable_vram_reserved_bytes{model="m",version="2",node="n1",gpu="0"} 4294967296'
    )
    lines.append("# TYPE aspire_host_ram_total_bytes gauge")
    lines.append('aspire_host_ram_total_bytes{node="n1"} 137438953472')
    lines.append("# TYPE aspire_host_ram_reserved_bytes gauge")
    lines.append('aspire_host_ram_reserved_bytes{node="n1"} 1073741824')
    lines.append("# TYPE aspire_traffic_weight gauge")
    lines.append('aspire_traffic_weight{model="m",version="1"} 0.25')
    lines.append('aspire_traffic_weight{model="m",version="2"} 0.75')
    lines.append("# TYPE aspire_rollout_phase gauge")
    for phase in ("waiting", "shadow", "step", "gate", "paused", "promoted", "rolled_back"):
        lines.append(f'aspire_rollout_phase{{model="m",phase="{phase}"}} {int(phase == "step")}')
    lines.append("# TYPE aspire_rollout_candidate_weight gauge")
    lines.append('aspire_rollout_candidate_weight{model="m",candidate="2"} 25')
    lines.append("# TYPE aspire_rollout_shadow_requests_total counter")
    for outcome in ("compared", "dropped"):
        lines.append(f'aspire_rollout_shadow_requests_total{{model="m",outcome="{outcome}"}} {n}')
    lines.append("# TYPE aspire_rollout_divergence gauge")
    lines.append('aspire_rollout_divergence{model="m",output="y",figure="mean_abs_diff"} 0')
    lines.append("# TYPE aspire_rollout_judgements_total counter")
    lines.append(f'aspire_rollout_judgements_total{{model="m",phase="step",result="pass"}} {n}')
    lines.append("# TYPE :tensorflow:serving:request_count counter")
    lines.append(f':tensorflow:serving:request_count{{model_name="m",status="OK"}} {n}')
    lines.append("# TYPE :tensorflow:serving:request_latency histogram")
    lines += _histogram(
        ":tensorflow:serving:request_latency",
        'model_name="m",API="predict",entrypoint="REST"',
        BUCKETS_US,
        n,
        4000,
    )
    return "\n".join(lines) + "\n"


@pytest.fixture
def exporter():
    e = TextExporter(exposition)
    yield e
    e.close()


def test_every_dashboard_expression_parses_and_returns_data(exporter):
    exprs = dashboard_expressions()
    assert len(exprs) >= 15
    with PrometheusServer(
        [exporter.target], scrape_interval_s=0.5, metrics_path="/monitoring/prometheus/metrics"
    ) as prom:
        errors = {}
        for expr in exprs:  # nothing scraped yet: only the parser is exercised
            try:
                prom.query(expr)
            except PrometheusError as e:
                errors[expr] = str(e)
        assert not errors, "PromQL errors:\n" + "\n".join(
            f"{e}\n  -> {m}" for e, m in errors.items()
        )

        prom.wait_for_scrapes(n=4, timeout_s=30)
        deadline = time.monotonic() + 15
        while True:
            empty = [e for e in exprs if not prom.query(e)]
            if not empty or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert not empty, "expressions with no result:\n" + "\n".join(empty)

        # the state timeline's encoding: value = 1 + index of the current state
        by_version = {
            r["metric"]["version"]: float(r["value"][1])
            for r in prom.query(next(e for e in exprs if "aspire_servable_state" in e))
        }
        assert by_version == {"1": 4.0, "2": 3.0}  # UNLOADING, AVAILABLE
        phase = prom.query(next(e for e in exprs if "aspire_rollout_phase" in e))
        assert [float(r["value"][1]) for r in phase] == [3.0]  # step, the third phase
        # the TF Serving p99 is in seconds (microseconds / 1e6): 4000 us lies in the 5000 us bucket
        p99 = prom.query(next(e for e in exprs if ":tensorflow:serving:request_latency" in e))
        assert 0.001 < float(p99[0]["value"][1]) <= 0.005
