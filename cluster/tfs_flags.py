"""TensorFlow Serving's 48 `tensorflow_model_server` flags (ts/model_servers/main.cc), as
`aspire serve` takes them: one table, read by the parser (cluster/flags.py) and by the test that
holds docs/configuration.md's flag table to it.

Every flag takes TF Serving's syntax (`--flag=value`; a bool flag also `--flag`, `--flag=true`,
`--flag=false`) and has one disposition:
- HONOURED: does what it does in TF Serving (or Aspire's equivalent, said in its help);
- WARNED: accepted; given explicitly with a value that would change TF Serving's behaviour
  (`TfsFlag.matters`), it logs one warning line saying what Aspire does instead;
- REFUSED: its `refused` value stops the start with a FlagError; any other value is accepted.
`check(args)` applies the WARNED and REFUSED rules; cluster/flags.py's `validate` calls it.
"""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("aspire")

HONOURED, WARNED, REFUSED = "honoured", "warned", "refused"
GIVEN = "given_flags"  # the Namespace attribute: dests of the TF Serving flags given explicitly


class FlagError(Exception):
    """A flag, or a combination, `aspire serve` refuses at start-up; the message is printed."""


def parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 0..65535, got {value}")
    return value


TYPES: dict[str, Callable[[str], Any]] = {
    "bool": parse_bool,
    "port": parse_port,
    "int": int,
    "float": float,
    "str": str,
}


def _any(_value: Any) -> bool:
    return True


def _true(value: Any) -> bool:
    return value is True


def _nonempty(value: Any) -> bool:
    return bool(value)


@dataclass(frozen=True)
class TfsFlag:
    name: str
    kind: str  # a key of TYPES
    default: Any  # Aspire's default (TF Serving's, except --rest_api_port and --num_load_threads)
    help: str
    disposition: str = HONOURED
    notice: str = ""  # WARNED: the warning; REFUSED: the start-up error
    matters: Callable[[Any], bool] = _any  # WARNED: the given values that log the warning
    refused: Any = None  # REFUSED: the value that is refused


_NO_TFLITE = "Aspire has no TensorFlow Lite runtime and always serves the SavedModel"

