"""Aspire's edge against hostile names and hostile model directories, on a real local Ray.

- Model names and labels that could be paths (Triton's INVALID_TRAVERSAL_NAMES, URL-encoded and
  Unicode forms, control characters, 257 characters) get 400 / INVALID_ARGUMENT over raw HTTP and
  gRPC; odd but valid names get 404 / NOT_FOUND; no request name makes the server read or list a
  sentinel directory (its atime stays put).
- A version directory linked outside its base path, or holding such a link, ends in END with the
  reason, is never read, and the version that serves keeps serving with no failed request.
- A version holding only a `model.keras` whose Lambda layer writes a file when deserialised ends in
  END with the reason, and the file is never written.
"""

import json
import os
import shutil
import socket
import time
from pathlib import Path
from urllib.parse import quote, urlsplit

import grpc
import pytest
import ray
from ray import serve
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

from tests.integration.conftest import DATA, ClosedLoop, wait_for
from tests.support.grpc_requests import predict_request

pytestmark = pytest.mark.ray

TRITON_TRAVERSAL_NAMES = [
    "../etc",
    "a/../b",
    "../../etc/passwd",
    "../../../../etc",
    "model/..",
    "..",
    "/etc/passwd",
    "model/subdir",
    "model/",
    " ..",
    ".. ",
]
ENCODED_FORMS = [
    "%2e%2e%2f",
    "..%2f",
    "%2F",
    "%00",
    "..%2f..%2fetc",
    "%2e%2e",
    "m%2Fx",
    "m%5C..",
    "%EF%BC%8E%EF%BC%8E",
    "..%EF%BC%8Fetc",
    "..%E2%88%95etc",
    "m%0D%0AX-Injected%3A%201",
    "%7Eroot",
    "x" * 257,
]
UNICODE_NAMES = [
    "\uff0e\uff0e",
    "\u2025",
    "..\uff0fetc",
    "..\u2215etc",
    "m\x00",
    "m\x7f",
    "~root",
    "x" * 257,
]
VALID_ODD_NAMES = ["...", "model..1", "a.b", "..my_model", "model....1"]


def raw_request(base_url: str, method: str, path: str, body: bytes = b"") -> tuple[int, dict]:
    """One HTTP/1.1 request with `path` sent byte for byte, as no client library would."""
    url = urlsplit(base_url)
    with socket.create_connection((url.hostname, url.port), timeout=30) as s:
        s.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: {url.netloc}\r\nConnection: close\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode("latin-1")
            + body
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload)


def mark_unread(path: Path) -> float:
    """Set atime before mtime so that the next read or listing moves it (relatime)."""
    st = os.stat(path)
    os.utime(path, (st.st_mtime - 1000, st.st_mtime))
    return os.stat(path).st_atime


@pytest.fixture(scope="module")
def stubs(aspire):
    with grpc.insecure_channel(aspire.grpc_target) as channel:
        yield (
            prediction_service_pb2_grpc.PredictionServiceStub(channel),
            model_service_pb2_grpc.ModelServiceStub(channel),
        )


def grpc_code(call, request) -> tuple[str, str]:
    try:
        call(request, timeout=60)
        return "OK", ""
    except grpc.RpcError as err:
        return err.code().name, err.details()


def test_traversal_names_get_400_over_raw_http(aspire):
    started = time.perf_counter()
    answers = []
    for name in TRITON_TRAVERSAL_NAMES:
        encoded = quote(name, safe="")
        for method, path, body in (
            ("GET", f"/v1/models/{encoded}", b""),
            ("GET", f"/v1/models/{encoded}/versions/1/metadata", b""),
            ("POST", f"/v1/models/{encoded}:predict", b'{"instances": [1.0]}'),
        ):
            status, doc = raw_request(aspire.url, method, path, body)
            assert (status, doc["error"][:20]) == (400, "Invalid model name: "), (path, doc)
            answers.append(status)
        # unencoded (a space still has to be %20 in a request line): the URL grammar or the
        # name rule refuses it, never a lookup
        status, doc = raw_request(aspire.url, "GET", "/v1/models/" + name.replace(" ", "%20"))
        assert status == 400 and (
            "Invalid model name" in doc["error"] or doc["error"].startswith("Malformed request")
        ), (name, doc)
        answers.append(status)
    for raw in ENCODED_FORMS:
        status, doc = raw_request(aspire.url, "GET", f"/v1/models/{raw}")
        assert (status, doc["error"][:20]) == (400, "Invalid model name: "), (raw, doc)
        assert "\r" not in doc["error"] and "\n" not in doc["error"] and "\x00" not in doc["error"]
        answers.append(status)
    print(
        f"{len(answers)} hostile REST paths: all 400 in {time.perf_counter() - started:.2f} s; "
        f"e.g. {raw_request(aspire.url, 'GET', '/v1/models/..%2f..%2fetc')[1]['error']}"
    )


