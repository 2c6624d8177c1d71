"""core.metrics: recording, central aggregation and the two exposition pages."""

import pickle
import sys
import threading
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from core import metrics as m
from core.metrics import TFS_REQUEST_COUNT, MetricsStore, Recorder, labels_for

# TF Serving prints bucket limits with absl::StrCat(double) == printf("%.6g").
TF_LE = [
    "10",
    "18",
    "32.4",
    "58.32",
    "104.976",
    "188.957",
    "340.122",
    "612.22",
    "1102",
    "1983.59",
    "3570.47",
    "6426.84",
    "11568.3",
    "20823",
    "37481.3",
    "67466.4",
    "121440",
    "218591",
    "393464",
    "708235",
    "1.27482e+06",
    "2.29468e+06",
    "4.13043e+06",
    "7.43477e+06",
    "1.33826e+07",
    "2.40887e+07",
    "4.33596e+07",
    "7.80473e+07",
    "1.40485e+08",
    "2.52873e+08",
    "4.55172e+08",
    "8.19309e+08",
    "1.47476e+09",
    "+Inf",
]


def store_of(*recorders):
    store = MetricsStore()
    for recorder in recorders:
        store.apply(recorder.drain())
    return store


def request_count(model, status):
    return labels_for(m.TFS_REQUEST_COUNT, model, status)


# --- buckets ------------------------------------------------------------------------------------


def test_tf_latency_buckets_are_exponential_10_1_8_33():
    bounds = m.HISTOGRAM_BUCKETS[m.TFS_REQUEST_LATENCY]
    assert len(bounds) == 33
    assert bounds[:3] == (10.0, 18.0, pytest.approx(32.4))
    for i, bound in enumerate(bounds):
        assert bound == pytest.approx(10 * 1.8**i, rel=1e-12)
    assert [m.le_tfserving(b) for b in bounds] + ["+Inf"] == TF_LE
    assert m.HISTOGRAM_BUCKETS[m.TFS_RUNTIME_LATENCY] == bounds
    assert m.HISTOGRAM_BUCKETS[m.TFS_MODEL_WARMUP_LATENCY] == bounds


def test_aspire_buckets():
    assert m.HISTOGRAM_BUCKETS[m.ASPIRE_REQUEST_LATENCY] == (
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
        1,
        2.5,
        5,
        10,
    )
    assert m.HISTOGRAM_BUCKETS[m.ASPIRE_LOAD_DURATION] == (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)


# --- TF Serving page ----------------------------------------------------------------------------


def test_tf_counter_golden():
    r = Recorder()
    r.inc(m.TFS_REQUEST_COUNT, request_count("mnist", "OK"), 2)
    r.inc(m.TFS_REQUEST_COUNT, request_count("half", "NOT_FOUND"))
    r.inc(m.TFS_REQUEST_COUNT, request_count("half", "OK"))
    assert store_of(r).render_tfserving() == (
        "# TYPE :tensorflow:serving:request_count counter\n"
        ':tensorflow:serving:request_count{model_name="half",status="NOT_FOUND"} 1\n'
        ':tensorflow:serving:request_count{model_name="half",status="OK"} 1\n'
        ':tensorflow:serving:request_count{model_name="mnist",status="OK"} 2\n'
    )


def test_tf_histogram_golden_and_bucketing_like_tf():
    r = Recorder()
    labels = labels_for(m.TFS_REQUEST_LATENCY, "half", "predict", "REST")
    r.observe(m.TFS_REQUEST_LATENCY, labels, 5)  # < 10            -> le="10"
    r.observe(m.TFS_REQUEST_LATENCY, labels, 10)  # == 10: TF's upper_bound -> le="18"
    r.observe(m.TFS_REQUEST_LATENCY, labels, 2e9)  # beyond the last bound -> +Inf only
    cumulative = [1] + [2] * 32 + [3]
    prefix = ":tensorflow:serving:request_latency"
    tags = 'model_name="half",API="predict",entrypoint="REST"'
    expected = ["# TYPE :tensorflow:serving:request_latency histogram"]
    expected += [
        f'{prefix}_bucket{{{tags},le="{le}"}} {n}' for le, n in zip(TF_LE, cumulative, strict=True)
    ]
    expected += [f"{prefix}_sum{{{tags}}} 2000000015", f"{prefix}_count{{{tags}}} 3"]
    assert store_of(r).render_tfserving() == "\n".join(expected) + "\n"


