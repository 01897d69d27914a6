"""torchrun worker: rank r embeds its slice of a fixed global batch with a tiny CLIP, takes the gathered
contrastive loss, back-propagates and averages the gradients over ranks (as DeepSpeed's data parallelism does);
rank 0 writes the loss and every gradient to ``argv[1]``."""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from maws_scale.train.contrastive import clip_loss

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from test_contrastive import GLOBAL_BATCH, global_batch, tiny_clip


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = tiny_clip()
    images, tokens = global_batch()
    rows = GLOBAL_BATCH // world
    local = slice(rank * rows, (rank + 1) * rows)
    out = model(images[local], tokens[local])
    loss, accuracy = clip_loss(out.image, out.text, out.scale)
    loss.backward()
    grads = {}
    for name, param in model.named_parameters():
        grad = param.grad.clone()
        dist.all_reduce(grad)
        grads[name] = grad / world
    if rank == 0:
        torch.save({"loss": loss.detach(), "accuracy": accuracy, "grads": grads}, sys.argv[1])
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
