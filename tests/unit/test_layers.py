"""The packages' import graph, and the rooms it keeps apart.

1. Imports flow one way between packages, core <- policies <- config <- deployments <- cluster,
   and no module imports itself back through others (imports inside functions count too: a cycle
   through a lazy import is still a cycle).
2. Inside the data plane, one room per process: the router (deployments/router) and the replica
   (deployments/replica) never import each other; both may import the wire formats
   (deployments/wire), which import neither.
3. The control plane imports the data plane only through its backend package (cluster/backend).
4. TensorFlow runs only where a model runs: nothing in the manager, the router or the CLI
   imports TensorFlow (TF's proto modules, `*_pb2`, are free of its runtime: core/protos.py),
   neither directly nor through what it imports at module level.
5. Ray's private API is read in one module, core/ray_internals.py.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("core", "policies", "config", "deployments", "cluster")  # each may import those before it
RAY_DOOR = "core.ray_internals"
# Private attributes of Ray's objects that only the door reads
RAY_PRIVATE_ATTRIBUTES = {"_router", "_asyncio_router", "_request_router", "_replica_info",
                          "_global_node"}  # fmt: skip


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for package in LAYERS
        for path in sorted((ROOT / package).rglob("*.py"))
        if not path.name.endswith("_pb2.py")
    }


def import_nodes(path: Path, module_level_only: bool = False) -> list[ast.AST]:
    tree = ast.parse(path.read_text())
    if not module_level_only:
        return [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    found: list[ast.AST] = []

    def visit(nodes):  # module body, and the blocks of if/try at module level
        for node in nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.append(node)
            elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
                visit(node.body + node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body + node.orelse + node.finalbody)

    visit(tree.body)
    return found


def imported_names(path: Path, module_level_only: bool = False) -> set[str]:
    """Every dotted name `path` imports (`from a.b import c` gives a.b and a.b.c)."""
    names = set()
    for node in import_nodes(path, module_level_only):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if not all(alias.name.endswith("_pb2") for alias in node.names):
                names.add(node.module)  # `from tensorflow.core.x import y_pb2` imports a proto
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def imports_of(path: Path, modules: dict[str, Path], module_level_only: bool = False) -> set[str]:
    """Project modules `path` imports (`from pkg import module` counts as the module; `from
    pkg.module import name` as pkg.module)."""
    found = set()
    for name in imported_names(path, module_level_only):
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name:
            found.add(name)
    return found


def import_graph(module_level_only: bool = False) -> dict[str, set[str]]:
    modules = project_modules()
    return {
        name: imports_of(path, modules, module_level_only) - {name}
        for name, path in modules.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def room(module: str) -> str:
    """The room a module runs in: deployments.router/.replica/.wire, cluster.backend, or its
    top-level package."""
    parts = module.split(".")
    if parts[0] == "deployments" and len(parts) > 1 and parts[1] in ("router", "replica", "wire"):
        return ".".join(parts[:2])
    if parts[:2] == ["cluster", "backend"]:
        return "cluster.backend"
    return parts[0]


def crossings(graph: dict[str, set[str]], forbidden: dict[str, set[str]]) -> list[str]:
    """'a imports b' for each import from a room to a room it must not import."""
    return [
        f"{m} imports {d}"
        for m, deps in sorted(graph.items())
        for d in sorted(deps)
        if room(d) in forbidden.get(room(m), set())
    ]


def tensorflow_imports(names: set[str]) -> set[str]:
    """The TensorFlow (or Keras) modules among `names`, TF's proto modules left out."""
    return {
        n
        for n in names
        if n.split(".")[0] in ("tensorflow", "keras", "tf_keras") and not n.endswith("_pb2")
        and not n.rpartition(".")[0].endswith("_pb2")
    }  # fmt: skip


def without_tensorflow(module: str) -> bool:
    """Modules that run in the manager, the router or the CLI."""
    return not room(module).startswith("deployments.replica")


# ------------------------------------------------------------------------------------ the rules
def test_every_layer_and_room_has_modules_and_the_graph_sees_their_imports():
    graph = import_graph()
    assert {name.split(".")[0] for name in graph} == set(LAYERS)
    rooms = {room(name) for name in graph}
    assert {"deployments.router", "deployments.replica", "deployments.wire"} <= rooms
    assert "cluster.backend" in rooms
    assert "core.errors" in graph["deployments.router.tfs_rest"]  # the parser sees real imports
    assert "deployments.router.deployment" in graph["cluster.backend.routers"]


