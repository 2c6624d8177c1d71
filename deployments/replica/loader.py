"""Loader: estimates, loads and unloads one SavedModel version (TF Serving's Loader contract).

- `estimate_resources()` is an upper bound known before loading: host RAM = bytes of every file
  under the version directory x 1.2 (TF Serving's kResourceEstimateRAMMultiplier); the variable
  bytes it also returns feed the VRAM estimate (policies/admission.py).
- `validate()` reads only `saved_model.pb`/`.pbtxt` and the requested tag-set, so a version that
  cannot load is refused with TF's message before any replica is started for it.
- All three first refuse a version directory that is, or holds, a link resolving outside the
  model's base path (`check_contained`, PERMISSION_DENIED), so nothing outside it is read.
- Only SavedModels load, through TF's graph loader: no Keras code runs. A version that holds
  `.keras`/`.h5` files and no `saved_model.pb` is refused with a message saying so.
- `load()` loads the MetaGraph into a TF1 session, the way TF Serving's C++ server does. This
  serves TF1 exports (session-based graphs such as `saved_model_counter`) and TF2 exports
  (`tf.saved_model.save`, Keras `model.export`) through one path, and feeds tensors by name
  through `Session::MakeCallable`, so no Python-side shape check rejects inputs TF Serving accepts.
- After TF's restore, every variable the signatures read must hold a value
  (deployments/replica/variable_restore.py). Keras 3 models saved with `tf.saved_model.save` read
  variables the TF1 restore does not fill (TF Serving fails every predict on them with "Could
  not find variable"); they are restored from the checkpoint through the object graph, and a
  version whose signatures would still read a variable without a value fails its load.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Protocol

from core.errors import CODES, AspireError
from deployments.replica.tf_runtime import runtime
from deployments.replica.variable_restore import restore_signature_variables

log = logging.getLogger("aspire.loader")
RAM_ESTIMATE_MULTIPLIER = 1.2
DEFAULT_TAGS = ("serve",)


@dataclass(frozen=True)
class Resources:
    ram_bytes: int  # every file of the version x RAM_ESTIMATE_MULTIPLIER
    variable_bytes: int  # variables/ plus the graph (constants of frozen graphs live there)


class _LocalFiles:
    """The part of `tf.io.gfile` the loader uses, for local paths. TensorFlow's file systems
    are needed only for URLs (gs://, s3://, hdfs://), and the manager, which reads metadata and
    sizes, runs without TensorFlow's runtime (core/protos.py)."""

    exists = staticmethod(os.path.exists)
    listdir = staticmethod(os.listdir)
    GFile = staticmethod(open)

    @staticmethod
    def walk(path):
        return os.walk(path, followlinks=True)  # as gfile.walk; check_contained refused loops

    @staticmethod
    def stat(path):
        return SimpleNamespace(length=os.stat(path).st_size)


def _gfile(path: str):
    if "://" not in path:
        return _LocalFiles
    return runtime(path).gfile  # imported on first use: TF takes seconds to import


KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


def _inside(real: str, real_base: str) -> bool:
    return real == real_base or real.startswith(real_base.rstrip(os.sep) + os.sep)


def check_contained(path: str) -> None:
    """Refuse (PERMISSION_DENIED) a local version directory that is, or holds, a link resolving
    outside its model's base path, or a link back to a directory that holds it (every walker,
    ours included, would go round it forever). The source names versions `<base path>/<child>`
    (cluster/source.py), so the base path is the parent of `path`; both are compared as real
    paths, so a base path reached through links is fine. Links that stay inside the base path
    (a version sharing another's variables) are allowed. URIs (gs://, s3://) have no links."""
    if "://" in path:
        return
    path = os.path.normpath(path)
    base = os.path.dirname(path)
    real_base, real_version = os.path.realpath(base), os.path.realpath(path)
    if not real_version.startswith(real_base.rstrip(os.sep) + os.sep):
        raise AspireError(
            f"Version directory {path} resolves outside the model base path {base}",
            "PERMISSION_DENIED",
        )
    # (directory, real paths of it and its ancestors)
    pending: list[tuple[str, tuple[str, ...]]] = [(path, (real_version,))]
    while pending:
        root, chain = pending.pop()
        try:
            with os.scandir(root) as listing:
                entries = list(listing)
        except OSError:  # missing or unreadable: the loader reports it with TF's message
            continue
        for entry in entries:
            real = os.path.realpath(entry.path)
            shown = os.path.relpath(entry.path, path)
            if not _inside(real, real_base):
                raise AspireError(
                    f"Version directory {path} holds {shown}, which resolves "
                    f"outside the model base path {base}",
                    "PERMISSION_DENIED",
                )
            if entry.is_dir():  # follows links, as the loader would
                if real in chain:
                    raise AspireError(
                        f"Version directory {path} holds {shown}, a link back to "
                        "a directory that holds it",
                        "PERMISSION_DENIED",
                    )
                pending.append((entry.path, chain + (real,)))


def _walk_bytes(path: str) -> tuple[int, int]:
    """(bytes of every file under `path`, bytes of variables/ and saved_model.pb(txt))."""
    gfile = _gfile(path)
    total = weights = 0
    variables = os.path.join(path, "variables")
    for root, _dirs, files in gfile.walk(path):
        for name in files:
            size = gfile.stat(os.path.join(root, name)).length
            total += size
            if (
                root.rstrip("/") == variables
                or root.startswith(variables + "/")
                or (root.rstrip("/") == path.rstrip("/") and name.startswith("saved_model.pb"))
            ):
                weights += size
    return total, weights


def _tf_message(message: str) -> str:
    """TF's own message on one line, without the Python-side 'Graph execution error' trace."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if lines and lines[0] == "Graph execution error:":
        lines = lines[1:]
        for i, line in enumerate(lines):
            if line.startswith("Node: "):  # the trace of where the op was defined ends here
                lines = lines[i + 1 :]
                break
    return " ".join(lines)


def _from_tf_error(err) -> AspireError:
    code = CODES[err.error_code] if 0 <= err.error_code < len(CODES) else "UNKNOWN"
    return AspireError(_tf_message(err.message), code)


def _config_proto(serialized: bytes = b""):
    """A tensorflow.ConfigProto, parsed from `serialized` (b"": an empty one)."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import config_pb2

    config = config_pb2.ConfigProto()
    try:
        config.ParseFromString(serialized)
    except DecodeError as exc:
        raise AspireError(
            f"The TensorFlow session config is not a valid ConfigProto: {exc}", "INVALID_ARGUMENT"
        ) from None
    return config


def gpu_memory_fraction(flag: float, serialized_config: bytes = b"") -> float:
    """The share of its GPU's memory each replica's TensorFlow takes: --per_process_gpu_memory_
    fraction (or a --platform_config_file's) when set, else the session config's own
    gpu_options.per_process_gpu_memory_fraction (the config is the base the flag is written
    over: `session_config`); 0: none. The manager books it (policies/admission.py
    `replica_need`); it reads protos only, never TF's runtime."""
    if flag > 0 or not serialized_config:
        return max(flag, 0.0)
    return max(_config_proto(serialized_config).gpu_options.per_process_gpu_memory_fraction, 0.0)


def session_config(
    intra_op_threads: int = 0,
    inter_op_threads: int = 0,
    gpu_memory_limit_bytes: int | None = None,
    base: bytes = b"",
    gpu_memory_fraction: float = 0.0,
):
    """The TF session config of a replica, built in TF Serving's order (model_servers/server.cc
    parses --tensorflow_session_config_file, then sets the flags' GPU fraction and threads over
    it), then with what Aspire's placement needs for correctness, and nothing else:

    1. The start: `base`, the serialized ConfigProto of --tensorflow_session_config_file or
       --platform_config_file, as given. Without one, Aspire's defaults: memory growth on (a
       version takes GPU memory as it needs it) and soft placement (a graph pinned to a GPU
       still runs in a CPU replica).
    2. The flags over it where they are set (> 0): both thread counts when either is, and the
       GPU memory fraction. The server's options already carry the file with the flags' values
       written over it, 0s included, as server.cc writes them (config/session_config.py
       `with_flag_values`; a --platform_config_file's own values stand in for the flags), so
       this step changes nothing there; it keeps a spec built from separate values consistent.
    3. Aspire's necessities. `gpu_memory_limit_bytes` is the replica's VRAM reservation less the
       CUDA context (policies/admission.py `tf_memory_limit_bytes`; with a GPU memory fraction
       the reservation is that share of the GPU): the one GPU the replica sees becomes one
       logical device capped to it, so no version takes more than admission booked for it. The
       file's virtual devices give way to it, and so does the fraction: TF refuses a fraction
       beside virtual devices ("It's invalid to set per_process_gpu_memory_fraction when
       virtual_devices is set"), and the cap already holds the fraction's share. The replica
       sees only its reserved GPU (CUDA_VISIBLE_DEVICES), as device 0, so the file's
       visible_device_list, which numbers the host's GPUs, is cleared too. Without a cap (no
       admission: the replica sees every GPU) the fraction caps TF itself, as in TF Serving.
    """
    if base:
        config = _config_proto(base)
    else:
        config = _config_proto()
        config.allow_soft_placement = True
        config.gpu_options.allow_growth = True
    if intra_op_threads > 0 or inter_op_threads > 0:
        config.intra_op_parallelism_threads = intra_op_threads
        config.inter_op_parallelism_threads = inter_op_threads
    if gpu_memory_fraction > 0:
        config.gpu_options.per_process_gpu_memory_fraction = gpu_memory_fraction
    if gpu_memory_limit_bytes:
        gpu_options = config.gpu_options
        gpu_options.per_process_gpu_memory_fraction = 0
        gpu_options.visible_device_list = ""
        del gpu_options.experimental.virtual_devices[:]
        device = gpu_options.experimental.virtual_devices.add()
        device.memory_limit_mb.append(gpu_memory_limit_bytes / (1024 * 1024))
    return config


class SavedModelLoader:
    def __init__(self, path: str, tags: tuple[str, ...] = DEFAULT_TAGS):
        self.path = path
        self.tags = tuple(tags)

    def estimate_resources(self) -> Resources:
        check_contained(self.path)  # the first thing the manager calls: nothing is read before it
        total, weights = _walk_bytes(self.path)
        return Resources(ram_bytes=int(total * RAM_ESTIMATE_MULTIPLIER), variable_bytes=weights)

    def read_meta_graph(self):
        """The MetaGraphDef for `tags`, read from disk without loading variables."""
        from google.protobuf import text_format
        from tensorflow.core.protobuf import saved_model_pb2

        gfile = _gfile(self.path)
        pb, pbtxt = (
            os.path.join(self.path, "saved_model.pb"),
            os.path.join(self.path, "saved_model.pbtxt"),
        )
        saved_model = saved_model_pb2.SavedModel()
        try:
            if gfile.exists(pb):
                with gfile.GFile(pb, "rb") as f:
                    saved_model.ParseFromString(f.read())
            elif gfile.exists(pbtxt):
                with gfile.GFile(pbtxt, "r") as f:
                    text_format.Parse(f.read(), saved_model)
            else:
                self._refuse_keras_files()
                raise AspireError(
                    "Could not find SavedModel .pb or .pbtxt at supplied export directory path: "
                    f"{self.path}. Check that the directory exists and that you have the right "
                    "permissions for accessing it.",
                    "NOT_FOUND",
                )
        except AspireError:
            raise
        except Exception as exc:  # DecodeError, text_format.ParseError, I/O errors
            raise AspireError(
                f"Failed to parse SavedModel at {self.path}: {exc}", "DATA_LOSS"
            ) from None
        wanted = set(self.tags)
        for meta_graph in saved_model.meta_graphs:
            if set(meta_graph.meta_info_def.tags) == wanted:
                return meta_graph
        available = [sorted(m.meta_info_def.tags) for m in saved_model.meta_graphs]
        raise AspireError(
            f"MetaGraphDef associated with tags '{','.join(self.tags)}' could not be found in "
            f"SavedModel, with available tags '{available}'. To inspect available tag-sets in "
            "the SavedModel, please use the SavedModel CLI: `saved_model_cli`",
            "NOT_FOUND",
        )

    def _refuse_keras_files(self) -> None:
        """A version holding Keras files and no SavedModel gets a message that says why it is
        not served: .keras/.h5 files rebuild layers in Python (a Lambda layer is code), and
        Aspire runs only graphs through TF's SavedModel loader."""
        gfile = _gfile(self.path)
        try:
            keras_files = sorted(n for n in gfile.listdir(self.path) if n.endswith(KERAS_SUFFIXES))
        except Exception:  # no directory at all: TF Serving's message below says so
            return
        if keras_files:
            raise AspireError(
                f"Version directory {self.path} holds Keras file(s) {', '.join(keras_files)} and "
                "no SavedModel (saved_model.pb): Aspire serves SavedModels only and never "
                "deserialises Keras files. Export one with model.export(path).",
                "NOT_FOUND",
            )

    def validate(self) -> dict:
        """Signature defs of the version (cheap); raises AspireError when it cannot load."""
        check_contained(self.path)
        return dict(self.read_meta_graph().signature_def)

    def load(
        self,
        intra_op_threads: int = 0,
        inter_op_threads: int = 0,
        gpu_memory_limit_bytes: int | None = None,
        run_timeout_ms: int = 0,
        base_config: bytes = b"",
        gpu_memory_fraction: float = 0.0,
    ) -> "LoadedSavedModel":
        """Load into a TF1 session configured by `session_config` (its arguments: the flags'
        threads, the admission cap, the session config file's ConfigProto and the GPU fraction)."""
        check_contained(self.path)  # again in the replica: the directory may have changed since
        tf = runtime(self.path)
        tf.logger.setLevel(logging.ERROR)  # the TF1 loader's deprecation notice, every load
        graph = tf.Graph()
        config = session_config(
            intra_op_threads,
            inter_op_threads,
            gpu_memory_limit_bytes,
            base_config,
            gpu_memory_fraction,
        )
        session = tf.Session(graph=graph, config=config)
        try:
            with graph.as_default():
                meta_graph = tf.load_saved_model(session, list(self.tags), self.path)
            restored = restore_signature_variables(session, graph, meta_graph, self.path)
        except tf.OpError as err:
            session.close()
            raise _from_tf_error(err) from None
        except AspireError:
            session.close()
            raise
        except Exception as exc:
            session.close()
            raise AspireError(
                f"Failed to load SavedModel at {self.path}: {exc}", "INTERNAL"
            ) from None
        if restored:
            log.info(
                "Restored %d variable(s) read by the signatures of %s from its object graph "
                "(the TF1 restore left them without values)",
                len(restored),
                self.path,
            )
        model = LoadedSavedModel(session, dict(meta_graph.signature_def), run_timeout_ms)
        model.restored_variables = restored
        return model


class LoadedSavedModel:
    """A loaded version: its signatures and a thread-safe `run`. With `run_timeout_ms` > 0, TF
    cancels a run that takes longer (DEADLINE_EXCEEDED), so no request holds a thread and CPU
    past the time its client was told it failed."""

    def __init__(self, session, signatures: dict, run_timeout_ms: int = 0):
        self._session = session
        self._run_timeout_ms = run_timeout_ms
        self.signatures = signatures  # name -> tensorflow SignatureDef proto
        self._callables: dict[tuple, object] = {}
        # variables restore_signature_variables() gave their values (a Keras 3 export saved with
        # tf.saved_model.save); empty where TF's TF1 restore did it all
        self.restored_variables: list[str] = []
        self._lock = threading.Lock()

    def _callable(self, feeds: tuple[str, ...], fetches: tuple[str, ...]):
        key = (feeds, fetches)
        fn = self._callables.get(key)
        if fn is None:
            from tensorflow.core.protobuf import config_pb2

            with self._lock:
                fn = self._callables.get(key)
                if fn is None:
                    options = config_pb2.CallableOptions(feed=list(feeds), fetch=list(fetches))
                    if self._run_timeout_ms > 0:
                        options.run_options.timeout_in_ms = self._run_timeout_ms
                    fn = self._session._make_callable_from_options(options)
                    self._callables[key] = fn
        return fn

    def run(
        self, signature_name: str, inputs: dict, output_aliases: list[str] | None = None
    ) -> dict:
        """Run `signature_name` on {alias: ndarray}; returns {alias: ndarray}.

        Inputs must already name signature inputs (the request layer validates names with TF
        Serving's messages); missing inputs with a SignatureDef default are filled from it.
        """
        tf = runtime()
        signature = self.signatures[signature_name]
        feeds = dict(inputs)
        for alias, proto in signature.defaults.items():
            if alias not in feeds:
                feeds[alias] = tf.make_ndarray(proto)
        aliases = sorted(feeds)
        outputs = list(output_aliases) if output_aliases is not None else sorted(signature.outputs)
        fn = self._callable(
            tuple(signature.inputs[a].name for a in aliases),
            tuple(signature.outputs[a].name for a in outputs),
        )
        try:
            values = fn(*[feeds[a] for a in aliases])
        except tf.OpError as err:
            raise _from_tf_error(err) from None
        return dict(zip(outputs, values, strict=True))

    @property
    def session_threads(self) -> tuple[int, int]:
        """(intra-op, inter-op) threads as the session was configured (0: TF picks)."""
        config = self._session._config
        return config.intra_op_parallelism_threads, config.inter_op_parallelism_threads

    def unload(self) -> None:
        self._callables.clear()
        self._session.close()


class ServedModel(Protocol):
    """What the calls run on: a LoadedSavedModel, or batching's BatchedModel around one
    (deployments/replica/batching.py), which batches its `run`."""

    signatures: dict  # name -> tensorflow SignatureDef proto

    def run(
        self, signature_name: str, inputs: dict, output_aliases: list[str] | None = None
    ) -> dict: ...

    def unload(self) -> None: ...
