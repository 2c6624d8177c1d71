"""TensorFlow's runtime for a replica: the parts that load and run a SavedModel, without the
rest of the `tensorflow` package.

`import tensorflow` runs `tensorflow/__init__.py`, which imports the whole public API: tf.data,
tf.distribute, feature columns, autograph, ragged tensors and more, about 2 s of CPU and
~100 MiB in every replica, on every version load. A replica needs a session, the SavedModel
loader, tensor conversion, file access and TF's error classes. `runtime()` puts a bare
`tensorflow` package (`_Package`) in `sys.modules`, imports just those modules and Aspire's
proto modules into it, switches on TF2 behaviour as `tensorflow/__init__.py` would, and returns
them as one namespace. The C++ runtime (every op and kernel, CPU and GPU) is the same shared
library either way; only Python modules are left out. The package stays: a module TF imports
lazily later imports into it alone, and the first use of TF's API through it (`import
tensorflow as tf; tf.constant(...)`, Keras) runs `tensorflow/__init__.py` in it then, reusing
every module already imported (one class per type, whoever imported it first).

The full import is used from the start where TF's start-up does something the light import
would miss: a path that is a URL (gs://, s3://, hdfs://: file systems that TF's start-up
registers), and an installation with plugin libraries (`tensorflow-plugins`, first-party kernel
libraries, TF_PLUGGABLE_DEVICE_LIBRARY_PATH), which only `tensorflow/__init__.py` loads.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import site
import sys
import sysconfig
import types
from types import SimpleNamespace

from core import protos

_runtime: SimpleNamespace | None = None


@contextlib.contextmanager
def _keras_deferred():
    """TF's start-up imports `keras.src.optimizers`, which imports all of Keras and, where they
    are installed, scikit-learn and matplotlib: about 2 s and 100 MiB in every replica. A
    SavedModel's graph and functions run without Keras's Python classes, so the import is
    skipped while TF starts; Keras still imports on first use (`tf.keras`, `import keras`), in
    full, because the block is lifted as soon as TensorFlow is in."""
    blocked = "keras.src.optimizers" not in sys.modules
    if blocked:
        # TF's try/except ImportError skips it. None in sys.modules is the import system's
        # documented "not importable" mark, which typeshed's dict[str, ModuleType] leaves out
        sys.modules["keras.src.optimizers"] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if blocked and sys.modules.get("keras.src.optimizers", 0) is None:
            del sys.modules["keras.src.optimizers"]


def import_tensorflow():
    """`import tensorflow`, all of it, without the eager import of Keras (`_keras_deferred`)."""
    package = sys.modules.get("tensorflow")
    if isinstance(package, _Package):
        _ = package.__version__  # runs tensorflow/__init__.py in it, once
        return package
    with _keras_deferred():
        import tensorflow as tf
    return tf


def _plugin_libraries() -> list[str]:
    """What tensorflow/__init__.py would load besides Python modules (it loads these three)."""
    spec = importlib.util.find_spec("tensorflow")
    tf_dir = os.path.dirname(spec.origin) if spec and spec.origin else ""
    found = [p for p in [os.path.join(tf_dir, "core", "kernels")] if tf_dir and os.path.exists(p)]
    dirs = set(p for p in sys.path if "site-packages" in p)
    dirs.update(site.getsitepackages() if hasattr(site, "getsitepackages") else [])
    for scheme in sysconfig.get_scheme_names():
        for name in ("purelib", "platlib"):
            dirs.add(sysconfig.get_path(name, scheme))
    found += [
        p for d in sorted(dirs) if d and os.path.exists(p := os.path.join(d, "tensorflow-plugins"))
    ]
    if os.getenv("TF_PLUGGABLE_DEVICE_LIBRARY_PATH", ""):
        found.append(os.environ["TF_PLUGGABLE_DEVICE_LIBRARY_PATH"])
    return found


def _import_modules() -> SimpleNamespace:
    """The modules a replica uses; with TensorFlow imported, or with the stand-in in place."""
    from tensorflow.core.protobuf import config_pb2
    from tensorflow.python.client import session
    from tensorflow.python.compat import v2_compat
    from tensorflow.python.framework import dtypes, errors, ops, tensor_util
    from tensorflow.python.lib.io import file_io, tf_record
    from tensorflow.python.platform import gfile, tf_logging
    from tensorflow.python.saved_model import loader

    return SimpleNamespace(
        enable_v2_behavior=v2_compat.enable_v2_behavior,
        Graph=ops.Graph,
        Session=session.Session,
        ConfigProto=config_pb2.ConfigProto,
        CallableOptions=config_pb2.CallableOptions,
        load_saved_model=loader.load,
        OpError=errors.OpError,
        make_ndarray=tensor_util.MakeNdarray,
        as_dtype=dtypes.as_dtype,
        tf_record_iterator=tf_record.tf_record_iterator,
        logger=tf_logging.get_logger(),
        gfile=SimpleNamespace(
            exists=file_io.file_exists_v2,
            listdir=file_io.list_directory_v2,
            walk=file_io.walk_v2,
            stat=file_io.stat_v2,
            GFile=gfile.GFile,
        ),
    )


class _Package(types.ModuleType):
    """`tensorflow` after the light import: the submodules imported so far, and the rest of
    TensorFlow's API on first use. It stays in `sys.modules`, so a `tensorflow.*` module that TF
    imports lazily later (inside a function) imports alone, as at start. The first lookup of a
    name it lacks (`tf.constant`, `tf.keras`, `tf.__version__`) runs `tensorflow/__init__.py` in
    it, which reuses every module already imported."""

    def __getattr__(self, name):
        state = self.__dict__
        if state.get("_aspire_initialised") or (name.startswith("__") and name != "__version__"):
            raise AttributeError(f"module 'tensorflow' has no attribute {name!r}")
        with protos.import_lock:
            if not state.get("_aspire_initialised"):
                state["_aspire_initialised"] = (
                    True  # a lookup from the init itself must not recurse
                )
                spec = self.__spec__  # TensorFlow's, from protos.bare_package
                if spec is None or spec.loader is None:
                    raise ImportError("tensorflow: the package has no loader")
                with _keras_deferred():
                    spec.loader.exec_module(self)
        try:
            return state[name]
        except KeyError:
            raise AttributeError(f"module 'tensorflow' has no attribute {name!r}") from None


def runtime(path: str = "") -> SimpleNamespace:
    """TensorFlow's runtime as a replica uses it (see the module docstring); `path`, the model
    path it is for, decides whether the full import is needed (a URL)."""
    global _runtime
    with protos.import_lock:
        if _runtime is not None and ("://" not in path or full_tensorflow()):
            return _runtime
        if "://" in path or "tensorflow" in sys.modules or _plugin_libraries():
            import_tensorflow()
            _runtime = _import_modules()
            return _runtime
        os.environ["TF2_BEHAVIOR"] = "1"  # as tensorflow/__init__.py sets it, before its modules
        sys.modules["tensorflow"] = protos.bare_package(_Package)
        protos.load()  # the proto modules Aspire uses, in the same package
        _runtime = _import_modules()
        _runtime.enable_v2_behavior()  # as tensorflow/__init__.py does once its modules are in
        return _runtime


def full_tensorflow() -> bool:
    """Whether `tensorflow/__init__.py` has run in this process (all of TF's API is imported)."""
    package = sys.modules.get("tensorflow")
    return package is not None and "__version__" in package.__dict__


def light() -> bool:
    """Whether this process runs TensorFlow's runtime without the rest of its package."""
    return "tensorflow.python" in sys.modules and not full_tensorflow()
