r"""Scaling laws: training compute, the Kaplan and Chinchilla loss formulas, compute-optimal sizes.

Training compute. A forward pass costs about $2N$ FLOPs per token (one multiply and one add per
weight) and the backward pass about twice that, so training on $D$ tokens costs

$$C \approx 6 N D,$$

plus an attention term $6\,n_{layers}\,n_{ctx}\,d_{model}$ per token that `companion.scaling.counting`
adds (Kaplan et al. 2020, Table 1).

Chinchilla's parametric loss (Hoffmann et al. 2022, approach 3)

$$L(N, D) = E + \frac{A}{N^\alpha} + \frac{B}{D^\beta}$$

minimised subject to $C = 6ND$ gives (set $\partial/\partial N$ of $L(N, C/6N)$ to zero:
$\alpha A N^{-\alpha} = \beta B D^{-\beta}$)

$$N_{opt} = G \left(\frac{C}{6}\right)^{\frac{\beta}{\alpha+\beta}}, \quad
D_{opt} = G^{-1} \left(\frac{C}{6}\right)^{\frac{\alpha}{\alpha+\beta}}, \quad
G = \left(\frac{\alpha A}{\beta B}\right)^{\frac{1}{\alpha+\beta}}.$$

Fitting these laws to measurements lives in `companion.scaling.fit`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from companion.nn.gpt import GPTConfig
from companion.scaling.counting import forward_flops_per_token

PETAFLOP_DAY = 1e15 * 24 * 3600  # 8.64e19 FLOPs: Kaplan et al.'s unit of compute


def _positive(name: str, value: Any) -> np.ndarray:
    """`value` as a float array, or a ValueError if any entry is not a finite positive number."""
    arr = np.asarray(value, dtype=float)
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        bad = arr[~(np.isfinite(arr) & (arr > 0))].ravel()[0]
        raise ValueError(f"{name} must be positive and finite, got {bad}")
    return arr


def _out(arr: np.ndarray) -> float | np.ndarray:
    """A 0-d array back to a Python float; arrays stay arrays."""
    return float(arr) if arr.ndim == 0 else arr


def training_flops(n_params: Any, n_tokens: Any) -> float | np.ndarray:
    """C = 6 N D: training FLOPs of N parameters on D tokens (forward 2ND + backward 4ND)."""
    return _out(6.0 * _positive("n_params", n_params) * _positive("n_tokens", n_tokens))


def training_flops_from_config(config: GPTConfig, n_tokens: Any, n_ctx: int | None = None) -> float | np.ndarray:
    """3 x (forward FLOPs per token from `companion.scaling.counting`, attention included) x D."""
    return _out(3.0 * forward_flops_per_token(config, n_ctx) * _positive("n_tokens", n_tokens))


def tokens_for_budget(flops: Any, n_params: Any) -> float | np.ndarray:
    """D = C / (6 N): the tokens a model of N parameters can train on with C FLOPs."""
    return _out(_positive("flops", flops) / (6.0 * _positive("n_params", n_params)))


@dataclass(frozen=True)
class ChinchillaLaw:
    """L(N, D) = E + A / N^alpha + B / D^beta (N parameters, D training tokens, L in nats/token)."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    name: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        for field in ("A", "B", "alpha", "beta"):
            _positive(field, getattr(self, field))
        if not np.isfinite(self.E) or self.E < 0:
            raise ValueError(f"E must be finite and >= 0, got {self.E}")

    def loss(self, n_params: Any, n_tokens: Any) -> float | np.ndarray:
        """Predicted loss of N parameters trained on D tokens (broadcasts over arrays)."""
        n, d = _positive("n_params", n_params), _positive("n_tokens", n_tokens)
        return _out(self.E + self.A / n**self.alpha + self.B / d**self.beta)

    @property
    def G(self) -> float:
        """G = (alpha A / (beta B))^(1 / (alpha + beta)), the constant of the optimal allocation."""
        return (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))

    @property
    def n_exponent(self) -> float:
        """a in N_opt ∝ C^a: beta / (alpha + beta)."""
        return self.beta / (self.alpha + self.beta)

    @property
    def d_exponent(self) -> float:
        """b in D_opt ∝ C^b: alpha / (alpha + beta) (a + b = 1 because C = 6 N D)."""
        return self.alpha / (self.alpha + self.beta)

    def compute_optimal(self, flops: Any) -> tuple[float | np.ndarray, float | np.ndarray]:
        """(N_opt, D_opt) minimising L(N, D) subject to 6 N D = C."""
        c6 = _positive("flops", flops) / 6.0
        return _out(self.G * c6**self.n_exponent), _out(c6**self.d_exponent / self.G)

    def tokens_per_parameter(self, flops: Any) -> float | np.ndarray:
        """D_opt / N_opt at budget C (grows with C when alpha > beta, shrinks when alpha < beta)."""
        n, d = self.compute_optimal(flops)
        return d / n

    def optimal_loss(self, flops: Any) -> float | np.ndarray:
        """The lowest loss reachable with C FLOPs: L(N_opt(C), D_opt(C))."""
        n, d = self.compute_optimal(flops)
        return self.loss(n, d)

    def to_dict(self) -> dict[str, Any]:
        """The five parameters and the name, JSON-friendly."""
        return {
            "E": self.E,
            "A": self.A,
            "B": self.B,
            "alpha": self.alpha,
            "beta": self.beta,
            "name": self.name,
            "source": self.source,
        }


