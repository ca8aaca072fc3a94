"""Sentences to train the conformer on: natural English from Debian's fortune files plus generated
assistant-style commands, numbers, dates and names, and (the ``wordnet`` pool) WordNet's usage examples
and definitions, for a far wider vocabulary; split into train/held-out by a stable hash.

Every sentence the tests, the calibration set and the bench sets speak is excluded, so their audio
stays unseen by the model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import random
import re
import string
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORTUNES = Path("/usr/share/games/fortunes")
# Non-offensive collections (Debian "fortunes" and "fortunes-min"); jargon-heavy ones are left out.
FORTUNE_FILES = (
    "fortunes", "wisdom", "people", "literature", "science", "work", "men-women", "platitudes",
    "politics", "education", "food", "humorists", "kids", "love", "medicine", "miscellaneous", "news",
    "pets", "songs-poems", "sports", "law", "art", "cookie", "riddles", "magic", "pratchett", "goedel",
    "paradoxum", "drugs", "ethnic", "definitions", "zippy", "tao", "startrek",
)  # fmt: skip
WORDNET = Path("/usr/share/wordnet")  # Debian package wordnet-base
HELD_OUT_PERCENT = 4

_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()  # noqa: E501
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def spell(n: int) -> str:
    """English words for 0 <= n < 1,000,000 ("three hundred and forty two")."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " and " + spell(rest))
    rest = n % 1000
    head = spell(n // 1000) + " thousand"
    if rest == 0:
        return head
    return head + (" and " if rest < 100 else " ") + spell(rest)


def normalize(text: str) -> str:
    """The transcript form the model learns: lower case words and apostrophes, single spaces."""
    text = text.lower().replace("’", "'").replace("-", " ")
    spaces: dict[str, str | int | None] = {c: " " for c in string.punctuation if c != "'"}
    text = text.translate(str.maketrans(spaces))
    words = [w.strip("'") for w in text.split()]
    return " ".join(w for w in words if w)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_CLEAN = re.compile(r"^[A-Za-z][A-Za-z ,.'?!;:-]*$")


def fortune_sentences() -> Iterator[str]:
    for name in FORTUNE_FILES:
        path = FORTUNES / name
        if not path.exists():
            continue
        for entry in path.read_text(encoding="utf-8", errors="ignore").split("\n%\n"):
            lines = [ln.strip() for ln in entry.splitlines()]
            # Drop attributions ("-- Mark Twain") and indented verse markers.
            body = " ".join(ln for ln in lines if ln and not ln.startswith("--"))
            for sentence in _SENTENCE_END.split(body):
                sentence = sentence.strip().strip('"').strip()
                if _speakable(sentence, 3, 22):
                    yield sentence


def _speakable(sentence: str, low: int, high: int) -> bool:
    words = sentence.split()
    # Acronyms and shouting are spelt letter by letter by some voices and not others.
    return (
        low <= len(words) <= high
        and bool(_CLEAN.match(sentence))
        and not any(sum(c.isupper() for c in w) > 1 for w in words)
    )


def wordnet_sentences(definitions: int, seed: int) -> Iterator[str]:
    """Every usage example in WordNet ("he was at the top of his form") and a seeded sample of its
    definitions ("the act of wetting something by submerging it"): everyday words the fortunes lack."""
    examples: list[str] = []
    glosses: list[str] = []
    for part_of_speech in ("noun", "verb", "adj", "adv"):
        path = WORDNET / f"data.{part_of_speech}"
        if not path.exists():
            raise SystemExit(f"{path} is missing: apt-get install wordnet-base")
        for line in path.read_text(encoding="utf-8", errors="ignore").splitlines():
            if line.startswith("  ") or "|" not in line:  # the licence header
                continue
            for piece in line.split("|", 1)[1].split(";"):
                piece = piece.strip()
                if piece.startswith('"'):
                    example = piece.strip('"').strip()
                    if _speakable(example, 3, 22):
                        examples.append(example)
                elif _speakable(piece, 5, 20):
                    glosses.append(piece)
    yield from examples
    yield from random.Random(seed).sample(glosses, min(definitions, len(glosses)))


_NAMES = "Anna Ben Carlos Diana Ethan Fatima George Hannah Ivan Julia Kevin Laura Mohammed Nina Oscar Paula Quentin Rachel Samuel Tina Umar Victor Wendy Xavier Yusuf Zoe Amelia Brian Chloe Daniel Emma Frank Grace Henry Isabel Jack Karen Leo Maria Noah Olivia Peter Ruth Steven Thomas Uma Vincent William".split()  # noqa: E501
_PLACES = "London Paris Berlin Madrid Rome Tokyo Boston Denver Austin Dallas Miami Toronto Vancouver Sydney Dublin Lisbon Vienna Prague Oslo Stockholm Cairo Mumbai Beijing Seoul Chicago Portland Phoenix Atlanta Houston Montreal".split()  # noqa: E501
_ROOMS = (
    "kitchen", "bedroom", "living room", "bathroom", "garage", "office", "hallway", "basement", "attic",
    "garden", "porch", "nursery", "study", "dining room",
)  # fmt: skip
_DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
_MONTHS = "January February March April May June July August September October November December".split()
_ORDINALS = "first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth thirteenth fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth twentieth".split()  # noqa: E501
_THINGS = "milk bread eggs coffee apples rice butter cheese tomatoes onions batteries paper towels soap tea sugar".split()  # noqa: E501


def generated_sentences(count: int, seed: int) -> Iterator[str]:
    """Assistant-style sentences with spelled-out numbers, times, dates, names and places."""
    r = random.Random(seed)
    rooms = list(_ROOMS)
    devices = [
        "lights",
        "heater",
        "fan",
        "television",
        "radio",
        "speaker",
        "oven",
        "dishwasher",
        "washing machine",
        "air conditioner",
        "coffee machine",
        "printer",
        "camera",
        "alarm",
    ]
    templates = [
        lambda: f"Turn {r.choice(['on', 'off'])} the {r.choice(devices)} in the {r.choice(rooms)}.",
        lambda: f"Set the temperature to {spell(r.randint(55, 85))} degrees.",
        lambda: f"Set a timer for {spell(r.randint(2, 59))} minutes.",
        lambda: f"Wake me up at {spell(r.randint(1, 12))} {spell(r.randint(10, 59))} tomorrow morning.",
        lambda: f"Call {r.choice(_NAMES)} and tell {r.choice(['her', 'him', 'them'])} I will be late.",
        lambda: (
            f"Send a message to {r.choice(_NAMES)} saying the meeting starts at {spell(r.randint(1, 12))}."
        ),
        lambda: f"What is the weather like in {r.choice(_PLACES)} on {r.choice(_DAYS)}?",
        lambda: (
            f"Book a flight from {r.choice(_PLACES)} to {r.choice(_PLACES)} "
            f"on the {r.choice(_ORDINALS)} of {r.choice(_MONTHS)}."
        ),
        lambda: f"Add {r.choice(_THINGS)} and {r.choice(_THINGS)} to my shopping list.",
        lambda: f"The total comes to {spell(r.randint(2, 999))} dollars and {spell(r.randint(1, 99))} cents.",
        lambda: (
            f"Remind me to call {r.choice(_NAMES)} on {r.choice(_DAYS)} at {spell(r.randint(1, 12))} o'clock."
        ),
        lambda: f"How long does it take to drive from {r.choice(_PLACES)} to {r.choice(_PLACES)}?",
        lambda: f"Play some music in the {r.choice(rooms)} at volume {spell(r.randint(1, 10))}.",
        lambda: f"There are {spell(r.randint(2, 9999))} people waiting in {r.choice(_PLACES)}.",
        lambda: f"My phone number is {' '.join(spell(r.randint(0, 9)) for _ in range(r.randint(4, 8)))}.",
        lambda: f"Is the {r.choice(devices)} in the {r.choice(rooms)} still on?",
        lambda: f"{r.choice(_NAMES)} was born on the {r.choice(_ORDINALS)} of {r.choice(_MONTHS)}.",
        lambda: f"Move my appointment with {r.choice(_NAMES)} to next {r.choice(_DAYS)}.",
    ]
    for _ in range(count):
        yield r.choice(templates)()


def reserved() -> set[str]:
    """Normalized sentences that tests, calibration and the bench sets speak: never trained on."""
    out: set[str] = set()
    for name in ("build_test_audio", "make_calibration_set", "build_bench_sets"):
        spec = importlib.util.spec_from_file_location(f"_reserved_{name}", ROOT / "scripts" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while it executes
        spec.loader.exec_module(module)
        out.update(normalize(s) for s in module.SENTENCES)
    return out


def held_out(sentence: str) -> bool:
    """A stable 4% of sentences (by their normalized text) never enter training."""
    digest = hashlib.sha1(normalize(sentence).encode()).digest()
    return digest[0] * 100 // 256 < HELD_OUT_PERCENT


def sentence_pool(
    generated: int = 20000, seed: int = 9, pool: str = "fortunes", definitions: int = 20000
) -> tuple[list[str], list[str]]:
    """(train, held_out) sentences, deduplicated by normalized text, reserved ones removed.

    ``pool="fortunes"`` is the first data set (fortunes and generated sentences); ``"wordnet"`` is
    the second one, which skips everything the first pool holds so the two never overlap."""
    skip = reserved()
    seen: set[str] = set()
    train: list[str] = []
    test: list[str] = []
    first = [*fortune_sentences(), *generated_sentences(generated, seed)]
    if pool == "wordnet":
        skip.update(normalize(s) for s in first)
        sentences = list(wordnet_sentences(definitions, seed))
    else:
        sentences = first
    for sentence in sentences:
        key = normalize(sentence)
        if not key or key in seen or key in skip:
            continue
        seen.add(key)
        (test if held_out(sentence) else train).append(sentence)
    return train, test
