"""Zero-shot evaluation of a two-tower (clip / mae_clip / lit) checkpoint.

Zero-shot classification: each class name (``clip.class_names``, else the most common tag of each label in the
eval set) is put into every prompt template of ``clip.templates`` (``{}`` = the name); the normalised mean of the
template embeddings is the class embedding, an image is assigned the class of highest cosine similarity.
Retrieval: on the eval set's captions (its first caption per image), image→text and text→image recall@1/5 — the
share of queries whose own pair is among the k nearest, where every item with the identical caption counts as the
pair (a set with duplicate captions would otherwise score by argsort's tie order); ``eval/retrieval_distinct_captions``
says how many distinct captions there were. Metric names ``eval/zero_shot_top1`` (percent), ``eval/i2t_r1``,
``eval/i2t_r5``, ``eval/t2i_r1``, ``eval/t2i_r5`` (percent).
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from maws_scale.config import ConfigError
from maws_scale.data import build_loader, normalize_on_device
from maws_scale.data.shards import load_manifest, open_shard

if TYPE_CHECKING:
    from maws_scale.config import RunConfig
    from maws_scale.models.clip import CLIP

EVAL_BATCH = 256


def is_clip_state(state: dict[str, torch.Tensor]) -> bool:
    """True for a two-tower checkpoint (it has a text projection)."""
    return "text_proj.weight" in state


def load_clip(cfg: RunConfig, checkpoint_path: str | os.PathLike, device: torch.device | str | None = None) -> CLIP:
    """Build the two-tower model of ``cfg`` (image tower without MAE decoder), load the checkpoint strictly and move
    it to ``device`` (the job's; default CPU): a ViT-2B feature pass on CPU takes hours."""
    from maws_scale.eval.checkpoint import CheckpointError
    from maws_scale.models.mae import is_decoder_key
    from maws_scale.models.state import load_state_dict_file
    from maws_scale.train.clip_stages import build_clip_model

    state = load_state_dict_file(checkpoint_path)
    state = {k: v for k, v in state.items() if not (k.startswith("visual.") and is_decoder_key(k[7:]))}
    eval_cfg = cfg.model_copy(update={"stage": "clip"})
    model = build_clip_model(eval_cfg)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{checkpoint_path}: does not match the two-tower model (model.*, clip.*): missing "
            f"{result.missing_keys[:6]}, unexpected {result.unexpected_keys[:6]}"
        )
    if device is not None:
        from maws_scale.models.attention import pin_attention_backends

        model = model.to(device)
        pin_attention_backends(model, torch.device(device))
    return model.eval()


def class_names(cfg: RunConfig, path: str) -> list[str]:
    """``clip.class_names``, else for each label of the eval set its most common tag."""
    if cfg.clip.class_names:
        return list(cfg.clip.class_names)
    votes: dict[int, Counter] = defaultdict(Counter)
    for shard in load_manifest(path).shards:
        table = open_shard(Path(path) / shard.file)
        if "label" not in table.column_names:
            break
        for label, tags in zip(table["label"].to_pylist(), table["tags"].to_pylist()):
            if label is not None and tags:
                votes[int(label)][tags[0]] += 1
    if not votes:
        raise ConfigError(f"clip.class_names: not set and {path} has no labels with tags to name the classes")
    top = max(votes)
    missing = [k for k in range(top + 1) if k not in votes]
    if missing:
        raise ConfigError(f"clip.class_names: labels {missing[:6]} of {path} have no tag; set clip.class_names")
    return [votes[k].most_common(1)[0][0] for k in range(top + 1)]


def _has_captions(path: str) -> bool:
    for shard in load_manifest(path).shards:
        table = open_shard(Path(path) / shard.file)
        return "captions" in table.column_names and table["captions"].null_count < table.num_rows
    return False


