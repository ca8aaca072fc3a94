"""The committed stubs match asr_common/protos/speech.proto."""

from __future__ import annotations

from pathlib import Path

import grpc_tools
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

from asr_common.protos import speech_pb2, speech_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent


def test_committed_stubs_match_proto(tmp_path: Path) -> None:
    out = tmp_path / "speech.desc"
    include = Path(grpc_tools.__file__).parent / "_proto"
    code = protoc.main(
        [
            "protoc",
            f"-I{ROOT}",
            f"-I{include}",
            f"--descriptor_set_out={out}",
            str(ROOT / "asr_common" / "protos" / "speech.proto"),
        ]
    )
    assert code == 0
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    committed = descriptor_pb2.FileDescriptorProto.FromString(speech_pb2.DESCRIPTOR.serialized_pb)
    # protoc's descriptor sets add json_name, which the Python generator leaves out.
    for message in fresh.message_type:
        for field in message.field:
            field.ClearField("json_name")
    assert fresh == committed, "asr_common/protos/speech_pb2*.py are stale: run python scripts/gen_protos.py"


def test_service_methods() -> None:
    service = speech_pb2.DESCRIPTOR.services_by_name["CloudRecognizer"]
    assert service.full_name == "speech.v1.CloudRecognizer"
    streaming = service.methods_by_name["StreamingRecognize"]
    assert streaming.client_streaming and streaming.server_streaming
    unary = service.methods_by_name["Recognize"]
    assert not unary.client_streaming and not unary.server_streaming
    assert hasattr(speech_pb2_grpc, "CloudRecognizerStub")
