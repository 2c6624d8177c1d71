"""`aspire serve`'s flags: TensorFlow Serving's 48 (cluster/tfs_flags.py's table: names,
syntax, defaults, and whether each is honoured, warned about or refused) and Aspire's own; parsed
and validated once, before anything starts (docs/configuration.md has them as tables). A bad
combination raises `FlagError` with the message the command prints; cluster/server_args.py turns
the validated flags into the options the server runs with.
"""

from __future__ import annotations

import argparse
import logging
import os

from cluster.tfs_flags import FlagError, add_flags, check, parse_channel_arguments
from core.errors import DEFAULT_MAX_BODY_BYTES

__all__ = ["FlagError", "build_parser", "session_threads", "token_digests", "validate"]

log = logging.getLogger("aspire")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aspire", description=("A TensorFlow-Serving-compatible model server on Ray Serve.")
    )
    parser.add_argument("--version", action="store_true", help="print versions and exit")
    sub = parser.add_subparsers(dest="command")

    s = sub.add_parser(
        "serve",
        help="serve models (embedded Ray unless --address is given)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,  # TF Serving matches whole names; a prefix is an unknown argument
    )
    add_flags(s.add_argument_group("TensorFlow Serving flags (same names and syntax)"))
    ray_group = s.add_argument_group("Ray flags")
    ray_group.add_argument(
        "--address",
        default=None,
        help="join this Ray cluster ('auto', 'ray://host:10001', 'host:6379') "
        "instead of starting an embedded one",
    )
    ray_group.add_argument(
        "--aspire_config_file",
        default="",
        help="Aspire's JSON side file: per-model version policy, traffic split, replicas",
    )
    ray_group.add_argument(
        "--aspire_config_file_poll_wait_seconds",
        type=float,
        default=1.0,
        help="re-read --aspire_config_file every N seconds; 0 never",
    )
    ray_group.add_argument("--rest_api_host", default="0.0.0.0", help="interface of the REST API")
    ray_group.add_argument(
        "--rest_api_max_body_bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        help="largest REST request body, as sent and once gunzipped; larger "
        "ones get 413 before the body is read (default 64 MiB)",
    )
    ray_group.add_argument(
        "--rest_api_header_timeout_s",
        type=float,
        default=30.0,
        help="close a REST connection (408) whose request headers are not complete this many "
        "seconds after it opened or its request began",
    )
    ray_group.add_argument(
        "--rest_api_idle_timeout_s",
        type=float,
        default=75.0,
        help="close a keep-alive REST connection idle this long",
    )
    ray_group.add_argument(
        "--rest_api_max_connections",
        type=int,
        default=10000,
        help="REST connections one router replica holds open; beyond, 503 and closed",
    )
    ray_group.add_argument("--num_replicas", type=int, default=1, help="replicas per version")
    ray_group.add_argument(
        "--max_ongoing_requests",
        type=int,
        default=64,
        help="requests one version replica runs at once (the side file may set it per model)",
    )
    ray_group.add_argument(
        "--max_queued_requests",
        type=int,
        default=1000,
        help="requests each router holds for a version while its replicas "
        "are full; beyond it 429 at once. -1: no limit",
    )
    ray_group.add_argument(
        "--shared_host_ram",
        default="4GiB",
        help='host RAM one shared host books for the versions of "placement": "shared" models '
        "(a size: 4GiB, 512MiB)",
    )
    ray_group.add_argument(
        "--shared_host_replicas",
        type=int,
        default=1,
        help="replicas of each shared host, on the same node; each holds every version in it",
    )
    ray_group.add_argument(
        "--shared_host_vram",
        default="8GiB",
        help="GPU memory one shared GPU host books on its GPU (with the CUDA context, held once)",
    )
    ray_group.add_argument(
        "--replica_health_check_period_s",
        type=float,
        default=5.0,
        help="Serve checks each version replica this often; 3 failed checks in a row replace it",
    )
    ray_group.add_argument(
        "--replica_health_check_timeout_s",
        type=float,
        default=30.0,
        help="a health check unanswered this long fails (a hung replica is "
        "replaced within about 3 x (period + timeout))",
    )
    ray_group.add_argument(
        "--capacity_wait_s",
        type=float,
        default=0.0,
        help="on a cluster whose Ray autoscaler can add nodes: a version that fits "
        "nowhere asks the autoscaler for room and waits this long for a node (LOADING), "
        "then ends with RESOURCE_EXHAUSTED; 0 refuses at once",
    )
    ray_group.add_argument(
        "--num_cpus_per_replica",
        type=float,
        default=0.25,
        help="Ray CPUs reserved by each version replica",
    )
    ray_group.add_argument(
        "--gpus",
        default=None,
        help="declare each GPU node's GPUs where NVML cannot read them, as "
        "COUNTxSIZE or a list of sizes (2x16GiB, 16GiB,24GiB); the "
        "embedded Ray gets that many logical GPUs. Default: NVML",
    )
    ray_group.add_argument(
        "--num_router_replicas",
        type=int,
        default=1,
        help="router replicas per node (they share the ports)",
    )
    ray_group.add_argument(
        "--proxy_location",
        default="EveryNode",
        choices=("EveryNode", "HeadOnly"),
        help="where the routers that listen on the REST and gRPC ports run: "
        "--num_router_replicas on every node of the cluster, nodes that join "
        "later included (put a load balancer in front), or all on the head node",
    )
    ray_group.add_argument(
        "--bind_node_ip",
        action="store_true",
        help="each node's routers listen on the address Ray knows the node by "
        "(ray start --node-ip-address) instead of --rest_api_host, so that "
        "only the cluster's network reaches the ports on nodes with several",
    )
    ray_group.add_argument(
        "--initial_load_timeout_s",
        type=float,
        default=600.0,
        help="how long to wait for the first versions before reporting ready",
    )
    ray_group.add_argument(
        "--auth_token_file",
        default="",
        help="file holding one bearer token: every REST request and gRPC call "
        "must then send 'Authorization: Bearer <token>' (except GET "
        "/healthz and grpc.health.v1). Default: no authentication",
    )
    ray_group.add_argument(
        "--admin_token_file",
        default="",
        help="file holding the admin token, the only one accepted by "
        "HandleReloadConfigRequest; without it admin calls are refused "
        "while --auth_token_file is set",
    )

    logs = s.add_argument_group("Logs")
    logs.add_argument(
        "--log_level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
        help="the least severe of Aspire's lines the terminal shows (errors from Ray and TF "
        "always show; the rest of their output goes to files in Ray's session log directory)",
    )
    logs.add_argument(
        "--log_format",
        default="text",
        choices=("text", "json"),
        help="json: one JSON object a line (time, level, logger, message, and model, version, "
        "event, duration_s where the line is about one version)",
    )

    st = sub.add_parser("status", help="print models, versions and states")
    st.add_argument("--address", default="auto", help="the Ray cluster Aspire runs on")
    return parser


