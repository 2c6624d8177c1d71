"""A SavedModel for the Open Inference Protocol's tests: one input of every datatype a TF
signature can carry, each echoed as an output, so every v2 datatype can be sent and read back."""

from __future__ import annotations

import ml_dtypes
import numpy as np

TYPES = {  # v2 datatype -> (TF dtype, numpy dtype, sample values)
    "BOOL": ("bool", np.bool_, [True, False, True]),
    "INT8": ("int8", np.int8, [-128, 0, 127]),
    "INT16": ("int16", np.int16, [-3, 0, 30000]),
    "INT32": ("int32", np.int32, [-7, 0, 2**31 - 1]),
    "INT64": ("int64", np.int64, [-(2**62), 0, 2**62]),
    "UINT8": ("uint8", np.uint8, [0, 1, 255]),
    "UINT16": ("uint16", np.uint16, [0, 1, 65535]),
    "UINT32": ("uint32", np.uint32, [0, 1, 2**32 - 1]),
    "UINT64": ("uint64", np.uint64, [0, 1, 2**63]),
    "FP16": ("float16", np.float16, [0.5, -2.0, 1024.0]),
    "FP32": ("float32", np.float32, [0.25, -1.5, 3.0e8]),
    "FP64": ("float64", np.float64, [1e-300, -2.5, 1e300]),
    "BF16": ("bfloat16", ml_dtypes.bfloat16, [0.5, -2.0, 256.0]),
    "BYTES": ("string", object, [b"a", b"\xff\x00binary", b""]),
}


def sample(datatype: str) -> np.ndarray:
    """TYPES' sample values of `datatype` as the numpy array a client sends."""
    _, np_type, values = TYPES[datatype]
    return np.array(values, dtype=np_type)


def export_every_type(path: str) -> str:
    """A TF2 SavedModel at `path` whose serving signature takes one [None] input per datatype,
    named in lower case ("fp32"), and returns each as `out_<name>`."""
    import tensorflow as tf

    specs = {
        name.lower(): tf.TensorSpec([None], getattr(tf, tf_type), name=name.lower())
        for name, (tf_type, _, _) in TYPES.items()
    }

    class Echo(tf.Module):
        @tf.function(input_signature=[specs])
        def serve(self, inputs):
            return {f"out_{k}": tf.identity(v) for k, v in inputs.items()}

    module = Echo()
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    return path
