"""All 48 of TF Serving's `tensorflow_model_server` flags reach `aspire serve`: each is parsed
with TF Serving's syntax, and is honoured, warned about or refused as cluster/tfs_flags.py's
table and docs/configuration.md's flag table say (the two must agree)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from cluster import tfs_flags
from cluster.flags import FlagError, build_parser, validate
from cluster.server_args import manager_config, server_options
from tests.support.certs import CertAuthority

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "configuration.md"

# tensorflow_serving/model_servers/main.cc's flag_list, in its order
TFS_FLAGS = (
    "port", "grpc_socket_path", "rest_api_port", "rest_api_num_threads",
    "rest_api_timeout_in_ms", "rest_api_enable_cors_support", "enable_batching",
    "allow_version_labels_for_unavailable_models", "batching_parameters_file",
    "enable_per_model_batching_parameters", "model_config_file",
    "model_config_file_poll_wait_seconds", "model_name", "model_base_path", "num_load_threads",
    "num_unload_threads", "max_num_load_retries", "load_retry_interval_micros",
    "file_system_poll_wait_seconds", "flush_filesystem_caches",
    "tensorflow_session_parallelism", "tensorflow_session_config_file",
    "tensorflow_intra_op_parallelism", "tensorflow_inter_op_parallelism",
    "use_alts_credentials", "ssl_config_file", "platform_config_file",
    "per_process_gpu_memory_fraction", "saved_model_tags", "grpc_channel_arguments",
    "grpc_max_threads", "enable_model_warmup", "num_request_iterations_for_warmup", "version",
    "monitoring_config_file", "remove_unused_fields_from_bundle_metagraph",
    "prefer_tflite_model", "num_tflite_pools", "num_tflite_interpreters_per_pool",
    "enable_signature_method_name_check", "xla_cpu_compilation_enabled",
    "xla_gpu_compilation_enabled", "enable_profiler", "thread_pool_factory_config_file",
    "mixed_precision", "skip_initialize_tpu", "enable_grpc_healthcheck_service",
    "enable_serialization_as_tensor_content",
)  # fmt: skip

# Each refused flag: its refused value and the start-up error it gives
REFUSALS = {
    "prefer_tflite_model": (
        "true",
        "--prefer_tflite_model=true is not supported: Aspire has no TensorFlow Lite runtime",
    ),
    "use_alts_credentials": (
        "true",
        "--use_alts_credentials=true is not supported: ALTS needs Google's ALTS handshaker "
        "service, which Aspire does not run; serve TLS with --ssl_config_file instead",
    ),
}
# Each warned flag: a value that changes what TF Serving does (so it warns), and one that does
# not (None: every value warns)
WARNINGS = {
    "num_unload_threads": ("2", None),
    "flush_filesystem_caches": ("true", "false"),
    "remove_unused_fields_from_bundle_metagraph": ("true", "false"),
    "num_tflite_pools": ("4", None),
    "num_tflite_interpreters_per_pool": ("2", None),
    "xla_cpu_compilation_enabled": ("true", None),
    "xla_gpu_compilation_enabled": ("false", None),
    "enable_profiler": ("true", "false"),
    "thread_pool_factory_config_file": ("/etc/pools.pbtxt", ""),
    "mixed_precision": ("bfloat16", ""),
    "skip_initialize_tpu": ("true", None),
}


@pytest.fixture
def aspire_warnings():
    """The warning lines the "aspire" logger emits during the test."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                lines.append(record.getMessage())

    handler = Collect()
    logger = logging.getLogger("aspire")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lines
    logger.removeHandler(handler)
    logger.setLevel(level)


def parse(*flags: str):
    return build_parser().parse_args(["serve", "--rest_api_host=127.0.0.1", *flags])


def naming(lines: list[str], flag: str) -> list[str]:
    return [line for line in lines if re.search(rf"--{flag}\b", line)]


