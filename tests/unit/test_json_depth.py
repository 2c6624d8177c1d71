"""JSON nesting limit (CVE-2025-0649's shape): deep bodies are refused fast, with a 400, and the
limit leaves every valid request alone."""
import time

import pytest

from deployments.errors import AspireError
from deployments.json_tensor import parse_body
from deployments.rapidjson_compat import MAX_JSON_DEPTH


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
    assert info.value.message == (f"JSON Parse error: arrays and objects nest deeper than {MAX_JSON_DEPTH} "
                                  f"levels at offset: {len(key) + 5 + MAX_JSON_DEPTH - 1}")


@pytest.mark.parametrize("key", ["instances", "not_a_tensor_key"])
def test_half_a_million_levels_are_refused_in_well_under_a_second(key):
    body = nested(500_000, key)
    started = time.perf_counter()
    with pytest.raises(AspireError) as info:
        parse_body(body)
    seconds = time.perf_counter() - started
    assert info.value.code == "INVALID_ARGUMENT" and "nest deeper than" in info.value.message
    print(f"500,000-deep {key}: 400 after {seconds * 1000:.0f} ms")


def test_brackets_inside_strings_do_not_count():
    deep_text = "[" * (MAX_JSON_DEPTH * 4)
    doc = parse_body(('{"instances": ["' + deep_text + '"]}').encode())
    assert doc == {"instances": [deep_text]}


def test_wide_bodies_with_many_brackets_still_parse():
    rows = ",".join("[1.0, 2.0]" for _ in range(10_000))
    assert len(parse_body(('{"instances": [' + rows + "]}").encode())["instances"]) == 10_000
