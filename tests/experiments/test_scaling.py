"""Scaling-law fits: the irreducible term and exponent recovered from known laws, CIs that cover them, warnings."""

from __future__ import annotations

import numpy as np
import pytest

from maws_scale.experiments.scaling import fit_saturating, fit_two_term, isoflop_frontier


def test_saturating_fit_recovers_e_and_alpha_with_covering_cis() -> None:
    rng = np.random.default_rng(0)
    c = np.repeat(np.geomspace(1e12, 1e16, 7), 2)
    loss = (0.8 + 40.0 * c**-0.12) * np.exp(rng.normal(0, 0.01, c.size))
    law = fit_saturating(c, loss, n_boot=200, x_name="C")
    e_fit = law.E
    assert e_fit == pytest.approx(0.8, abs=0.15) and law.alpha == pytest.approx(0.12, abs=0.03)
    assert law.alpha_ci[0] <= 0.12 <= law.alpha_ci[1] and law.E_ci[0] <= 0.8 <= law.E_ci[1]
    assert law.r2 > 0.98 and law.distinct == 7 and not law.warnings
    assert law(1e14) == pytest.approx(0.8 + 40.0 * 1e14**-0.12, rel=0.02)
    assert "α = 0.1" in law.describe("C")


def test_a_pure_power_law_gets_e_near_zero_and_one_outlier_does_not_set_the_exponent() -> None:
    n = np.geomspace(1e5, 1e8, 8)
    loss = 5.0 * n**-0.2
    loss[3] *= 1.5  # one broken run
    law = fit_saturating(n, loss, n_boot=0)
    assert law.alpha == pytest.approx(0.2, abs=0.02) and law.E < 0.02


def test_too_few_distinct_x_warns_and_falls_back_to_a_power_law() -> None:
    law = fit_saturating([1e3, 1e3, 1e4, 1e4], [2.0, 2.1, 1.5, 1.6], x_name="N")
    assert law.E == 0.0 and law.warnings and "2 distinct N for 3 parameters" in law.warnings[0]
    with pytest.raises(ValueError, match="at least 2 distinct"):
        fit_saturating([5.0, 5.0], [1.0, 2.0])


def test_two_term_fit_recovers_both_exponents() -> None:
    n, d = np.meshgrid(np.geomspace(1e5, 1e7, 4), np.geomspace(1e6, 1e8, 4))
    n, d = n.ravel(), d.ravel()
    loss = 1.0 + 30.0 * n**-0.3 + 50.0 * d**-0.25
    law = fit_two_term(n, d, loss, n_boot=40)
    assert law.alpha == pytest.approx(0.3, abs=0.05) and law.beta == pytest.approx(0.25, abs=0.05)
    e_fit = law.E
    assert e_fit == pytest.approx(1.0, abs=0.1) and law.r2 > 0.99
    with pytest.raises(ValueError, match="must vary both"):
        fit_two_term([1e5, 1e6, 1e7, 1e8, 1e9], [1e6] * 5, [3, 2.5, 2, 1.8, 1.7])


def test_isoflop_frontier_finds_the_optimum_per_band_and_its_power_law() -> None:
    rows = []
    for c in (1e15, 1e16, 1e17):
        n_true = 0.1 * c**0.5
        for n in n_true * np.array([0.25, 0.5, 1.0, 2.0, 4.0]):
            rows.append((c, n, 2.0 + 0.05 * np.log(n / n_true) ** 2))
    c, n, loss = map(np.array, zip(*rows))
    frontier = isoflop_frontier(c, n, loss)
    assert len(frontier.bands) == 3
    assert frontier.law.b == pytest.approx(0.5, abs=0.01)
    for band in frontier.bands:
        assert band["n_opt"] == pytest.approx(0.1 * band["compute"] ** 0.5, rel=0.02)
    single = isoflop_frontier([1e15, 1e15], [1e5, 2e5], [2.0, 1.9])
    assert single.law is None and single.warnings


def test_a_frontier_where_every_band_picks_the_largest_model_gives_no_exponent() -> None:
    """Issue 25: every band's best size was the largest, and the console read `C^-0.000 … (R² 1.000)`."""
    rows = [(c, n, 3.0 - 0.1 * np.log(n) - 0.01 * np.log(c)) for c in (1e15, 1e16, 1e17) for n in (1e4, 2e4, 4e4)]
    frontier = isoflop_frontier(*map(np.array, zip(*rows)))
    assert frontier.law is None and len(frontier.bands) == 3
    assert not any(band["interior"] for band in frontier.bands)
    text = frontier.describe()
    assert "no N_opt(C) exponent" in text and "3 of 3" in text and "C^" not in text
    assert sum("no interior minimum (largest of 3 sizes is best)" in w for w in frontier.warnings) == 3


def test_the_bootstrap_band_covers_the_fit() -> None:
    x = np.geomspace(1e12, 1e16, 8)
    law = fit_saturating(x, 1.0 + 50.0 * x**-0.1 * (1 + 0.01 * np.sin(np.arange(8))))
    grid = np.geomspace(1e12, 1e16, 20)
    low, high = law.band(grid)
    assert np.all(low <= law(grid) + 1e-9) and np.all(law(grid) <= high + 1e-9) and np.any(high > low)
    assert "boot" not in law.to_json()  # the resamples stay out of fits.json


@pytest.mark.parametrize("span", [(1.1e11, 1.6e11), (3e10, 4e13)])
def test_log_axes_label_several_ticks_even_within_a_decade(span) -> None:
    from maws_scale.experiments.plotting import log_axes, new_figure

    figure = new_figure()
    axes = figure.add_subplot(1, 1, 1)
    axes.plot(list(span), [0.81, 0.86])
    log_axes(axes)
    figure.canvas.draw()
    for axis in (axes.xaxis, axes.yaxis):
        lo, hi = sorted(axis.get_view_interval())
        ticks = [*axis.get_majorticklabels(), *axis.get_minorticklabels()]
        shown = {t.get_text() for t in ticks if t.get_text() and lo <= t.get_position()[axis is axes.yaxis] <= hi}
        assert len(shown) >= 2, (axis.axis_name, shown)
