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
        "wrapped ({'model': ...}, DeepSpeed {'module': ...}, 'module.' prefixes). MAE decoder keys are dropped. The "
        "model, img_size, patch and pool of the checkpoint's consolidated.json go into the safetensors metadata (a .pt "
        "gets a .json sidecar).\n\nexample: maws-scale export runs/demo/wsp/consolidated.pt --out vit.safetensors "
        "--model vit_tiny_p4",
    )
    parser.add_argument(
        "checkpoint",
        help="state dict file, or a training checkpoint directory (step_*: any step, any ZeRO stage or TP size; "
        "consolidated offline first)",
    )
    parser.add_argument("--out", required=True, help="output file")
    parser.add_argument("--format", choices=["pt", "safetensors"], help="default: from --out's suffix, else pt")
    parser.add_argument("--encoder-only", action="store_true", help="drop the classification head")
    parser.add_argument("--model", help="registry name: check the result loads strictly into that encoder")
    parser.add_argument(
        "--img-size",
        type=int,
        help="resample pos_embed for this resolution (needs --model; default: the checkpoint's own, from its "
        "consolidated.json or its pos_embed; a resample is always reported)",
    )
    parser.set_defaults(func=_run)


def _sidecar(source: Path) -> dict:
    """What ``consolidated.json`` (written beside a trained stage's weights) says about the model, if present."""
    import json

    path = source.with_suffix(".json")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _export_step(args: argparse.Namespace, step_dir: Path, console: Console) -> int:
    """A ``step_*`` checkpoint: consolidate it offline (TP shards merged by the layout saved with it) into a
    temporary state dict with the run's model description, then export that."""
    import tempfile

    from maws_scale.config import ConfigError, load_config
    from maws_scale.parallel.plan import consolidate_checkpoint
    from maws_scale.train.checkpoint import read_checkpoint
    from maws_scale.train.loop import weights_meta

    try:
        info = read_checkpoint(step_dir)
    except ConfigError as err:
        console.print(f"[red]export: {str(err).removeprefix('checkpoint.resume: ')}[/]")
        return 1
    run_config = step_dir.parent.parent / "config.yaml"  # <output_dir>/<stage>/checkpoints/step_*
    meta = weights_meta(load_config(run_config)) if run_config.is_file() else {}
    with tempfile.TemporaryDirectory() as tmp:
        consolidated = consolidate_checkpoint(info, Path(tmp) / "consolidated.pt", meta)
        console.print(f"export: consolidated {step_dir} (step {info.step}) offline")
        return _run(argparse.Namespace(**{**vars(args), "checkpoint": str(consolidated)}))


def _run(args: argparse.Namespace) -> int:
    import json
    import math

    import torch

    from maws_scale.models import build_encoder
    from maws_scale.models.registry import UnknownModelError, get_spec
    from maws_scale.models.state import adapt_state_dict, load_state_dict_file, to_timm

    console = Console(stderr=True)
    source = Path(args.checkpoint)
    if source.is_dir():
        return _export_step(args, source, console)
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
    meta = _sidecar(source)
    info = {k: meta[k] for k in ("model", "img_size", "patch", "pool", "stage", "step") if meta.get(k) is not None}
    grid = math.isqrt(state["pos_embed"].shape[1] - 1) if "pos_embed" in state else None
    if args.model:
        try:
            patch = get_spec(args.model).patch
        except UnknownModelError as err:
            console.print(f"[red]export: --model: {err}[/]")
            return 2
        # the checkpoint's own resolution unless --img-size asks for another: never resample silently
        own = info.get("img_size") or (grid * patch if grid else None)
        img_size = args.img_size or own
        num_classes = state["head.weight"].shape[0] if "head.weight" in state else 0
        pooling = {"fc_norm": "fc_norm.weight" in state}  # fine-tuned with MAE's global pool: timm's fc_norm=True
        if info.get("pool") in ("cls", "gap", "map", "max"):
            pooling["pool"] = info["pool"]
        target = build_encoder(args.model, img_size=img_size, num_classes=num_classes, device="meta", **pooling)
        state = adapt_state_dict(state, target)
        own_state = target.state_dict()
        problems = [f"missing {k}" for k in own_state if k not in state]
        problems += [f"unexpected {k}" for k in state if k not in own_state]
        problems += [
            f"{k}: {tuple(state[k].shape)} vs {tuple(own_state[k].shape)}"
            for k in own_state
            if k in state and state[k].shape != own_state[k].shape
        ]
        if problems:
            shown = "; ".join(problems[:6]) + (f"; … ({len(problems)} in all)" if len(problems) > 6 else "")
            console.print(f"[red]export: the checkpoint does not fit --model {args.model}: {shown}[/]")
            return 1
        new_grid = math.isqrt(state["pos_embed"].shape[1] - 1) if "pos_embed" in state else grid
        if grid and new_grid != grid:
            console.print(
                f"[yellow]export: pos_embed resampled from {grid}×{grid} to {new_grid}×{new_grid} patches "
                f"(img_size {own} → {img_size}, --img-size)[/]"
            )
        info.update(model=args.model, img_size=img_size, patch=patch)
    elif grid and "patch" in info:
        info.setdefault("img_size", grid * info["patch"])
    fmt = args.format or ("safetensors" if args.out.endswith(".safetensors") else "pt")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "pt", "naming": "timm", **{k: str(v) for k, v in info.items()}}
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(out), metadata=metadata)
    else:
        torch.save(state, out)
        out.with_suffix(".json").write_text(json.dumps(metadata, indent=2))
    head = "with head" if any(k.startswith("head.") for k in state) else "encoder only"
    shown = ", ".join(f"{k} {v}" for k, v in info.items() if k in ("model", "img_size", "pool"))
    shown = f", {shown}" if shown else ""
    console.print(f"exported {len(state)} tensors ({head}, timm naming{shown}) to {out} [{fmt}]")
    return 0
