"""core/protos.py and deployments/replica/tf_runtime.py, each in a fresh interpreter (the test
process has TensorFlow imported already)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# a fresh interpreter each, bounded at 300 s by subprocess.run: pytest-timeout's limit above it
pytestmark = pytest.mark.timeout(360)
MODEL = str(
    Path(__file__).resolve().parents[1] / "data" / "saved_model_half_plus_two_cpu" / "00000123"
)


def _run(code: str) -> str:
    code = f"MODEL = {MODEL!r}\n" + textwrap.dedent(code)
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def test_protos_load_without_tensorflows_runtime_and_tensorflow_imports_after():
    assert (
        _run("""
        import sys
        from core import protos
        assert protos.load() and not protos.tensorflow_loaded()
        assert "tensorflow" not in sys.modules  # the stand-in is gone
        from tensorflow_serving.apis import predict_pb2
        from tensorflow.core.framework import tensor_pb2
        from deployments.replica.loader import SavedModelLoader
        signatures = SavedModelLoader(MODEL).validate()
        assert "serving_default" in signatures and not protos.tensorflow_loaded()
        import tensorflow as tf  # the real one, reusing the cached proto modules
        proto = tf.make_tensor_proto([1.0, 2.0])
        assert type(proto) is tensor_pb2.TensorProto
        predict_pb2.PredictRequest().inputs["x"].CopyFrom(proto)
        print(protos.tensorflow_loaded(), float(tf.constant(2.0) * 3))
    """)
        == "True 6.0"
    )


def test_a_replica_loads_warms_and_runs_without_tensorflows_init_and_tensorflow_imports_after():
    assert (
        _run("""
        import sys
        import numpy as np
        from deployments.replica import servable
        from deployments.replica import tf_runtime
        replica = servable.ServableDeployment.func_or_class(servable.VersionSpec("m", 1, MODEL))
        assert replica.load_error is None, replica.load_error
        y = replica.model.run("serving_default", {"x": np.array([1.0, 2.0], np.float32)})["y"]
        light = tf_runtime.light() and "keras" not in sys.modules and not tf_runtime.full_tensorflow()
        import tensorflow as tf  # the rest of TF's API, on first use, in the same package
        same = tf.errors.OpError is tf_runtime.runtime().OpError and tf.Graph is tf_runtime.runtime().Graph
        layer = tf.keras.layers.Dense(2)
        print(light, y.tolist(), same, float(tf.constant(2.0) * 3), tf.executing_eagerly(),
              type(layer).__name__, tf_runtime.full_tensorflow())
    """)  # noqa: E501
        == "True [2.5, 3.0] True 6.0 True Dense True"
    )


def test_a_declared_plugin_library_or_a_url_path_gets_tensorflows_full_import():
    """TF's init loads plugin libraries and URL file systems; the light runtime would miss them.
    One interpreter for both checks (each costs a TF import)."""
    assert (
        _run("""
        import os
        from deployments.replica import tf_runtime
        before = "/opt/plugin.so" in tf_runtime._plugin_libraries()
        os.environ["TF_PLUGGABLE_DEVICE_LIBRARY_PATH"] = "/opt/plugin.so"
        declared = "/opt/plugin.so" in tf_runtime._plugin_libraries()
        del os.environ["TF_PLUGGABLE_DEVICE_LIBRARY_PATH"]
        gfile = tf_runtime.runtime("gs://no-such-bucket/model").gfile
        print(before, declared, tf_runtime.full_tensorflow(), tf_runtime.light(), callable(gfile.exists))
    """)  # noqa: E501
        == "False True True False True"
    )
