"""One Layout (parallel/layout.py): built for every shipped config and stage at several world sizes, the planner and
make_plan read the same derived values, and the built model, the DeepSpeed config and the FP8 filter agree."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from maws_scale.config import ConfigError, RunConfig, load_config
from maws_scale.launch.spec import load_job, make_spec
from maws_scale.parallel.distributed import DistInfo
from maws_scale.parallel.ds_config import build_ds_config
from maws_scale.parallel.fp8 import encoder_tokens, fp8_layer
from maws_scale.parallel.layout import FP8_MULTIPLE, derive_layout
from maws_scale.parallel.plan import ParallelPlan, make_plan
from maws_scale.parallel.tp_layout import decoder_shardable
from maws_scale.perf.planner import Hardware, inventory_for, plan_layout, planning_classes, zero_settings

ROOT = Path(__file__).resolve().parents[2]
WORLDS = (1, 8, 64, 512)


def shipped_stage_configs() -> list[tuple[str, RunConfig]]:
    """Every stage of every shipped config (configs/*.yaml) and of every launch spec's config with its overrides."""
    sources = [(p.name, load_config(p)) for p in sorted((ROOT / "configs").glob("*.yaml"))]
    for path in sorted((ROOT / "jobs").glob("*.yaml")):
        spec = make_spec(load_job(path), origin=str(path))
        sources.append((path.name, load_config(ROOT / spec.config, spec.overrides)))
    out = []
    for name, cfg in sources:
        for stage in sorted(set(cfg.stages) | {cfg.stage}):
            out.append((f"{name}:{stage}", cfg.for_stage(stage) if stage in cfg.stages else cfg))
    return out


CASES = shipped_stage_configs()


def test_every_shipped_config_is_covered() -> None:
    names = {name.split(":")[0] for name, _ in CASES}
    assert {p.name for p in (ROOT / "configs").glob("*.yaml")} <= names
    assert {p.name for p in (ROOT / "jobs").glob("*.yaml")} <= names
    assert {name.split(":")[1] for name, _ in CASES} >= {"mae", "wsp", "lit"}


def _variants(cfg: RunConfig) -> list[RunConfig]:
    """The config, and (for a plannable stage) the same with FP8 on where TP allows it (FP8 layers differ)."""
    out = [cfg]
    if cfg.parallel.tp == 1 and cfg.parallel.precision != "fp16":
        raw = cfg.model_dump(mode="json")
        raw["parallel"]["fp8"] = "rowwise"
        # FP8's weight gradients need micro-batch × encoder tokens to be a multiple of 16 (parallel/fp8.py)
        step = FP8_MULTIPLE // math.gcd(FP8_MULTIPLE, encoder_tokens(cfg))
        raw["train"]["micro_batch"] = -(-cfg.train.micro_batch // step) * step
        out.append(RunConfig.model_validate(raw))
    return out


@pytest.mark.parametrize(("name", "cfg"), CASES, ids=[name for name, _ in CASES])
def test_planner_and_make_plan_derive_the_same_layout(name: str, cfg: RunConfig) -> None:
    for variant in _variants(cfg):
        for world in WORLDS:
            try:
                layout = derive_layout(variant, world)
            except ConfigError as err:  # tp does not divide this world: make_plan and the planner refuse alike
                with pytest.raises(ConfigError, match=str(err).split(":")[0]):
                    make_plan(variant, DistInfo(0, world, 0, torch.device("cpu")))
                continue
            if layout.tp == 1:  # make_plan without process groups: data parallelism only
                plan = make_plan(variant, DistInfo(0, world, 0, torch.device("cpu")))
                assert type(plan) is ParallelPlan and plan.layout == layout and plan.dp_size == layout.dp
            if variant.stage not in ("mae", "wsp"):
                continue  # the memory planner models MAE and WSP
            _planner_agrees(variant, world, layout)


def _planner_agrees(cfg: RunConfig, world: int, layout) -> None:
    classes, _ = planning_classes(cfg)
    memory = plan_layout(cfg, Hardware(gpus=world), num_classes=classes)
    assert memory.layout == layout
    assert (memory.dp, memory.grad_accum) == (layout.dp, layout.grad_accum)
    assert (memory.layout.batch_problem() is None) == (not any("global_batch" in n for n in memory.notes))
    # what the model as built, the DeepSpeed config and the FP8 filter say about the same layout
    inv = inventory_for(cfg, classes, layout.tp)
    model = _meta_model(cfg, classes)
    assert inv.decoder_sharded == layout.decoder_sharded == decoder_shardable(model, layout.tp)
    converted = [n for n, m in model.named_modules() if fp8_layer(m, n)] if cfg.parallel.fp8 != "none" else []
    assert {n.split(".", 2)[2] for n in converted} == set(layout.fp8_layers)
    assert len(converted) == cfg.spec.depth * len(layout.fp8_layers)
    zs = zero_settings(cfg, layout.dp, inv)
    assert (zs.stage, zs.zero_init) == (layout.zero_stage, layout.zero_init)
    assert bool(zs.offload_optimizer) == (layout.offload != "none")
    ds = build_ds_config(cfg, layout.dp, max(1, int(layout.grad_accum)), inv.engine_blocks)
    assert ds["data_types"]["grad_accum_dtype"] == layout.accum_dtype


_MODELS: dict[str, torch.nn.Module] = {}


def _meta_model(cfg: RunConfig, classes: int | None) -> torch.nn.Module:
    from maws_scale.model_config import build_model

    key = cfg.model_dump_json(include={"stage", "model", "mae"}) + str(classes)
    if key not in _MODELS:
        _MODELS[key] = build_model(cfg, num_classes=classes, device="meta")
    return _MODELS[key]


def test_the_layout_refuses_what_the_trainer_refuses() -> None:
    cfg = load_config(None, ["parallel.tp=2", "model.name=vit_b16", "train.global_batch=64", "train.micro_batch=8"])
    with pytest.raises(ConfigError, match=r"parallel\.tp=2 does not divide the world size 3"):
        derive_layout(cfg, 3)
    assert derive_layout(cfg, 4).accumulation() == (2, 4)
    with pytest.raises(ConfigError, match=r"train\.global_batch=64 is not a multiple"):
        derive_layout(cfg, 6).accumulation()
    zero0 = load_config(None, ["parallel.zero_stage=0"])
    with pytest.raises(ConfigError, match=r"parallel\.grad_accum_dtype=fp32.*zero_stage>=1"):
        derive_layout(zero0, 1)
    assert derive_layout(load_config(None, ["parallel.zero_stage=0", "parallel.grad_accum_dtype=model"]), 1)


def test_the_layout_has_no_side_effects() -> None:
    import subprocess
    import sys

    # deriving a layout imports neither torch nor DeepSpeed nor megatron: it cannot create groups or touch a device
    code = (
        "import sys\n"
        "from maws_scale.config import load_config\n"
        "from maws_scale.parallel.layout import derive_layout\n"
        "layout = derive_layout(load_config(None, ['parallel.tp=2', 'model.name=vit_b16']), 8)\n"
        "loaded = sorted({'torch', 'deepspeed', 'megatron'} & set(sys.modules))\n"
        "print(layout.dp, layout.tp, layout.decoder_sharded, loaded)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["4", "2", "True", "[]"]
    cfg = load_config(None, ["parallel.tp=2", "model.name=vit_b16"])
    assert hash(derive_layout(cfg, 8)) == hash(derive_layout(cfg, 8))  # a frozen value
