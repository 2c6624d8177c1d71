"""Model warmup: replay a version's recorded requests before it becomes AVAILABLE.

Contract (TF Serving's saved_model_warmup{,_util}.cc, session path):
1. The warmup file is `<version_dir>/assets.extra/tf_serving_warmup_requests`, a TFRecord file on
   any TF file system, each record a serialized `tensorflow.serving.PredictionLog`. A missing file
   is not an error: warmup reads 0 records.
2. Records are read and replayed one at a time, in file order. Each record's `predict_log`,
   `classify_log`, `regress_log` or `multi_inference_log` request (only `.request` is used) runs
   `num_request_iterations` times (values <= 0 mean 1) through deployments.replica.tfs_grpc_calls,
   so it takes exactly the path a client request takes. A record with no log type is skipped.
3. `session_run_log` and `predict_streamed_log` fail with UNIMPLEMENTED
   `Unsupported log_type for warmup: <n>`, n being the oneof case number TF Serving prints
   (the field number: 5 and 7).
4. Any failure ends warmup with an AspireError that fails the load: the failing request's own
   error; INVALID_ARGUMENT for an unparsable record or for more than 1000 records (checked after
   each record runs, as TF Serving does, so the 1001st record has run when this is reported);
   DATA_LOSS for a file that is not TFRecord; TF's own code for other I/O errors.
5. Success is logged on logger "aspire.warmup" with the record count and elapsed microseconds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time

from core.errors import CODES, AspireError, invalid_argument, unimplemented
from deployments.replica import tfs_grpc_calls
from deployments.replica.tf_runtime import runtime

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000
_SHOWN_RECORD_BYTES = 64  # TF Serving prints the whole raw record; a log line needs less

logger = logging.getLogger("aspire.warmup")

_REPLAY = {
    "predict_log": tfs_grpc_calls.predict,
    "classify_log": tfs_grpc_calls.classify,
    "regress_log": tfs_grpc_calls.regress,
    "multi_inference_log": tfs_grpc_calls.multi_inference,
}


def _printable(record: bytes) -> str:
    shown = "".join(
        chr(b) if 32 <= b < 127 and b != 92 else f"\\x{b:02x}" for b in record[:_SHOWN_RECORD_BYTES]
    )
    return shown + ("..." if len(record) > _SHOWN_RECORD_BYTES else "")


def _from_tf_error(err) -> AspireError:
    code = CODES[err.error_code] if 0 <= err.error_code < len(CODES) else "UNKNOWN"
    if code == "DATA_LOSS":
        return AspireError(
            f"{err.message}. Please verify your warmup data is in TFRecord format.", code
        )
    return AspireError(err.message, code)


def _records(path: str):
    """The file's records; TF's reader status becomes an AspireError. tf_record_iterator reports
    it as is ("corrupted record at 0 ..."), where TFRecordDataset adds function and op names."""
    tf = runtime(path)
    try:
        yield from tf.tf_record_iterator(path)
    except tf.OpError as err:
        raise _from_tf_error(err) from None


def _replay(model, log, name: str, version: int, iterations: int, check: bool) -> None:
    kind = log.WhichOneof("log_type")
    if kind is None:
        return  # TF Serving's session path ignores a record without a request
    replay = _REPLAY.get(kind)
    if replay is None:
        number = log.DESCRIPTOR.fields_by_name[kind].number
        raise unimplemented(f"Unsupported log_type for warmup: {number}")
    request = getattr(log, kind).request
    for _ in range(iterations):
        replay(model, request, name, version, check=check)


def run_warmup(
    model,
    version_dir: str,
    name: str,
    version: int,
    num_request_iterations: int = 1,
    method_name_check: bool = False,
) -> int:
    """Replay <version_dir>/assets.extra/tf_serving_warmup_requests (TFRecord of serialized
    tensorflow.serving.PredictionLog) against `model` before it becomes AVAILABLE. Returns the
    number of records read (0 when there is no file, logged as 'No warmup data file found at
    <path>'). Raises AspireError with TF Serving's messages and codes, which fail the load.
    `method_name_check`: --enable_signature_method_name_check, which TF Serving applies to the
    warmup's calls too (a process-wide setting there)."""
    from google.protobuf.message import DecodeError
    from tensorflow_serving.apis import prediction_log_pb2

    start = time.monotonic()
    path = os.path.join(version_dir, WARMUP_FILE)
    tf = runtime(path)  # imported on first use: TF takes seconds to import
    try:
        exists = tf.gfile.exists(path)
    except tf.OpError as err:
        raise _from_tf_error(err) from None
    if not exists:
        logger.info("No warmup data file found at %s", path)
        return 0
    iterations = num_request_iterations if num_request_iterations > 0 else 1
    logger.info(
        "Starting to read warmup data for model at %s with num_request_iterations: %d",
        path,
        iterations,
    )
    count = 0
    with contextlib.closing(_records(path)) as records:  # closes the file on failure
        for record in records:
            try:
                log = prediction_log_pb2.PredictionLog.FromString(record)
            except DecodeError:
                raise invalid_argument(
                    f"Failed to parse warmup record: {_printable(record)} from {path}"
                ) from None
            _replay(model, log, name, version, iterations, method_name_check)
            count += 1
            if count > MAX_WARMUP_RECORDS:
                raise invalid_argument(
                    f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {path}"
                )
    elapsed_us = int((time.monotonic() - start) * 1e6)
    logger.info(
        "Finished reading warmup data for model at %s. Number of warmup records read: %d. "
        "Elapsed time (microseconds): %d.",
        path,
        count,
        elapsed_us,
    )
    return count
