r"""The induction-head toy: a two-layer attention-only Transformer that learns to copy, and its heads found.

The task: a row of $n$ distinct random tokens $r_1 \dots r_n$ repeated until the row is full,
$[r_1 \dots r_n, r_1 \dots r_n, \dots]$, with a fresh $r$ and a fresh $n$ for every row. The first
copy cannot be predicted (its loss stays near $\ln V$); every later token can, by the rule *find the
previous occurrence of the current token and predict the token that followed it*. A two-layer
attention-only model learns the rule with two heads (Olsson et al. 2022, arXiv:2209.11895): a
**previous-token head** in layer 0 writes "the token before me" into the residual stream, and an
**induction head** in layer 1 uses it as its key: from the current token it attends to the position
right *after* that token's previous occurrence and copies what it finds there. A fresh $n$ for
every row rules out a shortcut through the positions alone ("look $n - 1$ back").

The heads are scored by their attention weights on rows $[r, r]$ with `companion.analysis.interpret`'s
`previous_token_scores` (mean weight from $t$ on $t - 1$) and `induction_scores` (mean weight from $t$ on
$t - n + 1$ over the second copy). `hand_built_induction` sets the weights of the same model by hand to
the circuit, so the scores have a known answer.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from companion.analysis.interpret import induction_scores, previous_token_scores, trace
from companion.nn.attention import MultiHeadAttention
from companion.nn.blocks import check_length, check_token_ids
from companion.nn.output import ModelOutput
from companion.nn.positional import LearnedPositionalEmbedding
from companion.training.loop import run_steps
from companion.training.objectives import lm_loss
from companion.training.schedule import lr_at

__all__ = [
    "AttentionOnlyTransformer",
    "CopyLosses",
    "HeadScores",
    "InductionConfig",
    "ablate_head",
    "copy_losses",
    "hand_built_induction",
    "head_scores",
    "repeated_tokens",
    "train_induction",
]


@dataclass
class InductionConfig:
    """The task, the model and its training; the defaults train in well under a minute on 2 CPU cores."""

    vocab_size: int = 32
    min_period: int = 8  # each row repeats its own n distinct tokens, min_period <= n <= max_period
    max_period: int = 24
    block_size: int = 48  # training rows are this long; at least 2 * max_period, so each holds two copies
    n_layers: int = 2
    n_heads: int = 2
    d_model: int = 64
    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-2
    warmup_steps: int = 50
    weight_decay: float = 0.0
    seed: int = 0

    def __post_init__(self):
        names = ("vocab_size", "min_period", "max_period", "block_size", "n_layers", "n_heads", "d_model")
        for name in (*names, "steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"InductionConfig.{name} must be an int >= 1, got {value!r}")
        if not 2 <= self.min_period <= self.max_period <= self.vocab_size:
            raise ValueError(
                "need 2 <= min_period <= max_period <= vocab_size (a row's tokens are distinct), got "
                f"{self.min_period}, {self.max_period}, {self.vocab_size}"
            )
        if self.block_size < 2 * self.max_period:
            raise ValueError(f"block_size {self.block_size} < 2 * max_period {self.max_period}: no room for two copies")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        for name in ("warmup_steps", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"InductionConfig.{name} must be an int >= 0, got {value!r}")
        if not (math.isfinite(self.lr) and self.lr > 0 and math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"need a finite lr > 0 and weight_decay >= 0, got {self.lr}, {self.weight_decay}")

    @property
    def score_period(self) -> int:
        """The period of the rows [r, r] the heads are scored on: both copies lie within the first
        max_period positions, where a first copy (which the induction head reads) can lie in training."""
        return max(2, self.max_period // 2)


def repeated_tokens(
    batch_size: int,
    length: int,
    vocab_size: int,
    period: int | tuple[int, int],
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Rows of `n` distinct random tokens repeated up to `length`: returns tokens (B, length), periods (B,).

    `period` is one n for every row, or a range (lo, hi) from which each row draws its own n.
    """
    pair = (period, period) if isinstance(period, int) else tuple(period) if isinstance(period, (tuple, list)) else ()
    ints = (batch_size, length, vocab_size, *pair)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in ints):
        raise ValueError(
            f"batch_size, length, vocab_size and period must be ints (period: one, or a pair lo, hi), got "
            f"{batch_size!r}, {length!r}, {vocab_size!r}, {period!r}"
        )
    lo, hi = pair
    if not 2 <= lo <= hi <= vocab_size or batch_size < 1 or length < 1:
        raise ValueError(
            f"need batch_size, length >= 1 and 2 <= period <= vocab_size ({vocab_size}), got batch_size="
            f"{batch_size}, length={length}, period={period}"
        )
    periods = torch.randint(lo, hi + 1, (batch_size,), generator=generator)  # (B,)
    shuffles = torch.rand(batch_size, vocab_size, generator=generator).argsort(dim=-1)  # (B, V): one per row
    t = torch.arange(length)  # (T,)
    tokens = shuffles.gather(1, t[None, :] % periods[:, None])  # (B, T): row b reads its shuffle at t mod n_b
    return tokens, periods


