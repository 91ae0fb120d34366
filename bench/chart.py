#!/usr/bin/env python3
"""Draw bench/results/chart.png from results.json (run with bench/.venv-peers/bin/python: matplotlib is there).

    bench/.venv-peers/bin/python bench/chart.py bench/results/results.json bench/results/chart.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ORDER = ("direct", "squid", "tinyproxy", "proxy.py", "mitmproxy", "authproxy-base", "authproxy")
LABELS = {"direct": "nginx\ndirect", "squid": "Squid", "tinyproxy": "tinyproxy", "proxy.py": "proxy.py",
          "mitmproxy": "mitmproxy", "authproxy-base": "authproxy\nbaseline", "authproxy": "authproxy"}
COLOURS = {"direct": "#9e9e9e", "squid": "#4c72b0", "tinyproxy": "#8172b2", "proxy.py": "#ccb974",
           "mitmproxy": "#64b5cd", "authproxy-base": "#e8a0a2",
           "authproxy": "#c44e52"}


def _bars(ax: Any, data: dict[str, Any], scenario: str, key: str, title: str, unit: str) -> None:
    names = [n for n in ORDER if data["summary"].get(n, {}).get(scenario, {}).get(key) is not None]
    values = [data["summary"][n][scenario][key] for n in names]
    # Error bars: the lowest and highest run of the repeats (the machine is shared; the bar is the median).
    runs = [[r[key] for r in data["samples"].get(n, {}).get(scenario, []) if key in r] or [v]
            for n, v in zip(names, values, strict=True)]
    spread = [[v - min(r) for v, r in zip(values, runs, strict=True)],
              [max(r) - v for v, r in zip(values, runs, strict=True)]]
    bars = ax.bar([LABELS[n] for n in names], values, color=[COLOURS[n] for n in names], yerr=spread,
                  capsize=3, ecolor="#555555")
    squid = data["summary"].get("squid", {}).get(scenario, {}).get(key)
    for bar, name, value, r in zip(bars, names, values, runs, strict=True):
        text = f"{value:,.0f}"
        if squid and name != "squid":
            text += f"\n{value / squid:.2f}× Squid"
        ax.annotate(text, (bar.get_x() + bar.get_width() / 2, max(value, *r)), ha="center", va="bottom",
                    fontsize=7, xytext=(0, 2), textcoords="offset points")
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(unit)
    ax.margins(y=0.25)
    ax.tick_params(axis="x", labelsize=8)


def _memory(ax: Any, data: dict[str, Any]) -> None:
    counts = data["meta"]["idle_counts"]
    keys = ["idle", *[f"idle_{c}" for c in counts]]
    legends = ["no connections", *[f"{c:,} idle connections" for c in counts]]
    names = [n for n in ORDER if n in data["memory"] and "idle" in data["memory"][n]]
    width = 0.8 / len(keys)
    for i, (key, legend) in enumerate(zip(keys, legends, strict=True)):
        xs = [j + (i - (len(keys) - 1) / 2) * width for j in range(len(names))]
        values = [data["memory"][n].get(key, 0.0) for n in names]
        bars = ax.bar(xs, values, width, label=legend)
        for bar, value in zip(bars, values, strict=True):
            ax.annotate(f"{value:.0f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                        va="bottom", fontsize=6)
    ax.set_xticks(range(len(names)), [LABELS[n] for n in names])
    ax.set_title("Resident memory (whole process group)", fontsize=10)
    ax.set_ylabel("MiB")
    ax.legend(fontsize=7)
    ax.tick_params(axis="x", labelsize=8)


def main(src: Path, dest: Path) -> None:
    data = json.loads(src.read_text())
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    _bars(axes[0][0], data, "keepalive", "rps", "Keep-alive 100-byte GET, Basic", "requests/s")
    _bars(axes[0][1], data, "close", "rps", "Connection: close 100-byte GET, Basic", "requests/s")
    _bars(axes[1][0], data, "connect", "mbps", "CONNECT tunnel, 100 MiB download", "MB/s")
    _memory(axes[1][1], data)
    meta = data["meta"]
    fig.suptitle(f"authproxy and its peers, {meta['date']}: proxy on one CPU, load and origin on the other; "
                 f"medians of {meta['repeats']} (error bars: lowest and highest run)", fontsize=11)
    fig.tight_layout()
    fig.savefig(dest, dpi=110)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
