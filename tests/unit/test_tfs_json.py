"""Unit tests for deployments.wire.tfs_json: TF Serving's REST JSON <-> tensor codec.

Expected parse-error offsets and debug strings were produced by RapidJSON 1.1.0 (the version TF
Serving pins) with TF Serving's parse flags and its JsonValueToDebugString writer.
"""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest

from core.errors import AspireError
from deployments.wire import tfs_json as jt
from deployments.wire import tfs_json_response
from deployments.wire.tfs_json import (
    TensorSpec,
    debug_string,
    decode_examples,
    decode_predict_request,
    parse_body,
    signature_name_of,
)
from deployments.wire.tfs_json_response import (
    encode_classify_response,
    encode_predict_response,
    encode_regress_response,
)


def specs(**dtypes):
    return {name: TensorSpec(dtype, None) for name, dtype in dtypes.items()}


def decode(body: bytes | str, **dtypes):
    if isinstance(body, str):
        body = body.encode()
    return decode_predict_request(parse_body(body), specs(**dtypes))


def error_of(fn, *args, **kwargs) -> AspireError:
    with pytest.raises(AspireError) as info:
        fn(*args, **kwargs)
    return info.value


# --------------------------------------------------------------------------------------- parse_body
def test_empty_body_is_the_document_is_empty_without_offset():
    err = error_of(parse_body, b"")
    assert (err.message, err.code) == (
        "JSON Parse error: The document is empty",
        "INVALID_ARGUMENT",
    )


@pytest.mark.parametrize(
    "body, message",
    [
        (b"  ", "The document is empty. at offset: 2"),
        (b"]", "The document is empty. at offset: 0"),
        (b"instances = [1, 2]", "Invalid value. at offset: 0"),
        (b'{"instances": [1, 2]', "Missing a comma or '}' after an object member. at offset: 20"),
        (b'{"instances" [1]}', "Missing a colon after a name of object member. at offset: 13"),
        (b'{"a": 1 "b": 2}', "Missing a comma or '}' after an object member. at offset: 8"),
        (b'{"a": [1 2]}', "Missing a comma or ']' after an array element. at offset: 9"),
        (b'{"a": "abc', "Missing a closing quotation mark in string. at offset: 10"),
        (b"{1: 2}", "Missing a name for object member. at offset: 1"),
        (b'{"a": [1,]}', "Invalid value. at offset: 9"),
        (b'{"a": 1,}', "Missing a name for object member. at offset: 8"),
        (b'{"a": 1e400}', "Number too big to be stored in double. at offset: 6"),
        (b'{"a": 0e400}', "Number too big to be stored in double. at offset: 6"),
        (b'{"a": ' + b"9" * 400 + b"}", "Number too big to be stored in double. at offset: 6"),
        (b'{"a": 1.}', "Miss fraction part in number. at offset: 8"),
        (b'{"a": 1e}', "Miss exponent in number. at offset: 8"),
        (b'{"a": -}', "Invalid value. at offset: 7"),
        (b'{"a": .5}', "Invalid value. at offset: 6"),
        (b'{"a": +1}', "Invalid value. at offset: 6"),
        (b'{"a": 01}', "Missing a comma or '}' after an object member. at offset: 7"),
        (b'{"a": [1]]', "Missing a comma or '}' after an object member. at offset: 9"),
        (b'{"a" : }', "Invalid value. at offset: 7"),
        (b'{"a": "\\x"}', "Invalid escape character in string. at offset: 7"),
        (b'{"a": "\\u12G4"}', "Incorrect hex digit after \\u escape in string. at offset: 7"),
        (b'{"a": "\\ud800"}', "The surrogate pair in string is invalid. at offset: 7"),
        (b'{"a": "\\ud800\\u0041"}', "The surrogate pair in string is invalid. at offset: 7"),
        (b'{"a": "b\x01"}', "Invalid escape character in string. at offset: 8"),
        (b'{"a":\x00}', "Invalid value. at offset: 5"),
        (b'{"a": nul}', "Invalid value. at offset: 9"),
        (b'{"a": tru}', "Invalid value. at offset: 9"),
        (b'{"a": Infinit}', "Invalid value. at offset: 13"),
        (b'{"a": NaX}', "Invalid value. at offset: 8"),
        (b"\xef\xbb\xbfx", "Invalid value. at offset: 3"),
    ],
)
def test_syntax_errors_carry_rapidjson_message_and_byte_offset(body, message):
    err = error_of(parse_body, body)
    assert err.message == "JSON Parse error: " + message
    assert err.code == "INVALID_ARGUMENT"


@pytest.mark.parametrize(
    "body, shown",
    [
        (b"[1, 2]", "[1, 2]"),
        (b'"abc"', '"abc"'),
        (b"3", "3"),
        (b"null", "null"),
        (b"NaN", ""),  # RapidJSON's writer refuses NaN, so nothing is shown
    ],
)
def test_top_level_non_object_is_not_object(body, shown):
    assert error_of(parse_body, body).message == f"JSON Value: {shown} Is not object"