def test_imports_flow_from_core_up_and_never_back():
    rank = {package: i for i, package in enumerate(LAYERS)}
    upward = [
        f"{m} imports {d}"
        for m, deps in sorted(import_graph().items())
        for d in sorted(deps)
        if rank[d.split(".")[0]] > rank[m.split(".")[0]]
    ]
    assert upward == []


def test_no_import_cycle_between_modules():
    assert cycles(import_graph()) == []


def test_the_router_and_the_replica_never_import_each_other_and_wire_imports_neither():
    forbidden = {
        "deployments.router": {"deployments.replica"},
        "deployments.replica": {"deployments.router"},
        "deployments.wire": {"deployments.router", "deployments.replica"},
        "deployments": {"deployments.router", "deployments.replica", "deployments.wire"},
    }
    assert crossings(import_graph(), forbidden) == []


def test_the_control_plane_imports_the_data_plane_only_through_its_backend():
    data_plane = {"deployments", "deployments.router", "deployments.replica", "deployments.wire"}
    assert crossings(import_graph(), {"cluster": data_plane}) == []


def test_nothing_in_the_manager_router_or_cli_imports_tensorflow():
    modules = project_modules()
    direct = {
        m: sorted(tensorflow_imports(imported_names(path)))
        for m, path in modules.items()
        if without_tensorflow(m)
    }
    assert {m: found for m, found in direct.items() if found} == {}


def test_what_the_manager_imports_at_module_level_imports_no_tensorflow_either():
    """cluster/backend imports the replica's deployment classes (Serve needs them to deploy);
    importing them must not import TensorFlow: the replica imports it when it loads a model."""
    modules = project_modules()
    graph = import_graph(module_level_only=True)
    seen, todo = set(), [m for m in modules if without_tensorflow(m)]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph[m])
    found = {
        m: sorted(tensorflow_imports(imported_names(modules[m], module_level_only=True)))
        for m in sorted(seen)
    }
    assert {m: f for m, f in found.items() if f} == {}
    assert "deployments.replica.servable" in seen  # the walk does reach the replica's modules


def ray_private_uses(path: Path) -> list[str]:
    uses = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names]
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{n}" for n in names]
            uses += [n for n in names if n.split(".")[0] == "ray" and "._" in n]
        elif isinstance(node, ast.Attribute) and node.attr in RAY_PRIVATE_ATTRIBUTES:
            uses.append(node.attr)
        elif isinstance(node, ast.Constant) and node.value in RAY_PRIVATE_ATTRIBUTES:
            uses.append(node.value)  # getattr(x, "_router")
    return uses


def test_rays_private_api_is_read_only_through_its_one_door():
    found = {
        m: ray_private_uses(path)
        for m, path in project_modules().items()
        if m != RAY_DOOR and ray_private_uses(path)
    }
    assert found == {}
    assert ray_private_uses(project_modules()[RAY_DOOR])  # the check does see the door's uses


# -------------------------------------------------------------------- the checks check something
def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_a_crossing_between_rooms_is_found():
    graph = {"deployments.router.core": {"deployments.replica.loader", "deployments.wire.direct"}}
    forbidden = {"deployments.router": {"deployments.replica"}}
    assert crossings(graph, forbidden) == [
        "deployments.router.core imports deployments.replica.loader"
    ]


def test_tensorflow_imports_are_found_and_its_protos_are_not():
    names = {"tensorflow", "tensorflow.python.framework.ops", "keras", "numpy",
             "tensorflow.core.framework.tensor_pb2", "tensorflow_serving.apis.predict_pb2",
             "tensorflow.core.framework.tensor_pb2.TensorProto"}  # fmt: skip
    assert tensorflow_imports(names) == {"tensorflow", "tensorflow.python.framework.ops", "keras"}


def test_module_level_imports_leave_out_function_bodies_and_type_checking(tmp_path):
    path = tmp_path / "m.py"
    path.write_text(
        "import os\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import tensorflow\n"
        "try:\n    import numpy\nexcept ImportError:\n    pass\n"
        "def f():\n    import keras\n"
    )
    assert imported_names(path, module_level_only=True) == {"os", "typing", "typing.TYPE_CHECKING",
                                                            "numpy"}  # fmt: skip
    assert {"tensorflow", "keras"} <= imported_names(path)


def test_a_private_ray_use_is_found(tmp_path):
    path = tmp_path / "m.py"
    path.write_text(
        "from ray._private import state\nimport ray.serve._private.common\n"
        "x = handle._router\ny = getattr(r, '_replica_info')\nimport ray\n"
    )
    assert ray_private_uses(path) == [
        "ray._private",
        "ray._private.state",
        "ray.serve._private.common",
        "_router",
        "_replica_info",
    ]
