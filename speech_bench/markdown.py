"""Write a speech-bench report as the "speech-bench" section of BENCHMARKS.md."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from speech_bench.streaming import OPEN_MIC, PUSH_TO_TALK

PATTERN_TEXT = {
    OPEN_MIC: "**open-mic** (after the speech the client goes on sending silence, as a microphone does, "
    "until the final arrives; the endpointer must end the utterance)",
    PUSH_TO_TALK: "**push-to-talk** (`stop` right after the speech)",
}
BEGIN, END = "<!-- speech-bench:begin -->", "<!-- speech-bench:end -->"


def _ms(value: float | None) -> str:
    return f"{value:.0f}" if value is not None else "-"


def _latency(figures: dict[str, Any] | None) -> str:
    if figures is None:
        return "-"
    lat = figures["latency_ms"]
    return f"{_ms(lat['p50'])} / {_ms(lat['p95'])} / {_ms(lat['p99'])}"


def _patterns_sentence(patterns: list[str], report: dict[str, Any]) -> str:
    if not patterns:  # only items with segments: their own paragraph says how they were streamed
        return ""
    described = [PATTERN_TEXT.get(p, f"**{p}**") for p in patterns]
    lead = report["settings"].get("lead_s", 0.5)
    return (
        f"Each utterance is streamed on its own WebSocket after {lead:g} s of silence, cut at the end of its "
        f"speech (from the manifest, or estimated from the audio), in 100 ms frames: "
        + "; ".join(described)
        + ". Final latency runs from the end of speech on the audio timeline (so it includes the "
        "endpointer's silence wait) to the final, on the utterances that gave exactly one final; "
        "`0/2+` counts those with no final / several. "
    )


def render(report: dict[str, Any], command: str, plots: str | None) -> str:
    modes = report["modes"]
    patterns = list(dict.fromkeys(p for d in modes.values() for p in d.get("patterns", {})))
    first = next(iter(modes.values()))
    latency_headers = "".join(f"| {p} latency p50 / p95 / p99 ms | {p} 0/2+ " for p in patterns)
    lines = [
        BEGIN,
        "## speech-bench: four modes side by side",
        "",
        f"Run {report['created']} on {report['machine']['platform']}, {report['machine']['cpus']} cores, "
        f"Python {report['machine']['python']}. Edge: Moonshine base (rebuilt ONNX graphs, onnxruntime, "
        f"2 threads, one inference thread); cloud: Whisper {report['settings']['cloud_model']} int8 "
        f"({report['settings']['cloud_threads']} threads) on the same machine. "
        f"Speed {report['settings']['speed']:g}x real time; {first['utterances']} utterances. "
        + _patterns_sentence(patterns, report)
        + f"WER and offload are over the {first.get('wer_pattern', OPEN_MIC)} records"
        + (
            f"; finalization (endpoint to final) and first partial are {first['latency_pattern']}'s."
            if patterns
            else "."
        ),
        "",
        f"Reproduce: `{command}`",
        "",
        f"| mode | WER | offload {latency_headers}| finalization p50 / p95 ms "
        "| first partial p50 ms | cloud s | edge RTF | edge peak RSS MB |",
        "|---|---|---|" + "---|---|" * len(patterns) + "---|---|---|---|---|",
    ]
    for mode, d in modes.items():
        fin, part = d["finalize_ms"], d["first_partial_ms"]
        rtf = d.get("edge_rtf")
        rss = d.get("edge_peak_rss_mb")
        cells = [mode, f"{100 * d['wer']:.2f}%", f"{100 * d['offload']:.1f}%"]
        for p in patterns:
            figures = d.get("patterns", {}).get(p)
            cells += [
                _latency(figures),
                f"{figures['no_final']}/{figures['multi_final']}" if figures else "-",
            ]
        cells += [
            f"{_ms(fin['p50'])} / {_ms(fin['p95'])}",
            _ms(part["p50"]),
            f"{d.get('cloud_seconds', 0):.1f}",
            f"{rtf:.3f}" if rtf else "-",
            f"{rss:.0f}" if rss else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    segmented = {mode: d["segmentation"] for mode, d in modes.items() if d.get("segmentation")}
    if segmented:
        lines += [
            "",
            "False endpoints on items of several sentences with pauses inside sentences and between them "
            "(streamed whole, open-mic): *split* = sentences that got two or more finals, *merged* = finals "
            "that covered two or more sentences; latency of the sentences that got one final of their own.",
            "",
            "| mode | items | sentences | split | merged | missed | spurious finals "
            "| sentence latency p50 / p95 ms |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for mode, s in segmented.items():
            lat = s["sentence_latency_ms"]
            counts = ("items", "sentences", "split", "merged", "missed", "spurious")
            cells = [mode, *(str(s[k]) for k in counts)]
            lines.append("| " + " | ".join([*cells, f"{_ms(lat['p50'])} / {_ms(lat['p95'])}"]) + " |")
    if "oracle" in report:
        o = report["oracle"]
        same = f"edge {100 * o['edge_wer']:.2f}%, cloud {100 * o['cloud_wer']:.2f}% on the same decodes"
        if o.get("cloud_unanswered"):
            same += (
                f"; {o['cloud_unanswered']:.0f} utterance(s) the cloud did not answer in time count as edge"
            )
        lines += [
            "",
            f"Oracle (per utterance the better of edge and cloud): **{100 * o['wer']:.2f}%** WER ({same}).",
        ]
    if report.get("cloud_peak_rss_mb"):
        lines.append(f"Cloud peak RSS: {report['cloud_peak_rss_mb']:.0f} MB.")
    kinds = sorted({k for d in modes.values() for k in d["wer_by_kind"]})
    if kinds:
        lines += ["", "WER per category:", "", "| category | " + " | ".join(modes) + " |",
                  "|---|" + "---|" * len(modes)]  # fmt: skip
        for k in kinds:
            cells = [
                f"{100 * d['wer_by_kind'][k]:.1f}%" if k in d["wer_by_kind"] else "-" for d in modes.values()
            ]
            lines.append(f"| {k} | " + " | ".join(cells) + " |")
    if "sweep" in report:
        s = report["sweep"]
        best, op = s["best_within_offload"], s["operating_point"]
        lines += [
            "",
            "Threshold sweep over the recorded confidences: operating point "
            f"(threshold {op['threshold']:.3f}) {100 * op['wer']:.2f}% WER at {100 * op['offload']:.1f}% "
            f"offload; best within {100 * s['max_offload']:.0f}% offload: {100 * best['wer']:.2f}% at "
            f"{100 * best['offload']:.1f}% (threshold {best['threshold']:.3f}).",
        ]
    if plots:
        names = (
            ("latency CDF", "latency_cdf"),
            ("WER vs offload", "wer_vs_offload"),
            ("WER per category", "wer_by_kind"),
        )
        lines += ["", " ".join(f"![{title}]({plots}/{stem}.png)" for title, stem in names)]
    lines.append(END)
    return "\n".join(lines)


def update(path: Path, section: str) -> None:
    replace_section(path, section, BEGIN, END)


def replace_section(path: Path, section: str, begin: str, end: str, header: str = "# Benchmarks\n") -> None:
    """Put ``section`` (which starts with ``begin`` and ends with ``end``) in place of the file's section
    between those markers, or append it; a missing file starts with ``header``. Every benchmark script
    writes BENCHMARKS.md this way."""
    text = path.read_text() if path.exists() else header
    section = section.rstrip("\n")
    if begin in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: section, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)
