"""TF Serving's session files: `--tensorflow_session_config_file`, a text-format
`tensorflow.ConfigProto`, and `--platform_config_file`, a text-format
`tensorflow.serving.PlatformConfigMap`:

    platform_configs {
      key: "tensorflow"
      value {
        source_adapter_config {
          [type.googleapis.com/tensorflow.serving.SavedModelBundleSourceAdapterConfig] {
            legacy_config {
              session_config { gpu_options { per_process_gpu_memory_fraction: 0.5 } }
              batching_parameters { max_batch_size { value: 32 } }
            }
          }
        }
      }
    }

Contract:
1. `load_session_config(path)` -> the ConfigProto, serialized (what ReplicaOptions.session_config
   carries). `with_flag_values(...)` then sets what TF Serving's server.cc always sets from the
   flags: intra- and inter-op threads and the GPU memory fraction.
2. `load_platform_config(path)` -> `PlatformSettings`: the session config and the batching
   parameters (checked as config/batching_config.py checks a --batching_parameters_file) of
   platform "tensorflow"'s SavedModelBundleSourceAdapterConfig.legacy_config, and the fields set
   there that Aspire does not use. A map without "tensorflow", or with another adapter config,
   is refused: Aspire serves TensorFlow SavedModels only.
3. Errors are AspireError with TF's wording: unreadable file -> NOT_FOUND "<file>; <strerror>";
   text that does not parse -> INVALID_ARGUMENT "Invalid protobuf file: '<file>'" followed by
   ": <the parser's line:column message>" (ts/util/proto_util.h).

The ConfigProto class comes from tensorflow.core.protobuf.config_pb2, imported after
core.protos.load(), so TensorFlow's runtime is not imported. tensorflow-serving-api ships
platform_config_pb2 but neither SessionBundleConfig nor SavedModelBundleSourceAdapterConfig: those
are built here, in a private descriptor pool, from ts/servables/tensorflow/
session_bundle_config.proto and saved_model_bundle_source_adapter.proto (field numbers as there),
around the BatchingParameters message config/batching_config.py has.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from types import ModuleType

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf.descriptor import FileDescriptor
from google.protobuf.message import DecodeError, Message

from config.batching_config import (
    BatchingParameters,
    BatchingParametersProto,
    parse_batching_parameters,
)
from config.model_config import read_proto_text
from core import protos
from core.errors import AspireError

TENSORFLOW_PLATFORM = "tensorflow"
ADAPTER_CONFIG = "tensorflow.serving.SavedModelBundleSourceAdapterConfig"
# legacy_config fields Aspire takes from a platform config; any other one set is reported unused
USED_FIELDS = ("session_config", "batching_parameters", "enable_per_model_batching_params")


def _invalid(message: str) -> AspireError:
    return AspireError(message, "INVALID_ARGUMENT")


def _config_pb2() -> ModuleType:
    protos.load()  # TF's proto modules without its runtime (only imports where TF is loaded)
    from tensorflow.core.protobuf import config_pb2

    return config_pb2


def _parse(text: str, message: Message, source: str, pool: object = None) -> None:
    try:
        text_format.Parse(text, message, descriptor_pool=pool)
    except (text_format.ParseError, ValueError) as err:  # ValueError: an enum or int past range
        raise _invalid(f"Invalid protobuf file: '{source}': {err}") from None


# ---- --tensorflow_session_config_file --------------------------------------------------------
def parse_session_config(text: str, source: str = "<string>") -> bytes:
    """The serialized ConfigProto of a text-format one; `source` names it in errors."""
    config = _config_pb2().ConfigProto()
    _parse(text, config, source)
    return config.SerializeToString()


def load_session_config(path: str) -> bytes:
    return parse_session_config(read_proto_text(path), path)


def session_values(serialized: bytes) -> tuple[int, int, float]:
    """(intra-op threads, inter-op threads, GPU memory fraction) of a serialized ConfigProto."""
    config = _config_pb2().ConfigProto.FromString(serialized)
    return (
        config.intra_op_parallelism_threads,
        config.inter_op_parallelism_threads,
        config.gpu_options.per_process_gpu_memory_fraction,
    )


def with_flag_values(
    serialized: bytes, intra_op_threads: int, inter_op_threads: int, gpu_memory_fraction: float
) -> tuple[bytes, list[str]]:
    """The config with what TF Serving's server.cc sets from the flags whatever the file says
    (threads, GPU memory fraction), and the names of the fields whose file value that changed."""
    config = _config_pb2().ConfigProto.FromString(serialized)
    replaced = []
    for name, holder, field, value in (
        ("intra_op_parallelism_threads", config, "intra_op_parallelism_threads", intra_op_threads),
        ("inter_op_parallelism_threads", config, "inter_op_parallelism_threads", inter_op_threads),
        (
            "gpu_options.per_process_gpu_memory_fraction",
            config.gpu_options,
            "per_process_gpu_memory_fraction",
            gpu_memory_fraction,
        ),
    ):
        if getattr(holder, field) != value:
            if getattr(holder, field):
                replaced.append(name)
            setattr(holder, field, value)
    return config.SerializeToString(), replaced


# ---- --platform_config_file ------------------------------------------------------------------
@dataclass(frozen=True)
class PlatformSettings:
    """What Aspire takes from a PlatformConfigMap: platform "tensorflow"'s session config
    (serialized ConfigProto), its batching (None: not batched, as in TF Serving), and
    `unused`: what else the file sets, which Aspire does not use."""

    session_config: bytes = b""
    batching: BatchingParameters | None = None
    per_model_batching: bool = False
    unused: tuple[str, ...] = ()


def _copy_file(pool: descriptor_pool.DescriptorPool, file: FileDescriptor, done: set[str]) -> None:
    """`file` and what it imports, into `pool`."""
    if file.name in done:
        return
    for dependency in file.dependencies:
        _copy_file(pool, dependency, done)
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)
    pool.Add(proto)
    done.add(file.name)


_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {"string": _F.TYPE_STRING, "bool": _F.TYPE_BOOL, "int32": _F.TYPE_INT32,
            "int64": _F.TYPE_INT64, "uint64": _F.TYPE_UINT64}  # fmt: skip


def _add_fields(
    message: descriptor_pb2.DescriptorProto, fields: tuple[tuple[str, int, str], ...]
) -> None:
    """Fields as (name, number, type): a scalar's name, `repeated <type>`, or `.<message>`."""
    for name, number, kind in fields:
        repeated = kind.startswith("repeated ")
        kind = kind.removeprefix("repeated ")
        field = message.field.add(
            name=name,
            number=number,
            label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL,
        )
        if kind.startswith("."):
            field.type, field.type_name = _F.TYPE_MESSAGE, kind
        else:
            field.type = _SCALARS[kind]


