"""Configs the adversarial pass found accepted or crashing: each is refused with the key named (a ConfigError)."""

from __future__ import annotations

import pytest

from maws_scale.config import ConfigError, load_config


@pytest.mark.parametrize(
    "override",
    [
        "optim.lr=.inf",
        "optim.lr=.nan",
        "optim.base_lr=.inf",
        "optim.eps=.inf",
        "schedule.min_lr=.inf",
        "train.epochs=.inf",
        "tracking.peak_tflops=.inf",
        "optim.weight_decay=.nan",
        "model.drop_path=.nan",
    ],
)
def test_non_finite_numbers_are_refused(override: str) -> None:
    key = override.partition("=")[0]
    with pytest.raises(ConfigError, match=rf"{key}: .*finite"):
        load_config(None, [override])


@pytest.mark.parametrize("betas", ["[.nan, .95]", "[1.5, .95]", "[-0.1, .95]", "[0.9, 1.0]"])
def test_betas_outside_0_1_are_refused(betas: str) -> None:
    with pytest.raises(ConfigError, match=r"optim: betas must each lie in \[0, 1\)|optim.betas"):
        load_config(None, [f"optim.betas={betas}"])


@pytest.mark.parametrize("value", ["5", "[1, 2]", "text"])
def test_a_stage_section_that_is_not_a_mapping_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match=r"stages.mae must be a mapping"):
        load_config(None, [f"stages.mae={value}"])


def test_a_stage_section_in_yaml_that_is_not_a_mapping_is_refused(tmp_path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("stages:\n  wsp: 5\n")
    with pytest.raises(ConfigError, match=rf"{path}: stages.wsp must be a mapping"):
        load_config(path)


@pytest.mark.parametrize("content", [b"\xff\xfe\x00binary\x00\x81", b"train:\n  steps: 5 \xe9\n"])
def test_a_binary_or_non_utf8_config_file_is_refused(tmp_path, content: bytes) -> None:
    path = tmp_path / "run.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=rf"{path}: not a UTF-8 text file"):
        load_config(path)


# ----- issue 26: values that passed the check and crashed at run time, or meant something else ---------------------
@pytest.mark.parametrize(
    "override",
    [
        "model.in_chans=2",  # the loaders give RGB: the patch embedding would crash on the first batch
        "seed=18446744073709551616",
        "seed=-1",
        "model.img_size=1000000",
        "model.width=1000000000",
        "model.depth=100000",
        "eval.few_shot=[0]",
        "eval.few_shot=[-1, 5]",  # would report a "fewshot_-1" score
        "eval.few_shot=[5, 5]",
        "train.steps=true",  # would run 1 step
        "train.micro_batch=false",
        "optim.lr=true",
        "tracking.experiment=",  # every tracking record would be lost
        "tracking.experiment=' '",
        "tracking.experiment=bad-\udcff",  # a non-UTF-8 byte on the command line
        "tracking.tags={team: \udcff}",
        "output_dir=",  # would write into the current folder
        "output_dir='  '",
    ],
)
def test_values_that_crash_or_mean_something_else_are_refused_naming_the_key(override: str) -> None:
    key = override.partition("=")[0]
    with pytest.raises(ConfigError, match=rf"defaults: {key}(\.0)?: "):
        load_config(None, [override])


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("train:\n  steps: 5\n  steps: 6\n", "key 'steps' is given twice \\(lines 2, 3\\)"),
        ("train:\n  steps: 5\nmodel:\n  name: vit_micro_p4\ntrain:\n  micro_batch: 4\n", "key 'train' .*lines 1, 5"),
    ],
)
def test_a_yaml_key_given_twice_is_refused_with_its_lines(tmp_path, text: str, line: str) -> None:
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError, match=rf"c.yaml: not valid YAML: {line}"):
        load_config(tmp_path / "c.yaml")


def test_yaml_merge_keys_may_still_be_overridden(tmp_path) -> None:
    (tmp_path / "c.yaml").write_text(
        "stages:\n  mae: &base {train.steps: 3}\n  wsp:\n    <<: *base\n    train.steps: 4\n"
    )
    assert load_config(tmp_path / "c.yaml").stages["wsp"] == {"train.steps": 4}


def test_few_shots_beyond_a_class_size_stop_the_evaluation_naming_the_key() -> None:
    import torch

    from maws_scale.eval.evaluate import evaluate_features
    from maws_scale.eval.features import Features

    cfg = load_config(None, ["eval.few_shot=[1, 5000]"])
    x, y = torch.randn(40, 8), torch.arange(40) % 4
    features = Features(x=x, y=y, keys=[f"k{i}" for i in range(40)])
    with pytest.raises(ConfigError, match=r"eval.few_shot: 5000 shots per class, but class 0 has 10 probe-train"):
        evaluate_features(features, features, cfg)