def test_every_tf_family_with_exact_names_and_labels():
    r = Recorder()
    r.inc(m.TFS_REQUEST_COUNT, request_count("a", "OK"))
    r.observe(m.TFS_REQUEST_LATENCY, labels_for(m.TFS_REQUEST_LATENCY, "a", "Predict", "GRPC"), 50)
    r.observe(m.TFS_RUNTIME_LATENCY, labels_for(m.TFS_RUNTIME_LATENCY, "a", "Predict", "TF1"), 40)
    r.observe(m.TFS_MODEL_WARMUP_LATENCY, labels_for(m.TFS_MODEL_WARMUP_LATENCY, "/m/1", "OK"), 7)
    r.inc(
        m.TFS_MODEL_WARMUP_RECORDS_READ,
        labels_for(m.TFS_MODEL_WARMUP_RECORDS_READ, "/m/1", "OK"),
        3,
    )
    r.inc(m.TF_LOAD_ATTEMPT_COUNT, labels_for(m.TF_LOAD_ATTEMPT_COUNT, "/m/1", "success"))
    r.inc(m.TF_LOAD_LATENCY, labels_for(m.TF_LOAD_LATENCY, "/m/1"), 123456)
    page = store_of(r).render_tfserving()
    assert "# HELP" not in page and "_total" not in page
    types = [line for line in page.splitlines() if line.startswith("#")]
    assert types == [
        "# TYPE :tensorflow:cc:saved_model:load_attempt_count counter",
        "# TYPE :tensorflow:cc:saved_model:load_latency counter",
        "# TYPE :tensorflow:serving:model_warmup_latency histogram",
        "# TYPE :tensorflow:serving:model_warmup_records_read counter",
        "# TYPE :tensorflow:serving:request_count counter",
        "# TYPE :tensorflow:serving:request_latency histogram",
        "# TYPE :tensorflow:serving:runtime_latency histogram",
    ]
    for line in [
        ':tensorflow:cc:saved_model:load_attempt_count{model_path="/m/1",status="success"} 1',
        ':tensorflow:cc:saved_model:load_latency{model_path="/m/1"} 123456',
        ':tensorflow:serving:model_warmup_latency_bucket{model_path="/m/1",status="OK",le="10"} 1',
        ':tensorflow:serving:model_warmup_records_read{model_path="/m/1",status="OK"} 3',
        ':tensorflow:serving:request_count{model_name="a",status="OK"} 1',
        ":tensorflow:serving:request_latency_count"
        '{model_name="a",API="Predict",entrypoint="GRPC"} 1',
        ':tensorflow:serving:runtime_latency_sum{model_name="a",API="Predict",runtime="TF1"} 40',
    ]:
        assert line in page.splitlines()
    assert "aspire_" not in page


def test_empty_pages_and_unsampled_families():
    store = MetricsStore()
    assert store.render_tfserving() == "\n"
    assert store.render_aspire({}) == "\n"
    r = Recorder()
    r.inc(m.ASPIRE_REQUESTS, labels_for(m.ASPIRE_REQUESTS, "a", 1, "predict", "rest", "OK"))
    store.apply(r.drain())
    assert store.render_tfserving() == "\n"  # aspire samples stay off the TF page
    page = store.render_aspire({"gpus": [], "versions": []})
    assert "gauge" not in page and "histogram" not in page


def test_label_escaping():
    r = Recorder()
    r.inc(m.TFS_REQUEST_COUNT, request_count('a"b\\c\nd', "OK"))
    assert store_of(r).render_tfserving().splitlines()[1] == (
        ':tensorflow:serving:request_count{model_name="a\\"b\\\\c\\nd",status="OK"} 1'
    )


def test_format_value():
    assert [m.format_value(v) for v in (3, 3.0, 0.25, 1e21, 0.0005, float("inf"))] == [
        "3",
        "3",
        "0.25",
        "1000000000000000000000",
        "0.0005",
        "+Inf",
    ]


# --- Aspire page --------------------------------------------------------------------------------


