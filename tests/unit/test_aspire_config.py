"""Aspire's side config: the documented format parses, and every mistake is a clear, located
error."""

import json

import pytest

from config.aspire_config import Autoscaling, ModelSettings, load_aspire_config, parse_aspire_config
from core.errors import AspireError
from policies.traffic import TrafficSplit

EXAMPLE = """{"models": {"my_model": {"version_policy": "resource_preserving",
                         "traffic": {"stable": 90, "canary": 10},
                         "num_replicas": 2}}}"""


def test_documented_example_parses_into_model_settings():
    assert parse_aspire_config(EXAMPLE) == {
        "my_model": ModelSettings(
            version_policy="resource_preserving",
            traffic=TrafficSplit((("stable", 90.0), ("canary", 10.0))),
            num_replicas=2,
        )
    }


def test_omitted_fields_take_defaults():
    got = parse_aspire_config('{"models": {"a": {}, "b": {"traffic": null, "num_replicas": null}}}')
    assert got == {"a": ModelSettings(), "b": ModelSettings()}
    assert ModelSettings().version_policy == "availability_preserving"


@pytest.mark.parametrize("text", ["{}", '{"models": {}}'])
def test_empty_config_means_no_settings(text):
    assert parse_aspire_config(text) == {}


def test_load_reads_the_file_and_names_it_in_errors(tmp_path):
    good = tmp_path / "aspire.json"
    good.write_text(EXAMPLE)
    assert load_aspire_config(str(good))["my_model"].num_replicas == 2
    bad = tmp_path / "bad.json"
    bad.write_text('{"models": {"m": {"num_replicas": 0}}}')
    with pytest.raises(AspireError) as info:
        load_aspire_config(str(bad))
    assert info.value.message.startswith(f"Invalid Aspire config {bad}: model 'm': num_replicas")


def test_load_of_a_missing_file_is_invalid_argument_naming_the_path(tmp_path):
    path = tmp_path / "missing.json"
    with pytest.raises(AspireError) as info:
        load_aspire_config(str(path))
    assert info.value.code == "INVALID_ARGUMENT"
    assert str(path) in info.value.message


def error(settings: dict | str) -> AspireError:
    text = settings if isinstance(settings, str) else json.dumps(settings)
    with pytest.raises(AspireError) as info:
        parse_aspire_config(text, source="cfg.json")
    assert info.value.code == "INVALID_ARGUMENT"
    return info.value


def test_unknown_version_policy_names_model_and_choices():
    assert error({"models": {"m": {"version_policy": "x"}}}).message == (
        "Invalid Aspire config cfg.json: model 'm': unknown version_policy 'x' "
        "(expected availability_preserving or resource_preserving)"
    )


def test_non_string_version_policy_is_rejected():
    assert (
        "model 'm': unknown version_policy 1"
        in error({"models": {"m": {"version_policy": 1}}}).message
    )


def test_json_syntax_error_reports_line_and_column():
    assert error('{"models": {\n  "m": {,}}}').message.startswith(
        "Invalid Aspire config cfg.json: line 2 column 9: "
    )


def test_unknown_top_level_key_is_rejected():
    assert error({"modles": {}}).message == (
        "Invalid Aspire config cfg.json: unknown key 'modles' (expected one of models)"
    )


def test_unknown_model_key_is_rejected():
    assert error({"models": {"m": {"num_replica": 2}}}).message == (
        "Invalid Aspire config cfg.json: model 'm': unknown key 'num_replica' "
        "(expected one of version_policy, traffic, num_replicas, autoscaling, "
        "max_ongoing_requests, max_queued_requests, health_check_period_s, "
        "health_check_timeout_s, device, vram, ram, placement, rollout, experiment)"
    )


def test_device_and_declared_sizes_are_parsed():
    settings = parse_aspire_config(
        json.dumps(
            {
                "models": {
                    "big": {"device": "gpu", "vram": "10GiB", "ram": "512MiB"},
                    "small": {"device": "cpu"},
                }
            }
        )
    )
    assert settings["big"].device == "gpu"
    assert settings["big"].vram_bytes == 10 * 1024**3
    assert settings["big"].ram_bytes == 512 * 1024**2
    assert settings["small"] == ModelSettings(device="cpu")


