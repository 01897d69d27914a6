"""Plot helpers shared by the report modules: a headless figure, file-safe names, labelled log axes."""

from __future__ import annotations

import re
from typing import Any


def new_figure(width: float = 6.0, height: float = 4.0, dpi: int = 100) -> Any:
    """A matplotlib Figure drawn by the Agg canvas (no display, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(figure)
    return figure


def safe_name(name: str) -> str:
    """``name`` with every run of characters other than letters, digits, ``_.-`` turned into one ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")


def log_axes(axes: Any, x: bool = True, y: bool = True) -> None:
    """Log scales whose ticks read as 10^11, 2×10^11, 5×10^11 … (x) and 0.75, 0.8 … (y: losses), also when the data
    spans less than a decade."""
    from matplotlib.ticker import FuncFormatter, LogFormatterSciNotation, LogLocator

    plain = FuncFormatter(lambda value, _: f"{value:.3g}")
    for on, axis, scale, is_y in ((x, axes.xaxis, axes.set_xscale, False), (y, axes.yaxis, axes.set_yscale, True)):
        if not on:
            continue
        scale("log")
        axis.set_major_locator(LogLocator(base=10, subs=(1.0,) if not is_y else (1.0, 2.0, 5.0)))
        axis.set_minor_locator(LogLocator(base=10, subs=(2.0, 5.0) if not is_y else tuple(range(1, 10))))
        if is_y:  # a loss axis rarely spans a decade: plain numbers
            axis.set_major_formatter(plain)
            axis.set_minor_formatter(plain)
        else:
            axis.set_minor_formatter(LogFormatterSciNotation(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    axes.grid(alpha=0.3, which="both")
