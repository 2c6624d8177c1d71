"""Bearer-token authentication (deployments/router/auth.py): token files, digests, the header
check, the admin rule, the CLI flags, and the gRPC interceptor on a real in-process grpc.aio
server."""

import asyncio
import hashlib
import hmac
import os
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from cluster.flags import FlagError, build_parser, token_digests, validate
from config.tokens import TokenFileError, digest, read_token
from core.errors import AspireError
from deployments.router import auth
from deployments.router.auth import BearerAuth, GrpcAuthInterceptor

TOKEN, ADMIN = "a" * 40, "b" * 40


def write(path, text, mode=0o600):
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


def refusal(check, *args, **kw) -> tuple[str, str]:
    with pytest.raises(AspireError) as err:
        check(*args, **kw)
    return err.value.code, err.value.message


def test_a_token_file_is_stripped_and_only_its_digest_travels(tmp_path):
    path = write(tmp_path / "token", f"\n  {TOKEN}\t\n")
    assert read_token(path) == TOKEN
    assert digest(TOKEN) == hashlib.sha256(TOKEN.encode()).hexdigest()
    args = build_parser().parse_args(["serve", "--model_base_path=/m", f"--auth_token_file={path}"])
    user, admin = token_digests(args)
    assert (user, admin) == (digest(TOKEN), None)
    assert TOKEN not in user


@pytest.mark.parametrize(
    "content,message",
    [
        ("", "is empty"),
        (" \n\t ", "is empty"),
        ("two words", "holds whitespace or control characters inside the token"),
        ("tok\x00en", "holds whitespace or control characters inside the token"),
        ("tökenvalue", "holds non-ASCII bytes"),
    ],
)
def test_unusable_token_files_are_refused(tmp_path, content, message):
    path = write(tmp_path / "token", content)
    with pytest.raises(TokenFileError, match=message):
        read_token(path)


def test_a_missing_or_unreadable_token_file_names_the_reason(tmp_path):
    with pytest.raises(TokenFileError) as err:
        read_token(str(tmp_path / "absent"))
    assert (
        str(err.value) == f"cannot read token file {tmp_path / 'absent'}: No such file or directory"
    )
    with pytest.raises(TokenFileError, match="Is a directory"):
        read_token(str(tmp_path))


def test_short_and_world_readable_tokens_are_warned_about(tmp_path, caplog):
    read_token(write(tmp_path / "token", "short", mode=0o644))
    assert "has 5 characters; use a long random one" in caplog.text
    assert "is readable by other users (chmod 600 it)" in caplog.text


@pytest.mark.parametrize(
    "flags,message",
    [
        (
            ["--auth_token_file=/no/such/file"],
            "--auth_token_file: cannot read token file /no/such/file: No such file or directory",
        ),
        (
            ["--admin_token_file={admin}"],
            "--admin_token_file needs --auth_token_file: without it nothing is authenticated",
        ),
        (["--auth_token_file={empty}"], "--auth_token_file: token file {empty} is empty"),
        (
            ["--auth_token_file={token}", "--admin_token_file={same}"],
            "--admin_token_file must hold a different token from --auth_token_file",
        ),
    ],
)
def test_token_flags_fail_validation_with_a_clear_message(tmp_path, flags, message):
    files = {
        "token": write(tmp_path / "t", TOKEN),
        "same": write(tmp_path / "s", TOKEN + "\n"),
        "admin": write(tmp_path / "a", ADMIN),
        "empty": write(tmp_path / "e", ""),
    }
    args = build_parser().parse_args(
        ["serve", "--model_base_path=/m", *(f.format(**files) for f in flags)]
    )
    validate(args)  # the other flags are fine
    with pytest.raises(FlagError) as err:
        token_digests(args)
    assert str(err.value) == message.format(**files)


AUTH = BearerAuth(digest(TOKEN), digest(ADMIN))


def test_without_a_token_file_every_call_passes():
    off = BearerAuth()
    assert not off.enabled
    off.check(None)
    off.check(None, admin=True)


@pytest.mark.parametrize(
    "header,code,message",
    [
        (
            None,
            "UNAUTHENTICATED",
            "Missing bearer token: send the header 'Authorization: Bearer <token>'",
        ),
        (
            "",
            "UNAUTHENTICATED",
            "Missing bearer token: send the header 'Authorization: Bearer <token>'",
        ),
        (
            f"Basic {TOKEN}",
            "UNAUTHENTICATED",
            "Missing bearer token: send the header 'Authorization: Bearer <token>'",
        ),
        (
            "Bearer ",
            "UNAUTHENTICATED",
            "Missing bearer token: send the header 'Authorization: Bearer <token>'",
        ),
        ("Bearer wrong", "UNAUTHENTICATED", "Invalid bearer token"),
        (f"Bearer {TOKEN}x", "UNAUTHENTICATED", "Invalid bearer token"),
        (f"Bearer {TOKEN[:-1]}", "UNAUTHENTICATED", "Invalid bearer token"),
    ],
)
def test_missing_and_wrong_tokens_are_unauthenticated(header, code, message):
    assert refusal(AUTH.check, header) == (code, message)


