"""SavedModels the tests export themselves (TF2 `tf.saved_model.save`)."""

from pathlib import Path


def export_slow_model(version_dir: Path) -> Path:
    """A model whose `serving_default` spins for `iterations` loop steps, then returns the count:
    its latency is chosen by the request."""
    import tensorflow as tf

    class Slow(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="iterations")])
        def spin(self, iterations):
            n = tf.reduce_max(iterations)
            done = tf.while_loop(lambda i: i < n, lambda i: i + 1, [tf.constant(0, tf.int64)])[0]
            return {"done": tf.fill(tf.shape(iterations), done)}

    module = Slow()
    tf.saved_model.save(module, str(version_dir), signatures={"serving_default": module.spin})
    return version_dir


def slept(x, sleep_ms):
    """`x`, returned after sleeping `sleep_ms` without using CPU (tf.data's SleepDataset), inside
    a tf.function: what the sleepy and slow models share."""
    import tensorflow as tf
    from tensorflow.python.data.ops import dataset_ops

    data = tf.data.Dataset.from_tensors(x)
    # reading the single element sleeps twice: once for it, once for the end
    sleeping = tf.raw_ops.SleepDataset(
        input_dataset=data._variant_tensor,
        sleep_microseconds=tf.cast(sleep_ms, tf.int64) * 500,
        output_types=[tf.float32],
        output_shapes=[tf.TensorShape([None])],
    )
    return dataset_ops._VariantDataset(sleeping, data.element_spec).get_single_element()


def export_sleepy_model(version_dir: Path) -> Path:
    """A model that answers `x / 2 + 2` after sleeping `sleep_ms` (the largest in the request):
    slow without using CPU (tf.data's SleepDataset), so many can be in flight on 2 cores."""
    import tensorflow as tf

    class Sleepy(tf.Module):
        @tf.function(
            input_signature=[
                tf.TensorSpec([None], tf.float32, name="x"),
                tf.TensorSpec([None], tf.int64, name="sleep_ms"),
            ]
        )
        def serve(self, x, sleep_ms):
            return {"y": slept(x, tf.reduce_max(sleep_ms)) * 0.5 + 2.0}

    module = Sleepy()
    tf.saved_model.save(module, str(version_dir), signatures={"serving_default": module.serve})
    return version_dir


def export_failing_model(version_dir: Path) -> Path:
    """half_plus_two's signature (input "x", output "y") whose every run fails: an assertion
    that no real input meets (INVALID_ARGUMENT from the TF session, as a broken export gives)."""
    import tensorflow as tf

    class Failing(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serve(self, x):
            check = tf.debugging.assert_less(x, -1e30, message="this candidate always fails")
            with tf.control_dependencies([check]):
                return {"y": x * 0.5 + 2.0}

    module = Failing()
    tf.saved_model.save(module, str(version_dir), signatures={"serving_default": module.serve})
    return version_dir


def export_slow_half_plus_two(version_dir: Path, sleep_ms: int = 40) -> Path:
    """half_plus_two (input "x", output "y" = x/2+2) that sleeps `sleep_ms` before answering,
    without using CPU (tf.data's SleepDataset): a candidate slower than its baseline."""
    import tensorflow as tf

    class Slow(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serve(self, x):
            return {"y": slept(x, sleep_ms) * 0.5 + 2.0}

    module = Slow()
    tf.saved_model.save(module, str(version_dir), signatures={"serving_default": module.serve})
    return version_dir


def write_warmup_requests(version_dir: Path, requests: list) -> Path:
    """Write `assets.extra/tf_serving_warmup_requests` with one PredictLog per PredictRequest."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    path = Path(version_dir) / "assets.extra" / "tf_serving_warmup_requests"
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for request in requests:
            log = prediction_log_pb2.PredictionLog()
            log.predict_log.request.CopyFrom(request)
            writer.write(log.SerializeToString())
    return path
