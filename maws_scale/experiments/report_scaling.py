"""Plots of the scaling fits in a sweep report: units on the axes, the fitted formula with CIs, n and R², log ticks.

Each function returns (result dicts for ``fits.json``, the PNG path). The math is in ``maws_scale.experiments.scaling``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from maws_scale.experiments.plotting import log_axes, new_figure, safe_name
from maws_scale.experiments.scaling import fit_saturating, fit_two_term, isoflop_frontier
from maws_scale.experiments.sweep import FitSpec

UNITS = {"compute": "training FLOPs", "params": "encoder parameters", "samples": "training samples seen"}


def axis_label(column: str) -> str:
    """``compute (training FLOPs)``; other columns as they are."""
    return f"{column} ({UNITS[column]})" if column in UNITS else column


def _require(runs: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in runs.columns]
    if missing:
        known = ", ".join(map(str, runs.columns))
        raise ValueError(f"{what}: no column '{missing[0]}' (known: {known})")


def _groups(runs: pd.DataFrame, group_by: list[str]):
    groups = runs.groupby(group_by, sort=False) if group_by else [("all", runs)]
    for name, part in groups:
        yield (name if isinstance(name, str) else ", ".join(map(str, np.atleast_1d(name)))), part


def _notes(axes: Any, warnings: list[str]) -> None:
    if warnings:
        text = "\n".join(f"⚠ {w}" for w in warnings[:3])
        axes.text(0.01, 0.01, text, transform=axes.transAxes, fontsize=7, color="#b03a2e", va="bottom")


def scaling_fit_and_plot(runs: pd.DataFrame, fit: FitSpec, out: Path) -> tuple[list[dict[str, Any]], Path]:
    """Dispatch on ``fit.kind`` (saturating | two_term | frontier)."""
    if fit.kind == "saturating":
        return saturating_plot(runs, fit, out)
    if fit.kind == "two_term":
        return two_term_plot(runs, fit, out)
    if fit.kind == "frontier":
        return frontier_plot(runs, fit, out)
    raise ValueError(f"fit kind '{fit.kind}' has no scaling plot")


def saturating_plot(runs: pd.DataFrame, fit: FitSpec, out: Path) -> tuple[list[dict[str, Any]], Path]:
    """``y = E + A·x^-α`` per group: runs, the fit, and E as a dashed line; formula, CIs, n, R² in the legend."""
    _require(runs, [fit.x, fit.y, *fit.group_by], f"fit {fit.y} vs {fit.x}")
    figure = new_figure(6.5, 4.4, dpi=110)
    axes = figure.add_subplot(1, 1, 1)
    results, warnings = [], []
    for label, part in _groups(runs, fit.group_by):
        law = fit_saturating(part[fit.x].to_numpy(float), part[fit.y].to_numpy(float), x_name=fit.x)
        text = law.describe(fit.x, fit.y)
        results.append({"x": fit.x, "y": fit.y, "kind": fit.kind, "group": label, **law.to_json(), "text": text})
        warnings += law.warnings
        by_size = not fit.group_by and "params" in part.columns and part["params"].nunique() > 1
        points = axes.scatter(
            part[fit.x],
            part[fit.y],
            s=22,
            alpha=0.85,
            **(_size_colours(part["params"]) if by_size else {}),
        )
        if by_size:
            figure.colorbar(points, ax=axes, label=axis_label("params"))
        grid = np.geomspace(part[fit.x].min(), part[fit.x].max(), 100)
        colour = "#333333" if by_size else points.get_facecolor()[0]
        band = law.band(grid)
        if band is not None:
            axes.fill_between(grid, *band, color=colour, alpha=0.15, linewidth=0, label="95 % bootstrap band")
        ci = f" [{law.alpha_ci[0]:.2f}, {law.alpha_ci[1]:.2f}]" if law.alpha_ci else ""
        e_ci = f" [{law.E_ci[0]:.2f}, {law.E_ci[1]:.2f}]" if law.E_ci else ""
        name = "" if label == "all" else f"{label}: "
        axes.plot(
            grid,
            law(grid),
            color=colour,
            linewidth=1.4,
            label=f"{name}E + A·x^-α: α = {law.alpha:.3f}{ci}, E = {law.E:.3f}{e_ci}\n(n = {law.n}, R² = {law.r2:.3f})",
        )
        if law.E > 0:
            axes.axhline(law.E, color=colour, linestyle="--", linewidth=0.8, alpha=0.6)
    log_axes(axes)
    axes.set_xlabel(axis_label(fit.x))
    axes.set_ylabel(fit.y)
    axes.set_title(f"{fit.y} vs {fit.x}: L = E + A·x^-α (95 % bootstrap CIs; dashed: E)", fontsize=9)
    axes.legend(fontsize=7)
    _notes(axes, warnings)
    figure.tight_layout()
    path = out / f"fit_{safe_name(fit.y)}_vs_{safe_name(fit.x)}.png"
    figure.savefig(path)
    return results, path


def two_term_plot(runs: pd.DataFrame, fit: FitSpec, out: Path) -> tuple[list[dict[str, Any]], Path]:
    """``y = E + A/N^α + B/D^β``: runs against N, one colour per D, with the fitted law at that D."""
    _require(runs, [fit.x, fit.x2, fit.y], f"fit {fit.y} vs ({fit.x}, {fit.x2})")
    n, d, y = (runs[c].to_numpy(float) for c in (fit.x, fit.x2, fit.y))
    law = fit_two_term(n, d, y)
    text = law.describe(fit.x, fit.x2, fit.y)
    result = {"x": fit.x, "x2": fit.x2, "y": fit.y, "kind": fit.kind, "group": "all", **law.to_json(), "text": text}
    figure = new_figure(6.5, 4.4, dpi=110)
    axes = figure.add_subplot(1, 1, 1)
    grid = np.geomspace(n.min(), n.max(), 100)
    for value in np.unique(d):
        mask = d == value
        points = axes.scatter(n[mask], y[mask], s=20, alpha=0.75, label=f"{fit.x2} = {value:.3g}")
        axes.plot(grid, law(grid, value), color=points.get_facecolor()[0], linewidth=1.2)
    log_axes(axes)
    axes.set_xlabel(axis_label(fit.x))
    axes.set_ylabel(fit.y)
    axes.set_title(
        f"L = E + A/N^α + B/D^β: E = {law.E:.3f}, α = {law.alpha:.3f}, β = {law.beta:.3f} "
        f"(n = {law.n}, R² = {law.r2:.3f})",
        fontsize=8,
    )
    axes.legend(fontsize=7, title=axis_label(fit.x2), title_fontsize=7)
    _notes(axes, law.warnings)
    figure.tight_layout()
    path = out / f"fit_{safe_name(fit.y)}_vs_{safe_name(fit.x)}_and_{safe_name(fit.x2)}.png"
    figure.savefig(path)
    return [result], path


def frontier_plot(runs: pd.DataFrame, fit: FitSpec, out: Path) -> tuple[list[dict[str, Any]], Path]:
    """Left: IsoFLOP curves (loss against N per compute band, optimum marked); right: N_opt against C and its fit."""
    _require(runs, [fit.x, fit.x2, fit.y], f"frontier of {fit.y}")
    c, n, y = (runs[col].to_numpy(float) for col in (fit.x, fit.x2, fit.y))
    frontier = isoflop_frontier(c, n, y)
    result = {
        "x": fit.x,
        "x2": fit.x2,
        "y": fit.y,
        "kind": fit.kind,
        "group": "all",
        **frontier.to_json(),
        "text": frontier.describe(),
    }
    figure = new_figure(10.0, 4.2, dpi=110)
    left, right = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    for band in frontier.bands:
        mask = np.abs(np.log10(c) - np.log10(band["compute"])) <= 0.16
        order = np.argsort(n[mask])
        line = left.plot(n[mask][order], y[mask][order], marker="o", markersize=4, linewidth=1.0)[0]
        left.scatter([band["n_opt"]], [band["loss_min"]], marker="*", s=90, color=line.get_color(), zorder=3)
        line.set_label(f"C ≈ {band['compute']:.2g}")
    log_axes(left, y=False)
    left.set_xlabel(axis_label(fit.x2))
    left.set_ylabel(fit.y)
    left.set_title("IsoFLOP bands (★ loss-optimal size)", fontsize=9)
    if frontier.bands:
        left.legend(fontsize=7, title=axis_label(fit.x), title_fontsize=7)
    for band in frontier.bands:  # N_opt per band; whiskers: the sizes tried there (an edge optimum is only a bound)
        sizes = n[np.abs(np.log10(c) - np.log10(band["compute"])) <= 0.16]
        low, high = band["n_opt"] - sizes.min(), sizes.max() - band["n_opt"]
        right.errorbar(
            [band["compute"]],
            [band["n_opt"]],
            yerr=[[max(low, 0.0)], [max(high, 0.0)]],
            fmt="o" if band.get("interior", True) else "^",
            mfc=None if band.get("interior", True) else "none",
            color="#1f4e79",
            capsize=3,
            markersize=5,
        )
    if frontier.law is not None:
        grid = np.geomspace(min(b["compute"] for b in frontier.bands), max(b["compute"] for b in frontier.bands), 50)
        right.plot(grid, frontier.law(grid), linewidth=1.3, label=frontier.describe())
        right.legend(fontsize=7)
    log_axes(right)
    right.set_xlabel(axis_label(fit.x))
    right.set_ylabel(f"N_opt ({UNITS.get(fit.x2, fit.x2)})")
    right.set_title("compute-optimal size N_opt(C) (● interior, △ edge: a bound; bars: sizes tried)", fontsize=8)
    _notes(right, frontier.warnings)
    figure.tight_layout()
    path = out / f"frontier_{safe_name(fit.y)}.png"
    figure.savefig(path)
    return [result], path


def _size_colours(params: pd.Series) -> dict[str, Any]:
    """Scatter keywords that colour points by model size on a log scale."""
    from matplotlib.colors import LogNorm

    return {"c": params.to_numpy(float), "cmap": "viridis", "norm": LogNorm(params.min(), params.max())}
