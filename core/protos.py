"""TensorFlow's and TF Serving's protobuf modules, without TensorFlow's runtime.

`from tensorflow_serving.apis import predict_pb2` imports `tensorflow.core.framework.tensor_pb2`,
and any `tensorflow.*` import first runs `tensorflow/__init__.py`: 5-8 s and ~600 MiB of RSS
(the C++ runtime, Keras, and whatever Keras finds installed), in processes that only read
and write protos: the manager, the router and the CLI.

`load()` imports every proto module Aspire uses with a bare `tensorflow` package standing in
for the real one (the packages on the way to the protos, `tensorflow.core`, `.framework`,
`.protobuf`, `.example`, `tensorflow.compiler.xla.tsl.protobuf`, have empty `__init__` files),
then takes the stand-in away. The proto modules stay cached in `sys.modules`, so every later
import of them is free, and a later `import tensorflow` in the same process imports the real
TensorFlow, which finds and reuses the same modules (one class per message, whoever imported it).

Call `load()` once at the start of a process that never runs a model, before other threads
import anything. Where TensorFlow is already imported, `load()` only imports the protos.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import threading
import types
from collections.abc import Iterator

# Every proto module Aspire imports (keep in step with the `*_pb2` imports in the tree: a module
# missing here is still correct, but its first import then pulls in TensorFlow).
MODULES = (
    "tensorflow.core.example.example_pb2",
    "tensorflow.core.framework.types_pb2",
    "tensorflow.core.framework.tensor_pb2",
    "tensorflow.core.protobuf.config_pb2",
    "tensorflow.core.protobuf.saved_model_pb2",
    "tensorflow_serving.apis.classification_pb2",
    "tensorflow_serving.apis.get_model_metadata_pb2",
    "tensorflow_serving.apis.get_model_status_pb2",
    "tensorflow_serving.apis.inference_pb2",
    "tensorflow_serving.apis.model_management_pb2",
    "tensorflow_serving.apis.model_pb2",
    "tensorflow_serving.apis.predict_pb2",
    "tensorflow_serving.apis.prediction_log_pb2",
    "tensorflow_serving.apis.regression_pb2",
    "tensorflow_serving.apis.model_service_pb2_grpc",
    "tensorflow_serving.apis.prediction_service_pb2_grpc",
    "tensorflow_serving.config.model_server_config_pb2",
    "tensorflow_serving.config.platform_config_pb2",
)
# Installed by some tensorflow-serving-api releases only (cluster/*_config.py build the message
# themselves where they are missing).
OPTIONAL = (
    "tensorflow_serving.config.monitoring_config_pb2",
    "tensorflow_serving.servables.tensorflow.session_bundle_config_pb2",
)

import_lock = threading.RLock()  # held while a stand-in is in sys.modules


def _import_all() -> None:
    for name in MODULES:
        importlib.import_module(name)
    for name in OPTIONAL:
        try:
            importlib.import_module(name)
        except ImportError:
            pass


def bare_package(module_type: type = types.ModuleType) -> types.ModuleType:
    """An empty `tensorflow` package (of `module_type`) at TensorFlow's install location: its
    submodules import into it without `tensorflow/__init__.py` running."""
    spec = importlib.util.find_spec("tensorflow")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("tensorflow is not installed")
    module = module_type("tensorflow")
    module.__spec__, module.__loader__ = spec, spec.loader
    module.__path__ = list(spec.submodule_search_locations)
    module.__file__ = spec.origin
    return module


@contextlib.contextmanager
def stand_in() -> Iterator[None]:
    """A bare `tensorflow` package in `sys.modules` for the duration, so `tensorflow.*` modules
    import without `tensorflow/__init__.py`; taken away after."""
    module = bare_package()
    with import_lock:
        sys.modules["tensorflow"] = module
        try:
            yield
        finally:
            if sys.modules.get("tensorflow") is module:
                del sys.modules["tensorflow"]


def load() -> bool:
    """Import Aspire's proto modules; True when TensorFlow's runtime stayed out of the process."""
    with import_lock:
        if "tensorflow" in sys.modules:
            _import_all()
        else:
            with stand_in():
                _import_all()
        return "tensorflow.python" not in sys.modules


def tensorflow_loaded() -> bool:
    """Whether TensorFlow's runtime (not only its protos) is imported in this process."""
    return "tensorflow.python" in sys.modules
