"""TF Serving's `--batching_parameters_file`: a text-format `tensorflow.serving.BatchingParameters`.

    max_batch_size { value: 128 }
    batch_timeout_micros { value: 0 }
    max_enqueued_batches { value: 1000000 }
    num_batch_threads { value: 8 }
    allowed_batch_sizes: 32
    allowed_batch_sizes: 128

Contract:
1. `load_batching_parameters(file)` -> frozen `BatchingParameters`; every field left out of the file
   takes TF Serving's default (see the table on the class). With no file (None or ""), TF Serving's
   server.cc only names the thread pool "model_server_batch_threads"; so does this.
2. `load_per_model_batching_parameters(version_dir)` reads `batching_params.pbtxt` inside a
   SavedModel directory (`--enable_per_model_batching_parameters`); None when the file is absent,
   which in TF Serving means that version is served without batching (bundle_factory_util.cc).
3. Errors are AspireError with TF's own wording: unreadable file -> NOT_FOUND "<file>; <strerror>";
   text that does not parse -> INVALID_ARGUMENT "Invalid protobuf file: '<file>'"
   (ts/util/proto_util.h) followed by ": <parser message>" (TF logs the parser's message
   separately; we append it); values TF rejects -> INVALID_ARGUMENT with the message of the TF check
   that rejects them (see `_validate`). TF runs those checks when a model is loaded; here they run
   when the file is read, so a bad file stops the server at startup instead of failing every load.

The message class comes from `tensorflow_serving.servables.tensorflow.session_bundle_config_pb2`
when the installed package ships it (tensorflow-serving-api 2.21 does not); otherwise it is built,
in a private descriptor pool, from the BatchingParameters message of
ts/servables/tensorflow/session_bundle_config.proto (field numbers 1-9 as there).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    text_format,
    wrappers_pb2,
)
from google.protobuf.message import Message

from config.model_config import read_proto_text
from core.errors import AspireError

PER_MODEL_FILENAME = "batching_params.pbtxt"  # bundle_factory_util.cc kBatchingParamsFilename
SERVER_THREAD_POOL_NAME = "model_server_batch_threads"  # server.cc, when no file is given


@dataclass(frozen=True)
class BatchingParameters:
    """Batching options, with TF Serving's defaults for fields the file leaves out.

    | field | default | where the default comes from |
    |---|---|---|
    | max_batch_size | 1000 | SharedBatchScheduler::QueueOptions::input_batch_size_limit |
    | batch_timeout_micros | 0 | QueueOptions::batch_timeout_micros |
    | max_enqueued_batches | 10 | QueueOptions (0 becomes 1 in AddQueue when not splitting) |
    | num_batch_threads | None: port::MaxParallelism() | SharedBatchScheduler::Options |
    | thread_pool_name | "batch_threads" | SharedBatchScheduler::Options (a metrics label) |
    | enable_large_batch_splitting | False | BoolValue unset -> not set in GetQueueOptions |
    | max_execution_batch_size | None: max_batch_size | GetQueueOptions (read when splitting) |
    | allowed_batch_sizes | (): no padding | BatchingSessionOptions |
    | pad_variable_length_inputs | False | BatchingSessionOptions |
    """

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int | None = None
    thread_pool_name: str = "batch_threads"
    enable_large_batch_splitting: bool = False
    max_execution_batch_size: int | None = None
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False

    @property
    def execution_batch_size(self) -> int:
        """Largest batch run: max_execution_batch_size when splitting, else max_batch_size."""
        if self.enable_large_batch_splitting and self.max_execution_batch_size is not None:
            return self.max_execution_batch_size
        return self.max_batch_size

    def batch_threads(self) -> int:
        """num_batch_threads, or port::MaxParallelism() (the CPUs this process may use) if unset."""
        if self.num_batch_threads is not None:
            return self.num_batch_threads
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not Linux
            return os.cpu_count() or 1


def _batching_parameters_class() -> type[Message]:
    try:
        from tensorflow_serving.servables.tensorflow import session_bundle_config_pb2

        return session_bundle_config_pb2.BatchingParameters
    except ImportError:
        pass
    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    proto = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/servables/tensorflow/session_bundle_config.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    F = descriptor_pb2.FieldDescriptorProto
    message = proto.message_type.add(name="BatchingParameters")
    for name, number, wrapper in (
        ("max_batch_size", 1, "Int64Value"),
        ("batch_timeout_micros", 2, "Int64Value"),
        ("max_enqueued_batches", 3, "Int64Value"),
        ("num_batch_threads", 4, "Int64Value"),
        ("thread_pool_name", 5, "StringValue"),
        ("enable_large_batch_splitting", 8, "BoolValue"),
        ("max_execution_batch_size", 9, "Int64Value"),
    ):
        message.field.add(
            name=name,
            number=number,
            type=F.TYPE_MESSAGE,
            label=F.LABEL_OPTIONAL,
            type_name=f".google.protobuf.{wrapper}",
        )
    message.field.add(
        name="allowed_batch_sizes", number=6, type=F.TYPE_INT64, label=F.LABEL_REPEATED
    )
    message.field.add(
        name="pad_variable_length_inputs", number=7, type=F.TYPE_BOOL, label=F.LABEL_OPTIONAL
    )
    pool.Add(proto)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters")
    )


BatchingParametersProto = _batching_parameters_class()

_WRAPPED = (
    "max_batch_size",
    "batch_timeout_micros",
    "max_enqueued_batches",
    "num_batch_threads",
    "thread_pool_name",
    "enable_large_batch_splitting",
    "max_execution_batch_size",
)


def _invalid(message: str) -> AspireError:
    return AspireError(message, "INVALID_ARGUMENT")


def _validate(p: BatchingParameters) -> BatchingParameters:
    """TF's checks, in the order a model load meets them; returns `p` with TF's rewrites applied.

    TF keeps max_batch_size and max_enqueued_batches in size_t, so a negative value would wrap to a
    huge limit there; here it is refused with the same "must be positive" message.
    """
    if p.num_batch_threads is not None and p.num_batch_threads < 1:  # SharedBatchScheduler::Create
        raise _invalid(f"num_batch_threads must be positive; was {p.num_batch_threads}")
    if p.allowed_batch_sizes:
        # batching_session.cc CreateBasicBatchingSession (the model server's path does not check
        # this; the proto's comment requires it).
        if any(
            b <= a for a, b in zip(p.allowed_batch_sizes, p.allowed_batch_sizes[1:], strict=False)
        ):
            raise _invalid("allowed_batch_sizes entries must be monotonically increasing")
        last = p.allowed_batch_sizes[-1]
        if last != p.max_batch_size:  # bundle_factory_util.cc WrapSessionForBatching
            raise _invalid(
                "Last entry in allowed_batch_sizes must match max_batch_size; last "
                f"entry was {last}; expected {p.max_batch_size}"
            )
    max_enqueued = p.max_enqueued_batches
    if max_enqueued == 0 and not p.enable_large_batch_splitting:
        max_enqueued = 1  # SharedBatchScheduler::AddQueue keeps old low-QPS configs working
    # SharedBatchScheduler::AddQueueAfterRewritingOptions
    if p.max_batch_size <= 0:
        raise _invalid(f"input_batch_size_limit must be positive; was {p.max_batch_size}")
    if p.batch_timeout_micros < 0:
        raise _invalid(f"batch_timeout_micros must be non-negative; was {p.batch_timeout_micros}")
    if max_enqueued <= 0:
        raise _invalid(f"max_enqueued_batches must be positive; was {max_enqueued}")
    max_execution = p.max_execution_batch_size
    if p.enable_large_batch_splitting:
        if max_execution is None:
            max_execution = p.max_batch_size
        if max_execution <= 0:
            raise _invalid(f"max_execution_batch_size must be positive; was {max_execution}")
        if p.max_batch_size < max_execution:
            # errors::InvalidArgument StrCat's the three values after the sentence, unseparated.
            raise _invalid(
                "When enable_large_batch_splitting is true, input_batch_size_limit "
                "must be greater than or equal to max_execution_batch_size."
                f"1{p.max_batch_size}{max_execution}"
            )
    return BatchingParameters(
        max_batch_size=p.max_batch_size,
        batch_timeout_micros=p.batch_timeout_micros,
        max_enqueued_batches=max_enqueued,
        num_batch_threads=p.num_batch_threads,
        thread_pool_name=p.thread_pool_name,
        enable_large_batch_splitting=p.enable_large_batch_splitting,
        max_execution_batch_size=max_execution,
        allowed_batch_sizes=p.allowed_batch_sizes,
        pad_variable_length_inputs=p.pad_variable_length_inputs,
    )


def parse_batching_parameters(text: str, source: str = "<string>") -> BatchingParameters:
    """Parameters from the text of a BatchingParameters; `source` names it in error messages."""
    proto = BatchingParametersProto()
    try:
        text_format.Parse(text, proto)
    except text_format.ParseError as err:
        raise _invalid(f"Invalid protobuf file: '{source}': {err}") from None
    values = {name: getattr(proto, name).value for name in _WRAPPED if proto.HasField(name)}
    return _validate(
        BatchingParameters(
            **values,
            allowed_batch_sizes=tuple(proto.allowed_batch_sizes),
            pad_variable_length_inputs=proto.pad_variable_length_inputs,
        )
    )


def load_batching_parameters(file: str | None) -> BatchingParameters:
    """Parameters from `--batching_parameters_file`, for a server started with --enable_batching.

    No file (None or "") gives the defaults with the thread pool TF Serving's server.cc names.
    """
    if not file:
        return BatchingParameters(thread_pool_name=SERVER_THREAD_POOL_NAME)
    return parse_batching_parameters(read_proto_text(file), file)


def load_per_model_batching_parameters(version_dir: str) -> BatchingParameters | None:
    """`<version_dir>/batching_params.pbtxt`, or None when the version has none (no batching)."""
    path = os.path.join(version_dir, PER_MODEL_FILENAME)
    if not os.path.exists(path):
        return None
    return parse_batching_parameters(read_proto_text(path), path)
