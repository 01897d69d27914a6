"""The MAWS plots of `maws-scale sweep report` (``report.gain``): the gain of one arm over another vs a budget, one
line per model size, and the training curves of the arms on shared axes.

Gain: rows of the ``treated`` and ``base`` arms that share the size (``lines``), the budget (``x``) and the seed are
paired, and ``treated − base`` is averaged over the pairs: mean, std (ddof 1; 0 for one pair) and n. A row without a
partner (a seed that only one arm finished) is left out and counted in ``unpaired``, never averaged against another
seed. Outputs: ``gain.csv``, ``gain.md``, ``gain_<metric>.png`` (one panel per pair) and ``curves_<metric>_by_arm.png``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from maws_scale.experiments.plotting import new_figure, safe_name
from maws_scale.experiments.sweep import GainSpec


def _numeric(values: pd.Series) -> pd.Series:
    """Budgets are stored as tags (text): compare and sort them as numbers where they are numbers."""
    converted = pd.to_numeric(values, errors="coerce")
    return converted if (converted.notna() == values.notna()).all() else values  # rows without a budget stay NaN


def _text(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def gain_table(runs: pd.DataFrame, spec: GainSpec, seed_key: str = "seed") -> pd.DataFrame:
    """One row per pair × size × budget × metric: treated and base means, gain mean ± std over seed pairs, n."""
    needed = [spec.x, spec.arm, seed_key, *spec.lines]
    missing = [c for c in needed if c not in runs.columns]
    if missing:
        raise ValueError(f"report.gain: no column '{missing[0]}' in the runs table")
    runs = runs.assign(**{spec.x: _numeric(runs[spec.x])})
    keys = [*spec.lines, spec.x, seed_key]
    rows = []
    for treated, base in spec.pairs:
        for metric in spec.metrics:
            if metric not in runs.columns:
                raise ValueError(f"report.gain: no metric '{metric}' in the runs table")
            a = runs.loc[runs[spec.arm] == treated, [*keys, metric]]
            b = runs.loc[runs[spec.arm] == base, [*keys, metric]]
            joined = a.merge(b, on=keys, suffixes=(" treated", " base"), how="outer", indicator=True)
            both = joined[joined["_merge"] == "both"].dropna(subset=[f"{metric} treated", f"{metric} base"])
            lone = joined[joined["_merge"] != "both"]
            for group, part in both.groupby([*spec.lines, spec.x], sort=True, dropna=False):
                group = group if isinstance(group, tuple) else (group,)
                diff = part[f"{metric} treated"] - part[f"{metric} base"]
                where = dict(zip([*spec.lines, spec.x], group))
                unpaired = int((lone[list(where)] == pd.Series(where)).all(axis=1).sum())
                rows.append(
                    {
                        "pair": f"{treated} − {base}",
                        "treated": treated,
                        "base": base,
                        **where,
                        "metric": metric,
                        "treated mean": part[f"{metric} treated"].mean(),
                        "base mean": part[f"{metric} base"].mean(),
                        "gain mean": diff.mean(),
                        "gain std": diff.std(ddof=1) if len(diff) > 1 else 0.0,
                        "n": len(diff),
                        "unpaired": unpaired,
                    }
                )
    return pd.DataFrame(rows)


def gain_markdown(table: pd.DataFrame, spec: GainSpec, digits: int = 2) -> str:
    """``gain.md``: one markdown table per metric (rows: pair × size × budget)."""
    out = []
    for metric, part in table.groupby("metric", sort=False):
        head = ["pair", *spec.lines, spec.x, "n", "treated", "base", "gain (mean ± std)"]
        out += [f"**{metric}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for _, row in part.iterrows():
            cells = [row["pair"], *(str(row[k]) for k in spec.lines), _text(row[spec.x]), str(int(row["n"]))]
            cells += [f"{row['treated mean']:.{digits}f}", f"{row['base mean']:.{digits}f}"]
            cells.append(f"{row['gain mean']:+.{digits}f} ± {row['gain std']:.{digits}f}")
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def gain_plot(table: pd.DataFrame, spec: GainSpec, metric: str, out: Path) -> tuple[Path, object]:
    """``gain_<metric>.png``: one panel per pair; gain mean ± std vs ``x``, one line per size; a dashed zero."""
    part = table[table["metric"] == metric]
    pairs = list(dict.fromkeys(part["pair"]))
    figure = new_figure(4.2 * max(1, len(pairs)), 3.8)
    for i, pair in enumerate(pairs):
        axes = figure.add_subplot(1, len(pairs), i + 1)
        rows = part[part["pair"] == pair]
        groups = rows.groupby(spec.lines, sort=False) if spec.lines else [("all", rows)]
        for name, line in groups:
            line = line.sort_values(spec.x)
            label = ", ".join(f"{k}={v}" for k, v in zip(spec.lines, np.atleast_1d(name))) or "all"
            axes.errorbar(line[spec.x], line["gain mean"], yerr=line["gain std"], marker="o", capsize=4, label=label)
        axes.axhline(0.0, color="grey", linestyle="--", linewidth=0.8)
        if pd.api.types.is_numeric_dtype(rows[spec.x]) and (rows[spec.x] > 0).all():
            axes.set_xscale("log")
            ticks = sorted(rows[spec.x].unique())
            axes.set_xticks(ticks, [f"{t:g}" for t in ticks])
            axes.minorticks_off()
        axes.set_title(pair, fontsize=9)
        axes.set_xlabel(spec.x)
        axes.set_ylabel(f"Δ {metric}" if i == 0 else "")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    figure.suptitle(f"gain in {metric} (mean ± std over seed pairs)", fontsize=10)
    figure.tight_layout()
    path = out / f"gain_{safe_name(metric)}.png"
    figure.savefig(path)
    return path, figure


def arm_curves(runs: pd.DataFrame, series: list[pd.Series | None], spec: GainSpec, smooth: int = 1) -> pd.DataFrame:
    """Per size × ``x`` × arm (the arms of ``pairs``) and step: mean and std (ddof 1) over seeds of the history
    (rolling mean over ``smooth`` steps first), and n. Only the steps every seed logged are kept."""
    arms = list(dict.fromkeys(a for pair in spec.pairs for a in pair))
    runs = runs.assign(_series=series, **{spec.x: _numeric(runs[spec.x])})
    runs = runs[runs[spec.arm].isin(arms)]
    rows = []
    for group, part in runs.groupby([*spec.lines, spec.x, spec.arm], sort=True):
        found = [s.rolling(smooth, min_periods=1).mean() for s in part["_series"] if s is not None]
        if not found:
            continue
        table = pd.concat(found, axis=1).sort_index().dropna()
        std = table.std(axis=1, ddof=1) if table.shape[1] > 1 else table.iloc[:, 0] * 0.0
        where = dict(zip([*spec.lines, spec.x, spec.arm], group))
        for step, mean, dev in zip(table.index, table.mean(axis=1), std):
            rows.append({**where, "step": step, "mean": mean, "std": dev, "n": table.shape[1]})
    return pd.DataFrame(rows)


def curves_plot(curves: pd.DataFrame, spec: GainSpec, out: Path, smooth: int = 1) -> tuple[Path, object]:
    """``curves_<metric>_by_arm.png``: a panel per size (rows) × ``x`` (columns), every arm on the same axes."""
    lines = curves.groupby(spec.lines, sort=True) if spec.lines else [("all", curves)]
    budgets = sorted(curves[spec.x].unique())
    figure = new_figure(3.6 * len(budgets), 3.0 * len(lines) + 0.6)
    arms = list(dict.fromkeys(a for pair in spec.pairs for a in pair))
    colors = {arm: f"C{i}" for i, arm in enumerate(arms)}
    for r, (name, by_size) in enumerate(lines):
        for c, budget in enumerate(budgets):
            axes = figure.add_subplot(len(lines), len(budgets), r * len(budgets) + c + 1)
            panel = by_size[by_size[spec.x] == budget]
            for arm in arms:
                rows = panel[panel[spec.arm] == arm]
                if rows.empty:
                    continue
                n = int(rows["n"].iloc[0])
                axes.plot(rows["step"], rows["mean"], color=colors[arm], linewidth=1.2, label=f"{arm} (n={n})")
                axes.fill_between(
                    rows["step"], rows["mean"] - rows["std"], rows["mean"] + rows["std"], color=colors[arm], alpha=0.15
                )
            size = ", ".join(f"{k}={v}" for k, v in zip(spec.lines, np.atleast_1d(name)))
            axes.set_title(f"{size}  {spec.x}={_text(budget)}", fontsize=8)
            axes.set_xlabel("step", fontsize=8)
            axes.grid(alpha=0.3)
            if c == 0:
                axes.set_ylabel(spec.curve + (f" (rolling {smooth})" if smooth > 1 else ""), fontsize=8)
            if r == 0 and c == 0:
                axes.legend(fontsize=7)
    figure.tight_layout()
    path = out / f"curves_{safe_name(str(spec.curve))}_by_arm.png"
    figure.savefig(path)
    return path, figure


def gain_report(
    runs: pd.DataFrame, series: list[pd.Series | None] | None, spec: GainSpec, out: Path, smooth: int = 1
) -> list[Path]:
    """Write ``gain.csv``, ``gain.md``, the gain plots and (with ``series``) the arms' curves; return the files."""
    table = gain_table(runs, spec)
    if table.empty:
        raise ValueError(f"report.gain: no seed has both arms of any pair {spec.pairs}")
    table.to_csv(out / "gain.csv", index=False, float_format="%.6g")
    (out / "gain.md").write_text(gain_markdown(table, spec))
    files = [out / "gain.csv", out / "gain.md"]
    files += [gain_plot(table, spec, metric, out)[0] for metric in spec.metrics]
    if series is not None:
        curves = arm_curves(runs, series, spec, smooth)
        curves.to_csv(out / f"curves_{safe_name(str(spec.curve))}_by_arm.csv", index=False, float_format="%.6g")
        files += [out / f"curves_{safe_name(str(spec.curve))}_by_arm.csv", curves_plot(curves, spec, out, smooth)[0]]
    return files