def test_aspire_recorded_families_golden():
    r = Recorder()
    r.inc(m.ASPIRE_REQUESTS, labels_for(m.ASPIRE_REQUESTS, "a", 1, "predict", "grpc", "OK"), 4)
    r.inc(m.ASPIRE_LOAD_ATTEMPTS, labels_for(m.ASPIRE_LOAD_ATTEMPTS, "a", "success"))
    r.inc(m.ASPIRE_ADMISSION_REFUSALS, labels_for(m.ASPIRE_ADMISSION_REFUSALS, "a", "gpu_memory"))
    r.observe(m.ASPIRE_LOAD_DURATION, labels_for(m.ASPIRE_LOAD_DURATION, "a"), 2)  # le: 2 <= 2
    r.observe(m.ASPIRE_LOAD_DURATION, labels_for(m.ASPIRE_LOAD_DURATION, "a"), 0.25)
    counts = [1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2]
    les = ["0.5", "1", "2", "5", "10", "20", "30", "60", "120", "300", "+Inf"]
    assert (
        store_of(r).render_aspire({})
        == "\n".join(
            [
                "# HELP aspire_admission_refusals_total " + m.HELP[m.ASPIRE_ADMISSION_REFUSALS],
                "# TYPE aspire_admission_refusals_total counter",
                'aspire_admission_refusals_total{model="a",reason="gpu_memory"} 1',
                "# HELP aspire_load_attempts_total " + m.HELP[m.ASPIRE_LOAD_ATTEMPTS],
                "# TYPE aspire_load_attempts_total counter",
                'aspire_load_attempts_total{model="a",status="success"} 1',
                "# HELP aspire_load_duration_seconds " + m.HELP[m.ASPIRE_LOAD_DURATION],
                "# TYPE aspire_load_duration_seconds histogram",
                *[
                    f'aspire_load_duration_seconds_bucket{{model="a",le="{le}"}} {n}'
                    for le, n in zip(les, counts, strict=True)
                ],
                'aspire_load_duration_seconds_sum{model="a"} 2.25',
                'aspire_load_duration_seconds_count{model="a"} 2',
                "# HELP aspire_requests_total " + m.HELP[m.ASPIRE_REQUESTS],
                "# TYPE aspire_requests_total counter",
                (
                    'aspire_requests_total{model="a",version="1",api="predict",'
                    'protocol="grpc",code="OK"} 4'
                ),
            ]
        )
        + "\n"
    )


def test_aspire_request_latency_le_bounds():
    r = Recorder()
    labels = labels_for(m.ASPIRE_REQUEST_LATENCY, "a", 1, "predict", "rest")
    r.observe(m.ASPIRE_REQUEST_LATENCY, labels, 0.001)
    lines = store_of(r).render_aspire({}).splitlines()
    buckets = [line for line in lines if "_bucket" in line]
    assert [b.split('le="')[1].split('"')[0] for b in buckets] == [
        "0.0005",
        "0.001",
        "0.0025",
        "0.005",
        "0.01",
        "0.025",
        "0.05",
        "0.1",
        "0.25",
        "0.5",
        "1",
        "2.5",
        "5",
        "10",
        "+Inf",
    ]
    assert buckets[0].endswith(" 0") and buckets[1].endswith(" 1")


STATE = {
    "versions": [
        {"model": "a", "version": 1, "state": "AVAILABLE"},
        {"model": "a", "version": 2, "state": "LOADING"},
    ],
    "gpus": [{"node": "n1", "gpu": 0, "total": 85899345920, "reserved": 1073741824}],
    "hosts": [{"node": "n1", "total": 137438953472, "reserved": 0}],
    "vram_by_version": [{"model": "a", "version": 1, "node": "n1", "gpu": 0, "bytes": 1073741824}],
    "traffic": [
        {"model": "a", "version": 1, "weight": 0.75},
        {"model": "a", "version": 2, "weight": 0.25},
    ],
}