def test_traversal_names_get_invalid_argument_over_grpc(aspire, stubs):
    predict, model = stubs
    for name in TRITON_TRAVERSAL_NAMES + UNICODE_NAMES:
        code, details = grpc_code(predict.Predict, predict_request(name))
        assert (code, details[:20]) == ("INVALID_ARGUMENT", "Invalid model name: "), (name, details)
        status = get_model_status_pb2.GetModelStatusRequest()
        status.model_spec.name = name
        assert grpc_code(model.GetModelStatus, status)[0] == "INVALID_ARGUMENT"
    code, details = grpc_code(
        predict.Predict, predict_request("half_plus_two", version_label="../x")
    )
    assert (code, details) == (
        "INVALID_ARGUMENT",
        "Invalid model version label: '../x' (contains a path separator)",
    )
    print(
        f"{len(TRITON_TRAVERSAL_NAMES + UNICODE_NAMES)} hostile ModelSpec names: "
        "all INVALID_ARGUMENT"
    )


def test_odd_but_valid_names_are_looked_up_and_not_found(aspire, stubs):
    predict, _model = stubs
    for name in VALID_ODD_NAMES:
        status, doc = raw_request(aspire.url, "GET", f"/v1/models/{name}")
        assert (status, doc) == (404, {"error": f"Could not find any versions of model {name}"})
        status, doc = raw_request(
            aspire.url, "POST", f"/v1/models/{name}:predict", b'{"instances": [1]}'
        )
        assert (status, doc) == (404, {"error": f"Servable not found for request: Latest({name})"})
        assert grpc_code(predict.Predict, predict_request(name))[0] == "NOT_FOUND"


def test_no_request_name_reads_or_lists_a_sentinel_directory(aspire, stubs, tmp_path):
    """Names are keys, never paths: requests naming a sentinel model directory, relative to a
    served base path or absolute, leave its atime (and its file's) where it was set."""
    sentinel = tmp_path / "sentinel"
    shutil.copytree(DATA / "saved_model_half_plus_two_cpu", sentinel)
    version = sentinel / "00000123"
    watched = [sentinel, version, version / "saved_model.pb"]
    atimes = [mark_unread(p) for p in watched]
    relative = os.path.relpath(sentinel, DATA / "saved_model_half_plus_two_cpu")
    names = [relative, str(sentinel), os.path.relpath(sentinel, "/")]
    predict, _model = stubs
    for name in names:
        for path in (
            f"/v1/models/{quote(name, safe='')}",
            f"/v1/models/{quote(name, safe='')}/metadata",
            f"/v1/models/{quote(name, safe='.')}/versions/123",
        ):
            assert raw_request(aspire.url, "GET", path)[0] == 400
        assert grpc_code(predict.Predict, predict_request(name))[0] == "INVALID_ARGUMENT"
    assert [os.stat(p).st_atime for p in watched] == atimes, "a request name reached the files"
    os.listdir(sentinel)  # control: a listing does move the directory's atime here
    if os.stat(sentinel).st_atime == atimes[0]:
        pytest.skip("this file system does not update atime; the no-access check cannot fail")
    print(
        f"{len(names) * 4} requests naming {relative!r} and its absolute path: "
        "400/INVALID_ARGUMENT, sentinel atime unchanged"
    )


def test_healthz_answers_without_auth_and_nothing_else_needs_a_header(aspire):
    r = aspire.get("/healthz")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})
    assert aspire.post("/v1/models/half_plus_two:predict", {"instances": [1.0]}).json() == {
        "predictions": [2.5]
    }


def servable_apps() -> set[str]:
    return set(serve.status().applications)


