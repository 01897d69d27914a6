"""`maws-scale export CHECKPOINT --out FILE`: write a checkpoint in timm / MAWS naming (.pt or .safetensors)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="convert a checkpoint to timm/MAWS naming (encoder only or with head), .pt or .safetensors",
        description="Input: a plain state dict (.pt/.pth/.safetensors) with timm-named or maws-scale keys, also "
        "wrapped ({'model': ...}, DeepSpeed {'module': ...}, 'module.' prefixes). MAE decoder keys are dropped.",
    )
    parser.add_argument("checkpoint", help="state dict file")
    parser.add_argument("--out", required=True, help="output file")
    parser.add_argument("--format", choices=["pt", "safetensors"], help="default: from --out's suffix, else pt")
    parser.add_argument("--encoder-only", action="store_true", help="drop the classification head")
    parser.add_argument("--model", help="registry name: check the result loads strictly into that encoder")
    parser.add_argument("--img-size", type=int, help="resample pos_embed for this resolution (needs --model)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import torch

    from maws_scale.models import build_encoder
    from maws_scale.models.state import adapt_state_dict, load_state_dict_file, to_timm

    console = Console(stderr=True)
    source = Path(args.checkpoint)
    if not source.is_file():
        console.print(f"[red]export: checkpoint not found: {source}[/]")
        return 1
    if args.img_size and not args.model:
        console.print("[red]export: --img-size needs --model (the encoder to resample pos_embed for)[/]")
        return 2
    try:
        state = to_timm(load_state_dict_file(source), head=not args.encoder_only)
    except (ValueError, RuntimeError) as err:
        console.print(f"[red]export: cannot read {source}: {err}[/]")
        return 1
    if args.model:
        num_classes = state["head.weight"].shape[0] if "head.weight" in state else 0
        target = build_encoder(args.model, img_size=args.img_size, num_classes=num_classes, device="meta")
        state = adapt_state_dict(state, target)
        own = target.state_dict()
        problems = [f"missing {k}" for k in own if k not in state]
        problems += [f"unexpected {k}" for k in state if k not in own]
        problems += [
            f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
            for k in own
            if k in state and state[k].shape != own[k].shape
        ]
        if problems:
            shown = "; ".join(problems[:6]) + (f"; … ({len(problems)} in all)" if len(problems) > 6 else "")
            console.print(f"[red]export: the checkpoint does not fit --model {args.model}: {shown}[/]")
            return 1
    fmt = args.format or ("safetensors" if args.out.endswith(".safetensors") else "pt")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(out), metadata={"format": "pt", "naming": "timm"})
    else:
        torch.save(state, out)
    head = "with head" if any(k.startswith("head.") for k in state) else "encoder only"
    console.print(f"exported {len(state)} tensors ({head}, timm naming) to {out} [{fmt}]")
    return 0
