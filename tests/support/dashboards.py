"""The PromQL expressions of the Grafana dashboard under cluster/grafana/, read from its JSON.

`dashboard_expressions()` gives them with Grafana's variables replaced by plain values, ready for
Prometheus's /api/v1/query (tests/integration/test_dashboard_promql.py, test_observability.py);
tests/unit/test_dashboards.py checks the dashboard itself with the other helpers here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "cluster" / "grafana"
DASHBOARD = GRAFANA / "aspire-version-rollout.json"

# Grafana variables -> values that make plain PromQL of the expressions, for a short test run.
SUBSTITUTIONS = {
    "__rate_interval": "30s",
    "__interval": "15s",
    "__range": "5m",
    "model": ".*",  # every use is a regex match: model=~"$model"
}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")


def load_dashboard() -> dict:
    with open(DASHBOARD) as f:
        return json.load(f)


def all_panels(dashboard: dict) -> list[dict]:
    """Every panel, rows included, with the panels of collapsed rows."""
    panels = []
    for panel in dashboard.get("panels", []):
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def raw_expressions(dashboard: dict | None = None) -> list[str]:
    dashboard = dashboard or load_dashboard()
    return [t["expr"] for p in all_panels(dashboard) for t in p.get("targets", [])]


def substitute(expr: str) -> str:
    def value(m: re.Match) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in SUBSTITUTIONS:
            raise KeyError(f"no substitution for Grafana variable ${name} in {expr!r}")
        return SUBSTITUTIONS[name]

    return _VARIABLE.sub(value, expr)


def dashboard_expressions() -> list[str]:
    """Every PromQL `expr` of the dashboard, Grafana variables replaced by plain values
    ($__rate_interval -> 30s, $model -> .*), ready for Prometheus's /api/v1/query."""
    return [substitute(e) for e in raw_expressions()]