def test_nan_and_infinity_tokens_are_accepted_including_rapidjson_spellings():
    doc = parse_body(b'{"a": NaN, "b": Infinity, "c": -Infinity, "d": Inf, "e": -Inf, "f": -NaN}')
    assert math.isnan(doc["a"]) and math.isnan(doc["f"])
    assert (doc["b"], doc["c"], doc["d"], doc["e"]) == (math.inf, -math.inf, math.inf, -math.inf)


def test_trailing_bytes_after_the_document_are_ignored():
    assert parse_body(b'{"a": [1, 2]} trailing garbage {') == {"a": [1, 2]}
    assert parse_body(b'{"a": 1}\x00\xff') == {"a": 1}


def test_utf8_bom_bytes_are_skipped():
    assert parse_body(b'\xef\xbb\xbf {"a": 1}') == {"a": 1}


def test_invalid_utf8_is_kept_byte_for_byte_in_string_tensors():
    tensors, _ = decode(b'{"instances": ["\xff\xfeok", "\xc3\xa9"]}', x="DT_STRING")
    assert tensors["x"].tolist() == [b"\xff\xfeok", "é".encode()]


def test_escaped_lone_low_surrogate_is_kept_as_rapidjson_encodes_it():
    tensors, _ = decode(b'{"inputs": ["\\udc80", "\\ud83d\\ude00"]}', x="DT_STRING")
    assert tensors["x"].tolist() == [b"\xed\xb2\x80", "\U0001f600".encode()]


def test_numbers_classify_like_rapidjson_ints_and_doubles():
    doc = parse_body(
        b'{"a": [1, 1.0, -0, 18446744073709551615, 18446744073709551616, 2e308, 1e-400]}'
    )
    assert doc["a"][:4] == [1, 1.0, 0, 2**64 - 1]
    assert type(doc["a"][0]) is int and type(doc["a"][1]) is float
    assert doc["a"][5] == math.inf and doc["a"][6] == 0.0


def test_deeply_nested_body_is_refused_even_under_an_ignored_key():
    # TF Serving parses this and answers; Aspire refuses it (MAX_JSON_DEPTH, test_json_depth.py)
    body = b'{"instances":[1], "nested":' + b"[" * 500000 + b"]" * 500000 + b"}"
    err = error_of(parse_body, body)
    assert err.code == "INVALID_ARGUMENT" and "nest deeper than 256 levels" in err.message


def test_nested_bad_signature_name_reports_truncated_document():
    doc = parse_body(b'{"signature_name":' + b"[" * 200 + b"]" * 200 + b"}")
    err = error_of(signature_name_of, doc)
    assert err.message.endswith(
        "not formatted correctly. 'signature_name' key must be a string value."
    )
    assert err.message.startswith('JSON Value: {\n    "signature_name": [[[[')


@pytest.mark.parametrize(
    "body",
    [
        b'{"a": [1, 2.5, "x\\n\\u00e9", true, false, null, {"b": []}], "c": {"d": -1.5e-7}}',
        b'{"a": "\\ud83d\\ude00", "b": 1e100, "c": [0.1, 12345678901234567890, '
        b"-9223372036854775808]}",
        b'{"a": "x,1e999"}',
    ],
)
def test_fast_and_exact_parsers_agree_on_valid_bodies(body):
    start = 0
    assert jt._rj_parse(body, start) == jt._parse_value(body) == json.loads(body)


def test_truncated_large_numeric_body_reports_the_offset_of_its_end():
    body = json.dumps({"instances": [[i * 0.5, -i, 1e-3] for i in range(20000)]}).encode()[:-1]
    assert error_of(parse_body, body).message == (
        f"JSON Parse error: Missing a comma or '}}' after an object member. at offset: {len(body)}"
    )


def test_exact_parser_numeric_runs_match_element_by_element_parsing():
    body = b'{"a": [1, -0, 2.5e-3, 0.1 , 7E+2,[3, 4,5], 123456789012345678901234567890, 6]}'
    assert jt._rj_parse(body, 0) == json.loads(body)


# ------------------------------------------------------------------------------------ debug strings
@pytest.mark.parametrize(
    "body, expected",
    [
        (
            b'{"instances": [1, 2.5, "x", true, null, {"b64": "aGk="}], "signature_name": "sig"}',
            '{\n    "instances": [1, 2.5, "x", true, null, {\n            "b64": "aGk="\n'
            '        }],\n    "signature_name": "sig"\n}',
        ),
        (
            b'{"a": {"b": {"c": []}, "d": {}}, "e": [[], [{}], [[1]]]}',
            '{\n    "a": {\n        "b": {\n            "c": []\n        },\n        "d": {}\n'
            '    },\n    "e": [[], [{}], [[1]]]\n}',
        ),
        (
            b'{"k\\n": "\\u0001\\"\\\\\\/\xc3\xa9\\u007f"}',
            '{\n    "k\\n": "\\u0001\\"\\\\/é\x7f"\n}',
        ),
        (b'{"a": [1, NaN, 2]}', '{\n    "a": [1, '),
        (
            b"[1e21, 1e22, 1e-7, 0.000001, -0.0, 5e-324, 1.7976931348623157e308, 100, 1E2, "
            b"18446744073709551615]",
            "[1e21, 1e22, 1e-7, 0.000001, -0.0, 5e-324, 1.7976931348623157e308, 100, 100.0, "
            "18446744073709551615]",
        ),
    ],
)
def test_debug_string_matches_rapidjson_pretty_writer_with_single_line_arrays(body, expected):
    assert debug_string(jt._parse_value(body)) == expected


