"""The model-name rule (core/names.py) through both edges' parsers: REST `parse_path`
after percent-decoding, gRPC `spec_target` on the ModelSpec as sent."""

import time
from urllib.parse import quote

import pytest
from tensorflow_serving.apis import model_pb2

from core.errors import AspireError
from core.names import MAX_NAME_CHARS, check_name, escape, why_invalid
from deployments.router.tfs_grpc import spec_target
from deployments.router.tfs_rest import parse_path

# Triton's ModelNameValidationTest.INVALID_TRAVERSAL_NAMES (qa/L0_input_validation).
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
# Triton's valid names (test_model_name_valid) and a few more: odd, but not paths.
VALID_ODD_NAMES = [
    "model123",
    "model.version1",
    "...",
    "..my_model",
    "model..1",
    "model....1",
    "a.b",
    "model  OAI",
    "модель",
    "模型",
    "a~b",
    "x" * MAX_NAME_CHARS,
]
UNICODE_TRAVERSAL = {
    "\uff0e\uff0e": "is a relative path component",  # fullwidth full stops
    "\u2025": "is a relative path component",  # two dot leader
    "\u2024": "is a relative path component",  # one dot leader
    "\ufe52\ufe52": "is a relative path component",  # small full stops
    "..\uff0fetc": "contains a path separator",  # fullwidth solidus
    "..\u2215etc": "contains a path separator",  # division slash (no NFKC form)
    "..\u2044etc": "contains a path separator",  # fraction slash
    "..\uff3cetc": "contains a path separator",  # fullwidth reverse solidus
    "..\\etc": "contains a path separator",
}


@pytest.mark.parametrize("name", TRITON_TRAVERSAL_NAMES)
def test_triton_traversal_names_are_refused_by_both_edges(name):
    with pytest.raises(AspireError) as rest:
        parse_path("GET", "/v1/models/" + quote(name, safe=""))
    with pytest.raises(AspireError) as grpc:
        spec_target(model_pb2.ModelSpec(name=name))
    for err in (rest.value, grpc.value):
        assert err.code == "INVALID_ARGUMENT"
        assert err.message.startswith(f"Invalid model name: '{escape(name)}' ("), err.message
    print(f"{name!r}: {rest.value.message}")


@pytest.mark.parametrize("name", VALID_ODD_NAMES)
def test_odd_but_valid_names_reach_the_lookup(name):
    assert why_invalid(name) is None
    assert parse_path("POST", f"/v1/models/{quote(name, safe='')}:predict")["name"] == name
    assert spec_target(model_pb2.ModelSpec(name=name)) == (name, None, None)


@pytest.mark.parametrize(
    "raw,reason",
    [
        ("%2e%2e%2fetc", "contains a path separator"),
        ("%2E%2E", "is a relative path component"),
        ("..%2f..%2fetc", "contains a path separator"),
        ("m%2Fx", "contains a path separator"),
        ("m%5Cx", "contains a path separator"),
        ("m%00", "contains a control or other non-printable character"),
        ("m%0Ax", "contains a control or other non-printable character"),
        ("m%7F", "contains a control or other non-printable character"),
        ("m%C2%85", "contains a control or other non-printable character"),  # C1 NEL
        ("m%E2%80%8B", "contains a control or other non-printable character"),  # zero-width space
        ("%20m", "starts or ends with whitespace"),
        ("m%09", "contains a control or other non-printable character"),
        ("~root", "starts with '~'"),
        ("%EF%BD%9Eroot", "starts with '~'"),  # fullwidth tilde
        ("%EF%BC%8E%EF%BC%8E", "is a relative path component"),
        ("x" * (MAX_NAME_CHARS + 1), f"longer than {MAX_NAME_CHARS} characters"),
    ],
)
def test_url_encoded_forms_are_refused_after_decoding(raw, reason):
    for path in (f"/v1/models/{raw}", f"/v1/models/{raw}/metadata", f"/v1/models/{raw}/versions/1"):
        with pytest.raises(AspireError) as err:
            parse_path("GET", path)
        assert err.value.code == "INVALID_ARGUMENT"
        assert err.value.message.startswith("Invalid model name: '"), err.value.message
        assert err.value.message.endswith(f"({reason})"), err.value.message


@pytest.mark.parametrize("name,reason", list(UNICODE_TRAVERSAL.items()))
def test_unicode_dot_and_slash_forms_are_refused(name, reason):
    assert why_invalid(name) == reason
    with pytest.raises(AspireError) as err:
        spec_target(model_pb2.ModelSpec(name=name))
    assert err.value.message.endswith(f"({reason})")


def test_labels_follow_the_same_rule_on_both_edges():
    with pytest.raises(AspireError) as rest:
        parse_path("POST", "/v1/models/m/labels/..%2Fx:predict")
    assert rest.value.message == "Invalid model version label: '../x' (contains a path separator)"
    with pytest.raises(AspireError) as grpc:
        spec_target(model_pb2.ModelSpec(name="m", version_label=".."))
    assert grpc.value.message == "Invalid model version label: '..' (is a relative path component)"
    assert parse_path("GET", "/v1/models/m/labels/can.ary")["label"] == "can.ary"


def test_the_message_echoes_at_most_64_escaped_characters():
    name = "\x00\x1b[31m" + "é" + "\\" + "\U0001f600" + "y" * 300
    with pytest.raises(AspireError) as err:
        check_name(name)
    echoed = err.value.message.split("'")[1]
    assert echoed.startswith(r"\x00\x1b[31m\xe9\x5c\U0001f600yyy")
    assert echoed.endswith("y...")
    assert all(0x20 <= ord(c) < 0x7F for c in err.value.message)
    assert len(echoed) == len(r"\x00\x1b[31m\xe9\x5c\U0001f600") + 64 - 9 + len("...")
    print(f"message for a 309-character name: {len(err.value.message)} characters")


def best_seconds(call, runs: int = 5) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return best


def test_the_check_is_cheap_even_for_a_megabyte_name():
    """The length is checked before any character is read: refusing a 1 MB name costs less
    than one pass over it (`str.isprintable`, the check's first read of a name), measured in the
    same run, best of 5 each, so a loaded machine slows both sides alike."""
    name = "a" * 1_000_000
    assert why_invalid(name) == f"longer than {MAX_NAME_CHARS} characters"
    refused_s = best_seconds(lambda: why_invalid(name))
    one_read_s = best_seconds(name.isprintable)
    per_name_s = best_seconds(lambda: why_invalid("half_plus_two"))
    print(
        f"1 MB name refused in {refused_s * 1e6:.2f} us, one read of it {one_read_s * 1e6:.0f} us; "
        f"a normal name checked in {per_name_s * 1e6:.2f} us"
    )
    assert refused_s < one_read_s
