"""Quick-start demo: start ``cloud-server``, transcribe the bundled sample over REST and gRPC, stop.

``python -m cloud_server.demo [AUDIO_FILE]``
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import grpc
import httpx

from asr_common.protos import speech_pb2, speech_pb2_grpc
from asr_common.readiness import free_port, wait_ready
from cloud_server.audio import decode_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sample = resources.files("cloud_server") / "samples" / "librivox_0870.flac"
    parser.add_argument("audio", nargs="?", default=str(sample), help="audio file (default: bundled sample)")
    parser.add_argument("--model", default=os.environ.get("CLOUD_MODEL", "base"))
    args = parser.parse_args()
    audio_path = Path(args.audio)
    rest_port, grpc_port = free_port(), free_port()
    server = [
        str(Path(sys.executable).parent / "cloud-server"),
        *("--host", "127.0.0.1", "--port", str(rest_port)),
        *("--grpc-host", "127.0.0.1", "--grpc-port", str(grpc_port), "--model", args.model),
    ]
    print(f"$ {' '.join(server)}", flush=True)
    proc = subprocess.Popen(server)
    url = f"http://127.0.0.1:{rest_port}"
    try:
        cold = wait_ready(f"{url}/ready", proc, timeout=300)
        print(f"\nready in {cold:.1f} s (REST {url}, gRPC 127.0.0.1:{grpc_port})\n")

        t = time.perf_counter()
        with open(audio_path, "rb") as f:
            rest = httpx.post(
                f"{url}/v1/audio/transcriptions",
                files={"file": (audio_path.name, f)},
                data={"model": "whisper-1", "response_format": "verbose_json"},
                timeout=300,
            )
        rest.raise_for_status()
        body = rest.json()
        took = time.perf_counter() - t
        print(f"REST POST /v1/audio/transcriptions  ({took:.2f} s, {body['duration']:.1f} s audio)")
        print(f"  language={body['language']}  text: {body['text']}\n")

        pcm = (decode_file(audio_path.read_bytes(), max_seconds=600) * 32767).astype("<i2").tobytes()
        request = speech_pb2.RecognizeRequest(
            config=speech_pb2.RecognitionConfig(n_best=3, word_timestamps=True, sample_rate_hz=16000),
            audio=pcm,
            context=speech_pb2.EdgeContext(utterance_id="demo-1", reason=speech_pb2.FORCED),
        )
        t = time.perf_counter()
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            response = speech_pb2_grpc.CloudRecognizerStub(channel).Recognize(request, timeout=300)
        print(f"gRPC speech.v1.CloudRecognizer/Recognize  ({time.perf_counter() - t:.2f} s)")
        for rank, hyp in enumerate(response.hypotheses, 1):
            print(f"  #{rank} confidence={hyp.confidence:.3f} avg_logprob={hyp.avg_logprob:.3f}  {hyp.text}")
        words = response.hypotheses[0].words if response.hypotheses else []
        print("  words: " + " ".join(f"{w.word}[{w.start:.2f}-{w.end:.2f}]" for w in words[:8]) + " ...")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


if __name__ == "__main__":
    main()
