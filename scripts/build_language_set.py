"""Build the labelled speech the language offramp is fitted and measured on (registry packages only).

Sentences:

* Spanish, German, Italian: native sentences of 3-15 words from Debian's ``fortunes-es``,
  ``fortunes-de`` and ``fortunes-it`` (``apt-get install fortunes-es fortunes-de fortunes-it``): the
  fortunes are cut into sentences; those with digits, symbols, all-caps words, English words or (Italian)
  accents written as apostrophes (``perche'``) are left out.
* French, Portuguese, Dutch: the sentences in ``WRITTEN`` below, written for this set.
* English: the calibration set's sentences (``scripts/make_calibration_set.py``) for fitting and the
  bench sets' sentences (``scripts/build_bench_sets.py``) held out.

Voices: espeak-ng for every language, with random speed (140-180 words per minute) and pitch (35-65), and
flite for English. Fitting voices and held-out voices are disjoint: fitting uses the base voices and the
variants ``FIT_VARIANTS``; held-out clips use ``HELD_OUT_VARIANTS`` (and other regional voices where
espeak-ng has them: Latin-American Spanish, Belgian French, Brazilian Portuguese; flite slt and kal16
for English against kal, awb and rms).

Split (``split`` in the manifest):

* ``fit``: Spanish and German (``FIT_PER_LANGUAGE`` sentences each) and English (every calibration
  sentence in ``EN_FIT_VOICES`` voices); 40 % of these clips get white noise (5-20 dB SNR) or
  reverberation, so that noise alone does not tell the languages apart;
* ``held-out``: other Spanish and German sentences in held-out voices, and Italian, French, Portuguese,
  Dutch (languages never fitted on), ``HELD_OUT_PER_LANGUAGE`` clips each, clean; English: the bench
  sentences clean (``en``) and with noise or reverberation (``en-noisy``).

Seeded and cached (a build with another recipe is refused). Output ``<out>/manifest.jsonl``, NeMo style
with ``language`` (ISO 639-1), ``group`` (``en-noisy`` for the noisy English, else the language),
``split``, ``voice`` and ``condition``.

Usage: ``python scripts/build_language_set.py [OUT_DIR] [--force]`` (default ``.cache/language-set``).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import build_bench_sets  # noqa: E402
import make_calibration_set  # noqa: E402

RATE = 16000
SEED = 20261205
RECIPE = 1
"""Bump when the build changes: a cached set built by another recipe is refused, not mixed."""
FORTUNES = Path("/usr/share/games/fortunes")
FIT_PER_LANGUAGE = 120
HELD_OUT_PER_LANGUAGE = 25
EN_FIT_VOICES = 4
EN_HELD_OUT_CLEAN = 30
EN_HELD_OUT_NOISY = 25
FIT_VARIANTS = ("", "+m3", "+f2", "+klatt", "+m7", "+f4")
HELD_OUT_VARIANTS = ("+m2", "+f1", "+m5", "+f5", "+klatt3")
# (engine, voice) per language and split; espeak voices get a variant appended per clip.
FIT_VOICES: dict[str, tuple[tuple[str, str], ...]] = {
    "es": (("espeak-ng", "es"),),
    "de": (("espeak-ng", "de"),),
    "en": (
        ("espeak-ng", "en-us"), ("espeak-ng", "en-gb"), ("espeak-ng", "en-gb-scotland"),
        ("flite", "kal"), ("flite", "awb"), ("flite", "rms"),
    ),
}  # fmt: skip
HELD_OUT_VOICES: dict[str, tuple[tuple[str, str], ...]] = {
    "es": (("espeak-ng", "es-419"), ("espeak-ng", "es")),
    "de": (("espeak-ng", "de"),),
    "it": (("espeak-ng", "it"),),
    "fr": (("espeak-ng", "fr-fr"), ("espeak-ng", "fr-be")),
    "pt": (("espeak-ng", "pt"), ("espeak-ng", "pt-br")),
    "nl": (("espeak-ng", "nl"),),
    "en": (
        ("espeak-ng", "en-us-nyc"), ("espeak-ng", "en-gb-x-rp"), ("espeak-ng", "en-029"),
        ("flite", "slt"), ("flite", "kal16"),
    ),
}  # fmt: skip

WRITTEN: dict[str, tuple[str, ...]] = {
    "fr": (
        "Je voudrais réserver une table pour deux personnes ce soir.",
        "Est-ce que tu peux fermer la fenêtre de la cuisine?",
        "Le train pour Lyon part dans un quart d'heure.",
        "Nous avons passé nos vacances au bord de la mer.",
        "Il pleut depuis ce matin et les rues sont mouillées.",
        "Ma grand-mère prépare toujours une tarte aux pommes le dimanche.",
        "Où se trouve la pharmacie la plus proche?",
        "Les enfants jouent dans le jardin après l'école.",
        "Peux-tu allumer la lumière du salon, s'il te plaît?",
        "Le musée est fermé le mardi toute la journée.",
        "J'ai oublié mon parapluie dans le bus.",
        "Elle apprend à jouer du piano depuis trois ans.",
        "Quelle heure est-il maintenant à Montréal?",
        "Le boulanger ouvre sa boutique très tôt le matin.",
        "Nous devons acheter du lait, du pain et des œufs.",
        "Mon frère travaille dans un hôpital à Marseille.",
        "La réunion a été repoussée à la semaine prochaine.",
        "Il faut arroser les plantes avant de partir.",
        "Le chat dort sur le canapé depuis midi.",
        "Pourriez-vous parler un peu plus lentement?",
        "Ce livre raconte l'histoire d'un vieux pêcheur breton.",
        "Appelle-moi quand tu arrives à la gare.",
        "Les feuilles tombent des arbres en automne.",
        "Je n'ai pas encore fini mon rapport.",
        "Le concert commence à huit heures et demie.",
    ),
    "pt": (
        "Eu gostaria de reservar uma mesa para quatro pessoas.",
        "Você pode fechar a porta da cozinha, por favor?",
        "O ônibus para o centro passa a cada meia hora.",
        "Passamos as férias numa pequena aldeia perto do mar.",
        "Está chovendo muito desde ontem à noite.",
        "A minha avó faz o melhor bolo de laranja do mundo.",
        "Onde fica a estação de comboios mais próxima?",
        "As crianças brincam no parque depois da escola.",
        "Podes acender a luz da sala, se faz favor?",
        "O museu está fechado às segundas-feiras.",
        "Esqueci o meu guarda-chuva no táxi.",
        "Ela estuda violino há muitos anos.",
        "Que horas são agora em Lisboa?",
        "O padeiro abre a loja muito cedo de manhã.",
        "Precisamos comprar leite, pão e ovos.",
        "O meu irmão trabalha num hospital em São Paulo.",
        "A reunião foi adiada para a próxima semana.",
        "É preciso regar as plantas antes de sair.",
        "O gato está dormindo no sofá desde o almoço.",
        "Poderia falar um pouco mais devagar?",
        "Este livro conta a história de um velho pescador.",
        "Liga-me quando chegares ao aeroporto.",
        "As folhas caem das árvores no outono.",
        "Ainda não terminei o meu relatório.",
        "O concerto começa às nove horas da noite.",
    ),
    "nl": (
        "Ik wil graag een tafel reserveren voor twee personen.",
        "Kun je het raam in de keuken dichtdoen?",
        "De trein naar Utrecht vertrekt over tien minuten.",
        "We hebben onze vakantie aan zee doorgebracht.",
        "Het regent al de hele ochtend in Amsterdam.",
        "Mijn oma bakt elke zondag een appeltaart.",
        "Waar is de dichtstbijzijnde apotheek?",
        "De kinderen spelen na school in de tuin.",
        "Wil je het licht in de woonkamer aandoen?",
        "Het museum is op maandag de hele dag gesloten.",
        "Ik heb mijn paraplu in de tram laten liggen.",
        "Zij leert al drie jaar gitaar spelen.",
        "Hoe laat is het nu in Rotterdam?",
        "De bakker opent zijn winkel heel vroeg in de ochtend.",
        "We moeten melk, brood en eieren kopen.",
        "Mijn broer werkt in een ziekenhuis in Gent.",
        "De vergadering is verschoven naar volgende week.",
        "Vergeet niet de planten water te geven.",
        "De kat slaapt al sinds de middag op de bank.",
        "Kunt u een beetje langzamer praten?",
        "Dit boek vertelt het verhaal van een oude visser.",
        "Bel me even als je op het station bent.",
        "In de herfst vallen de bladeren van de bomen.",
        "Ik heb mijn verslag nog niet afgemaakt.",
        "Het concert begint om half negen.",
    ),
}

_ENGLISH_WORDS = frozenset(
    "the and you is of that it with for are this not be have what was your they".split()
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_ALLOWED = re.compile(r"^[¿¡]?[^\W\d_][\w\s,;:'’¿¡?!.\-]*[.!?]$")
_APOSTROPHE_ACCENT = re.compile(r"[aeiouAEIOU]'(?=\W|$)")


@dataclass(frozen=True)
class Item:
    language: str
    group: str
    split: str
    text: str
    engine: str
    voice: str
    condition: str


def _fortune_files(language: str) -> list[Path]:
    directory = FORTUNES / language
    if not directory.is_dir():
        raise SystemExit(f"{directory} is missing: apt-get install fortunes-{language}")
    files: dict[Path, Path] = {}
    for path in sorted(directory.iterdir()):
        if path.is_file() and path.suffix != ".dat":
            files.setdefault(path.resolve(), path)  # the .u8 names are links to the UTF-8 files
    return sorted(files)


def fortune_sentences(language: str) -> list[str]:
    """Distinct sentences of 3-15 words from the language's fortune files, in file order."""
    out: dict[str, str] = {}
    for path in _fortune_files(language):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # a legacy-encoded copy; its UTF-8 twin is read instead
        for fortune in text.split("\n%\n"):
            # Attribution lines ("-- Author") and indented verse are not sentences of the text.
            lines = [line for line in fortune.splitlines() if not line.strip().startswith(("--", "—"))]
            for sentence in _SENTENCE_END.split(" ".join(" ".join(lines).split())):
                if usable(sentence, language):
                    out.setdefault(sentence.casefold(), sentence)
    return list(out.values())