_SESSION_BUNDLE_CONFIG = (
    ("session_target", 1, "string"),
    ("session_config", 2, ".tensorflow.ConfigProto"),
    ("batching_parameters", 3, ".tensorflow.serving.BatchingParameters"),
    ("in_graph_batching_parameters", 7, ".tensorflow.BatchingOptions"),
    ("session_run_load_threadpool_index", 4, ".google.protobuf.Int32Value"),
    ("experimental_transient_ram_bytes_during_load", 5, "uint64"),
    ("saved_model_tags", 6, "repeated string"),
    ("experimental_fixed_input_tensors", 778, "repeated .tensorflow.NamedTensorProto"),
    ("enable_model_warmup", 779, "bool"),
    ("model_warmup_options", 780, ".tensorflow.serving.ModelWarmupOptions"),
    ("enable_session_metadata", 781, "bool"),
    ("remove_unused_fields_from_bundle_metagraph", 782, "bool"),
    ("prefer_tflite_model", 783, "bool"),
    ("resource_estimation_uses_validation_result", 784, "bool"),
    ("num_tflite_interpreters", 785, "int32"),
    ("num_tflite_interpreters_per_pool", 786, "int32"),
    ("num_tflite_pools", 787, "int32"),
    ("wrap_session_with_no_threading_params", 788, "bool"),
    ("enable_per_model_batching_params", 789, "bool"),
    ("enable_saved_model_config", 790, "bool"),
    ("mixed_precision", 791, "string"),
)
_MODEL_WARMUP_OPTIONS = (
    ("num_request_iterations", 1, ".google.protobuf.Int32Value"),
    ("num_model_warmup_threads", 2, ".google.protobuf.Int32Value"),
    ("model_name", 3, "string"),
    ("model_version", 4, "int64"),
    ("enable_all_batch_sizes_warmup", 5, "bool"),
)


