"""Scaling laws: compute accounting, the Chinchilla closed form, presets, and the fits."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from companion.nn import GPTConfig
from companion.scaling.counting import forward_flops_per_token, kaplan_parameters
from companion.scaling.fit import fit_chinchilla, fit_isoflop_minimum, fit_isoflops, fit_power_law, huber
from companion.scaling.laws import (
    BESIROGLU_2024,
    CHINCHILLA_2022,
    KAPLAN_2020_C,
    KAPLAN_2020_D,
    KAPLAN_2020_N,
    PETAFLOP_DAY,
    ChinchillaLaw,
    PowerLaw,
    kaplan_loss,
    tokens_for_budget,
    training_flops,
    training_flops_from_config,
)

BUDGETS = np.geomspace(1e20, 1e24, 9)


# ---------------------------------------------------------------- compute accounting
def test_gpt3_training_flops():
    """Brown et al. (2020): 175B parameters on 300B tokens, about 3.14e23 FLOPs."""
    c = training_flops(175e9, 300e9)
    assert c == pytest.approx(3.15e23, rel=1e-12)
    assert c / PETAFLOP_DAY == pytest.approx(3646, rel=1e-3)  # Brown et al. quote 3.64e3 PF-days


def test_flops_from_config_adds_attention():
    cfg = GPTConfig(vocab_size=512, block_size=64, n_layers=2, n_heads=2, d_model=32)
    d = 1e6
    n = kaplan_parameters(cfg)  # 12 n_layers d^2 = 24,576
    assert n == 12 * 2 * 32**2
    attention = 6 * cfg.n_layers * 64 * cfg.d_model * d
    assert training_flops_from_config(cfg, d) == pytest.approx(6 * n * d + attention)
    assert training_flops_from_config(cfg, d) == pytest.approx(3 * forward_flops_per_token(cfg) * d)
    assert training_flops_from_config(cfg, d, n_ctx=16) < training_flops_from_config(cfg, d)


def test_tokens_for_budget_inverts_flops():
    assert tokens_for_budget(training_flops(7e4, 3e6), 7e4) == pytest.approx(3e6)
    np.testing.assert_allclose(tokens_for_budget([6e10, 6e11], [1e4, 1e4]), [1e6, 1e7])


@pytest.mark.parametrize(
    "call",
    [
        lambda: training_flops(0, 1e9),
        lambda: training_flops(1e9, -5),
        lambda: training_flops([1e9, np.nan], 1e9),
        lambda: tokens_for_budget(1e20, 0),
        lambda: CHINCHILLA_2022.compute_optimal(-1e20),
        lambda: CHINCHILLA_2022.loss(0, 1e9),
        lambda: KAPLAN_2020_N(0),
        lambda: kaplan_loss(1e9, 0),
        lambda: training_flops([], 1.0),
    ],
)
def test_non_positive_inputs_raise(call):
    with pytest.raises(ValueError, match="must be positive|is empty"):
        call()


def test_bad_law_parameters_raise():
    with pytest.raises(ValueError, match="alpha must be positive"):
        ChinchillaLaw(E=1.7, A=400, B=400, alpha=0.0, beta=0.3)
    with pytest.raises(ValueError, match="E must be finite and >= 0"):
        ChinchillaLaw(E=-1.0, A=400, B=400, alpha=0.3, beta=0.3)
    with pytest.raises(ValueError, match="exponent must be positive"):
        PowerLaw(1e13, -0.1)


# ---------------------------------------------------------------- the Chinchilla closed form
@pytest.mark.parametrize("law", [CHINCHILLA_2022, BESIROGLU_2024], ids=lambda law: law.name)
@pytest.mark.parametrize("budget", [1e18, 5.76e23])
def test_closed_form_equals_numerical_minimum(law, budget):
    """N_opt from the formula = argmin over N of L(N, C / 6N), found numerically."""
    res = minimize_scalar(
        lambda ln: law.loss(np.exp(ln), budget / (6 * np.exp(ln))),
        bounds=(np.log(1e3), np.log(1e15)),
        method="bounded",
        options={"xatol": 1e-10},
    )
    n_opt, d_opt = law.compute_optimal(budget)
    assert np.exp(res.x) == pytest.approx(n_opt, rel=1e-5)
    assert 6 * n_opt * d_opt == pytest.approx(budget, rel=1e-12)
    assert law.optimal_loss(budget) == pytest.approx(res.fun, rel=1e-12)
    # first-order condition: the marginal gains of parameters and of data balance
    assert law.alpha * law.A * n_opt**-law.alpha == pytest.approx(law.beta * law.B * d_opt**-law.beta, rel=1e-9)


def test_exponents_sum_to_one():
    for law in (CHINCHILLA_2022, BESIROGLU_2024):
        assert law.n_exponent + law.d_exponent == pytest.approx(1.0)
    assert CHINCHILLA_2022.n_exponent == pytest.approx(0.28 / 0.62)


def test_refit_gives_about_20_tokens_per_parameter():
    """Besiroglu et al. (2024): about 20 tokens per parameter over 1e20..1e24 FLOPs."""
    ratio = BESIROGLU_2024.tokens_per_parameter(BUDGETS)
    assert np.all((ratio > 15) & (ratio < 30)), ratio
    assert BESIROGLU_2024.tokens_per_parameter(5.76e23) == pytest.approx(20, abs=2)


def test_rounded_2022_values_give_many_more_tokens_per_parameter():
    """The rounded approach-3 values imply a ratio that is far larger and grows with C."""
    old = CHINCHILLA_2022.tokens_per_parameter(BUDGETS)
    new = BESIROGLU_2024.tokens_per_parameter(BUDGETS)
    assert np.all(old > 1.7 * new) and old[-1] > 5 * new[-1]  # 40 vs 23 at 1e20, 98 vs 18 at 1e24
    assert np.all(np.diff(old) > 0)  # alpha > beta: the ratio grows with compute
    assert np.all(np.diff(new) < 0)  # alpha < beta: it shrinks, slowly
    # the Chinchilla model itself: 70B parameters and 1.4T tokens are 5.88e23 FLOPs
    assert training_flops(70e9, 1.4e12) == pytest.approx(5.88e23)


def test_kaplan_presets():
    assert KAPLAN_2020_N(8.8e13) == pytest.approx(1.0)
    assert KAPLAN_2020_N(1e9) == pytest.approx((8.8e13 / 1e9) ** 0.076)
    assert KAPLAN_2020_N.inverse(KAPLAN_2020_N(3e8)) == pytest.approx(3e8)
    assert KAPLAN_2020_D.exponent == 0.095 and KAPLAN_2020_C.exponent == 0.050
    assert KAPLAN_2020_C.scale == pytest.approx(3.1e8 * 8.64e19)
    # the joint law reduces to L(N) with infinite data and to L(D) with infinite parameters
    assert kaplan_loss(1e9, 1e30) == pytest.approx(KAPLAN_2020_N(1e9), rel=1e-6)
    assert kaplan_loss(1e30, 1e10) == pytest.approx(KAPLAN_2020_D(1e10), rel=1e-6)


# ---------------------------------------------------------------- fitting
def test_fit_power_law_recovers_exponent_with_ci():
    rng = np.random.default_rng(0)
    x = np.geomspace(1e3, 1e6, 12)
    y = 30.0 * x**-0.3 * np.exp(rng.normal(0, 0.02, x.size))
    fit = fit_power_law(x, y, n_boot=500)
    assert fit.exponent == pytest.approx(-0.3, abs=0.01)
    assert fit.coefficient == pytest.approx(30.0, rel=0.15)
    lo, hi = fit.exponent_ci
    assert lo < -0.3 < hi and hi - lo < 0.03
    assert fit.r2 > 0.99
    assert fit(1e4) == pytest.approx(fit.coefficient * 1e4**fit.exponent)


def test_fit_power_law_exact_and_errors():
    x = np.array([1.0, 10.0, 100.0, 1000.0])
    fit = fit_power_law(x, 2 * x**0.5, n_boot=50)
    assert fit.exponent == pytest.approx(0.5) and fit.coefficient == pytest.approx(2.0)
    with pytest.raises(ValueError, match="at least 3 points"):
        fit_power_law([1, 2], [1, 2])
    with pytest.raises(ValueError, match="y must be positive"):
        fit_power_law([1, 2, 3], [1, 0, 3])
    with pytest.raises(ValueError, match="same length"):
        fit_power_law([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="ci must be in"):
        fit_power_law([1, 2, 3], [1, 2, 3], ci=1.5)


def test_isoflop_parabola_finds_the_minimum():
    n = np.geomspace(1e4, 1e6, 7)
    loss = 3.0 + 0.05 * (np.log(n) - np.log(8e4)) ** 2
    m = fit_isoflop_minimum(n, loss)
    assert m.n_opt == pytest.approx(8e4, rel=1e-6) and m.loss_opt == pytest.approx(3.0)
    with pytest.raises(ValueError, match="no interior minimum"):
        fit_isoflop_minimum(n, 3.0 - 0.05 * np.log(n) ** 2)
    with pytest.raises(ValueError, match="at least 3 distinct sizes"):
        fit_isoflop_minimum([1e4, 1e5], [3.0, 2.9])


def test_isoflop_minima_of_the_law_match_the_closed_form():
    """Approach 2 applied to noiseless losses from the law recovers its N_opt(C)."""
    for budget in (1e20, 1e22):
        n_star = BESIROGLU_2024.compute_optimal(budget)[0]
        n = n_star * np.geomspace(0.5, 2.0, 7)
        m = fit_isoflop_minimum(n, BESIROGLU_2024.loss(n, budget / (6 * n)))
        assert m.n_opt == pytest.approx(n_star, rel=0.01)


def isoflop_runs(law: ChinchillaLaw, noise: float, seed: int = 0):
    """Runs on 4 isoFLOP profiles, 7 sizes from N_opt/4 to 4 N_opt each, with log-normal noise."""
    rng = np.random.default_rng(seed)
    budgets, sizes = [], []
    for c in (1e18, 1e19, 1e20, 1e21):
        n = law.compute_optimal(c)[0] * np.geomspace(0.25, 4, 7)
        budgets += [c] * 7
        sizes += list(n)
    budgets, sizes = np.array(budgets), np.array(sizes)
    loss = law.loss(sizes, budgets / (6 * sizes)) * np.exp(rng.normal(0, noise, sizes.size))
    return budgets, sizes, loss


def test_fit_isoflops_recovers_the_allocation_exponents():
    law = BESIROGLU_2024
    budgets, sizes, loss = isoflop_runs(law, noise=0.002)
    res = fit_isoflops(budgets, sizes, loss, n_boot=300)
    assert res.n_opt.exponent == pytest.approx(law.n_exponent, abs=0.03)
    assert res.d_opt.exponent == pytest.approx(law.d_exponent, abs=0.03)
    assert res.n_opt.exponent + res.d_opt.exponent == pytest.approx(1.0)  # C = 6 N D
    lo, hi = res.n_opt.exponent_ci
    assert lo < law.n_exponent < hi and hi - lo < 0.2
    for c, m in zip(res.budgets, res.minima):
        assert m.n_opt == pytest.approx(law.compute_optimal(c)[0], rel=0.15)
        assert m.loss_opt == pytest.approx(law.optimal_loss(c), rel=0.01)
    assert res.loss_opt.exponent < 0  # more compute, lower loss
    assert res.failed_fraction < 0.2


def test_fit_isoflops_errors():
    budgets, sizes, loss = isoflop_runs(CHINCHILLA_2022, noise=0.0)
    with pytest.raises(ValueError, match="at least 3 budgets"):
        fit_isoflops(budgets[:14], sizes[:14], loss[:14])
    with pytest.raises(ValueError, match="points must be >= 3"):
        fit_isoflops(budgets, sizes, loss, points=2)
    with pytest.raises(ValueError, match="same length"):
        fit_isoflops(budgets, sizes[:-1], loss)


def test_huber_is_quadratic_then_linear():
    r = np.array([-1.0, -1e-4, 0.0, 5e-4, 2.0])
    np.testing.assert_allclose(huber(r, 1e-3), [1e-3 * (1 - 5e-4), 5e-9, 0, 1.25e-7, 1e-3 * (2 - 5e-4)])


def synthetic(law: ChinchillaLaw, noise: float, seed: int = 0, outliers: int = 0):
    """Losses from `law` on a 7 x 7 grid of (N, D), with multiplicative log-normal noise."""
    rng = np.random.default_rng(seed)
    n, d = (a.ravel() for a in np.meshgrid(np.geomspace(1e7, 1e10, 7), np.geomspace(1e8, 1e11, 7)))
    loss = law.loss(n, d) * np.exp(rng.normal(0, noise, n.size))
    loss[:outliers] *= 1.3  # a few bad runs: the Huber loss should shrug them off
    return n, d, loss


def test_fit_chinchilla_recovers_parameters():
    n, d, loss = synthetic(BESIROGLU_2024, noise=0.003)
    fit = fit_chinchilla(n, d, loss, top_k=16, n_boot=60)
    law = fit.law
    assert law.alpha == pytest.approx(0.3478, abs=0.02)
    assert law.beta == pytest.approx(0.3658, abs=0.02)
    assert law.E == pytest.approx(1.8172, rel=0.03)
    # what matters downstream: the compute-optimal allocation
    assert law.tokens_per_parameter(1e22) == pytest.approx(BESIROGLU_2024.tokens_per_parameter(1e22), rel=0.25)
    for key in ("E", "alpha", "beta", "n_exponent"):
        lo, hi = fit.intervals[key]
        assert lo <= getattr(law, key) <= hi
    assert fit.intervals["alpha"][0] < 0.3478 < fit.intervals["alpha"][1]


def test_fit_chinchilla_is_robust_to_outliers():
    n, d, loss = synthetic(CHINCHILLA_2022, noise=0.0, outliers=3)
    law = fit_chinchilla(n, d, loss, top_k=16).law
    assert law.alpha == pytest.approx(0.34, abs=1e-3) and law.beta == pytest.approx(0.28, abs=1e-3)
    assert law.E == pytest.approx(1.69, rel=1e-3)


def test_fit_chinchilla_errors():
    with pytest.raises(ValueError, match="at least 5 points"):
        fit_chinchilla([1e6] * 4, [1e8] * 4, [3.0] * 4)
    with pytest.raises(ValueError, match="same length"):
        fit_chinchilla([1e6] * 6, [1e8] * 5, [3.0] * 6)
    with pytest.raises(ValueError, match="losses must be positive"):
        fit_chinchilla([1e6] * 6, [1e8] * 6, [3.0] * 5 + [0.0])