def usable(sentence: str, language: str) -> bool:
    """A sentence a voice can read and a transcript can be scored against."""
    words = sentence.split()
    if not 3 <= len(words) <= 15 or not _ALLOWED.match(sentence):
        return False
    if any(c.isdigit() or c == "_" for c in sentence) or not sentence.lstrip("¿¡")[0].isupper():
        return False
    if any(len(w) > 1 and w.isupper() for w in words) or any(len(w) > 20 for w in words):
        return False
    if sum(w.strip(",.;:!?").casefold() in _ENGLISH_WORDS for w in words) >= 2:
        return False
    return not (language == "it" and _APOSTROPHE_ACCENT.search(sentence))


def plan() -> list[Item]:
    rng = np.random.default_rng(SEED)
    items: list[Item] = []

    def voices(language: str, split: str, count: int) -> list[tuple[str, str]]:
        pool = (FIT_VOICES if split == "fit" else HELD_OUT_VOICES).get(language, ())
        variants = FIT_VARIANTS if split == "fit" else HELD_OUT_VARIANTS
        out = []
        for i in range(count):
            engine, voice = pool[i % len(pool)]
            if engine == "espeak-ng":
                voice += variants[int(rng.integers(len(variants)))]
            out.append((engine, voice))
        return out

    def fit_condition() -> str:
        roll = rng.uniform()
        if roll < 0.6:
            return "clean"
        return "reverb" if roll < 0.75 else f"white-{int(rng.integers(5, 21))}db"

    for language in ("es", "de", "it"):
        sentences = fortune_sentences(language)
        order = [sentences[i] for i in rng.permutation(len(sentences))]
        fit = FIT_PER_LANGUAGE if language in FIT_VOICES else 0
        need = fit + HELD_OUT_PER_LANGUAGE
        if len(order) < need:
            raise SystemExit(f"only {len(order)} usable {language} sentences, {need} needed")
        for text, (engine, voice) in zip(order[:fit], voices(language, "fit", fit), strict=True):
            items.append(Item(language, language, "fit", text, engine, voice, fit_condition()))
        held = order[fit:need]
        for text, (engine, voice) in zip(held, voices(language, "held-out", len(held)), strict=True):
            items.append(Item(language, language, "held-out", text, engine, voice, "clean"))
    for language, own in WRITTEN.items():
        written = own[:HELD_OUT_PER_LANGUAGE]
        for text, (engine, voice) in zip(written, voices(language, "held-out", len(written)), strict=True):
            items.append(Item(language, language, "held-out", text, engine, voice, "clean"))
    fit_en = [s for s in make_calibration_set.SENTENCES for _ in range(EN_FIT_VOICES)]
    for text, (engine, voice) in zip(fit_en, voices("en", "fit", len(fit_en)), strict=True):
        items.append(Item("en", "en", "fit", text, engine, voice, fit_condition()))
    bench = list(build_bench_sets.SENTENCES)
    order = [bench[i] for i in rng.permutation(len(bench))]
    clean = order[:EN_HELD_OUT_CLEAN]
    noisy = order[EN_HELD_OUT_CLEAN : EN_HELD_OUT_CLEAN + EN_HELD_OUT_NOISY]
    for text, (engine, voice) in zip(clean, voices("en", "held-out", len(clean)), strict=True):
        items.append(Item("en", "en", "held-out", text, engine, voice, "clean"))
    for text, (engine, voice) in zip(noisy, voices("en", "held-out", len(noisy)), strict=True):
        condition = "reverb" if rng.uniform() < 0.3 else f"white-{int(rng.integers(5, 16))}db"
        items.append(Item("en", "en-noisy", "held-out", text, engine, voice, condition))
    return items


