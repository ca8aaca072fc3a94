"""Benchmark the bundled streaming conformer against Moonshine on held-out speech, same clips, same run.

    .venv/bin/python scripts/bench_conformer.py [--per-set 60] [--benchmarks-md BENCHMARKS.md]

Sets (sentences never trained on; ``training/conformer/data.py`` builds them into .cache/conformer-data):
``seen-voices`` (held-out sentences, training voices), one set per held-out voice (flite slt, espeak
gbcwmd, piper joe, hibari af_heart, and Kokoro's jf_nezumi when ``--kokoro-data`` holds its set), and the
held-out-voice clips with white noise (10 dB SNR) and babble (10 dB), seeded. Each model runs in its own
process (so its peak RSS is its own): the conformer streams every clip in 100 ms frames with a pilot step
after each (as the agent does) and finalizes; Moonshine finalizes the whole clip. Figures: WER (Whisper
normalizer), RTF (inference seconds / audio seconds), finalization ms (the ``finalize`` call after the
last audio: p50/p95), peak RSS, size on disk.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RATE = 16000
HELD_OUT_VOICES = ("flite/slt", "espeak/en-gb-x-gbcwmd", "piper/en_US-joe-medium", "hibari/af_heart")


def _clips(data: Path, name: str) -> list[tuple[np.ndarray, str, str]]:
    npz = np.load(data / name / "audio.npz")
    pcm, offsets = npz["pcm"], npz["offsets"]
    rows = [json.loads(line) for line in (data / name / "manifest.jsonl").read_text().splitlines()]
    return [
        (pcm[offsets[i] : offsets[i + 1]].astype(np.float32) / 32768, row["text"], row["voice"])
        for i, row in enumerate(rows)
    ]


def _mix(clean: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    scale = np.sqrt(np.mean(clean**2) / (np.mean(noise**2) * 10 ** (snr_db / 10) + 1e-12))
    mixed = clean + noise * scale
    return (mixed / max(1.0, float(np.abs(mixed).max()) / 0.95)).astype(np.float32)


def build_sets(
    data: Path, per_set: int, kokoro: Path | None = None
) -> dict[str, list[tuple[np.ndarray, str]]]:
    rng = np.random.default_rng(11)
    seen = _clips(data, "test-seen-voices")
    new = _clips(data, "test-new-voices")
    sets: dict[str, list[tuple[np.ndarray, str]]] = {"seen-voices": [(a, t) for a, t, _ in seen[:per_set]]}
    for voice in HELD_OUT_VOICES:
        picked = [(a, t) for a, t, v in new if v.split("+")[0].split("@")[0] == voice][: per_set // 2]
        if picked:
            sets[f"new:{voice.split('/')[1]}"] = picked
    if kokoro is not None and (kokoro / "test-new-voices" / "manifest.jsonl").exists():
        # Kokoro's held-out style: its engine trained the conformer in other styles (hibari's af_heart
        # above is a distilled Kokoro voice too, so that set no longer stands for an unseen engine).
        sets["new:kokoro-jf_nezumi"] = [(a, t) for a, t, _ in _clips(kokoro, "test-new-voices")][
            : per_set // 2
        ]
    pool = [a for a, _, _ in new]
    new_all = [(a, t) for a, t, _ in new][:: max(1, len(new) // per_set)][:per_set]
    sets["new-voices+white10"] = [
        (_mix(a, rng.standard_normal(len(a)).astype(np.float32), 10.0), t) for a, t in new_all
    ]
    babble = []
    for a, t in new_all:
        others = sum(np.resize(pool[int(rng.integers(len(pool)))], len(a)) for _ in range(3))
        babble.append((_mix(a, np.asarray(others, np.float32), 10.0), t))
    sets["new-voices+babble10"] = babble
    return sets


def _split_head(model_name: str) -> tuple[str, str]:
    """A bench model name as (EDGE_MODEL, EDGE_CONFORMER_HEAD): ``conformer/rnnt`` is the bundled model's
    transducer head, ``conformer:/dir/ctc`` a directory's CTC head, ``moonshine`` the family as is."""
    if model_name.endswith(("/ctc", "/rnnt")):
        family, _, head = model_name.rpartition("/")
        return family, head
    return model_name, "auto"