CHINCHILLA_2022 = ChinchillaLaw(
    E=1.69,
    A=406.4,
    B=410.7,
    alpha=0.34,
    beta=0.28,
    name="Chinchilla (2022)",
    source="Hoffmann et al. 2022, arXiv:2203.15556, approach 3 (rounded published values)",
)
BESIROGLU_2024 = ChinchillaLaw(
    E=1.8172,
    A=482.01,
    B=2085.43,
    alpha=0.3478,
    beta=0.3658,
    name="Besiroglu et al. (2024)",
    source="Besiroglu et al. 2024, arXiv:2404.10102, refit of approach 3",
)


@dataclass(frozen=True)
class PowerLaw:
    """Kaplan et al.'s form L(x) = (x_c / x)^exponent, for x = N, D or C (loss in nats/token)."""

    scale: float  # x_c
    exponent: float  # alpha_x
    name: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        _positive("scale", self.scale)
        _positive("exponent", self.exponent)

    def __call__(self, x: Any) -> float | np.ndarray:
        """The loss at x (broadcasts over arrays)."""
        return _out((self.scale / _positive("x", x)) ** self.exponent)

    def inverse(self, loss: Any) -> float | np.ndarray:
        """The x at which the law predicts `loss`: x = x_c L^(-1/exponent)."""
        return _out(self.scale * _positive("loss", loss) ** (-1.0 / self.exponent))


_KAPLAN = "Kaplan et al. 2020, arXiv:2001.08361"
KAPLAN_2020_N = PowerLaw(8.8e13, 0.076, "L(N), non-embedding parameters", _KAPLAN + ", eq. 1.1")
KAPLAN_2020_D = PowerLaw(5.4e13, 0.095, "L(D), tokens", _KAPLAN + ", eq. 1.2")
KAPLAN_2020_C = PowerLaw(3.1e8 * PETAFLOP_DAY, 0.050, "L(C_min), FLOPs", _KAPLAN + ", eq. 1.3")


def kaplan_loss(
    n_params: Any, n_tokens: Any, law_n: PowerLaw = KAPLAN_2020_N, law_d: PowerLaw = KAPLAN_2020_D
) -> float | np.ndarray:
    """Kaplan et al.'s joint law L(N, D) = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D (eq. 1.5)."""
    n, d = _positive("n_params", n_params), _positive("n_tokens", n_tokens)
    ratio = law_n.exponent / law_d.exponent
    return _out(((law_n.scale / n) ** ratio + law_d.scale / d) ** law_d.exponent)
