"""The export matrix: one small SavedModel for each way a TensorFlow or Keras user exports one,
exported here in the project's own venv, with the inputs to send and the outputs the model
gives when called in Python (what the server must answer, to 1e-6).

`export_all(base)` writes `base/<kind>/1` for every kind in `KINDS` and returns {kind: Case}.
TF Serving's own TF1 test models (tests/data) complete the matrix in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

KINDS = (
    "keras_sequential",
    "keras_functional",
    "keras_subclassed",
    "keras_model_export",
    "keras_export_archive",
    "tf_module",
    "string_lookup",
)


@dataclass
class Case:
    kind: str
    version_dir: Path
    # signature name -> ({input alias: array}, {output alias: expected array})
    calls: dict[str, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = field(
        default_factory=dict
    )


def _features(rows: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, width)).astype(np.float32)


def _mlp_layers(keras):
    return [
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dense(4),
        keras.layers.Softmax(),
    ]


def _keras_case(kind: str, version_dir: Path, model, x: np.ndarray) -> Case:
    """A Keras model saved with `tf.saved_model.save` (the oldest TF Serving recipe). Keras 3
    names the signature's input after the model's input and its output `output_0`."""
    import tensorflow as tf

    tf.saved_model.save(model, str(version_dir))
    expected = np.asarray(model(x))
    signature = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    (alias,) = signature.structured_input_signature[1]
    (out,) = signature.structured_outputs
    return Case(kind, version_dir, {"serving_default": ({alias: x}, {out: expected})})


def export_keras_sequential(version_dir: Path) -> Case:
    import keras

    model = keras.Sequential([keras.Input((8,), name="features"), *_mlp_layers(keras)])
    return _keras_case("keras_sequential", version_dir, model, _features(3, 8, 1))


def export_keras_functional(version_dir: Path) -> Case:
    import keras

    inputs = keras.Input((8,), name="features")
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    outputs = keras.layers.Dense(4)(keras.layers.Concatenate()([hidden, inputs]))
    return _keras_case(
        "keras_functional", version_dir, keras.Model(inputs, outputs), _features(3, 8, 2)
    )


def export_keras_subclassed(version_dir: Path) -> Case:
    import keras

    class Scorer(keras.Model):
        def __init__(self):
            super().__init__()
            self.hidden = keras.layers.Dense(16, activation="tanh")
            self.out = keras.layers.Dense(4)
            self.scale = self.add_weight(shape=(), initializer="ones", name="scale")

        def call(self, x):
            return self.out(self.hidden(x)) * self.scale

    model = Scorer()
    x = _features(3, 8, 3)
    model(x)  # builds the layers
    model.scale.assign(1.5)
    import tensorflow as tf

    model.serve = tf.function(
        model.call, input_signature=[tf.TensorSpec([None, 8], tf.float32, "x")]
    )
    tf.saved_model.save(model, str(version_dir), signatures={"serving_default": model.serve})
    expected = np.asarray(model(x))
    return Case(
        "keras_subclassed", version_dir, {"serving_default": ({"x": x}, {"output_0": expected})}
    )


def export_keras_model_export(version_dir: Path) -> Case:
    import keras

    model = keras.Sequential([keras.Input((8,), name="features"), *_mlp_layers(keras)])
    model.export(str(version_dir), verbose=False)
    x = _features(3, 8, 4)
    return Case(
        "keras_model_export",
        version_dir,
        {"serving_default": ({"features": x}, {"output_0": np.asarray(model(x))})},
    )


def export_keras_export_archive(version_dir: Path) -> Case:
    """Two endpoints, each a signature: scores and the top class."""
    import keras
    import tensorflow as tf

    model = keras.Sequential([keras.Input((8,), name="features"), *_mlp_layers(keras)])
    archive = keras.export.ExportArchive()
    archive.track(model)
    spec = [tf.TensorSpec([None, 8], tf.float32, name="features")]
    archive.add_endpoint("serve", lambda x: {"scores": model(x)}, input_signature=spec)
    archive.add_endpoint(
        "top_class", lambda x: {"top": tf.argmax(model(x), axis=-1)}, input_signature=spec
    )
    archive.write_out(str(version_dir), verbose=False)
    x = _features(3, 8, 5)
    scores = np.asarray(model(x))
    return Case(
        "keras_export_archive",
        version_dir,
        {
            "serve": ({"features": x}, {"scores": scores}),
            "top_class": ({"features": x}, {"top": scores.argmax(axis=-1)}),
        },
    )


def export_tf_module(version_dir: Path) -> Case:
    """A tf.Module with variables and two signatures."""
    import tensorflow as tf

    class Affine(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(np.arange(12, dtype=np.float32).reshape(4, 3) / 10, name="w")
            self.b = tf.Variable([0.5, -1.0, 2.0], name="b")

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def forward(self, x):
            return {"y": tf.matmul(x, self.w) + self.b}

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="y")])
        def shift(self, y):
            return {"z": y - self.b}

    module = Affine()
    tf.saved_model.save(
        module,
        str(version_dir),
        signatures={"serving_default": module.forward, "shift": module.shift},
    )
    x, y = _features(3, 4, 6), _features(2, 3, 7)
    return Case(
        "tf_module",
        version_dir,
        {
            "serving_default": ({"x": x}, {"y": module.forward(x)["y"].numpy()}),
            "shift": ({"y": y}, {"z": module.shift(y)["z"].numpy()}),
        },
    )


def export_string_lookup(version_dir: Path) -> Case:
    """String input, a lookup table initialised from a vocabulary file (an asset), and an
    embedding variable: ids of words, then their vectors summed."""
    import tensorflow as tf

    vocabulary = version_dir.parent.parent / "vocabulary.txt"  # copied into assets/ on export
    vocabulary.parent.mkdir(parents=True, exist_ok=True)
    vocabulary.write_text("apple\nbanana\ncherry\n")

    class Words(tf.Module):
        def __init__(self):
            super().__init__()
            self.vocabulary = tf.saved_model.Asset(str(vocabulary))
            initializer = tf.lookup.TextFileInitializer(
                self.vocabulary,
                tf.string,
                tf.lookup.TextFileIndex.WHOLE_LINE,
                tf.int64,
                tf.lookup.TextFileIndex.LINE_NUMBER,
            )
            self.table = tf.lookup.StaticHashTable(initializer, default_value=3)
            self.embedding = tf.Variable(
                np.arange(8, dtype=np.float32).reshape(4, 2), name="embedding"
            )

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="words")])
        def serve(self, words):
            ids = self.table.lookup(words)
            return {"ids": ids, "vectors": tf.gather(self.embedding, ids)}

    module = Words()
    tf.saved_model.save(module, str(version_dir), signatures={"serving_default": module.serve})
    words = np.array([b"banana", b"kiwi", b"apple"], dtype=object)
    out = module.serve(tf.constant(words))
    return Case(
        "string_lookup",
        version_dir,
        {
            "serving_default": (
                {"words": words},
                {"ids": out["ids"].numpy(), "vectors": out["vectors"].numpy()},
            )
        },
    )


EXPORTERS = {
    "keras_sequential": export_keras_sequential,
    "keras_functional": export_keras_functional,
    "keras_subclassed": export_keras_subclassed,
    "keras_model_export": export_keras_model_export,
    "keras_export_archive": export_keras_export_archive,
    "tf_module": export_tf_module,
    "string_lookup": export_string_lookup,
}


def export_all(base: Path) -> dict[str, Case]:
    return {kind: EXPORTERS[kind](Path(base) / kind / "1") for kind in KINDS}