def synthesize(item: Item, tmp: Path, rng: np.random.Generator) -> np.ndarray:
    raw = tmp / "raw.wav"
    if item.engine == "flite":
        subprocess.run(["flite", "-voice", item.voice, "-t", item.text, "-o", str(raw)], check=True)
    else:
        speed, pitch = str(int(rng.integers(140, 181))), str(int(rng.integers(35, 66)))
        command = ["espeak-ng", "-v", item.voice, "-s", speed, "-p", pitch, "-w", str(raw), item.text]
        subprocess.run(command, check=True)
    audio, rate = sf.read(raw, dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    speech = soxr.resample(mono, rate, RATE).astype(np.float32) if rate != RATE else mono.astype(np.float32)
    # The same loudness for every engine, and a little silence around the speech as a VAD cut leaves.
    speech = build_bench_sets._level(build_bench_sets._trim(speech))
    pad = np.zeros(int(0.25 * RATE), np.float32)
    audio16 = np.concatenate([pad, speech, pad])
    if item.condition == "reverb":
        return make_calibration_set._reverb(audio16, rng, float(rng.uniform(0.3, 0.7)))
    if item.condition.startswith("white-"):
        noise = rng.normal(size=len(audio16)).astype(np.float32)
        return make_calibration_set._mix(audio16, noise, float(item.condition[6:-2]))
    return audio16


def build(out: Path, force: bool = False) -> Path:
    """Build (or reuse) the set; returns its manifest."""
    manifest = out / "manifest.jsonl"
    stamp = {"recipe": RECIPE, "seed": SEED}
    if force and out.exists():
        shutil.rmtree(out)
    if manifest.exists():
        built = json.loads((out / "build.json").read_text()) if (out / "build.json").exists() else {}
        if built != stamp:
            raise SystemExit(f"{out} was built with {built}, not {stamp}: use --force, or another OUT_DIR")
        return manifest
    missing = [tool for tool in ("flite", "espeak-ng") if shutil.which(tool) is None]
    if missing:
        raise SystemExit(f"missing TTS tools {missing}: apt-get install flite espeak-ng")
    if out.exists():
        shutil.rmtree(out)  # an interrupted build: start over so no stale clip survives
    (out / "audio").mkdir(parents=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, item in enumerate(plan()):
            rng = np.random.default_rng([SEED, index])  # a clip's audio does not depend on the others
            audio = synthesize(item, Path(tmp), rng)
            name = f"audio/{index:04d}_{item.language}_{item.split}.wav"
            sf.write(out / name, np.clip(audio, -1.0, 1.0), RATE, subtype="PCM_16")
            rows.append(
                {
                    "audio_filepath": name,
                    "text": item.text,
                    "duration": round(len(audio) / RATE, 3),
                    "language": item.language,
                    "group": item.group,
                    "split": item.split,
                    "voice": f"{item.engine}:{item.voice}",
                    "condition": item.condition,
                }
            )
    (out / "build.json").write_text(json.dumps(stamp) + "\n")
    tmp_manifest = out / "manifest.jsonl.tmp"
    tmp_manifest.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    tmp_manifest.replace(manifest)  # last, atomically: its presence marks the set complete
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", nargs="?", type=Path, default=ROOT / ".cache" / "language-set")
    parser.add_argument("--force", action="store_true", help="rebuild even when a set is cached")
    args = parser.parse_args()
    manifest = build(args.out, args.force)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    counts: dict[tuple[str, str], int] = {}
    for row in rows:
        key = (row["split"], row["group"])
        counts[key] = counts.get(key, 0) + 1
    for (split, group), n in sorted(counts.items()):
        print(f"{split:9} {group:9} {n}")
    print(f"{len(rows)} clips in {manifest}")


if __name__ == "__main__":
    main()