FLAGS: tuple[TfsFlag, ...] = (
    TfsFlag("port", "port", 8500, "gRPC port; 0 disables gRPC over TCP"),
    TfsFlag("grpc_socket_path", "str", "", "also serve gRPC on this UNIX socket (unix:<path>)"),
    TfsFlag("rest_api_port", "port", 8501, "REST API port; 0 disables REST"),
    TfsFlag("rest_api_num_threads", "int", 0, "REST worker threads; 0: Aspire's default"),
    TfsFlag("rest_api_timeout_in_ms", "int", 30000, "timeout of one REST call; <= 0 means none"),
    TfsFlag("rest_api_enable_cors_support", "bool", False, "add TF Serving's CORS headers"),
    TfsFlag(
        "enable_batching",
        "bool",
        False,
        "batch concurrent requests to a version (TF Serving's dynamic batching)",
    ),
    TfsFlag(
        "allow_version_labels_for_unavailable_models",
        "bool",
        False,
        "allow new labels to point at versions that are not yet AVAILABLE",
    ),
    TfsFlag(
        "batching_parameters_file",
        "str",
        "",
        "BatchingParameters text file; defaults are TF Serving's",
    ),
    TfsFlag(
        "enable_per_model_batching_parameters",
        "bool",
        False,
        "read batching_params.pbtxt from each version's directory",
    ),
    TfsFlag(
        "model_config_file",
        "str",
        "",
        "text-format ModelServerConfig; overrides --model_name/--model_base_path",
    ),
    TfsFlag(
        "model_config_file_poll_wait_seconds",
        "float",
        0.0,
        "re-read --model_config_file every N seconds; 0 never",
    ),
    TfsFlag("model_name", "str", "default", "name of the model to serve"),
    TfsFlag(
        "model_base_path", "str", "", "directory holding the model's numeric version directories"
    ),
    TfsFlag(
        "num_load_threads",
        "int",
        4,
        "versions loaded concurrently (TF Serving's default 0 means one at a time)",
    ),
    TfsFlag(
        "num_unload_threads",
        "int",
        0,
        "not used: unloads run on the --num_load_threads pool",
        WARNED,
        "--num_unload_threads is not used: Aspire unloads on the --num_load_threads pool, "
        "which runs loads and unloads of different models at once (one at a time per model)",
    ),
    TfsFlag("max_num_load_retries", "int", 5, "retries after a failed load (0: try once)"),
    TfsFlag(
        "load_retry_interval_micros",
        "int",
        60_000_000,
        "wait between load retries, in microseconds",
    ),
    TfsFlag(
        "file_system_poll_wait_seconds",
        "float",
        1.0,
        "seconds between polls of the base path; 0 polls once, < 0 never",
    ),
    TfsFlag(
        "flush_filesystem_caches",
        "bool",
        True,
        "not applied: Aspire never flushes TensorFlow's file-system caches",
        WARNED,
        "--flush_filesystem_caches=true is not applied: Aspire does not flush TensorFlow's "
        "file-system caches after loads; each version loads in replica processes of its own",
        _true,
    ),
    TfsFlag(
        "tensorflow_session_parallelism",
        "int",
        0,
        "threads for each TF session, intra- and inter-op alike (0: TF picks)",
    ),
    TfsFlag(
        "tensorflow_session_config_file",
        "str",
        "",
        "text-format tensorflow.ConfigProto for every version's session",
    ),
    TfsFlag(
        "tensorflow_intra_op_parallelism", "int", 0, "threads that one TF op may use (0: TF picks)"
    ),
    TfsFlag(
        "tensorflow_inter_op_parallelism",
        "int",
        0,
        "TF ops run at once in a session (0: TF picks)",
    ),
    TfsFlag(
        "use_alts_credentials",
        "bool",
        False,
        "refused when true: ALTS needs Google's ALTS handshaker service",
        REFUSED,
        "--use_alts_credentials=true is not supported: ALTS needs Google's ALTS handshaker "
        "service, which Aspire does not run; serve TLS with --ssl_config_file instead",
        refused=True,
    ),
    TfsFlag(
        "ssl_config_file",
        "str",
        "",
        "text-format SSLConfig: TLS on the REST and gRPC ports",
    ),
    TfsFlag(
        "platform_config_file",
        "str",
        "",
        "text-format PlatformConfigMap: its session config and batching replace "
        "--enable_batching and the session flags",
    ),
    TfsFlag(
        "per_process_gpu_memory_fraction",
        "float",
        0.0,
        "share of its GPU's memory each GPU replica's TensorFlow takes and admission books "
        "(0: TF's default)",
    ),
    TfsFlag("saved_model_tags", "str", "serve", "comma-separated MetaGraph tags"),
    TfsFlag(
        "grpc_channel_arguments",
        "str",
        "",
        "gRPC server arguments, name=value,name=value (values that parse as int pass as int)",
    ),
    TfsFlag("grpc_max_threads", "int", 0, "gRPC server threads; 0: Aspire's default"),
    TfsFlag(
        "enable_model_warmup",
        "bool",
        True,
        "replay assets.extra/tf_serving_warmup_requests before AVAILABLE",
    ),
    TfsFlag(
        "num_request_iterations_for_warmup",
        "int",
        0,
        "replays per warmup record (used when > 0; else 1)",
    ),
    TfsFlag("version", "bool", False, "print versions and exit"),
    TfsFlag(
        "monitoring_config_file",
        "str",
        "",
        "TF Serving's MonitoringConfig text file: enables Prometheus metrics on "
        "the REST port at its path (default /monitoring/prometheus/metrics)",
    ),
    TfsFlag(
        "remove_unused_fields_from_bundle_metagraph",
        "bool",
        True,
        "not applied: replicas keep the MetaGraphDef as TensorFlow loads it",
        WARNED,
        "--remove_unused_fields_from_bundle_metagraph=true is not applied: Aspire's replicas "
        "keep each version's MetaGraphDef as TensorFlow loads it",
        _true,
    ),
    TfsFlag(
        "prefer_tflite_model",
        "bool",
        False,
        "refused when true: no TensorFlow Lite runtime",
        REFUSED,
        f"--prefer_tflite_model=true is not supported: {_NO_TFLITE}; export and serve the "
        "SavedModel (saved_model.pb)",
        refused=True,
    ),
    TfsFlag(
        "num_tflite_pools",
        "int",
        0,
        "not used: no TensorFlow Lite runtime",
        WARNED,
        f"--num_tflite_pools is not used: {_NO_TFLITE}",
    ),
    TfsFlag(
        "num_tflite_interpreters_per_pool",
        "int",
        1,
        "not used: no TensorFlow Lite runtime",
        WARNED,
        f"--num_tflite_interpreters_per_pool is not used: {_NO_TFLITE}",
    ),
    TfsFlag(
        "enable_signature_method_name_check",
        "bool",
        False,
        "a Classify/Regress/Predict call must use a signature of its method",
    ),
    TfsFlag(
        "xla_cpu_compilation_enabled",
        "bool",
        False,
        "not applied: replicas leave XLA as TensorFlow has it",
        WARNED,
        "--xla_cpu_compilation_enabled is not applied: Aspire's replicas leave XLA as "
        "TensorFlow has it (functions saved with jit_compile=True compile with XLA)",
    ),
    TfsFlag(
        "xla_gpu_compilation_enabled",
        "bool",
        False,
        "not applied: replicas leave XLA as TensorFlow has it",
        WARNED,
        "--xla_gpu_compilation_enabled is not applied: Aspire's replicas leave XLA as "
        "TensorFlow has it (functions saved with jit_compile=True compile with XLA)",
    ),
    TfsFlag(
        "enable_profiler",
        "bool",
        True,
        "not applied: no profiler service",
        WARNED,
        "--enable_profiler=true is not applied: Aspire's gRPC port serves no TensorFlow "
        "profiler service; profile a replica's process with TensorFlow's or Ray's own tools",
        _true,
    ),
    TfsFlag(
        "thread_pool_factory_config_file",
        "str",
        "",
        "not read: sessions run on TensorFlow's own thread pools",
        WARNED,
        "--thread_pool_factory_config_file is not read: Aspire runs sessions on TensorFlow's "
        "own thread pools, sized by --tensorflow_*_parallelism",
        _nonempty,
    ),
    TfsFlag(
        "mixed_precision",
        "str",
        "",
        "not applied: models run in the precision they were saved in",
        WARNED,
        "--mixed_precision is not applied: Aspire runs each model in the precision it was saved in",
        _nonempty,
    ),
    TfsFlag(
        "skip_initialize_tpu",
        "bool",
        False,
        "not used: Aspire has no TPU support",
        WARNED,
        "--skip_initialize_tpu is not used: Aspire has no TPU support and never initializes "
        "a TPU system",
    ),
    TfsFlag(
        "enable_grpc_healthcheck_service",
        "bool",
        False,
        "serve grpc.health.v1.Health on the gRPC port",
    ),
    TfsFlag(
        "enable_serialization_as_tensor_content",
        "bool",
        False,
        "gRPC Predict outputs as tensor_content bytes",
    ),
)
BY_NAME = {flag.name: flag for flag in FLAGS}