def test_debug_string_stops_at_first_event_after_256_bytes():
    doc = {"instances": list(range(200))}
    expected = '{\n    "instances": [' + ", ".join(map(str, range(62)))
    assert debug_string(doc) == expected
    assert len(expected.encode()) >= 256 > len(expected.encode()) - len(", 61")


def test_debug_string_writes_a_long_token_whole_then_stops():
    text = debug_string({"s": "x" * 300, "t": 1})
    assert text == '{\n    "s": "' + "x" * 300 + '"'


def test_debug_string_uses_grisu2_digits_not_python_repr():
    assert repr(-266750.48156762985) == "-266750.48156762985"
    assert debug_string([-266750.48156762985]) == "[-266750.48156762987]"


# ----------------------------------------------------------------------------------- signature_name
def test_signature_name_defaults_to_empty_and_must_be_a_string():
    assert signature_name_of({"instances": [1]}) == ""
    assert signature_name_of({"signature_name": "serving_default"}) == "serving_default"
    err = error_of(signature_name_of, {"signature_name": 5, "instances": [[1, 2]]})
    assert err.message == (
        'JSON Value: {\n    "signature_name": 5,\n    "instances": [[1, 2]]\n} not formatted '
        "correctly. 'signature_name' key must be a string value."
    )
    assert err.code == "INVALID_ARGUMENT"


# ---------------------------------------------------------------------------------- predict request
@pytest.mark.parametrize(
    "body, dtypes, message",
    [
        (
            '{"instances": [1], "inputs": [1]}',
            {"x": "DT_FLOAT"},
            'JSON Value: {\n    "instances": [1],\n    "inputs": [1]\n'
            "} Not formatted correctly expecting only one of "
            "'inputs' or 'instances' keys to exist ",
        ),
        ('{"signature_name": "s"}', {"x": "DT_FLOAT"}, "Missing 'inputs' or 'instances' key"),
        (
            '{"instances": 5}',
            {"x": "DT_FLOAT"},
            "JSON Value: {\n    \"instances\": 5\n} Expecting 'instances' to be an list/array",
        ),
        (
            '{"instances": []}',
            {"x": "DT_FLOAT"},
            "JSON Value: {\n    \"instances\": []\n} No values in 'instances' array",
        ),
        (
            '{"instances": [1, 2]}',
            {"x": "DT_FLOAT", "y": "DT_FLOAT"},
            "instances is a plain list, but expecting list of objects as multiple input tensors "
            "required as per tensorinfo_map",
        ),
        (
            '{"instances": [{"x": 1, "y": 2}, [1, 20, 30]]}',
            {"x": "DT_FLOAT", "y": "DT_FLOAT"},
            "Expecting object but got list at item 1 of input list",
        ),
        (
            '{"instances": [["baz", "bar"], {"x": ["baz", "bat"]}]}',
            {"x": "DT_STRING"},
            "Expecting value/list but got object at item 1 of input list",
        ),
        (
            '{"instances": [{"x": 1, "z": 2}]}',
            {"x": "DT_FLOAT", "y": "DT_FLOAT"},
            "Failed to process element: 0 key: z of 'instances' list. Error: INVALID_ARGUMENT: "
            "JSON object: does not have named input: z",
        ),
        (
            '{"instances": [{"x": 1, "y": 2}, {"y": 3}]}',
            {"x": "DT_FLOAT", "y": "DT_FLOAT"},
            "Failed to process element: 1 of 'instances' list. JSON object: {\n    \"y\": 3\n"
            "} keys must be equal to: x,y",
        ),
        (
            '{"instances": [[1,2],[3,4],[5,6,7]]}',
            {"x": "DT_INT32"},
            "Failed to process element: 2 of 'instances' list. Error: INVALID_ARGUMENT: Expecting "
            "tensor size: 2 but got: 3",
        ),
        (
            '{"instances": [[1,2],[3,4],[[5,6]]]}',
            {"x": "DT_INT32"},
            "Failed to process element: 2 of 'instances' list. Error: INVALID_ARGUMENT: Expecting "
            "shape [2] but got: [1,2]",
        ),
        (
            '{"instances": [1, [1]]}',
            {"x": "DT_INT32"},
            "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: Expecting "
            "shape [] but got: [1]",
        ),
        (
            '{"instances": [[[1],[2]], [[1, 2]]]}',
            {"x": "DT_FLOAT"},
            "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: Expecting "
            "shape [2,1] but got: [1,2]",
        ),
        (
            '{"instances": [{"i": [[1,2],[3,4]], "s": ["a"]}, {"i": [[[7,8],[9,0]]], "s": ["b"]}]}',
            {"i": "DT_INT32", "s": "DT_STRING"},
            "Failed to process element: 1 key: i of 'instances' list. Error: INVALID_ARGUMENT: "
            "Expecting shape [2,2] but got: [1,2,2]",
        ),
        (
            '{"instances": [[1,2],["a", "b"]]}',
            {"x": "DT_INT32"},
            "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: JSON "
            'Value: "a" Type: String is not of expected type: int32',
        ),
        (
            '{"instances": [[1, 2, 3], [4, 5]]}',
            {"x": "DT_FLOAT"},
            "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: Expecting "
            "tensor size: 3 but got: 2",
        ),
        (
            '{"instances": [[1, [2]]]}',
            {"x": "DT_FLOAT"},
            "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: "
            "Encountered list at unexpected level: 1 expected < 1",
        ),
        (
            '{"instances": [[[1], 2]]}',
            {"x": "DT_FLOAT"},
            "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: JSON "
            "Value: 2 found at incorrect level: 2 in the JSON DOM. Expected at level: 2",
        ),
        (
            '{"instances": [[[1, 2], [3]]]}',
            {"x": "DT_FLOAT"},
            "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: "
            "Encountered list at unexpected size: 1 at level: 1 expected size: 2",
        ),
        (
            '{"inputs": [[1, 2], [3]]}',
            {"x": "DT_FLOAT"},
            "Encountered list at unexpected size: 1 at level: 1 expected size: 2",
        ),
        (
            '{"inputs": [1, 2]}',
            {"x": "DT_FLOAT", "y": "DT_FLOAT"},
            "inputs is a plain value/list, but expecting an object as multiple input tensors "
            "required as per tensorinfo_map",
        ),
        (
            '{"inputs": {"b64": "aGk="}}',
            {"x": "DT_STRING", "y": "DT_FLOAT"},
            "inputs is a plain value/list, but expecting an object as multiple input tensors "
            "required as per tensorinfo_map",
        ),
        (
            '{"inputs": {"x": [1]}}',
            {"x": "DT_FLOAT", "y": "DT_FLOAT"},
            "Missing named input: y in 'inputs' object.",
        ),
        (
            '{"inputs": {"foo": [1]}}',
            {"x": "DT_FLOAT"},
            "Missing named input: x in 'inputs' object.",
        ),
    ],
)
def test_predict_request_shape_and_format_errors(body, dtypes, message):
    err = error_of(decode, body, **dtypes)
    assert (err.message, err.code) == (message, "INVALID_ARGUMENT")


