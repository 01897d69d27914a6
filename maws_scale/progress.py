"""Counted progress for long loops: a rich bar (i/N, elapsed, ETA) on a terminal, plain lines in a log file."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

PLAIN_EVERY_S = 10.0  # without a known total, a plain line at most this often


def _clock(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def bar_columns() -> list:
    """The columns of every progress bar of the toolkit: label, bar, i/N, elapsed time, ETA."""
    return [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    ]


@contextmanager
def counted_progress(
    label: str, total: int | None, console: Console | None = None, enabled: bool = True, unit: str = "items"
) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``. On a terminal: a transient rich bar with i/N, elapsed time and ETA. Elsewhere (a log
    file, a pipe): a plain line ``label: i/N unit, elapsed …, ETA …`` at each tenth of ``total`` (every
    :data:`PLAIN_EVERY_S` seconds when the total is unknown) and at the end. Lines go to stderr by default, so a
    command's stdout (``--json``) stays clean."""
    console = console or Console(stderr=True)
    if not enabled:
        yield lambda n: None
        return
    if console.is_terminal:
        with Progress(*bar_columns(), console=console, transient=True) as bar:
            task = bar.add_task(label, total=total)
            yield lambda n: bar.update(task, advance=n)
        return
    start = time.perf_counter()
    state = {"done": 0, "printed": 0, "at": start}
    step = max(1, total // 10) if total else None

    def line() -> None:
        done, elapsed = state["done"], time.perf_counter() - start
        count = f"{done}/{total}" if total else f"{done}/?"
        eta = _clock(elapsed / done * (total - done)) if total and done else "?"
        console.print(f"{label}: {count} {unit}, elapsed {_clock(elapsed)}, ETA {eta}", highlight=False)
        state["printed"], state["at"] = done, time.perf_counter()

    def advance(n: int) -> None:
        state["done"] += n
        if step is not None:
            due = state["done"] // step > state["printed"] // step
        else:
            due = time.perf_counter() - state["at"] >= PLAIN_EVERY_S
        if due:
            line()

    yield advance
    if state["done"] != state["printed"]:
        line()
