"""A TF Serving command line with every one of `tensorflow_model_server`'s 48 flags, each with a
valid value, starts `aspire serve` and serves: REST over HTTPS with TF Serving's CORS headers,
gRPC over TLS on the port and on the UNIX socket, the gRPC health service, the metrics page; each
warned flag prints its one warning line. (Parsing each flag, and the refused values, are
tests/unit/test_tfs_flag_list.py.)"""

from __future__ import annotations

import grpc
import pytest
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow_serving.apis import prediction_service_pb2_grpc

from cluster import tfs_flags
from tests.integration.conftest import DATA, Served, free_port
from tests.support.certs import CertAuthority
from tests.support.grpc_requests import predict_request

pytestmark = pytest.mark.ray

MODEL = "half_plus_two"


@pytest.fixture(scope="module")
def every_flag(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tfs_line")
    ca = CertAuthority.create(folder, "ca")
    server = ca.issue(folder, "server")
    files = {
        "model_config_file": f'model_config_list {{ config {{ name: "{MODEL}" '
        f'base_path: "{DATA / "saved_model_half_plus_two_cpu"}" model_platform: "tensorflow" }} }}',
        "ssl_config_file": f'server_key: "{server.key}"\nserver_cert: "{server.cert}"\n',
        "batching_parameters_file": "max_batch_size { value: 8 }\n",
        "monitoring_config_file": "prometheus_config { enable: true }\n",
        "tensorflow_session_config_file": "intra_op_parallelism_threads: 1\n",
        "platform_config_file": 'platform_configs { key: "tensorflow" value { '
        "source_adapter_config { "
        "[type.googleapis.com/tensorflow.serving.SavedModelBundleSourceAdapterConfig] { "
        "legacy_config { batching_parameters { max_batch_size { value: 4 } "
        "batch_timeout_micros { value: 1000 } } } } } } }\n",
        "thread_pool_factory_config_file": "",
    }
    for flag, text in files.items():
        (folder / f"{flag}.txt").write_text(text)
    rest, port, socket_path = free_port(), free_port(), folder / "grpc.sock"
    values = {
        "port": port, "grpc_socket_path": socket_path, "rest_api_port": rest,
        "rest_api_num_threads": 8, "rest_api_timeout_in_ms": 30000,
        "rest_api_enable_cors_support": "true", "enable_batching": "true",
        "allow_version_labels_for_unavailable_models": "false",
        "enable_per_model_batching_parameters": "false",
        "model_config_file_poll_wait_seconds": 0, "model_name": MODEL,
        "model_base_path": DATA / "saved_model_half_plus_two_cpu", "num_load_threads": 2,
        "num_unload_threads": 2, "max_num_load_retries": 1,
        "load_retry_interval_micros": 1000000, "file_system_poll_wait_seconds": 1,
        "flush_filesystem_caches": "true", "tensorflow_session_parallelism": 0,
        "tensorflow_intra_op_parallelism": 1, "tensorflow_inter_op_parallelism": 1,
        "use_alts_credentials": "false", "per_process_gpu_memory_fraction": 0.5,
        "saved_model_tags": "serve", "grpc_channel_arguments": "grpc.max_connection_age_ms=600000",
        "grpc_max_threads": 16, "enable_model_warmup": "true",
        "num_request_iterations_for_warmup": 1, "version": "false",
        "remove_unused_fields_from_bundle_metagraph": "true", "prefer_tflite_model": "false",
        "num_tflite_pools": 2, "num_tflite_interpreters_per_pool": 1,
        "enable_signature_method_name_check": "true", "xla_cpu_compilation_enabled": "false",
        "xla_gpu_compilation_enabled": "false", "enable_profiler": "true",
        "mixed_precision": "bfloat16", "skip_initialize_tpu": "false",
        "enable_grpc_healthcheck_service": "true",
        "enable_serialization_as_tensor_content": "true",
    }  # fmt: skip
    values |= {flag: folder / f"{flag}.txt" for flag in files}
    assert set(values) == {flag.name for flag in tfs_flags.FLAGS}  # all 48, no more
    with Served("--rest_api_host=127.0.0.1", *(f"--{k}={v}" for k, v in values.items())) as served:
        yield served, ca, rest, port, socket_path
    assert served.exit_code == 0


def test_every_tf_serving_flag_at_once_starts_and_serves_rest_over_https_with_cors(every_flag):
    served, ca, rest, _, _ = every_flag
    r = requests.post(
        f"https://127.0.0.1:{rest}/v1/models/{MODEL}:predict",
        json={"instances": [1.0, 2.0]},
        verify=str(ca.cert),
        timeout=60,
    )
    assert (r.status_code, r.json()) == (200, {"predictions": [2.5, 3.0]})
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    page = requests.get(
        f"https://127.0.0.1:{rest}/monitoring/prometheus/metrics", verify=str(ca.cert), timeout=60
    )
    assert page.status_code == 200 and ":tensorflow:cc:saved_model:load_attempt_count" in page.text


def test_every_tf_serving_flag_at_once_serves_grpc_over_tls_on_the_port_and_the_socket(
    every_flag,
):
    _, ca, _, port, socket_path = every_flag
    credentials = grpc.ssl_channel_credentials(ca.cert.read_bytes())
    for target, options in (
        (f"127.0.0.1:{port}", ()),
        # the certificate names localhost and 127.0.0.1, not the socket's path
        (f"unix:{socket_path}", (("grpc.ssl_target_name_override", "localhost"),)),
    ):
        with grpc.secure_channel(target, credentials, options=options) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            response = stub.Predict(predict_request(MODEL, (1.0, 2.0)), timeout=60)
            # --enable_serialization_as_tensor_content: the outputs come as tensor_content
            assert response.outputs["y"].tensor_content and not response.outputs["y"].float_val
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=60
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_every_warned_flag_on_the_line_prints_its_one_warning(every_flag):
    served = every_flag[0]
    text = "".join(served.out.lines)
    # the warned flags given above with a value that changes what TF Serving would do
    for flag in (
        "num_unload_threads",
        "flush_filesystem_caches",
        "remove_unused_fields_from_bundle_metagraph",
        "num_tflite_pools",
        "num_tflite_interpreters_per_pool",
        "enable_profiler",
        "mixed_precision",
    ):
        assert tfs_flags.BY_NAME[flag].disposition == tfs_flags.WARNED
        lines = [line for line in text.splitlines() if "WARNING" in line and f"--{flag}" in line]
        assert len(lines) == 1, (flag, lines)
