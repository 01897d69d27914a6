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
