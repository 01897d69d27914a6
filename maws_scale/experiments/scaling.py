"""Scaling-law fits with an irreducible term, bootstrap CIs, and the compute-optimal frontier.

* ``L(x) = E + A · x^(-α)`` (x: compute, parameters or samples), fitted in log space (``log L`` against
  ``log(E + A x^-α)``, a Huber loss so one bad run does not set the exponent), with percentile bootstrap CIs
  (resampling runs) for α and E.
* ``L(N, D) = E + A / N^α + B / D^β`` (Hoffmann et al. 2022, approach 3) when a sweep varies both N and D.
* The compute-optimal frontier (approach 2): runs grouped into IsoFLOP bands; in each band the N of least loss
  (vertex of a parabola in log N when the band has ≥ 3 sizes), then ``N_opt(C) = k · C^a``.

Every fit warns (``warnings``) when it has fewer distinct x than parameters, and then falls back to a fit it can
identify (E = 0: a plain power law) instead of returning a number the data cannot support.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from maws_scale.experiments.powerlaw import PowerLaw, fit_power_law

HUBER_DELTA = 0.05  # in log-loss units: residuals beyond 5 % count linearly
N_BOOT = 300


def _ci(values: list[float], level: float = 0.95) -> tuple[float, float] | None:
    if len(values) < 20:
        return None
    lo, hi = np.percentile(values, [50 * (1 - level), 100 - 50 * (1 - level)])
    return float(lo), float(hi)


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    ly, lp = np.log(y), np.log(pred)
    total = ((ly - ly.mean()) ** 2).sum()
    return float(1.0 - ((ly - lp) ** 2).sum() / total) if total > 0 else 1.0


def _clean(*columns: Any) -> list[np.ndarray]:
    arrays = [np.asarray(c, dtype=np.float64) for c in columns]
    if any(a.shape != arrays[0].shape or a.ndim != 1 for a in arrays):
        raise ValueError(f"scaling fit: columns must be 1-D of equal length, got {[a.shape for a in arrays]}")
    keep = np.logical_and.reduce([np.isfinite(a) for a in arrays])
    arrays = [a[keep] for a in arrays]
    if any((a <= 0).any() for a in arrays):
        raise ValueError("scaling fit: every x and loss must be positive (the fit is in log space)")
    return arrays


# ----- L(x) = E + A x^-alpha ----------------------------------------------------------------------------------------
@dataclass
class SaturatingLaw:
    """``L = E + A · x^(-α)`` over ``n`` runs (``distinct`` x values); CIs are 95 % percentile bootstrap intervals."""

    E: float
    A: float
    alpha: float
    r2: float
    n: int
    distinct: int
    alpha_ci: tuple[float, float] | None = None
    E_ci: tuple[float, float] | None = None
    warnings: list[str] = field(default_factory=list)
    boot: list[tuple[float, float, float]] = field(default_factory=list, repr=False)  # (E, A, α) of each resample

    def __call__(self, x: np.ndarray | float) -> np.ndarray | float:
        return self.E + self.A * np.power(x, -self.alpha)

    def band(self, x: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray] | None:
        """The pointwise ``level`` percentile band of the bootstrap fits at ``x`` (None without resamples)."""
        if len(self.boot) < 20:
            return None
        curves = np.array([e + a * np.power(x, -alpha) for e, a, alpha in self.boot])
        tail = 100 * (1 - level) / 2
        return np.percentile(curves, tail, axis=0), np.percentile(curves, 100 - tail, axis=0)

    def describe(self, x: str = "C", y: str = "L") -> str:
        ci_a = f" [{self.alpha_ci[0]:.3f}, {self.alpha_ci[1]:.3f}]" if self.alpha_ci else ""
        ci_e = f" [{self.E_ci[0]:.3f}, {self.E_ci[1]:.3f}]" if self.E_ci else ""
        return (
            f"{y} = E + A·{x}^-α: E = {self.E:.4f}{ci_e}, A = {self.A:.4g}, α = {self.alpha:.4f}{ci_a} "
            f"(95 % bootstrap CI; R² {self.r2:.3f} in log space, n = {self.n}, {self.distinct} distinct {x})"
        )

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("boot")
        return out


def _fit_saturating_once(lx: np.ndarray, ly: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
    """Parameters (E / min L, log A', α) of ``log L = log(E + A' exp(-α (lx - lx_mean)))``: Huber in log space."""
    from scipy.optimize import least_squares

    y_min = float(np.exp(ly.min()))

    def residual(p: np.ndarray) -> np.ndarray:
        e, log_a, alpha = p
        return np.log(e * y_min + np.exp(log_a - alpha * lx)) - ly

    # a bootstrap refit starts from the full fit only; the full fit tries several starts (E near 0, half, most of L)
    starts = (
        [start]
        if start is not None
        else [np.array([f, math.log(max(y_min * (1 - f), 1e-12)), 0.3]) for f in (0.0, 0.5, 0.9)]
    )
    best = None
    for p0 in starts:
        p0 = np.clip(p0, [0.0, -50.0, 1e-4], [0.999, 50.0, 5.0])
        try:
            res = least_squares(
                residual,
                p0,
                bounds=([0.0, -50.0, 1e-4], [0.999, 50.0, 5.0]),
                loss="huber",
                f_scale=HUBER_DELTA,
            )
        except ValueError:
            continue
        if best is None or res.cost < best.cost:
            best = res
    if best is None:
        raise ValueError("scaling fit: the optimiser found no solution")
    return best.x


def fit_saturating(x: Any, y: Any, n_boot: int = N_BOOT, seed: int = 0, x_name: str = "x") -> SaturatingLaw:
    """Fit ``L = E + A x^-α`` (see the module docstring); with fewer than 3 distinct x (E unidentified) the plain
    power law (E = 0), with a warning."""
    x, y = _clean(x, y)
    distinct = len(np.unique(x))
    if distinct < 2:
        raise ValueError(f"scaling fit: need at least 2 distinct {x_name} values, got {distinct}")
    if distinct < 3:
        plain = fit_power_law(x, y)
        note = f"{distinct} distinct {x_name} for 3 parameters (E, A, α): fitted with E = 0 (a plain power law)"
        return SaturatingLaw(
            E=0.0, A=plain.a, alpha=-plain.b, r2=plain.r2, n=plain.n, distinct=distinct, warnings=[note]
        )
    lx, ly = np.log(x), np.log(y)
    centre = lx.mean()
    p = _fit_saturating_once(lx - centre, ly)
    y_min = y.min()
    E, alpha = float(p[0] * y_min), float(p[2])
    A = float(math.exp(p[1] + alpha * centre))
    law = SaturatingLaw(E=E, A=A, alpha=alpha, r2=0.0, n=len(x), distinct=distinct)
    law.r2 = _r2(y, law(x))
    rng = np.random.default_rng(seed)
    alphas, es = [], []
    for _ in range(n_boot):
        idx = rng.integers(0, len(x), len(x))
        if len(np.unique(x[idx])) < 3:
            continue
        bx, by = lx[idx], ly[idx]
        q = _fit_saturating_once(bx - centre, by, start=np.array([E / math.exp(by.min()), p[1], alpha]))
        alphas.append(float(q[2]))
        es.append(float(q[0] * math.exp(by.min())))
        law.boot.append((es[-1], float(math.exp(q[1] + q[2] * centre)), alphas[-1]))
    law.alpha_ci, law.E_ci = _ci(alphas), _ci(es)
    if distinct < 5:
        law.warnings.append(f"only {distinct} distinct {x_name}: E and α trade off; read the CIs")
    if law.E_ci is None:
        law.warnings.append("too few usable bootstrap resamples for CIs")
    return law


# ----- L(N, D) = E + A/N^alpha + B/D^beta ---------------------------------------------------------------------------
@dataclass
class TwoTermLaw:
    """``L = E + A / N^α + B / D^β`` (N parameters, D samples seen) over ``n`` runs."""

    E: float
    A: float
    alpha: float
    B: float
    beta: float
    r2: float
    n: int
    alpha_ci: tuple[float, float] | None = None
    beta_ci: tuple[float, float] | None = None
    E_ci: tuple[float, float] | None = None
    warnings: list[str] = field(default_factory=list)

    def __call__(self, n: Any, d: Any) -> Any:
        return self.E + self.A * np.power(n, -self.alpha) + self.B * np.power(d, -self.beta)

    def describe(self, n: str = "N", d: str = "D", y: str = "L") -> str:
        def ci(pair: tuple[float, float] | None) -> str:
            return f" [{pair[0]:.3f}, {pair[1]:.3f}]" if pair else ""

        return (
            f"{y} = E + A/{n}^α + B/{d}^β: E = {self.E:.4f}{ci(self.E_ci)}, A = {self.A:.4g}, α = {self.alpha:.3f}"
            f"{ci(self.alpha_ci)}, B = {self.B:.4g}, β = {self.beta:.3f}{ci(self.beta_ci)} (R² {self.r2:.3f}, "
            f"n = {self.n})"
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _fit_two_term_once(ln: np.ndarray, ld: np.ndarray, ly: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
    from scipy.optimize import least_squares

    y_min = float(np.exp(ly.min()))

    def residual(p: np.ndarray) -> np.ndarray:
        e, log_a, alpha, log_b, beta = p
        return np.log(e * y_min + np.exp(log_a - alpha * ln) + np.exp(log_b - beta * ld)) - ly

    lo, hi = [0.0, -50.0, 1e-4, -50.0, 1e-4], [0.999, 50.0, 3.0, 50.0, 3.0]
    starts = [start] if start is not None else []
    for f in (0.0, 0.5, 0.8) if start is None else ():
        rest = math.log(max(y_min * (1 - f) / 2, 1e-12))
        starts.append(np.array([f, rest, 0.3, rest, 0.3]))
    best = None
    for p0 in starts:
        res = least_squares(residual, np.clip(p0, lo, hi), bounds=(lo, hi), loss="huber", f_scale=HUBER_DELTA)
        if best is None or res.cost < best.cost:
            best = res
    return best.x


def fit_two_term(n: Any, d: Any, y: Any, n_boot: int = N_BOOT // 2, seed: int = 0) -> TwoTermLaw:
    """Fit ``L = E + A/N^α + B/D^β``; needs ≥ 5 distinct (N, D) pairs and ≥ 2 distinct N and D."""
    n, d, y = _clean(n, d, y)
    pairs = len({(a, b) for a, b in zip(n, d)})
    if pairs < 5 or len(np.unique(n)) < 2 or len(np.unique(d)) < 2:
        raise ValueError(
            f"L(N, D) fit: {pairs} distinct (N, D) pairs ({len(np.unique(n))} N, {len(np.unique(d))} D) for 5 "
            "parameters; the sweep must vary both"
        )
    cn, cd = np.log(n).mean(), np.log(d).mean()
    ln, ld, ly = np.log(n) - cn, np.log(d) - cd, np.log(y)
    p = _fit_two_term_once(ln, ld, ly)
    y_min = float(y.min())
    law = TwoTermLaw(
        E=float(p[0] * y_min),
        A=float(math.exp(p[1] + p[2] * cn)),
        alpha=float(p[2]),
        B=float(math.exp(p[3] + p[4] * cd)),
        beta=float(p[4]),
        r2=0.0,
        n=len(y),
    )
    law.r2 = _r2(y, law(n, d))
    rng = np.random.default_rng(seed)
    boots: list[tuple[float, float, float]] = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        if len({(a, b) for a, b in zip(n[idx], d[idx])}) < 5:
            continue
        q = _fit_two_term_once(ln[idx], ld[idx], ly[idx], start=p)
        boots.append((float(q[2]), float(q[4]), float(q[0] * y[idx].min())))
    if boots:
        a_s, b_s, e_s = zip(*boots)
        law.alpha_ci, law.beta_ci, law.E_ci = _ci(list(a_s)), _ci(list(b_s)), _ci(list(e_s))
    if pairs < 8:
        law.warnings.append(f"only {pairs} distinct (N, D) pairs for 5 parameters: read the CIs")
    return law


# ----- compute-optimal frontier -------------------------------------------------------------------------------------
@dataclass
class Frontier:
    """IsoFLOP minima ``(C, N_opt, L_min)`` per band and the fit ``N_opt = k · C^a`` (None with < 2 bands)."""

    bands: list[dict[str, float]]
    law: PowerLaw | None
    warnings: list[str] = field(default_factory=list)

    def describe(self) -> str:
        edge = sum(not b.get("interior", True) for b in self.bands)
        if self.law is None and edge:
            return (
                f"compute-optimal frontier: no N_opt(C) exponent: {edge} of {len(self.bands)} IsoFLOP band(s) have no "
                "interior minimum (the best size is at the edge of the sizes tried), so N_opt is only a bound there"
            )
        if self.law is None:
            return f"compute-optimal frontier: {len(self.bands)} IsoFLOP band(s); need ≥ 2 for N_opt(C)"
        return (
            f"N_opt(C) = {self.law.a:.4g}·C^{self.law.b:.3f} from {len(self.bands)} IsoFLOP bands "
            f"(R² {self.law.r2:.3f})"
        )

    def to_json(self) -> dict[str, Any]:
        return {"bands": self.bands, "law": self.law.to_json() if self.law else None, "warnings": self.warnings}


def isoflop_frontier(c: Any, n: Any, y: Any, band_dex: float = 0.15) -> Frontier:
    """Group runs whose compute agrees within ``band_dex`` decades; in each band with ≥ 2 sizes take the loss-optimal
    N (the vertex of ``L`` ~ parabola in ``log N`` with ≥ 3 sizes, clipped to the band's range; else the best run)."""
    c, n, y = _clean(c, n, y)
    order = np.argsort(c)
    bands: list[list[int]] = []
    for i in order:
        if bands and math.log10(c[i]) - math.log10(c[bands[-1][0]]) <= band_dex:
            bands[-1].append(int(i))
        else:
            bands.append([int(i)])
    out, warnings = [], []
    for band in bands:
        sizes = np.unique(n[band])
        if len(sizes) < 2:
            continue
        ln, ly = np.log(n[band]), y[band]
        best = int(np.argmin(ly))
        n_opt = float(n[band][best])
        interior = False  # the optimum lies strictly between the smallest and the largest size tried
        if len(sizes) >= 3:
            a2, a1, _ = np.polyfit(ln, ly, 2)
            vertex = -a1 / (2 * a2) if a2 > 0 else math.nan
            interior = bool(ln.min() < vertex < ln.max())
            if interior:
                n_opt = float(np.exp(vertex))
        if not interior:
            side = "largest" if n_opt >= sizes.max() else "smallest" if n_opt <= sizes.min() else "best"
            warnings.append(
                f"band C≈{np.exp(np.log(c[band]).mean()):.3g}: no interior minimum ({side} of {len(sizes)} sizes is "
                "best); N_opt is a bound, not an estimate"
            )
        out.append(
            {
                "compute": float(np.exp(np.log(c[band]).mean())),
                "n_opt": n_opt,
                "loss_min": float(ly.min()),
                "runs": len(band),
                "sizes": len(sizes),
                "interior": interior,
            }
        )
    law = None
    usable = [b for b in out if b["interior"]]
    if len(usable) >= 2 and len({b["compute"] for b in usable}) >= 2:
        law = fit_power_law([b["compute"] for b in usable], [b["n_opt"] for b in usable])
    else:
        warnings.append(f"{len(usable)} IsoFLOP band(s) with an interior minimum: no N_opt(C) exponent")
    return Frontier(out, law, warnings)
