"""The Prometheus harness (tests/support/prometheus.py) against a real Prometheus binary.

A tiny in-process HTTP server exposes a counter in the Prometheus text format; a real Prometheus
(Debian's package, installed on first use) scrapes it, and the test reads it back through the
HTTP API, both instant and range queries, plus Prometheus's own PromQL parse errors.
"""

from __future__ import annotations

import os
import socket
import time

import pytest
import requests

from tests.integration.conftest import wait_for
from tests.support.exporter import TextExporter
from tests.support.prometheus import (
    PrometheusError,
    PrometheusServer,
    ensure_prometheus,
    prometheus_version,
)

# Prometheus is installed (on first use) in setup, outside the time limit (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("prometheus_binary")


class Exporter(TextExporter):
    """Serves `harness_test_requests_total{code="200"} <value>` on /metrics, counting scrapes."""

    def __init__(self):
        self.value = 0
        super().__init__(
            lambda _scrapes: (
                "# HELP harness_test_requests_total Requests seen by the harness test.\n"
                "# TYPE harness_test_requests_total counter\n"
                f'harness_test_requests_total{{code="200"}} {self.value}\n'
            ),
            path="/metrics",
        )

    def set(self, value: int):
        with self.lock:
            self.value = value


@pytest.fixture
def exporter():
    e = Exporter()
    yield e
    e.close()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_prometheus_scrapes_queries_and_stops(exporter):
    binary = ensure_prometheus()
    assert os.access(binary, os.X_OK)
    assert prometheus_version(binary)[0].isdigit()

    exporter.set(7)
    prom = PrometheusServer([exporter.target], scrape_interval_s=0.5)
    with prom:
        assert prom.url.startswith("http://127.0.0.1:") and prom.port != 9090
        pid, data_dir = prom.pid, prom.dir
        assert not _gone(pid)
        reload = requests.post(f"{prom.url}/-/reload", timeout=10)  # --web.enable-lifecycle off
        assert reload.status_code == 403, reload.text

        targets = prom.wait_for_scrapes(n=2, timeout_s=30)
        assert [t["scrapeUrl"] for t in targets] == [f"http://{exporter.target}/metrics"]
        assert all(t["health"] == "up" for t in prom.targets())
        assert exporter.scrapes >= 2  # Prometheus really came to our server

        result = prom.query("harness_test_requests_total")
        assert len(result) == 1
        assert result[0]["metric"] == {
            "__name__": "harness_test_requests_total",
            "code": "200",
            "instance": exporter.target,
            "job": "aspire",
        }
        assert float(result[0]["value"][1]) == 7
        assert prom.query_value('harness_test_requests_total{code="200"}') == 7

        exporter.set(42)
        seen = prom.wait_for(
            "harness_test_requests_total",
            lambda r: r and float(r[0]["value"][1]) == 42,
            timeout_s=30,
        )
        assert float(seen[0]["value"][1]) == 42
        assert prom.query_value("sum(harness_test_requests_total)") == 42

        end = time.time()
        series = prom.query_range("harness_test_requests_total", end - 60, end, 0.5)
        assert len(series) == 1 and series[0]["metric"]["code"] == "200"
        values = [float(v) for _, v in series[0]["values"]]
        assert len(values) >= 2 and {7.0, 42.0} <= set(values)
        assert values[-1] == 42

        with pytest.raises(PrometheusError) as bad:
            prom.query('harness_test_requests_total{code="200"')
        assert "parse error" in str(bad.value) and bad.value.error_type == "bad_data"
        with pytest.raises(PrometheusError, match="parse error"):
            prom.query_range("sum(", end - 10, end, 1)
        with pytest.raises(PrometheusError, match="parse error"):
            prom.wait_for("rate(harness_test_requests_total[", bool, timeout_s=5)

    assert _gone(pid), f"prometheus pid {pid} still alive after stop()"
    assert not os.path.exists(data_dir)
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", prom.port)) != 0
    prom.stop()  # idempotent


def test_wait_for_scrapes_reports_a_down_target():
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    with PrometheusServer([closed], scrape_interval_s=0.5) as prom:
        # once Prometheus has tried the target, waiting for a good scrape must time out saying why
        wait_for(
            lambda: [t for t in prom.targets() if t.get("health") == "down"],
            60,
            what="the first failed scrape",
        )
        with pytest.raises(TimeoutError, match="health=down"):
            prom.wait_for_scrapes(n=1, timeout_s=1)
        assert prom.query_value(f'up{{instance="{closed}"}}') == 0
        pid = prom.pid
    assert _gone(pid)


def test_start_failure_carries_the_log_tail(exporter):
    prom = PrometheusServer([exporter.target], extra_scrape_configs=[{"job_name": "aspire"}])
    with pytest.raises(RuntimeError, match="(?s)exited with code.*found multiple scrape configs"):
        prom.start()
    assert prom.process is None and prom.dir is None
