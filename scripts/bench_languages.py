"""Benchmark the language offramp: other-language speech through the real edge session and a real cloud,
before (every escalation asks the cloud for English, as before the offramp) and after (speech judged not
English asks the cloud to detect its language among ``EDGE_LANGUAGES``).

    .venv/bin/python scripts/build_language_set.py            # the speech (once)
    .venv/bin/python scripts/fit_language.py --write          # the shipped language models (once)
    .venv/bin/python scripts/bench_languages.py [--per-group 25] [--benchmarks-md BENCHMARKS.md]
    .venv/bin/python scripts/bench_languages.py --edge-model conformer [...]   # an edge without offramp

Clips: the *held-out* part of ``.cache/language-set`` only (``scripts/build_language_set.py``): Spanish
and German sentences and voices not fitted on, Italian, French, Portuguese and Dutch (languages never
fitted on), English bench sentences clean and noisy (the control), ``--per-group`` of each.

Each clip (0.5 s of silence, the clip, 1.5 s of silence) goes through an edge ``Session`` (Moonshine base,
default settings: pilots, speculative final and escalation, offramps) in this process, escalating over
gRPC to a real cloud server (Whisper base int8) on a loopback port; the edge waits up to 60 s for the
cloud so nothing is queued. Audio is fed in 64 ms frames in real time (the edge runs pilots when it has
time for them, on this machine with whatever else runs on it); "early" is the audio of the utterance
heard when the escalation went out. Modes: ``before``
(``EDGE_LANGUAGES=en``: the offramp off, every request in English) and ``after`` (the default settings).

Per group and mode: share of clips escalated, share escalated for ``language``, share escalated before
the end of speech and the median audio heard then, cloud WER and CER on the escalated clips (the
cloud's text, whichever the final kept), WER and CER of the finals (what the user gets; a final that
says "not transcribed" counts as empty), and the share of finals in the clip's language. Text is
normalized before scoring: English with Whisper's English normalizer, the others lower-cased without
punctuation. A second table shows the offramp alone per edge model, from ``fit_language.py``'s cached
decodes. A third: Whisper's language detection on the held-out clips, any language vs the default
allow-list.

With ``--edge-model conformer`` (an edge model with no language offramp) the modes are ``before``
(``EDGE_LANGUAGES=en``) and ``after`` (defaults: every escalation asks the cloud to detect the language),
written to a section of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import fit_language  # noqa: E402

from edge_agent.language import DEFAULT_LANGUAGES, LanguageCalibration  # noqa: E402
from speech_bench.markdown import replace_section  # noqa: E402
from speech_bench.scoring import normalize as normalize_english  # noqa: E402
from tests.servers import ThreadedCloud, cloud_settings  # noqa: E402

RATE = 16000
FRAME = 1024
SET = ROOT / ".cache" / "language-set"
MARK_BEGIN = "<!-- languages-bench:begin -->"
MARK_END = "<!-- languages-bench:end -->"
NO_OFFRAMP_BEGIN = "<!-- languages-no-offramp:begin -->"
NO_OFFRAMP_END = "<!-- languages-no-offramp:end -->"
HEADER = "# Benchmarks\n\nFigures measured on this project's machines.\n"
GROUP_ORDER = ("es", "de", "it", "fr", "pt", "nl", "en", "en-noisy")
NAMES = {
    "es": "Spanish", "de": "German", "it": "Italian", "fr": "French", "pt": "Portuguese", "nl": "Dutch",
    "en": "English (control)", "en-noisy": "English, noisy (control)",
}  # fmt: skip
FITTED = ("es", "de")
MODES = ("before", "after")


@dataclass
class Outcome:
    """One clip through one mode."""

    group: str
    language: str
    reference: str
    text: str
    cloud_text: str
    """The cloud's text of the escalated finals."""
    escalated: bool
    reasons: list[str]
    languages: list[str]
    transcribed: bool
    early_s: float | None = None
    """Audio of the utterance heard when an early escalation went out (None: not early)."""
    speech_s: float = 0.0


@dataclass
class Figures:
    outcomes: list[Outcome] = field(default_factory=list)


def normalize(text: str, language: str) -> str:
    if language == "en":
        return normalize_english(text)
    # Case and punctuation do not count; accents do (they are spelling in these languages).
    kept = "".join(" " if unicodedata.category(c)[0] in "PS" else c for c in text.casefold())
    return " ".join(kept.split())


