"""`aspire serve`'s validated flags -> what the server runs with: the manager's `ManagerConfig`
(models, labels, lifecycle, and the `ReplicaOptions` of every version) and the routers'
`ServerOptions`. Reads the files the flags name (model config, side file, monitoring, batching,
session and platform configs); a file that is unreadable or does not parse raises AspireError,
which `serve` reports as TF Serving does ("Failed to start server. Error: ...", exit 255).
Imports no Ray: the options are plain dataclasses, built before Ray starts.
"""

from __future__ import annotations

import argparse
import logging
import os

from cluster.control_plane import ManagerConfig
from cluster.flags import session_threads
from cluster.tfs_flags import parse_channel_arguments
from config.model_config import ModelSource
from config.options import BatchingOptions, HttpLimits, ReplicaOptions, ServerOptions
from core.errors import AspireError
from core.units import parse_bytes

log = logging.getLogger("aspire")


def models_and_labels(
    args: argparse.Namespace,
) -> tuple[list[ModelSource], dict[str, dict[str, int]]]:
    """The served models and labels: from --model_config_file, else the single-model flags.
    At start-up nothing is loaded yet, so a label is accepted only with
    --allow_version_labels_for_unavailable_models (TF Serving's rule)."""
    from config.model_config import labels_from_config, models_from_config, read_config_file

    if not args.model_config_file:
        base_path = args.model_base_path
        if "://" not in base_path:
            base_path = os.path.abspath(base_path)  # actors run in other working directories
        return [ModelSource(args.model_name, base_path)], {}
    if args.model_base_path:
        log.warning("--model_config_file is set: --model_name and --model_base_path are ignored")
    server_config = read_config_file(args.model_config_file)
    models, labels = models_from_config(server_config), labels_from_config(server_config)
    if not args.allow_version_labels_for_unavailable_models:
        for name, mapping in labels.items():
            for version in mapping.values():
                raise AspireError(
                    f"Request to assign label to version {version} of model {name}, which is not "
                    "currently available for inference",
                    "FAILED_PRECONDITION",
                )
    return models, labels


def _flag_batching(args: argparse.Namespace) -> BatchingOptions | None:
    if not args.enable_batching:
        return None
    from config.batching_config import load_batching_parameters

    return BatchingOptions(
        load_batching_parameters(args.batching_parameters_file or None),
        args.enable_per_model_batching_parameters,
    )


def _platform_session(
    args: argparse.Namespace,
) -> tuple[bytes, int, int, float, BatchingOptions | None]:
    """--platform_config_file: its session config and batching replace the flags' (TF Serving)."""
    from config.session_config import load_platform_config, session_values

    platform = load_platform_config(args.platform_config_file)
    if platform.unused:
        log.warning(
            "--platform_config_file: %s %s not used: Aspire takes the session config and "
            "batching from it, and the rest from its flags",
            ", ".join(platform.unused),
            "is" if len(platform.unused) == 1 else "are",
        )
    intra, inter, fraction = session_values(platform.session_config)
    if not 0.0 <= fraction <= 1.0:
        raise AspireError(
            f"{args.platform_config_file}: per_process_gpu_memory_fraction must be between "
            f"0.0 and 1.0, got {fraction}",
            "INVALID_ARGUMENT",
        )
    batching = None
    if platform.batching is not None:
        batching = BatchingOptions(platform.batching, platform.per_model_batching)
    return platform.session_config, intra, inter, fraction, batching


def session_and_batching(
    args: argparse.Namespace,
) -> tuple[bytes, int, int, float, BatchingOptions | None]:
    """(serialized ConfigProto or b"", intra-op threads, inter-op threads, GPU memory fraction,
    batching) of every version, resolved as TF Serving's server.cc does."""
    if args.platform_config_file:
        return _platform_session(args)
    intra, inter = session_threads(args)
    fraction = args.per_process_gpu_memory_fraction
    session = b""
    if args.tensorflow_session_config_file:
        from config.session_config import load_session_config, with_flag_values

        session, replaced = with_flag_values(
            load_session_config(args.tensorflow_session_config_file), intra, inter, fraction
        )
        if replaced:
            log.warning(
                "--tensorflow_session_config_file: %s replaced by the flags' values (threads: "
                "--tensorflow_*_parallelism, memory: --per_process_gpu_memory_fraction), as in "
                "TF Serving",
                ", ".join(replaced),
            )
    return session, intra, inter, fraction, _flag_batching(args)


