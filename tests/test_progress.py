"""Counted progress (issue 25): i/N and an ETA on a terminal, plain lines in a log file; ``eval`` uses it."""

from __future__ import annotations

import io

import torch
from rich.console import Console

from maws_scale.progress import counted_progress


def _run(console: Console, total: int | None, steps: int) -> str:
    with counted_progress("features", total, console=console, unit="images") as advance:
        for _ in range(steps):
            advance(5)
    return console.file.getvalue()


def test_a_log_file_gets_plain_lines_with_i_of_n_and_an_eta():
    text = _run(Console(file=io.StringIO(), force_terminal=False, width=200), total=100, steps=20)
    lines = text.splitlines()
    assert len(lines) == 10 and "\x1b" not in text and "\r" not in text
    assert lines[0].startswith("features: 10/100 images, elapsed 0:00:00, ETA ")
    assert lines[-1].startswith("features: 100/100 images") and lines[-1].endswith("ETA 0:00:00")
    unknown = _run(Console(file=io.StringIO(), force_terminal=False, width=200), total=None, steps=3)
    assert unknown.splitlines() == ["features: 15/? images, elapsed 0:00:00, ETA ?"]  # at least the final count


def test_a_terminal_gets_a_bar_with_i_of_n_and_an_eta():
    text = _run(Console(file=io.StringIO(), force_terminal=True, width=200), total=100, steps=20)
    assert "/100" in text and "ETA" in text


def test_disabled_progress_prints_nothing():
    console = Console(file=io.StringIO(), force_terminal=False)
    with counted_progress("x", 10, console=console, enabled=False) as advance:
        advance(10)
    assert console.file.getvalue() == ""


def test_eval_feature_extraction_reports_progress_on_stderr_in_a_log(capsys):
    """``maws-scale eval`` writing to a log file (not a TTY): i/N lines with an ETA on stderr, stdout (--json) clean."""
    from maws_scale.eval.features import extract_features
    from maws_scale.models import build_encoder

    encoder = build_encoder("vit_micro_p4")
    size = encoder.img_size
    batch = {"images": torch.zeros(4, 3, size, size, dtype=torch.uint8), "labels": [0, 1, 0, 1]}
    extract_features(encoder, [batch] * 5, total=20, description="probe-test features")
    out, err = capsys.readouterr()
    assert out == ""
    assert "probe-test features: 20/20 images" in err and "ETA" in err