@torch.no_grad()
def class_embeddings(model: CLIP, cfg: RunConfig, names: list[str]) -> torch.Tensor:
    """(K, E) normalised prompt-ensemble embeddings of the class names."""
    from maws_scale.data.loader import _caption_encoder

    encode = _caption_encoder(cfg, cfg.data.eval_path)
    device, dtype = _device_and_dtype(model)
    rows = []
    for name in names:
        prompts = [t.replace("{}", name) for t in cfg.clip.templates]
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            emb = model.encode_text(torch.from_numpy(encode(prompts)).to(device)).float().mean(dim=0)
        rows.append(torch.nn.functional.normalize(emb, dim=0).cpu())
    return torch.stack(rows)


def _device_and_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype | None]:
    """Where ``model`` runs, and its autocast dtype there (bf16 on CUDA, as the probes' features; none on CPU)."""
    device = next(model.parameters()).device
    return device, torch.bfloat16 if device.type == "cuda" else None


def recall_at(
    similarity: torch.Tensor, ks: tuple[int, ...] = (1, 5), groups: torch.Tensor | None = None
) -> dict[int, float]:
    """Recall@k in percent for queries along dim 0 whose true match is the same index along dim 1. With ``groups``
    (N,) — one id per distinct caption — any item of the query's group is a match: items with identical captions
    have identical text embeddings, and which of them ranks first would only be argsort's tie order."""
    ranks = similarity.argsort(dim=1, descending=True)
    own = torch.arange(similarity.shape[0]) if groups is None else groups
    found = ranks if groups is None else groups[ranks]
    hits = found == own[:, None]
    return {k: 100.0 * hits[:, :k].any(dim=1).float().mean().item() for k in ks}


@torch.no_grad()
def zero_shot_metrics(model: CLIP, cfg: RunConfig) -> dict[str, float]:
    """Zero-shot top-1 on the labeled eval set and, when it has captions, retrieval recall@1/5."""
    path = cfg.data.eval_path
    if not path:
        raise ConfigError("data.eval_path: not set; zero-shot evaluation needs a labeled set")
    captions = _has_captions(path)
    loader = build_loader(
        cfg, stage="eval", rank=0, world_size=1, micro_batch=EVAL_BATCH, path=path, infinite=False, captions=captions
    )
    device, dtype = _device_and_dtype(model)
    images, texts, tokens, labels = [], [], [], []
    for batch in loader:  # on the model's device; the (small) embeddings come back to CPU in fp32
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            pixels = normalize_on_device(batch["images"].to(device, non_blocking=True))
            images.append(model.encode_image(pixels).float().cpu())
            if captions:
                tokens.append(torch.as_tensor(batch["tokens"]))
                texts.append(model.encode_text(tokens[-1].to(device)).float().cpu())
        if batch.get("labels") is not None:
            labels.append(torch.as_tensor(batch["labels"]).long())
    if not images:
        raise ConfigError(f"data.eval_path: {path} yielded no samples")
    image = torch.cat(images)
    metrics: dict[str, float] = {"num_zero_shot": float(len(image))}
    label = torch.cat(labels) if labels else None
    if label is not None and bool((label >= 0).any()):
        names = class_names(cfg, path)
        known = label >= 0
        logits = image[known] @ class_embeddings(model, cfg, names).t()
        metrics["zero_shot_top1"] = 100.0 * (logits.argmax(dim=1) == label[known]).float().mean().item()
        metrics["zero_shot_classes"] = float(len(names))
    if captions:
        similarity = image @ torch.cat(texts).t()
        _, groups = torch.unique(torch.cat(tokens), dim=0, return_inverse=True)  # identical captions, one group
        metrics["retrieval_distinct_captions"] = float(int(groups.max()) + 1)  # hits count per caption group
        for k, v in recall_at(similarity, groups=groups).items():
            metrics[f"i2t_r{k}"] = v
        for k, v in recall_at(similarity.t(), groups=groups).items():
            metrics[f"t2i_r{k}"] = v
    return {f"eval/{k}": v for k, v in metrics.items()}
