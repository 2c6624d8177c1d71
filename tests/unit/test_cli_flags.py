"""`aspire serve` flags resolved without starting anything: TF Serving's syntax and session-thread
rules, the values of the flags Aspire added, and the options built from them."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.flags import FlagError, build_parser, session_threads, validate
from cluster.tfs_flags import parse_channel_arguments

ROOT = Path(__file__).resolve().parents[2]


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


def test_a_batching_file_without_enable_batching_is_tf_servings_error(tmp_path):
    params = tmp_path / "batching.txt"
    params.write_text("max_batch_size { value: 8 }\n")
    with pytest.raises(FlagError) as err:
        validate(parse(f"--batching_parameters_file={params}"))
    assert str(err.value) == (
        "server_options.batching_parameters_file is set without setting "
        "server_options.enable_batching to true."
    )
    validate(parse(f"--batching_parameters_file={params}", "--enable_batching"))


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


# ---- TF Serving's syntax and the flags Aspire added to the first 25 ----------------------------
@pytest.mark.parametrize(
    "text,parsed",
    [
        ("", ()),
        ("grpc.max_connection_age_ms=2000", (("grpc.max_connection_age_ms", 2000),)),
        (
            "grpc.keepalive_time_ms=-5,grpc.primary_user_agent=aspire",
            (("grpc.keepalive_time_ms", -5), ("grpc.primary_user_agent", "aspire")),
        ),
        ("a= 7 ", (("a", 7),)),  # absl::SimpleAtoi skips the spaces around a number
        ("a=4294967296", (("a", "4294967296"),)),  # not an int32: passed as the string
        ("a=1_000,b=0x10", (("a", "1_000"), ("b", "0x10"))),
        ("a=b=c", (("a", "b=c"),)),
        ("a=", (("a", ""),)),
    ],
)
def test_grpc_channel_arguments_parse_as_tf_serving_passes_them(text, parsed):
    assert parse_channel_arguments(text) == parsed


@pytest.mark.parametrize("text,item", [("a=1,b", "'b'"), ("a=1,", "''"), ("=5", "'=5'")])
def test_a_malformed_grpc_channel_argument_is_refused_naming_it(text, item):
    with pytest.raises(FlagError, match=f"^--grpc_channel_arguments: {item} is not name=value$"):
        validate(parse(f"--grpc_channel_arguments={text}"))


@pytest.mark.parametrize(
    "flag,value",
    [
        ("--rest_api_enable_cors_support", True),
        ("--rest_api_enable_cors_support=true", True),
        ("--rest_api_enable_cors_support=false", False),
        ("--rest_api_enable_cors_support=1", True),
        ("--rest_api_enable_cors_support=0", False),
        ("--enable_model_warmup=false", False),
        ("--enable_model_warmup", True),
    ],
)
def test_bool_flags_take_tf_servings_syntax(flag, value):
    name = flag[2:].partition("=")[0]
    args = parse(flag)
    assert getattr(args, name) is value
    assert name in args.given_flags


def test_a_bool_flag_with_a_value_that_is_no_bool_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse("--enable_profiler=maybe")
    assert exit_.value.code == 2
    assert "expected true or false, got 'maybe'" in capsys.readouterr().err


def test_flags_left_out_are_not_given_and_keep_their_defaults():
    args = parse()
    assert args.given_flags == {"model_base_path"}
    assert (args.enable_profiler, args.flush_filesystem_caches, args.grpc_max_threads) == (
        True,
        True,
        0,
    )


def test_a_prefix_of_a_flag_is_an_unknown_argument_not_the_flag():
    args, unknown = build_parser().parse_known_args(["serve", "--model_base=/m", "--rest_api_p=1"])
    assert unknown == ["--model_base=/m", "--rest_api_p=1"]
    assert (args.model_base_path, args.rest_api_port) == ("", 8501)


@pytest.mark.parametrize("value", ["-0.1", "1.5", "nan"])
def test_per_process_gpu_memory_fraction_must_be_between_0_and_1(value):
    validate(parse("--per_process_gpu_memory_fraction=1"))
    with pytest.raises(FlagError, match="--per_process_gpu_memory_fraction must be between"):
        validate(parse(f"--per_process_gpu_memory_fraction={value}"))


@pytest.mark.parametrize("flag", ["rest_api_num_threads", "grpc_max_threads", "num_unload_threads"])
def test_thread_count_flags_cannot_be_negative(flag):
    validate(parse(f"--{flag}=0"))
    with pytest.raises(FlagError, match=f"^--{flag} cannot be negative$"):
        validate(parse(f"--{flag}=-1"))


def test_a_grpc_socket_is_an_api_to_serve_with_both_ports_off():
    validate(parse("--port=0", "--rest_api_port=0", "--grpc_socket_path=/tmp/a.sock"))
    validate(parse("--port=0", "--grpc_socket_path=a.sock", "--enable_grpc_healthcheck_service"))
    with pytest.raises(FlagError, match="leave no API to serve"):
        validate(parse("--port=0", "--rest_api_port=0"))


def test_a_bad_ssl_config_file_stops_the_start_naming_it(tmp_path):
    path = tmp_path / "ssl.cfg"
    path.write_text("server_key: 3 4\n")
    with pytest.raises(FlagError, match=rf"^--ssl_config_file: Invalid protobuf file: '{path}'"):
        validate(parse(f"--ssl_config_file={path}"))


def test_the_options_carry_every_honoured_value(tmp_path, monkeypatch):
    from cluster.server_args import manager_config, server_options
    from config.session_config import session_values
    from tests.support.certs import CertAuthority

    ca = CertAuthority.create(tmp_path, "ca")
    server = ca.issue(tmp_path, "server")
    (tmp_path / "ssl.cfg").write_text(f'server_key: "{server.key}"\nserver_cert: "{server.cert}"\n')
    (tmp_path / "session.pbtxt").write_text("gpu_options { allow_growth: true }\n")
    monkeypatch.chdir(tmp_path)
    args = parse(
        "--ssl_config_file=ssl.cfg",
        "--grpc_socket_path=grpc.sock",
        "--grpc_channel_arguments=grpc.max_connection_age_ms=2000,grpc.lb_policy_name=x",
        "--grpc_max_threads=12",
        "--rest_api_num_threads=6",
        "--rest_api_enable_cors_support",
        "--per_process_gpu_memory_fraction=0.4",
        "--tensorflow_session_config_file=session.pbtxt",
        "--tensorflow_intra_op_parallelism=3",
        "--enable_signature_method_name_check=true",
    )
    validate(args)
    options, replica = server_options(args), manager_config(args).replica
    assert options.ssl_config_file == str(tmp_path / "ssl.cfg")
    assert options.grpc_socket_path == str(tmp_path / "grpc.sock")
    assert options.grpc_channel_arguments == (
        ("grpc.max_connection_age_ms", 2000),
        ("grpc.lb_policy_name", "x"),
    )
    assert (options.grpc_max_threads, options.rest_api_num_threads) == (12, 6)
    assert options.enable_cors is True
    assert replica.gpu_memory_fraction == 0.4
    assert replica.enable_signature_method_name_check is True
    assert (replica.intra_op_threads, replica.inter_op_threads) == (3, 0)
    assert session_values(replica.session_config) == (3, 0, pytest.approx(0.4))


def test_a_platform_config_replaces_the_session_flags_with_one_warning(tmp_path, caplog):
    from cluster.server_args import manager_config
    from config.session_config import session_values

    path = tmp_path / "platform.pbtxt"
    path.write_text(
        'platform_configs { key: "tensorflow" value { source_adapter_config { '
        "[type.googleapis.com/tensorflow.serving.SavedModelBundleSourceAdapterConfig] { "
        "legacy_config { session_config { intra_op_parallelism_threads: 5 "
        "gpu_options { per_process_gpu_memory_fraction: 0.3 } } } } } } }\n"
    )
    args = parse(
        f"--platform_config_file={path}",
        "--enable_batching",
        "--per_process_gpu_memory_fraction=0.9",
        "--tensorflow_session_parallelism=2",
        "--tensorflow_intra_op_parallelism=1",
        "--tensorflow_inter_op_parallelism=1",  # all three: no error, they are ignored
    )
    with caplog.at_level(logging.WARNING, logger="aspire"):
        validate(args)
    replica = manager_config(args).replica
    ignored = [
        r.getMessage() for r in caplog.records if "--platform_config_file is set" in r.message
    ]
    assert len(ignored) == 1 and "--enable_batching" in ignored[0]
    assert "--per_process_gpu_memory_fraction" in ignored[0]
    assert replica.batching is None  # the platform config has no batching_parameters
    assert (replica.intra_op_threads, replica.gpu_memory_fraction) == (5, pytest.approx(0.3))
    assert session_values(replica.session_config)[0] == 5


def aspire(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.timeout(120)
def test_serve_warns_of_each_unknown_argument_and_goes_on_as_tf_serving_does():
    # no --model_base_path: the start stops at validation, after the arguments were parsed
    r = aspire("serve", "--no_such_flag=1", "--model_base=/m")
    assert r.returncode == 2, r.stderr
    assert "unknown argument: --no_such_flag=1" in r.stderr
    assert "unknown argument: --model_base=/m" in r.stderr
    assert "Both server_options.model_base_path and server_options.model_config_file" in r.stderr


@pytest.mark.timeout(120)
def test_status_still_refuses_unknown_arguments_and_serve_version_prints_versions():
    r = aspire("status", "--no_such_flag=1")
    assert r.returncode == 2 and "unrecognized arguments: --no_such_flag=1" in r.stderr
    r = aspire("serve", "--version")
    assert r.returncode == 0 and r.stdout.startswith("Aspire ModelServer: ")


def test_the_same_flags_give_the_same_fingerprint_and_any_other_flag_another():
    """A new `aspire serve --address` adopts the running manager only when its flags are the
    same (cluster/launcher.py `start`)."""
    from cluster.cli import flags_fingerprint

    base = ("--address=10.0.0.1:6379", "--model_config_file=/etc/m.config", "--port=8500")
    same = flags_fingerprint(parse(*base))
    assert same == flags_fingerprint(parse(*reversed(base)))  # order does not matter
    assert len(same) == 64
    for other in ("--port=8600", "--capacity_wait_s=60", "--num_replicas=2"):
        assert flags_fingerprint(parse(*base, other)) != same, other
    # the same in another process, whose string hashing (and so a set's order) differs
    code = (
        "import sys; from cluster.cli import flags_fingerprint; from cluster.flags import "
        "build_parser; print(flags_fingerprint(build_parser().parse_args(sys.argv[1:])))"
    )
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code, "serve", "--model_base_path=/m", *base],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONHASHSEED": seed},
            check=True,
        )
        assert out.stdout.strip() == same
