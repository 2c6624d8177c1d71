"""JSON nesting limit (CVE-2025-0649's shape): deep bodies are refused with a 400, faster than a
valid body of the same size parses, and the limit leaves every valid request alone."""

import time

import pytest

from core.errors import AspireError
from deployments.wire.json_parser import MAX_JSON_DEPTH
from deployments.wire.tfs_json import parse_body


def nested(depth: int, key: str = "instances") -> bytes:
    inner = depth - 1  # the top-level object is one level
    return b'{"' + key.encode() + b'": ' + b"[" * inner + b"1.0" + b"]" * inner + b"}"


@pytest.mark.parametrize("key", ["instances", "not_a_tensor_key"])
def test_depth_at_the_limit_parses_and_one_more_is_invalid_argument(key):
    doc = parse_body(nested(MAX_JSON_DEPTH, key))
    assert key in doc
    with pytest.raises(AspireError) as info:
        parse_body(nested(MAX_JSON_DEPTH + 1, key))
    assert info.value.code == "INVALID_ARGUMENT"
    assert info.value.message == (
        f"JSON Parse error: arrays and objects nest deeper than {MAX_JSON_DEPTH} "
        f"levels at offset: {len(key) + 5 + MAX_JSON_DEPTH - 1}"
    )


def best_seconds(call, runs: int = 5) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        try:
            call()
        except AspireError:
            pass
        best = min(best, time.perf_counter() - started)
    return best


@pytest.mark.parametrize("key", ["instances", "not_a_tensor_key"])
def test_half_a_million_levels_are_refused_faster_than_a_valid_body_of_that_size_parses(key):
    body = nested(500_000, key)
    with pytest.raises(AspireError) as info:
        parse_body(body)
    assert info.value.code == "INVALID_ARGUMENT" and "nest deeper than" in info.value.message
    # The baseline, same run: a flat, valid body of the same length (a million bytes)
    flat = (
        b'{"'
        + key.encode()
        + b'": ['
        + b",".join([b"1"] * ((len(body) - len(key) - 8) // 2))
        + b"]}"
    )
    assert abs(len(flat) - len(body)) < 16
    refused_s, parsed_s = (
        best_seconds(lambda: parse_body(body)),
        best_seconds(lambda: parse_body(flat)),
    )
    print(
        f"500,000-deep {key}: 400 after {refused_s * 1000:.1f} ms; a valid body of the same "
        f"size parses in {parsed_s * 1000:.1f} ms"
    )
    assert refused_s < parsed_s


def test_brackets_inside_strings_do_not_count():
    deep_text = "[" * (MAX_JSON_DEPTH * 4)
    doc = parse_body(('{"instances": ["' + deep_text + '"]}').encode())
    assert doc == {"instances": [deep_text]}


def test_wide_bodies_with_many_brackets_still_parse():
    rows = ",".join("[1.0, 2.0]" for _ in range(10_000))
    assert len(parse_body(('{"instances": [' + rows + "]}").encode())["instances"]) == 10_000
