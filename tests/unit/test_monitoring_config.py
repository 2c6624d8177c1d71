"""config.monitoring_config: TF Serving's --monitoring_config_file."""

import os

import pytest

from config.monitoring_config import (
    DEFAULT_PROMETHEUS_PATH,
    PrometheusSettings,
    load_monitoring_config,
    parse_monitoring_config,
)
from core.errors import AspireError

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "data", "monitoring_config.txt")


def test_tf_serving_fixture():
    assert load_monitoring_config(FIXTURE) == PrometheusSettings(
        enabled=True, path="/monitoring/prometheus/metrics"
    )


def test_no_file_means_disabled():
    assert load_monitoring_config(None) == PrometheusSettings(False, DEFAULT_PROMETHEUS_PATH)
    assert load_monitoring_config("") == PrometheusSettings(False, DEFAULT_PROMETHEUS_PATH)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("prometheus_config { enable: true }", PrometheusSettings(True, DEFAULT_PROMETHEUS_PATH)),
        (
            'prometheus_config { path: "" enable: true }',
            PrometheusSettings(True, "/monitoring/prometheus/metrics"),
        ),
        (
            'prometheus_config: { enable: true, path: "/metrics" }',
            PrometheusSettings(True, "/metrics"),
        ),
        ('prometheus_config { enable: false path: "/m" }', PrometheusSettings(False, "/m")),
        ("", PrometheusSettings(False, DEFAULT_PROMETHEUS_PATH)),
    ],
)
def test_good_configs(text, expected):
    assert parse_monitoring_config(text) == expected


def test_settings_are_frozen():
    with pytest.raises(AttributeError):
        PrometheusSettings(True, "/m").enabled = False


@pytest.mark.parametrize(
    "text, parser_says",
    [
        ("prometheus_config { enable: maybe }", 'Expected "true" or "false"'),
        ("prometheus_config { port: 8080 }", 'no field named "port"'),
        ("prometheus_config { enable: true", "Expected"),
    ],
)
def test_malformed_configs(tmp_path, text, parser_says):
    path = tmp_path / "monitoring.txt"
    path.write_text(text)
    with pytest.raises(AspireError) as err:
        load_monitoring_config(str(path))
    assert err.value.code == "INVALID_ARGUMENT"
    assert f"Invalid protobuf file: '{path}'" in err.value.message
    assert parser_says in err.value.message


def test_relative_path_is_an_error(tmp_path):
    path = tmp_path / "monitoring.txt"
    path.write_text('prometheus_config { enable: true path: "metrics" }')
    with pytest.raises(AspireError) as err:
        load_monitoring_config(str(path))
    assert err.value.code == "INVALID_ARGUMENT"
    assert str(path) in err.value.message and "'metrics'" in err.value.message


def test_missing_file(tmp_path):
    with pytest.raises(AspireError) as err:
        load_monitoring_config(str(tmp_path / "absent.txt"))
    assert err.value.code == "NOT_FOUND" and "absent.txt" in err.value.message
