"""MAE → WSP handoff: a WSP classifier initialised from an MAE checkpoint's encoder (decoder dropped, head fresh)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from maws_scale.models.build import build_wsp
from maws_scale.models.mae import is_decoder_key
from maws_scale.models.registry import ViTSpec
from maws_scale.models.state import adapt_state_dict, clean_state_dict, load_state_dict_file
from maws_scale.models.vit import VisionTransformer


class HandoffError(ValueError):
    """The MAE checkpoint does not fit the requested encoder; the message lists the offending keys."""


@dataclass
class HandoffReport:
    """What the handoff did with each key."""

    loaded: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    resampled: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for logs."""
        text = f"loaded {len(self.loaded)} encoder tensors, {len(self.new)} new ({_short(self.new)}), "
        text += f"dropped {len(self.dropped)} ({_short(self.dropped)})"
        return text + (f", resampled {', '.join(self.resampled)}" if self.resampled else "")

    def record(self, init: str, source: str) -> dict[str, object]:
        """The stage's ``handoff.json`` record: how it was initialised, from where, and every key's fate."""
        return {
            "init": init,
            "from": source,
            "summary": self.summary(),
            "loaded": self.loaded,
            "new": self.new,
            "dropped": self.dropped,
            "resampled": self.resampled,
        }


def _short(keys: list[str], limit: int = 4) -> str:
    return ", ".join(keys[:limit]) + (", …" if len(keys) > limit else "")


def wsp_from_mae(
    mae_state_dict: Mapping[str, torch.Tensor] | str | os.PathLike,
    name: str | ViTSpec,
    num_classes: int,
    pool: str = "cls",
    **overrides: Any,
) -> tuple[VisionTransformer, HandoffReport]:
    """Build ``build_wsp(name, num_classes, pool, **overrides)`` and load every encoder tensor of the MAE checkpoint.

    ``mae_state_dict`` is a state dict or a path to one (.pt / .safetensors; containers and ``module.`` prefixes are
    unwrapped). The decoder and mask token are dropped, ``head`` (and ``attn_pool`` for map pooling) stay freshly
    initialised, ``pos_embed`` is resampled when ``img_size`` differs. Raises :class:`HandoffError` if an encoder
    key is missing, unexpected or of the wrong shape. The loaded ``pos_embed`` is trainable from here on.
    """
    if isinstance(mae_state_dict, (str, os.PathLike)):
        source = load_state_dict_file(mae_state_dict)
    else:
        source = clean_state_dict(mae_state_dict)
    model = build_wsp(name, num_classes, pool=pool, **overrides)
    report = HandoffReport()
    own = model.state_dict()
    fresh = [k for k in own if k.startswith(("head.", "attn_pool."))]
    encoder = {}
    for key, value in source.items():
        if is_decoder_key(key) or key.startswith(("head.", "attn_pool.")):
            report.dropped.append(key)
        else:
            encoder[key] = value
    adapted = adapt_state_dict(encoder, model)
    report.resampled = [k for k in adapted if adapted[k].shape != encoder[k].shape]
    expected = [k for k in own if k not in fresh]
    missing = [k for k in expected if k not in adapted]
    unexpected = [k for k in adapted if k not in own]
    wrong = [
        f"{k} {tuple(adapted[k].shape)} vs {tuple(own[k].shape)}"
        for k in expected
        if k in adapted and adapted[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong:
        problems = []
        if missing:
            problems.append(f"missing encoder keys: {_short(missing, 8)}")
        if unexpected:
            problems.append(f"unexpected keys: {_short(unexpected, 8)}")
        if wrong:
            problems.append(f"shape mismatch: {_short(wrong, 4)}")
        target = name if isinstance(name, str) else f"width {name.width}, depth {name.depth}, patch {name.patch}"
        raise HandoffError(f"wsp.init_from: the MAE checkpoint does not fit {target}: " + "; ".join(problems))
    with torch.no_grad():
        for key in expected:
            own[key].copy_(adapted[key])
    model.pos_embed.requires_grad_(True)
    report.loaded = expected
    report.new = fresh
    return model, report


def classifier_state(
    source: Mapping[str, torch.Tensor], model: VisionTransformer
) -> tuple[dict[str, torch.Tensor], HandoffReport]:
    """The tensors of ``source`` that initialise the fine-tuning classifier ``model`` (built, or on the meta device).

    ``source`` is any encoder checkpoint of the family: MAE (decoder and mask token dropped), WSP / MAWS or a
    timm-named state dict (its ``head`` dropped), or CLIP (the ``visual.*`` tower taken, the rest dropped). The
    ``head`` is always fresh; ``fc_norm`` and ``attn_pool`` are fresh unless ``source`` has them; a final ``norm`` the
    model does not have (``fc_norm`` pooling) is dropped, as MAE fine-tuning does. ``pos_embed`` is resampled to the
    model's grid (bicubic, class token apart). Raises :class:`HandoffError` naming missing or mis-shaped keys."""
    source = clean_state_dict(source)
    if any(k.startswith("visual.") for k in source):
        report_dropped = [k for k in source if not k.startswith("visual.")]
        source = {k.removeprefix("visual."): v for k, v in source.items() if k.startswith("visual.")}
    else:
        report_dropped = []
    own = model.state_dict()
    report = HandoffReport(dropped=report_dropped)
    fresh = [k for k in own if k.startswith("head.") or (k.startswith(("fc_norm.", "attn_pool.")) and k not in source)]
    encoder = {}
    for key, value in source.items():
        if is_decoder_key(key) or key.startswith("head.") or key not in own:
            report.dropped.append(key)
        else:
            encoder[key] = value
    adapted = adapt_state_dict(encoder, model)
    report.resampled = [k for k in adapted if adapted[k].shape != encoder[k].shape]
    expected = [k for k in own if k not in fresh]
    missing = [k for k in expected if k not in adapted]
    wrong = [
        f"{k} {tuple(adapted[k].shape)} vs {tuple(own[k].shape)}"
        for k in expected
        if k in adapted and adapted[k].shape != own[k].shape
    ]
    if missing or wrong:
        problems = [f"missing encoder keys: {_short(missing, 8)}"] if missing else []
        problems += [f"shape mismatch: {_short(wrong, 4)}"] if wrong else []
        raise HandoffError("the checkpoint does not fit the fine-tuning model: " + "; ".join(problems))
    report.loaded = expected
    report.new = fresh
    return {k: adapted[k] for k in expected}, report
