"""`aspire serve` flags resolved without starting anything: TF Serving's session-thread rules."""

import pytest

from cluster.flags import FlagError, build_parser, session_threads, validate


def parse(*flags):
    return build_parser().parse_args(["serve", "--model_base_path=/m", *flags])


@pytest.mark.parametrize(
    "flags,threads",
    [
        ((), (0, 0)),  # TF picks
        (("--tensorflow_session_parallelism=4",), (4, 4)),
        (("--tensorflow_intra_op_parallelism=2",), (2, 0)),
        (("--tensorflow_inter_op_parallelism=3", "--tensorflow_session_parallelism=8"), (0, 3)),
        (("--tensorflow_intra_op_parallelism=1", "--tensorflow_inter_op_parallelism=2"), (1, 2)),
    ],
)
def test_session_threads_follow_tf_serving(flags, threads):
    args = parse(*flags)
    validate(args)
    assert session_threads(args) == threads


def test_all_three_thread_flags_is_tf_servings_error():
    args = parse(
        "--tensorflow_session_parallelism=2",
        "--tensorflow_intra_op_parallelism=1",
        "--tensorflow_inter_op_parallelism=1",
    )
    with pytest.raises(
        FlagError,
        match=r"Either configure server_options.tensorflow_session_parallelism "
        r"or \(server_options.tensorflow_intra_op_parallelism, "
        r"server_options.tensorflow_inter_op_parallelism\) separately",
    ):
        validate(args)


def test_body_limit_flag_defaults_to_64_mib_and_must_be_positive():
    assert parse().rest_api_max_body_bytes == 64 * 1024 * 1024
    validate(parse("--rest_api_max_body_bytes=1"))
    with pytest.raises(FlagError, match="--rest_api_max_body_bytes must be at least 1"):
        validate(parse("--rest_api_max_body_bytes=0"))


def test_request_limit_flags_default_and_bounds():
    args = parse()
    assert (args.max_ongoing_requests, args.max_queued_requests) == (64, 1000)
    validate(parse("--max_queued_requests=-1", "--max_ongoing_requests=1"))
    validate(parse("--max_queued_requests=0"))
    with pytest.raises(
        FlagError, match="--max_queued_requests must be at least 0, or -1 for no limit"
    ):
        validate(parse("--max_queued_requests=-2"))
    with pytest.raises(FlagError, match="--max_ongoing_requests must be at least 1"):
        validate(parse("--max_ongoing_requests=0"))


def test_model_name_flag_follows_the_name_rule():
    validate(parse("--model_name=model..1"))
    with pytest.raises(FlagError, match=r"Invalid --model_name: '\.\.' \("):
        validate(parse("--model_name=.."))


def test_health_check_flags_default_to_serves_and_must_be_positive():
    args = parse()
    assert (args.replica_health_check_period_s, args.replica_health_check_timeout_s) == (5.0, 30.0)
    validate(parse("--replica_health_check_period_s=1", "--replica_health_check_timeout_s=3"))
    with pytest.raises(FlagError, match="must be greater than 0"):
        validate(parse("--replica_health_check_timeout_s=0"))
