#!/usr/bin/env python3
"""Render a PNG of one model's version rollout from a real Prometheus's data.

    python cluster/grafana/render_rollout.py --prometheus http://127.0.0.1:9090 \
        --model half_plus_two --start 1767000000 --end 1767000600 --out docs/rollout.png

Two range queries through Prometheus's HTTP API (/api/v1/query_range):

* top panel: successful requests per second by version, stacked,
  `sum by (version) (rate(aspire_requests_total{model="NAME",code="OK",version!=""}[WINDOW]))`
  (requests that reached a version: status and list calls, which name none, are left out);
* bottom panel: a state timeline, one lane per version, coloured by the state whose
  `aspire_servable_state{model="NAME"}` is 1 (START, LOADING, AVAILABLE, UNLOADING, END);
* when the model had a progressive rollout (docs/progressive-delivery.md), a middle panel:
  the candidate's weight, `aspire_rollout_candidate_weight{model="NAME"}` (%), over the
  rollout's phases, the phase whose `aspire_rollout_phase{model="NAME"}` is 1 (shadow, step,
  gate, paused, promoted, rolled_back) shading the background.

`render(...)` is the same thing as a function; it returns what it drew (see `Rollout`). Needs
matplotlib (drawn with the Agg backend, no display). Only the standard library talks to Prometheus.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import ipaddress
import json
import math
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

STATES = ("START", "LOADING", "AVAILABLE", "UNLOADING", "END")
STATE_COLORS = {
    "START": "#8fb8de",
    "LOADING": "#f5a623",
    "AVAILABLE": "#2ca02c",
    "UNLOADING": "#9467bd",
    "END": "#7f7f7f",
}
UNKNOWN_STATE_COLOR = "#d62728"
PHASE_COLORS = {
    "waiting": "#dddddd",
    "shadow": "#c6dbef",
    "step": "#fdd0a2",
    "gate": "#fff3b0",
    "paused": "#dadaeb",
    "promoted": "#c7e9c0",
    "rolled_back": "#fcbba1",
}
MAX_POINTS = 11000  # Prometheus refuses range queries with more points per series than this


class PrometheusQueryError(RuntimeError):
    """Prometheus answered with an error (its own message), or could not be reached."""


@dataclass
class Rollout:
    """What render() drew."""

    out: str
    step: float
    rate_window: str
    times: list[float]
    # version -> requests/s at each of `times` (0 where Prometheus had no sample)
    rates: dict[str, list[float]] = field(default_factory=dict)
    # version -> [(start, end, state), ...], contiguous runs of one state, in time order
    segments: dict[str, list[tuple[float, float, str]]] = field(default_factory=dict)
    # the rollout's candidate -> its weight (%) at each of `times`; runs of the rollout's phase
    weights: dict[str, list[float]] = field(default_factory=dict)
    phases: list[tuple[float, float, str]] = field(default_factory=list)


# ------------------------------------------------------------------------------------ queries


def _is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def query_range(
    prometheus_url: str, expr: str, start: float, end: float, step: float, timeout_s: float = 30.0
) -> list[dict]:
    """`data.result` of /api/v1/query_range: [{"metric": {...}, "values": [[ts, "v"], ...]}]."""
    url = prometheus_url.rstrip("/") + "/api/v1/query_range"
    body = urllib.parse.urlencode(
        {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
    ).encode()
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
    )
    # A loopback Prometheus is never reached through an HTTP(S)_PROXY from the environment.
    handlers = [urllib.request.ProxyHandler({})] if _is_loopback(url) else []
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(request, timeout=timeout_s) as response:
            payload = response.read()
    except urllib.error.HTTPError as e:  # 400/422/503 still carry Prometheus's JSON error
        payload = e.read()
        if not payload:
            raise PrometheusQueryError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise PrometheusQueryError(f"cannot reach Prometheus at {prometheus_url}: {e}") from None
    try:
        answer = json.loads(payload)
    except ValueError:
        raise PrometheusQueryError(f"{url}: not JSON: {payload[:300]!r}") from None
    if answer.get("status") != "success":
        raise PrometheusQueryError(f"{expr!r}: {answer.get('errorType')}: {answer.get('error')}")
    data = answer.get("data") or {}
    if data.get("resultType") != "matrix":
        raise PrometheusQueryError(f"{expr!r}: expected a matrix, got {data.get('resultType')}")
    return data.get("result") or []


def _label_value(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _duration(seconds: float) -> str:
    ms = max(1, int(math.ceil(seconds * 1000)))
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def requests_expr(model: str, rate_window: str) -> str:
    return (
        f'sum by (version) (rate(aspire_requests_total{{model="{_label_value(model)}",'
        f'code="OK",version!=""}}[{rate_window}]))'
    )


def state_expr(model: str) -> str:
    return f'aspire_servable_state{{model="{_label_value(model)}"}} == 1'


def weight_expr(model: str) -> str:
    return f'aspire_rollout_candidate_weight{{model="{_label_value(model)}"}}'


def phase_expr(model: str) -> str:
    return f'aspire_rollout_phase{{model="{_label_value(model)}"}} == 1'


def _version_key(version: str):
    return (0, int(version), "") if version.isdigit() else (1, 0, version)


def _version_label(version: str) -> str:
    return f"v{version}" if version else "(no version)"


# ------------------------------------------------------------------------------------ shaping


def _grid(start: float, end: float, step: float) -> list[float]:
    n = int(math.floor((end - start) / step + 1e-9)) + 1
    return [start + i * step for i in range(n)]


def _index(t: float, start: float, step: float) -> int:
    return int(round((t - start) / step))


def _rates(
    result: list[dict], times: list[float], start: float, step: float, lane: str = "version"
) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {}
    for series in result:
        version = series["metric"].get(lane, "")
        values = rates.setdefault(version, [0.0] * len(times))
        for t, v in series["values"]:
            i = _index(float(t), start, step)
            if 0 <= i < len(times):
                x = float(v)
                values[i] += x if math.isfinite(x) else 0.0
    return rates


def _segments(
    result: list[dict],
    times: list[float],
    start: float,
    step: float,
    lane_label: str = "version",
    value_label: str = "state",
) -> dict[str, list[tuple[float, float, str]]]:
    """Per version (per `lane_label`), the state (the `value_label`) at each step (None where
    no state was 1), merged into runs."""
    lanes: dict[str, list[str | None]] = {}
    for series in result:
        version = series["metric"].get(lane_label, "")
        state = series["metric"].get(value_label, "?")
        lane = lanes.setdefault(version, [None] * len(times))
        for t, _ in series["values"]:
            i = _index(float(t), start, step)
            if 0 <= i < len(times):
                # Two states at once can only be a scrape caught mid-transition: keep the later one.
                current = lane[i]
                if current is None or _state_rank(state) > _state_rank(current):
                    lane[i] = state
    segments: dict[str, list[tuple[float, float, str]]] = {}
    for version, lane in lanes.items():
        runs: list[tuple[float, float, str]] = []
        run_start, run_state = 0, None  # run_start is read once a run (a state) has begun
        for i, state in enumerate(lane + [None]):
            if state != run_state:
                if run_state is not None:
                    runs.append((times[run_start], times[i - 1] + step, run_state))
                run_start, run_state = i, state
        segments[version] = runs
    return segments


def _state_rank(state: str) -> int:
    return STATES.index(state) if state in STATES else -1


# ------------------------------------------------------------------------------------ drawing


def _default_step(start: float, end: float) -> float:
    return max(1.0, (end - start) / 600.0)


def render(
    prometheus_url: str,
    model: str,
    start: float,
    end: float,
    out: str,
    step: float | None = None,
    rate_window: str | None = None,
    title: str | None = None,
) -> Rollout:
    """Query Prometheus for `model`'s rollout between unix times `start` and `end` and write a
    two-panel PNG to `out`. `step` (seconds) defaults to (end-start)/600, at least 1 s;
    `rate_window` (a PromQL duration) defaults to max(4 steps, 20 s), four scrapes at the 5 s
    interval of cluster/prometheus/*.yml. Raises PrometheusQueryError on a Prometheus error."""
    start, end = float(start), float(end)
    if not end > start:
        raise ValueError(f"end ({end}) must be after start ({start})")
    step = float(step) if step else _default_step(start, end)
    if step <= 0:
        raise ValueError(f"step must be positive, got {step}")
    if (end - start) / step + 1 > MAX_POINTS:
        raise ValueError(
            f"{(end - start) / step + 1:.0f} points per series: more than "
            f"Prometheus's {MAX_POINTS}; use a larger step"
        )
    rate_window = rate_window or _duration(max(4 * step, 20.0))

    times = _grid(start, end, step)
    rates = _rates(
        query_range(prometheus_url, requests_expr(model, rate_window), start, end, step),
        times,
        start,
        step,
    )
    segments = _segments(
        query_range(prometheus_url, state_expr(model), start, end, step), times, start, step
    )
    weights = _rates(
        query_range(prometheus_url, weight_expr(model), start, end, step),
        times,
        start,
        step,
        lane="candidate",
    )
    phases = _segments(
        query_range(prometheus_url, phase_expr(model), start, end, step),
        times,
        start,
        step,
        lane_label="model",
        value_label="phase",
    ).get(model, [])
    rollout = Rollout(
        out=out,
        step=step,
        rate_window=rate_window,
        times=times,
        rates=rates,
        segments=segments,
        weights=weights,
        phases=phases,
    )
    _draw(rollout, model, start, end, title)
    return rollout


def _draw(rollout: Rollout, model: str, start: float, end: float, title: str | None) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    utc = _dt.timezone.utc
    to_dt = lambda t: _dt.datetime.fromtimestamp(t, utc)  # noqa: E731
    to_num = lambda t: mdates.date2num(to_dt(t))  # noqa: E731

    versions = sorted(set(rollout.rates) | set(rollout.segments), key=_version_key)
    palette = plt.get_cmap("tab10")
    version_color = {v: palette(i % 10) for i, v in enumerate(versions)}

    lanes_ratio = max(1.2, 0.45 * max(1, len(versions)))
    if rollout.phases or rollout.weights:
        fig, (top, middle, bottom) = plt.subplots(
            3,
            1,
            figsize=(11, 8.5),
            sharex=True,
            dpi=110,
            gridspec_kw={"height_ratios": [3, 1.6, lanes_ratio]},
        )
        _draw_rollout(middle, rollout, to_dt, Patch)
    else:
        fig, (top, bottom) = plt.subplots(
            2,
            1,
            figsize=(11, 6.5),
            sharex=True,
            dpi=110,
            gridspec_kw={"height_ratios": [3, lanes_ratio]},
        )
    fig.suptitle(
        title
        or f"{model}: version rollout "
        f"({to_dt(start):%Y-%m-%d %H:%M:%S} to {to_dt(end):%H:%M:%S} UTC)"
    )

    # top: stacked requests/s by version
    x = [to_dt(t) for t in rollout.times]
    stacked = [v for v in versions if v in rollout.rates]
    if stacked:
        top.stackplot(
            x,
            *[rollout.rates[v] for v in stacked],
            labels=[_version_label(v) for v in stacked],
            colors=[version_color[v] for v in stacked],
            alpha=0.85,
            linewidth=0.5,
        )
        top.legend(loc="upper left", title="version", fontsize=8, title_fontsize=8)
    else:
        top.text(
            0.5,
            0.5,
            "no aspire_requests_total samples",
            transform=top.transAxes,
            ha="center",
            va="center",
            color="0.4",
        )
    top.set_ylabel("requests/s (code OK)")
    top.set_ylim(bottom=0)
    top.grid(True, alpha=0.3)
    top.set_title(f"requests/s by version, rate over {rollout.rate_window}", fontsize=9, loc="left")

    # bottom: one lane per version, coloured by state
    lanes = [v for v in versions]
    seen_states: list[str] = []
    for lane, version in enumerate(lanes):
        for seg_start, seg_end, state in rollout.segments.get(version, []):
            color = STATE_COLORS.get(state, UNKNOWN_STATE_COLOR)
            bottom.broken_barh(
                [(to_num(seg_start), to_num(seg_end) - to_num(seg_start))],
                (lane - 0.4, 0.8),
                facecolors=color,
                edgecolors="white",
                linewidth=0.5,
            )
            if state not in seen_states:
                seen_states.append(state)
    if not any(rollout.segments.values()):
        bottom.text(
            0.5,
            0.5,
            "no aspire_servable_state samples",
            transform=bottom.transAxes,
            ha="center",
            va="center",
            color="0.4",
        )
    bottom.set_yticks(range(len(lanes)))
    bottom.set_yticklabels([_version_label(v) for v in lanes])
    bottom.set_ylim(-0.6, max(1, len(lanes)) - 0.4)
    bottom.invert_yaxis()
    bottom.set_ylabel("servable state")
    bottom.grid(True, axis="x", alpha=0.3)
    legend_states = [s for s in STATES if s in seen_states] + [
        s for s in seen_states if s not in STATES
    ]
    if legend_states:
        bottom.legend(
            handles=[
                Patch(facecolor=STATE_COLORS.get(s, UNKNOWN_STATE_COLOR), label=s)
                for s in legend_states
            ],
            loc="upper center",
            bbox_to_anchor=(0.5, -0.28),
            ncol=len(legend_states),
            fontsize=8,
            frameon=False,
        )

    bottom.set_xlim(to_dt(start), to_dt(end))
    locator = mdates.AutoDateLocator(tz=utc)
    bottom.xaxis.set_major_locator(locator)
    bottom.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S", tz=utc))
    bottom.set_xlabel("time (UTC)")

    fig.tight_layout()
    directory = os.path.dirname(os.path.abspath(rollout.out))
    os.makedirs(directory, exist_ok=True)
    fig.savefig(rollout.out, format="png")
    plt.close(fig)


def _draw_rollout(axis, rollout: Rollout, to_dt, patch) -> None:
    """The candidate's weight over the rollout's phases (the phase shades the background)."""
    seen: list[str] = []
    for run_start, run_end, phase in rollout.phases:
        axis.axvspan(
            to_dt(run_start), to_dt(run_end), color=PHASE_COLORS.get(phase, "#eeeeee"), lw=0
        )
        if phase not in seen:
            seen.append(phase)
    x = [to_dt(t) for t in rollout.times]
    for candidate, weights in sorted(rollout.weights.items()):
        axis.step(
            x, weights, where="post", color="#d62728", lw=1.5, label=f"candidate v{candidate}"
        )
    axis.set_ylim(0, 105)
    axis.set_ylabel("candidate %")
    axis.grid(True, alpha=0.3)
    axis.set_title("rollout: the candidate's weight over its phases", fontsize=9, loc="left")
    handles = [patch(facecolor=PHASE_COLORS.get(p, "#eeeeee"), label=p) for p in seen]
    lines, labels = axis.get_legend_handles_labels()
    axis.legend(
        handles=lines + handles,
        labels=labels + seen,
        loc="upper left",
        fontsize=7,
        ncol=len(handles) + len(lines),
    )


# ---------------------------------------------------------------------------------------- CLI


def _time_arg(text: str) -> float:
    """Unix seconds, or a negative number: that many seconds before now."""
    value = float(text)
    return time.time() + value if value < 0 else value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--prometheus",
        default="http://127.0.0.1:9090",
        help="Prometheus base URL (default %(default)s)",
    )
    parser.add_argument("--model", required=True, help="model name (the `model` label)")
    parser.add_argument(
        "--start",
        type=_time_arg,
        default=None,
        help="unix seconds, or negative seconds relative to now (default: 15 minutes before --end)",
    )
    parser.add_argument(
        "--end",
        type=_time_arg,
        default=None,
        help="unix seconds, or negative seconds relative to now (default: now)",
    )
    parser.add_argument("--out", default="rollout.png", help="PNG to write (default %(default)s)")
    parser.add_argument(
        "--step",
        type=float,
        default=None,
        help="query resolution in seconds (default: range/600, at least 1)",
    )
    parser.add_argument(
        "--rate-window",
        default=None,
        help="rate() window, a PromQL duration (default: max(4 steps, 20s))",
    )
    parser.add_argument("--title", default=None, help="figure title")
    args = parser.parse_args(argv)
    end = args.end if args.end is not None else time.time()
    start = args.start if args.start is not None else end - 900
    try:
        rollout = render(
            args.prometheus,
            args.model,
            start,
            end,
            args.out,
            step=args.step,
            rate_window=args.rate_window,
            title=args.title,
        )
    except (PrometheusQueryError, ValueError) as e:
        print(f"render_rollout: {e}", file=sys.stderr)
        return 1
    versions = sorted(set(rollout.rates) | set(rollout.segments), key=_version_key)
    print(
        f"wrote {rollout.out}: versions {', '.join(map(_version_label, versions)) or 'none'}, "
        f"step {rollout.step:g}s, rate window {rollout.rate_window}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
