r"""Fitting scaling laws to measured losses, with bootstrap confidence intervals.

* `fit_power_law`: $y = a x^b$ by least squares on $\log y = \log a + b \log x$; confidence
  intervals by resampling the points with replacement (the percentile bootstrap).
* `fit_isoflop_minimum`: a parabola in $\log N$ through one isoFLOP profile; its vertex is the
  compute-optimal size at that budget (Hoffmann et al. 2022, approach 2).
* `fit_chinchilla`: the parametric law $L = E + A/N^\alpha + B/D^\beta$ fitted as Hoffmann et al.
  (2022, approach 3) did: with $a = \log A$, $b = \log B$, $e = \log E$ the model is
  $\log \hat L = \operatorname{LSE}(a - \alpha \log N,\ b - \beta \log D,\ e)$ and the fit minimises
  the Huber loss ($\delta = 10^{-3}$) of $\log \hat L - \log L$ with L-BFGS, started from a grid.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import minimize

from companion.scaling.laws import ChinchillaLaw, _positive


def _ci(samples: np.ndarray, level: float) -> tuple[float, float]:
    """Percentile interval of `samples` at confidence `level`."""
    lo, hi = np.nanpercentile(samples, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def _check_level(ci: float) -> None:
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")


@dataclass(frozen=True)
class PowerLawFit:
    """y = coefficient * x^exponent, with percentile-bootstrap confidence intervals."""

    coefficient: float
    exponent: float
    exponent_ci: tuple[float, float]
    coefficient_ci: tuple[float, float]
    r2: float  # coefficient of determination in log space
    n_points: int
    ci: float  # confidence level of the intervals
    bootstrap_exponents: np.ndarray = field(repr=False, compare=False)

    def __call__(self, x: Any) -> float | np.ndarray:
        """The fitted y at x."""
        y = self.coefficient * _positive("x", x) ** self.exponent
        return float(y) if np.ndim(y) == 0 else y


def _loglog_line(lx: np.ndarray, ly: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) of least squares ly = intercept + slope * lx."""
    slope, intercept = np.polyfit(lx, ly, 1)
    return float(slope), float(intercept)


def _power_law_fit(
    lx: np.ndarray, ly: np.ndarray, slopes: np.ndarray, intercepts: np.ndarray, ci: float
) -> PowerLawFit:
    """The least-squares fit of (lx, ly) with intervals from bootstrap (slope, intercept) samples."""
    slope, intercept = _loglog_line(lx, ly)
    resid = ly - (intercept + slope * lx)
    r2 = 1.0 - resid @ resid / max(((ly - ly.mean()) ** 2).sum(), 1e-300)
    return PowerLawFit(
        coefficient=float(np.exp(intercept)),
        exponent=slope,
        exponent_ci=_ci(slopes, ci),
        coefficient_ci=tuple(np.exp(_ci(intercepts, ci))),
        r2=float(r2),
        n_points=int(lx.size),
        ci=ci,
        bootstrap_exponents=slopes,
    )