def docs_table() -> dict[str, str]:
    """flag name -> disposition, from the table under docs/configuration.md's "TF Serving's
    flags" heading."""
    text = DOCS.read_text()
    section = text.split("### TF Serving's flags", 1)[1].split("\n### ", 1)[0]
    rows = {}
    for line in section.splitlines():
        m = re.match(r"\| `--(\w+)` \|[^|]*\| (\w+) \|", line)
        if m:
            assert m.group(1) not in rows, f"--{m.group(1)} has two rows"
            rows[m.group(1)] = m.group(2)
    return rows


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A valid file for every flag that names one."""
    folder = tmp_path_factory.mktemp("tfs_flags")
    ca = CertAuthority.create(folder, "ca")
    server = ca.issue(folder, "server")
    paths = {
        "ssl_config_file": f'server_key: "{server.key}"\nserver_cert: "{server.cert}"\n',
        "model_config_file": "model_config_list { config { name: 'm' base_path: '/m' "
        "model_platform: 'tensorflow' } }\n",
        "batching_parameters_file": "max_batch_size { value: 8 }\n",
        "monitoring_config_file": "prometheus_config { enable: true }\n",
        "tensorflow_session_config_file": "gpu_options { allow_growth: true }\n",
        "platform_config_file": 'platform_configs { key: "tensorflow" value { '
        "source_adapter_config { "
        "[type.googleapis.com/tensorflow.serving.SavedModelBundleSourceAdapterConfig] { "
        "legacy_config { batching_parameters { max_batch_size { value: 4 } } } } } } }\n",
    }
    for flag, text in paths.items():
        (folder / f"{flag}.pbtxt").write_text(text)
    return {flag: str(folder / f"{flag}.pbtxt") for flag in paths}


def valid_line(files: dict[str, str]) -> dict[str, str]:
    """A valid value for every one of the 48 flags (refused ones at their accepted value)."""
    values = {
        "port": "8600", "grpc_socket_path": "/tmp/aspire-test.sock", "rest_api_port": "8601",
        "rest_api_num_threads": "8", "rest_api_timeout_in_ms": "5000",
        "rest_api_enable_cors_support": "true", "enable_batching": "true",
        "allow_version_labels_for_unavailable_models": "false",
        "enable_per_model_batching_parameters": "false", "model_config_file_poll_wait_seconds": "0",
        "model_name": "m", "model_base_path": "/m", "num_load_threads": "2",
        "num_unload_threads": "2", "max_num_load_retries": "1",
        "load_retry_interval_micros": "1000", "file_system_poll_wait_seconds": "2",
        "flush_filesystem_caches": "true", "tensorflow_session_parallelism": "0",
        "tensorflow_intra_op_parallelism": "2", "tensorflow_inter_op_parallelism": "2",
        "use_alts_credentials": "false", "per_process_gpu_memory_fraction": "0.5",
        "saved_model_tags": "serve", "grpc_channel_arguments": "grpc.max_connection_age_ms=2000",
        "grpc_max_threads": "16", "enable_model_warmup": "true",
        "num_request_iterations_for_warmup": "2", "version": "false",
        "remove_unused_fields_from_bundle_metagraph": "true", "prefer_tflite_model": "false",
        "num_tflite_pools": "4", "num_tflite_interpreters_per_pool": "1",
        "enable_signature_method_name_check": "true", "xla_cpu_compilation_enabled": "true",
        "xla_gpu_compilation_enabled": "true", "enable_profiler": "true",
        "thread_pool_factory_config_file": "/etc/pools.pbtxt", "mixed_precision": "bfloat16",
        "skip_initialize_tpu": "true", "enable_grpc_healthcheck_service": "true",
        "enable_serialization_as_tensor_content": "true",
    }  # fmt: skip
    return values | files


def test_the_parsers_table_has_tf_servings_48_flags_in_main_cc_order():
    assert len(TFS_FLAGS) == 48 == len(set(TFS_FLAGS))
    assert tuple(flag.name for flag in tfs_flags.FLAGS) == TFS_FLAGS


def test_a_command_line_with_every_flag_parses_validates_and_builds_the_options(files):
    values = valid_line(files)
    assert set(values) == set(TFS_FLAGS)
    args = parse(*(f"--{flag}={value}" for flag, value in values.items()))
    assert set(args.given_flags) == set(TFS_FLAGS)
    validate(args)
    config, options = manager_config(args), server_options(args)
    assert config.models[0].name == "m" and options.grpc_port == 8600
    assert config.replica.batching is not None  # from the platform config, as in TF Serving
    assert config.replica.batching.parameters.max_batch_size == 4


@pytest.mark.parametrize("flag", sorted(REFUSALS))
def test_each_refused_flag_at_its_refused_value_stops_the_start_with_its_message(flag):
    value, message = REFUSALS[flag]
    assert tfs_flags.BY_NAME[flag].disposition == tfs_flags.REFUSED
    with pytest.raises(FlagError) as err:
        validate(parse("--model_base_path=/m", f"--{flag}={value}"))
    assert str(err.value).startswith(message)


def test_alts_with_an_ssl_config_is_tf_servings_error(files):
    with pytest.raises(FlagError) as err:
        validate(
            parse(
                "--model_base_path=/m",
                "--use_alts_credentials",
                f"--ssl_config_file={files['ssl_config_file']}",
            )
        )
    assert str(err.value) == (
        "Either use_alts_credentials must be false or ssl_config_file must be empty."
    )


@pytest.mark.parametrize("flag", sorted(WARNINGS))
def test_each_warned_flag_given_with_a_value_that_matters_logs_one_line_naming_it(
    flag, aspire_warnings
):
    assert tfs_flags.BY_NAME[flag].disposition == tfs_flags.WARNED
    validate(parse("--model_base_path=/m", f"--{flag}={WARNINGS[flag][0]}"))
    assert len(naming(aspire_warnings, flag)) == 1, aspire_warnings


@pytest.mark.parametrize("flag", sorted(WARNINGS))
def test_a_warned_flag_left_out_or_given_a_value_that_does_not_matter_logs_nothing(
    flag, aspire_warnings
):
    validate(parse("--model_base_path=/m"))
    quiet = WARNINGS[flag][1]
    if quiet is not None:
        validate(parse("--model_base_path=/m", f"--{flag}={quiet}"))
    assert naming(aspire_warnings, flag) == []


def test_every_warned_and_refused_flag_of_the_table_is_tested_here():
    table = {flag.name: flag.disposition for flag in tfs_flags.FLAGS}
    assert {n for n, d in table.items() if d == tfs_flags.WARNED} == set(WARNINGS)
    assert {n for n, d in table.items() if d == tfs_flags.REFUSED} == set(REFUSALS)


def test_the_docs_flag_table_has_all_48_with_the_parsers_dispositions():
    documented = docs_table()
    assert sorted(documented) == sorted(TFS_FLAGS)
    assert documented == {flag.name: flag.disposition for flag in tfs_flags.FLAGS}
