"""The direct data path (deployments/replica/call_service.py, replica_client.py): predictions go
from the router to the version replica's own call service, not through a Serve handle; the replica's
port answers nothing without the cluster's data-plane key; bodies near the REST limit and gRPC
messages far past the 4 MB cap of Serve's own replica transport cross it whole."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import requests

from tests.integration.conftest import the_router_app, wait_for

pytestmark = pytest.mark.ray
NAME, VERSION = "half_plus_two", 123


def replica_handle():
    from ray import serve

    from core.names import app_name

    return serve.get_deployment_handle("servable", app_name(NAME, VERSION))


def calls() -> dict:
    return replica_handle().ping.remote().result(timeout_s=30).calls


def router_direct_replicas() -> int:
    """Replicas of NAME's version the (one) router calls directly now."""
    from ray import serve

    from core.names import app_name

    router = serve.get_deployment_handle("router", the_router_app())
    counts = router.direct_replicas.remote().result(timeout_s=30)
    return counts.get(app_name(NAME, VERSION), 0)


@pytest.fixture
def direct_link(aspire):
    """The router knows the replica's port, learnt from Serve's long poll: until then its calls
    take Serve's handle. Every test that counts direct calls waits for it here, so none depends
    on an earlier test having waited (each passes run alone, first after the cluster started)."""
    wait_for(lambda: router_direct_replicas() == 1, 60, 0.2, what="the router's direct link")


@pytest.mark.usefixtures("direct_link")
def test_predictions_take_the_direct_path_not_serve_handles(aspire):
    url = f"{aspire.url}/v1/models/{NAME}:predict"
    session = requests.Session()
    before = calls()
    for i in range(40):
        r = session.post(url, json={"instances": [float(i)]}, timeout=30)
        assert r.json() == {"predictions": [i / 2 + 2]}
    after = calls()
    assert after["direct"] - before["direct"] == 40
    assert after["handle"] == before["handle"]
    print(
        f"40 predictions: {after['direct'] - before['direct']} direct, "
        f"{after['handle'] - before['handle']} through Serve's handle"
    )


@pytest.mark.usefixtures("direct_link")
def test_grpc_predictions_take_the_direct_path(aspire):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    stub = prediction_service_pb2_grpc.PredictionServiceStub(
        grpc.insecure_channel(aspire.grpc_target)
    )
    request = predict_pb2.PredictRequest()
    request.model_spec.name = NAME
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([2.0], np.float32)))
    before = calls()
    for _ in range(20):
        answer = stub.Predict(request, timeout=30)
        assert (
            list(answer.outputs["y"].float_val) == [3.0]
            and answer.model_spec.version.value == VERSION
        )
    after = calls()
    assert (after["direct"] - before["direct"], after["handle"] - before["handle"]) == (20, 0)


def test_replica_service_answers_nothing_without_the_data_plane_key(aspire):
    import os
    import socket

    import ray

    from deployments.wire.direct import (
        CALL,
        CALL_HEADER,
        CHALLENGE_BYTES,
        HELLO_MAGIC,
        METHOD_NUMBERS,
        NONCE_BYTES,
        PROOF_BYTES,
    )

    port = replica_handle().ping.remote().result(timeout_s=30).service_port
    assert port
    body = b'{"instances": [1.0]}'
    call = CALL_HEADER.pack(CALL, 1, METHOD_NUMBERS["predict"], len(body)) + body
    # a proof made without the key (the replica's challenge is answered with random bytes)
    wrong = HELLO_MAGIC + os.urandom(NONCE_BYTES) + os.urandom(PROOF_BYTES)
    before = calls()
    for opening in (b"", wrong):  # no answer to the challenge, then a wrong proof
        with socket.create_connection((ray.util.get_node_ip_address(), port), timeout=30) as sock:
            first = b""
            while len(first) < CHALLENGE_BYTES:  # the replica speaks first: its challenge
                chunk = sock.recv(CHALLENGE_BYTES - len(first))
                assert chunk, "the replica closed before sending its challenge"
                first += chunk
            assert first.startswith(HELLO_MAGIC)
            sock.sendall(opening + call)
            assert sock.recv(65536) == b""  # closed by the replica, nothing answered
    assert calls() == before


@pytest.mark.usefixtures("direct_link")
def test_a_rest_body_near_the_limit_crosses_the_direct_path(aspire):
    from core.errors import DEFAULT_MAX_BODY_BYTES

    # a real request padded to 1 MiB under --rest_api_max_body_bytes (64 MiB by default)
    head = b'{"instances": [1.0, 2.0], "padding": "'
    body = head + b"a" * (DEFAULT_MAX_BODY_BYTES - 2**20 - len(head)) + b'"}'
    before = calls()
    r = requests.post(
        f"{aspire.url}/v1/models/{NAME}:predict",
        data=body,
        timeout=120,
        headers={"Content-Type": "application/json"},
    )
    assert (r.status_code, r.json()) == (200, {"predictions": [2.5, 3.0]})
    assert calls()["direct"] == before["direct"] + 1
    print(f"{len(body) / 2**20:.0f} MiB REST body answered through the direct path")


@pytest.mark.usefixtures("direct_link")
def test_a_grpc_message_of_40_mb_each_way_crosses_the_direct_path(aspire):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    limit = 2**31 - 1
    channel = grpc.insecure_channel(
        aspire.grpc_target,
        options=[
            ("grpc.max_send_message_length", limit),
            ("grpc.max_receive_message_length", limit),
        ],
    )
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    x = np.arange(10_000_000, dtype=np.float32)  # 40 MB in, 40 MB out: 10x Serve's 4 MB cap
    request = predict_pb2.PredictRequest()
    request.model_spec.name = NAME
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(x))
    before = calls()
    answer = stub.Predict(request, timeout=300)
    y = tf.make_ndarray(answer.outputs["y"])
    assert y.shape == x.shape and np.array_equal(y, x / 2 + 2)
    assert calls()["direct"] == before["direct"] + 1
    print(
        f"gRPC Predict of {request.ByteSize() / 1e6:.0f} MB answered with "
        f"{answer.ByteSize() / 1e6:.0f} MB through the direct path"
    )


def test_every_router_learns_the_replica_port_from_serve(aspire):
    """Learnt, not configured: the router's count of direct replicas reaches the version's one
    replica through Serve's long poll alone (the session's cluster runs one router)."""
    wait_for(lambda: router_direct_replicas() == 1, 60, 0.2, what="the router's direct link")
