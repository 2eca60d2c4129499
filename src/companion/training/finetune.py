r"""Fine-tuning a pre-trained model on labelled examples: freezing, dropout, and the supervised loop.

A classifier (`companion.nn.classifier.SequenceClassifier`) puts a *head* on a pre-trained
*body*; training minimises the cross-entropy $-\log \operatorname{softmax}(z)_y$ of its logits
$z$. *Full fine-tuning* updates body and head (the body with a small learning rate, so that it
stays near what pre-training found); *freezing* the body sets ``requires_grad=False`` on its
parameters, so their gradients are never computed and only the head learns (a linear probe).
`fit` runs classification and the sequence-to-sequence task through the package's loop over
in-memory batches (`companion.training.loop.run_steps`), with the learning-rate schedule
(`companion.training.schedule`) and the parameter groups (`companion.training.optim`) of
`companion.training.trainer.train`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from companion.analysis.metrics import check_labels
from companion.nn.classifier import SequenceClassifier
from companion.text.tokenization import WordTokenizer, pad_batch
from companion.training.loop import run_steps
from companion.training.optim import param_groups
from companion.training.schedule import lr_at

__all__ = [
    "FinetuneConfig",
    "fit",
    "fit_classifier",
    "freeze",
    "pooled_features",
    "predict_logits",
    "set_dropout",
]

# ----------------------------------------------------------------------------- freezing and dropout


def freeze(module: nn.Module, frozen: bool = True) -> nn.Module:
    """Set requires_grad = not frozen on every parameter of `module` (returns it)."""
    for p in module.parameters():
        p.requires_grad_(not frozen)
    return module


def set_dropout(module: nn.Module, p: float) -> nn.Module:
    """Set the rate of every nn.Dropout inside `module` (and of its attention layers) to p."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {p}")
    for m in module.modules():
        if isinstance(m, nn.Dropout):
            m.p = p
        elif hasattr(m, "dropout") and isinstance(m.dropout, float):
            m.dropout = p  # MultiHeadAttention keeps its attention-dropout rate as a float
    return module


# ----------------------------------------------------------------------------- training


@dataclass
class FinetuneConfig:
    """Optimisation settings of a supervised run (AdamW, warm-up then cosine decay to zero)."""

    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-4  # peak learning rate of the body (pre-trained weights)
    head_lr: float | None = None  # peak learning rate of the head (None: lr)
    weight_decay: float = 0.01
    warmup_steps: int = 30
    grad_clip: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}")
        if self.lr <= 0 or (self.head_lr is not None and self.head_lr <= 0):
            raise ValueError(f"learning rates must be > 0, got lr={self.lr}, head_lr={self.head_lr}")


def _optimizer(model: nn.Module, head: nn.Module | None, cfg: FinetuneConfig) -> torch.optim.AdamW:
    """AdamW with decay on matrices only; head parameters get lr_scale = head_lr / lr."""
    head_ids = {id(p) for p in head.parameters()} if head is not None else set()
    scale = (cfg.head_lr or cfg.lr) / cfg.lr
    groups = []
    for g in param_groups(model, cfg.weight_decay):  # skips frozen parameters
        for in_head in (False, True):
            ps = [p for p in g["params"] if (id(p) in head_ids) == in_head]
            if ps:
                groups.append({"params": ps, "weight_decay": g["weight_decay"], "lr_scale": scale if in_head else 1.0})
    if not groups:
        raise ValueError("the model has no trainable parameter: everything is frozen")
    return torch.optim.AdamW(groups, lr=cfg.lr)


def fit(
    model: nn.Module,
    batch_loss: Callable[[Tensor], Tensor],
    n_examples: int,
    cfg: FinetuneConfig,
    *,
    head: nn.Module | None = None,
    callback: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Minimise `batch_loss(indices)` over shuffled mini-batches of range(n_examples) for cfg.steps steps.

    Each epoch visits the examples in a new random order (seeded by cfg.seed); a batch is
    `cfg.batch_size` indices (fewer at the end of an epoch). The steps go through
    `companion.training.loop.run_steps`. Returns the training loss per step.
    """
    if n_examples < 1:
        raise ValueError("the training set is empty: nothing to fine-tune on")
    optimizer = _optimizer(model, head, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    batches = _epoch_batches(n_examples, cfg.batch_size, gen)

    def schedule(step: int) -> float:
        return lr_at(step, lr=cfg.lr, warmup_steps=cfg.warmup_steps, decay_steps=cfg.steps)

    def step_loss(step: int) -> Tensor:
        return batch_loss(next(batches))  # the next batch of the epoch (the step number is not needed)

    model.train()
    losses = run_steps(optimizer, step_loss, cfg.steps, schedule, grad_clip=cfg.grad_clip, callback=callback)
    model.eval()
    return losses


def _epoch_batches(n_examples: int, batch_size: int, gen: torch.Generator) -> Iterator[Tensor]:
    """Index batches, forever: each epoch a fresh permutation of range(n_examples), cut into batches."""
    while True:
        order = torch.randperm(n_examples, generator=gen)
        yield from order.split(batch_size)


def fit_classifier(
    model: SequenceClassifier, seqs: Sequence[Sequence[int]], labels: Sequence[int], cfg: FinetuneConfig
) -> list[float]:
    """Fine-tune a SequenceClassifier on id lists and labels; only parameters with requires_grad move."""
    y = check_labels(labels, model.n_classes)
    if len(seqs) != len(y):
        raise ValueError(f"{len(seqs)} sequences but {len(y)} labels")
    pad_id = WordTokenizer.pad_id

    def batch_loss(idx: Tensor) -> Tensor:
        ids, mask = pad_batch([seqs[i] for i in idx.tolist()], pad_id)  # (B, T) each
        return model(ids, y[idx], attention_mask=mask).loss

    return fit(model, batch_loss, len(seqs), cfg, head=model.head)


@torch.no_grad()
def _batched(fn: Callable[[Tensor, Tensor], Tensor], seqs: Sequence[Sequence[int]], batch_size: int) -> Tensor:
    """Apply fn(ids, mask) to length-sorted batches and return the rows in the original order."""
    if len(seqs) == 0:
        raise ValueError("no sequences to run the model on: the dataset is empty")
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    outs = []
    for start in range(0, len(order), batch_size):
        ids, mask = pad_batch([seqs[i] for i in order[start : start + batch_size]], WordTokenizer.pad_id)
        outs.append(fn(ids, mask))
    out = torch.cat(outs)
    return out[torch.argsort(torch.tensor(order))]


def predict_logits(model: SequenceClassifier, seqs: Sequence[Sequence[int]], batch_size: int = 256) -> Tensor:
    """Logits (N, n_classes) of a classifier in eval mode."""
    model.eval()
    return _batched(lambda ids, mask: model(ids, attention_mask=mask).logits, seqs, batch_size)


def pooled_features(model: SequenceClassifier, seqs: Sequence[Sequence[int]], batch_size: int = 256) -> Tensor:
    """Sentence vectors (N, d_model) from the body in eval mode: what a frozen body feeds the head."""
    model.eval()
    return _batched(model.features, seqs, batch_size)
