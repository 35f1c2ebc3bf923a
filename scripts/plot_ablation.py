"""Charts (PNG) from the ablation CSVs that scripts/gpu_ablate.py writes:

- per backend and model: prefill and decode speedup over `none` for every rule list;
- per model: the backends side by side for every rule list (decode and prefill speedup).

    python scripts/plot_ablation.py docs/results
"""

import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read(path):
    with open(path) as f:
        return [r for r in csv.DictReader(f)]


def speedups(rows, key):
    return [float(r[key]) if r[key] not in ("", "-") else 0.0 for r in rows]


def main(folder):
    folder = Path(folder)
    runs = {}
    for path in sorted(folder.glob("ablate_*_float16.csv")):
        _, target, model, _ = path.stem.split("_")
        runs[(target, model)] = read(path)
    for (target, model), rows in runs.items():
        names = [r["rule_list"] for r in rows]
        fig, ax = plt.subplots(figsize=(10, 4))
        x = range(len(names))
        ax.bar([i - 0.2 for i in x], speedups(rows, "prefill_speedup"), 0.4, label="prefill")
        ax.bar([i + 0.2 for i in x], speedups(rows, "decode_speedup"), 0.4, label="decode")
        ax.set_xticks(list(x), names, rotation=45, ha="right")
        ax.set_yscale("log")
        ax.set_ylabel("speedup over 'none' (log)")
        ax.set_title(f"{model} fp16 on {target} (H100)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(folder / f"ablate_{target}_{model}.png", dpi=110)
        plt.close(fig)
    for model in sorted({m for _, m in runs}):
        targets = sorted(t for t, m in runs if m == model)
        if len(targets) < 2:
            continue
        names = [r["rule_list"] for r in runs[(targets[0], model)]]
        fig, axes = plt.subplots(1, 2, figsize=(14, 4))
        for ax, key in zip(axes, ("prefill_speedup", "decode_speedup")):
            width = 0.8 / len(targets)
            for j, t in enumerate(targets):
                by_name = {r["rule_list"]: r for r in runs[(t, model)]}
                vals = [float(by_name[n][key]) if n in by_name and by_name[n][key] not in ("", "-") else 0 for n in names]
                ax.bar([i + j * width - 0.4 + width / 2 for i in range(len(names))], vals, width, label=t)
            ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
            ax.set_yscale("log")
            ax.set_title(f"{model} fp16: {key.replace('_', ' ')} over 'none'")
            ax.legend()
        fig.tight_layout()
        fig.savefig(folder / f"ablate_backends_{model}.png", dpi=110)
        plt.close(fig)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/results")
