"""parallel.fp8: which layers convert, refusal where FP8 cannot run, one warning when nothing qualifies."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from torchao.float8.float8_linear import Float8Linear

from maws_scale.config import ConfigError, load_config
from maws_scale.models.build import build_mae, build_wsp
from maws_scale.models.registry import get_spec
from maws_scale.parallel.fp8 import Fp8NoLayersWarning, apply_fp8, fp8_unsupported

ENCODER_LINEARS = {"attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"}


def _cfg(recipe: str = "tensorwise", emulate: bool = True, *extra: str):
    return load_config(None, [f"parallel.fp8={recipe}", f"parallel.fp8_emulate={emulate}", *extra])


def _converted(model) -> set[str]:
    return {name for name, m in model.named_modules() if isinstance(m, Float8Linear)}


@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise"])
def test_only_the_encoder_block_linears_convert(recipe):
    mae = build_mae("vit_micro_p4")
    names = list(mae.state_dict())
    assert apply_fp8(mae, _cfg(recipe), "cpu") == 4 * mae.depth
    expected = {f"blocks.{i}.{leaf}" for i in range(mae.depth) for leaf in ENCODER_LINEARS}
    assert _converted(mae) == expected  # not decoder_embed / decoder_blocks / decoder_pred, not the patch conv
    assert list(mae.state_dict()) == names  # same parameter names: checkpoints do not change
    wsp = build_wsp("vit_micro_p4", num_classes=32)
    apply_fp8(wsp, _cfg(recipe), "cpu")
    assert "head" not in _converted(wsp) and len(_converted(wsp)) == 4 * wsp.depth


def test_fp8_changes_the_numbers_a_little():
    """Emulation really quantises (outputs differ from bf16), by FP8's rounding (e4m3: 3 mantissa bits, up to ~6 %
    per element), not more: measured 9.0 % (tensorwise) of the logits' norm through 4 random-init blocks."""
    torch.manual_seed(0)
    ref = build_wsp("vit_tiny_p4", num_classes=16).to(torch.bfloat16)
    fp8 = build_wsp("vit_tiny_p4", num_classes=16).to(torch.bfloat16)
    fp8.load_state_dict(ref.state_dict())
    apply_fp8(fp8, _cfg("tensorwise"), "cpu")
    x = torch.randn(8, 3, 32, 32, dtype=torch.bfloat16)
    a, b = ref(x).float(), fp8(x).float()
    rel = ((a - b).norm() / a.norm()).item()
    assert 1e-3 < rel < 0.25, rel


def test_layers_whose_widths_are_not_multiples_of_16_stay_and_say_so():
    spec = dataclasses.replace(get_spec("vit_micro_p4"), width=24, heads=2)  # 24 -> 72 / 96: no FP8 GEMM shape
    model = build_wsp(spec, num_classes=10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert apply_fp8(model, _cfg(), "cpu") == 0
    assert [w.category for w in caught if issubclass(w.category, Fp8NoLayersWarning)] == [Fp8NoLayersWarning]
    assert not _converted(model)


def test_fp8_without_a_capable_device_is_refused_at_set_up():
    model = build_mae("vit_micro_p4")
    with pytest.raises(ConfigError, match=r"parallel\.fp8=rowwise: FP8 matmuls need a CUDA GPU .* this run is on cpu"):
        apply_fp8(model, _cfg("rowwise", emulate=False), "cpu")
    assert not _converted(model)
    assert fp8_unsupported("cpu", emulate=True) is None


def test_fp8_config_refusals():
    with pytest.raises(ConfigError, match=r"parallel\.fp8=tensorwise with parallel\.tp=2"):
        load_config(None, ["parallel.fp8=tensorwise", "parallel.tp=2", "model.name=vit_tiny_p4"])
    with pytest.raises(ConfigError, match=r"fp16"):
        load_config(None, ["parallel.fp8=tensorwise", "parallel.precision=fp16"])
    with pytest.raises(ConfigError, match=r"parallel\.fp8"):
        load_config(None, ["parallel.fp8=e5m2"])
    assert apply_fp8(build_mae("vit_micro_p4"), load_config(None, []), "cpu") == 0