def _build_session_bundle_config(
    pool: descriptor_pool.DescriptorPool, batching: FileDescriptor, done: set[str]
) -> str:
    """SessionBundleConfig and ModelWarmupOptions (and NamedTensorProto) into `pool`; returns
    the name of their file."""
    from tensorflow.core.framework import tensor_pb2  # loaded by protos.load()

    _copy_file(pool, tensor_pb2.DESCRIPTOR, done)
    named = "tensorflow/core/protobuf/named_tensor.proto"
    if named not in done:
        proto = descriptor_pb2.FileDescriptorProto(
            name=named,
            package="tensorflow",
            syntax="proto3",
            dependency=[tensor_pb2.DESCRIPTOR.name],
        )
        _add_fields(
            proto.message_type.add(name="NamedTensorProto"),
            (("name", 1, "string"), ("tensor", 2, ".tensorflow.TensorProto")),
        )
        pool.Add(proto)
        done.add(named)
    name = "tensorflow_serving/servables/tensorflow/session_bundle_config_message.proto"
    proto = descriptor_pb2.FileDescriptorProto(
        name=name,
        package="tensorflow.serving",
        syntax="proto3",
        dependency=[
            "google/protobuf/wrappers.proto",
            "tensorflow/core/protobuf/config.proto",
            named,
            batching.name,
        ],
    )
    _add_fields(proto.message_type.add(name="ModelWarmupOptions"), _MODEL_WARMUP_OPTIONS)
    _add_fields(proto.message_type.add(name="SessionBundleConfig"), _SESSION_BUNDLE_CONFIG)
    pool.Add(proto)
    return name


@functools.cache
def _adapter_pool() -> descriptor_pool.DescriptorPool:
    """A pool with SavedModelBundleSourceAdapterConfig and everything it holds."""
    from google.protobuf import wrappers_pb2

    pool = descriptor_pool.DescriptorPool()
    done: set[str] = set()
    _copy_file(pool, wrappers_pb2.DESCRIPTOR, done)
    _copy_file(pool, _config_pb2().DESCRIPTOR, done)
    batching = BatchingParametersProto.DESCRIPTOR.file
    _copy_file(pool, batching, done)
    if "SessionBundleConfig" in batching.message_types_by_name:  # the package ships the module
        bundle_file = batching.name
    else:
        bundle_file = _build_session_bundle_config(pool, batching, done)
    proto = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/servables/tensorflow/saved_model_bundle_source_adapter.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=[bundle_file],
    )
    _add_fields(
        proto.message_type.add(name="SavedModelBundleSourceAdapterConfig"),
        (("legacy_config", 1000, ".tensorflow.serving.SessionBundleConfig"),),
    )
    pool.Add(proto)
    return pool


def _adapter_config_class() -> type[Message]:
    return message_factory.GetMessageClass(_adapter_pool().FindMessageTypeByName(ADAPTER_CONFIG))


def parse_platform_config(text: str, source: str = "<string>") -> PlatformSettings:
    """What Aspire takes from the text of a PlatformConfigMap; `source` names it in errors."""
    protos.load()
    from tensorflow_serving.config import platform_config_pb2

    platforms = platform_config_pb2.PlatformConfigMap()
    _parse(text, platforms, source, _adapter_pool())
    unused = [f'platform_configs["{k}"]' for k in platforms.platform_configs if k != "tensorflow"]
    if TENSORFLOW_PLATFORM not in platforms.platform_configs:
        raise _invalid(
            f'{source}: platform_configs has no "{TENSORFLOW_PLATFORM}" platform: Aspire '
            "serves TensorFlow SavedModels only"
        )
    adapter = platforms.platform_configs[TENSORFLOW_PLATFORM].source_adapter_config
    type_name = adapter.type_url.rpartition("/")[2]
    if type_name != ADAPTER_CONFIG:
        raise _invalid(
            f'{source}: platform_configs["{TENSORFLOW_PLATFORM}"] holds '
            f"{type_name or 'no source_adapter_config'}: Aspire serves SavedModels, "
            f"configured by a {ADAPTER_CONFIG}"
        )
    config = _adapter_config_class()()
    try:
        config.ParseFromString(adapter.value)
    except DecodeError as err:
        raise _invalid(f"Invalid protobuf file: '{source}': {ADAPTER_CONFIG}: {err}") from None
    legacy = config.legacy_config
    unused += [
        f"legacy_config.{field.name}"
        for field, _ in legacy.ListFields()
        if field.name not in USED_FIELDS
    ]
    batching = None
    if legacy.HasField("batching_parameters"):
        batching = parse_batching_parameters(
            text_format.MessageToString(legacy.batching_parameters), source
        )
    return PlatformSettings(
        session_config=legacy.session_config.SerializeToString(),
        batching=batching,
        per_model_batching=legacy.enable_per_model_batching_params,
        unused=tuple(unused),
    )


def load_platform_config(path: str) -> PlatformSettings:
    return parse_platform_config(read_proto_text(path), path)
