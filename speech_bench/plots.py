"""PNG plots of a speech-bench report (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def write_plots(report: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []

    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {"open-mic": "-", "push-to-talk": "--"}
    for i, (mode, data) in enumerate(report["modes"].items()):
        for pattern in data.get("patterns", {}):
            values = sorted(
                r["latency_ms"]
                for r in data["records"]
                if r["latency_ms"] is not None and r.get("pattern") == pattern and not r.get("segments")
            )
            if values:
                ax.plot(
                    values, np.arange(1, len(values) + 1) / len(values), label=f"{mode} {pattern}",
                    drawstyle="steps-post", linestyle=styles.get(pattern, ":"), color=f"C{i}",
                )  # fmt: skip
    ax.set_xlabel("final latency after end of speech (ms)")
    ax.set_ylabel("fraction of utterances")
    ax.set_title("Final latency CDF per mode and pattern")
    ax.grid(alpha=0.3)
    ax.legend()
    path = out / "latency_cdf.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    sweep = report.get("sweep")
    if sweep:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        offload = [100 * p["offload"] for p in sweep["points"]]
        wer = [100 * p["wer"] for p in sweep["points"]]
        ax.plot(offload, wer, "-o", markersize=3, label="threshold sweep (hybrid)")
        chosen = sweep.get("operating_point")
        if chosen:
            ax.plot([100 * chosen["offload"]], [100 * chosen["wer"]], "r*", markersize=14,
                    label=f"operating point (threshold {chosen['threshold']:.3f})")  # fmt: skip
        for mode, style in (("edge", "--"), ("cloud", ":")):
            if mode in report["modes"]:
                ax.axhline(
                    100 * report["modes"][mode]["wer"], linestyle=style, color="gray", label=f"{mode} only"
                )
        if "oracle" in report:
            ax.axhline(100 * report["oracle"]["wer"], linestyle="-.", color="green", label="oracle")
        ax.set_xlabel("offload (% of utterances escalated)")
        ax.set_ylabel("WER (%)")
        ax.set_title("WER vs offload rate")
        ax.grid(alpha=0.3)
        ax.legend()
        path = out / "wer_vs_offload.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    kinds = sorted({k for data in report["modes"].values() for k in data["wer_by_kind"]})
    if kinds:
        fig, ax = plt.subplots(figsize=(max(7, 1.2 * len(kinds) + 2), 4.5))
        modes = list(report["modes"])
        width = 0.8 / max(1, len(modes))
        for i, mode in enumerate(modes):
            values = [100 * report["modes"][mode]["wer_by_kind"].get(k, np.nan) for k in kinds]
            ax.bar(np.arange(len(kinds)) + i * width, values, width, label=mode)
        ax.set_xticks(np.arange(len(kinds)) + width * (len(modes) - 1) / 2)
        ax.set_xticklabels(kinds, rotation=30, ha="right")
        ax.set_ylabel("WER (%)")
        ax.set_title("WER per category")
        ax.legend()
        path = out / "wer_by_kind.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
