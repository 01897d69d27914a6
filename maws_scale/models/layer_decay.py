"""Layer-wise learning-rate decay for ViT fine-tuning (the BEiT / MAE rule), as a pure function of parameter names.

Every parameter gets a layer id: 0 for the embeddings (``cls_token``, ``pos_embed``, ``patch_embed.*``), ``i + 1`` for
``blocks.i.*``, and ``depth + 1`` for everything after the blocks (``norm``, ``fc_norm``, ``attn_pool``, ``head``).
Its LR scale is ``decay ** (depth + 1 - id)``: the head trains at the full LR, the patch embedding at
``decay ** (depth + 1)``. Weight decay skips 1-D tensors (norms, biases) and the listed names (position embedding,
class token), as the optimizer's groups already do (``parallel/engine.py::param_groups``).
"""

from __future__ import annotations

EMBEDDING_PREFIXES = ("cls_token", "pos_embed", "patch_embed.", "reg_token", "dist_token")


def layer_id(name: str, depth: int) -> int:
    """The layer id of parameter ``name`` in a ViT of ``depth`` blocks (0 … depth + 1)."""
    if name.startswith(EMBEDDING_PREFIXES) or name in ("cls_token", "pos_embed"):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def lr_scale(name: str, depth: int, decay: float) -> float:
    """``decay ** (depth + 1 - layer_id(name))``; 1.0 for every parameter when ``decay == 1``."""
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"finetune.layer_decay must lie in (0, 1], got {decay}")
    return float(decay ** (depth + 1 - layer_id(name, depth)))