class AttentionBlock(nn.Module):
    """One attention-only layer: x + MultiHead(x) under the causal mask, with no MLP and no LayerNorm."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.attn = MultiHeadAttention(d_model, n_heads, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, d_model) -> (B, T, d_model): the heads add what they read to the residual stream."""
        return x + self.attn(x, is_causal=True).out


class AttentionOnlyTransformer(nn.Module):
    """Token and learned position embeddings, `n_layers` attention-only blocks, an untied unembedding."""

    def __init__(self, config: InductionConfig):
        super().__init__()
        self.config = c = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)
        self.pos_emb = LearnedPositionalEmbedding(c.block_size, c.d_model)
        self.blocks = nn.ModuleList(AttentionBlock(c.d_model, c.n_heads) for _ in range(c.n_layers))
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> ModelOutput:
        """idx (B, T) token ids -> ModelOutput(logits (B, T, vocab_size), loss, hidden_states (B, T, d_model))."""
        check_token_ids(idx, self.config.vocab_size)
        check_length(idx.shape[1], self.config.block_size)
        x = self.tok_emb(idx) + self.pos_emb(idx.shape[1])  # (B, T, d_model)
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(x)  # (B, T, vocab_size)
        loss = None if targets is None else lm_loss(logits, targets)
        return ModelOutput(logits, loss, x)


def train_induction(
    config: InductionConfig, callback: Callable[[int, float], None] | None = None
) -> tuple[AttentionOnlyTransformer, list[float]]:
    """Train a fresh model on fresh batches of repeated tokens (seeded); returns (model, loss of every step).

    AdamW with linear warm-up and cosine decay to a tenth of `lr`; the loss is the next-token
    cross-entropy at every position. `callback(step, loss)` runs after each step.
    """
    c = config
    torch.manual_seed(c.seed)
    model = AttentionOnlyTransformer(c)
    data = torch.Generator().manual_seed(c.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=c.lr, weight_decay=c.weight_decay)

    def batch_loss(step: int) -> Tensor:
        periods = (c.min_period, c.max_period)
        tokens, _ = repeated_tokens(c.batch_size, c.block_size + 1, c.vocab_size, periods, data)  # (B, T + 1)
        return model(tokens[:, :-1], tokens[:, 1:]).loss

    def schedule(step: int) -> float:
        return lr_at(step, lr=c.lr, min_lr=c.lr / 10, warmup_steps=c.warmup_steps, decay_steps=c.steps)

    model.train()
    losses = run_steps(optimizer, batch_loss, c.steps, schedule, grad_clip=1.0, callback=callback)
    return model.eval(), losses


