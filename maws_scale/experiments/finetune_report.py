"""Table and curves of the Fashion-MNIST fine-tuning experiment (docs/experiments.md) from its run folders.

    python -m maws_scale.experiments.finetune_report [RUNS] [--out docs/img/finetune_demo]

RUNS (default ``runs/finetune-demo``) holds one folder per run, ``<init>-s<seed>`` (init: ``wsp`` = MAE → WSP,
``mae``, ``random``), each with ``finetune/metrics.jsonl`` and ``finetune/best.json``. Writes ``runs.csv`` (one row
per run: top-1 / top-5 at the last step, best top-1 and its step, last logged training loss), ``summary.md`` (mean ±
std with ddof 1 over seeds) and ``curves.png`` (held-out top-1 and training loss per step, one line per run).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import pandas as pd

NAME = re.compile(r"^(?P<init>wsp|mae|random)-s(?P<seed>\d+)$")
INITS = {"wsp": "MAE → WSP", "mae": "MAE only", "random": "random"}
COLORS = {"wsp": "tab:green", "mae": "tab:orange", "random": "tab:gray"}
COLUMNS = {
    "top1": "top-1 % (last)",
    "top5": "top-5 % (last)",
    "best_top1": "best top-1 %",
    "train_loss": "train loss (last log)",
}


def read_runs(root: Path) -> tuple[pd.DataFrame, dict[str, list[dict]]]:
    """One row per finished run folder; its metrics.jsonl records by run name."""
    rows, curves = [], {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        match = NAME.match(folder.name)
        stage = folder / "finetune"
        if match is None:
            continue
        if not (stage / "best.json").is_file() or not (stage / "consolidated.pt").is_file():
            print(f"skipped {folder}: not finished (no best.json / consolidated.pt)", file=sys.stderr)
            continue
        records = [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines() if line.strip()]
        evals = [r for r in records if "eval/top1" in r]
        logged = [r for r in records if "grad_norm" in r]
        best = json.loads((stage / "best.json").read_text())
        rows.append(
            {
                "run": folder.name,
                "init": match["init"],
                "seed": int(match["seed"]),
                "steps": evals[-1]["step"],
                "top1": evals[-1]["eval/top1"],
                "top5": evals[-1]["eval/top5"],
                "best_top1": best["value"],
                "best_step": best["step"],
                "train_loss": logged[-1]["loss"] if logged else float("nan"),
            }
        )
        curves[folder.name] = records
    if not rows:
        raise SystemExit(f"{root}: no finished <init>-s<seed> run folder")
    return pd.DataFrame(rows), curves


def summary(table: pd.DataFrame) -> str:
    """Markdown: per init, mean ± std (ddof 1) over seeds of every column."""
    lines = ["| init | seeds | " + " | ".join(COLUMNS.values()) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    for init, label in INITS.items():
        part = table[table["init"] == init]
        if part.empty:
            continue
        cells = []
        for key in COLUMNS:
            values = part[key].astype(float)
            std = f" ± {values.std(ddof=1):.2f}" if len(values) > 1 else ""
            cells.append(f"{values.mean():.2f}{std}")
        lines.append(f"| {label} | {len(part)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(curves: dict[str, list[dict]], out: Path) -> Path:
    """curves.png: held-out top-1 and training loss (every step) against the step, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc, loss) = plt.subplots(1, 2, figsize=(11, 4))
    seen = set()
    for name, records in sorted(curves.items()):
        init = NAME.match(name)["init"]
        label = INITS[init] if init not in seen else None
        seen.add(init)
        evals = [r for r in records if "eval/top1" in r]
        acc.plot([r["step"] for r in evals], [r["eval/top1"] for r in evals], "o-", color=COLORS[init], label=label)
        steps = [r for r in records if "loss" in r]
        series = pd.Series([r["loss"] for r in steps], index=[r["step"] for r in steps]).rolling(10, min_periods=1)
        loss.plot(series.mean().index, series.mean().values, color=COLORS[init], alpha=0.8, label=label)
    acc.set(xlabel="step", ylabel="held-out top-1 %", title="Fashion-MNIST test (2,500 images)")
    loss.set(xlabel="step", ylabel="training loss (mixed targets, mean of 10 steps)", title="training loss")
    for ax in (acc, loss):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = out / "curves.png"
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="?", default="runs/finetune-demo")
    parser.add_argument("--out", default="docs/img/finetune_demo")
    args = parser.parse_args(argv)
    root, out = Path(args.runs), Path(args.out)
    if not root.is_dir():
        print(f"finetune_report: {root} is not a folder of runs", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    table, curves = read_runs(root)
    _write(out / "runs.csv", table.to_csv(index=False))
    text = summary(table)
    _write(out / "summary.md", text)
    plot(curves, out)
    print(text, end="")
    print(f"wrote {out / 'runs.csv'}, {out / 'summary.md'}, {out / 'curves.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
