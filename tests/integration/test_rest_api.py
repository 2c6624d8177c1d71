"""TF Serving's REST API over HTTP on loopback, against TF Serving's own test models.

Expected answers are TF Serving's documented ones (api_rest.md, http_rest_api_handler_test.cc).
"""

import gzip
import json

import pytest

from tests.integration.conftest import DATA

pytestmark = pytest.mark.ray


def sorted_deep(value):
    """TF Serving's Python test compares metadata insensitive to list order."""
    if isinstance(value, dict):
        return {k: sorted_deep(v) for k, v in value.items()}
    if isinstance(value, list):
        return sorted((sorted_deep(v) for v in value), key=lambda v: json.dumps(v, sort_keys=True))
    return value


# ---- predict ---------------------------------------------------------------------------------


def test_half_plus_two_predict_returns_documented_predictions(aspire):
    r = aspire.post("/v1/models/half_plus_two:predict", {"instances": [1.0, 2.0, 5.0]})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"predictions": [2.5, 3.0, 4.5]}


def test_columnar_inputs_return_outputs(aspire):
    r = aspire.post("/v1/models/half_plus_two:predict", {"inputs": [[1.0], [2.0]]})
    assert r.json() == {"outputs": [[2.5], [3.0]]}


def test_explicit_version_and_signature_name(aspire):
    r = aspire.post(
        "/v1/models/half_plus_two/versions/123:predict",
        {"signature_name": "serving_default", "instances": [[4.0]]},
    )
    assert r.json() == {"predictions": [[4.0]]}


def test_tf2_saved_model_predicts(aspire):
    r = aspire.post("/v1/models/half_plus_two_tf2:predict", {"instances": [1.0]})
    assert r.status_code == 200, r.text
    assert r.json() == {"predictions": [2.5]}


def test_tf1_half_plus_three_predicts_and_regresses_as_documented(aspire):
    r = aspire.post("/v1/models/half_plus_three:predict", {"instances": [1.0, 2.0, 5.0]})
    assert r.json() == {"predictions": [3.5, 4.0, 5.5]}
    r = aspire.post(
        "/v1/models/half_plus_three:regress",
        {"signature_name": "tensorflow/serving/regress", "examples": [{"x": 1.0}, {"x": 2.0}]},
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"results": [3.5, 4.0]}


def test_stateful_counter_model_keeps_state_between_requests(aspire):
    def incr(delta):
        r = aspire.post(
            "/v1/models/counter:predict",
            {"signature_name": "incr_counter_by", "inputs": {"delta": delta}},
        )
        assert r.status_code == 200, r.text
        return r.json()["outputs"]

    before = incr(0.0)
    assert incr(3.0) == before + 3.0
    assert incr(0.0) == before + 3.0


def test_signature_without_inputs_cannot_be_called_over_rest(aspire):
    r = aspire.post(
        "/v1/models/counter:predict", {"signature_name": "get_counter", "instances": [1]}
    )
    assert r.status_code == 400
    assert r.json() == {"error": "Failed to get input map for signature: get_counter"}


def test_multiple_versions_are_served_by_number(aspire):
    name = "saved_model_half_plus_two_2_versions"
    for version in (123, 124):
        r = aspire.post(f"/v1/models/{name}/versions/{version}:predict", {"instances": [[2.0]]})
        assert r.json() == {"predictions": [[3.0]]}
    assert aspire.states(name) == {123: ("AVAILABLE", "OK"), 124: ("AVAILABLE", "OK")}


# ---- classify / regress ----------------------------------------------------------------------


def test_classify_returns_label_score_pairs(aspire):
    r = aspire.post(
        "/v1/models/half_plus_two:classify",
        {"signature_name": "classify_x_to_y", "examples": [{"x": 1.0}, {"x": 4.0}]},
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"results": [[["", 2.5]], [["", 4.0]]]}


def test_regress_with_context_merges_context_features(aspire):
    r = aspire.post(
        "/v1/models/half_plus_two:regress",
        {"signature_name": "regress_x_to_y", "context": {"x": 4.0}, "examples": [{}]},
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"results": [4.0]}


def test_regress_y2_signature(aspire):
    r = aspire.post(
        "/v1/models/half_plus_two:regress",
        {"signature_name": "regress_x_to_y2", "examples": [{"x": 1.0}]},
    )
    assert r.json() == {"results": [3.5]}