def validate(args: argparse.Namespace) -> None:
    """Contradictions TF Serving rejects at start-up, with its wording where it has one."""
    if not args.model_base_path and not args.model_config_file:
        raise FlagError(
            "Both server_options.model_base_path and server_options.model_config_file are empty!"
        )
    if args.max_num_load_retries < 0:
        raise FlagError("--max_num_load_retries cannot be negative")
    if args.rest_api_port == 0 and args.port == 0 and not args.grpc_socket_path:
        raise FlagError("--rest_api_port=0 and --port=0 leave no API to serve")
    if args.rest_api_header_timeout_s <= 0 or args.rest_api_idle_timeout_s <= 0:
        raise FlagError("--rest_api_header_timeout_s and --rest_api_idle_timeout_s must be > 0")
    if args.rest_api_max_connections < 1:
        raise FlagError("--rest_api_max_connections must be at least 1")
    if args.enable_grpc_healthcheck_service and args.port == 0 and not args.grpc_socket_path:
        raise FlagError(
            "--enable_grpc_healthcheck_service needs the gRPC API (--port != 0 or "
            "--grpc_socket_path)"
        )
    if args.port != 0 and args.port == args.rest_api_port:
        raise FlagError(
            "server_options.http_port cannot be same as grpc_port. Please use a "
            "different port for HTTP/REST API."
        )
    if args.num_replicas < 1 or args.num_router_replicas < 1:
        raise FlagError("--num_replicas and --num_router_replicas must be at least 1")
    if args.rest_api_max_body_bytes < 1:
        raise FlagError("--rest_api_max_body_bytes must be at least 1")
    if args.num_cpus_per_replica < 0:
        raise FlagError("--num_cpus_per_replica cannot be negative")
    if args.capacity_wait_s < 0:
        raise FlagError("--capacity_wait_s cannot be negative")
    if args.capacity_wait_s > 0 and args.num_cpus_per_replica == 0:
        raise FlagError(
            "--capacity_wait_s needs --num_cpus_per_replica above 0: Ray's autoscaler removes "
            "a node whose Ray resources are all free, and replicas that book none would not "
            "keep theirs"
        )
    if not args.model_config_file:
        from core.errors import AspireError
        from core.names import check_name

        try:
            check_name(args.model_name, "--model_name")
        except AspireError as err:
            raise FlagError(err.message) from None
    if args.max_ongoing_requests < 1:
        raise FlagError("--max_ongoing_requests must be at least 1")
    if args.replica_health_check_period_s <= 0 or args.replica_health_check_timeout_s <= 0:
        raise FlagError(
            "--replica_health_check_period_s and --replica_health_check_timeout_s "
            "must be greater than 0"
        )
    if args.max_queued_requests < -1:
        raise FlagError("--max_queued_requests must be at least 0, or -1 for no limit")
    from core.units import parse_bytes

    if args.shared_host_replicas < 1:
        raise FlagError("--shared_host_replicas must be at least 1")
    for flag in ("shared_host_ram", "shared_host_vram"):
        try:
            if parse_bytes(getattr(args, flag)) <= 0:
                raise ValueError("must be more than 0")
        except ValueError as err:
            raise FlagError(f"--{flag}: {err}") from None
    if args.gpus is not None:
        from cluster.inventory import declared_inventory

        try:
            declared_inventory(args.gpus, "node")
        except ValueError as err:
            raise FlagError(f"--gpus: {err}") from None
    if args.num_load_threads < 0:
        raise FlagError("--num_load_threads cannot be negative")
    if (
        not args.platform_config_file  # which replaces these flags (TF Serving checks them only
        and args.tensorflow_intra_op_parallelism > 0  # without one)
        and args.tensorflow_inter_op_parallelism > 0
        and args.tensorflow_session_parallelism > 0
    ):
        raise FlagError(
            "Either configure server_options.tensorflow_session_parallelism or "
            "(server_options.tensorflow_intra_op_parallelism, "
            "server_options.tensorflow_inter_op_parallelism) separately. You cannot "
            "configure all."
        )
    if not args.platform_config_file and args.batching_parameters_file and not args.enable_batching:
        raise FlagError(  # server.cc, where no --platform_config_file replaces the flags
            "server_options.batching_parameters_file is set without setting "
            "server_options.enable_batching to true."
        )
    _validate_tfs_flags(args)
    if (
        args.model_base_path
        and "://" not in args.model_base_path
        and not os.path.isdir(args.model_base_path)
    ):
        log.warning(
            "--model_base_path %s does not exist (yet); it will be polled", args.model_base_path
        )
    if not args.auth_token_file and args.rest_api_host not in ("127.0.0.1", "::1", "localhost"):
        log.warning(
            "serving on %s without --auth_token_file: whoever reaches the REST and gRPC "
            "ports can call every model",
            args.rest_api_host,
        )