def test_state_gauges_golden():
    page = MetricsStore().render_aspire(STATE)

    def family(name, *samples):
        return [f"# HELP {name} {m.HELP[name]}", f"# TYPE {name} gauge", *samples]

    assert (
        page
        == "\n".join(
            [
                *family(
                    "aspire_gpu_memory_reserved_bytes",
                    'aspire_gpu_memory_reserved_bytes{node="n1",gpu="0"} 1073741824',
                ),
                *family(
                    "aspire_gpu_memory_total_bytes",
                    'aspire_gpu_memory_total_bytes{node="n1",gpu="0"} 85899345920',
                ),
                *family(
                    "aspire_host_ram_reserved_bytes", 'aspire_host_ram_reserved_bytes{node="n1"} 0'
                ),
                *family(
                    "aspire_host_ram_total_bytes",
                    'aspire_host_ram_total_bytes{node="n1"} 137438953472',
                ),
                *family(
                    "aspire_servable_state",
                    'aspire_servable_state{model="a",version="1",state="START"} 0',
                    'aspire_servable_state{model="a",version="1",state="LOADING"} 0',
                    'aspire_servable_state{model="a",version="1",state="AVAILABLE"} 1',
                    'aspire_servable_state{model="a",version="1",state="UNLOADING"} 0',
                    'aspire_servable_state{model="a",version="1",state="END"} 0',
                    'aspire_servable_state{model="a",version="2",state="START"} 0',
                    'aspire_servable_state{model="a",version="2",state="LOADING"} 1',
                    'aspire_servable_state{model="a",version="2",state="AVAILABLE"} 0',
                    'aspire_servable_state{model="a",version="2",state="UNLOADING"} 0',
                    'aspire_servable_state{model="a",version="2",state="END"} 0',
                ),
                *family(
                    "aspire_servable_vram_reserved_bytes",
                    'aspire_servable_vram_reserved_bytes{model="a",version="1",node="n1",gpu="0"} '
                    "1073741824",
                ),
                *family(
                    "aspire_traffic_weight",
                    'aspire_traffic_weight{model="a",version="1"} 0.75',
                    'aspire_traffic_weight{model="a",version="2"} 0.25',
                ),
            ]
        )
        + "\n"
    )


@pytest.mark.parametrize("state", m.SERVABLE_STATES)
def test_servable_state_has_exactly_one_1_per_version(state):
    versions = [{"model": "x", "version": 7, "state": state}]
    page = MetricsStore().render_aspire({"versions": versions})
    samples = [line for line in page.splitlines() if not line.startswith("#")]
    assert len(samples) == 5
    assert [s for s in samples if s.endswith(" 1")] == [
        f'aspire_servable_state{{model="x",version="7",state="{state}"}} 1'
    ]


def test_unknown_servable_state_is_an_error():
    with pytest.raises(ValueError):
        MetricsStore().render_aspire({"versions": [{"model": "x", "version": 1, "state": "OK"}]})


def test_pages_parse_as_prometheus_text():
    r = Recorder()
    r.inc(m.ASPIRE_REQUESTS, labels_for(m.ASPIRE_REQUESTS, "a", 1, "predict", "rest", "OK"))
    r.observe(
        m.ASPIRE_REQUEST_LATENCY,
        labels_for(m.ASPIRE_REQUEST_LATENCY, "a", 1, "predict", "rest"),
        0.003,
    )
    r.inc(m.TFS_REQUEST_COUNT, request_count("a", "OK"))
    r.observe(m.TFS_REQUEST_LATENCY, labels_for(m.TFS_REQUEST_LATENCY, "a", "predict", "REST"), 300)
    store = store_of(r)
    aspire = {f.name: f for f in text_string_to_metric_families(store.render_aspire(STATE))}
    assert aspire["aspire_requests"].type == "counter"
    assert aspire["aspire_request_latency_seconds"].type == "histogram"
    assert aspire["aspire_traffic_weight"].samples[0].value == 0.75
    tf = list(text_string_to_metric_families(store.render_tfserving()))
    assert {f.type for f in tf} == {"counter", "histogram"}


def test_every_metric_is_described():
    for name in m.COUNTERS | set(m.HISTOGRAM_BUCKETS):
        assert name in m.LABEL_NAMES
        assert name.startswith(":tensorflow:") or name in m.HELP


# --- Recorder / store ---------------------------------------------------------------------------


