"""The loader on every export kind of tests/support/export_matrix.py, in process: each signature
answers what the model answers in Python (to 1e-6), and the loading path each kind takes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from core.errors import AspireError
from deployments.replica.loader import SavedModelLoader
from tests.support.export_matrix import KINDS

DATA = Path(__file__).resolve().parents[1] / "data"
# Kinds whose signatures read variables TF's TF1 restore leaves without values: Keras 3 models
# saved with tf.saved_model.save (their functions capture other handles than the saver fills).
OBJECT_GRAPH_RESTORE = {"keras_sequential", "keras_functional", "keras_subclassed"}


@pytest.fixture(scope="module")
def cases(export_matrix):
    return export_matrix


def assert_answers(model, case):
    for signature, (inputs, expected) in case.calls.items():
        out = model.run(signature, inputs)
        assert set(out) == set(expected), (case.kind, signature)
        for alias, value in expected.items():
            if value.dtype == object:
                assert out[alias].tolist() == value.tolist()
            else:
                np.testing.assert_allclose(out[alias], value, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_every_export_kind_answers_as_the_model_does_in_python(cases, kind):
    case = cases[kind]
    model = SavedModelLoader(str(case.version_dir)).load()
    try:
        assert_answers(model, case)
        assert set(case.calls) <= set(model.signatures)
        # which path it took: object-graph restore only where TF's restore left values out
        assert bool(model.restored_variables) == (kind in OBJECT_GRAPH_RESTORE), (
            model.restored_variables
        )
        print(
            f"{kind}: TF1 session"
            + (
                f" + {len(model.restored_variables)} variables restored through the object graph"
                if model.restored_variables
                else ""
            )
        )
    finally:
        model.unload()


@pytest.mark.parametrize("kind", sorted(OBJECT_GRAPH_RESTORE))
def test_after_an_object_graph_restore_only_the_variables_the_signatures_read_hold_values(
    cases, kind
):
    """The copies TF's restore filled, which no signature reads, are freed: the weights are held
    once, as admission booked them."""
    from tensorflow.python.ops import gen_resource_variable_ops as var_ops

    from deployments.replica.variable_restore import _signature_variables

    case = cases[kind]
    loader = SavedModelLoader(str(case.version_dir))
    meta_graph = loader.read_meta_graph()
    handles = sorted(n.name for n in meta_graph.graph_def.node if n.op == "VarHandleOp")
    read = set(_signature_variables(meta_graph))
    model = loader.load()
    try:
        graph = model._session.graph
        with graph.as_default():
            checks = [
                var_ops.var_is_initialized_op(graph.get_tensor_by_name(h + ":0")) for h in handles
            ]
        held = {h for h, ok in zip(handles, model._session.run(checks), strict=True) if ok}
        assert read and len(handles) > len(read)  # the export has unread copies to free
        assert held == read
        assert_answers(model, case)
    finally:
        model.unload()


def test_tf1_exports_take_the_session_path_alone():
    for name in (
        "saved_model_half_plus_two_cpu",
        "saved_model_counter",
        "saved_model_half_plus_two_tf2_cpu",
    ):
        model = SavedModelLoader(str(DATA / name / "00000123")).load()
        assert model.restored_variables == []
        model.unload()


def test_a_version_whose_signatures_read_a_variable_without_value_fails_its_load(cases, tmp_path):
    """Without its object graph, nothing says where the Keras export's variables are: the load
    fails with TF's error instead of a version that answers every predict with it."""
    from tensorflow.core.protobuf import saved_model_pb2

    broken = tmp_path / "1"
    shutil.copytree(cases["keras_sequential"].version_dir, broken)
    saved = saved_model_pb2.SavedModel.FromString((broken / "saved_model.pb").read_bytes())
    saved.meta_graphs[0].ClearField("object_graph_def")
    (broken / "saved_model.pb").write_bytes(saved.SerializeToString())
    with pytest.raises(AspireError) as err:
        SavedModelLoader(str(broken)).load()
    assert err.value.code == "FAILED_PRECONDITION"
    assert err.value.message.startswith("Could not find variable sequential/dense")