def _validate_tfs_flags(args: argparse.Namespace) -> None:
    """The TF Serving flags Aspire added to the first 25: refusals, warnings and values."""
    check(args)
    if not 0.0 <= args.per_process_gpu_memory_fraction <= 1.0:
        raise FlagError(
            "--per_process_gpu_memory_fraction must be between 0.0 and 1.0, got "
            f"{args.per_process_gpu_memory_fraction}"
        )
    for flag in ("rest_api_num_threads", "grpc_max_threads", "num_unload_threads"):
        if getattr(args, flag) < 0:
            raise FlagError(f"--{flag} cannot be negative")
    parse_channel_arguments(args.grpc_channel_arguments)
    if args.ssl_config_file:
        from config.ssl_config import SslConfigError, load_ssl_config

        try:
            load_ssl_config(os.path.abspath(args.ssl_config_file))
        except SslConfigError as err:
            raise FlagError(f"--ssl_config_file: {err}") from None


def token_digests(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """SHA-256 digests of the --auth_token_file and --admin_token_file tokens (None where not
    set); the tokens themselves go no further than this process (deployments/router/auth.py)."""
    from config.tokens import TokenFileError, digest, read_token

    if args.admin_token_file and not args.auth_token_file:
        raise FlagError(
            "--admin_token_file needs --auth_token_file: without it nothing is authenticated"
        )
    tokens = {}
    for flag in ("auth_token_file", "admin_token_file"):
        path = getattr(args, flag)
        if path:
            try:
                tokens[flag] = read_token(path)
            except TokenFileError as err:
                raise FlagError(f"--{flag}: {err}") from None
    if (
        tokens.get("admin_token_file") is not None
        and tokens["admin_token_file"] == tokens["auth_token_file"]
    ):
        raise FlagError("--admin_token_file must hold a different token from --auth_token_file")
    auth, admin = (
        digest(tokens[f]) if f in tokens else None for f in ("auth_token_file", "admin_token_file")
    )
    return auth, admin


def session_threads(args: argparse.Namespace) -> tuple[int, int]:
    """(intra-op, inter-op) threads of every TF session, resolved as TF Serving does: the two
    specific flags if either is set, else --tensorflow_session_parallelism for both."""
    if args.tensorflow_intra_op_parallelism > 0 or args.tensorflow_inter_op_parallelism > 0:
        return args.tensorflow_intra_op_parallelism, args.tensorflow_inter_op_parallelism
    return args.tensorflow_session_parallelism, args.tensorflow_session_parallelism