@pytest.mark.parametrize(
    "body, message",
    [
        ({"device": "tpu"}, "device must be 'gpu' or 'cpu', got 'tpu'"),
        ({"vram": "ten gigs"}, "invalid vram: invalid size 'ten gigs'"),
        ({"ram": 1024}, "invalid ram: size must be a string"),
        ({"device": "cpu", "vram": "1GiB"}, "vram is declared but device is 'cpu'"),
    ],
)
def test_bad_device_or_sizes_are_rejected(body, message):
    assert message in error({"models": {"m": body}}).message


def test_placement_is_dedicated_by_default_and_shared_when_asked():
    settings = parse_aspire_config(
        json.dumps({"models": {"small": {"placement": "shared", "device": "cpu"}, "big": {}}})
    )
    assert settings["small"] == ModelSettings(device="cpu", placement="shared")
    assert settings["big"].placement == "dedicated"


@pytest.mark.parametrize(
    "body, message",
    [
        ({"placement": "packed"}, "placement must be 'dedicated' or 'shared', got 'packed'"),
        (
            {"placement": "shared", "num_replicas": 2},
            'num_replicas does not apply to "placement": "shared" (the host sets it)',
        ),
        (
            {"placement": "shared", "autoscaling": {"min_replicas": 1, "max_replicas": 2}},
            'autoscaling does not apply to "placement": "shared"',
        ),
        (
            {"placement": "shared", "max_queued_requests": 5},
            'max_queued_requests does not apply to "placement": "shared"',
        ),
    ],
)
def test_a_bad_placement_or_a_replica_setting_beside_shared_is_rejected(body, message):
    assert message in error({"models": {"m": body}}).message


def test_repeated_model_name_is_rejected():
    assert (
        "key 'm' appears more than once"
        in error('{"models": {"m": {}, "m": {"num_replicas": 2}}}').message
    )


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "2"])
def test_num_replicas_must_be_an_integer_of_at_least_one(value):
    assert error({"models": {"m": {"num_replicas": value}}}).message == (
        f"Invalid Aspire config cfg.json: model 'm': num_replicas must be an integer >= 1, "
        f"got {value!r}"
    )


def test_invalid_traffic_names_model_field_and_key():
    message = error({"models": {"m": {"traffic": {"stable": 90, "canary": -10}}}}).message
    assert message.startswith("Invalid Aspire config cfg.json: model 'm': invalid traffic: ")
    assert "'canary'" in message


def test_empty_traffic_is_rejected():
    assert "model 'm': invalid traffic: " in error({"models": {"m": {"traffic": {}}}}).message


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("[]", "top level must be an object"),
        ('{"models": []}', "'models' must be an object"),
        ('{"models": {"m": 3}}', "model 'm': settings must be an object"),
        ('{"models": {"": {}}}', "model name must not be empty"),
    ],
)
def test_wrong_shapes_are_rejected(text, fragment):
    assert fragment in error(text).message


def test_autoscaling_parses_with_serve_defaults_where_omitted():
    got = parse_aspire_config(
        '{"models": {"m": {"autoscaling": '
        '{"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 3,'
        ' "upscale_delay_s": 0, "downscale_delay_s": 5.5}}}}'
    )
    assert got["m"].autoscaling == Autoscaling(1, 4, 3.0, 0, 5.5)
    assert got["m"].num_replicas is None
    plain = parse_aspire_config(
        '{"models": {"m": {"autoscaling": {"min_replicas": 2, "max_replicas": 2}}}}'
    )
    assert plain["m"].autoscaling == Autoscaling(2, 2, 2.0)


def test_autoscaling_serve_config_carries_only_the_fields_set_and_the_direct_path_policy():
    assert Autoscaling(1, 4, 3.0).serve_config(1, 3) == {
        "min_replicas": 1,
        "max_replicas": 3,
        "initial_replicas": 1,
        "target_ongoing_requests": 3.0,
        "policy": {"policy_function": "deployments.replica.autoscaling:direct_path_policy"},
    }
    assert Autoscaling(1, 4, 3.0, 0.0, 2.0).serve_config(2, 2)["downscale_delay_s"] == 2.0


