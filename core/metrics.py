"""Aspire's metrics core (pure Python, no Ray): record per process, add up centrally, render.

Data flow
---------
Every process that sees requests (router replicas, model replicas) records into one process-local
`Recorder` (`inc` for counters, `observe` for histograms: a dict update under one lock). About once
a second it ships `recorder.drain()` to the single `MetricsStore` in the manager actor, which
`apply()`s the deltas; a shipment that failed is sent again, and the store applies each once
(`Shipper`, core/metrics_shipper.py), so nothing is lost or counted twice while the manager
restarts.
Scrapes render the store, so counts are exact across processes. Gauges that describe state
(servable states, memory, traffic weights) are never recorded: `render_aspire(state)` takes them
from the caller at scrape time.

Two pages
---------
* `render_tfserving()`: the `:tensorflow:...` families as TF Serving's
  util/prometheus_exporter.cc writes them: `# TYPE` lines only (no `# HELP`, no timestamps),
  families sorted by name, series sorted by label values, counters as integers, histogram
  `_bucket{...,le="..."}` cumulative then `_sum{...}` and `_count{...}`, the last bucket
  `le="+Inf"`, label values escaping `\\` and `"` (and, unlike TF, newline as `\\n`, which would
  otherwise break the page), lines joined by "\\n" plus a trailing "\\n".
  `le` bounds: TF writes them with `absl::StrCat(double)`, i.e. printf "%.6g" (absl
  SixDigitsToBuffer), so Exponential(10, 1.8, 33) renders as 10, 18, 32.4, 58.32, 104.976,
  188.957, ..., 708235, 1.27482e+06, ..., 1.47476e+09; `le_tfserving` does exactly that.
  Deliberate deviation: TF also prints `_sum` with "%.6g" (1.23457e+06), which stops
  rate(_sum) from moving once the sum passes 10^6 us; we print every sample value in full
  (`format_value`: integral values as integers, others as Python's round-tripping repr).
  Bucketing follows TF too: tensorflow/core/lib/histogram puts a value into the bucket of the
  first bound strictly greater than it (std::upper_bound), so a value equal to a bound counts in
  the next bucket.
* `render_aspire(state)`: the `aspire_*` families in Prometheus conventions: `# HELP` and `# TYPE`
  per family, families sorted by name, `le` as `format_value` (0.0005, 1, 2.5), bucketing by
  Prometheus' `value <= le`.
The families never share a name, so the two pages may be served concatenated.

Series that never got a sample are not rendered; a family without series is not rendered at all.
An empty page is "\\n", as TF Serving's would be.

Cardinality
-----------
Callers label requests for models the server does not serve with `UNKNOWN_MODEL` (use
`model_label`), so 10,000 distinct unknown names add one series, not 10,000. As a backstop the
store keeps at most `MAX_SERIES_PER_METRIC` label sets per metric; any further new label set is
folded into one series whose label values are all `OVERFLOW` ("_overflow"), and each folded delta
entry increments `aspire_metrics_dropped_series_total{metric=<name>}`.
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from typing import Callable, Collection, Iterable

Labels = tuple[tuple[str, str], ...]
"""Label pairs in the metric's label order (see `LABEL_NAMES`); build them with `labels_for`."""

UNKNOWN_MODEL = "_unknown"
OVERFLOW = "_overflow"
MAX_SERIES_PER_METRIC = 10000

# --- TF Serving families (names exactly as prometheus_exporter.cc exports them) ----------------
TFS_REQUEST_COUNT = ":tensorflow:serving:request_count"
TFS_REQUEST_LATENCY = ":tensorflow:serving:request_latency"
TFS_RUNTIME_LATENCY = ":tensorflow:serving:runtime_latency"
TFS_MODEL_WARMUP_LATENCY = ":tensorflow:serving:model_warmup_latency"
TFS_MODEL_WARMUP_RECORDS_READ = ":tensorflow:serving:model_warmup_records_read"
TF_LOAD_ATTEMPT_COUNT = ":tensorflow:cc:saved_model:load_attempt_count"
TF_LOAD_LATENCY = ":tensorflow:cc:saved_model:load_latency"

