"""TF Serving's `--monitoring_config_file`: a text-format `tensorflow.serving.MonitoringConfig`.

    prometheus_config: { enable: true, path: "/monitoring/prometheus/metrics" }

`load_monitoring_config(file)` -> `PrometheusSettings(enabled, path)`; an empty path means TF
Serving's default `/monitoring/prometheus/metrics`. A malformed file, or a path that does not
start with "/", raises AspireError INVALID_ARGUMENT naming the file (TF Serving's message
"Invalid protobuf file: '<file>'" plus the parser's message); an unreadable file raises NOT_FOUND,
as TF's ReadFileToString does.

The message class comes from `tensorflow_serving.config.monitoring_config_pb2` when the installed
tensorflow-serving-api ships it (2.21 does not); otherwise it is built here, in a private
descriptor pool, from the two-message proto (ts/config/monitoring_config.proto).
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf.message import Message

from config.model_config import read_proto_text
from core.errors import AspireError

DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"  # PrometheusExporter::kPrometheusPath


@dataclass(frozen=True)
class PrometheusSettings:
    """Whether to serve the Prometheus page, and on which REST path."""

    enabled: bool = False
    path: str = DEFAULT_PROMETHEUS_PATH


def _monitoring_config_class() -> type[Message]:
    try:
        from tensorflow_serving.config import monitoring_config_pb2

        return monitoring_config_pb2.MonitoringConfig
    except ImportError:
        pass
    proto = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/config/monitoring_config.proto",
        package="tensorflow.serving",
        syntax="proto3",
    )
    F = descriptor_pb2.FieldDescriptorProto
    prometheus = proto.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, type=F.TYPE_BOOL, label=F.LABEL_OPTIONAL)
    prometheus.field.add(name="path", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    monitoring = proto.message_type.add(name="MonitoringConfig")
    monitoring.field.add(
        name="prometheus_config",
        number=1,
        type=F.TYPE_MESSAGE,
        label=F.LABEL_OPTIONAL,
        type_name=".tensorflow.serving.PrometheusConfig",
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig")
    )


MonitoringConfig = _monitoring_config_class()


def parse_monitoring_config(text: str, source: str = "<string>") -> PrometheusSettings:
    """Settings from the text of a MonitoringConfig; `source` names it in error messages."""
    config = MonitoringConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as err:
        raise AspireError(f"Invalid protobuf file: '{source}': {err}", "INVALID_ARGUMENT") from None
    prometheus = config.prometheus_config
    path = prometheus.path or DEFAULT_PROMETHEUS_PATH
    if not path.startswith("/"):
        raise AspireError(
            f"Invalid monitoring config '{source}': prometheus_config.path must "
            f'start with "/", got {path!r}',
            "INVALID_ARGUMENT",
        )
    return PrometheusSettings(enabled=prometheus.enable, path=path)


def load_monitoring_config(file: str | None) -> PrometheusSettings:
    """Settings from `--monitoring_config_file`; no file (None or "") means Prometheus is off."""
    if not file:
        return PrometheusSettings()
    return parse_monitoring_config(read_proto_text(file), file)
