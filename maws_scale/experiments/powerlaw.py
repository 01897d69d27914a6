"""Power-law fits ``y = a · x^b`` by least squares in log-log space (scaling laws: loss vs compute, vs params)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class PowerLaw:
    """``y = a · x^b``; ``r2`` is the coefficient of determination of the log-log fit over ``n`` points."""

    a: float
    b: float
    r2: float
    n: int

    def __call__(self, x: np.ndarray | float) -> np.ndarray | float:
        return self.a * np.power(x, self.b)

    def describe(self, x: str = "x", y: str = "y") -> str:
        return f"{y} ≈ {self.a:.4g} · {x}^{self.b:+.4f}  (R² {self.r2:.3f}, n={self.n})"

    def to_json(self) -> dict[str, float]:
        return asdict(self)


def fit_power_law(x: np.ndarray | list[float], y: np.ndarray | list[float]) -> PowerLaw:
    """Fit ``log y = log a + b log x`` by ordinary least squares; needs ≥ 2 distinct positive x and positive y."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"fit_power_law: x and y must be 1-D of equal length, got {x.shape} and {y.shape}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if (x <= 0).any() or (y <= 0).any():
        raise ValueError("fit_power_law: x and y must be positive (a power law is fitted in log-log space)")
    if len(np.unique(x)) < 2:
        raise ValueError(f"fit_power_law: need at least 2 distinct x values, got {len(np.unique(x))}")
    lx, ly = np.log(x), np.log(y)
    design = np.stack([lx, np.ones_like(lx)], axis=1)
    (b, log_a), *_ = np.linalg.lstsq(design, ly, rcond=None)
    residual = ly - (b * lx + log_a)
    total = ((ly - ly.mean()) ** 2).sum()
    r2 = 1.0 - (residual**2).sum() / total if total > 0 else 1.0
    return PowerLaw(a=float(np.exp(log_a)), b=float(b), r2=float(r2), n=len(x))