class _Given(argparse.Action):
    """Stores the value and records that the flag was given (warnings need to know)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)
        setattr(namespace, GIVEN, set(getattr(namespace, GIVEN, ())) | {self.dest})


def add_flags(group: argparse._ArgumentGroup) -> None:
    """Every flag of the table, with TF Serving's syntax."""
    for flag in FLAGS:
        options: dict[str, Any] = {"type": TYPES[flag.kind], "help": flag.help}
        if flag.kind == "bool":
            options.update(nargs="?", const=True, metavar="true|false")
        if flag.name == "version":  # also `aspire --version`: not set unless given here
            options["default"] = argparse.SUPPRESS
        else:
            options["default"] = flag.default
        group.add_argument(f"--{flag.name}", action=_Given, **options)


def given(args: argparse.Namespace, name: str) -> bool:
    return name in getattr(args, GIVEN, ())


# Flags TF Serving ignores when --platform_config_file is set (server.cc builds the session
# config and batching from them only without one)
PLATFORM_REPLACES = (
    "enable_batching",
    "batching_parameters_file",
    "enable_per_model_batching_parameters",
    "tensorflow_session_parallelism",
    "tensorflow_intra_op_parallelism",
    "tensorflow_inter_op_parallelism",
    "tensorflow_session_config_file",
    "per_process_gpu_memory_fraction",
)


def check(args: argparse.Namespace) -> None:
    """REFUSED values raise FlagError (TF Serving's wording where it has one); WARNED flags
    given with a value that matters log their line, once each."""
    if args.use_alts_credentials and args.ssl_config_file:
        raise FlagError(
            "Either use_alts_credentials must be false or ssl_config_file must be empty."
        )
    for flag in FLAGS:
        value = getattr(args, flag.name, flag.default)
        if flag.disposition == REFUSED and value == flag.refused:
            raise FlagError(flag.notice)
        if flag.disposition == WARNED and given(args, flag.name) and flag.matters(value):
            log.warning("%s", flag.notice)
    if args.platform_config_file:
        ignored = [f"--{name}" for name in PLATFORM_REPLACES if given(args, name)]
        if ignored:
            log.warning(
                "--platform_config_file is set: %s %s ignored, as in TF Serving; the session "
                "config and batching come from the platform config",
                ", ".join(ignored),
                "is" if len(ignored) == 1 else "are",
            )


_INT = re.compile(r"\s*[+-]?\d+\s*")
_INT32 = range(-(2**31), 2**31)


def parse_channel_arguments(text: str) -> tuple[tuple[str, int | str], ...]:
    """--grpc_channel_arguments: `name=value,name=value`, as TF Serving's parseGrpcChannelArgs
    splits it; a value absl::SimpleAtoi reads as an int (32-bit) is passed as int, else as the
    string. An item without `=` or without a name is a FlagError naming it."""
    if not text:
        return ()
    parsed: list[tuple[str, int | str]] = []
    for item in text.split(","):
        name, equals, value = item.partition("=")
        if not equals or not name:
            raise FlagError(f"--grpc_channel_arguments: {item!r} is not name=value")
        if _INT.fullmatch(value) and int(value) in _INT32:
            parsed.append((name, int(value)))
        else:
            parsed.append((name, value))
    return tuple(parsed)


def unknown_arguments(extra: Sequence[str]) -> None:
    """TF Serving prints `unknown argument: <arg>` and starts anyway; so does `aspire serve`."""
    for arg in extra:
        log.warning("unknown argument: %s", arg)