def test_two_recorders_add_up_in_one_store():
    router_a, router_b = Recorder(), Recorder()
    latency = labels_for(m.TFS_REQUEST_LATENCY, "a", "predict", "REST")
    for _ in range(3):
        router_a.inc(m.TFS_REQUEST_COUNT, request_count("a", "OK"))
        router_a.observe(m.TFS_REQUEST_LATENCY, latency, 100)
    for _ in range(4):
        router_b.inc(m.TFS_REQUEST_COUNT, request_count("a", "OK"))
        router_b.observe(m.TFS_REQUEST_LATENCY, latency, 1000)
    store = MetricsStore()
    store.apply(pickle.loads(pickle.dumps(router_a.drain())))  # shipped across processes
    store.apply(pickle.loads(pickle.dumps(router_b.drain())))
    router_a.inc(m.TFS_REQUEST_COUNT, request_count("a", "OK"))  # a second flush adds on top
    store.apply(router_a.drain())
    page = store.render_tfserving().splitlines()
    assert ':tensorflow:serving:request_count{model_name="a",status="OK"} 8' in page
    tags = 'model_name="a",API="predict",entrypoint="REST"'
    assert f":tensorflow:serving:request_latency_sum{{{tags}}} 4300" in page
    assert f":tensorflow:serving:request_latency_count{{{tags}}} 7" in page
    assert f':tensorflow:serving:request_latency_bucket{{{tags},le="104.976"}} 3' in page
    assert f':tensorflow:serving:request_latency_bucket{{{tags},le="1102"}} 7' in page


def test_drain_resets_and_empty_drain_is_small():
    r = Recorder()
    empty = r.drain()
    assert not empty and empty.counters == {} and empty.histograms == {}
    assert len(pickle.dumps(empty)) < 200
    r.inc(m.TFS_REQUEST_COUNT, request_count("a", "OK"))
    assert r.drain()
    assert not r.drain()