def fit_power_law(x: Any, y: Any, *, n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> PowerLawFit:
    """Fit y = a x^b by least squares in log-log space; bootstrap the points for CIs."""
    lx, ly = np.log(_positive("x", x)).ravel(), np.log(_positive("y", y)).ravel()
    if lx.shape != ly.shape:
        raise ValueError(f"x and y must have the same length, got {lx.size} and {ly.size}")
    if lx.size < 3 or np.ptp(lx) == 0:
        raise ValueError(f"need at least 3 points with distinct x, got {lx.size}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    _check_level(ci)
    rng = np.random.default_rng(seed)
    slopes, intercepts = np.full(n_boot, np.nan), np.full(n_boot, np.nan)
    for i in range(n_boot):
        idx = rng.integers(0, lx.size, lx.size)
        if np.ptp(lx[idx]) > 0:  # a resample with a single distinct x has no slope: skip it
            slopes[i], intercepts[i] = _loglog_line(lx[idx], ly[idx])
    return _power_law_fit(lx, ly, slopes, intercepts, ci)


@dataclass(frozen=True)
class IsoFLOPMinimum:
    """The vertex of L = c2 (log N)^2 + c1 log N + c0 fitted to one isoFLOP profile."""

    n_opt: float  # exp(-c1 / (2 c2))
    loss_opt: float  # the parabola's value there
    coefficients: tuple[float, float, float]  # (c2, c1, c0), natural log of N

    def __call__(self, n_params: Any) -> float | np.ndarray:
        """The parabola's loss at N."""
        y = np.polyval(self.coefficients, np.log(_positive("n_params", n_params)))
        return float(y) if np.ndim(y) == 0 else y


def fit_isoflop_minimum(n_params: Any, losses: Any) -> IsoFLOPMinimum:
    """Fit a parabola in log N to one isoFLOP profile and return its minimum."""
    ln = np.log(_positive("n_params", n_params)).ravel()
    loss = np.asarray(losses, dtype=float).ravel()
    if ln.shape != loss.shape:
        raise ValueError(f"n_params and losses must have the same length, got {ln.size} and {loss.size}")
    if np.unique(ln).size < 3:
        raise ValueError(f"a parabola needs at least 3 distinct sizes, got {np.unique(ln).size}")
    if not np.all(np.isfinite(loss)):
        raise ValueError("losses must be finite")
    c2, c1, c0 = np.polyfit(ln, loss, 2)
    if c2 <= 0:
        raise ValueError(
            "the fitted parabola opens downward: this profile has no interior minimum "
            "(widen the range of sizes around the optimum)"
        )
    x = -c1 / (2 * c2)
    return IsoFLOPMinimum(
        n_opt=float(np.exp(x)),
        loss_opt=float(np.polyval((c2, c1, c0), x)),
        coefficients=(float(c2), float(c1), float(c0)),
    )


def _profile_window(ln: np.ndarray, loss: np.ndarray, points: int) -> np.ndarray:
    """Boolean mask of the runs of one profile at the `points` sizes nearest (in rank) to its lowest loss."""
    sizes = np.unique(ln)
    i = int(np.searchsorted(sizes, ln[np.argmin(loss)]))
    lo = min(max(0, i - points // 2), max(0, sizes.size - points))
    return np.isin(ln, sizes[lo : lo + points])


def _interior_minimum(ln: np.ndarray, loss: np.ndarray) -> IsoFLOPMinimum:
    """fit_isoflop_minimum, with an error when the vertex lies outside the sizes fitted."""
    c2, c1, _ = np.polyfit(ln, loss, 2)
    if c2 > 0 and not ln.min() <= -c1 / (2 * c2) <= ln.max():
        raise ValueError(
            f"the parabola's minimum N = {np.exp(-c1 / (2 * c2)):.3g} lies outside the "
            f"sizes it was fitted to: the profile has no clear interior minimum"
        )
    return fit_isoflop_minimum(np.exp(ln), loss)


def _log_vertex(ln: np.ndarray, loss: np.ndarray) -> tuple[float, float]:
    """(log N, loss) at the vertex of the parabola through (ln, loss); NaNs if it opens downward."""
    c2, c1, c0 = np.polyfit(ln, loss, 2)
    if c2 <= 0:
        return np.nan, np.nan
    x = -c1 / (2 * c2)
    return x, c0 - c1**2 / (4 * c2)


@dataclass(frozen=True)
class IsoFLOPAnalysis:
    """Hoffmann et al.'s approach 2: one parabola per budget, then power laws through the minima."""

    budgets: np.ndarray  # (K,) the FLOP budgets, ascending
    minima: tuple[IsoFLOPMinimum, ...]  # one per budget
    n_opt: PowerLawFit  # N_opt = k C^a
    d_opt: PowerLawFit  # D_opt = C / (6 N_opt) = C^(1-a) / (6k)
    loss_opt: PowerLawFit  # L_opt = k C^(-alpha_C), a pure power law as in Kaplan et al.
    points: int  # sizes around each profile's lowest loss used by its parabola
    residual_std: float  # scatter of the losses about the parabolas (degrees of freedom corrected)
    n_boot: int
    failed_fraction: float  # bootstrap resamples in which a parabola opened downward


def fit_isoflops(
    budgets: Any, n_params: Any, losses: Any, *, points: int = 5, n_boot: int = 1000, ci: float = 0.95, seed: int = 0
) -> IsoFLOPAnalysis:
    """Fit every isoFLOP profile (runs sharing a budget) and the power laws of its minima.

    Each profile's parabola in log N uses the runs at the `points` sizes around its lowest loss.
    Intervals come from a residual bootstrap of the whole procedure: the residuals of all the
    parabolas are pooled (scaled up for the 3 parameters each parabola fitted), resampled with
    replacement and added back to the fitted values; every parabola and then the three power
    laws are refitted. Resamples in which a parabola opens downward are dropped and counted.
    """
    c = _positive("budgets", budgets).ravel()
    ln = np.log(_positive("n_params", n_params)).ravel()
    loss = _positive("losses", losses).ravel()
    if not c.size == ln.size == loss.size:
        raise ValueError(
            f"budgets, n_params and losses must have the same length, got {c.size}, {ln.size}, {loss.size}"
        )
    if points < 3:
        raise ValueError(f"points must be >= 3 for a parabola, got {points}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    _check_level(ci)
    levels = np.unique(c)
    if levels.size < 3:
        raise ValueError(f"need at least 3 budgets to fit power laws, got {levels.size}")
    groups = []  # indices of the runs each parabola is fitted to
    for b in levels:
        g = np.flatnonzero(c == b)
        groups.append(g[_profile_window(ln[g], loss[g], points)])
    minima = tuple(_interior_minimum(ln[g], loss[g]) for g in groups)
    fitted = [m(np.exp(ln[g])) for m, g in zip(minima, groups)]
    resid = np.concatenate([loss[g] - f for g, f in zip(groups, fitted)])
    dof = resid.size - 3 * len(groups)
    if dof < 1:
        raise ValueError("every parabola passes exactly through its points: add sizes to the profiles")
    resid = resid * np.sqrt(resid.size / dof)
    lc = np.log(levels)

    def laws(log_n: np.ndarray, loss_min: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return log_n, lc - np.log(6.0) - log_n, np.log(loss_min)

    rng = np.random.default_rng(seed)
    samples = np.full((3, 2, n_boot), np.nan)  # (law, slope/intercept, resample)
    failed = 0
    for i in range(n_boot):
        vertices = np.array([_log_vertex(ln[g], f + rng.choice(resid, g.size)) for g, f in zip(groups, fitted)])
        if not np.all(np.isfinite(vertices)) or np.any(vertices[:, 1] <= 0):
            failed += 1  # a parabola opened downward: this resample has no minimum to fit
            continue
        for k, ly in enumerate(laws(vertices[:, 0], vertices[:, 1])):
            samples[k, :, i] = _loglog_line(lc, ly)
    mins_log = np.log([m.n_opt for m in minima]), np.array([m.loss_opt for m in minima])
    fits = [_power_law_fit(lc, ly, samples[k, 0], samples[k, 1], ci) for k, ly in enumerate(laws(*mins_log))]
    return IsoFLOPAnalysis(
        budgets=levels,
        minima=minima,
        n_opt=fits[0],
        d_opt=fits[1],
        loss_opt=fits[2],
        points=points,
        residual_std=float(np.sqrt(np.mean(resid**2))),
        n_boot=n_boot,
        failed_fraction=failed / n_boot,
    )


def huber(r: np.ndarray, delta: float) -> np.ndarray:
    """Huber loss: r^2/2 for |r| <= delta, delta (|r| - delta/2) beyond (linear tails)."""
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r**2, delta * (a - 0.5 * delta))


def _lse_terms(theta: np.ndarray, ln: np.ndarray, ld: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log L_hat = LSE(a - alpha log N, b - beta log D, e) and the softmax weights of the three terms.

    theta (..., 5) = (a, b, e, alpha, beta); returns (..., n) and (3, ..., n).
    """
    a, b, e, alpha, beta = (theta[..., i : i + 1] for i in range(5))
    terms = np.stack(np.broadcast_arrays(a - alpha * ln, b - beta * ld, e + 0 * ln))  # (3, ..., n)
    m = terms.max(axis=0)
    ex = np.exp(terms - m)
    total = ex.sum(axis=0)
    return m + np.log(total), ex / total


def _objective(
    theta: np.ndarray, ln: np.ndarray, ld: np.ndarray, ll: np.ndarray, delta: float
) -> tuple[float, np.ndarray]:
    """Mean Huber loss of the log-space residuals and its gradient in theta = (a, b, e, alpha, beta)."""
    lse, w = _lse_terms(theta, ln, ld)
    r = lse - ll  # (n,)
    dh = np.clip(r, -delta, delta) / r.size  # Huber'(r), averaged
    grad = np.array([dh @ w[0], dh @ w[1], dh @ w[2], -(dh * w[0]) @ ln, -(dh * w[1]) @ ld])
    return float(huber(r, delta).mean()), grad


CHINCHILLA_GRID = {  # Hoffmann et al. (2022), appendix D.2
    "alpha": (0.0, 0.5, 1.0, 1.5, 2.0),
    "beta": (0.0, 0.5, 1.0, 1.5, 2.0),
    "e": (-1.0, -0.5, 0.0, 0.5, 1.0),
    "a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
}


@dataclass(frozen=True)
class ChinchillaFit:
    """The fitted law, its objective value, and bootstrap intervals (when asked for)."""

    law: ChinchillaLaw
    objective: float  # mean Huber loss at the optimum
    n_points: int
    n_starts: int  # L-BFGS runs made
    ci: float
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)  # E A B alpha beta n_exponent
    bootstrap: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)


def _one_blas_thread():
    """Limit BLAS to one thread while L-BFGS runs (its tiny products only lose time to threading)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: without it the fit is the same, only slower on a busy machine
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _lbfgs(theta0: np.ndarray, args: tuple) -> tuple[np.ndarray, float]:
    res = minimize(
        _objective,
        theta0,
        args=args,
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 2000, "gtol": 1e-12, "ftol": 1e-15},
    )
    return res.x, float(res.fun)


def _law(theta: np.ndarray, name: str) -> ChinchillaLaw:
    a, b, e, alpha, beta = theta
    return ChinchillaLaw(
        E=float(np.exp(e)),
        A=float(np.exp(a)),
        B=float(np.exp(b)),
        alpha=float(alpha),
        beta=float(beta),
        name=name,
        source="fit_chinchilla",
    )


def fit_chinchilla(
    n_params: Any,
    n_tokens: Any,
    losses: Any,
    *,
    delta: float = 1e-3,
    grid: dict[str, tuple[float, ...]] | None = None,
    top_k: int | None = 64,
    n_boot: int = 0,
    ci: float = 0.95,
    seed: int = 0,
    name: str = "fit",
) -> ChinchillaFit:
    """Fit L(N, D) = E + A/N^alpha + B/D^beta by Huber-in-log-space with L-BFGS from a grid.

    Every point of `grid` (default `CHINCHILLA_GRID`, 4,500 starts) is scored by the objective;
    L-BFGS then runs from the `top_k` best of them (None: from all) and the best end wins.
    `n_boot` > 0 adds percentile intervals: resample the points with replacement and refit from
    the best fit (a warm start).
    """
    ln = np.log(_positive("n_params", n_params)).ravel()
    ld = np.log(_positive("n_tokens", n_tokens)).ravel()
    ll = np.log(_positive("losses", losses)).ravel()
    if not ln.size == ld.size == ll.size:
        raise ValueError(
            f"n_params, n_tokens and losses must have the same length, got {ln.size}, {ld.size}, {ll.size}"
        )
    if ln.size < 5:
        raise ValueError(f"five parameters need at least 5 points, got {ln.size}")
    _positive("delta", delta)
    _check_level(ci)
    grid = CHINCHILLA_GRID if grid is None else grid
    order = ("a", "b", "e", "alpha", "beta")
    starts = np.array(list(itertools.product(*(grid[k] for k in order))), dtype=float)  # (S, 5)
    args = (ln, ld, ll, delta)
    if top_k is not None and top_k < len(starts):
        scores = huber(_lse_terms(starts, ln, ld)[0] - ll, delta).mean(axis=1)  # (S,) all at once
        starts = starts[np.argsort(scores, kind="stable")[:top_k]]
    best_theta, best_f = None, np.inf
    with _one_blas_thread():
        for s in starts:
            theta, f = _lbfgs(s, args)
            if f < best_f and theta[3] > 0 and theta[4] > 0:
                best_theta, best_f = theta, f
        if best_theta is None:
            raise RuntimeError("no start converged to positive exponents: the data do not follow the law")
        intervals, boot = {}, {}
        rng = np.random.default_rng(seed)
        thetas = np.full((max(n_boot, 0), 5), np.nan)
        for i in range(max(n_boot, 0)):
            idx = rng.integers(0, ln.size, ln.size)
            thetas[i] = _lbfgs(best_theta, (ln[idx], ld[idx], ll[idx], delta))[0]
    if n_boot > 0:
        alpha, beta = thetas[:, 3], thetas[:, 4]
        boot = {
            "E": np.exp(thetas[:, 2]),
            "A": np.exp(thetas[:, 0]),
            "B": np.exp(thetas[:, 1]),
            "alpha": alpha,
            "beta": beta,
            "n_exponent": beta / (alpha + beta),
        }
        intervals = {k: _ci(v, ci) for k, v in boot.items()}
    return ChinchillaFit(
        law=_law(best_theta, name),
        objective=best_f,
        n_points=int(ln.size),
        n_starts=len(starts),
        ci=ci,
        intervals=intervals,
        bootstrap=boot,
    )