# --- Aspire families ----------------------------------------------------------------------------
ASPIRE_REQUESTS = "aspire_requests_total"
ASPIRE_REQUEST_LATENCY = "aspire_request_latency_seconds"
ASPIRE_LOAD_ATTEMPTS = "aspire_load_attempts_total"
ASPIRE_LOAD_DURATION = "aspire_load_duration_seconds"
ASPIRE_ADMISSION_REFUSALS = "aspire_admission_refusals_total"
ASPIRE_BATCH_TASKS = "aspire_batch_tasks"
ASPIRE_DROPPED_SERIES = "aspire_metrics_dropped_series_total"
ASPIRE_SERVABLE_STATE = "aspire_servable_state"
ASPIRE_GPU_MEMORY_TOTAL = "aspire_gpu_memory_total_bytes"
ASPIRE_GPU_MEMORY_RESERVED = "aspire_gpu_memory_reserved_bytes"
ASPIRE_SERVABLE_VRAM_RESERVED = "aspire_servable_vram_reserved_bytes"
ASPIRE_HOST_RAM_TOTAL = "aspire_host_ram_total_bytes"
ASPIRE_HOST_RAM_RESERVED = "aspire_host_ram_reserved_bytes"
ASPIRE_TRAFFIC_WEIGHT = "aspire_traffic_weight"
ASPIRE_CAPACITY_WAIT = "aspire_capacity_wait_seconds"
ASPIRE_ROLLOUT_PHASE = "aspire_rollout_phase"
ASPIRE_ROLLOUT_WEIGHT = "aspire_rollout_candidate_weight"
ASPIRE_ROLLOUT_DIVERGENCE = "aspire_rollout_divergence"
ASPIRE_ROLLOUT_JUDGEMENTS = "aspire_rollout_judgements_total"
ASPIRE_SHADOW_REQUESTS = "aspire_rollout_shadow_requests_total"
ASPIRE_EXPERIMENT_REQUESTS = "aspire_experiment_requests_total"
ROLLOUT_PHASES = ("waiting", "shadow", "step", "gate", "paused", "promoted", "rolled_back")

SERVABLE_STATES = ("START", "LOADING", "AVAILABLE", "UNLOADING", "END")


def _exponential(scale: float, growth: float, count: int) -> tuple[float, ...]:
    """tsl::monitoring::Buckets::Exponential's finite bounds (repeated multiplication, as TF)."""
    bounds, bound = [], float(scale)
    for _ in range(count):
        bounds.append(bound)
        bound *= growth
    return tuple(bounds)


TF_LATENCY_BUCKETS = _exponential(10, 1.8, 33)  # microseconds
ASPIRE_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
ASPIRE_LOAD_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)