def test_version_dirs_linked_outside_the_base_path_are_refused_and_v1_keeps_serving(
    aspire, model_dir, tmp_path
):
    from core.names import app_name

    base, publish = model_dir
    publish(1, "saved_model_half_plus_two_cpu")
    aspire.add_model("linked", base)
    aspire.wait_state("linked", 1, "AVAILABLE")
    outside = tmp_path / "outside"  # a SavedModel that must never be read
    shutil.copytree(DATA / "saved_model_half_plus_three" / "00000123", outside)
    watched = [outside / "saved_model.pb", outside / "variables" / "variables.index"]
    atimes = [mark_unread(p) for p in watched]
    with ClosedLoop(aspire.url + "/v1/models/linked:predict", clients=2) as load:
        load.wait_more(20)
        started = time.monotonic()
        os.symlink(outside, base / "2")  # the version itself is a link out
        aspire.wait_state("linked", 2, "END")
        ended_s = time.monotonic() - started
        staging = tmp_path / "v3"  # a real directory holding a link out
        shutil.copytree(
            DATA / "saved_model_half_plus_two_cpu" / "00000123",
            staging,
            ignore=shutil.ignore_patterns("variables"),
        )
        os.symlink(outside / "variables", staging / "variables")
        staging.rename(base / "3")
        aspire.wait_state("linked", 3, "END")
        load.wait_more(20)
    code, statuses = ray.get(aspire.manager.model_status.remote("linked"))
    by_version = {s["version"]: s for s in statuses}
    assert (by_version[2]["error_code"], by_version[2]["error_message"]) == (
        "PERMISSION_DENIED",
        f"Version directory {base}/2 resolves outside the model base path {base}",
    )
    assert (by_version[3]["error_code"], by_version[3]["error_message"]) == (
        "PERMISSION_DENIED",
        f"Version directory {base}/3 holds variables, which resolves outside "
        f"the model base path {base}",
    )
    assert by_version[1]["state"] == "AVAILABLE"
    assert load.failures == []
    assert {a for _, a in load.answers} == {2.5}  # only version 1 ever answered
    assert not {app_name("linked", 2), app_name("linked", 3)} & servable_apps()
    assert [os.stat(p).st_atime for p in watched] == atimes, "a file outside the base path was read"
    print(
        f"linked-out versions refused: END {ended_s:.1f} s after the link appeared; "
        f"{len(load.answers)} requests to version 1 meanwhile, {len(load.failures)} failed"
    )


def test_a_keras_only_version_is_refused_and_its_lambda_never_runs(aspire, model_dir, tmp_path):
    import keras

    base, publish = model_dir
    publish(1, "saved_model_half_plus_two_cpu")
    aspire.add_model("keras_only", base)
    aspire.wait_state("keras_only", 1, "AVAILABLE")
    ran = tmp_path / "lambda-ran"  # written by the Lambda layer whenever Keras rebuilds it
    inputs = keras.Input(shape=(1,))
    outputs = keras.layers.Lambda(
        lambda x, path: (open(path, "a").write("ran\n"), x * 2.0)[1], arguments={"path": str(ran)}
    )(inputs)
    staging = tmp_path / "v2"
    staging.mkdir()
    keras.Model(inputs, outputs).save(str(staging / "model.keras"))
    ran.unlink()  # building the model ran it once, here in the test
    staging.rename(base / "2")
    started = time.monotonic()
    aspire.wait_state("keras_only", 2, "END")
    ended_s = time.monotonic() - started
    code, [status] = ray.get(aspire.manager.model_status.remote("keras_only", 2))
    assert (status["error_code"], status["error_message"]) == (
        "NOT_FOUND",
        f"Version directory {base}/2 holds Keras file(s) model.keras and no SavedModel "
        "(saved_model.pb): Aspire serves SavedModels only and never deserialises "
        "Keras files. Export one with model.export(path).",
    )
    assert not ran.exists(), "the Keras file was deserialised and its Lambda ran"
    assert aspire.post("/v1/models/keras_only:predict", {"instances": [1.0]}).json() == {
        "predictions": [2.5]
    }
    # Control: the fixture is live. Keras rebuilding it unsafely does run the Lambda's code.
    keras.models.load_model(str(base / "2" / "model.keras"), safe_mode=False)
    wait_for(ran.exists, 5, what="the control load to run the Lambda")
    print(
        f"keras-only version refused (END) {ended_s:.1f} s after it appeared; Lambda never ran "
        "in Aspire, ran once on an unsafe load here"
    )
