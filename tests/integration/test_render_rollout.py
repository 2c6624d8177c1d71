"""cluster/grafana/render_rollout.py against a real Prometheus.

A tiny in-process exporter plays an Aspire rollout of model "m" from version 1 to version 2 over
about 10 s: aspire_servable_state moves v2 through START, LOADING, AVAILABLE and v1 through
UNLOADING to END, while aspire_requests_total shifts the traffic from v1 to v2. A real Prometheus
scrapes it every 0.5 s; render() then queries it and must draw a two-panel PNG that shows both
versions and those states.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import pytest

from tests.support.exporter import TextExporter
from tests.support.prometheus import PrometheusServer

pytest.importorskip("matplotlib")
# Prometheus is installed (on first use) in setup, outside the time limit (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("prometheus_binary")

SCRIPT = Path(__file__).resolve().parents[2] / "cluster" / "grafana" / "render_rollout.py"
RATE = 40.0  # requests/s, all versions together
DURATION_S = 10.0


def load_script():
    """cluster/grafana is not a package: load the script by path (registered in sys.modules
    first, as dataclasses needs)."""
    if "render_rollout" in sys.modules:
        return sys.modules["render_rollout"]
    spec = importlib.util.spec_from_file_location("render_rollout", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["render_rollout"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["render_rollout"]
        raise
    return module


def v2_share_integral(t: float) -> float:
    """Integral over [0, t] of v2's traffic share: 0 until 4 s, a ramp to 1 at 7 s, then 1."""
    if t < 4:
        return 0.0
    if t < 7:
        return (t - 4) ** 2 / 6
    return 1.5 + (t - 7)


def states(t: float | None) -> dict[str, str]:
    """Version -> current state at scenario time t (None: not started, v1 serving alone)."""
    if t is None:
        return {"1": "AVAILABLE"}
    v1 = "AVAILABLE" if t < 8 else "UNLOADING" if t < 9 else "END"
    v2 = "START" if t < 1 else "LOADING" if t < 3 else "AVAILABLE"
    return {"1": v1, "2": v2}


def rollout_phase(t: float | None) -> tuple[str, float]:
    """The progressive rollout's phase and the candidate's weight (%) at scenario time t."""
    if t is None or t < 3:
        return "waiting", 0.0
    if t < 4:
        return "shadow", 0.0
    if t < 7:
        return "step", 50.0
    return "promoted", 100.0


class RolloutExporter(TextExporter):
    def __init__(self):
        self.created, self.t0 = time.time(), None
        super().__init__(lambda _scrapes: self.exposition())

    def start(self):
        self.t0 = time.time()

    def exposition(self) -> str:
        now = time.time()
        t = None if self.t0 is None else now - self.t0
        elapsed = 0.0 if t is None else t
        # v1 serves all of RATE from the exporter's start until the rollout shifts traffic to v2
        v2 = RATE * v2_share_integral(elapsed)
        v1 = 1000 + RATE * (now - self.created) - v2
        # Each sample carries the time its value was computed, so rate() divides by the time the
        # counter really moved, not by scrape times that a loaded machine delays unevenly.
        stamp = int(now * 1000)
        lines = ["# TYPE aspire_requests_total counter"]
        for version, value in (("1", v1), ("2", v2)):
            lines.append(
                f'aspire_requests_total{{model="m",version="{version}",api="predict",'
                f'protocol="rest",code="OK"}} {value:.3f} {stamp}'
            )
        # errors are not drawn (code="OK" only)
        lines.append(
            'aspire_requests_total{model="m",version="",api="predict",protocol="rest",'
            f'code="NOT_FOUND"}} {int(5 * elapsed)}'
        )
        lines.append("# TYPE aspire_servable_state gauge")
        for version, now in states(t).items():
            for state in ("START", "LOADING", "AVAILABLE", "UNLOADING", "END"):
                lines.append(
                    f'aspire_servable_state{{model="m",version="{version}",'
                    f'state="{state}"}} {1 if state == now else 0}'
                )
        phase, weight = rollout_phase(t)
        lines.append("# TYPE aspire_rollout_phase gauge")
        for name in ("waiting", "shadow", "step", "gate", "paused", "promoted", "rolled_back"):
            lines.append(f'aspire_rollout_phase{{model="m",phase="{name}"}} {int(name == phase)}')
        lines.append("# TYPE aspire_rollout_candidate_weight gauge")
        lines.append(f'aspire_rollout_candidate_weight{{model="m",candidate="2"}} {weight:g}')
        return "\n".join(lines) + "\n"


