"""config.batching_config: --batching_parameters_file and per-model batching_params.pbtxt."""

import os

import pytest

from config.batching_config import (
    BatchingParameters,
    load_batching_parameters,
    load_per_model_batching_parameters,
    parse_batching_parameters,
)
from core.errors import AspireError

# ts/servables/tensorflow/testdata/batching_config.txt
TF_SERVING_FIXTURE = """max_batch_size { value: 128 }
batch_timeout_micros { value: 0 }
max_enqueued_batches { value: 1000000 }
num_batch_threads { value: 8 }
"""


def test_defaults_are_tf_servings():
    p = BatchingParameters()
    assert (p.max_batch_size, p.batch_timeout_micros, p.max_enqueued_batches) == (1000, 0, 10)
    assert p.num_batch_threads is None and p.batch_threads() >= 1  # port::MaxParallelism()
    assert p.thread_pool_name == "batch_threads"
    assert (p.allowed_batch_sizes, p.pad_variable_length_inputs) == ((), False)
    assert (p.enable_large_batch_splitting, p.execution_batch_size) == (False, 1000)


def test_empty_file_gives_defaults():
    assert parse_batching_parameters("") == BatchingParameters()


def test_no_file_names_the_model_server_thread_pool():
    assert load_batching_parameters(None) == BatchingParameters(
        thread_pool_name="model_server_batch_threads"
    )
    assert load_batching_parameters("") == load_batching_parameters(None)


def test_tf_serving_fixture(tmp_path):
    path = tmp_path / "batching_config.txt"
    path.write_text(TF_SERVING_FIXTURE)
    assert load_batching_parameters(str(path)) == BatchingParameters(
        max_batch_size=128,
        batch_timeout_micros=0,
        max_enqueued_batches=1000000,
        num_batch_threads=8,
    )


def test_every_field_is_read():
    p = parse_batching_parameters("""
        max_batch_size { value: 64 }
        batch_timeout_micros { value: 5000 }
        max_enqueued_batches { value: 3 }
        num_batch_threads { value: 2 }
        thread_pool_name { value: "pool" }
        enable_large_batch_splitting { value: true }
        max_execution_batch_size { value: 32 }
        allowed_batch_sizes: 8
        allowed_batch_sizes: [16, 64]
        pad_variable_length_inputs: true
    """)
    assert p == BatchingParameters(64, 5000, 3, 2, "pool", True, 32, (8, 16, 64), True)
    assert p.execution_batch_size == 32 and p.batch_threads() == 2


def test_parameters_are_frozen():
    with pytest.raises(AttributeError):
        BatchingParameters().max_batch_size = 1


def test_max_execution_batch_size_only_counts_when_splitting():
    # GetQueueOptions reads max_execution_batch_size only with splitting on, else max_batch_size.
    p = parse_batching_parameters(
        "max_batch_size { value: 8 } max_execution_batch_size { value: 4 }"
    )
    assert p.execution_batch_size == 8
    p = parse_batching_parameters(
        "max_batch_size { value: 8 } enable_large_batch_splitting { value: true }"
    )
    assert p.max_execution_batch_size == 8 and p.execution_batch_size == 8


def test_zero_max_enqueued_batches_means_one_without_splitting():
    # SharedBatchScheduler::AddQueue rewrites 0 to 1 for old low-QPS configs.
    assert parse_batching_parameters("max_enqueued_batches { value: 0 }").max_enqueued_batches == 1


@pytest.mark.parametrize(
    "text, message",
    [
        ("num_batch_threads { value: 0 }", "num_batch_threads must be positive; was 0"),
        ("max_batch_size { value: 0 }", "input_batch_size_limit must be positive; was 0"),
        ("max_batch_size { value: -4 }", "input_batch_size_limit must be positive; was -4"),
        ("batch_timeout_micros { value: -1 }", "batch_timeout_micros must be non-negative; was -1"),
        ("max_enqueued_batches { value: -2 }", "max_enqueued_batches must be positive; was -2"),
        (
            "max_enqueued_batches { value: 0 } enable_large_batch_splitting { value: true }",
            "max_enqueued_batches must be positive; was 0",
        ),
        (
            "max_batch_size { value: 8 } allowed_batch_sizes: [2, 4]",
            "Last entry in allowed_batch_sizes must match max_batch_size; "
            "last entry was 4; expected 8",
        ),
        (
            "allowed_batch_sizes: [2, 4]",  # max_batch_size unset: the 1000 default is expected
            "Last entry in allowed_batch_sizes must match max_batch_size; last entry was 4; "
            "expected 1000",
        ),
        (
            "max_batch_size { value: 8 } allowed_batch_sizes: [4, 2, 8]",
            "allowed_batch_sizes entries must be monotonically increasing",
        ),
        (
            "max_batch_size { value: 8 } allowed_batch_sizes: [4, 4, 8]",
            "allowed_batch_sizes entries must be monotonically increasing",
        ),
        (
            "max_batch_size { value: 8 } max_execution_batch_size { value: 16 } "
            "enable_large_batch_splitting { value: true }",
            "When enable_large_batch_splitting is true, input_batch_size_limit must be "
            "greater than or equal to max_execution_batch_size.1816",
        ),
    ],
)
def test_values_tf_rejects(text, message):
    with pytest.raises(AspireError) as err:
        parse_batching_parameters(text)
    assert (err.value.code, err.value.message) == ("INVALID_ARGUMENT", message)


@pytest.mark.parametrize(
    "text, parser_says",
    [
        ("max_batch_size: 128", 'Expected "{"'),  # the fields are wrapper messages
        ("max_batch_size { value: 1.5 }", "Couldn't parse integer"),
        ("batch_size { value: 1 }", 'no field named "batch_size"'),
        ("max_batch_size { value: 1", "Expected"),
    ],
)
def test_malformed_files(tmp_path, text, parser_says):
    path = tmp_path / "batching.txt"
    path.write_text(text)
    with pytest.raises(AspireError) as err:
        load_batching_parameters(str(path))
    assert err.value.code == "INVALID_ARGUMENT"
    assert err.value.message.startswith(f"Invalid protobuf file: '{path}'")
    assert parser_says in err.value.message


def test_missing_file_is_not_found(tmp_path):
    path = tmp_path / "absent.txt"
    with pytest.raises(AspireError) as err:
        load_batching_parameters(str(path))
    assert err.value.code == "NOT_FOUND"
    assert err.value.message == f"{path}; No such file or directory"


def test_per_model_file_is_read_from_the_version_dir(tmp_path):
    (tmp_path / "batching_params.pbtxt").write_text("max_batch_size { value: 16 }")
    assert load_per_model_batching_parameters(str(tmp_path)) == BatchingParameters(
        max_batch_size=16
    )


def test_no_per_model_file_means_no_batching(tmp_path):
    assert load_per_model_batching_parameters(str(tmp_path)) is None


def test_bad_per_model_file_names_the_file(tmp_path):
    (tmp_path / "batching_params.pbtxt").write_text("max_batch_size { value: 0 }")
    with pytest.raises(AspireError) as err:
        load_per_model_batching_parameters(str(tmp_path))
    assert err.value.message == "input_batch_size_limit must be positive; was 0"
    (tmp_path / "batching_params.pbtxt").write_text("nope")
    with pytest.raises(AspireError) as err:
        load_per_model_batching_parameters(str(tmp_path))
    assert os.path.join(str(tmp_path), "batching_params.pbtxt") in err.value.message