def error_rates(pairs: Sequence[tuple[str, str]], language: str) -> tuple[float, float] | None:
    """Corpus (WER, CER) of (reference, hypothesis) pairs; None for no pairs."""
    import jiwer

    refs = [normalize(r, language) for r, _ in pairs]
    hyps = [normalize(h, language) for _, h in pairs]
    keep = [i for i, r in enumerate(refs) if r]
    if not keep:
        return None
    refs, hyps = [refs[i] for i in keep], [hyps[i] for i in keep]
    return float(jiwer.wer(refs, hyps)), float(jiwer.cer(refs, hyps))


def select(rows: list[dict[str, Any]], per_group: int) -> list[dict[str, Any]]:
    out = []
    for group in GROUP_ORDER:
        members = [r for r in rows if r["split"] == "held-out" and r["group"] == group]
        out += members[:per_group]
    return out


class Edge:
    """One mode's edge: a ``Recognizer`` on the shared model, escalating to the cloud, recording when
    early escalations went out."""

    def __init__(self, mode: str, model: Any, cloud: ThreadedCloud, tmp: Path) -> None:
        from edge_agent.escalation.manager import build_escalator
        from edge_agent.recognizer import Recognizer
        from edge_agent.settings import EdgeSettings

        settings = EdgeSettings(
            cloud_target=cloud.grpc_target,
            cloud_deadline_s=60.0,
            queue_path=tmp / f"queue-{mode}.sqlite3",
            model_cache_dir=ROOT / ".cache" / "edge-models",
            languages=("en",) if mode == "before" else DEFAULT_LANGUAGES,
        )
        self.mode = mode
        self.rec = Recognizer(settings, model=model)
        self.rec.escalator = build_escalator(settings, self.rec)
        assert self.rec.escalator is not None
        # The offramp, or for an edge model without one the cloud's detection, is on after only.
        assert (self.rec.language is not None or self.rec.cloud_detects_language) == (mode == "after")
        self.early: dict[str, float] = {}
        self.session: Any = None
        open_early = self.rec.escalator.open_early

        def record_early(session_id: str, context: Any) -> Any:
            # Where on the audio timeline the early escalation went out.
            stream = open_early(session_id, context)
            if stream is not None and context.utterance_id not in self.early:
                self.early[context.utterance_id] = self.session._ring.total_written / RATE
            return stream

        self.rec.escalator.open_early = record_early  # type: ignore[method-assign]

    async def run(self, n: int, row: dict[str, Any]) -> Outcome:
        from edge_agent.session import Session

        audio, rate = sf.read(SET / row["audio_filepath"], dtype="float32")
        assert rate == RATE
        silence = np.zeros(RATE // 2, np.float32)
        padded = np.concatenate([silence, audio, silence, silence, silence])
        self.session = session = Session(self.rec, RATE, "f32le", session_id=f"{self.mode}{n}")
        started = time.monotonic()
        for i in range(0, len(padded), FRAME):
            # In real time, as a microphone delivers it: pilots run when the edge has time for them.
            await asyncio.sleep(max(0.0, started + i / RATE - time.monotonic()))
            session.feed(padded[i : i + FRAME].tobytes())
        await session.finish()
        finals = []
        while not session.events.empty():
            event = session.events.get_nowait()
            if event["type"] == "final":
                finals.append(event)
        await session.close()
        at = [self.early[f["utterance_id"]] - f["start"] for f in finals if f["utterance_id"] in self.early]
        return Outcome(
            group=row["group"],
            language=row["language"],
            reference=row["text"],
            text=" ".join(f["text"] for f in finals if f["text"]),
            cloud_text=" ".join(f["cloud_text"] or "" for f in finals if f["escalated"]),
            escalated=any(f["escalated"] for f in finals),
            reasons=[f["reason"] or "" for f in finals],
            languages=[f["language"] for f in finals],
            transcribed=all(f["transcribed"] for f in finals),
            early_s=min(at) if at else None,
            speech_s=sum(f["end"] - f["start"] for f in finals),
        )


async def run(
    modes: Sequence[str], clips: list[dict[str, Any]], model: Any, cloud: ThreadedCloud, tmp: Path
) -> dict[str, list[Outcome]]:
    """Every clip through every mode, the modes in turn clip by clip (so the machine's other load falls
    on both alike)."""
    edges = [Edge(mode, model, cloud, tmp) for mode in modes]
    outcomes: dict[str, list[Outcome]] = {mode: [] for mode in modes}
    for edge in edges:
        await edge.rec.start()
    try:
        for n, row in enumerate(clips, 1):
            for edge in edges:
                outcome = await edge.run(n, row)
                outcomes[edge.mode].append(outcome)
                early = "-" if outcome.early_s is None else f"{outcome.early_s:.2f}"
                print(
                    f"{edge.mode:6} {n:3}/{len(clips)} {row['group']:8} esc={outcome.escalated:d} "
                    f"reasons={','.join(outcome.reasons)} lang={','.join(outcome.languages)} early={early} "
                    f"| {outcome.text[:70]}",
                    flush=True,
                )
    finally:
        for edge in edges:
            await edge.rec.stop()
    return outcomes


def group_figures(outcomes: list[Outcome], language: str) -> dict[str, Any]:
    n = len(outcomes)
    escalated = [o for o in outcomes if o.escalated]
    cloud = error_rates([(o.reference, o.cloud_text) for o in escalated], language)
    final = error_rates([(o.reference, o.text) for o in outcomes], language)
    early = [o.early_s for o in escalated if o.early_s is not None]
    return {
        "clips": n,
        "escalated": len(escalated) / n if n else 0.0,
        "language": sum("language" in o.reasons for o in outcomes) / n if n else 0.0,
        "early": len(early) / n if n else 0.0,
        "early_s": statistics.median(early) if early else None,
        "cloud_wer": cloud[0] if cloud else None,
        "cloud_cer": cloud[1] if cloud else None,
        "final_wer": final[0] if final else None,
        "final_cer": final[1] if final else None,
        "in_language": sum(all(lang == language for lang in o.languages) for o in outcomes) / n if n else 0.0,
        "not_transcribed": sum(not o.transcribed for o in outcomes) / n if n else 0.0,
    }


def detection_table(clips: list[dict[str, Any]], cloud: ThreadedCloud) -> dict[str, dict[str, float]]:
    """Whisper's language detection on each non-English clip: top-1 over every language vs over the
    default allow-list (what the cloud picks with and without ``languages``)."""
    from faster_whisper import WhisperModel

    from cloud_server.engine import pick_language

    location = cloud.runtime.location
    whisper = WhisperModel(str(location.path), device="cpu", compute_type="int8", cpu_threads=2)
    out: dict[str, dict[str, float]] = {}
    for group in GROUP_ORDER:
        members = [c for c in clips if c["group"] == group and c["language"] != "en"]
        if not members:
            continue
        anywhere = allowed = 0
        for row in members:
            audio, _ = sf.read(SET / row["audio_filepath"], dtype="float32")
            _, _, scores = whisper.detect_language(audio=audio)
            anywhere += pick_language(scores)[0] == row["language"]
            allowed += pick_language(scores, DEFAULT_LANGUAGES)[0] == row["language"]
        out[group] = {
            "clips": len(members),
            "any": anywhere / len(members),
            "allowed": allowed / len(members),
        }
    return out


def offramp_table(per_group: int) -> dict[str, dict[str, dict[str, float]]]:
    """The language offramp alone on the held-out clips, per edge model: fitted as ``fit_language.py``
    fits it (Moonshine's is the shipped one), from that script's cached decodes."""
    rows = fit_language.load_manifest(SET / "manifest.jsonl")
    chosen = {r["audio_filepath"] for r in select(rows, per_group)}
    out = {}
    for name in fit_language.MODELS:
        cache = SET / f"features-{name}.jsonl"
        if not cache.exists():
            continue
        # Only what fit_language.py decoded (this run does not decode with every model).
        clips = [fit_language.Clip(**json.loads(line)) for line in cache.read_text().splitlines()]
        if {r["audio_filepath"] for r in rows} - {c.path for c in clips}:
            print(f"{cache} lacks some clips: run scripts/fit_language.py --models {name}")
            continue
        calibration, _ = fit_language.fit(clips, fit_language.MAX_ENGLISH, fit_language.MAX_ENGLISH_EARLY)
        out[name] = fit_language.rates([c for c in clips if c.path in chosen], calibration)
    return out


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _err(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _mode_table(figures: dict[str, dict[str, Any]]) -> list[str]:
    """Per language and mode: escalation, the cloud's and the finals' error rates, the language tags."""
    lines = [
        "| language | mode | escalated | for `language` | early (audio heard) | cloud WER | cloud CER "
        "| final WER | final CER | in language |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for group in GROUP_ORDER:
        if group not in figures["after"]:
            continue
        name = NAMES[group] + (" (sentences/voices held out)" if group in FITTED else "")
        for mode in MODES:
            f = figures[mode][group]
            early = _pct(f["early"]) + (f" ({f['early_s']:.1f} s)" if f["early_s"] is not None else "")
            lines.append(
                f"| {name} | {mode} | {_pct(f['escalated'])} | {_pct(f['language'])} | {early} | "
                f"{_err(f['cloud_wer'])} | {_err(f['cloud_cer'])} | {_err(f['final_wer'])} | "
                f"{_err(f['final_cer'])} | {_pct(f['in_language'])} |"
            )
    return lines


def render_no_offramp(report: dict[str, Any], command: str) -> str:
    """The section of a run whose edge model has no language offramp: the cloud detects every escalation."""
    lines = [
        NO_OFFRAMP_BEGIN,
        f"## Other languages with an edge model that cannot tell them ({report['edge_model']})",
        "",
        f"Measured {report['date']} on {report['machine']}; edge `EDGE_MODEL={report['edge_model_setting']}` "
        f"({report['edge_model']}) through a real `Session`, cloud Whisper base int8 over gRPC on loopback; "
        f"the same held-out clips as above, {report['per_group']} per language, streamed in real time. This "
        "model has no language offramp (its decode of English it has not heard looks like its decode of "
        "other languages), so it cannot say an utterance is not English: other-language speech reaches the "
        "cloud when its confidence offramp escalates it. *before*: every escalation asks the cloud for "
        "English (`EDGE_LANGUAGES=en`); *after*: defaults, where every escalation asks the cloud to detect "
        f"the language among `{','.join(DEFAULT_LANGUAGES)}`. Columns as above (*for `language`* stays 0: "
        "only an offramp escalates for language).",
        "",
    ]
    lines += _mode_table(report["figures"])
    lines += ["", f"Reproduce: `{command}`", NO_OFFRAMP_END]
    return "\n".join(lines)


def render(report: dict[str, Any], command: str) -> str:
    figures, detection, offramp = report["figures"], report["detection"], report["offramp"]
    thresholds = report["thresholds"]
    lines = [
        MARK_BEGIN,
        "## Other languages: the language offramp, before and after",
        "",
        f"Measured {report['date']} on {report['machine']}; edge Moonshine base through a real `Session` "
        "(default settings), cloud Whisper base int8 over gRPC on loopback. Held-out clips only "
        "(`scripts/build_language_set.py`: espeak-ng voices and variants never fitted on; Spanish and "
        "German sentences not fitted on; Italian, French, Portuguese, Dutch never fitted on; English bench "
        "sentences in held-out espeak-ng and flite voices, clean and with white noise or reverberation), "
        f"{report['per_group']} per language. *before*: every escalation asks the cloud for English (the "
        "behaviour before the offramp; `EDGE_LANGUAGES=en`); *after*: defaults (speech judged not English "
        f"asks the cloud to detect the language among `{','.join(DEFAULT_LANGUAGES)}`). Moonshine's "
        f"thresholds: P(not English) >= {thresholds['threshold']:.3f} at the final, "
        f">= {thresholds['early_threshold']:.3f} at a pilot of >= 1 s (chosen on the fitting clips, "
        "`scripts/fit_language.py`). Audio is streamed in real time; *early* = escalated before the end of "
        "speech, with the median audio of the utterance heard by then. WER/CER after lower-casing and "
        "removing punctuation (English: Whisper's English normalizer). *cloud*: the cloud's text on the "
        'escalated clips; *final*: what the user got on all clips (a final that says "not transcribed" '
        "counts as empty); *in language*: finals tagged with the clip's language.",
        "",
    ]
    lines += _mode_table(figures)
    if offramp:
        lines += [
            "",
            "The offramp alone per edge model, fitted the same way for each (`scripts/fit_language.py`; the "
            "same held-out clips decoded offline, pilots as a session runs them): share flagged not English "
            "at the final, at a pilot, either. Only Moonshine's ships: the bundled conformer's heads "
            "cannot tell other languages from the English they garble.",
            "",
            "| language | " + " | ".join(f"{m}: final / pilot / either" for m in offramp) + " |",
            "|---|" + "---|" * len(offramp),
        ]
        for group in GROUP_ORDER:
            cells = []
            for rates in offramp.values():
                r = rates.get(group)
                cells.append(
                    "-" if r is None else f"{_pct(r['final'])} / {_pct(r['early'])} / {_pct(r['either'])}"
                )
            lines.append(f"| {NAMES[group]} | " + " | ".join(cells) + " |")
    if detection:
        lines += [
            "",
            "Whisper base's language detection on the same non-English clips (whole clip, top 1): over every "
            f"language it knows vs within the default allow-list `{','.join(DEFAULT_LANGUAGES)}`.",
            "",
            "| language | any language | allow-list |",
            "|---|---|---|",
        ]
        for group, d in detection.items():
            lines.append(f"| {NAMES[group]} | {_pct(d['any'])} | {_pct(d['allowed'])} |")
    lines += ["", f"Reproduce: `{command}`", MARK_END]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--per-group", type=int, default=25)
    parser.add_argument("--out", type=Path, default=SET / "bench.json")
    parser.add_argument("--benchmarks-md", type=Path)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--edge-model", default="moonshine", help="EDGE_MODEL of the edge")
    parser.add_argument(
        "--from-report", type=Path, help="render a saved report (--out of an earlier run) instead of running"
    )
    args = parser.parse_args(argv)
    if args.from_report is not None:
        report = json.loads(args.from_report.read_text())
        report["offramp"] = offramp_table(report["per_group"])
        _publish(report, args.benchmarks_md)
        return
    from edge_agent.asr.registry import load_model
    from edge_agent.settings import EdgeSettings

    rows = fit_language.load_manifest(SET / "manifest.jsonl")
    clips = select(rows, args.per_group)
    model = load_model(EdgeSettings(model=args.edge_model, model_cache_dir=ROOT / ".cache" / "edge-models"))
    calibration = LanguageCalibration.shipped_for(model.name)
    cloud = ThreadedCloud(cloud_settings(str(ROOT / ".cache" / "models"), max_audio_s=120)).start()
    figures: dict[str, dict[str, Any]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            outcomes = asyncio.run(run(args.modes, clips, model, cloud, Path(tmp)))
        for mode, done in outcomes.items():
            figures[mode] = {
                g: group_figures([o for o in done if o.group == g], "en" if g.startswith("en") else g)
                for g in GROUP_ORDER
                if any(o.group == g for o in done)
            }
        # Whisper's detection alone does not depend on the edge: measured with the offramp's run only.
        detection = detection_table(clips, cloud) if calibration is not None else {}
    finally:
        cloud.stop()
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "per_group": args.per_group,
        "figures": figures,
        "clips": {mode: [asdict(o) for o in done] for mode, done in outcomes.items()},
        "detection": detection,
        "offramp": offramp_table(args.per_group) if calibration is not None else {},
        "thresholds": (
            {"threshold": calibration.threshold, "early_threshold": calibration.early_threshold}
            if calibration is not None
            else None
        ),
        "edge_model": model.name,
        "edge_model_setting": args.edge_model,
    }
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    _publish(report, args.benchmarks_md if set(args.modes) == set(MODES) else None)


def _publish(report: dict[str, Any], benchmarks_md: Path | None) -> None:
    command = (
        ".venv/bin/python scripts/build_language_set.py && .venv/bin/python scripts/fit_language.py && "
        f".venv/bin/python scripts/bench_languages.py --per-group {report['per_group']} "
        "--benchmarks-md BENCHMARKS.md"
    )
    if report.get("thresholds") is None:
        command = (
            ".venv/bin/python scripts/build_language_set.py && .venv/bin/python scripts/bench_languages.py "
            f"--edge-model {report['edge_model_setting']} --per-group {report['per_group']} "
            "--benchmarks-md BENCHMARKS.md"
        )
        section, begin, end = render_no_offramp(report, command), NO_OFFRAMP_BEGIN, NO_OFFRAMP_END
    else:
        section, begin, end = render(report, command), MARK_BEGIN, MARK_END
    print(section)
    if benchmarks_md is not None:
        replace_section(benchmarks_md, section, begin, end, HEADER)
        print(f"wrote {benchmarks_md}")


if __name__ == "__main__":
    main()
