"""RunConfig: YAML loading, dotted overrides, cross-field validation with the key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from maws_scale.config import ConfigError, RunConfig, load_config

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_validates_and_opens_with_its_command(path: Path) -> None:
    config = load_config(path)
    assert isinstance(config, RunConfig)
    first = path.read_text().splitlines()[0]
    assert first.startswith("# Run: ") and ("maws-scale" in first or "maws_scale.cli" in first)


def test_defaults_load_without_a_file() -> None:
    config = load_config(None)
    assert config.stage == "mae" and config.mae.mask_ratio == 0.75
    assert config.optim.betas == (0.9, 0.95)


def test_dotted_overrides_are_typed_and_applied(tmp_path: Path) -> None:
    path = write(tmp_path, "model:\n  name: vit_tiny_p4\ntrain:\n  steps: 10\n")
    config = load_config(path, ["model.name=vit_l16", "optim.lr=1e-3", "parallel.zero_stage=3", "train.steps=7"])
    assert config.model.name == "vit_l16"
    assert config.optim.lr == pytest.approx(1e-3)
    assert config.parallel.zero_stage == 3
    assert config.train.steps == 7


def test_unknown_key_is_refused_with_a_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, "optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown key 'optim\.lrr'; did you mean 'optim\.lr'"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"unknown key 'modle\.name'"):
        load_config(None, ["modle.name=vit_b16"])


def test_wrong_type_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"train\.global_batch"):
        load_config(None, ["train.global_batch=lots"])


def test_tp_must_divide_heads() -> None:
    with pytest.raises(ConfigError, match=r"parallel\.tp=5 .* 12 attention heads of vit_b16"):
        load_config(None, ["model.name=vit_b16", "parallel.tp=5"])
    assert load_config(None, ["model.name=vit_6.5b14", "parallel.tp=8"]).parallel.tp == 8


def test_unknown_model_suggests_the_closest() -> None:
    with pytest.raises(ConfigError, match=r"model\.name: unknown model 'vit_l17'; did you mean 'vit_l16'"):
        load_config(None, ["model.name=vit_l17"])


def test_batch_layout_checks_global_equals_micro_accum_dp() -> None:
    config = load_config(None, ["train.global_batch=256", "train.micro_batch=16", "parallel.tp=2"])
    assert config.batch_layout(world_size=8) == (4, 4)
    with pytest.raises(ConfigError, match=r"train\.global_batch=256 is not a multiple"):
        config.batch_layout(world_size=12)  # dp 6: 16 * 6 does not divide 256
    with pytest.raises(ConfigError, match=r"parallel\.tp=2 does not divide the world size 3"):
        config.batch_layout(world_size=3)
    fixed = load_config(None, ["train.global_batch=256", "train.micro_batch=16", "train.grad_accum=2"])
    with pytest.raises(ConfigError, match=r"train\.grad_accum=2"):
        fixed.batch_layout(world_size=4)


def test_train_length_defaults_and_exclusivity() -> None:
    assert load_config(None, ["train.global_batch=32"]).train.steps == 1000
    assert load_config(None, ["train.epochs=2"]).train.steps is None
    with pytest.raises(ConfigError, match=r"set train\.steps \(5\) or train\.epochs \(1\.0\), not both"):
        load_config(None, ["train.steps=5", "train.epochs=1"])


def test_offload_needs_zero() -> None:
    with pytest.raises(ConfigError, match=r"parallel\.offload=all .* parallel\.zero_stage=3"):
        load_config(None, ["parallel.zero_stage=2", "parallel.offload=all"])


def test_peak_lr_follows_the_mae_scaling_rule() -> None:
    config = load_config(None, ["train.global_batch=4096", "train.micro_batch=64", "optim.base_lr=1.5e-4"])
    assert config.peak_lr() == pytest.approx(1.5e-4 * 4096 / 256)
    assert load_config(None, ["optim.lr=0.01"]).peak_lr() == pytest.approx(0.01)


def test_stage_overrides_apply_and_are_validated_up_front(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "train:\n  steps: 10\nstages:\n  mae:\n    train.steps: 30\n  wsp:\n    optim:\n      base_lr: 0.002\n",
    )
    config = load_config(path)
    assert config.for_stage("mae").train.steps == 30
    wsp = config.for_stage("wsp")
    assert wsp.stage == "wsp" and wsp.optim.base_lr == pytest.approx(0.002) and wsp.train.steps == 10
    bad = write(tmp_path, "stages:\n  wsp:\n    optim.lrr: 1\n")
    with pytest.raises(ConfigError, match=r"stages\.wsp: unknown key 'optim\.lrr'"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"unknown stage 'stages\.distill'"):
        load_config(write(tmp_path, "stages:\n  distill: {}\n"))


def test_standalone_wsp_from_mae_needs_a_checkpoint() -> None:
    config = load_config(None, ["stage=wsp"])
    with pytest.raises(ConfigError, match=r"wsp\.init_from"):
        config.check_standalone()
    load_config(None, ["stage=wsp", "wsp.init=random"]).check_standalone()


def test_bad_yaml_and_missing_file_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"run\.yaml: not valid YAML"):
        load_config(write(tmp_path, "model: [unclosed\n"))
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read config"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"top level must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_override_syntax_error() -> None:
    with pytest.raises(ConfigError, match=r"override 'model\.name' is not of the form key=value"):
        load_config(None, ["model.name"])


def test_yaml_round_trip() -> None:
    config = load_config(None, ["model.pool=gap", "tracking.tags.sweep=s1"])
    assert config.tracking.tags == {"sweep": "s1"}
    again = RunConfig.model_validate(__import__("yaml").safe_load(config.to_yaml()))
    assert again == config


PIPELINE = """\
train: {steps: 10}
stages:
  mae: {train.steps: 30}
  wsp:
    train: {steps: 300}
    tracking.tags: {a: '1'}
