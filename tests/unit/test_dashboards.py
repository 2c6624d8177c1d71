"""The Grafana dashboard, Grafana provisioning and Prometheus configs under cluster/.

Static checks only; tests/integration/test_dashboard_promql.py runs every dashboard expression
(`dashboard_expressions()`, from tests/support/dashboards.py) through a real Prometheus.
`promtool check config` runs on the Prometheus configs where Debian's promtool is installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from core import metrics
from tests.support.dashboards import (
    GRAFANA,
    ROOT,
    all_panels,
    dashboard_expressions,
    load_dashboard,
    raw_expressions,
    substitute,
)

PROMETHEUS = ROOT / "cluster" / "prometheus"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
METRICS_PATH = "/monitoring/prometheus/metrics"


def yaml_files() -> list[Path]:
    return sorted(
        p for d in (GRAFANA, PROMETHEUS) for p in d.rglob("*") if p.suffix in (".yml", ".yaml")
    )


def load_yaml(path: Path):
    with open(path) as f:
        return yaml.safe_load(f)


def scrape_jobs(path: Path) -> dict[str, dict]:
    return {job["job_name"]: job for job in load_yaml(path)["scrape_configs"]}


# ----------------------------------------------------------------------------------- dashboard


def test_dashboard_parses_with_title_uid_and_schema():
    d = load_dashboard()
    assert d["title"] == "Aspire version rollout"
    assert d["uid"] == "aspire-version-rollout"
    assert 36 <= d["schemaVersion"] <= 41
    assert d.get("id") is None  # importable into any Grafana


def test_template_variables():
    variables = {v["name"]: v for v in load_dashboard()["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    model = variables["model"]
    assert model["type"] == "query"
    assert model["datasource"] == DATASOURCE
    query = model["query"]["query"] if isinstance(model["query"], dict) else model["query"]
    assert query == "label_values(aspire_servable_state, model)"
    assert model["multi"] is True and model["includeAll"] is True
    assert model.get("allValue") == ".*"  # All also covers models that left the label index


def test_every_panel_has_datasource_gridpos_and_unique_id():
    panels = all_panels(load_dashboard())
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    for p in panels:
        grid = p["gridPos"]
        assert {"h", "w", "x", "y"} <= set(grid), p["title"]
        assert grid["x"] + grid["w"] <= 24, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"] == DATASOURCE, p["title"]
        assert p["targets"], f"panel {p['title']!r} has no targets"
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == DATASOURCE, p["title"]
            assert isinstance(t.get("expr"), str) and t["expr"].strip(), p["title"]


def test_panels_do_not_overlap():
    cells = {}
    for p in all_panels(load_dashboard()):
        g = p["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]


def test_expected_panels_and_metrics():
    d = load_dashboard()
    by_title = {p["title"]: p for p in all_panels(d)}
    types = {p["type"] for p in by_title.values()}
    assert {"row", "timeseries", "state-timeline"} <= types
    assert "TF Serving metrics" in by_title and by_title["TF Serving metrics"]["type"] == "row"
    state = [p for p in by_title.values() if p["type"] == "state-timeline"]
    assert [p["title"] for p in state] == ["Servable state by version", "Rollout phase"]

    def mapped(panel) -> set[str]:
        return {
            m["text"]
            for mapping in panel["fieldConfig"]["defaults"]["mappings"]
            for m in mapping["options"].values()
        }

    assert "aspire_servable_state" in state[0]["targets"][0]["expr"]
    assert mapped(state[0]) == {"START", "LOADING", "AVAILABLE", "UNLOADING", "END"}
    assert "aspire_rollout_phase" in state[1]["targets"][0]["expr"]
    assert mapped(state[1]) == set(metrics.ROLLOUT_PHASES)
    assert by_title["Progressive delivery"]["type"] == "row"

    exprs = "\n".join(raw_expressions(d))
    for metric in [
        "aspire_requests_total",
        "aspire_request_latency_seconds_bucket",
        "aspire_servable_state",
        "aspire_load_attempts_total",
        "aspire_load_duration_seconds_bucket",
        "aspire_admission_refusals_total",
        "aspire_gpu_memory_total_bytes",
        "aspire_gpu_memory_reserved_bytes",
        "aspire_servable_vram_reserved_bytes",
        "aspire_host_ram_total_bytes",
        "aspire_host_ram_reserved_bytes",
        "aspire_traffic_weight",
        "aspire_rollout_phase",
        "aspire_rollout_candidate_weight",
        "aspire_rollout_shadow_requests_total",
        "aspire_rollout_divergence",
        "aspire_rollout_judgements_total",
        ":tensorflow:serving:request_count",
        ":tensorflow:serving:request_latency_bucket",
    ]:
        assert metric in exprs, metric
    assert 'code!="OK"' in exprs
    assert "histogram_quantile(0.5, sum by (le, model, version)" in exprs
    assert "histogram_quantile(0.99, sum by (le, model, version)" in exprs
    for e in raw_expressions(d):
        if "rate(" in e:
            assert "[$__rate_interval]" in e and not re.search(r"\[\d+[smh]\]", e), e


def test_dashboard_expressions_substitutes_every_variable():
    exprs = dashboard_expressions()
    assert len(exprs) == len(raw_expressions()) >= 15
    for e in exprs:
        assert "$" not in e and "[[" not in e, e
    assert any("[30s]" in e for e in exprs)
    assert any('model=~".*"' in e for e in exprs)
    assert (
        substitute('rate(x{model=~"${model}"}[${__rate_interval}])') == 'rate(x{model=~".*"}[30s])'
    )
    with pytest.raises(KeyError):
        substitute('x{a="$unknown"}')


# ---------------------------------------------------------------------------- YAML and configs


def test_every_yaml_file_parses():
    files = yaml_files()
    names = {str(p.relative_to(ROOT)) for p in files}
    assert {
        "cluster/grafana/provisioning/datasources/aspire.yaml",
        "cluster/grafana/provisioning/dashboards/aspire.yaml",
        "cluster/prometheus/prometheus.yml",
        "cluster/prometheus/prometheus-ray-cluster.yml",
    } <= names
    for path in files:
        assert isinstance(load_yaml(path), dict), path


def test_grafana_provisioning():
    ds = load_yaml(GRAFANA / "provisioning" / "datasources" / "aspire.yaml")
    assert ds["apiVersion"] == 1
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["uid"]
    assert source["url"] == "http://localhost:9090"
    assert source["jsonData"]["timeInterval"] == "5s"  # = scrape_interval of the Prometheus configs

    dash = load_yaml(GRAFANA / "provisioning" / "dashboards" / "aspire.yaml")
    assert dash["apiVersion"] == 1
    (provider,) = dash["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards/aspire"


def test_single_node_prometheus_config():
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    assert config["global"]["scrape_interval"] == "5s"
    jobs = scrape_jobs(PROMETHEUS / "prometheus.yml")
    assert set(jobs) == {"aspire"}
    aspire = jobs["aspire"]
    assert aspire["metrics_path"] == METRICS_PATH
    assert [t for sc in aspire["static_configs"] for t in sc["targets"]] == ["127.0.0.1:8501"]


def test_ray_cluster_prometheus_config():
    jobs = scrape_jobs(PROMETHEUS / "prometheus-ray-cluster.yml")
    assert set(jobs) == {"aspire", "ray"}
    aspire = jobs["aspire"]
    assert aspire["metrics_path"] == METRICS_PATH
    # exactly one target: the counts are already summed over the cluster by Aspire's manager
    assert [t for sc in aspire["static_configs"] for t in sc["targets"]] == ["HEAD_IP:8501"]
    ray = jobs["ray"]
    assert "metrics_path" not in ray  # Ray's exporters serve /metrics
    files = [f for sd in ray["file_sd_configs"] for f in sd["files"]]
    assert files == ["/tmp/ray/prom_metrics_service_discovery.json"]


@pytest.mark.parametrize("name", ["prometheus.yml", "prometheus-ray-cluster.yml"])
@pytest.mark.usefixtures("prometheus_binary")  # installed in setup, outside the time limit
def test_promtool_check_config(name):
    # promtool ships in Debian's `prometheus` package, installed if missing (whatever ran first)
    from tests.support.prometheus import ensure_prometheus

    binary = ensure_prometheus()
    promtool = shutil.which("promtool", path=os.path.dirname(binary)) or shutil.which("promtool")
    assert promtool, f"no promtool beside {binary} or on PATH"
    done = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS / name)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr
