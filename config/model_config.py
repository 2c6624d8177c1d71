"""TF Serving's ModelServerConfig (text-proto file or gRPC message) -> the model list the source
polls and the version labels the router resolves.

Parsed with protobuf's own text_format and the tensorflow-serving-api protos. Validation follows
ServerCore::ReloadConfig, with its messages: one entry per name, absolute base paths (or URIs),
platform "tensorflow". `--model_config_file`, its polling and gRPC's HandleReloadConfigRequest all
go through `models_from_config` and `labels_from_config`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.errors import AspireError, invalid_argument
from core.names import check_name
from policies.aspired import All, Latest, ServableVersionPolicy, Specific

if TYPE_CHECKING:  # read_config_file imports it where it runs
    from tensorflow_serving.config import model_server_config_pb2

SUPPORTED_PLATFORMS = ("tensorflow",)


@dataclass(frozen=True)
class ModelSource:
    """One served model: its name, its base path and the version policy the source applies."""

    name: str
    base_path: str
    version_policy: ServableVersionPolicy = Latest(1)


def version_policy(config: model_server_config_pb2.ModelConfig) -> Latest | All | Specific:
    policy = config.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return All()
    if choice == "specific":
        return Specific(tuple(policy.specific.versions))
    if choice == "latest":
        return Latest(policy.latest.num_versions)
    return Latest(1)


def models_from_config(
    server_config: model_server_config_pb2.ModelServerConfig,
) -> list[ModelSource]:
    """The model list of a ModelServerConfig; AspireError with TF Serving's message if invalid."""
    kind = server_config.WhichOneof("config")
    if kind is None:
        return []
    if kind != "model_config_list":
        raise invalid_argument(
            "ServerModelConfig type not supported by HandleReloadConfigRequest. "
            "Only ModelConfigList is currently supported"
        )
    models, seen = [], set()
    for config in server_config.model_config_list.config:
        name = config.name
        # A name no request could reach (requests with it get 400): refuse the config instead.
        check_name(name, "model name in config")
        if name in seen:
            raise invalid_argument(f"Illegal to list model {name} multiple times in config list")
        seen.add(name)
        if "://" not in config.base_path and not os.path.isabs(config.base_path):
            raise invalid_argument(
                f"Expected model {name} to have an absolute path or URI; got "
                f"base_path()={config.base_path}"
            )
        has_type = config.model_type != 0
        if has_type and config.model_platform:
            raise invalid_argument(
                "Illegal setting both ModelServerConfig::model_type (deprecated) and "
                f"ModelServerConfig::model_platform, model name is {name}"
            )
        if not has_type and not config.model_platform:
            raise invalid_argument(
                "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
                f"ModelServerConfig::model_platform, model name is {name}"
            )
        platform = config.model_platform or ("tensorflow" if config.model_type == 1 else "other")
        if platform not in SUPPORTED_PLATFORMS:
            raise invalid_argument(f"Model {name} requests unsupported platform {platform}")
        models.append(ModelSource(name, config.base_path, version_policy(config)))
    return models


def labels_from_config(
    server_config: model_server_config_pb2.ModelServerConfig,
) -> dict[str, dict[str, int]]:
    """{model: {label: version}} from each ModelConfig's version_labels."""
    if server_config.WhichOneof("config") != "model_config_list":
        return {}
    return {
        c.name: dict(c.version_labels)
        for c in server_config.model_config_list.config
        if c.version_labels
    }


def read_config_file(path: str) -> model_server_config_pb2.ModelServerConfig:
    """Parse a text-format ModelServerConfig; INVALID_ARGUMENT naming the file and the line."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise invalid_argument(f"Invalid protobuf file: '{path}': {exc}") from None
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except (text_format.ParseError, ValueError) as exc:  # ValueError: an enum number past int32
        raise invalid_argument(
            f"Invalid protobuf file: '{path}': Error parsing text-format "
            f"tensorflow.serving.ModelServerConfig: {exc}"
        ) from None
    return config


def read_proto_text(file: str) -> str:
    """The text of a text-format proto file, as TF's ReadFileToString reports failures:
    NOT_FOUND "<file>; <reason>" when it cannot be read, INVALID_ARGUMENT when it is not UTF-8."""
    try:
        with open(file, "rb") as f:
            data = f.read()
    except OSError as err:
        raise AspireError(f"{file}; {err.strerror}", "NOT_FOUND") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise invalid_argument(f"Invalid protobuf file: '{file}': {err}") from None
