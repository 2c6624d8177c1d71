"""--tensorflow_session_config_file and --platform_config_file (config/session_config.py): TF
Serving's text formats, TF's error wording with the file and the parser's line:column, and what
Aspire takes from a PlatformConfigMap."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from config.session_config import (
    load_platform_config,
    load_session_config,
    parse_platform_config,
    session_values,
    with_flag_values,
)
from core import protos
from core.errors import AspireError

ROOT = Path(__file__).resolve().parents[2]


def config_proto(serialized: bytes):
    protos.load()
    from tensorflow.core.protobuf import config_pb2

    return config_pb2.ConfigProto.FromString(serialized)


def platform_text(legacy_config: str, platform: str = "tensorflow") -> str:
    return (
        f'platform_configs {{ key: "{platform}" value {{ source_adapter_config {{ '
        "[type.googleapis.com/tensorflow.serving.SavedModelBundleSourceAdapterConfig] { "
        f"legacy_config {{ {legacy_config} }} }} }} }} }}\n"
    )


def refusal(load, path: Path) -> AspireError:
    with pytest.raises(AspireError) as err:
        load(str(path))
    return err.value


def test_a_session_config_file_gives_the_serialized_config_proto(tmp_path):
    path = tmp_path / "session.pbtxt"
    path.write_text(
        "gpu_options { allow_growth: true per_process_gpu_memory_fraction: 0.25 }\n"
        "intra_op_parallelism_threads: 3\nallow_soft_placement: true\n"
    )
    config = config_proto(load_session_config(str(path)))
    assert config.gpu_options.allow_growth and config.allow_soft_placement
    assert config.intra_op_parallelism_threads == 3
    assert session_values(config.SerializeToString()) == (3, 0, 0.25)


def test_a_session_config_that_does_not_parse_is_tf_servings_error_with_line_and_column(
    tmp_path,
):
    path = tmp_path / "session.pbtxt"
    path.write_text("gpu_options { allow_growth: true }\nno_such_field: 1\n")
    err = refusal(load_session_config, path)
    assert err.code == "INVALID_ARGUMENT"
    assert err.message.startswith(f"Invalid protobuf file: '{path}': 2:1 : ")
    assert "no_such_field" in err.message


def test_an_enum_value_out_of_range_is_tf_servings_invalid_protobuf_file_error(tmp_path):
    path = tmp_path / "session.pbtxt"
    path.write_text("graph_options { rewrite_options { layout_optimizer: 4294967296 } }\n")
    err = refusal(load_session_config, path)
    assert err.code == "INVALID_ARGUMENT"
    assert err.message.startswith(f"Invalid protobuf file: '{path}': ")
    assert "4294967296" in err.message


def test_a_missing_session_config_file_is_not_found_naming_it(tmp_path):
    err = refusal(load_session_config, tmp_path / "absent.pbtxt")
    assert (err.code, err.message) == (
        "NOT_FOUND",
        f"{tmp_path / 'absent.pbtxt'}; No such file or directory",
    )


def test_the_flags_replace_the_files_threads_and_gpu_fraction_as_tf_serving_does(tmp_path):
    path = tmp_path / "session.pbtxt"
    path.write_text(
        "intra_op_parallelism_threads: 8\ninter_op_parallelism_threads: 2\n"
        "gpu_options { per_process_gpu_memory_fraction: 0.9 allow_growth: true }\n"
    )
    serialized, replaced = with_flag_values(load_session_config(str(path)), 4, 2, 0.0)
    config = config_proto(serialized)
    assert session_values(serialized) == (4, 2, 0.0)
    assert config.gpu_options.allow_growth  # the rest of the file stays
    assert replaced == [
        "intra_op_parallelism_threads",
        "gpu_options.per_process_gpu_memory_fraction",
    ]


def test_a_platform_config_gives_its_session_config_and_batching(tmp_path):
    path = tmp_path / "platform.pbtxt"
    path.write_text(
        platform_text(
            "session_config { gpu_options { per_process_gpu_memory_fraction: 0.5 } "
            "inter_op_parallelism_threads: 2 } "
            "batching_parameters { max_batch_size { value: 16 } "
            "allowed_batch_sizes: 8 allowed_batch_sizes: 16 } "
            "enable_per_model_batching_params: true"
        )
    )
    settings = load_platform_config(str(path))
    assert session_values(settings.session_config) == (0, 2, 0.5)
    assert settings.batching is not None
    assert (settings.batching.max_batch_size, settings.batching.allowed_batch_sizes) == (
        16,
        (8, 16),
    )
    assert settings.per_model_batching is True
    assert settings.unused == ()


def test_a_platform_config_without_batching_parameters_is_not_batched():
    settings = parse_platform_config(platform_text("session_config { }"))
    assert settings.batching is None and settings.session_config == b""


def test_platform_config_fields_aspire_does_not_use_are_listed():
    text = platform_text(
        'saved_model_tags: "serve" enable_model_warmup: true '
        'experimental_fixed_input_tensors { name: "x" } '
        "in_graph_batching_parameters { num_batch_threads: 2 }"
    )
    settings = parse_platform_config(text)
    assert set(settings.unused) == {
        "legacy_config.saved_model_tags",
        "legacy_config.enable_model_warmup",
        "legacy_config.experimental_fixed_input_tensors",
        "legacy_config.in_graph_batching_parameters",
    }


def test_a_platform_config_that_does_not_parse_names_the_file_line_and_column(tmp_path):
    path = tmp_path / "platform.pbtxt"
    path.write_text(platform_text("no_such_field: 1"))
    err = refusal(load_platform_config, path)
    assert err.code == "INVALID_ARGUMENT"
    assert err.message.startswith(f"Invalid protobuf file: '{path}': 1:")
    assert "no_such_field" in err.message


def test_bad_batching_parameters_in_a_platform_config_get_batchings_check(tmp_path):
    path = tmp_path / "platform.pbtxt"
    path.write_text(platform_text("batching_parameters { max_batch_size { value: 0 } }"))
    err = refusal(load_platform_config, path)
    assert err.message == "input_batch_size_limit must be positive; was 0"


def test_a_platform_config_without_the_tensorflow_platform_is_refused_naming_the_file():
    with pytest.raises(AspireError, match=r"^p\.pbtxt: platform_configs has no \"tensorflow\""):
        parse_platform_config(platform_text("", platform="tflite"), "p.pbtxt")


def test_a_platform_config_with_another_adapter_config_is_refused():
    text = (
        'platform_configs { key: "tensorflow" value { source_adapter_config { '
        'type_url: "type.googleapis.com/tensorflow.serving.SessionBundleSourceAdapterConfig" '
        "} } }"
    )
    with pytest.raises(AspireError, match="holds tensorflow.serving.SessionBundleSourceAdapter"):
        parse_platform_config(text, "p.pbtxt")


@pytest.mark.timeout(120)
def test_parsing_both_files_imports_no_tensorflow_runtime(tmp_path):
    session, platform = tmp_path / "s.pbtxt", tmp_path / "p.pbtxt"
    session.write_text("allow_soft_placement: true\n")
    platform.write_text(platform_text("session_config { allow_soft_placement: true }"))
    code = (
        "import sys\n"
        "from config.session_config import load_platform_config, load_session_config\n"
        f"load_session_config({str(session)!r}); load_platform_config({str(platform)!r})\n"
        "print('tensorflow.python' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"
