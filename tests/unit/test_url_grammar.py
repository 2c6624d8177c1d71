"""TF Serving's REST URL grammar and servable resolution
(tfs_rest.parse_path / RouterCore.resolve)."""

import pytest

from core.contracts import ServingMap, VersionAddress
from core.errors import AspireError
from deployments.router.core import resolve
from deployments.router.tfs_rest import parse_path


@pytest.mark.parametrize(
    "method,path,expected",
    [
        (
            "POST",
            "/v1/models/m:predict",
            {"kind": "predict", "name": "m", "version": None, "label": None},
        ),
        (
            "POST",
            "/v1/models/m/versions/00012:classify",
            {"kind": "classify", "name": "m", "version": 12, "label": None},
        ),
        (
            "POST",
            "/v1/models/m/labels/stable:regress",
            {"kind": "regress", "name": "m", "version": None, "label": "stable"},
        ),
        (
            "POST",
            "/V1/MODELS/m:predict",
            {"kind": "predict", "name": "m", "version": None, "label": None},
        ),
        ("GET", "/v1/models/m", {"kind": "status", "name": "m", "version": None, "label": None}),
        (
            "GET",
            "/v1/models/m/versions/3",
            {"kind": "status", "name": "m", "version": 3, "label": None},
        ),
        (
            "GET",
            "/v1/models/m/labels/canary/metadata",
            {"kind": "metadata", "name": "m", "version": None, "label": "canary"},
        ),
        ("GET", "/v1/models", {"kind": "list"}),
        # TF Serving's reserved-character name, less %2F: a "/" in a name is refused (core/names.py)
        (
            "GET",
            "/v1/models/modelname%21%23%24%25%26%27%28%29%2A%2B%2C%3A%3B%3D%3F%40%5B%5D",
            {
                "kind": "status",
                "name": "modelname!#$%&'()*+,:;=?@[]",
                "version": None,
                "label": None,
            },
        ),
    ],
)
def test_urls_parse_as_tf_serving_parses_them(method, path, expected):
    assert parse_path(method, path) == expected


@pytest.mark.parametrize(
    "method,path,message",
    [
        ("POST", "/v1/models/m:PREDICT", "Malformed request: POST /v1/models/m:PREDICT"),
        ("POST", "/v1/models/m/metadata", "Malformed request: POST /v1/models/m/metadata"),
        ("POST", "/v1/models/m:explain", "Malformed request: POST /v1/models/m:explain"),
        (
            "GET",
            "/v1/models/m/versions/1/labels/x",
            "Malformed request: GET /v1/models/m/versions/1/labels/x",
        ),
        ("GET", "/v1/models/m/versions/v1", "Malformed request: GET /v1/models/m/versions/v1"),
        ("GET", "/v1/models/", "Malformed request: GET /v1/models/"),
        ("GET", "/v1/models/m/METADATA", "Malformed request: GET /v1/models/m/METADATA"),
        ("DELETE", "/v1/models/m", "Malformed request: DELETE /v1/models/m"),
        (
            "GET",
            "/v1/models/m/versions/18446744073709551615",
            "Failed to convert version: 18446744073709551615 to numeric.",
        ),
        ("GET", "/v1/models/%FF", "Failed to decode model name:%FF"),
        (
            "GET",
            "/v1/models/modelname%2F",
            "Invalid model name: 'modelname/' (contains a path separator)",
        ),
    ],
)
def test_bad_urls_get_tf_serving_messages(method, path, message):
    with pytest.raises(AspireError) as err:
        parse_path(method, path)
    assert (err.value.code, err.value.message) == ("INVALID_ARGUMENT", message)


SERVING = ServingMap(
    epoch=3,
    models={"m": {1: VersionAddress(apps=(("a1", 1),)), 4: VersionAddress(apps=(("a4", 1),))}},
    labels={"m": {"stable": 1}},
)


def test_latest_is_the_highest_available_version():
    assert resolve(SERVING, "m", None, None) == (4, VersionAddress(apps=(("a4", 1),)))


def test_specific_version_and_label_resolve():
    assert resolve(SERVING, "m", 1, None)[0] == 1
    assert resolve(SERVING, "m", None, "stable")[0] == 1


@pytest.mark.parametrize(
    "name,version,label,code,message",
    [
        ("x", None, None, "NOT_FOUND", "Servable not found for request: Latest(x)"),
        ("m", 2, None, "NOT_FOUND", "Servable not found for request: Specific(m, 2)"),
        ("m", None, "canary", "INVALID_ARGUMENT", "Unrecognized servable version label: canary"),
    ],
)
def test_unresolvable_requests(name, version, label, code, message):
    with pytest.raises(AspireError) as err:
        resolve(SERVING, name, version, label)
    assert (err.value.code, err.value.message) == (code, message)


def test_error_codes_map_to_tf_serving_http_statuses():
    from core.errors import CODES, http_status

    expected = {
        "OK": 200,
        "CANCELLED": 499,
        "UNKNOWN": 500,
        "INVALID_ARGUMENT": 400,
        "DEADLINE_EXCEEDED": 504,
        "NOT_FOUND": 404,
        "ALREADY_EXISTS": 409,
        "PERMISSION_DENIED": 403,
        "RESOURCE_EXHAUSTED": 429,
        "FAILED_PRECONDITION": 400,
        "ABORTED": 409,
        "OUT_OF_RANGE": 400,
        "UNIMPLEMENTED": 501,
        "INTERNAL": 500,
        "UNAVAILABLE": 503,
        "DATA_LOSS": 500,
        "UNAUTHENTICATED": 401,
    }
    assert {c: http_status(c) for c in CODES} == expected
    assert http_status("SOMETHING_ELSE") == 500


def test_huge_version_and_long_paths_are_refused_with_short_messages():
    with pytest.raises(AspireError) as err:
        parse_path("GET", "/v1/models/m/versions/" + "9" * 5000)
    assert err.value.code == "INVALID_ARGUMENT"
    assert err.value.message == f"Failed to convert version: {'9' * 256}... to numeric."
    with pytest.raises(AspireError) as err:
        parse_path("PUT", "/v1/models/" + "a" * 5000)
    assert err.value.message == f"Malformed request: PUT /v1/models/{'a' * 245}..."
