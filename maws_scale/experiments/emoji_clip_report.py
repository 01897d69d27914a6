"""Tables and curves of the CLIP vs MAE-CLIP × pooling experiment (docs/experiments.md) from its run folders.

    python -m maws_scale.experiments.emoji_clip_report [RUNS] [--out docs/img/emoji_clip]

RUNS (default ``runs/emoji/micro``) holds one folder per run, ``<arm>-<pool>-s<seed>``, with ``eval.json`` (the
``maws-scale eval --json`` output) and ``<stage>/metrics.jsonl``. Arms: ``clip``, ``mae_clip`` and ``init`` (the
untrained two towers at their seeded initialisation: one step at lr 1e-30). Writes ``runs.csv`` (one row per run),
``summary.md`` (mean ± std with ddof 1 over seeds, and MAE-CLIP − CLIP per pool) and ``loss_curves.png`` (training
loss per step by pooling; the CLIP part of the MAE-CLIP loss at the log steps as markers). ``--previous runs.csv``
adds the rows of an earlier ``runs.csv`` for runs that RUNS lacks (``source`` = ``earlier``; they have no curves),
and prints how far the runs that both hold differ (a reproduction check).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import pandas as pd

NAME = re.compile(r"^(?P<arm>clip|mae_clip|init)-(?P<pool>cls|gap|map|max)-s(?P<seed>\d+)$")
ARMS = ("clip", "mae_clip", "init")
POOLS = ("cls", "gap", "map", "max")
COLUMNS = {  # eval.json key or derived column → table header
    "eval/zero_shot_top1": "zero-shot top-1",
    "eval/linear_top1": "linear probe",
    "eval/knn_top1": "kNN",
    "eval/i2t_r1": "i→t R@1",
    "eval/i2t_r5": "i→t R@5",
    "eval/t2i_r5": "t→i R@5",
    "train_loss": "train loss, last 10",
    "clip_loss": "CLIP loss, step 120",
}
COLORS = {"clip": "tab:blue", "mae_clip": "tab:orange"}


def read_runs(root: Path) -> tuple[pd.DataFrame, dict[str, list[dict]]]:
    """One row per run folder with an eval.json; the metrics.jsonl rows of trained runs by run name."""
    rows, curves = [], {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        match = NAME.match(folder.name)
        if match is None:
            continue
        evaluation = folder / "eval.json"
        if not evaluation.is_file() or evaluation.stat().st_size == 0:
            print(f"skipped {folder}: no eval.json", file=sys.stderr)
            continue
        try:
            metrics = json.loads(evaluation.read_text())
        except json.JSONDecodeError as err:
            raise SystemExit(f"{evaluation}: not JSON ({err})") from None
        row = {"run": folder.name, "source": "this", "stage": match["arm"], "pool": match["pool"]}
        row["seed"] = int(match["seed"])
        row.update({key: metrics.get(key) for key in COLUMNS if key.startswith("eval/")})
        if match["arm"] in ("clip", "mae_clip"):
            log = folder / match["arm"] / "metrics.jsonl"
            if not log.is_file():
                raise SystemExit(f"{log} is missing: {folder} was evaluated but has no training log")
            steps = [json.loads(line) for line in log.read_text().splitlines()]
            curves[folder.name] = steps
            row["train_loss"] = sum(s["loss"] for s in steps[-10:]) / len(steps[-10:])
            logged = [s for s in steps if "clip_loss" in s]
            row["clip_loss"] = logged[-1]["clip_loss"] if logged else None
        rows.append(row)
    if not rows:
        raise SystemExit(f"no evaluated runs in {root}")
    return pd.DataFrame(rows), curves


def merge_previous(table: pd.DataFrame, previous: Path) -> pd.DataFrame:
    """``table`` plus the rows of ``previous`` for runs it lacks; prints the largest difference on shared runs."""
    old = pd.read_csv(previous)
    if "source" not in old:
        old.insert(1, "source", "earlier")
    old.loc[old.source == "this", "source"] = "earlier"
    shared = old[old.run.isin(table.run)].set_index("run")
    new = table.set_index("run").loc[shared.index]
    for key in [k for k in COLUMNS if k in shared and k in new]:
        diff = (new[key] - shared[key]).abs()
        if diff.notna().any():
            print(f"reproduction of {len(shared)} earlier runs, {key}: max |difference| {diff.max():.4f}")
    return pd.concat([table, old[~old.run.isin(table.run)]], ignore_index=True)


def _cell(values: pd.Series, n: int) -> str:
    values = values.dropna()
    if values.empty:
        return "–"
    note = f" (n={len(values)})" if len(values) != n else ""
    if len(values) == 1:
        return f"{values.iloc[0]:.2f}{note}"
    return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}{note}"


def summary(table: pd.DataFrame) -> str:
    """The results table (mean ± std over seeds) and the MAE-CLIP − CLIP differences, as Markdown."""
    head = ["stage", "pool", "seeds", *COLUMNS.values()]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for arm in ARMS:
        for pool in POOLS:
            group = table[(table.stage == arm) & (table.pool == pool)]
            if group.empty:
                continue
            cells = [_cell(group[key], len(group)) if key in group else "–" for key in COLUMNS]
            lines.append(f"| {arm} | {pool} | {len(group)} | " + " | ".join(cells) + " |")
    lines += ["", "MAE-CLIP − CLIP (difference of the means; the larger of the two stds in brackets):", ""]
    keys = ["eval/zero_shot_top1", "eval/linear_top1", "eval/knn_top1", "eval/i2t_r5", "clip_loss"]
    lines += ["| pool | " + " | ".join(COLUMNS[k] for k in keys) + " |", "|---|" + "---:|" * len(keys)]
    for pool in POOLS:
        a = table[(table.stage == "clip") & (table.pool == pool)]
        b = table[(table.stage == "mae_clip") & (table.pool == pool)]
        if a.empty or b.empty:
            continue
        cells = []
        for key in keys:
            spread = max(a[key].std(ddof=1), b[key].std(ddof=1)) if min(len(a), len(b)) > 1 else float("nan")
            spread_text = "–" if spread != spread else f"{spread:.2f}"  # NaN: a single seed
            cells.append(f"{b[key].mean() - a[key].mean():+.2f} ({spread_text})".replace("-", "−"))
        lines.append(f"| {pool} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(curves: dict[str, list[dict]], out: Path) -> None:
    """Training loss per step, one panel per pooling, every seed a line; MAE-CLIP's CLIP part as markers."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(16, 3.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(POOLS), sharey=True)
    for ax, pool in zip(axes, POOLS):
        for name, steps in sorted(curves.items()):
            match = NAME.match(name)
            if match["pool"] != pool:
                continue
            arm = match["arm"]
            first = match["seed"] == min(NAME.match(n)["seed"] for n in curves if NAME.match(n)["arm"] == arm)
            x = [s["step"] for s in steps]
            label = (arm if arm == "clip" else "mae_clip (CLIP + MAE)") if first else None
            ax.plot(x, [s["loss"] for s in steps], color=COLORS[arm], alpha=0.7, lw=1.2, label=label)
            if arm == "mae_clip":
                part = [(s["step"], s["clip_loss"]) for s in steps if "clip_loss" in s]
                if part:
                    ax.plot(*zip(*part), "o", color=COLORS[arm], mfc="none", ms=6,
                            label="its CLIP part (log steps)" if first else None)  # fmt: skip
        ax.set_title(f"pool {pool}")
        ax.set_xlabel("step")
    axes[0].set_ylabel("training loss")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=80)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="?", default="runs/emoji/micro", type=Path)
    parser.add_argument("--out", default="docs/img/emoji_clip", type=Path)
    parser.add_argument("--previous", type=Path, help="an earlier runs.csv: its rows for runs RUNS lacks are added")
    args = parser.parse_args(argv)
    table, curves = read_runs(args.runs)
    if args.previous is not None:
        table = merge_previous(table, args.previous)
    args.out.mkdir(parents=True, exist_ok=True)
    order = {arm: i for i, arm in enumerate(ARMS)}
    table = table.sort_values(["stage", "pool", "seed"], key=lambda c: c.map(order) if c.name == "stage" else c)
    table.to_csv(args.out / "runs.csv", index=False, float_format="%.3f")
    (args.out / "summary.md").write_text(summary(table))
    plot(curves, args.out / "loss_curves.png")
    print(summary(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