def test_classify_unknown_signature(aspire):
    r = aspire.post(
        "/v1/models/half_plus_two:classify", {"signature_name": "nope", "examples": [{"x": 1.0}]}
    )
    assert (r.status_code, r.json()) == (
        400,
        {"error": "No signature was found with the name: nope"},
    )


def test_regress_on_a_predict_signature_is_rejected(aspire):
    r = aspire.post("/v1/models/half_plus_two:regress", {"examples": [{"x": 1.0}]})
    assert r.status_code == 400
    assert r.json()["error"].startswith("No regression inputs found in SignatureDef: ")


# ---- status and metadata ---------------------------------------------------------------------


def test_status_has_tf_serving_shape(aspire):
    r = aspire.get("/v1/models/half_plus_two")
    assert r.status_code == 200
    assert r.json() == {
        "model_version_status": [
            {
                "version": "123",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }


def test_status_of_one_version_and_label_form(aspire):
    r = aspire.get("/v1/models/saved_model_half_plus_two_2_versions/versions/123")
    assert [s["version"] for s in r.json()["model_version_status"]] == ["123"]
    # TF Serving ignores the label on status requests and lists every version, newest first.
    r = aspire.get("/v1/models/saved_model_half_plus_two_2_versions/labels/anything")
    assert [s["version"] for s in r.json()["model_version_status"]] == ["124", "123"]


def test_metadata_matches_tf_serving_file(aspire):
    expected = json.loads((DATA / "half_plus_two_model_metadata.json").read_text())
    expected["model_spec"]["name"] = "half_plus_two"
    r = aspire.get("/v1/models/half_plus_two/metadata")
    assert r.status_code == 200
    assert sorted_deep(r.json()) == sorted_deep(expected)


def test_versioned_metadata_matches_tf_serving_file(aspire):
    expected = json.loads((DATA / "saved_model_half_plus_two_2_versions_metadata.json").read_text())
    r = aspire.get("/v1/models/saved_model_half_plus_two_2_versions/versions/123/metadata")
    assert sorted_deep(r.json()) == sorted_deep(expected)


def test_list_models_lists_every_model(aspire):
    r = aspire.get("/v1/models")
    assert r.status_code == 200
    names = {m["name"] for m in r.json()["models"]}
    assert {"half_plus_two", "counter", "bad_half_plus_two"} <= names


def test_bad_model_is_reported_in_status_while_good_models_serve(aspire):
    statuses = aspire.get("/v1/models/bad_half_plus_two").json()["model_version_status"]
    assert statuses[0]["version"] == "123"
    assert statuses[0]["state"] == "END"
    assert statuses[0]["status"]["error_code"] == "NOT_FOUND"
    assert "Could not find SavedModel .pb or .pbtxt" in statuses[0]["status"]["error_message"]
    r = aspire.post("/v1/models/bad_half_plus_two:predict", {"instances": [1.0]})
    assert (r.status_code, r.json()) == (
        404,
        {"error": "Servable not found for request: Latest(bad_half_plus_two)"},
    )
    assert aspire.post("/v1/models/half_plus_two:predict", {"instances": [1.0]}).status_code == 200


# ---- errors ----------------------------------------------------------------------------------

ERRORS = [
    (
        "POST",
        "/v1/models/half:predict",
        {"instances": [1.0]},
        404,
        "Servable not found for request: Latest(half)",
    ),
    (
        "POST",
        "/v1/models/half_plus_two/versions/7:predict",
        {"instances": [1.0]},
        404,
        "Servable not found for request: Specific(half_plus_two, 7)",
    ),
    (
        "POST",
        "/v1/models/half:predict",
        b"instances = [1, 2]",
        400,
        "JSON Parse error: Invalid value. at offset: 0",
    ),
    (
        "POST",
        "/v1/models/half_plus_two:predict",
        b"",
        400,
        "JSON Parse error: The document is empty",
    ),
    (
        "POST",
        "/v1/models/half_plus_two:predict",
        {"foo": 1},
        400,
        "Missing 'inputs' or 'instances' key",
    ),
    (
        "POST",
        "/v1/models/half_plus_two:predict",
        {"signature_name": "nope", "instances": [1.0]},
        400,
        'Serving signature name: "nope" not found in signature def',
    ),
    (
        "POST",
        "/v1/models/half_plus_two:predict",
        {"instances": ["a"]},
        400,
        "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: "
        'JSON Value: "a" Type: String is not of expected type: float',
    ),
    (
        "POST",
        "/v1/models/half_plus_two:PREDICT",
        {"instances": [1.0]},
        400,
        "Malformed request: POST /v1/models/half_plus_two:PREDICT",
    ),
    (
        "POST",
        "/v1/models/half_plus_two/metadata",
        {},
        400,
        "Malformed request: POST /v1/models/half_plus_two/metadata",
    ),
    ("PUT", "/v1/models/half_plus_two", {}, 400, "Malformed request: PUT /v1/models/half_plus_two"),
    (
        "GET",
        "/v1/models/half_plus_two/versions/18446744073709551615",
        None,
        400,
        "Failed to convert version: 18446744073709551615 to numeric.",
    ),
    ("GET", "/v1/models/nope", None, 404, "Could not find any versions of model nope"),
    (
        "GET",
        "/v1/models/half_plus_two/versions/9",
        None,
        404,
        "Could not find version 9 of model half_plus_two",
    ),
    (
        "GET",
        "/v1/models/half_plus_two/versions/50/labels/x",
        None,
        400,
        "Malformed request: GET /v1/models/half_plus_two/versions/50/labels/x",
    ),
    (
        "POST",
        "/v1/models/half_plus_two/labels/stable:predict",
        {"instances": [1.0]},
        400,
        "Unrecognized servable version label: stable",
    ),
]


@pytest.mark.parametrize("method,path,body,status,message", ERRORS)
def test_errors_have_tf_serving_message_and_status(aspire, method, path, body, status, message):
    import requests

    kw = {"data": body} if isinstance(body, bytes) else ({"json": body} if body is not None else {})
    r = requests.request(method, aspire.url + path, timeout=60, **kw)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"error": message}


def test_percent_encoded_model_name_is_decoded(aspire):
    r = aspire.post("/v1/models/half%5Fplus%5Ftwo:predict", {"instances": [1.0]})
    assert r.json() == {"predictions": [2.5]}


def test_path_outside_v1_and_v2_is_a_plain_404(aspire):
    r = aspire.get("/v3/models/half_plus_two")
    assert r.status_code == 404
    assert "json" not in r.headers["content-type"]


def test_gzip_request_body_is_accepted(aspire):
    body = gzip.compress(json.dumps({"instances": [1.0]}).encode())
    r = aspire.post(
        "/v1/models/half_plus_two:predict",
        body,
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert r.json() == {"predictions": [2.5]}


def test_cors_preflight(aspire):
    import requests

    ok = requests.options(
        aspire.url + "/v1/models/half_plus_two:predict",
        headers={"Origin": "https://example.test"},
        timeout=30,
    )
    bad = requests.options(aspire.url + "/v1/models/half_plus_two:predict", timeout=30)
    assert (ok.status_code, bad.status_code) == (200, 400)


def test_bad_inputs_get_400_nan_is_served_and_the_model_stays_up(aspire):
    for body in [
        b"\xff\xfe",
        b"[1,2",
        b'{"instances": [[1.0], [1.0, 2.0]]}',
        b"{" * 10000,
        b'{"inputs": {"x": {"b64": "!!"}}}',
    ]:
        r = aspire.post("/v1/models/half_plus_two:predict", body)
        assert r.status_code == 400, (body[:30], r.status_code, r.text)
        assert list(r.json()) == ["error"], r.text
    # TF Serving parses NaN (RapidJSON's kParseNanAndInfFlag) and writes it back bare
    r = aspire.post("/v1/models/half_plus_two:predict", b'{"instances": [NaN]}')
    assert (r.status_code, r.text.replace(" ", "").replace("\n", "")) == (
        200,
        '{"predictions":[NaN]}',
    )
    assert aspire.get("/v1/models/half_plus_two").status_code == 200


def _raw_post(
    url: str, head: str, body_chunks, read_timeout_s: float = 30.0
) -> tuple[int, dict, float]:
    """POST over a raw socket: send `head` (request line and headers), then `body_chunks` from a
    thread (the server may answer and close before they are all sent); returns (status, JSON
    body, seconds from the end of the headers to the answer)."""
    import socket
    import threading
    import time
    from urllib.parse import urlparse

    u = urlparse(url)
    sock = socket.create_connection((u.hostname, u.port), timeout=read_timeout_s)

    def send_body():
        try:
            for chunk in body_chunks:
                sock.sendall(chunk)
        except OSError:
            pass  # the server answered and closed: expected for oversized bodies

    sock.sendall(head.encode())
    started = time.perf_counter()
    sender = threading.Thread(target=send_body, daemon=True)
    sender.start()
    data = b""
    while b"\r\n\r\n" not in data or len(data) < data.find(b"\r\n\r\n") + 4 + _content_length(data):
        piece = sock.recv(65536)
        if not piece:
            break
        data += piece
    elapsed = time.perf_counter() - started
    sock.close()
    head_end = data.find(b"\r\n\r\n")
    status = int(data.split(b" ", 2)[1])
    return status, json.loads(data[head_end + 4 :]), elapsed


def _content_length(data: bytes) -> int:
    import re

    m = re.search(rb"(?im)^content-length:\s*(\d+)", data)
    return int(m.group(1)) if m else 0


@pytest.mark.parametrize(
    "path", ["/v1/models/half_plus_two:predict", "/v2/models/half_plus_two/infer"]
)
def test_oversized_body_is_413_before_it_is_read(aspire, path):
    claimed = 1024**3  # 1 GiB announced, 10 bytes sent
    status, body, seconds = _raw_post(
        aspire.url + path,
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {claimed}\r\n\r\n",
        [b'{"instance'],
    )
    assert status == 413
    assert body == {
        "error": f"Request body of {claimed} bytes is larger than the limit of "
        f"{64 * 1024 * 1024} bytes (--rest_api_max_body_bytes)"
    }
    print(f"413 for a 1 GiB Content-Length in {seconds * 1000:.1f} ms, body unread")
    # the server is unharmed
    predict = "/v1/models/half_plus_two:predict"
    assert aspire.post(predict, {"instances": [1.0]}).json() == {"predictions": [2.5]}


def test_chunked_body_over_the_limit_is_413(aspire):
    path = "/v1/models/half_plus_two:predict"
    chunk = b" " * (1024 * 1024)
    framed = [b"%x\r\n" % len(chunk) + chunk + b"\r\n" for _ in range(80)] + [
        b"0\r\n\r\n"
    ]  # 80 MiB
    status, body, _ = _raw_post(
        aspire.url + path,
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n",
        framed,
    )
    assert status == 413
    assert body["error"] == (
        f"Request body is larger than the limit of {64 * 1024 * 1024} bytes "
        "(--rest_api_max_body_bytes)"
    )


def test_gzip_bomb_is_413_without_inflating_past_the_limit(aspire):
    bomb = gzip.compress(bytes(100 * 1024 * 1024))  # 100 MiB of zeros, about 100 KiB sent
    r = aspire.post(
        "/v1/models/half_plus_two:predict",
        bomb,
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert r.status_code == 413
    assert r.json()["error"].startswith("Decompressed request body is larger than the limit of")


def test_half_a_million_nesting_levels_are_400_faster_than_a_valid_body_of_that_size(aspire):
    import time

    body = b'{"instances": ' + b"[" * 500_000 + b"1.0" + b"]" * 500_000 + b"}"
    # the baseline, same run: a valid predict body of the same length
    valid = b'{"instances": [' + b",".join([b"1.0"] * ((len(body) - 16) // 4)) + b"]}"
    assert abs(len(valid) - len(body)) < 8

    def best(payload, runs=3):
        times, answer = [], None
        for _ in range(runs):
            started = time.perf_counter()
            answer = aspire.post("/v1/models/half_plus_two:predict", payload)
            times.append(time.perf_counter() - started)
        return min(times), answer

    refused_s, r = best(body)
    valid_s, ok = best(valid)
    assert r.status_code == 400
    assert r.json()["error"].startswith(
        "JSON Parse error: arrays and objects nest deeper than 256 levels"
    )
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == (len(body) - 16) // 4
    print(
        f"500,000-deep instances over HTTP: 400 in {refused_s * 1000:.0f} ms; a valid body of "
        f"the same size answered in {valid_s * 1000:.0f} ms"
    )
    assert refused_s < valid_s
    assert aspire.post("/v1/models/half_plus_two:predict", {"instances": [1.0]}).json() == {
        "predictions": [2.5]
    }