@pytest.fixture
def exporter():
    e = RolloutExporter()
    yield e
    e.close()


def test_render_rollout_png(exporter, tmp_path):
    render_rollout = load_script()
    out = tmp_path / "docs" / "rollout.png"
    with PrometheusServer(
        [exporter.target], scrape_interval_s=0.5, metrics_path="/monitoring/prometheus/metrics"
    ) as prom:
        prom.wait_for_scrapes(n=9, timeout_s=30)  # 4 s of samples: full rate windows at `start`
        start = time.time() - 1.0
        exporter.start()
        # the whole rollout in Prometheus: a scrape taken at scenario time DURATION_S or later
        # (v1 END since 9 s, v1's counter flat for a full rate window since 7 s)
        rollout_over = exporter.t0 + DURATION_S
        try:
            prom.wait_for(
                'max(timestamp(aspire_servable_state{model="m"}))',
                lambda r: bool(r) and float(r[0]["value"][1]) >= rollout_over,
                timeout_s=DURATION_S + 30.0,
            )
        except TimeoutError as exc:
            pytest.fail(
                f"Prometheus had no scrape of the exporter from after the {DURATION_S:g} s "
                f"rollout ended, {DURATION_S + 30.0:g} s after it started: {exc}"
            )
        end = time.time()
        rollout = render_rollout.render(
            prom.url, "m", start, end, str(out), step=0.25, rate_window="2s"
        )

    assert out.exists() and out.stat().st_size > 20_000
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    image = matplotlib.image.imread(str(out))
    height, width = image.shape[:2]
    assert width >= 1000 and height >= 600
    assert image[..., :3].std() > 0.05  # not a blank canvas

    assert set(rollout.rates) == {"1", "2"}  # OK requests only: no "" (NOT_FOUND) series
    assert max(rollout.rates["1"]) == pytest.approx(RATE, rel=0.25)
    assert max(rollout.rates["2"]) == pytest.approx(RATE, rel=0.25)
    assert rollout.rates["2"][0] == 0 and rollout.rates["1"][-1] < 5
    assert rollout.rates["1"][0] == pytest.approx(RATE, rel=0.25)  # v1 served alone before
    seen = {v: [state for _, _, state in runs] for v, runs in rollout.segments.items()}
    assert seen["1"][0] == "AVAILABLE" and seen["1"][-2:] == ["UNLOADING", "END"]
    assert seen["2"][-1] == "AVAILABLE" and "LOADING" in seen["2"]
    phases = [phase for _, _, phase in rollout.phases]
    assert phases[-3:] == ["shadow", "step", "promoted"], phases
    assert max(rollout.weights["2"]) == 100 and rollout.weights["2"][0] == 0
    for runs in [*rollout.segments.values(), rollout.phases]:
        assert all(a < b for a, b, _ in runs)
        assert all(prev[1] <= nxt[0] + 1e-6 for prev, nxt in zip(runs, runs[1:], strict=False))


def test_cli_reports_prometheus_errors(tmp_path, capsys):
    render_rollout = load_script()
    with PrometheusServer([], scrape_interval_s=1.0) as prom:
        now = time.time()
        # 20 points per series at most would be fine; this step makes far too many
        rc = render_rollout.main(
            [
                "--prometheus",
                prom.url,
                "--model",
                "m",
                "--start",
                str(now - 86400),
                "--end",
                str(now),
                "--step",
                "0.001",
                "--out",
                str(tmp_path / "x.png"),
            ]
        )
        assert rc == 1 and "use a larger step" in capsys.readouterr().err
        with pytest.raises(render_rollout.PrometheusQueryError, match="parse error"):
            render_rollout.render(
                prom.url, "m", now - 60, now, str(tmp_path / "x.png"), rate_window="2x"
            )
        # no data: still a PNG, with both panels saying so
        rollout = render_rollout.render(
            prom.url, "nothing", now - 60, now, str(tmp_path / "empty.png")
        )
        assert rollout.rates == {} and rollout.segments == {} and rollout.phases == []
        assert (tmp_path / "empty.png").stat().st_size > 5_000
    assert not (tmp_path / "x.png").exists()
