"""The Loader on real SavedModels, without Ray: TF1 session exports, TF2 exports, Keras exports."""

import os

import numpy as np
import pytest

from core.errors import AspireError
from deployments.replica.loader import SavedModelLoader, gpu_memory_fraction, session_config

DATA = os.path.join(os.path.dirname(__file__), "..", "data")


def version_dir(model: str) -> str:
    return os.path.join(DATA, model, "00000123")


def test_ram_estimate_is_file_bytes_times_1_2():
    path = version_dir("saved_model_half_plus_two_cpu")
    total = sum(
        os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files
    )
    assert SavedModelLoader(path).estimate_resources().ram_bytes == int(total * 1.2)


def test_variable_bytes_count_the_variables_and_the_graph():
    path = version_dir("saved_model_half_plus_two_cpu")
    weights = sum(
        os.path.getsize(os.path.join(root, f))
        for root, _, files in os.walk(path)
        for f in files
        if "variables" in root or f.startswith("saved_model.pb")
    )
    resources = SavedModelLoader(path).estimate_resources()
    assert resources.variable_bytes == weights
    assert 0 < resources.variable_bytes < resources.ram_bytes


def test_session_config_grows_memory_and_caps_it_to_the_reservation():
    plain = session_config()
    assert plain.gpu_options.allow_growth
    assert len(plain.gpu_options.experimental.virtual_devices) == 0
    capped = session_config(gpu_memory_limit_bytes=10 * 1024**3)
    assert capped.gpu_options.allow_growth
    [device] = capped.gpu_options.experimental.virtual_devices
    assert list(device.memory_limit_mb) == [10 * 1024]


def file_config(**fields) -> bytes:
    """A --tensorflow_session_config_file's ConfigProto, serialized as the options carry it."""
    from tensorflow.core.protobuf import config_pb2

    return config_pb2.ConfigProto(**fields).SerializeToString()


USER_CONFIG = file_config(
    intra_op_parallelism_threads=3,
    inter_op_parallelism_threads=2,
    allow_soft_placement=True,
    gpu_options={"allow_growth": True, "per_process_gpu_memory_fraction": 0.3},
    operation_timeout_in_ms=60000,
)


def test_a_session_config_file_is_the_base_and_keeps_its_settings():
    config = session_config(base=USER_CONFIG)
    assert (config.intra_op_parallelism_threads, config.inter_op_parallelism_threads) == (3, 2)
    assert config.allow_soft_placement and config.operation_timeout_in_ms == 60000
    assert config.gpu_options.allow_growth
    assert config.gpu_options.per_process_gpu_memory_fraction == pytest.approx(0.3)
    # nothing of Aspire's defaults is added: a file without growth keeps TF's preallocation
    bare = session_config(base=file_config(intra_op_parallelism_threads=1))
    assert not bare.gpu_options.allow_growth and not bare.allow_soft_placement


def test_flags_that_are_set_override_the_file_as_tf_serving_sets_them_after_parsing_it():
    config = session_config(5, 0, base=USER_CONFIG, gpu_memory_fraction=0.6)
    # either thread flag set: both are written, as server.cc does
    assert (config.intra_op_parallelism_threads, config.inter_op_parallelism_threads) == (5, 0)
    assert config.gpu_options.per_process_gpu_memory_fraction == pytest.approx(0.6)
    assert config.gpu_options.allow_growth  # the rest of the file stays


def test_without_an_admission_cap_the_fraction_caps_tensorflow_itself():
    config = session_config(gpu_memory_fraction=0.4)
    assert config.gpu_options.per_process_gpu_memory_fraction == pytest.approx(0.4)
    assert len(config.gpu_options.experimental.virtual_devices) == 0


def test_the_admission_cap_replaces_the_fraction_virtual_devices_and_device_list():
    from tensorflow.core.protobuf import config_pb2

    user = config_pb2.ConfigProto.FromString(USER_CONFIG)
    user.gpu_options.visible_device_list = "1"
    user.gpu_options.experimental.virtual_devices.add().memory_limit_mb.extend([100, 200])
    limit = 5 * 1024**3
    config = session_config(0, 0, limit, user.SerializeToString(), gpu_memory_fraction=0.4)
    # TF refuses a fraction beside virtual devices; the cap is already the fraction's booking
    assert config.gpu_options.per_process_gpu_memory_fraction == 0
    [device] = config.gpu_options.experimental.virtual_devices
    assert list(device.memory_limit_mb) == [5 * 1024]
    assert config.gpu_options.visible_device_list == ""  # the replica sees its GPU as 0
    assert (config.intra_op_parallelism_threads, config.inter_op_parallelism_threads) == (3, 2)
    assert config.allow_soft_placement and config.gpu_options.allow_growth