def _abspath(path: str) -> str:
    return os.path.abspath(path) if path else ""  # actors run in other working directories


def replica_options(args: argparse.Namespace) -> ReplicaOptions:
    session, intra, inter, fraction, batching = session_and_batching(args)
    return ReplicaOptions(
        num_replicas=args.num_replicas,
        num_cpus=args.num_cpus_per_replica,
        tags=tuple(t for t in args.saved_model_tags.split(",") if t),
        enable_model_warmup=args.enable_model_warmup,
        batching=batching,
        intra_op_threads=intra,
        inter_op_threads=inter,
        num_request_iterations_for_warmup=args.num_request_iterations_for_warmup,
        max_ongoing_requests=args.max_ongoing_requests,
        max_queued_requests=args.max_queued_requests,
        health_check_period_s=args.replica_health_check_period_s,
        health_check_timeout_s=args.replica_health_check_timeout_s,
        run_timeout_ms=max(0, args.rest_api_timeout_in_ms),
        tensor_content=args.enable_serialization_as_tensor_content,
        gpu_memory_fraction=fraction,
        session_config=session,
        enable_signature_method_name_check=args.enable_signature_method_name_check,
        shared_host_ram_bytes=parse_bytes(args.shared_host_ram),
        shared_host_vram_bytes=parse_bytes(args.shared_host_vram),
        shared_host_replicas=args.shared_host_replicas,
    )


def manager_config(args: argparse.Namespace) -> ManagerConfig:
    """Raises AspireError for a file that cannot be read or used."""
    from config.aspire_config import load_aspire_config

    models, labels = models_and_labels(args)
    settings = load_aspire_config(args.aspire_config_file) if args.aspire_config_file else {}
    return ManagerConfig(
        models=models,
        labels=labels,
        poll_wait_s=args.file_system_poll_wait_seconds,
        num_load_threads=max(1, args.num_load_threads),
        max_num_load_retries=args.max_num_load_retries,
        load_retry_interval_s=max(0, args.load_retry_interval_micros) / 1e6,
        allow_version_labels_for_unavailable_models=args.allow_version_labels_for_unavailable_models,
        model_config_file=_abspath(args.model_config_file) or None,
        model_config_file_poll_wait_s=args.model_config_file_poll_wait_seconds,
        aspire_config_file=_abspath(args.aspire_config_file) or None,
        aspire_config_file_poll_wait_s=args.aspire_config_file_poll_wait_seconds,
        settings=settings,
        gpus=args.gpus,
        capacity_wait_s=args.capacity_wait_s,
        replica=replica_options(args),
    )


def server_options(
    args: argparse.Namespace, auth_digest: str | None = None, admin_digest: str | None = None
) -> ServerOptions:
    """Raises AspireError for a monitoring config that cannot be read."""
    from config.monitoring_config import load_monitoring_config

    monitoring = load_monitoring_config(args.monitoring_config_file)
    return ServerOptions(
        rest_api_host=args.rest_api_host,
        rest_api_port=args.rest_api_port,
        grpc_port=args.port,
        enable_grpc_healthcheck_service=args.enable_grpc_healthcheck_service,
        rest_api_timeout_in_ms=args.rest_api_timeout_in_ms,
        rest_api_max_body_bytes=args.rest_api_max_body_bytes,
        http_limits=HttpLimits(
            header_timeout_s=args.rest_api_header_timeout_s,
            idle_timeout_s=args.rest_api_idle_timeout_s,
            max_connections=args.rest_api_max_connections,
        ),
        num_router_replicas=args.num_router_replicas,
        metrics_path=monitoring.path if monitoring.enabled else None,
        proxy_location=args.proxy_location,
        bind_node_ip=args.bind_node_ip,
        auth_token_sha256=auth_digest,
        admin_token_sha256=admin_digest,
        ssl_config_file=_abspath(args.ssl_config_file),
        grpc_socket_path=_abspath(args.grpc_socket_path),
        grpc_channel_arguments=parse_channel_arguments(args.grpc_channel_arguments),
        grpc_max_threads=args.grpc_max_threads,
        rest_api_num_threads=args.rest_api_num_threads,
        enable_cors=args.rest_api_enable_cors_support,
    )
