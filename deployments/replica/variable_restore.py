"""Variables a SavedModel's signatures read, and restoring those the TF1 restore leaves empty.

TF Serving loads a SavedModel's MetaGraph into a session and restores its variables from the
checkpoint by name. Keras 3 models saved with `tf.saved_model.save` read resource variables that
this restore does not fill; TF Serving then fails every predict with "Could not find variable".
`restore_signature_variables` (called by deployments/replica/loader.py after TF's restore) finds
each variable the signatures read, fills the empty ones from the checkpoint through its object
graph, and fails the load if any would still be read without a value.
"""

from __future__ import annotations

import os

from core.errors import AspireError
from deployments.replica.tf_runtime import runtime


def _signature_variables(meta_graph) -> list[str]:
    """Names of the VarHandleOp nodes the signatures read: found walking back from every
    signature output through the graph's inputs (a function's captured variables are inputs of
    its call node)."""
    nodes = {node.name: node for node in meta_graph.graph_def.node}
    stack = [
        tensor.name
        for signature in meta_graph.signature_def.values()
        for tensor in signature.outputs.values()
    ]
    seen, handles = set(), []
    while stack:
        name = stack.pop().lstrip("^").split(":")[0]
        if name in seen or name not in nodes:
            continue
        seen.add(name)
        node = nodes[name]
        if node.op == "VarHandleOp":
            handles.append(name)
        stack.extend(node.input)
    return sorted(handles)


def _captured_objects(meta_graph) -> dict[str, int]:
    """{graph node name: object-graph node id} for the variables that TF2 functions capture: a
    call of a saved concrete function takes its captures as its last inputs, in the order of the
    function's `bound_inputs` (the object-graph nodes TF2's loader binds them to)."""
    functions = meta_graph.object_graph_def.concrete_functions
    found: dict[str, int] = {}
    for node in meta_graph.graph_def.node:
        if node.op not in ("StatefulPartitionedCall", "PartitionedCall"):
            continue
        saved = functions.get(node.attr["f"].func.name)
        if saved is None or not saved.bound_inputs:
            continue
        inputs = [i for i in node.input if not i.startswith("^")]
        for name, node_id in zip(
            inputs[len(inputs) - len(saved.bound_inputs) :], saved.bound_inputs, strict=False
        ):
            found.setdefault(name.split(":")[0], node_id)
    return found


def _checkpoint_keys(meta_graph, checkpoint_graph) -> dict[int, str]:
    """{object-graph node id: checkpoint key of its value}. The SavedModel's object graph and
    the checkpoint's are matched from the root by child names, as TF2's loader restores."""
    saved, stored = meta_graph.object_graph_def.nodes, checkpoint_graph.nodes
    keys, queue, seen = {}, [(0, 0)], set()
    while queue:
        saved_id, stored_id = queue.pop()
        if saved_id in seen or saved_id >= len(saved) or stored_id >= len(stored):
            continue
        seen.add(saved_id)
        for attribute in stored[stored_id].attributes:
            if attribute.name == "VARIABLE_VALUE":
                keys[saved_id] = attribute.checkpoint_key
        children = {c.local_name: c.node_id for c in stored[stored_id].children}
        queue.extend(
            (c.node_id, children[c.local_name])
            for c in saved[saved_id].children
            if c.local_name in children
        )
    return keys


def _release_unread_copies(session, graph, meta_graph, read: list[str]) -> list[str]:
    """After an object-graph restore, free the variables TF's restore filled that nothing can
    read: no signature reaches their handle, and no handle anywhere in the graph or its
    functions shares their resource name. Without this a replica would hold those weights twice
    (and a GPU version would need twice the VRAM admission booked for it)."""
    from tensorflow.python.ops import gen_resource_variable_ops as var_ops

    def resource(node) -> str:
        return node.attr["shared_name"].s.decode() or node.name

    nodes = {node.name: node for node in meta_graph.graph_def.node}
    in_use = {resource(nodes[name]) for name in read}
    for function in meta_graph.graph_def.library.function:
        in_use.update(resource(node) for node in function.node_def if node.op == "VarHandleOp")
    unread = sorted(
        name
        for name, node in nodes.items()
        if node.op == "VarHandleOp" and resource(node) not in in_use
    )
    if unread:
        with graph.name_scope("aspire_release"):
            session.run(
                [
                    var_ops.destroy_resource_op(
                        graph.get_tensor_by_name(name + ":0"), ignore_lookup_error=True
                    )
                    for name in unread
                ]
            )
    return unread


def restore_signature_variables(session, graph, meta_graph, path: str) -> list[str]:
    """Make sure every variable the signatures read holds its saved value; returns the names of
    the variables restored here (none for most exports).

    TF's TF1 loader restores a SavedModel's variables through its saver, into the variables the
    saver names. A TF2 export keeps its checkpoint by object (the object graph), and in Keras 3
    exports saved with `tf.saved_model.save`, the functions behind the signatures capture other
    variable handles than the saver restores: every predict then fails with "Could not find
    variable ...", in TF Serving too. Those variables are restored here from the checkpoint,
    found through the object graph as TF2's loader finds them, so the signatures run in the TF1
    session (and keep its speed); the copies TF's restore filled, which nothing reads, are then
    freed. A variable still without a value after that fails the load with TF's own error: a
    version that cannot answer never becomes AVAILABLE."""
    from tensorflow.core.protobuf import trackable_object_graph_pb2
    from tensorflow.python.ops import gen_io_ops
    from tensorflow.python.ops import gen_resource_variable_ops as var_ops

    handles = _signature_variables(meta_graph)
    if not handles:
        return []
    nodes = {node.name: node for node in meta_graph.graph_def.node}
    with graph.as_default():
        tensors = {name: graph.get_tensor_by_name(name + ":0") for name in handles}
        with graph.name_scope("aspire_restore"):
            checks = [var_ops.var_is_initialized_op(tensors[name]) for name in handles]
        missing = [name for name, ok in zip(handles, session.run(checks), strict=True) if not ok]
        restored = []
        if missing and meta_graph.object_graph_def.nodes:
            prefix = os.path.join(path, "variables", "variables")
            with graph.name_scope("aspire_restore"):
                (raw,) = gen_io_ops.restore_v2(
                    prefix, ["_CHECKPOINTABLE_OBJECT_GRAPH"], [""], [runtime().as_dtype("string")]
                )
            checkpoint_graph = trackable_object_graph_pb2.TrackableObjectGraph.FromString(
                session.run(raw)
            )
            keys = _checkpoint_keys(meta_graph, checkpoint_graph)
            objects = _captured_objects(meta_graph)
            restored = [name for name in missing if keys.get(objects.get(name, -1))]
            if restored:
                with graph.name_scope("aspire_restore"):
                    values = gen_io_ops.restore_v2(
                        prefix,
                        [keys[objects[name]] for name in restored],
                        [""] * len(restored),
                        [nodes[name].attr["dtype"].type for name in restored],
                    )
                    assigns = [
                        var_ops.assign_variable_op(tensors[name], value)
                        for name, value in zip(restored, values, strict=True)
                    ]
                session.run(assigns)
                _release_unread_copies(session, graph, meta_graph, handles)
        still = [name for name in missing if name not in restored]
        if still:  # TF's own error for reading it ("Could not find variable ...")
            dtype = nodes[still[0]].attr["dtype"].type
            with graph.name_scope("aspire_restore"):
                read = var_ops.read_variable_op(tensors[still[0]], dtype)
            session.run(read)
            raise AspireError(
                f"Variable {still[0]} read by the signatures of {path} has no value after loading",
                "FAILED_PRECONDITION",
            )
    return restored
