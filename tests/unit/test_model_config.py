"""ModelServerConfig -> model list, with ServerCore::ReloadConfig's validation messages."""

import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from config.model_config import models_from_config
from core.errors import AspireError
from deployments.router.tfs_grpc import spec_target, truncate
from policies.aspired import All, Latest, Specific


def parse(text: str):
    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())


def test_model_config_list_becomes_model_sources_with_their_policies():
    models = models_from_config(
        parse("""
      model_config_list {
        config { name: 'a' base_path: '/models/a' model_platform: 'tensorflow' }
        config { name: 'b' base_path: 'gs://bucket/b' model_platform: 'tensorflow'
                 model_version_policy { all {} } }
        config { name: 'c' base_path: '/models/c' model_platform: 'tensorflow'
                 model_version_policy { specific { versions: 42 versions: 43 } } }
        config { name: 'd' base_path: '/models/d' model_type: TENSORFLOW
                 model_version_policy { latest { num_versions: 2 } } }
      }""")
    )
    assert [(m.name, m.base_path, m.version_policy) for m in models] == [
        ("a", "/models/a", Latest(1)),
        ("b", "gs://bucket/b", All()),
        ("c", "/models/c", Specific((42, 43))),
        ("d", "/models/d", Latest(2)),
    ]


def test_empty_config_is_no_models():
    assert models_from_config(model_server_config_pb2.ModelServerConfig()) == []


@pytest.mark.parametrize(
    "text,message",
    [
        (
            "model_config_list { config { name: 'a' base_path: 'rel' "
            "model_platform: 'tensorflow' } }",
            "Expected model a to have an absolute path or URI; got base_path()=rel",
        ),
        (
            "model_config_list { config { name: 'a' base_path: '/a' model_platform: 'tensorflow' } "
            "config { name: 'a' base_path: '/b' model_platform: 'tensorflow' } }",
            "Illegal to list model a multiple times in config list",
        ),
        (
            "model_config_list { config { name: 'a' base_path: '/a' } }",
            "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
            "ModelServerConfig::model_platform, model name is a",
        ),
        (
            "model_config_list { config { name: 'a' base_path: '/a' model_type: TENSORFLOW "
            "model_platform: 'tensorflow' } }",
            "Illegal setting both ModelServerConfig::model_type (deprecated) and "
            "ModelServerConfig::model_platform, model name is a",
        ),
        (
            "model_config_list { config { name: 'a' base_path: '/a' model_platform: 'pytorch' } }",
            "Model a requests unsupported platform pytorch",
        ),
        (
            "custom_model_config { }",
            "ServerModelConfig type not supported by HandleReloadConfigRequest. "
            "Only ModelConfigList is currently supported",
        ),
    ],
)
def test_invalid_configs_are_rejected_with_tf_serving_messages(text, message):
    with pytest.raises(AspireError) as err:
        models_from_config(parse(text))
    assert (err.value.code, err.value.message) == ("INVALID_ARGUMENT", message)


@pytest.mark.parametrize("name", ["..", "a/b", "~m", " m"])
def test_config_names_no_request_could_reach_are_refused(name):
    with pytest.raises(AspireError) as err:
        models_from_config(
            parse(
                f"model_config_list {{ config {{ name: '{name}' base_path: '/a' "
                "model_platform: 'tensorflow' } }"
            )
        )
    assert err.value.code == "INVALID_ARGUMENT"
    assert err.value.message.startswith(f"Invalid model name in config: '{name}' (")


def test_grpc_messages_over_1024_characters_are_truncated():
    assert truncate("x" * 1024) == "x" * 1024
    assert truncate("x" * 1025) == "x" * 1024 + "...TRUNCATED"


def test_model_spec_targets():
    from tensorflow_serving.apis import model_pb2

    spec = model_pb2.ModelSpec(name="m")
    assert spec_target(spec) == ("m", None, None)
    spec.version.value = 0  # version 0 is a real version: presence, not value, decides
    assert spec_target(spec) == ("m", 0, None)
    assert spec_target(model_pb2.ModelSpec(name="m", version_label="stable")) == (
        "m",
        None,
        "stable",
    )
    with pytest.raises(AspireError, match="ModelSpec has no name specified."):
        spec_target(model_pb2.ModelSpec())


def test_tf_serving_good_config_file_parses(tmp_path):
    from pathlib import Path

    from config.model_config import read_config_file

    data = Path(__file__).resolve().parent.parent / "data"
    text = (data / "good_model_config.txt").read_text()
    text = text.replace("${TEST_HALF_PLUS_TWO_DIR}", "/models/two").replace(
        "${TEST_HALF_PLUS_THREE_DIR}", "/models/three"
    )
    (tmp_path / "good.config").write_text(text)
    models = models_from_config(read_config_file(str(tmp_path / "good.config")))
    assert [(m.name, m.base_path) for m in models] == [
        ("half_plus_two", "/models/two"),
        ("half_plus_three", "/models/three"),
    ]


def test_tf_serving_bad_config_file_names_file_and_position():
    from pathlib import Path

    from config.model_config import read_config_file

    path = str(Path(__file__).resolve().parent.parent / "data" / "bad_model_config.txt")
    with pytest.raises(AspireError) as err:
        read_config_file(path)
    assert err.value.code == "INVALID_ARGUMENT"
    assert err.value.message.startswith(
        f"Invalid protobuf file: '{path}': Error parsing text-format "
        "tensorflow.serving.ModelServerConfig: 1:1 : "
    )


def test_version_labels_come_from_the_config():
    from config.model_config import labels_from_config

    config = parse(
        "model_config_list { config { name: 'a' base_path: '/a' model_platform: 'tensorflow'\n"
        "        version_labels { key: 'stable' value: 42 } "
        "version_labels { key: 'canary' value: 43 } } }"
    )
    assert labels_from_config(config) == {"a": {"stable": 42, "canary": 43}}