def worker(model_name: str, data: Path, per_set: int, kokoro: Path | None) -> dict[str, Any]:
    from edge_agent.asr.registry import load_model
    from edge_agent.settings import EdgeSettings
    from speech_bench.scoring import corpus_wer

    family, head = _split_head(model_name)
    settings = EdgeSettings(
        model=family, conformer_head=head, model_cache_dir=ROOT / ".cache" / "edge-models"
    )
    model = load_model(settings)
    streaming = model.capabilities.native_streaming
    out: dict[str, Any] = {"model": model.name, "sets": {}}
    for name, clips in build_sets(data, per_set, kokoro).items():
        pairs, spent, finalize_ms, audio_s = [], 0.0, [], 0.0
        for audio, text in clips:
            stream = model.create_stream()
            started = time.perf_counter()
            if streaming:
                for i in range(0, len(audio), 1600):
                    stream.accept(audio[i : i + 1600])
                    stream.advance(lambda: False)
            else:
                stream.accept(audio)
            at_end = time.perf_counter()
            decoded = stream.finalize()
            done = time.perf_counter()
            spent += done - started
            finalize_ms.append(1000 * (done - at_end))
            audio_s += len(audio) / RATE
            pairs.append((text, decoded.text))
        out["sets"][name] = {
            "clips": len(clips),
            "wer": corpus_wer(pairs),
            "rtf": spent / audio_s,
            "finalize_ms_p50": float(np.percentile(finalize_ms, 50)),
            "finalize_ms_p95": float(np.percentile(finalize_ms, 95)),
        }
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def _size_mb(model: str) -> float:
    if model.startswith("conformer"):
        from edge_agent.asr.conformer.stream import BUNDLED
        from edge_agent.asr.registry import parse_model_spec

        family, head = _split_head(model)
        folder = parse_model_spec(family).path or BUNDLED
        names = ["encoder", "decoder", "joiner"] if head == "rnnt" else ["model"]
        return sum((folder / f"{n}.int8.onnx").stat().st_size for n in names) / 1e6
    cache = ROOT / ".cache" / "edge-models"
    return sum(p.stat().st_size for p in cache.rglob("*.onnx")) / 1e6 if cache.exists() else float("nan")


def markdown(results: list[dict[str, Any]], per_set: int) -> str:
    sets = list(results[0]["sets"])
    head = "| set | " + " | ".join(f"{r['model']} WER" for r in results) + " | "
    head += " | ".join(f"{r['model']} RTF" for r in results) + " |"
    lines = [
        "## Streaming conformer (bundled, int8) vs Moonshine base on held-out speech",
        "",
        "`scripts/bench_conformer.py`, one run, every model on the same clips (up to "
        f"{per_set} per set; sentences never trained on; 2 threads). The conformer (CTC head, and its "
        "transducer head, `+rnnt`) streams 100 ms frames with a pilot step after each and then finalizes; "
        "Moonshine finalizes whole clips. WER after Whisper's English normalizer.",
        "",
        head,
        "|" + "---|" * (1 + 2 * len(results)),
    ]
    for name in sets:
        row = [f"{r['sets'][name]['wer']:.1%}" for r in results] + [
            f"{r['sets'][name]['rtf']:.3f}" for r in results
        ]
        lines.append(f"| {name} ({results[0]['sets'][name]['clips']}) | " + " | ".join(row) + " |")
    lines.append("")
    lines.append(
        "| model | size on disk | peak RSS | finalize call after the last audio p50 / p95 (seen-voices) |"
    )
    lines.append("|---|---|---|---|")
    for r in results:
        s = r["sets"]["seen-voices"]
        lines.append(
            f"| {r['model']} | {r['size_mb']:.1f} MB | {r['peak_rss_mb']:.0f} MB | "
            f"{s['finalize_ms_p50']:.1f} / {s['finalize_ms_p95']:.1f} ms |"
        )
    return "\n".join(lines) + "\n"


def replace_section(path: Path, section: str) -> None:
    title = section.splitlines()[0]
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if title in text:
        start = text.index(title)
        rest = text[start + len(title) :]
        end = rest.find("\n## ")
        text = text[:start] + section.rstrip("\n") + ("\n" + rest[end:] if end >= 0 else "\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / ".cache" / "conformer-data")
    parser.add_argument("--kokoro-data", type=Path, default=ROOT / ".cache" / "conformer-data-kokoro")
    parser.add_argument("--per-set", type=int, default=60)
    parser.add_argument("--models", nargs="+", default=["conformer/ctc", "conformer/rnnt", "moonshine"])
    parser.add_argument("--benchmarks-md", type=Path)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.data, args.per_set, args.kokoro_data)))
        return
    results = []
    for model in args.models:
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            model,
            "--data",
            str(args.data),
            "--kokoro-data",
            str(args.kokoro_data),
            "--per-set",
            str(args.per_set),
        ]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        proc = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result["size_mb"] = _size_mb(model)
        results.append(result)
        print(json.dumps(result, indent=1), flush=True)
    section = markdown(results, args.per_set)
    print(section)
    if args.benchmarks_md:
        replace_section(args.benchmarks_md, section)


if __name__ == "__main__":
    main()
