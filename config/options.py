"""The options each part of a server runs with, as cluster/server_args.py builds them from the
command line: plain dataclasses with units in their names and defaults in place, imported by
the CLI, the manager and the deployments alike, so that no plane imports another to learn one.

- `ServerOptions`: the routers' ports and limits (cluster/launcher.py starts them).
- `HttpLimits`: what one router replica's REST server grants a client connection.
- `ReplicaOptions`: how each version's deployment runs (the manager's backend copies them into
  every version's deployment).
- `BatchingOptions`: TF Serving's batching flags, as a replica applies them.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from core.errors import DEFAULT_MAX_BODY_BYTES

if TYPE_CHECKING:  # imported where it runs, in parameters_for
    from config.batching_config import BatchingParameters


@dataclass(frozen=True)
class HttpLimits:
    """What one router replica's REST server grants a client connection."""

    header_timeout_s: float = 30.0  # to send a request's headers, from connect or request start
    idle_timeout_s: float = 75.0  # a keep-alive connection with no request in flight
    max_connections: int = 10000  # open at once; beyond, 503 and closed


@dataclass(frozen=True)
class BatchingOptions:
    """TF Serving's batching flags: --enable_batching with --batching_parameters_file (already
    parsed into `parameters`), and --enable_per_model_batching_parameters, which reads
    batching_params.pbtxt in each version's directory instead (no file: that version is not
    batched)."""

    parameters: BatchingParameters | None = None
    per_model: bool = False

    def parameters_for(self, version_dir: str) -> BatchingParameters | None:
        if self.per_model:
            from config.batching_config import load_per_model_batching_parameters

            return load_per_model_batching_parameters(version_dir)
        return self.parameters


@dataclass
class ReplicaOptions:
    """How each version's deployment runs: copied into every version's deployment options."""

    num_replicas: int = 1
    num_cpus: float = 0.25
    max_ongoing_requests: int = 64  # per replica (the side file may set it per model)
    # Requests each router holds for a version while all its replicas are full; beyond it the
    # router answers 429 at once instead of letting latency grow without bound. -1: no limit.
    max_queued_requests: int = 1000
    graceful_shutdown_timeout_s: float = 20.0
    # How often Serve looks whether an unloading replica still has requests through its handle.
    # Serve first waits one such period unconditionally (2 s by default, for load balancers to
    # deregister the replica); Aspire's routers have acknowledged the new serving map before a
    # version is deleted, and direct calls drain in the replica itself (__del__), so a short
    # period only ends unloads sooner.
    graceful_shutdown_wait_loop_s: float = 0.25
    # Serve's health check of each replica: a replica that fails (or does not answer in time)
    # REPLICA_HEALTH_CHECK_UNHEALTHY_THRESHOLD = 3 checks in a row is replaced.
    health_check_period_s: float = 5.0
    health_check_timeout_s: float = 30.0
    # Longest a TF session run may take (TF's RunOptions.timeout_in_ms); 0: no limit. The server
    # sets it to --rest_api_timeout_in_ms, so a request the router gave up on (504) stops using
    # a thread and CPU in the replica too.
    run_timeout_ms: int = 0
    tags: tuple[str, ...] = ("serve",)
    enable_model_warmup: bool = True
    num_request_iterations_for_warmup: int = 0  # TF Serving: used only when > 0, else 1
    batching: BatchingOptions | None = None  # None: --enable_batching is off
    # TF session threads (--tensorflow_intra_op_parallelism / _inter_op_; 0: TF picks)
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    tensor_content: bool = False  # --enable_serialization_as_tensor_content
    # --per_process_gpu_memory_fraction: each GPU replica's TensorFlow takes at most this share
    # of its GPU's memory, and admission books that share (0: TF's default, the estimate booked)
    gpu_memory_fraction: float = 0.0
    # A serialized tensorflow.ConfigProto from --tensorflow_session_config_file or
    # --platform_config_file, merged under the replica's own session settings (b"": none)
    session_config: bytes = b""
    # --enable_signature_method_name_check: a call must use its signature's method as TF Serving
    enable_signature_method_name_check: bool = False
    # Shared by routers and replicas: calls on a replica's own service must carry it
    # (deployments/replica/call_service.py). Kept in Serve's arguments in the GCS, like the rest of
    # the cluster's state; "" turns the direct path off (every call takes Serve's handle).
    data_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    # The block one shared host books ("placement": "shared", cluster/host_admission.py): host RAM,
    # and VRAM on one GPU for a GPU host; the versions in the host share it.
    shared_host_ram_bytes: int = 4 * 1024**3
    shared_host_vram_bytes: int = 8 * 1024**3
    # Replicas of each shared host, all on its node (and GPU); each holds every version in it
    shared_host_replicas: int = 1
    extra_actor_options: dict = field(default_factory=dict)


@dataclass
class ServerOptions:
    rest_api_host: str = "0.0.0.0"
    rest_api_port: int = 8501
    grpc_port: int = 8500  # 0: no gRPC API
    enable_grpc_healthcheck_service: bool = False
    rest_api_timeout_in_ms: int = 30000
    rest_api_max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    http_limits: HttpLimits = field(default_factory=HttpLimits)  # slow and idle REST clients
    num_router_replicas: int = 1
    metrics_path: str | None = None  # Prometheus page on the REST port (--monitoring_config_file)
    # Where the routers (and so the REST/gRPC ports) run: EveryNode puts num_router_replicas on
    # each node of the cluster, joining ones included; HeadOnly puts them all on the head node.
    proxy_location: str = "EveryNode"
    # --bind_node_ip: the routers listen on their node's Ray address, not rest_api_host
    bind_node_ip: bool = False
    # SHA-256 hex digests of --auth_token_file's and --admin_token_file's tokens (None: off);
    # never the tokens, which would be checkpointed with the router's arguments in the GCS.
    auth_token_sha256: str | None = None
    admin_token_sha256: str | None = None
    # --ssl_config_file (absolute; the same path on every node): TF Serving's SSLConfig text
    # file. The routers read it themselves, serve TLS on both ports from it, and re-read it when
    # it (or a file it names) changes; the key never travels in Ray's arguments. "": plain.
    ssl_config_file: str = ""
    grpc_socket_path: str = ""  # --grpc_socket_path: gRPC on this UNIX socket too ("": none)
    # --grpc_channel_arguments, parsed: (name, int or str) pairs given to the gRPC server
    grpc_channel_arguments: tuple[tuple[str, int | str], ...] = ()
    grpc_max_threads: int = 0  # --grpc_max_threads (0: the default, 4 x CPUs)
    rest_api_num_threads: int = 0  # --rest_api_num_threads (0: the default, 4 x CPUs)
    enable_cors: bool = False  # --rest_api_enable_cors_support: TF Serving's CORS headers