@pytest.mark.parametrize(
    "value, dtype, shown, type_name",
    [
        ("1.0", "DT_INT32", "1.0", "Number"),
        ("1.5", "DT_INT64", "1.5", "Number"),
        ("true", "DT_INT32", "true", "True"),
        ("1", "DT_BOOL", "1", "Number"),
        ("false", "DT_FLOAT", "false", "False"),
        ("null", "DT_DOUBLE", "null", "Null"),
        ('"1"', "DT_FLOAT", '"1"', "String"),
        ("-1", "DT_UINT32", "-1", "Number"),
        ("-1", "DT_UINT64", "-1", "Number"),
        ("2147483648", "DT_INT32", "2147483648", "Number"),
        ("-2147483649", "DT_INT8", "-2147483649", "Number"),
        ("4294967296", "DT_UINT32", "4294967296", "Number"),
        ("9223372036854775808", "DT_INT64", "9223372036854775808", "Number"),
        ("18446744073709551616", "DT_UINT64", "18446744073709553000.0", "Number"),
        ("1", "DT_STRING", "1", "Number"),
        ('{"a": 1}', "DT_FLOAT", '{\n    "a": 1\n}', "Object"),
        ('{"b64": "aGk="}', "DT_INT32", '{\n    "b64": "aGk="\n}', "Object"),
        ("NaN", "DT_STRING", "", "Number"),
    ],
)
def test_dtype_rules_reject_values_of_the_wrong_json_type(value, dtype, shown, type_name):
    err = error_of(decode, '{"inputs": [%s]}' % value, x=dtype)
    tf_name = dtype[3:].lower()
    assert (
        err.message == f"JSON Value: {shown} Type: {type_name} is not of expected type: {tf_name}"
    )
    assert err.code == "INVALID_ARGUMENT"


@pytest.mark.parametrize(
    "value, dtype, expected",
    [
        ("[1, 2.0, 3, 5.003, 0.007, 0.0]", "DT_FLOAT", np.float32([1, 2, 3, 5.003, 0.007, 0])),
        ("[1435774380, 1435774380.0]", "DT_FLOAT", np.float32([1435774336, 1435774336])),
        (
            "[1.7976931348623157e308, -1.7976931348623157e308, 2.2250738585072014e-308]",
            "DT_FLOAT",
            np.float32([np.inf, -np.inf, 0]),
        ),
        ("[1.0, 2, 0.662, 0]", "DT_DOUBLE", np.float64([1, 2, 0.662, 0])),
        ("[NaN, Infinity, -Infinity]", "DT_FLOAT", np.float32([np.nan, np.inf, -np.inf])),
        ("[-2147483648, 2147483647]", "DT_INT32", np.int32([-(2**31), 2**31 - 1])),
        ("[300, -1]", "DT_UINT8", np.uint8([44, 255])),
        ("[40000]", "DT_INT16", np.int16([-25536])),
        (
            "[-9223372036854775808, 9223372036854775807]",
            "DT_INT64",
            np.int64([-(2**63), 2**63 - 1]),
        ),
        ("[0, 4294967295]", "DT_UINT32", np.uint32([0, 2**32 - 1])),
        ("[18446744073709551615]", "DT_UINT64", np.uint64([2**64 - 1])),
        ("[true, false]", "DT_BOOL", np.bool_([True, False])),
    ],
)
def test_dtype_rules_convert_accepted_values_like_tf_serving(value, dtype, expected):
    for body in ('{"inputs": %s}' % value, '{"instances": %s}' % value):
        tensors, _ = decode(body, x=dtype)
        assert tensors["x"].dtype == expected.dtype
        np.testing.assert_array_equal(tensors["x"], expected)