def test_concurrent_recording_loses_nothing():
    r = Recorder()
    labels = request_count("a", "OK")
    latency = labels_for(m.TFS_REQUEST_LATENCY, "a", "predict", "REST")
    store = MetricsStore()
    start = threading.Barrier(9)

    def work():
        start.wait()
        for _ in range(5000):
            r.inc(m.TFS_REQUEST_COUNT, labels)
            r.observe(m.TFS_REQUEST_LATENCY, latency, 20)

    threads = [threading.Thread(target=work) for _ in range(8)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # make the GIL switch mid-update
    try:
        for t in threads:
            t.start()
        start.wait()
        for _ in range(50):  # drains race with the writers
            store.apply(r.drain())
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    store.apply(r.drain())
    page = store.render_tfserving().splitlines()
    assert ':tensorflow:serving:request_count{model_name="a",status="OK"} 40000' in page
    assert (
        ":tensorflow:serving:request_latency_count"
        '{model_name="a",API="predict",entrypoint="REST"} 40000'
    ) in page


def test_unknown_names_and_bad_values_are_refused():
    r = Recorder()
    with pytest.raises(KeyError):
        r.observe("no_such_histogram", (), 1)
    with pytest.raises(KeyError):
        r.observe(m.TFS_REQUEST_COUNT, (), 1)  # a counter is not a histogram
    with pytest.raises(KeyError):
        r.inc("no_such_counter", ())
    with pytest.raises(ValueError):
        r.inc(m.TFS_REQUEST_COUNT, (), -1)
    with pytest.raises(ValueError):
        labels_for(m.TFS_REQUEST_COUNT, "only-one")


def test_bad_batch_changes_nothing():
    store = MetricsStore()
    good = (m.TFS_REQUEST_COUNT, request_count("a", "OK"))
    bad = m.Deltas(
        counters={good: 1}, histograms={(m.TFS_REQUEST_LATENCY, ()): [[1, 0], 5]}
    )  # wrong bucket count
    with pytest.raises(ValueError):
        store.apply(bad)
    assert store.render_tfserving() == "\n"


# --- cardinality --------------------------------------------------------------------------------


def test_model_label():
    served = {"half", "mnist"}
    assert m.model_label("half", served) == "half"
    assert m.model_label("nope", served) == m.UNKNOWN_MODEL == "_unknown"
    assert m.model_label("mnist", served.__contains__) == "mnist"
    assert m.model_label("nope", lambda name: False) == "_unknown"
    r = Recorder()
    for i in range(10000):
        r.inc(m.TFS_REQUEST_COUNT, request_count(m.model_label(f"m{i}", served), "NOT_FOUND"))
    page = store_of(r).render_tfserving()
    assert page.splitlines()[1:] == [
        ':tensorflow:serving:request_count{model_name="_unknown",status="NOT_FOUND"} 10000'
    ]


def test_overflow_backstop_small_limit():
    store = MetricsStore(max_series_per_metric=2)
    r = Recorder()
    for name in ("a", "b", "c", "d"):
        r.inc(m.TFS_REQUEST_COUNT, request_count(name, "OK"))
        r.observe(m.ASPIRE_LOAD_DURATION, labels_for(m.ASPIRE_LOAD_DURATION, name), 1)
    store.apply(r.drain())
    r.inc(m.TFS_REQUEST_COUNT, request_count("a", "OK"))  # known series keep counting
    r.inc(m.TFS_REQUEST_COUNT, request_count("e", "OK"))  # new ones fold into _overflow
    store.apply(r.drain())
    assert store.render_tfserving().splitlines()[:4] == [
        "# TYPE :tensorflow:serving:request_count counter",
        ':tensorflow:serving:request_count{model_name="_overflow",status="_overflow"} 3',
        ':tensorflow:serving:request_count{model_name="a",status="OK"} 2',
        ':tensorflow:serving:request_count{model_name="b",status="OK"} 1',
    ]
    aspire = store.render_aspire({}).splitlines()
    assert 'aspire_load_duration_seconds_count{model="_overflow"} 2' in aspire
    assert "# TYPE aspire_metrics_dropped_series_total counter" in aspire
    assert (
        'aspire_metrics_dropped_series_total{metric=":tensorflow:serving:request_count"} 3'
        in aspire
    )
    assert 'aspire_metrics_dropped_series_total{metric="aspire_load_duration_seconds"} 2' in aspire


def test_overflow_backstop_default_limit():
    assert m.MAX_SERIES_PER_METRIC == 10000
    store = MetricsStore()
    r = Recorder()
    for i in range(10005):
        r.inc(m.TF_LOAD_LATENCY, labels_for(m.TF_LOAD_LATENCY, f"/models/{i}"), 1)
    store.apply(r.drain())
    samples = [line for line in store.render_tfserving().splitlines() if not line.startswith("#")]
    assert len(samples) == 10001
    assert ':tensorflow:cc:saved_model:load_latency{model_path="_overflow"} 5' in samples


def test_shipper_ships_periodically_and_keeps_deltas_when_sending_fails():
    from core.metrics_shipper import Shipper

    store, recorder = MetricsStore(), Recorder()
    broken = threading.Event()
    broken.set()

    def send(deltas):
        if broken.is_set():
            raise ConnectionError("manager restarting")
        store.apply(deltas)

    shipper = Shipper(recorder, send, period_s=0.01)
    try:
        labels = labels_for(TFS_REQUEST_COUNT, "m", "OK")
        for _ in range(5):
            recorder.inc(TFS_REQUEST_COUNT, labels)
        assert not shipper.flush()  # the manager is away: nothing is lost
        broken.clear()
        recorder.inc(TFS_REQUEST_COUNT, labels)
        deadline = time.monotonic() + 5
        while 'status="OK"} 6' not in store.render_tfserving() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (
            ':tensorflow:serving:request_count{model_name="m",status="OK"} 6'
            in store.render_tfserving()
        )
    finally:
        shipper.stop()


def test_a_shipment_whose_send_timed_out_after_arriving_counts_once():
    from core.metrics_shipper import Shipper

    store, recorder = MetricsStore(), Recorder()
    sent = []

    def send(deltas):  # the manager applies it, but the caller gives up waiting
        store.apply(deltas)
        sent.append(deltas.seq)
        if len(sent) == 1:
            raise TimeoutError("no answer in 10 s")

    shipper = Shipper(recorder, send, period_s=3600)
    try:
        labels = labels_for(TFS_REQUEST_COUNT, "m", "OK")
        for _ in range(5):
            recorder.inc(TFS_REQUEST_COUNT, labels)
        assert not shipper.flush()
        recorder.inc(TFS_REQUEST_COUNT, labels)  # recorded while the shipment is pending
        assert shipper.flush()
        assert sent == [1, 1, 2]  # the same shipment again, then the new counts
        assert (
            ':tensorflow:serving:request_count{model_name="m",status="OK"} 6'
            in store.render_tfserving()
        )
    finally:
        shipper.stop()