"""


def test_command_line_overrides_win_over_stage_sections(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, PIPELINE), ["train.steps=20", "tracking.tags.b=x"])
    for stage in ("mae", "wsp"):
        assert config.for_stage(stage).train.steps == 20, stage  # not the stages.<stage> value
    assert config.for_stage("wsp").tracking.tags == {"a": "1", "b": "x"}  # a mapping above the key is updated
    again = RunConfig.model_validate(config.model_dump())  # what a sweep writes and its point re-reads
    assert again.for_stage("wsp").train.steps == 20
    # a stage's own key can still be set from the command line, nested or dotted in the file
    staged = load_config(write(tmp_path, PIPELINE), ["stages.wsp.train.steps=7", "stages.mae.optim.lr=0.01"])
    assert staged.for_stage("wsp").train.steps == 7 and staged.for_stage("mae").train.steps == 30
    assert staged.for_stage("mae").optim.lr == pytest.approx(0.01)
    with pytest.raises(ConfigError, match=r"override stages\.wsp: unknown key 'train\.stepz'"):
        load_config(write(tmp_path, PIPELINE), ["stages.wsp.train.stepz=7"])
    with pytest.raises(ConfigError, match=r"unknown stage 'stages\.distill'"):
        load_config(write(tmp_path, PIPELINE), ["stages.distill.train.steps=7"])


def test_resolved_applies_the_selected_stage(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, PIPELINE), ["stage=wsp"])
    assert config.resolved().train.steps == 300 and config.resolved().stage == "wsp"
    assert load_config(None).resolved().train.steps == 1000  # no stages: itself


def test_model_shape_keys_override_the_preset() -> None:
    from maws_scale.model_config import build_model

    cfg = load_config(None, ["model.name=vit_micro_p4", "model.width=48", "model.depth=3", "model.heads=4"])
    assert (cfg.spec.width, cfg.spec.depth, cfg.spec.heads, cfg.spec.patch) == (48, 3, 4, 4)
    assert cfg.model_label == "vit_micro_p4(width=48,depth=3,heads=4)"
    model = build_model(cfg, device="meta")
    assert len(model.blocks) == 3 and model.pos_embed.shape[-1] == 48
    with pytest.raises(ConfigError, match=r"model\.heads=5 does not divide model\.width=48"):
        load_config(None, ["model.width=48", "model.heads=5"])
    with pytest.raises(ConfigError, match=r"parallel\.tp=8 does not divide the 4 attention heads"):
        load_config(None, ["model.width=48", "model.heads=4", "parallel.tp=8"])
    with pytest.raises(ConfigError, match=r"not a multiple of the patch size 7"):
        load_config(None, ["model.patch=7", "model.img_size=32"])
