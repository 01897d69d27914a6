"""Frozen-feature classifiers: linear probe (multinomial logistic regression, full-batch L-BFGS), kNN, few-shot.

All functions take features as float tensors ``(N, D)`` and integer labels ``(N,)`` and return top-1 accuracy in
percent. They run on CPU in seconds for tens of thousands of samples of a few hundred dimensions.

- **Linear probe**: features standardised with the probe-train statistics, then a multinomial logistic regression
  (softmax + L2 penalty) fitted by full-batch L-BFGS with a strong-Wolfe line search. The penalty is chosen from a
  small grid on a deterministic 80/20 split of the probe-train set, then refitted on all of it.
- **kNN**: cosine similarity on L2-normalised features, the ``k`` nearest neighbours vote with weights
  ``exp(sim / T)`` (DINO's weighted kNN, T = 0.07).
- **Few-shot**: ``n`` examples per class drawn with each seed, a logistic regression (fixed penalty) on
  L2-normalised features; mean and standard deviation over seeds.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

WEIGHT_DECAYS = (1e-5, 1e-4, 1e-3, 1e-2)
FEW_SHOT_WEIGHT_DECAY = 1e-3


@dataclass(frozen=True)
class LinearModel:
    """A fitted softmax classifier ``x @ weight.T + bias`` on standardised inputs."""

    weight: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        z = (x.float() - self.mean) / self.std
        return (z @ self.weight.T + self.bias).argmax(dim=1)


@contextmanager
def single_thread() -> Iterator[None]:
    """Run small dense problems on one intra-op thread: on a busy machine, waking a thread pool for every tiny
    L-BFGS evaluation costs ~100× the arithmetic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _check(x: torch.Tensor, y: torch.Tensor, name: str) -> None:
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"{name}: expected features (N, D) and labels (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
    if len(x) == 0:
        raise ValueError(f"{name}: no samples")


def accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy in percent."""
    return 100.0 * (pred == y).float().mean().item()


def fit_logistic(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    weight_decay: float,
    standardize: bool = True,
    max_iter: int = 300,
) -> LinearModel:
    """Multinomial logistic regression: minimise mean CE + ``weight_decay``/2 · ||W||² with full-batch L-BFGS."""
    _check(x, y, "fit_logistic")
    x = x.float()
    if standardize:
        mean, std = x.mean(dim=0), x.std(dim=0, unbiased=False).clamp_min(1e-6)
    else:
        mean, std = torch.zeros(x.shape[1]), torch.ones(x.shape[1])
    z = (x - mean) / std
    weight = torch.zeros(num_classes, x.shape[1], requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=1e-6, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(z @ weight.T + bias, y) + 0.5 * weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad(), single_thread():
        optimizer.step(closure)
    return LinearModel(weight.detach(), bias.detach(), mean, std)


def _holdout(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    cut = max(1, round(n * fraction))
    return perm[cut:], perm[:cut]


def linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int | None = None,
    weight_decays: tuple[float, ...] = WEIGHT_DECAYS,
    seed: int = 0,
) -> dict[str, float]:
    """Top-1 (%) of a logistic-regression probe; the penalty is picked on a held-out 20 % of the probe-train set."""
    _check(train_x, train_y, "linear_probe train")
    _check(test_x, test_y, "linear_probe test")
    classes = num_classes or int(max(train_y.max(), test_y.max())) + 1
    best_wd, best_acc = weight_decays[0], -1.0
    if len(weight_decays) > 1:
        fit_idx, val_idx = _holdout(len(train_x), 0.2, seed)
        for wd in weight_decays:
            model = fit_logistic(train_x[fit_idx], train_y[fit_idx], classes, wd)
            acc = accuracy(model.predict(train_x[val_idx]), train_y[val_idx])
            if acc > best_acc:
                best_wd, best_acc = wd, acc
    model = fit_logistic(train_x, train_y, classes, best_wd)
    return {
        "linear_top1": accuracy(model.predict(test_x), test_y),
        "linear_train_top1": accuracy(model.predict(train_x), train_y),
        "linear_weight_decay": best_wd,
    }


def knn_classify(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk: int = 1024,
) -> float:
    """Top-1 (%) of DINO's weighted kNN: cosine similarity, top-``k`` neighbours vote with ``exp(sim / T)``."""
    _check(train_x, train_y, "knn train")
    _check(test_x, test_y, "knn test")
    classes = num_classes or int(max(train_y.max(), test_y.max())) + 1
    k = min(k, len(train_x))
    bank = F.normalize(train_x.float(), dim=1)
    correct = 0
    for start in range(0, len(test_x), chunk):
        query = F.normalize(test_x[start : start + chunk].float(), dim=1)
        sims, idx = (query @ bank.T).topk(k, dim=1)
        votes = torch.zeros(len(query), classes)
        votes.scatter_add_(1, train_y[idx], (sims / temperature).exp())
        correct += (votes.argmax(dim=1) == test_y[start : start + chunk]).sum().item()
    return 100.0 * correct / len(test_x)


def sample_shots(y: torch.Tensor, shots: int, seed: int, num_classes: int) -> torch.Tensor:
    """Indices of ``shots`` examples of every class, drawn without replacement with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    picks = []
    for c in range(num_classes):
        pool = (y == c).nonzero().flatten()
        if len(pool) < shots:
            raise ValueError(f"few-shot: class {c} has {len(pool)} probe-train samples, fewer than {shots} shots")
        picks.append(pool[torch.randperm(len(pool), generator=generator)[:shots]])
    return torch.cat(picks)


def few_shot(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    shots: list[int] | tuple[int, ...] = (1, 5, 10),
    seeds: int = 3,
    num_classes: int | None = None,
    weight_decay: float = FEW_SHOT_WEIGHT_DECAY,
) -> dict[str, float]:
    """``fewshot_<n>_top1`` (mean %) and ``fewshot_<n>_top1_std`` (over ``seeds`` draws) for every ``n`` in shots."""
    _check(train_x, train_y, "few_shot train")
    _check(test_x, test_y, "few_shot test")
    classes = num_classes or int(max(train_y.max(), test_y.max())) + 1
    train_n, test_n = F.normalize(train_x.float(), dim=1), F.normalize(test_x.float(), dim=1)
    out: dict[str, float] = {}
    for n in shots:
        scores = []
        for seed in range(seeds):
            idx = sample_shots(train_y, n, seed, classes)
            model = fit_logistic(train_n[idx], train_y[idx], classes, weight_decay, standardize=False, max_iter=100)
            scores.append(accuracy(model.predict(test_n), test_y))
        values = torch.tensor(scores)
        out[f"fewshot_{n}_top1"] = values.mean().item()
        out[f"fewshot_{n}_top1_std"] = values.std(unbiased=True).item() if len(scores) > 1 else 0.0
    return out