@pytest.mark.parametrize(
    "body, code, message",
    [
        ('{"inputs": [1.5]}', "UNIMPLEMENTED", "Conversion of JSON Value: 1.5 to type: half"),
        (
            '{"instances": [1]}',
            "INVALID_ARGUMENT",
            "Failed to process element: 0 of 'instances' list. Error: UNIMPLEMENTED: Conversion of "
            "JSON Value: 1 to type: half",
        ),
        (
            '{"inputs": [{"b64": "aGk="}]}',
            "INVALID_ARGUMENT",
            'JSON Value: {\n    "b64": "aGk="\n} Type: Object is not of expected type: half',
        ),
    ],
)
def test_unsupported_input_dtype_is_unimplemented_in_columnar_and_wrapped_in_row_format(
    body, code, message
):
    err = error_of(decode, body, x="DT_HALF")
    assert (err.code, err.message) == (code, message)


def test_unsupported_input_dtype_without_values_gives_an_empty_tensor():
    tensors, _ = decode('{"inputs": []}', x="DT_HALF")
    assert tensors["x"].shape == (0,) and tensors["x"].dtype == np.float16


@pytest.mark.parametrize(
    "value, expected",
    [
        ('{"b64": "aGVsbG8="}', b"hello"),
        ('{"b64": "aGVsbG8"}', b"hello"),  # padding is optional
        ('{"b64": "aGVs bG8=\\n"}', b"hello"),  # whitespace is skipped
        ('{"b64": "aGVsbG8."}', b"hello"),  # '.' pads like '='
        ('{"b64": ""}', b""),
        ('"plain"', b"plain"),
    ],
)
def test_b64_objects_decode_like_absl_base64unescape(value, expected):
    tensors, _ = decode('{"inputs": [%s]}' % value, x="DT_STRING")
    assert tensors["x"].tolist() == [expected]


@pytest.mark.parametrize(
    "value, message",
    [
        ('{"b64": "aGVsbG8=="}', "Unable to base64 decode"),
        ('{"b64": "a"}', "Unable to base64 decode"),
        ('{"b64": "aGk=aGk="}', "Unable to base64 decode"),
        ('{"b64": "a*b="}', "Unable to base64 decode"),
        ('{"b64": 5}', 'JSON Value: {\n    "b64": 5\n} not formatted correctly for base64 data'),
        (
            '{"b64": "aGk=", "x": 1}',
            'JSON Value: {\n    "b64": "aGk=",\n    "x": 1\n} not formatted correctly for '
            "base64 data",
        ),
    ],
)
def test_b64_object_errors(value, message):
    err = error_of(decode, '{"inputs": [%s]}' % value, x="DT_STRING")
    assert err.message == message


def test_row_format_batches_instances_and_reports_row():
    tensors, fmt = decode('{"instances": [[1, 2], [3, 4], [5, 6]]}', x="DT_FLOAT")
    assert fmt == "row"
    np.testing.assert_array_equal(tensors["x"], np.float32([[1, 2], [3, 4], [5, 6]]))


def test_row_format_with_named_inputs_batches_each_input():
    tensors, fmt = decode(
        '{"instances": [{"i": [[1,2],[3,4]], "s": ["foo", "bar"]}, '
        '{"i": [[5,6],[7,8]], "s": ["baz", {"b64": "YmF0"}]}]}',
        i="DT_INT32",
        s="DT_STRING",
    )
    assert fmt == "row"
    assert tensors["i"].shape == (2, 2, 2) and tensors["i"].dtype == np.int32
    assert tensors["s"].tolist() == [[b"foo", b"bar"], [b"baz", b"bat"]]


def test_row_format_of_b64_scalars_is_plain_not_named():
    tensors, _ = decode('{"instances": [{"b64": "aGk="}, {"b64": "eW8="}]}', x_bytes="DT_STRING")
    assert tensors["x_bytes"].tolist() == [b"hi", b"yo"]


def test_row_format_instances_of_empty_lists_keep_their_zero_dimension():
    tensors, _ = decode('{"instances": [[], []]}', x="DT_FLOAT")
    assert tensors["x"].shape == (2, 0)


