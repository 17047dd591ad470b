"""python -m bench.gpu.plot bench/results/gpu_*_llama3-8b.json -o bench/results/gpu_llama3-8b.png

One bar per configuration (tokens/s), labelled with peak reserved GiB; one panel per
result file, since absolute speed drifts between device calls (compare within a panel)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+")
    ap.add_argument("-o", "--out", required=True)
    a = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    docs = [json.loads(Path(f).read_text()) for f in a.files]
    fig, axes = plt.subplots(1, len(docs), figsize=(6 * len(docs), 5), squeeze=False)
    for ax, doc in zip(axes[0], docs, strict=True):
        ok = [r for r in doc["results"] if r.get("ok")]
        labels = [f"{r['config']['group']}\n{r['config']['id']}" for r in ok]
        tps = [r["tokens_per_s"] for r in ok]
        colors = ["tab:orange" if r["config"]["runner"] == "trl" else "tab:blue" for r in ok]
        bars = ax.bar(range(len(ok)), tps, color=colors)
        for bar, r in zip(bars, ok, strict=True):
            ax.annotate(
                f"{r['peak_reserved_gib']:.1f} GiB",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
            )
        ax.set_xticks(range(len(ok)), labels, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("tokens/s (median step)")
        ax.set_title(
            f"{doc['suite']} · {doc['shape']} · {ok[0]['device']['name'] if ok else ''}", fontsize=9
        )
    fig.suptitle("loraf trainer path (blue) vs TRL / TRL+Liger (orange); label: peak reserved")
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)


if __name__ == "__main__":
    main()