@pytest.mark.parametrize(
    "header", [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER  {TOKEN} ", f"Bearer {ADMIN}"]
)
def test_the_inference_and_admin_tokens_pass_inference_calls(header):
    AUTH.check(header)


def test_non_ascii_lookalikes_of_a_token_do_not_pass():
    with_mark = BearerAuth(digest("secret?token-0123456789"))
    with_mark.check("Bearer secret?token-0123456789")
    for presented in (
        "secret\u00e9token-0123456789",
        "secret\ufffdtoken-0123456789",
        "secret\ud800token-0123456789",
    ):
        assert refusal(with_mark.check, f"Bearer {presented}")[0] == "UNAUTHENTICATED"


def test_admin_calls_need_the_admin_token():
    AUTH.check(f"Bearer {ADMIN}", admin=True)
    assert refusal(AUTH.check, f"Bearer {TOKEN}", admin=True) == (
        "PERMISSION_DENIED",
        "This call needs the admin token",
    )
    assert refusal(AUTH.check, "Bearer wrong", admin=True)[0] == "UNAUTHENTICATED"
    no_admin = BearerAuth(digest(TOKEN))
    no_admin.check(f"Bearer {TOKEN}")
    assert refusal(no_admin.check, f"Bearer {TOKEN}", admin=True) == (
        "PERMISSION_DENIED",
        "Admin calls are disabled: the server was started without --admin_token_file",
    )


def test_every_check_compares_digests_with_compare_digest_against_both_tokens(monkeypatch):
    calls, real = [], hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    for header in (f"Bearer {TOKEN}", f"Bearer {ADMIN}", "Bearer wrong"):
        calls.clear()
        try:
            AUTH.check(header)
        except AspireError:
            pass
        presented = digest(header.split()[1])
        # the same-length digest of what was sent, against each stored digest: never the token
        assert calls == [(presented, digest(TOKEN)), (presented, digest(ADMIN))]
        assert all(len(a) == len(b) == 64 for a, b in calls)


class Counting(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self):
        self.calls = 0

    async def Predict(self, request, context):
        self.calls += 1
        return predict_pb2.PredictResponse()


def big_request(megabytes: int) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.zeros(megabytes * 2**18, np.float32)))
    return request


def test_the_interceptor_refuses_before_the_request_is_read():
    async def scenario():
        servicer = Counting()
        server = grpc.aio.server(
            interceptors=[GrpcAuthInterceptor(AUTH)],
            options=[("grpc.max_receive_message_length", 2**31 - 1)],
        )
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        results = {}
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 2**31 - 1)]
        ) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            for name, metadata in (
                ("none", ()),
                ("wrong", (("authorization", "Bearer x"),)),
                ("right", (("authorization", f"Bearer {TOKEN}"),)),
            ):
                started = time.perf_counter()
                try:
                    await stub.Predict(big_request(1), metadata=metadata, timeout=30)
                    results[name] = ("OK", time.perf_counter() - started)
                except grpc.aio.AioRpcError as err:
                    results[name] = (err.code().name, time.perf_counter() - started, err.details())
            calls_after_small = servicer.calls
            big = big_request(200)
            for name, metadata in (
                ("200 MB, no token", ()),
                ("200 MB, right token", (("authorization", f"Bearer {TOKEN}"),)),
            ):
                started = time.perf_counter()
                try:
                    await stub.Predict(big, metadata=metadata, timeout=60)
                    results[name] = ("OK", time.perf_counter() - started)
                except grpc.aio.AioRpcError as err:
                    results[name] = (err.code().name, time.perf_counter() - started)
        await server.stop(None)
        return results, calls_after_small, servicer.calls

    results, calls_after_small, calls = asyncio.run(scenario())
    for name, result in results.items():
        print(f"gRPC Predict, {name}: {result[0]} in {result[1] * 1000:.1f} ms")
    assert results["none"][0] == "UNAUTHENTICATED"
    assert (
        results["none"][2]
        == "Missing bearer token: send the header 'Authorization: Bearer <token>'"
    )
    assert results["wrong"][:1] + results["wrong"][2:] == (
        "UNAUTHENTICATED",
        "Invalid bearer token",
    )
    assert results["right"][0] == "OK"
    assert results["200 MB, no token"][0] == "UNAUTHENTICATED"
    assert results["200 MB, right token"][0] == "OK"
    assert (calls_after_small, calls) == (1, 2)  # only authenticated calls reached the servicer
    # Refused before the 200 MB are read: faster than the same call with the token, which the
    # server receives whole (both include the client's serialization and sending as far as it got)
    assert results["200 MB, no token"][1] < results["200 MB, right token"][1]
