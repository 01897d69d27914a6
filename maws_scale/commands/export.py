"""`maws-scale export CHECKPOINT --out FILE`: write a checkpoint in timm / MAWS naming (.pt or .safetensors)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rich.console import Console
from rich.markup import escape


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


def _usage_problem(args: argparse.Namespace) -> str | None:
    """What makes the command line unusable before anything is read (exit 2), or None."""
    from maws_scale.config import MAX_IMG_SIZE

    if args.img_size is not None and not 0 < args.img_size <= MAX_IMG_SIZE:
        return f"--img-size {args.img_size}: must be a positive number of pixels, at most {MAX_IMG_SIZE}"
    if args.img_size and not args.model:
        return "--img-size needs --model (the encoder to resample pos_embed for)"
    if Path(args.out).is_dir() or args.out.endswith(("/", os.sep)):
        return f"--out {args.out} is a directory; give a file name (e.g. {Path(args.out) / 'vit.safetensors'})"
    return None


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
    from maws_scale.errors import RunError
    from maws_scale.parallel.consolidate import consolidate_checkpoint
    from maws_scale.train.checkpoint import read_checkpoint
    from maws_scale.train.loop import weights_meta

    try:
        info = read_checkpoint(step_dir)
    except ConfigError as err:
        console.print(f"[red]export: {str(err).removeprefix('checkpoint.resume: ')}[/]")
        return 1
    if (damage := info.damage()) is not None:  # the marker records every file's size: a cut file is caught here
        console.print(f"[red]export: {step_dir} is damaged: {escape(damage)}[/]")
        return 1
    run_config = step_dir.parent.parent / "config.yaml"  # <output_dir>/<stage>/checkpoints/step_*
    meta = weights_meta(load_config(run_config)) if run_config.is_file() else {}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            consolidated = consolidate_checkpoint(info, Path(tmp) / "consolidated.pt", meta)
        except RunError:
            raise  # non-finite weights, a failed write: one line from the CLI
        except Exception as err:  # files of the recorded sizes but damaged bytes raise many types
            reason = escape(str(err).strip()[:200])
            console.print(f"[red]export: cannot read {step_dir}: {type(err).__name__}: {reason}[/]")
            return 1
        console.print(f"export: consolidated {step_dir} (step {info.step}) offline")
        return _run(argparse.Namespace(**{**vars(args), "checkpoint": str(consolidated)}))


def _run(args: argparse.Namespace) -> int:
    import json
    import math

    from maws_scale.errors import write_atomic
    from maws_scale.files import torch_save
    from maws_scale.models import build_encoder
    from maws_scale.models.registry import UnknownModelError, get_spec
    from maws_scale.models.state import (
        adapt_state_dict,
        load_state_dict_file,
        non_finite_tensors,
        to_timm,
    )

    console = Console(stderr=True, soft_wrap=True)  # one line per message, never wrapped mid-path
    source = Path(args.checkpoint)
    if (usage := _usage_problem(args)) is not None:
        console.print(f"[red]export: {escape(usage)}[/]")
        return 2
    if source.is_dir():
        return _export_step(args, source, console)
    if not source.is_file():
        console.print(f"[red]export: checkpoint not found: {source}[/]")
        return 1
    try:
        state = to_timm(load_state_dict_file(source), head=not args.encoder_only)
    except (ValueError, RuntimeError, OSError) as err:
        console.print(f"[red]export: cannot read {source}: {escape(str(err))}[/]")
        return 1
    if bad := non_finite_tensors(state):
        shown = ", ".join(bad[:5]) + (", ..." if len(bad) > 5 else "")
        console.print(
            f"[red]export: {source}: {len(bad)} of {len(state)} tensors hold NaN/Inf ({shown}); not exported[/]"
        )
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
        if args.img_size and args.img_size % patch:
            console.print(f"[red]export: --img-size {args.img_size} is not a multiple of the patch size {patch}[/]")
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

        def write(tmp: Path) -> None:
            save_file(state, str(tmp), metadata=metadata)  # safetensors creates its files 0600
            tmp.chmod(_default_mode())  # the same mode as .pt: what the umask gives a new file (0644 under 022)

        write_atomic(out, write, "exported weights")
    else:
        write_atomic(out, lambda tmp: torch_save(state, tmp), "exported weights")
        sidecar = json.dumps(metadata, indent=2)
        write_atomic(out.with_suffix(".json"), lambda tmp: tmp.write_text(sidecar), "export metadata")
    head = "with head" if any(k.startswith("head.") for k in state) else "encoder only"
    shown = ", ".join(f"{k} {v}" for k, v in info.items() if k in ("model", "img_size", "pool"))
    shown = f", {shown}" if shown else ""
    console.print(f"exported {len(state)} tensors ({head}, timm naming{shown}) to {out} [{fmt}]")
    return 0


def _default_mode() -> int:
    """The mode a newly created file gets under the current umask (read without changing it for long)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask
