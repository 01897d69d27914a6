"""The contrastive loss: the symmetric InfoNCE it should be, and distributed-correct — 2 gloo ranks that gather
embeddings with gradients give the loss and the (rank-averaged) gradients of one rank over the same global batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from dist_support import run_torchrun

from maws_scale.train.contrastive import clip_loss

GLOBAL_BATCH = 8
WORKER = Path(__file__).with_name("contrastive_worker.py")


def tiny_clip():
    from maws_scale.models import build_encoder
    from maws_scale.models.clip import CLIP
    from maws_scale.models.text import TextTransformer

    torch.manual_seed(0)
    visual = build_encoder("vit_micro_p4", pool="gap")
    return CLIP(visual, TextTransformer(40, 8, width=32, depth=1, heads=2), embed_dim=16)


def global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(GLOBAL_BATCH, 3, 16, 16, generator=g), torch.randint(3, 40, (GLOBAL_BATCH, 8), generator=g)


def test_one_process_loss_is_the_symmetric_infonce():
    g = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(6, 5, generator=g), dim=-1)
    text = F.normalize(torch.randn(6, 5, generator=g), dim=-1)
    scale = torch.tensor(10.0)
    loss, accuracy = clip_loss(image, text, scale)
    logits = 10.0 * image @ text.t()
    labels = torch.arange(6)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    torch.testing.assert_close(loss, expected)
    assert accuracy.item() == (logits.argmax(1) == labels).float().mean().item()


@pytest.mark.parametrize("rows", [[0, 1, 2, 3, 1, 2], [0, 0, 0, 1, 2, 3], [3, 2, 1, 0, 3, 3]])
def test_a_batch_with_repeated_samples_gives_the_loss_of_the_batch_without_them(rows):
    # the loader refills a batch whose bad records were dropped by repeating valid samples: a repeat would be a
    # false negative of its own pair, and count twice
    g = torch.Generator().manual_seed(1)
    image = F.normalize(torch.randn(4, 5, generator=g), dim=-1).requires_grad_()
    text = F.normalize(torch.randn(4, 5, generator=g), dim=-1).requires_grad_()
    scale = torch.tensor(10.0)
    index = torch.tensor(rows)
    loss, accuracy = clip_loss(image[index], text[index], scale, ids=index + 100)
    grads = torch.autograd.grad(loss, (image, text))
    unique = torch.tensor(sorted(set(rows), key=rows.index))  # first occurrences, in batch order
    expected, expected_accuracy = clip_loss(image[unique], text[unique], scale)
    expected_grads = torch.autograd.grad(expected, (image, text))
    torch.testing.assert_close(loss, expected)
    assert accuracy.item() == expected_accuracy.item()
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want)
    no_repeats, _ = clip_loss(image, text, scale, ids=torch.arange(4))
    torch.testing.assert_close(no_repeats, clip_loss(image, text, scale)[0])


def reference() -> dict:
    model = tiny_clip()
    images, tokens = global_batch()
    out = model(images, tokens)
    loss, accuracy = clip_loss(out.image, out.text, out.scale)
    loss.backward()
    return {"loss": loss.detach(), "accuracy": accuracy, "grads": {n: p.grad for n, p in model.named_parameters()}}


@pytest.mark.dist
def test_two_ranks_equal_one_rank_to_1e_5(tmp_path):
    out = tmp_path / "two.pt"
    run_torchrun(WORKER, 2, [str(out)], timeout=180)
    two = torch.load(out, weights_only=True)
    one = reference()
    torch.testing.assert_close(two["loss"], one["loss"], rtol=0, atol=1e-5)
    assert two["accuracy"].item() == one["accuracy"].item()
    assert set(two["grads"]) == set(one["grads"])
    for name, grad in one["grads"].items():
        torch.testing.assert_close(two["grads"][name], grad, rtol=1e-4, atol=1e-5, msg=name)
    # the gradient is not trivially zero: the test can fail
    assert one["grads"]["logit_scale"].abs().item() > 1e-4


def test_a_local_only_loss_differs_from_the_global_one():
    """Guard that the check above has teeth: a local-only loss (no gather) gives another loss on 2 ranks."""
    model = tiny_clip()
    images, tokens = global_batch()
    halves = [model(images[i * 4 : (i + 1) * 4], tokens[i * 4 : (i + 1) * 4]) for i in range(2)]
    local = sum(clip_loss(h.image, h.text, h.scale)[0] for h in halves) / 2
    assert abs(local.item() - reference()["loss"].item()) > 1e-3