@pytest.mark.parametrize(
    "body,fragment",
    [
        (
            '{"min_replicas": 1, "max_replicas": 2}, "num_replicas": 2',
            "num_replicas and autoscaling cannot both be set",
        ),
        ('{"max_replicas": 2}', "min_replicas is required"),
        ('{"min_replicas": 1}', "max_replicas is required"),
        ('{"min_replicas": 0, "max_replicas": 2}', "min_replicas must be an integer >= 1, got 0"),
        (
            '{"min_replicas": true, "max_replicas": 2}',
            "min_replicas must be an integer >= 1, got True",
        ),
        (
            '{"min_replicas": 3, "max_replicas": 2}',
            "max_replicas must be an integer >= min_replicas (3), got 2",
        ),
        (
            '{"min_replicas": 1, "max_replicas": 2.5}',
            "max_replicas must be an integer >= min_replicas (1), got 2.5",
        ),
        (
            '{"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 0}',
            "target_ongoing_requests must be a number > 0, got 0",
        ),
        (
            '{"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": "2"}',
            "target_ongoing_requests must be a number > 0, got '2'",
        ),
        (
            '{"min_replicas": 1, "max_replicas": 2, "upscale_delay_s": -1}',
            "upscale_delay_s must be a number >= 0, got -1",
        ),
        (
            '{"min_replicas": 1, "max_replicas": 2, "max_ongoing": 3}',
            "autoscaling: unknown key 'max_ongoing'",
        ),
        ("[1, 2]", "autoscaling must be an object, got list"),
    ],
)
def test_invalid_autoscaling_names_model_and_field(body, fragment):
    with pytest.raises(AspireError) as info:
        parse_aspire_config('{"models": {"m": {"autoscaling": ' + body + "}}}")
    assert info.value.code == "INVALID_ARGUMENT"
    assert "model 'm'" in info.value.message and fragment in info.value.message


def test_look_back_period_must_be_positive():
    ok = parse_aspire_config(
        '{"models": {"m": {"autoscaling": {"min_replicas": 1, "max_replicas": 2,'
        ' "look_back_period_s": 2}}}}'
    )
    assert ok["m"].autoscaling.serve_config(1, 2)["look_back_period_s"] == 2
    with pytest.raises(AspireError, match="look_back_period_s must be a number > 0, got 0"):
        parse_aspire_config(
            '{"models": {"m": {"autoscaling": {"min_replicas": 1, "max_replicas": 2,'
            ' "look_back_period_s": 0}}}}'
        )


def test_request_limits_parse_per_model():
    got = parse_aspire_config(
        '{"models": {"m": {"max_ongoing_requests": 2, "max_queued_requests": 0},'
        ' "n": {"max_queued_requests": -1}, "o": {}}}'
    )
    assert (got["m"].max_ongoing_requests, got["m"].max_queued_requests) == (2, 0)
    assert (got["n"].max_ongoing_requests, got["n"].max_queued_requests) == (None, -1)
    assert (got["o"].max_ongoing_requests, got["o"].max_queued_requests) == (None, None)


def test_health_checks_parse_per_model():
    got = parse_aspire_config(
        '{"models": {"m": {"health_check_period_s": 1, "health_check_timeout_s": 2.5}, "o": {}}}'
    )
    assert (got["m"].health_check_period_s, got["m"].health_check_timeout_s) == (1.0, 2.5)
    assert (got["o"].health_check_period_s, got["o"].health_check_timeout_s) == (None, None)


@pytest.mark.parametrize(
    "field, value",
    [
        ("health_check_period_s", 0),
        ("health_check_period_s", -1),
        ("health_check_timeout_s", True),
        ("health_check_timeout_s", "3"),
    ],
)
def test_health_checks_are_validated(field, value):
    assert error({"models": {"m": {field: value}}}).message == (
        f"Invalid Aspire config cfg.json: model 'm': {field} must be a number > 0, got {value!r}"
    )


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("max_ongoing_requests", 0, "max_ongoing_requests must be an integer >= 1, got 0"),
        ("max_ongoing_requests", 1.5, "max_ongoing_requests must be an integer >= 1, got 1.5"),
        ("max_ongoing_requests", True, "max_ongoing_requests must be an integer >= 1, got True"),
        (
            "max_queued_requests",
            -2,
            "max_queued_requests must be an integer >= 0, or -1 for no limit, got -2",
        ),
        (
            "max_queued_requests",
            "5",
            "max_queued_requests must be an integer >= 0, or -1 for no limit, got '5'",
        ),
    ],
)
def test_request_limits_are_validated(field, value, message):
    assert error({"models": {"m": {field: value}}}).message == (
        f"Invalid Aspire config cfg.json: model 'm': {message}"
    )