def test_columnar_format_takes_nesting_shape_and_reports_columnar():
    tensors, fmt = decode(
        '{"inputs": {"a": [[1, 2]], "b": [1, 2, 3], "c": 7, "ignored": 1}}',
        a="DT_INT64",
        b="DT_DOUBLE",
        c="DT_INT32",
    )
    assert fmt == "columnar"
    assert tensors["a"].shape == (1, 2) and tensors["b"].shape == (3,) and tensors["c"].shape == ()
    assert tensors["c"].dtype == np.int32 and tensors["c"] == 7


def test_columnar_format_single_input_accepts_plain_value_and_b64_scalar():
    tensors, _ = decode('{"inputs": {"b64": "aGk="}}', x="DT_STRING")
    assert tensors["x"].shape == () and tensors["x"][()] == b"hi"
    tensors, _ = decode('{"inputs": [[1.5], [2.5]]}', x="DT_FLOAT")
    assert tensors["x"].shape == (2, 1)


def test_columnar_single_input_may_also_be_named():
    tensors, _ = decode('{"inputs": {"x": [1, 2]}}', x="DT_FLOAT")
    assert tensors["x"].tolist() == [1.0, 2.0]


def test_fast_and_exact_tensor_paths_give_identical_arrays():
    rng = np.random.default_rng(0)
    values = rng.standard_normal((5, 7)).tolist()
    for dtype in ("DT_FLOAT", "DT_DOUBLE"):
        fast = jt._fast_array(values, [5, 7], dtype)
        exact = jt._to_array(jt._fill(values, [5, 7], dtype), [5, 7], dtype)
        assert fast.dtype == exact.dtype and np.array_equal(fast, exact)
    ints = rng.integers(-1000, 1000, (4, 3)).tolist()
    for dtype in ("DT_INT32", "DT_INT8", "DT_UINT8", "DT_INT64", "DT_INT16"):
        fast = jt._fast_array(ints, [4, 3], dtype)
        exact = jt._to_array(jt._fill(ints, [4, 3], dtype), [4, 3], dtype)
        assert fast.dtype == exact.dtype and np.array_equal(fast, exact)


def test_tensors_beyond_numpy_rank_are_rejected_not_crashing():
    err = error_of(decode, '{"inputs": ' + "[" * 70 + "1" + "]" * 70 + "}", x="DT_FLOAT")
    assert err.message == "Tensor rank 70 exceeds the supported maximum of 64"


def test_zero_input_signature_is_rejected_with_the_signature_name():
    err = error_of(decode_predict_request, {"instances": [1]}, {})
    assert err.message == "Failed to get input map for signature: DEFAULT"


