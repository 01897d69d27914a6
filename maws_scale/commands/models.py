"""`maws-scale models`: the registry as a table — shapes, parameters, and GFLOPs per image for MAE and WSP."""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

COLUMNS = [
    ("name", "model"),
    ("width", "width"),
    ("depth", "depth"),
    ("heads", "heads"),
    ("patch", "patch"),
    ("img_size", "img"),
    ("params", "params M"),
    ("mae_params", "MAE params M"),
    ("mae_fwd_flops", "MAE fwd GF"),
    ("mae_step_flops", "MAE step GF"),
    ("wsp_fwd_flops", "WSP fwd GF"),
    ("wsp_step_flops", "WSP step GF"),
]
_SCALE = {"params": 1e6, "flops": 1e9}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list the model sizes: shapes, parameters, GFLOPs per image (MAE and WSP training steps)",
        description="Parameters: encoder without head (MAE: with decoder). GFLOPs are matmul FLOPs per image: MAE "
        "with its decoder at the given mask ratio, WSP with a num-classes head; step = forward + backward (3×).",
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    output.add_argument("--markdown", action="store_true", help="print a Markdown table (docs/models.md)")
    parser.add_argument("--num-classes", type=int, default=1000, help="WSP head size (default 1000)")
    parser.add_argument("--mask-ratio", type=float, default=0.75, help="MAE mask ratio (default 0.75)")
    parser.add_argument("--text", action="store_true", help="only the text towers (clip, mae_clip, lit stages)")
    parser.set_defaults(func=_run)


def model_rows(num_classes: int = 1000, mask_ratio: float = 0.75) -> list[dict]:
    """One row per registry model: shapes, parameter counts (meta device; encoder without head, MAE with decoder)
    and matmul FLOPs per image (forward, and training step = 3 × forward) from :mod:`maws_scale.models.flops`."""
    from maws_scale.models import MODELS, build_encoder, build_mae
    from maws_scale.models.flops import forward_flops

    rows = []
    for name, spec in MODELS.items():
        params = sum(p.numel() for p in build_encoder(name, device="meta").parameters())
        mae_params = sum(p.numel() for p in build_mae(name, device="meta").parameters())
        mae = forward_flops(name, "mae", mask_ratio=mask_ratio)
        wsp = forward_flops(name, "wsp", num_classes=num_classes)
        rows.append(
            {
                "name": name,
                "width": spec.width,
                "depth": spec.depth,
                "heads": spec.heads,
                "patch": spec.patch,
                "img_size": spec.img_size,
                "params": params,
                "mae_params": mae_params,
                "mae_fwd_flops": mae,
                "mae_step_flops": 3 * mae,
                "wsp_fwd_flops": wsp,
                "wsp_step_flops": 3 * wsp,
            }
        )
    return rows


def _cell(key: str, value) -> str:
    scale = next((v for k, v in _SCALE.items() if key.endswith(k)), None)
    if scale is not None:
        value = value / scale
        if value >= 100:
            return f"{value:,.1f}"
        return f"{value:.2f}" if value >= 1 else f"{value:.3f}"
    return str(value)


def markdown_table(rows: list[dict]) -> str:
    """Rows as a GitHub Markdown table (what docs/models.md holds)."""
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |"]
    lines.append("|" + "|".join("---" if key == "name" else "---:" for key, _ in COLUMNS) + "|")
    for row in rows:
        lines.append("| " + " | ".join(_cell(key, row[key]) for key, _ in COLUMNS) + " |")
    return "\n".join(lines)


TEXT_COLUMNS = [
    ("name", "text model"),
    ("width", "width"),
    ("depth", "depth"),
    ("heads", "heads"),
    ("context_length", "context"),
    ("vocab_size", "vocab"),
    ("pool", "pool"),
    ("causal", "causal"),
    ("params", "params M"),
    ("fwd_flops", "fwd GF"),
]
EXAMPLE_VOCAB = 4096  # towers without a vocabulary of their own take the tokenizer's; counted at this size


def text_rows() -> list[dict]:
    """One row per text tower: shape and parameters (embedding tables included; meta device)."""
    import torch

    from maws_scale.models.flops import block_flops
    from maws_scale.models.text import TextTransformer
    from maws_scale.models.text_registry import TEXT_MODELS

    rows = []
    for name, spec in TEXT_MODELS.items():
        vocab = spec.vocab_size or EXAMPLE_VOCAB
        with torch.device("meta"):
            params = sum(p.numel() for p in TextTransformer.from_spec(spec, vocab).parameters())
        rows.append(
            {
                "name": name,
                "width": spec.width,
                "depth": spec.depth,
                "heads": spec.heads,
                "context_length": spec.context_length,
                "vocab_size": spec.vocab_size or f"tokenizer ({EXAMPLE_VOCAB})",
                "pool": spec.pool,
                "causal": spec.causal,
                "params": params,
                "fwd_flops": spec.depth * block_flops(spec.context_length, spec.width, spec.mlp_hidden),
            }
        )
    return rows


def _text(args: argparse.Namespace, console: Console) -> None:
    rows = text_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
    elif args.markdown:
        lines = ["| " + " | ".join(title for _, title in TEXT_COLUMNS) + " |"]
        lines.append("|" + "|".join("---" if k == "name" else "---:" for k, _ in TEXT_COLUMNS) + "|")
        lines += ["| " + " | ".join(_cell(k, r[k]) for k, _ in TEXT_COLUMNS) + " |" for r in rows]
        print("\n".join(lines))
    else:
        table = Table(title=f"text towers (params with the embedding table; vocab-less towers at {EXAMPLE_VOCAB})")
        for key, title in TEXT_COLUMNS:
            table.add_column(title, justify="left" if key == "name" else "right")
        for row in rows:
            table.add_row(*(_cell(key, row[key]) for key, _ in TEXT_COLUMNS))
        console.print(table)


def _run(args: argparse.Namespace) -> int:
    if args.text:
        _text(args, Console(width=140))
        return 0
    if not 0.0 <= args.mask_ratio < 1.0:
        raise SystemExit(f"--mask-ratio must be in [0, 1), got {args.mask_ratio}")
    if args.num_classes < 1:
        raise SystemExit(f"--num-classes must be positive, got {args.num_classes}")
    rows = model_rows(args.num_classes, args.mask_ratio)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if args.markdown:
        print(markdown_table(rows))
        return 0
    table = Table(
        title=f"maws-scale models: GFLOPs per image (MAE mask {args.mask_ratio:g} + decoder; "
        f"WSP {args.num_classes}-class head)"
    )
    for key, title in COLUMNS:
        table.add_column(title, justify="left" if key == "name" else "right")
    for row in rows:
        table.add_row(*(_cell(key, row[key]) for key, _ in COLUMNS))
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 140)
    console.print(table)
    _text(args, console)
    return 0