# Finite upper bounds of every histogram (the +Inf bucket is implicit); observe() of a name that
# is not here raises KeyError.
HISTOGRAM_BUCKETS: dict[str, tuple[float, ...]] = {
    TFS_REQUEST_LATENCY: TF_LATENCY_BUCKETS,
    TFS_RUNTIME_LATENCY: TF_LATENCY_BUCKETS,
    TFS_MODEL_WARMUP_LATENCY: TF_LATENCY_BUCKETS,
    ASPIRE_REQUEST_LATENCY: ASPIRE_LATENCY_BUCKETS,
    ASPIRE_LOAD_DURATION: ASPIRE_LOAD_BUCKETS,
    ASPIRE_BATCH_TASKS: (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
}

# Every recordable counter name; inc() of a name that is not here raises KeyError.
# (ASPIRE_DROPPED_SERIES is counted by the store itself, never recorded.)
COUNTERS = frozenset(
    {
        TFS_REQUEST_COUNT,
        TFS_MODEL_WARMUP_RECORDS_READ,
        TF_LOAD_ATTEMPT_COUNT,
        TF_LOAD_LATENCY,
        ASPIRE_REQUESTS,
        ASPIRE_LOAD_ATTEMPTS,
        ASPIRE_ADMISSION_REFUSALS,
        ASPIRE_ROLLOUT_JUDGEMENTS,
        ASPIRE_SHADOW_REQUESTS,
        ASPIRE_EXPERIMENT_REQUESTS,
    }
)

# Label names of every recorded metric, in the order they are rendered.
LABEL_NAMES: dict[str, tuple[str, ...]] = {
    TFS_REQUEST_COUNT: ("model_name", "status"),
    TFS_REQUEST_LATENCY: ("model_name", "API", "entrypoint"),
    TFS_RUNTIME_LATENCY: ("model_name", "API", "runtime"),
    TFS_MODEL_WARMUP_LATENCY: ("model_path", "status"),
    TFS_MODEL_WARMUP_RECORDS_READ: ("model_path", "status"),
    TF_LOAD_ATTEMPT_COUNT: ("model_path", "status"),
    TF_LOAD_LATENCY: ("model_path",),
    ASPIRE_REQUESTS: ("model", "version", "api", "protocol", "code"),
    ASPIRE_REQUEST_LATENCY: ("model", "version", "api", "protocol"),
    ASPIRE_LOAD_ATTEMPTS: ("model", "status"),
    ASPIRE_LOAD_DURATION: ("model",),
    ASPIRE_ADMISSION_REFUSALS: ("model", "reason"),
    ASPIRE_BATCH_TASKS: ("model", "version"),
    ASPIRE_DROPPED_SERIES: ("metric",),
    ASPIRE_ROLLOUT_JUDGEMENTS: ("model", "phase", "result"),
    ASPIRE_SHADOW_REQUESTS: ("model", "outcome"),
    ASPIRE_EXPERIMENT_REQUESTS: ("model", "assignment"),
}

HELP: dict[str, str] = {
    ASPIRE_REQUESTS: "Requests answered, by model, version, API, protocol and TF status code.",
    ASPIRE_REQUEST_LATENCY: "Request latency in seconds, by model, version, API and protocol.",
    ASPIRE_LOAD_ATTEMPTS: "Servable load attempts, by model and outcome.",
    ASPIRE_LOAD_DURATION: "Servable load duration in seconds, by model.",
    ASPIRE_ADMISSION_REFUSALS: "Loads refused by admission control, by model and reason.",
    ASPIRE_BATCH_TASKS: "Requests (tasks) per batch run by dynamic batching, by model and version.",
    ASPIRE_DROPPED_SERIES: "Label sets folded into the _overflow series because a metric hit "
    "its series limit, by metric.",
    ASPIRE_SERVABLE_STATE: "1 for the current state of a servable version, 0 for the others.",
    ASPIRE_GPU_MEMORY_TOTAL: "Total memory of a GPU in bytes.",
    ASPIRE_GPU_MEMORY_RESERVED: "GPU memory reserved by placed servables in bytes.",
    ASPIRE_SERVABLE_VRAM_RESERVED: "GPU memory reserved for one servable version in bytes.",
    ASPIRE_HOST_RAM_TOTAL: "Total host memory of a node in bytes.",
    ASPIRE_HOST_RAM_RESERVED: "Host memory reserved by placed servables in bytes.",
    ASPIRE_TRAFFIC_WEIGHT: "Share of a model's traffic routed to a version (0..1).",
    ASPIRE_CAPACITY_WAIT: "Seconds a version refused for lack of room has waited for a node "
    "(--capacity_wait_s); one series per waiting version.",
    ASPIRE_ROLLOUT_PHASE: "1 for the current phase of a model's rollout, 0 for the others.",
    ASPIRE_ROLLOUT_WEIGHT: "Percent of a model's unversioned requests its rollout's candidate "
    "takes (0..100).",
    ASPIRE_ROLLOUT_DIVERGENCE: "The last shadow judgement's divergence of the candidate's "
    "answers from the baseline's, by output tensor and figure.",
    ASPIRE_ROLLOUT_JUDGEMENTS: "Rollout windows judged, by model, phase and result "
    "(pass, fail, inconclusive).",
    ASPIRE_SHADOW_REQUESTS: "Shadow copies of requests, by model and outcome (compared, "
    "candidate_error, hard_failure, dropped).",
    ASPIRE_EXPERIMENT_REQUESTS: "Unversioned requests of a model with a sticky experiment, by "
    "assignment: keyed (by the request's key) or unkeyed (the key missing: by the weights).",
}

# State gauges rendered from `render_aspire`'s `state`: name -> (state key, labels, value field).
_STATE_GAUGES: dict[str, tuple[str, tuple[str, ...], str]] = {
    ASPIRE_GPU_MEMORY_TOTAL: ("gpus", ("node", "gpu"), "total"),
    ASPIRE_GPU_MEMORY_RESERVED: ("gpus", ("node", "gpu"), "reserved"),
    ASPIRE_SERVABLE_VRAM_RESERVED: (
        "vram_by_version",
        ("model", "version", "node", "gpu"),
        "bytes",
    ),
    ASPIRE_HOST_RAM_TOTAL: ("hosts", ("node",), "total"),
    ASPIRE_HOST_RAM_RESERVED: ("hosts", ("node",), "reserved"),
    ASPIRE_TRAFFIC_WEIGHT: ("traffic", ("model", "version"), "weight"),
    ASPIRE_CAPACITY_WAIT: ("capacity_waits", ("model", "version"), "seconds"),
    ASPIRE_ROLLOUT_WEIGHT: ("rollout_weights", ("model", "candidate"), "weight"),
    ASPIRE_ROLLOUT_DIVERGENCE: ("rollout_divergence", ("model", "output", "figure"), "value"),
}


def _is_tf(name: str) -> bool:
    return name.startswith(":tensorflow:")


# Bucket index of a value: TF families count a value in the first bound > value (upper_bound),
# Prometheus families in the first bound >= value (le). Index len(bounds) is the +Inf bucket.
_BUCKET_INDEX = {name: bisect_right if _is_tf(name) else bisect_left for name in HISTOGRAM_BUCKETS}


def labels_for(name: str, *values: object) -> Labels:
    """Label pairs for `name` in its declared order: labels_for(TFS_REQUEST_COUNT, "m", "OK")."""
    names = LABEL_NAMES[name]
    if len(values) != len(names):
        raise ValueError(f"{name} takes labels {names}, got {len(values)} values")
    return tuple(zip(names, map(str, values), strict=True))


def model_label(name: str, known: Callable[[str], bool] | Collection[str]) -> str:
    """`name` if the server serves that model, else UNKNOWN_MODEL.

    The router labels every request with this, so requests naming any number of models the
    server does not serve share one series per metric instead of one each.
    `known` is a predicate or a container of served model names."""
    is_known = known(name) if callable(known) else name in known
    return name if is_known else UNKNOWN_MODEL


@dataclass
class Deltas:
    """What a Recorder gathered since its last drain; picklable, tiny when empty.

    counters: {(name, labels): increment}
    histograms: {(name, labels): [per-bucket counts (len(bounds) + 1, last is +Inf), sum]}
    source, seq: set by a Shipper: which process shipped them and its shipment number, so the
    store applies each shipment once even when a send that timed out is sent again.
    """

    counters: dict[tuple[str, Labels], float] = field(default_factory=dict)
    histograms: dict[tuple[str, Labels], list] = field(default_factory=dict)
    source: str = ""
    seq: int = 0
    # what routers saw of rollouts (deployments/router/rollout_tap.py), for the manager's judge
    rollout: dict | None = None

    def __bool__(self) -> bool:
        return bool(self.counters or self.histograms or self.rollout)


class Recorder:
    """Process-local, thread-safe accumulator of counter and histogram deltas.

    `inc` and `observe` raise KeyError for a name not in COUNTERS / HISTOGRAM_BUCKETS and
    ValueError for a negative increment or a NaN observation. Labels are not validated here
    (hot path): pass `labels_for(name, ...)` or pairs in `LABEL_NAMES[name]` order.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[tuple[str, Labels], float] = {}
        self._histograms: dict[tuple[str, Labels], list] = {}

    def inc(self, name: str, labels: Labels, value: float = 1) -> None:
        if name not in COUNTERS:
            raise KeyError(name)
        if value < 0:
            raise ValueError(f"{name}: counters only go up, got {value}")
        key = (name, labels)
        with self._lock:
            self._counters[key] = self._counters.get(key, 0) + value

    def observe(self, name: str, labels: Labels, value: float) -> None:
        bounds = HISTOGRAM_BUCKETS[name]
        if value != value:
            raise ValueError(f"{name}: cannot observe NaN")
        index = _BUCKET_INDEX[name](bounds, value)
        key = (name, labels)
        with self._lock:
            entry = self._histograms.get(key)
            if entry is None:
                entry = self._histograms[key] = [[0] * (len(bounds) + 1), 0]
            entry[0][index] += 1
            entry[1] += value

    def drain(self) -> Deltas:
        """Everything recorded since the last drain; the recorder starts again from zero."""
        with self._lock:
            deltas = Deltas(self._counters, self._histograms)
            self._counters, self._histograms = {}, {}
        return deltas


class MetricsStore:
    """The central, thread-safe sum of every process's deltas, and the two page renderers."""

    def __init__(self, max_series_per_metric: int = MAX_SERIES_PER_METRIC) -> None:
        self._lock = threading.Lock()
        self._max_series = max_series_per_metric
        self._counters: dict[str, dict[Labels, float]] = {}
        self._histograms: dict[str, dict[Labels, list]] = {}
        self._applied: dict[str, int] = {}  # shipper -> last shipment applied

    def apply(self, deltas: Deltas) -> bool:
        """Add one Recorder's drained deltas. Validates everything first (KeyError for an unknown
        name, ValueError for a bucket count that does not match HISTOGRAM_BUCKETS), so a bad
        batch changes nothing. False for a shipment applied before (sent again)."""
        for name, _ in deltas.counters:
            if name not in COUNTERS:
                raise KeyError(name)
        for (name, _), (counts, _) in deltas.histograms.items():
            if len(counts) != len(HISTOGRAM_BUCKETS[name]) + 1:
                raise ValueError(
                    f"{name}: {len(counts)} buckets, expected {len(HISTOGRAM_BUCKETS[name]) + 1}"
                )
        with self._lock:
            if deltas.source:
                if deltas.seq <= self._applied.get(deltas.source, 0):
                    return False  # sent again after a send that timed out but arrived
                self._applied[deltas.source] = deltas.seq
            for (name, labels), value in deltas.counters.items():
                series = self._counters.setdefault(name, {})
                labels = self._admit(name, series, labels)
                series[labels] = series.get(labels, 0) + value
            for (name, labels), (counts, total) in deltas.histograms.items():
                buckets = self._histograms.setdefault(name, {})
                labels = self._admit(name, buckets, labels)
                entry = buckets.get(labels)
                if entry is None:
                    buckets[labels] = [list(counts), total]
                else:
                    entry[0] = [a + b for a, b in zip(entry[0], counts, strict=True)]
                    entry[1] += total
        return True

    def _admit(self, name: str, series: dict, labels: Labels) -> Labels:
        """`labels`, or the overflow label set once `name` holds max_series label sets."""
        if labels in series or len(series) < self._max_series:
            return labels
        dropped = self._counters.setdefault(ASPIRE_DROPPED_SERIES, {})
        key = (("metric", name),)
        dropped[key] = dropped.get(key, 0) + 1
        return tuple((label, OVERFLOW) for label, _ in labels)

    def render_tfserving(self) -> str:
        """The TF Serving page (see module doc): `:tensorflow:...` families only."""
        with self._lock:
            lines = self._render(lambda name: _is_tf(name), tf_style=True)
        return _page(lines)

    def render_aspire(self, state: dict) -> str:
        """The Aspire page: recorded `aspire_*` families plus gauges built from `state`.

        `state` (built by the manager at scrape time; every key optional, lists may be empty):
          {"versions":        [{"model": str, "version": int|str, "state": one of SERVABLE_STATES}],
           "gpus":            [{"node": str, "gpu": int|str, "total": bytes, "reserved": bytes}],
           "hosts":           [{"node": str, "total": bytes, "reserved": bytes}],
           "vram_by_version": [{"model", "version", "node", "gpu", "bytes": bytes}],
           "traffic":         [{"model": str, "version": int|str, "weight": 0..1}],
           "capacity_waits":  [{"model": str, "version": int|str, "seconds": float}],
           "rollouts":        [{"model": str, "phase": one of ROLLOUT_PHASES}],
           "rollout_weights": [{"model": str, "candidate": int, "weight": 0..100}],
           "rollout_divergence": [{"model", "output", "figure": str, "value": float}]}
        Label values are str() of the fields. Gauge series keep the order of the lists; each
        version gets one aspire_servable_state series per SERVABLE_STATES entry, 1 for its state
        and 0 for the others (a rollout one aspire_rollout_phase series per ROLLOUT_PHASES entry).
        A state outside SERVABLE_STATES raises ValueError.
        """
        families = dict(_state_gauges(state))
        with self._lock:
            lines = self._render(lambda name: not _is_tf(name), tf_style=False, extra=families)
        return _page(lines)

    def _render(
        self,
        wanted: Callable[[str], bool],
        tf_style: bool,
        extra: dict[str, list[tuple[Labels, float]]] | None = None,
    ) -> list[str]:
        kinds = {name: "counter" for name, series in self._counters.items() if series}
        kinds.update((name, "histogram") for name, series in self._histograms.items() if series)
        extra = extra or {}
        kinds.update((name, "gauge") for name, series in extra.items() if series)
        lines: list[str] = []
        for name in sorted(n for n in kinds if wanted(n)):
            kind = kinds[name]
            if not tf_style:
                lines.append(f"# HELP {name} {HELP[name]}")
            lines.append(f"# TYPE {name} {kind}")
            if kind == "counter":
                for labels, value in sorted(self._counters[name].items()):
                    lines.append(_sample(name, labels, value, tf_style))
            elif kind == "gauge":
                for labels, value in extra[name]:
                    lines.append(_sample(name, labels, value, tf_style))
            else:
                le = le_tfserving if tf_style else format_value
                bounds = [le(b) for b in HISTOGRAM_BUCKETS[name]] + ["+Inf"]
                for labels, (counts, total) in sorted(self._histograms[name].items()):
                    cumulative = 0
                    for bound, count in zip(bounds, counts, strict=True):
                        cumulative += count
                        lines.append(
                            _sample(
                                f"{name}_bucket", labels + (("le", bound),), cumulative, tf_style
                            )
                        )
                    lines.append(_sample(f"{name}_sum", labels, total, tf_style))
                    lines.append(_sample(f"{name}_count", labels, cumulative, tf_style))
        return lines


def _state_gauges(state: dict) -> Iterable[tuple[str, list[tuple[Labels, float]]]]:
    servable: list[tuple[Labels, float]] = []
    for entry in state.get("versions", ()):
        if entry["state"] not in SERVABLE_STATES:
            raise ValueError(f"unknown servable state {entry['state']!r}")
        for s in SERVABLE_STATES:
            labels: Labels = (
                ("model", str(entry["model"])),
                ("version", str(entry["version"])),
                ("state", s),
            )
            servable.append((labels, 1 if s == entry["state"] else 0))
    yield ASPIRE_SERVABLE_STATE, servable
    phases: list[tuple[Labels, float]] = []
    for entry in state.get("rollouts", ()):
        for phase in ROLLOUT_PHASES:
            labels = (("model", str(entry["model"])), ("phase", phase))
            phases.append((labels, 1 if phase == entry["phase"] else 0))
    yield ASPIRE_ROLLOUT_PHASE, phases
    for name, (key, label_names, value_field) in _STATE_GAUGES.items():
        yield (
            name,
            [
                (tuple((n, str(entry[n])) for n in label_names), entry[value_field])
                for entry in state.get(key, ())
            ],
        )


def escape_label_value(value: str) -> str:
    """Prometheus label value escaping: backslash, double quote, newline."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def format_value(value: float) -> str:
    """A sample value: integral values as integers ("3", not "3.0"), others as a round-tripping
    decimal ("0.25"), infinities as "+Inf"/"-Inf", NaN as "NaN"."""
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if value.is_integer() else repr(float(value))


def le_tfserving(bound: float) -> str:
    """A bucket bound as TF Serving writes it: absl::StrCat(double), i.e. printf "%.6g"."""
    return "%.6g" % bound


def _sample(name: str, labels: Labels, value: float, tf_style: bool) -> str:
    # TF Serving always writes braces, even with no labels; Prometheus style omits empty ones.
    body = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in labels)
    if body or tf_style:
        return f"{name}{{{body}}} {format_value(value)}"
    return f"{name} {format_value(value)}"


def _page(lines: list[str]) -> str:
    return "\n".join(lines) + "\n"