# --------------------------------------------------------------------------------- predict response
def reference_write_decimal(x: float, f32: bool) -> str:
    """TF Serving's WriteDecimal, one value at a time, with exact decimal -> float32 rounding."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    s = "%g" % x
    if f32:
        q = Fraction(s)
        lo = np.float32(float(q))
        lo = lo if Fraction(float(lo)) <= q else np.nextafter(lo, np.float32(-np.inf))
        hi = np.nextafter(lo, np.float32(np.inf))
        d_lo, d_hi = q - Fraction(float(lo)), Fraction(float(hi)) - q
        back = float(
            lo if d_lo < d_hi or (d_lo == d_hi and int(lo.view(np.uint32)) % 2 == 0) else hi
        )
    else:
        back = float(s)
    if back != x:
        s = ("%.9g" if f32 else "%.17g") % x
    return s if "." in s or "e" in s else s + ".0"


@pytest.mark.parametrize(
    "value, text",
    [
        (9000000, "9e+06"),
        (999999, "999999.0"),
        (0.5, "0.5"),
        (0.0003, "0.0003"),
        (0.00003, "3e-05"),
        (555557.5, "555557.5"),
        (3, "3.0"),
        (1435774380, "1.43577434e+09"),
        (0.1, "0.1"),
        (-0.0, "-0.0"),
        (100000, "100000.0"),
        (1e6, "1e+06"),
        (16777217, "16777216.0"),
        (2000000.125, "2000000.12"),
        (np.nan, "NaN"),
        (np.inf, "Infinity"),
        (-np.inf, "-Infinity"),
        (1e-45, "1.4013e-45"),
    ],
)
def test_float_outputs_use_write_decimal_formatting(value, text):
    assert (
        encode_predict_response({"y": np.float32([value])}, "row") == '{"predictions":[%s]}' % text
    )


@pytest.mark.parametrize(
    "value, text",
    [
        (0.1, "0.1"),
        (1 / 3, "0.33333333333333331"),
        (3.0, "3.0"),
        (1e16, "1e+16"),
        (123456789.0, "123456789.0"),
        (2**53 + 0.0, "9007199254740992.0"),
        (1e17, "1e+17"),
        (5e-324, "4.94066e-324"),
    ],
)
def test_double_outputs_use_write_decimal_formatting(value, text):
    assert (
        encode_predict_response({"y": np.float64([value])}, "columnar") == '{"outputs":[%s]}' % text
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vectorised_float_formatting_equals_the_one_value_reference(dtype):
    rng = np.random.default_rng(1)
    width = np.uint32 if dtype == np.float32 else np.uint64
    bits = rng.integers(0, np.iinfo(width).max, 4000, dtype=np.uint64, endpoint=True).astype(width)
    powers = (
        [10.0**k for k in range(-44, 38)]
        if dtype == np.float32
        else [10.0**k for k in range(-300, 300, 7)]
    )
    near = np.array(powers, dtype=dtype)
    values = np.concatenate(
        [
            bits.view(dtype),
            near,
            np.nextafter(near, dtype(np.inf)),
            np.nextafter(near, dtype(-np.inf)),
            rng.standard_normal(2000).astype(dtype),
            np.round(rng.standard_normal(2000) * 1000, 2).astype(dtype),
        ]
    )
    expected = [reference_write_decimal(float(v), dtype == np.float32) for v in values]
    with np.errstate(invalid="ignore"):
        assert tfs_json_response._decimal_tokens(values) == expected


def test_row_format_single_output_omits_alias_and_multi_output_gives_objects():
    out = {"a": np.int64([[1, 2], [3, 4]]), "b": np.bool_([True, False])}
    assert encode_predict_response({"a": out["a"]}, "row") == '{"predictions":[[1,2],[3,4]]}'
    assert json.loads(encode_predict_response(out, "row")) == {
        "predictions": [{"a": [1, 2], "b": True}, {"a": [3, 4], "b": False}]
    }


def test_columnar_format_single_output_is_bare_and_multi_output_is_keyed():
    assert encode_predict_response({"a": np.int32(7)}, "columnar") == '{"outputs":7}'
    assert json.loads(
        encode_predict_response({"a": np.int32([1]), "b": np.float32(2.5)}, "columnar")
    ) == {"outputs": {"a": [1], "b": 2.5}}


def test_batch_zero_gives_empty_predictions():
    assert (
        encode_predict_response({"a": np.zeros((0, 3), np.float32)}, "row") == '{"predictions":[]}'
    )
    assert (
        encode_predict_response({"a": np.zeros((0,)), "b": np.zeros((0, 2))}, "row")
        == '{"predictions":[]}'
    )
    assert (
        encode_predict_response({"a": np.zeros((2, 0), np.float32)}, "columnar")
        == '{"outputs":[[],[]]}'
    )


@pytest.mark.parametrize(
    "outputs, fmt, message",
    [
        ({}, "row", "Cannot convert empty tensor map to JSON"),
        ({"t": np.int32(1)}, "row", "Tensor name: t has no shape information "),
        (
            {"a": np.zeros(2), "b": np.zeros(3)},
            "row",
            "Tensor name: b has inconsistent batch size: 3 expecting: 2",
        ),
        (
            {"t": np.complex64([1, 2])},
            "row",
            "Failed to write JSON value for tensor type: complex64",
        ),
        ({"t": np.float16([1])}, "columnar", "Failed to write JSON value for tensor type: half"),
        ({"t": np.uint16([1])}, "columnar", "Failed to write JSON value for tensor type: uint16"),
    ],
)
def test_predict_response_errors(outputs, fmt, message):
    err = error_of(encode_predict_response, outputs, fmt)
    assert (err.message, err.code) == (message, "INVALID_ARGUMENT")


def test_unsupported_output_dtype_without_values_writes_nothing_and_succeeds():
    assert (
        encode_predict_response({"t": np.complex64(np.zeros((0, 2)))}, "row")
        == '{"predictions":[]}'
    )


def test_declared_dtypes_override_numpy_inference():
    assert (
        encode_predict_response({"t": np.float64([0.1])}, "row", {"t": "DT_FLOAT"})
        == '{"predictions":[0.1]}'
    )
    err = error_of(encode_predict_response, {"t": np.float32([1])}, "row", {"t": "DT_BFLOAT16"})
    assert err.message == "Failed to write JSON value for tensor type: bfloat16"


def test_bytes_suffix_outputs_are_base64_objects_and_other_strings_are_raw():
    out = {"s_bytes": np.array([[b"hello", b"world"], [b"tf", b"serving"]], object)}
    assert json.loads(encode_predict_response(out, "row")) == {
        "predictions": [
            [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}],
            [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}],
        ]
    }
    text = encode_predict_response(
        {"s": np.array([b"caf\xc3\xa9", b'q"\n', "str"], object)}, "columnar"
    )
    assert json.loads(text) == {"outputs": ["café", 'q"\n', "str"]}


def test_non_utf8_string_outputs_are_written_losslessly_as_base64_objects():
    text = encode_predict_response({"s": np.array([b"ok", b"\xff\x00"], object)}, "row")
    assert json.loads(text) == {"predictions": ["ok", {"b64": "/wA="}]}


def test_ints_bools_and_64_bit_extremes_are_json_integers():
    out = {
        "i": np.int64([-(2**63), 2**63 - 1]),
        "u": np.uint64([0, 2**64 - 1]),
        "b": np.bool_([True, False]),
        "s": np.int8([-128, 127]),
    }
    assert encode_predict_response(out, "row") == (
        '{"predictions":[{"i":-9223372036854775808,"u":0,"b":true,"s":-128},'
        '{"i":9223372036854775807,"u":18446744073709551615,"b":false,'
        '"s":127}]}'
    )


def test_large_float_output_round_trips_through_json():
    values = np.random.default_rng(2).standard_normal((300, 40)).astype(np.float32)
    decoded = json.loads(encode_predict_response({"y": values}, "row"))["predictions"]
    np.testing.assert_array_equal(np.float32(decoded), values)


# ------------------------------------------------------------------------------- classify / regress
def test_classify_response_pairs_labels_with_float32_scores():
    text = encode_classify_response([[("dog", 0.8), ("cat", 0.2)], [("", 0)]])
    assert text == '{"results":[[["dog",0.8],["cat",0.2]],[["",0.0]]]}'


def test_regress_response_uses_write_decimal_and_allows_non_finite():
    assert (
        encode_regress_response([2.5, 3, float("nan"), float("-inf")])
        == '{"results":[2.5,3.0,NaN,-Infinity]}'
    )


def test_empty_classify_and_regress_results_are_rejected():
    assert (
        error_of(encode_classify_response, []).message
        == "Cannot convert empty ClassificationResults to JSON"
    )
    assert (
        error_of(encode_regress_response, []).message
        == "Cannot convert empty RegressionResults to JSON"
    )


def features_of(serialized: bytes) -> dict:
    from tensorflow.core.example import example_pb2

    example = example_pb2.Example.FromString(serialized)
    out = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        out[name] = (kind, list(getattr(feature, kind).value) if kind else [])
    return out


def test_examples_map_json_kinds_to_feature_lists():
    doc = parse_body(
        b'{"examples": [{"f": 2.0, "i": 2, "b": true, "s": "x", "raw": {"b64": "aGk="}, '
        b'"fl": [1.5, NaN], "il": [1, -2, false], "e": []}], "context": {"c": ["a", "b"]}}'
    )
    examples, context = decode_examples(doc)
    assert features_of(examples[0]) == {
        "f": ("float_list", [2.0]),
        "i": ("int64_list", [2]),
        "b": ("int64_list", [1]),
        "s": ("bytes_list", [b"x"]),
        "raw": ("bytes_list", [b"hi"]),
        "fl": ("float_list", [1.5, pytest.approx(math.nan, nan_ok=True)]),
        "il": ("int64_list", [1, -2, 0]),
        "e": (None, []),
    }
    assert features_of(context) == {"c": ("bytes_list", [b"a", b"b"])}


def test_examples_without_context_give_none_and_float_features_are_float32():
    examples, context = decode_examples({"examples": [{"x": 0.1}, {"x": 18446744073709551616}]})
    assert context is None
    assert features_of(examples[0])["x"][1] == [float(np.float32(0.1))]
    assert features_of(examples[1])["x"] == ("float_list", [float(np.float32(2.0**64))])


@pytest.mark.parametrize(
    "doc, message",
    [
        (
            {"signature_name": "s"},
            'JSON Value: {\n    "signature_name": "s"\n} When method is classify, key \'examples\' '
            "is expected and was not found",
        ),
        (
            {"examples": {"a": 1}},
            'JSON Value: {\n    "examples": {\n        "a": 1\n    }\n} Expecting \'examples\' '
            "value to be an list/array",
        ),
        (
            {"examples": []},
            "JSON Value: {\n    \"examples\": []\n} 'examples' value is an empty array",
        ),
        ({"examples": [[1]]}, "Example must be JSON object but got JSON Array"),
        ({"examples": [{}], "context": 5}, "Example must be JSON object but got JSON Number"),
        ({"context": {"a": None}}, "Feature: a has element with unexpected JSON type: Null"),
        (
            {"examples": [{"names": [1, "a"]}]},
            "Unexpected element type in feature: names expecting type: int64",
        ),
        (
            {"examples": [{"names": [1.5, 1]}]},
            "Unexpected element type in feature: names expecting type: float",
        ),
        (
            {"examples": [{"names": ["a", {"b64": "aGk="}, 1.0]}]},
            "Unexpected element type in feature: names expecting type: bytes",
        ),
        (
            {"examples": [{"names": {"a": 1}}]},
            "Feature: names has element with unexpected JSON type: Object",
        ),
        (
            {"examples": [{"names": [[1]]}]},
            "Feature: names has element with unexpected JSON type: Array",
        ),
        (
            {"examples": [{"names": 9223372036854775808}]},
            "Feature: names has uint64_t element. Only int64_t is supported.",
        ),
        ({"examples": [{"names": {"b64": "!"}}]}, "Unable to base64 decode"),
    ],
)
def test_classify_regress_request_errors(doc, message):
    err = error_of(decode_examples, doc)
    assert (err.message, err.code) == (message, "INVALID_ARGUMENT")


def test_names_echoed_in_errors_are_cut_without_splitting_a_character():
    from deployments.wire.tfs_json import _text

    assert _text("x" * 256) == "x" * 256
    cut = _text("é" * 200)  # 400 bytes: cut at 256 bytes, on a character boundary
    assert cut == "é" * 128 + "..."
    assert _text("a" + "€" * 100).encode() == ("a" + "€" * 85).encode() + b"..."
