"""deployments/protos.py and loader.import_tensorflow, each in a fresh interpreter (the test
process has TensorFlow imported already)."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

MODEL = str(Path(__file__).resolve().parents[1] / "data" / "saved_model_half_plus_two_cpu" / "00000123")


def _run(code: str) -> str:
    code = f"MODEL = {MODEL!r}\n" + textwrap.dedent(code)
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def test_protos_load_without_tensorflows_runtime_and_tensorflow_imports_after():
    assert _run("""
        import sys
        from deployments import protos
        assert protos.load() and not protos.tensorflow_loaded()
        assert "tensorflow" not in sys.modules  # the stand-in is gone
        from tensorflow_serving.apis import predict_pb2
        from tensorflow.core.framework import tensor_pb2
        from deployments.loader import SavedModelLoader
        signatures = SavedModelLoader(MODEL).validate()
        assert "serving_default" in signatures and not protos.tensorflow_loaded()
        import tensorflow as tf  # the real one, reusing the cached proto modules
        proto = tf.make_tensor_proto([1.0, 2.0])
        assert type(proto) is tensor_pb2.TensorProto
        predict_pb2.PredictRequest().inputs["x"].CopyFrom(proto)
        print(protos.tensorflow_loaded(), float(tf.constant(2.0) * 3))
    """) == "True 6.0"


def test_a_replica_imports_tensorflow_without_keras_and_keras_still_imports_on_use():
    assert _run("""
        import sys
        from deployments.loader import SavedModelLoader
        model = SavedModelLoader(MODEL).load()
        without = "keras" not in sys.modules and "keras.src.optimizers" not in sys.modules
        import tensorflow as tf
        layer = tf.keras.layers.Dense(2)
        print(without, type(layer).__name__, "keras.src.optimizers" in sys.modules)
    """) == "True Dense True"
