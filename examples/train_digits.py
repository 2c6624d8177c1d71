#!/usr/bin/env python
"""Train a small MLP on scikit-learn's bundled digits data and export it as a
TensorFlow SavedModel that TensorFlow Serving (and Aspire) can serve.

The exported ``serving_default`` signature has:
  input  ``pixels``        float32 [-1, 64]  (8x8 image, pixel values / 16.0)
  output ``probabilities`` float32 [-1, 10]  (softmax over digit classes 0-9)

Usage:
    python examples/train_digits.py [--out examples/models/digits/1]
"""

import argparse
import os
import random
import shutil
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import tensorflow as tf  # noqa: E402
import keras  # noqa: E402

SEED = 0
INPUT_NAME = "pixels"
OUTPUT_NAME = "probabilities"
SIGNATURE_KEY = "serving_default"
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           "models", "digits", "1")


def load_data():
    """Digits data scaled to [0, 1], split exactly as examples/client.py does."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    return train_test_split(x, y, test_size=0.25, random_state=0)


def set_seeds(seed=SEED):
    """Fixed seeds, deterministic kernels and single-threaded execution so the
    trained weights are reproducible on a given machine."""
    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)


def build_model():
    inputs = keras.Input(shape=(64,), dtype="float32", name=INPUT_NAME)
    x = keras.layers.Dense(64, activation="relu", name="hidden")(inputs)
    outputs = keras.layers.Dense(10, activation="softmax", name=OUTPUT_NAME)(x)
    model = keras.Model(inputs, outputs, name="digits_mlp")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3),
                  loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


class DigitsServable(tf.Module):
    """Inference-only copy of the trained MLP: the four weight tensors and a
    serving function. Saving this instead of the Keras model keeps the
    SavedModel minimal (no training state) and its bytes reproducible."""

    def __init__(self, model):
        super().__init__(name="digits")
        hidden = model.get_layer("hidden")
        output = model.get_layer(OUTPUT_NAME)
        self.hidden_kernel = tf.Variable(hidden.kernel.numpy(), name="hidden_kernel")
        self.hidden_bias = tf.Variable(hidden.bias.numpy(), name="hidden_bias")
        self.output_kernel = tf.Variable(output.kernel.numpy(), name="output_kernel")
        self.output_bias = tf.Variable(output.bias.numpy(), name="output_bias")

    @tf.function(input_signature=[
        tf.TensorSpec([None, 64], tf.float32, name=INPUT_NAME)])
    def serve(self, pixels):
        hidden = tf.nn.relu(
            tf.nn.bias_add(tf.matmul(pixels, self.hidden_kernel), self.hidden_bias))
        logits = tf.nn.bias_add(
            tf.matmul(hidden, self.output_kernel), self.output_bias)
        return {OUTPUT_NAME: tf.nn.softmax(logits)}


def export(model, out_dir):
    """Export with a single named input and a single named output."""
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(os.path.dirname(out_dir) or ".", exist_ok=True)
    servable = DigitsServable(model)
    tf.saved_model.save(servable, out_dir,
                        signatures={SIGNATURE_KEY: servable.serve})


def verify_with_session(out_dir, x, expected):
    """Load the export the way TensorFlow Serving does (TF1 loader + session)
    and run the serving signature by tensor name."""
    graph = tf.Graph()
    with graph.as_default():
        with tf.compat.v1.Session(graph=graph) as sess:
            meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], out_dir)
            sig = meta.signature_def[SIGNATURE_KEY]
            if list(sig.inputs) != [INPUT_NAME] or list(sig.outputs) != [OUTPUT_NAME]:
                raise RuntimeError(
                    "unexpected signature: inputs=%s outputs=%s"
                    % (list(sig.inputs), list(sig.outputs)))
            in_info = sig.inputs[INPUT_NAME]
            out_info = sig.outputs[OUTPUT_NAME]
            got = sess.run(out_info.name, feed_dict={in_info.name: x})
    max_diff = float(np.max(np.abs(got - expected)))
    if not np.allclose(got, expected, atol=1e-5):
        raise RuntimeError("session output differs from Keras (max diff %g)"
                           % max_diff)
    print("Session check: %s -> %s, max |diff| vs Keras = %.2e"
          % (in_info.name, out_info.name, max_diff))
    return got


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=DEFAULT_OUT,
                        help="SavedModel output directory (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args(argv)

    set_seeds()
    x_train, x_test, y_train, y_test = load_data()

    model = build_model()
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=32,
              shuffle=True, verbose=0)
    _, acc = model.evaluate(x_test, y_test, verbose=0)
    print("Test accuracy: %.4f (%d test images)" % (acc, len(x_test)))

    out_dir = os.path.abspath(args.out)
    export(model, out_dir)
    print("Exported SavedModel to %s" % out_dir)

    expected = model.predict(x_test, verbose=0)
    probs = verify_with_session(out_dir, x_test, expected)
    session_acc = float(np.mean(np.argmax(probs, axis=1) == y_test))
    print("Session-API accuracy on test split: %.4f" % session_acc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
