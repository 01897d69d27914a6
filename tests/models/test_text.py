"""The text tower: pooling (CLIP end-of-text with a causal mask, XLM-R first token with a padding mask) and the
registry shapes (maws_clip's XLM-R towers)."""

from __future__ import annotations

import pytest
import torch

from maws_scale.models.text import TextTransformer
from maws_scale.models.text_registry import TEXT_MODELS, get_text_spec


def tokens(*rows: list[int], length: int) -> torch.Tensor:
    out = torch.zeros(len(rows), length, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row)
    return out


@pytest.mark.parametrize("pool,causal", [("eot", True), ("first", False)])
def test_features_do_not_depend_on_padding(pool, causal):
    torch.manual_seed(0)
    model = TextTransformer(50, 16, width=32, depth=2, heads=2, pool=pool, causal=causal).eval()
    caption = [1, 7, 9, 11, 2]
    short, long = model(tokens(caption, length=8)), model(tokens(caption, length=16))
    torch.testing.assert_close(short, long, rtol=1e-5, atol=1e-5)


def test_eot_pooling_reads_the_end_token_and_ignores_what_follows_it():
    torch.manual_seed(0)
    model = TextTransformer(50, 12, width=32, depth=2, heads=2).eval()
    a = model(tokens([1, 5, 6, 2], length=12))
    b = model(tokens([1, 5, 6, 2], length=12))
    c = model(tokens([1, 5, 7, 2], length=12))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_context_longer_than_the_position_table_is_refused():
    model = TextTransformer(50, 8, width=32, depth=1, heads=2)
    with pytest.raises(ValueError, match=r"position table holds 8"):
        model(torch.ones(1, 9, dtype=torch.long))


def test_maws_clip_towers_have_xlmr_shapes():
    base, large = get_text_spec("xlmr_b"), get_text_spec("xlmr_l")
    assert (base.width, base.depth, base.heads, base.vocab_size, base.context_length) == (768, 12, 12, 250002, 100)
    assert (large.width, large.depth, large.heads, large.vocab_size, large.context_length) == (
        1024,
        24,
        16,
        250002,
        100,
    )
    assert base.pool == large.pool == "first" and not base.causal
    with torch.device("meta"):
        counts = {
            n: sum(p.numel() for p in TextTransformer.from_spec(TEXT_MODELS[n], 250002).parameters())
            for n in ("xlmr_b", "xlmr_l")
        }
    assert 270e6 < counts["xlmr_b"] < 285e6  # XLM-R base: ~278M
    assert 550e6 < counts["xlmr_l"] < 565e6  # XLM-R large: ~560M


def test_unknown_text_model_suggests_a_name():
    with pytest.raises(KeyError, match=r"did you mean 'xlmr_b'"):
        get_text_spec("xlmr_bb")


def test_models_command_lists_the_text_towers(capsys):
    from maws_scale.cli import main

    assert main(["models", "--text", "--json"]) == 0
    import json

    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["xlmr_b"]["vocab_size"] == 250002 and 270e6 < rows["xlmr_b"]["params"] < 285e6
    assert rows["text_tiny"]["pool"] == "eot" and rows["xlmr_l"]["pool"] == "first"