def test_the_fraction_booked_is_the_flag_else_the_session_config_file_s():
    assert gpu_memory_fraction(0.0) == 0.0
    assert gpu_memory_fraction(0.4, USER_CONFIG) == 0.4
    assert gpu_memory_fraction(0.0, USER_CONFIG) == pytest.approx(0.3)
    assert gpu_memory_fraction(0.0, file_config(intra_op_parallelism_threads=1)) == 0.0
    with pytest.raises(AspireError) as refused:
        gpu_memory_fraction(0.0, b"\xff\xff")
    assert refused.value.code == "INVALID_ARGUMENT"


def test_a_load_runs_with_the_session_config_file_s_threads():
    loaded = SavedModelLoader(version_dir("saved_model_half_plus_two_cpu")).load(
        base_config=USER_CONFIG
    )
    assert loaded.session_threads == (3, 2)
    out = loaded.run("serving_default", {"x": np.array([[1.0]], np.float32)})
    assert out["y"].tolist() == [[2.5]]
    loaded.unload()


def test_a_capped_load_still_serves_where_no_gpu_is_visible():
    loaded = SavedModelLoader(version_dir("saved_model_half_plus_two_cpu")).load(
        gpu_memory_limit_bytes=512 * 1024**2
    )
    out = loaded.run("serving_default", {"x": np.array([[1.0]], np.float32)})
    assert out["y"].tolist() == [[2.5]]


@pytest.mark.parametrize(
    "model,feed,expected",
    [
        ("saved_model_half_plus_two_cpu", [[1.0], [5.0]], [[2.5], [4.5]]),  # TF1 export
        ("saved_model_half_plus_three", [1.0, 2.0], [3.5, 4.0]),  # TF1.0 export
        ("saved_model_half_plus_two_tf2_cpu", [1.0], [2.5]),  # TF2 tf.Module export
    ],
)
def test_tf1_and_tf2_exports_load_and_run(model, feed, expected):
    loaded = SavedModelLoader(version_dir(model)).load()
    out = loaded.run("serving_default", {"x": np.array(feed, np.float32)})
    np.testing.assert_allclose(out["y"], expected)
    loaded.unload()


def test_signature_defaults_fill_missing_inputs():
    loaded = SavedModelLoader(version_dir("saved_model_half_plus_two_tf2_cpu")).load()
    assert loaded.run("serving_default", {})["y"].tolist() == [2.0]  # default x = [0.0]


def test_session_state_persists_between_runs():
    loaded = SavedModelLoader(version_dir("saved_model_counter")).load()
    start = float(loaded.run("get_counter", {})["output"])
    loaded.run("incr_counter", {})
    loaded.run("incr_counter_by", {"delta": np.array(2.0, np.float32)})
    assert float(loaded.run("get_counter", {})["output"]) == start + 3.0


def test_keras_model_export_loads(tmp_path):
    import keras

    inputs = keras.Input(shape=(3,), name="features")
    outputs = keras.layers.Dense(2, name="scores")(inputs)
    model = keras.Model(inputs, outputs)
    model.export(str(tmp_path / "1"))
    loaded = SavedModelLoader(str(tmp_path / "1")).load()
    signature = loaded.signatures["serving_default"]
    (alias,) = signature.inputs
    x = np.array([[1.0, 2.0, 3.0], [0.0, -1.0, 0.5]], np.float32)
    (out,) = loaded.run("serving_default", {alias: x}).values()
    np.testing.assert_allclose(out, model.predict(x, verbose=0), rtol=1e-5)


def test_missing_saved_model_is_refused_before_loading():
    with pytest.raises(AspireError) as err:
        SavedModelLoader(version_dir("bad_half_plus_two")).validate()
    assert err.value.code == "NOT_FOUND"
    assert err.value.message.startswith(
        "Could not find SavedModel .pb or .pbtxt at supplied export directory path"
    )


def test_unknown_tag_set_is_refused():
    with pytest.raises(
        AspireError, match="MetaGraphDef associated with tags 'gpu' could not be found"
    ):
        SavedModelLoader(version_dir("saved_model_half_plus_two_cpu"), ("gpu",)).validate()


def test_garbage_saved_model_pb_is_refused(tmp_path):
    (tmp_path / "saved_model.pb").write_bytes(b"\x00not a protobuf\xff" * 10)
    with pytest.raises(AspireError) as err:
        SavedModelLoader(str(tmp_path)).validate()
    assert err.value.code == "DATA_LOSS"


def test_corrupt_variables_fail_the_load_with_tf_message(tmp_path):
    import shutil

    shutil.copytree(version_dir("saved_model_half_plus_two_cpu"), tmp_path / "1")
    (tmp_path / "1" / "variables" / "variables.index").write_bytes(b"garbage")
    with pytest.raises(AspireError) as err:
        SavedModelLoader(str(tmp_path / "1")).load()
    assert err.value.code == "DATA_LOSS"
    assert "\n" not in err.value.message and "sstable" in err.value.message


def test_wrong_input_dtype_is_invalid_argument():
    loaded = SavedModelLoader(version_dir("saved_model_half_plus_two_cpu")).load()
    with pytest.raises(AspireError) as err:
        loaded.run("serving_default", {"x": np.array([b"a"], object)})
    assert err.value.code == "INVALID_ARGUMENT"
