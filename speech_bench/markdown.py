"""Write a speech-bench report as the "speech-bench" section of BENCHMARKS.md."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

BEGIN, END = "<!-- speech-bench:begin -->", "<!-- speech-bench:end -->"


def _ms(value: float | None) -> str:
    return f"{value:.0f}" if value is not None else "-"


def render(report: dict[str, Any], command: str, plots: str | None) -> str:
    modes = report["modes"]
    lines = [
        BEGIN,
        "## speech-bench: four modes side by side",
        "",
        f"Run {report['created']} on {report['machine']['platform']}, {report['machine']['cpus']} cores, "
        f"Python {report['machine']['python']}. Edge: Moonshine base (rebuilt ONNX graphs, onnxruntime, "
        f"2 threads, one inference thread); cloud: Whisper {report['settings']['cloud_model']} int8 "
        f"({report['settings']['cloud_threads']} threads) on the same machine. "
        f"Speed {report['settings']['speed']:g}x real time; {next(iter(modes.values()))['utterances']} "
        "utterances, each streamed on its own WebSocket between 0.5 s and 1.5 s of silence.",
        "",
        f"Reproduce: `{command}`",
        "",
        "| mode | WER | offload | final latency p50 / p95 / p99 ms | finalization p50 / p95 ms "
        "| first partial p50 ms | cloud s | edge RTF | edge peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, d in modes.items():
        lat, fin, part = d["latency_ms"], d["finalize_ms"], d["first_partial_ms"]
        rtf = d.get("edge_rtf")
        rss = d.get("edge_peak_rss_mb")
        cells = [
            mode,
            f"{100 * d['wer']:.2f}%",
            f"{100 * d['offload']:.1f}%",
            f"{_ms(lat['p50'])} / {_ms(lat['p95'])} / {_ms(lat['p99'])}",
            f"{_ms(fin['p50'])} / {_ms(fin['p95'])}",
            _ms(part["p50"]),
            f"{d.get('cloud_seconds', 0):.1f}",
            f"{rtf:.3f}" if rtf else "-",
            f"{rss:.0f}" if rss else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
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
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if BEGIN in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: section, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)
