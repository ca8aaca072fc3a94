"""The report as a plain-text table for the terminal: one row per mode, latency per pattern."""

from __future__ import annotations

from typing import Any

from speech_bench.streaming import OPEN_MIC, PUSH_TO_TALK

_SHORT = {OPEN_MIC: "om", PUSH_TO_TALK: "ptt"}


def _ms(value: float | None) -> str:
    return f"{value:.0f}" if value is not None else "-"


def _short(pattern: str) -> str:
    return _SHORT.get(pattern, pattern)


def not_one_final(figures: dict[str, Any]) -> str:
    """``no final / two or more`` of one pattern's figures."""
    return f"{figures['no_final']}/{figures['multi_final']}"


def summary(report: dict[str, Any]) -> str:
    modes = report["modes"]
    patterns = list(dict.fromkeys(p for d in modes.values() for p in d.get("patterns", {})))
    header = ["mode", "WER", "offload"]
    for p in patterns:
        header += [f"{_short(p)} p50", f"{_short(p)} p95", f"{_short(p)} 0/2+"]
    header += ["fin p50", "1st part", "cloud s", "edge RTF"]
    lines = [" ".join(f"{h:>9}" for h in header)]
    for mode, d in modes.items():
        rtf = d.get("edge_rtf")
        cells = [mode, f"{100 * d['wer']:.2f}%", f"{100 * d['offload']:.1f}%"]
        for p in patterns:
            figures = d.get("patterns", {}).get(p)
            if figures is None:
                cells += ["-", "-", "-"]
            else:
                lat = figures["latency_ms"]
                cells += [_ms(lat["p50"]), _ms(lat["p95"]), not_one_final(figures)]
        cells += [
            _ms(d["finalize_ms"]["p50"]),
            _ms(d["first_partial_ms"]["p50"]),
            f"{d.get('cloud_seconds', 0):.1f}",
            f"{rtf:.3f}" if rtf else "-",
        ]
        lines.append(" ".join(f"{c:>9}" for c in cells))
    first = next(iter(modes.values()), None)
    if first is not None and patterns:
        names = ", ".join(f"{_short(p)} = {p}" for p in patterns)
        lines.append(
            f"latency ms from the end of speech ({names}); 0/2+: utterances with no final / several "
            f"(no latency taken); WER, offload over the {first.get('wer_pattern', OPEN_MIC)} records; "
            f"fin and 1st part: {first.get('latency_pattern', OPEN_MIC)}"
        )
    for mode, d in modes.items():
        s = d.get("segmentation")
        if s:
            lines.append(
                f"false endpoints ({s['pattern']}) {mode}: {s['split']} of {s['sentences']} sentences split, "
                f"{s['merged']} finals merging sentences, {s['missed']} missed, {s['spurious']} spurious "
                f"({s['items']} items); latency of sentences with one final p50 "
                f"{_ms(s['sentence_latency_ms']['p50'])} ms"
            )
    if "oracle" in report:
        lines.append(f"oracle WER {100 * report['oracle']['wer']:.2f}%")
    if "sweep" in report:
        best = report["sweep"]["best_within_offload"]
        lines.append(
            f"sweep: best WER {100 * best['wer']:.2f}% at offload {100 * best['offload']:.1f}% "
            f"(threshold {best['threshold']:.4f})"
        )
    return "\n".join(lines)
