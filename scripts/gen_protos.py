"""Regenerate the Python stubs for asr_common/protos/speech.proto.

Run with the dev extras installed: ``python scripts/gen_protos.py [OUT_DIR]``.
The stubs are committed; tests/test_protos.py checks they match the .proto.
"""

from __future__ import annotations

import sys
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent


def generate(out_dir: Path) -> None:
    """Write speech_pb2.py, speech_pb2.pyi and speech_pb2_grpc.py(i) under out_dir/asr_common/protos.

    The .proto sits at asr_common/protos/ below the include root, so the generated modules import each
    other as ``asr_common.protos``: a top-level ``protos`` package would collide with others in
    site-packages."""
    (out_dir / "asr_common" / "protos").mkdir(parents=True, exist_ok=True)
    include = Path(grpc_tools.__file__).parent / "_proto"
    bin_dir = Path(sys.executable).parent
    args = [
        "grpc_tools.protoc",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"-I{ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        str(ROOT / "asr_common" / "protos" / "speech.proto"),
    ]
    code = protoc.main(args)
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
