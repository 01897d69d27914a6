"""`maws-scale plan CONFIG [KEY=VALUE ...]`: will it fit, and which layout is fastest? (analytic, no GPU needed)."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from maws_scale.commands._common import add_config_arguments, config_from_args
from maws_scale.commands._intermixed import allow_intermixed
from maws_scale.config import ConfigError

GPU_PEAKS = {"a100": "A100", "h100": "H100", "h200": "H200"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = allow_intermixed(
        subparsers.add_parser(
            "plan",
            help="memory per GPU (params, grads, optimizer, activations, buffers) and a fits / does-not-fit verdict",
            description="Analytic memory per GPU for the config's layout (ZeRO stage, TP, activation checkpointing, "
            "offload, micro-batch) as DeepSpeed 0.19 holds it, FLOPs per step, the largest micro-batch that fits, "
            "and with --search the fastest fitting layout by a simple speed model (docs/bench.md). Exits 1 when the "
            "config's layout does not fit (with a hint). Searched layouts of another ZeRO stage use the shipped "
            "ds_configs template of that stage.\n\nexample: maws-scale plan configs/vit_2b14_maws.yaml --gpus 64 "
            "--search",
        )
    )
    add_config_arguments(parser)
    parser.add_argument(
        "--gpus",
        type=int,
        help="GPUs in the job (default: parallel.world_size, else a jobs/*.yaml launch spec of the config, else 1)",
    )
    parser.add_argument("--gpu-mem", default="80GiB", help="memory per GPU (default 80GiB)")
    parser.add_argument("--reserve", default="2GiB", help="kept free: CUDA context, NCCL, fragmentation (2GiB)")
    parser.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node (default 8)")
    parser.add_argument("--host-mem", help="CPU memory per node for offloaded states, e.g. 1TiB (default: unchecked)")
    parser.add_argument("--gpu", choices=sorted(GPU_PEAKS), default="h100", help="datasheet peak to use (h100)")
    parser.add_argument("--peak-tflops", type=float, help="override the peak TFLOP/s per GPU")
    parser.add_argument(
        "--num-classes",
        type=int,
        help="WSP head size (default wsp.num_classes, else the vocabulary's size, else 27,000 with a note)",
    )
    parser.add_argument("--search", action="store_true", help="search ZeRO × TP × checkpointing × offload × micro")
    parser.add_argument("--top", type=int, default=12, help="rows of the search table (default 12)")
    parser.add_argument(
        "--data-rate",
        type=float,
        help="img/s per loader worker measured by `maws-scale bench --data`: print the workers per GPU it needs",
    )
    parser.add_argument("--cores-per-node", type=int, help="with --data-rate: CPU cores per node (default: this one's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.set_defaults(func=run)


def hardware_from_args(args: argparse.Namespace, cfg, gpus: int) -> object:
    """The machine of the command line for ``cfg`` (its precision picks the datasheet peak) on ``gpus`` GPUs."""
    from maws_scale.perf.planner import Hardware, parse_bytes
    from maws_scale.track.throughput import datasheet_peak_tflops

    peak = args.peak_tflops or datasheet_peak_tflops(GPU_PEAKS[args.gpu], cfg.parallel.precision)
    return Hardware(
        gpus=gpus,
        gpu_mem=parse_bytes(args.gpu_mem),
        reserve=parse_bytes(args.reserve),
        gpus_per_node=args.gpus_per_node,
        peak_tflops=float(peak),
        host_mem=parse_bytes(args.host_mem) if args.host_mem else None,
    )


PLANNED_STAGES = ("mae", "wsp")  # the stages the memory planner models


def stages_to_plan(cfg, overrides: list[str] | None) -> tuple[list, list[str]]:
    """(configs, notes): every MAE / WSP stage a pipeline config runs (its ``stages`` sections), or the one stage of a
    single-stage config or of an explicit ``stage=`` override."""
    from maws_scale.launch.spec import command_stages

    explicit = any(o.split("=", 1)[0].strip() == "stage" for o in overrides or [])
    names = [cfg.stage] if explicit else command_stages(cfg, "pipeline")
    skipped = [n for n in names if n not in PLANNED_STAGES]
    models = " and ".join(PLANNED_STAGES)
    notes = [f"stage {', '.join(skipped)}: not planned (the planner models {models})"] if skipped else []
    planned = [cfg.for_stage(n) if n in cfg.stages else cfg for n in names if n in PLANNED_STAGES]
    if not planned:
        raise ConfigError(f"stage={cfg.stage}: the planner models {models} only")
    return planned, notes


def planned_gpus(args: argparse.Namespace, cfg) -> tuple[int, str | None]:
    """The GPUs to plan for, and a note saying where the number came from when the command line did not give it:
    ``--gpus``, ``parallel.world_size``, a launch spec (``jobs/*.yaml``) that runs this config, else 1."""
    if args.gpus:
        return args.gpus, None
    if cfg.parallel.world_size:
        return cfg.parallel.world_size, None
    found = launch_world_sizes(args.config)
    sizes = sorted(set(found.values()))
    if len(sizes) == 1:
        specs = ", ".join(sorted(found))
        return sizes[0], f"planning {sizes[0]} GPUs, the world size of the launch spec {specs}; --gpus plans another"
    if sizes:
        listed = ", ".join(f"{path} ({n})" for path, n in sorted(found.items()))
        return 1, f"planning 1 GPU: launch specs of this config disagree on the world size ({listed}); give --gpus"
    return 1, "planning 1 GPU: the config sets no parallel.world_size and no launch spec in jobs/ runs it; give --gpus"


def launch_world_sizes(config: str | None) -> dict[str, int]:
    """World size of every launch spec (``jobs/*.yaml`` beside the working directory or the config's folder) whose
    ``config`` is ``config``."""
    from maws_scale.launch.spec import load_job, make_spec

    if not config:
        return {}
    target = Path(config).resolve()
    folders = {Path("jobs").resolve(), target.parent.parent / "jobs"}
    found: dict[str, int] = {}
    for path in sorted(p for folder in folders if folder.is_dir() for p in folder.glob("*.yaml")):
        try:
            spec = make_spec(load_job(path), origin=str(path))
        except ConfigError:
            continue  # not a launch spec (or a broken one: `launch` reports it)
        named = Path(spec.config)
        if target in {named.resolve(), (path.parent.parent / named).resolve()}:
            found[_shown(path)] = spec.world_size()
    return found


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


@contextmanager
def search_progress(console: Console, label: str) -> Iterator[Callable[[int, int], None]]:
    """A ``progress(i, n)`` callback: a rich bar (i/N, ETA) on a terminal, else a plain line every tenth."""
    if console.is_terminal:
        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task(label, total=None)
            yield lambda i, n: bar.update(task, completed=i, total=n)
        return
    start = time.perf_counter()

    def line(i: int, n: int) -> None:
        if i == n or i % max(1, n // 10) == 0:
            elapsed = time.perf_counter() - start
            console.print(
                f"{label}: {i}/{n} layouts, {elapsed:.1f} s, ETA {elapsed / i * (n - i):.1f} s", highlight=False
            )

    yield line


def run(args: argparse.Namespace) -> int:
    from maws_scale.perf.planner import plan_layout, planning_classes, search

    base = config_from_args(args)  # a pipeline config: every stage it runs (or the one named by `stage=`)
    configs, notes = stages_to_plan(base, args.overrides)
    gpus, gpus_note = planned_gpus(args, base)
    notes += [gpus_note] if gpus_note else []
    results = []
    status = Console(stderr=True)
    for cfg in configs:
        hw = hardware_from_args(args, cfg, gpus)
        classes, classes_note = planning_classes(cfg, args.num_classes)
        fused = cfg.model.kernels != "torch"
        plan = plan_layout(cfg, hw, num_classes=classes, fused_kernels=fused)
        plan.notes[:0] = [classes_note] if classes_note else []
        rows = None
        if args.search:
            with search_progress(status, f"plan --search {cfg.stage}") as progress:
                rows = search(cfg, hw, classes, fused, progress=progress)
        results.append((cfg, hw, plan, rows, data_feed(cfg, hw, plan, args)))
    fits = all(plan.fits for _, _, plan, _, _ in results)
    if args.json:
        parts = [stage_json(hw, plan, rows, feed) for _, hw, plan, rows, feed in results]
        # the first stage's plan at the top level (as for a single-stage config), every stage under "stages"
        print(json.dumps({**parts[0], "notes": notes, "stages": parts}))
        return 0 if fits else 1
    console = Console()
    for note in notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    for cfg, hw, plan, rows, feed in results:
        print_plan(console, plan, hw)
        if feed is not None:
            console.print(feed.line(), highlight=False)
        if rows is not None:
            print_search(console, rows, args.top)
        if not plan.fits:
            console.print(f"[yellow]hint:[/] {fit_hint(cfg, rows)}", highlight=False)
    return 0 if fits else 1


def stage_json(hw, plan, rows, feed=None) -> dict:
    """One stage's plan (and search, and data-feed check) as ``plan --json`` prints it."""
    out = {"hardware": vars(hw), "plan": plan.as_dict()}
    if feed is not None:
        out["data_feed"] = {**feed.as_dict(), "line": feed.line()}
    if rows is not None:
        out["search"] = [{**r.plan.as_dict(), "fits": r.fits} for r in rows]
        best = next((r for r in rows if r.fits), None)
        out["best"] = best.plan.as_dict() if best else None
    return out


def data_feed(cfg, hw, plan, args: argparse.Namespace):
    """The data-feed check of ``--data-rate`` (None without it)."""
    from maws_scale.config import ConfigError
    from maws_scale.perf.data_feed import FeedCheck, default_cores

    if args.data_rate is None:
        return None
    if not args.data_rate > 0:
        raise ConfigError(f"--data-rate: {args.data_rate} must be a positive img/s per worker")
    return FeedCheck(
        worker_img_per_s=args.data_rate,
        gpu_img_per_s=plan.speed.est_images_per_s / hw.gpus,
        gpus=hw.gpus,
        cores_per_node=args.cores_per_node or default_cores(),
        gpus_per_node=hw.gpus_per_node,
        num_workers=cfg.data.num_workers,
    )


def fit_hint(cfg, rows) -> str:
    """What to change when the config's own layout does not fit: the fastest fitting layout as overrides."""
    best = next((r for r in rows or [] if r.fits), None)
    if rows is None:
        return "run with --search for the fastest layout that fits, or give more GPUs (--gpus) / --gpu-mem"
    if best is None:
        return "no layout fits: more GPUs (--gpus), a bigger --gpu-mem, or a smaller model / global batch"
    lay = best.plan.layout
    overrides = [
        f"parallel.zero_stage={lay.zero_stage}",
        f"parallel.tp={lay.tp}",
        f"parallel.activation_checkpointing={lay.recompute}",
        f"parallel.offload={lay.offload}",
        f"train.micro_batch={best.micro_batch}",
    ]
    if cfg.parallel.ds_config and lay.zero_stage != cfg.parallel.zero_stage:
        overrides.append("parallel.ds_config=null")
    return "the fastest fitting layout, as overrides: " + " ".join(overrides)


def _gib(value: float) -> str:
    return f"{value / 2**30:,.2f}"


def print_plan(console: Console, plan, hw) -> None:
    mem = plan.memory()
    layout = plan.layout
    console.print(
        f"[bold]{plan.model}[/] {plan.stage}: {plan.params_total / 1e6:,.1f} M parameters, "
        f"{plan.params_per_gpu / 1e6:,.1f} M per GPU (tp {layout.tp}); {hw.gpus} GPUs = dp {plan.dp} × tp {layout.tp}, "
        f"micro {layout.micro_batch} × accum {plan.grad_accum:g}"
    )
    table = Table(title=f"memory per GPU — {layout.label()}", title_justify="left")
    table.add_column("category")
    table.add_column("GiB", justify="right")
    table.add_column("what", overflow="fold")
    s = plan.states
    rows = [
        ("parameters", mem["params"], "model dtype; ZeRO-3: partition + resident vectors"),
        ("gradients", mem["grads"], "model dtype; ZeRO-1/2: params touching this rank's part"),
        ("optimizer", mem["optimizer"], f"fp32 master {_gib(s.master)} + Adam m, v {_gib(s.moments)}"),
        ("activations", mem["activations"], f"{plan.activations_per_sample / 2**20:,.2f} MiB/sample × micro"),
        ("buffers", mem["buffers"], "gradient buckets; ZeRO-3 gathered blocks"),
        ("step temporaries", mem["step_temporaries"], "fp32 gradient copies at the step (replace activations)"),
    ]
    for name, value, what in rows:
        table.add_row(name, _gib(value), what)
    table.add_row(
        "[bold]peak[/]",
        f"[bold]{_gib(mem['peak'])}[/]",
        f"of {_gib(hw.usable)} usable ({_gib(hw.gpu_mem)} − reserve {_gib(hw.reserve)})",
    )
    if s.host:
        limit = f"of {_gib(plan.host_limit)} host per GPU" if plan.host_limit is not None else "host not checked"
        table.add_row("host (CPU)", _gib(s.host), f"offloaded per GPU, {limit}")
    console.print(table)
    if plan.head_params_per_gpu:
        console.print(f"WSP head: {plan.head_params_per_gpu / 1e6:,.2f} M parameters per GPU (vocab-parallel over tp)")
    sp = plan.speed
    console.print(
        f"FLOPs: {plan.flops_per_sample / 1e9:,.1f} GFLOP per sample, {plan.flops_per_step / 1e15:,.2f} PFLOP per "
        f"step; speed model: {sp.est_images_per_s:,.0f} img/s, est. MFU {100 * sp.est_mfu:.1f}% (compute "
        f"{sp.compute_s * 1e3:,.1f} ms, overlapped comm {sp.comm_overlapped_s * 1e3:,.1f} ms, exposed "
        f"{sp.comm_exposed_s * 1e3:,.1f} ms per step)"
    )
    verdict = plan.as_dict()["verdict"]
    if plan.fits:
        console.print(f"[bold green]fits[/]: largest micro-batch that fits {verdict['max_micro_batch']}", end="")
    else:
        console.print(f"[bold red]does not fit[/]: largest micro-batch that fits {verdict['max_micro_batch']}", end="")
    console.print(f" ({verdict['max_micro_batch_for_global_batch']} dividing the global batch {plan.global_batch})")
    if not plan.host_fits:
        console.print("[bold red]offloaded states do not fit the host memory[/] (--host-mem)")
    for note in plan.notes:
        console.print(f"[yellow]note:[/] {note}")


def print_search(console: Console, rows, top: int) -> None:
    table = Table(
        title="layouts at their largest fitting micro-batch, fastest first (speed model)", title_justify="left"
    )
    for col in ("zero", "tp", "ckpt", "offload", "micro", "peak GiB", "host GiB", "est img/s", "est MFU", "fits"):
        table.add_column(col, justify="right")
    fitting = [r for r in rows if r.fits]
    for i, r in enumerate(fitting[:top]):
        p, lay = r.plan, r.plan.layout
        style = "bold green" if i == 0 else None
        table.add_row(
            str(lay.zero_stage),
            str(lay.tp),
            lay.recompute,
            lay.offload,
            str(r.micro_batch),
            _gib(p.peak),
            _gib(p.states.host),
            f"{p.speed.est_images_per_s:,.0f}",
            f"{100 * p.speed.est_mfu:.1f}%",
            "yes",
            style=style,
        )
    console.print(table)
    misses = len(rows) - len(fitting)
    if fitting:
        best = fitting[0].plan.layout
        console.print(f"fastest fitting layout: [bold]{best.label()}[/] ({len(fitting)} fit, {misses} do not)")
    else:
        console.print(f"[bold red]no layout fits[/] ({misses} tried); more GPUs, or a bigger --gpu-mem")
