"""Build the labelled set the edge's confidence model is calibrated on (registry packages only).

Sentences written for calibration (commands, numbers, names, questions, long sentences; none of them
is used by the tests) spoken by flite and espeak-ng voices, each clean, with mild (12-25 dB SNR) and
hard (2-10 dB) white noise, babble of other synthetic speech (5-15 dB) and reverberation (RT60
0.3-0.7 s), seeded. Calibrate with the pocketsphinx recordings added (see README).
Deterministic and cached. Output: ``<out>/manifest.jsonl`` (NeMo style, with a ``kind`` field).

Usage: ``python scripts/make_calibration_set.py [OUT_DIR]`` (default ``.cache/calibration-set``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

ROOT = Path(__file__).resolve().parent.parent
RATE = 16000
SEED = 20261122

SENTENCES = [
    "Open the garage door and switch on the porch light.",
    "What time does the pharmacy on Main Street close today?",
    "Add olive oil, tomatoes and fresh basil to my shopping list.",
    "Call my sister Jennifer on her mobile phone.",
    "Set the thermostat to sixty eight degrees at ten pm.",
    "How far is it from Chicago to Denver by car?",
    "Read me the latest news about the national football league.",
    "Book a table for four people at eight thirty on Friday.",
    "Translate good morning into Spanish and French.",
    "The meeting has been moved to room three hundred and twelve.",
    "Please turn off all the lights upstairs except the hallway.",
    "Who won the world cup in nineteen ninety eight?",
    "Remind me to water the plants every Sunday morning.",
    "Increase the volume by twenty percent.",
    "Find an Italian restaurant near the train station.",
    "My account number is four five seven two nine one.",
    "The train to Philadelphia departs from platform nine.",
    "Send an email to Professor Nakamura about the lab report.",
    "Skip this song and play the next album by the Beatles.",
    "What is the square root of one hundred and forty four?",
    "Lock the front door and arm the security system.",
    "It will be cloudy in the morning with showers in the afternoon.",
    "Schedule a dentist appointment for the second week of March.",
    "Convert fifty miles into kilometers.",
    "Start a stopwatch and tell me when two minutes have passed.",
    "The package should arrive between noon and four o'clock.",
    "Turn on the dishwasher after dinner is finished.",
    "Where did I park the car yesterday evening?",
    "Text Michael that the game starts at seven.",
    "Pause the movie and turn on the subtitles.",
    "She bought three apples, two oranges and a loaf of bread.",
    "Our quarterly revenue grew by twelve point five percent.",
    "Navigate home avoiding highways and toll roads.",
    "How many calories are in a cup of cooked rice?",
    "Please spell the word necessary for me.",
    "The library opens at nine and closes at six on weekdays.",
    "Order more printer paper and two black ink cartridges.",
    "Wake me up at six fifteen tomorrow with soft music.",
    "Is it going to snow in Minneapolis this weekend?",
    "Dim the bedroom lights to ten percent and close the blinds.",
    "Tell me a fun fact about octopuses.",
    "The flight from London was delayed by forty five minutes.",
    "Write down that the password reset link expired.",
    "Cancel my subscription to the cooking magazine.",
    "What's the difference between a crocodile and an alligator?",
    "Put the laundry reminder on my calendar for Thursday.",
    "Her address is twenty one Baker Street, apartment B.",
    "Show me photos from our trip to Yosemite last summer.",
    "Turn the fan to medium speed in the office.",
    "After the long winter the river finally thawed and the boats returned to the harbor.",
    "Volunteers planted more than two hundred trees along the new bicycle path last spring.",
    "The orchestra rehearsed the final movement three times before the evening concert.",
    "Check whether the kitchen window is still open.",
    "Play the podcast episode about ancient Rome from the beginning.",
    "How do I reset the router to factory settings?",
    "Give me directions to the nearest hospital emergency room.",
]
VOICES = [
    ("flite", "slt"), ("flite", "rms"), ("flite", "awb"), ("flite", "kal16"), ("flite", "kal"),
    ("espeak-ng", "en-us"), ("espeak-ng", "en-gb"), ("espeak-ng", "en-us+f3"),
]  # fmt: skip


def _tts(engine: str, voice: str, text: str, tmp: Path) -> np.ndarray:
    raw = tmp / "raw.wav"
    if engine == "flite":
        subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(raw)], check=True)
    else:
        subprocess.run(["espeak-ng", "-v", voice, "-s", "155", "-w", str(raw), text], check=True)
    audio, rate = sf.read(raw, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    return soxr.resample(audio, rate, RATE).astype(np.float32) if rate != RATE else audio


def _mix(clean: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    p_signal = float(np.mean(clean**2)) + 1e-12
    p_noise = float(np.mean(noise**2)) + 1e-12
    mixed = clean + noise * np.sqrt(p_signal / (p_noise * 10 ** (snr_db / 10)))
    return (mixed / max(1.0, float(np.abs(mixed).max()) / 0.95)).astype(np.float32)


def _reverb(clean: np.ndarray, rng: np.random.Generator, rt60: float) -> np.ndarray:
    length = int(rt60 * RATE)
    t = np.arange(length) / RATE
    ir = rng.normal(size=length) * np.exp(-6.9 * t / rt60)
    ir[0] = 1.0
    wet = np.convolve(clean, ir)[: len(clean)]
    return (wet / max(1e-6, float(np.abs(wet).max())) * 0.8).astype(np.float32)


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / ".cache" / "calibration-set"
    if (out / "manifest.jsonl").exists():
        print(f"calibration set already in {out}")
        return
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    rows: list[dict[str, object]] = []
    clean_clips: list[np.ndarray] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, text in enumerate(SENTENCES):
            engine, voice = VOICES[i % len(VOICES)]
            clean_clips.append(_tts(engine, voice, text, Path(tmp)))
    for i, (text, clean) in enumerate(zip(SENTENCES, clean_clips, strict=True)):
        lead = np.zeros(int(rng.uniform(0.2, 0.6) * RATE), dtype=np.float32)
        clean = np.concatenate([lead, clean, lead[: len(lead) // 2]])
        babble = sum(np.resize(clean_clips[(i + k) % len(clean_clips)], len(clean)) for k in (7, 19, 31))
        # Mostly usable audio, as a device hears it, with a tail of hard cases.
        # Draw order is part of the seeded recipe: keep it.
        mild_noise, mild_snr = rng.normal(size=len(clean)).astype(np.float32), float(rng.uniform(12, 25))
        hard_noise, hard_snr = rng.normal(size=len(clean)).astype(np.float32), float(rng.uniform(2, 10))
        conditions = {
            "clean": clean,
            "white_mild": _mix(clean, mild_noise, mild_snr),
            "white_hard": _mix(clean, hard_noise, hard_snr),
            "babble": _mix(clean, np.asarray(babble, dtype=np.float32), float(rng.uniform(5, 15))),
            "reverb": _reverb(clean, rng, float(rng.uniform(0.3, 0.7))),
        }
        voice = VOICES[i % len(VOICES)][1]
        for kind, audio in conditions.items():
            name = f"cal_{i:03d}_{kind}.wav"
            sf.write(out / name, audio, RATE, subtype="PCM_16")
            rows.append({"audio_filepath": name, "text": text, "duration": round(len(audio) / RATE, 3),
                         "kind": f"{kind}", "voice": voice})  # fmt: skip
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{len(rows)} clips in {out}")


if __name__ == "__main__":
    main()
