"""The Loader on real SavedModels, without Ray: TF1 session exports, TF2 exports, Keras exports."""

import os

import numpy as np
import pytest

from core.errors import AspireError
from deployments.replica.loader import SavedModelLoader, session_config

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
