"""Linear probe, kNN and few-shot on features of a known structure."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from maws_scale.eval.classifiers import few_shot, fit_logistic, knn_classify, linear_probe, sample_shots


def blobs(n: int, classes: int, dim: int, spread: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(1234)) * 3
    y = torch.randint(0, classes, (n,), generator=gen)
    return centres[y] + spread * torch.randn(n, dim, generator=gen), y


def test_fit_logistic_matches_sklearn() -> None:
    x, y = blobs(300, 4, 6, spread=3.0, seed=0)
    wd = 1e-2
    ours = fit_logistic(x, y, 4, wd, standardize=False, max_iter=500)
    ref = LogisticRegression(C=1.0 / (wd * len(x)), tol=1e-10, max_iter=5000).fit(x.numpy(), y.numpy())
    # softmax parameters are defined up to a shift shared by all classes: compare centred ones
    w_ours = ours.weight - ours.weight.mean(0)
    w_ref = torch.tensor(ref.coef_, dtype=torch.float32) - torch.tensor(ref.coef_, dtype=torch.float32).mean(0)
    assert torch.allclose(w_ours, w_ref, atol=2e-3), (w_ours - w_ref).abs().max()
    assert (ours.predict(x).numpy() == ref.predict(x.numpy())).mean() > 0.99


def test_linear_probe_separates_blobs_and_is_at_chance_on_random_labels() -> None:
    x, y = blobs(600, 5, 16, spread=1.0, seed=0)
    tx, ty = blobs(400, 5, 16, spread=1.0, seed=1)
    assert linear_probe(x, y, tx, ty)["linear_top1"] > 99.0
    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]
    assert linear_probe(x, shuffled, tx, ty, weight_decays=(1e-2,))["linear_top1"] < 35.0  # chance is 20 %


def test_linear_probe_finds_a_direction_that_knn_cannot() -> None:
    """Labels live on one low-variance axis among loud noise axes: a linear model sees it, cosine kNN hardly."""
    gen = torch.Generator().manual_seed(0)

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, 2, (n,), generator=gen)
        x = torch.randn(n, 64, generator=gen) * 10
        x[:, 0] = (2 * y - 1).float() + 0.1 * torch.randn(n, generator=gen)
        return x, y

    (x, y), (tx, ty) = make(2000), make(500)
    assert linear_probe(x, y, tx, ty)["linear_top1"] > 98.0
    assert knn_classify(x, y, tx, ty, k=20) < 70.0


def test_knn_matches_a_brute_force_reference() -> None:
    x, y = blobs(200, 3, 8, spread=4.0, seed=0)
    tx, ty = blobs(50, 3, 8, spread=4.0, seed=1)
    k, t = 7, 0.07
    xn, tn = torch.nn.functional.normalize(x, dim=1), torch.nn.functional.normalize(tx, dim=1)
    correct = 0
    for q, label in zip(tn, ty):
        sims = xn @ q
        top = sims.argsort(descending=True)[:k]
        votes = np.zeros(3)
        for i in top:
            votes[y[i]] += np.exp(sims[i].item() / t)
        correct += int(votes.argmax() == label)
    assert knn_classify(x, y, tx, ty, k=k, temperature=t, chunk=16) == pytest.approx(100.0 * correct / len(tx))


def test_few_shot_improves_with_shots_and_reports_spread() -> None:
    x, y = blobs(2000, 10, 16, spread=2.5, seed=0)
    tx, ty = blobs(1000, 10, 16, spread=2.5, seed=1)
    out = few_shot(x, y, tx, ty, shots=(1, 10), seeds=3)
    assert set(out) == {"fewshot_1_top1", "fewshot_1_top1_std", "fewshot_10_top1", "fewshot_10_top1_std"}
    assert out["fewshot_10_top1"] > out["fewshot_1_top1"] > 10.0
    assert out["fewshot_1_top1_std"] > 0.0


def test_sample_shots_is_balanced_deterministic_and_refuses_too_few() -> None:
    y = torch.tensor([0] * 5 + [1] * 5 + [2] * 2)
    idx = sample_shots(y, 2, seed=3, num_classes=3)
    assert torch.equal(idx, sample_shots(y, 2, seed=3, num_classes=3))
    assert torch.bincount(y[idx]).tolist() == [2, 2, 2]
    with pytest.raises(ValueError, match="class 2 has 2"):
        sample_shots(y, 3, seed=0, num_classes=3)