@torch.no_grad()
def hand_built_induction(vocab_size: int, block_size: int, sharpness: float = 10.0) -> AttentionOnlyTransformer:
    """The two-head circuit written into an `AttentionOnlyTransformer`'s weights by hand (one head per layer).

    The residual stream has four slots of one-hot vectors: the token (V wide), the position
    (block_size), the previous token (V) and the prediction (V). Layer 0 attends from position t to
    t - 1 and writes the token it finds into the previous-token slot; layer 1's query is the current
    token and its key the previous-token slot, so it attends to every j whose predecessor is the
    current token, and writes the token at j into the prediction slot, which the unembedding reads.
    Every winning scaled score, and the winning logit, is `sharpness`.
    """
    V, T = vocab_size, block_size
    if not (isinstance(V, int) and isinstance(T, int) and V >= 2 and T >= 4 and 0 < sharpness < math.inf):
        raise ValueError(f"need vocab_size >= 2, block_size >= 4 and sharpness > 0, got {V}, {T}, {sharpness}")
    n = min(V, T // 2)
    c = InductionConfig(V, min_period=2, max_period=n, block_size=T, n_layers=2, n_heads=1, d_model=3 * V + T)
    model = AttentionOnlyTransformer(c).eval()
    for p in model.parameters():
        p.zero_()
    token, pos, prev, pred = (
        torch.arange(V),
        V + torch.arange(T),
        V + T + torch.arange(V),
        2 * V + T + torch.arange(V),
    )
    q_scale = sharpness * math.sqrt(c.d_model)  # attention divides the scores by sqrt(d_head) = sqrt(d_model)
    model.tok_emb.weight[token, token] = 1.0  # Linear and Embedding weights are (out, in) and (id, d_model)
    model.pos_emb.weight[torch.arange(T), pos] = 1.0
    prev_head, induction_head = model.blocks[0].attn, model.blocks[1].attn
    prev_head.q_proj.weight[pos[:-1], pos[1:]] = q_scale  # query at t: position t - 1
    prev_head.k_proj.weight[pos, pos] = 1.0  # key at j: position j
    prev_head.v_proj.weight[token, token] = 1.0  # value: the token ...
    prev_head.out_proj.weight[prev, token] = 1.0  # ... written into the previous-token slot
    induction_head.q_proj.weight[prev, token] = q_scale  # query at t: the current token
    induction_head.k_proj.weight[prev, prev] = 1.0  # key at j: the token before j
    induction_head.v_proj.weight[token, token] = 1.0  # value: the token at j ...
    induction_head.out_proj.weight[pred, token] = 1.0  # ... written into the prediction slot
    model.lm_head.weight[token, pred] = sharpness
    return model


@torch.no_grad()
def ablate_head(model: AttentionOnlyTransformer, layer: int, head: int) -> AttentionOnlyTransformer:
    """A copy of `model` in which one head adds nothing to the residual stream (its columns of W_O are zero)."""
    c = model.config
    if not (0 <= layer < c.n_layers and 0 <= head < c.n_heads):
        raise ValueError(f"no head ({layer}, {head}): the model has {c.n_layers} layers of {c.n_heads} heads")
    ablated = copy.deepcopy(model)
    attn = ablated.blocks[layer].attn
    attn.out_proj.weight[:, head * attn.d_head : (head + 1) * attn.d_head] = 0.0  # W_O reads the heads side by side
    return ablated


class CopyLosses(NamedTuple):
    """The in-context loss curve of `copy_losses`."""

    per_position: Tensor  # (2n - 1,): loss of predicting token t + 1 at position t, mean over the rows
    first: float  # mean over the first copy's targets 1 .. n - 1 (unpredictable)
    second: float  # mean over the second copy's targets n + 1 .. 2n - 1 (predictable by copying)


@torch.no_grad()
def copy_losses(model: AttentionOnlyTransformer, tokens: Tensor, period: int) -> CopyLosses:
    """Next-token loss at each position of rows [r, r] (B, 2 * period), and its means over the two copies.

    Target n, the first token of the second copy, is in neither mean: nothing in a row says where
    the first copy ends.
    """
    if not isinstance(period, int) or period < 2 or tokens.dim() != 2 or tokens.shape[1] != 2 * period:
        raise ValueError(
            f"expected rows [r, r] of shape (B, 2 * period) with period >= 2, got {tuple(tokens.shape)}"
            f" and period={period!r}"
        )
    logits = model(tokens[:, :-1]).logits  # (B, 2n - 1, V)
    loss = F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none").mean(dim=0)  # (2n - 1,)
    return CopyLosses(loss, loss[: period - 1].mean().item(), loss[period:].mean().item())


class HeadScores(NamedTuple):
    """What `head_scores` measures on rows [r, r]."""

    previous_token: Tensor  # (n_layers, n_heads): mean weight from t on t - 1
    induction: Tensor  # (n_layers, n_heads): mean weight from t on t - n + 1 over the second copy
    attentions: Tensor  # (n_layers, B, n_heads, 2n, 2n): every head's weights
    tokens: Tensor  # (B, 2n): the rows scored


@torch.no_grad()
def head_scores(
    model: AttentionOnlyTransformer, period: int | None = None, n_seqs: int = 64, seed: int = 1234
) -> HeadScores:
    """Score every head on `n_seqs` fresh rows [r, r] of `period` distinct tokens (Olsson et al. 2022).

    `period` defaults to the config's `score_period`; the rows are drawn from a generator seeded with `seed`.
    """
    c = model.config
    period = c.score_period if period is None else period
    if not isinstance(period, int) or not 2 <= period <= min(c.vocab_size, c.block_size // 2) or n_seqs < 1:
        raise ValueError(
            f"need n_seqs >= 1 and 2 <= period <= min(vocab_size, block_size / 2) = "
            f"{min(c.vocab_size, c.block_size // 2)}, got n_seqs={n_seqs}, period={period!r}"
        )
    tokens, _ = repeated_tokens(n_seqs, 2 * period, c.vocab_size, period, torch.Generator().manual_seed(seed))
    attn = trace(model, tokens).attentions  # (n_layers, B, n_heads, 2n, 2n)
    prev = previous_token_scores(attn).mean(dim=1)  # (n_layers, n_heads)
    ind = induction_scores(attn, period).mean(dim=1)  # (n_layers, n_heads)
    return HeadScores(prev, ind, attn, tokens)
