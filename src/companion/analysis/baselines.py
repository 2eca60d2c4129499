r"""Linear baselines: bag-of-words logistic regression and a linear probe on fixed sentence vectors.

Both are multinomial logistic regression, $p(y \mid x) = \operatorname{softmax}(W x + b)_y$, fitted by
minimising the convex objective

$$J(W, b) = -\frac1N \sum_{i=1}^N \log p(y_i \mid x_i) + \frac{\lambda}{2} \lVert W \rVert_F^2$$

with full-batch L-BFGS, so the result is the unique optimum (no learning rate, no seed). This is
why these convex linear models are not fitted with the SGD loop of `companion.training.trainer`:
the whole data set fits in one batch, the objective is convex, and a quasi-Newton method reaches
its exact optimum deterministically, with no schedule to tune. The same `fit_linear_probe` probes
the hidden states of a Transformer layer by layer (Chapter 11).
For bag-of-words, $x \in \{0, 1\}^{|V|}$ says which words occur in the text; $W x$ is a sum of
one weight column per distinct word, computed with ``nn.EmbeddingBag``. A word that never occurs
in the training texts gets zero gradient from the data term, so the L2 term keeps its weight at 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from companion.analysis.metrics import check_labels

__all__ = ["BagOfWords", "LinearProbe", "fit_bag_of_words", "fit_linear_probe", "lbfgs_fit", "sentence_embeddings"]


class BagOfWords(nn.Module):
    """Logistic regression on binary word-presence features: logits = sum of the words' weight rows + b."""

    def __init__(self, vocab_size: int, n_classes: int):
        super().__init__()
        self.weight = nn.EmbeddingBag(vocab_size, n_classes, mode="sum")  # row w = W[:, w]
        self.bias = nn.Parameter(torch.zeros(n_classes))
        nn.init.zeros_(self.weight.weight)
        self.vocab_size, self.n_classes = vocab_size, n_classes

    def bags(self, seqs: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
        """Distinct ids of each text, flattened, and the offset where each text starts."""
        if len(seqs) == 0:
            raise ValueError("no texts: the dataset is empty")
        flat, offsets = [], []
        for s in seqs:
            offsets.append(len(flat))
            flat.extend(sorted(set(int(i) for i in s)))
        ids = torch.tensor(flat, dtype=torch.long)
        if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ValueError(f"a token id is outside the vocabulary of {self.vocab_size} ids")
        return ids, torch.tensor(offsets, dtype=torch.long)

    def forward(self, seqs: Sequence[Sequence[int]] | tuple[Tensor, Tensor]) -> Tensor:
        """Id lists (or the output of `bags`) -> logits (N, n_classes)."""
        ids, offsets = seqs if isinstance(seqs, tuple) else self.bags(seqs)
        return self.weight(ids, offsets) + self.bias  # (N, n_classes)

    def l2(self) -> Tensor:
        """Squared Frobenius norm of the weights (not the bias)."""
        return self.weight.weight.pow(2).sum()


class LinearProbe(nn.Module):
    """Standardise fixed features with the training mean and std, then a Linear layer."""

    def __init__(self, n_features: int, n_classes: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        self.linear = nn.Linear(n_features, n_classes)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        """(N, n_features) -> logits (N, n_classes)."""
        return self.linear((x - self.mean) / self.std)

    def l2(self) -> Tensor:
        """Squared Frobenius norm of the weights (not the bias)."""
        return self.linear.weight.pow(2).sum()


def lbfgs_fit(model: nn.Module, inputs, labels: Tensor, l2: float, max_iter: int = 200) -> float:
    """Minimise mean cross-entropy + l2/2 * model.l2() over the whole data set with L-BFGS; return J."""
    if l2 < 0:
        raise ValueError(f"l2 must be >= 0, got {l2}")
    opt = torch.optim.LBFGS(
        model.parameters(),
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-7,
        tolerance_change=1e-10,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def objective() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(model(inputs), labels) + 0.5 * l2 * model.l2()
        loss.backward()
        return loss

    opt.step(objective)
    with torch.no_grad():
        return float(F.cross_entropy(model(inputs), labels) + 0.5 * l2 * model.l2())


def fit_bag_of_words(
    seqs: Sequence[Sequence[int]],
    labels: Sequence[int],
    vocab_size: int,
    n_classes: int = 2,
    l2: float = 1e-3,
    max_iter: int = 200,
) -> BagOfWords:
    """Fit bag-of-words logistic regression on id lists (e.g. from `WordTokenizer.encode`)."""
    y = check_labels(labels, n_classes)
    if len(seqs) != len(y):
        raise ValueError(f"{len(seqs)} texts but {len(y)} labels")
    model = BagOfWords(vocab_size, n_classes)
    lbfgs_fit(model, model.bags(seqs), y, l2, max_iter)  # the bags are built once
    return model.eval()


def fit_linear_probe(
    features: Tensor, labels: Sequence[int], n_classes: int = 2, l2: float = 1e-2, max_iter: int = 200
) -> LinearProbe:
    """Fit logistic regression on fixed features (N, D), standardised with their own mean and std."""
    y = check_labels(labels, n_classes)
    if features.dim() != 2 or len(features) != len(y):
        raise ValueError(f"features must be (N, D) with N = {len(y)} labels, got {tuple(features.shape)}")
    x = features.detach().float()
    model = LinearProbe(x.shape[1], n_classes)
    model.mean.copy_(x.mean(0))
    model.std.copy_(x.std(0).clamp(min=1e-6) if len(x) > 1 else torch.ones(x.shape[1]))
    lbfgs_fit(model, x, y, l2, max_iter)
    return model.eval()


@torch.no_grad()
def sentence_embeddings(
    encoder: nn.Module, tokenizer, texts: Sequence[str], batch_size: int = 64, max_length: int = 128
) -> Tensor:
    """Sentence vectors (N, d_model) the sentence-transformers way: normalise(mean_pool(hidden states)).

    `encoder` is a `companion.nn.Encoder` (e.g. from `companion.interop.hf.load_minilm()`), `tokenizer`
    its Hugging Face tokenizer. Texts are run in batches of similar length (less padding) and
    returned in their original order.
    """
    from companion.nn import mean_pool

    if len(texts) == 0:
        raise ValueError("no texts to embed: the dataset is empty")
    was_training = encoder.training
    encoder.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = torch.empty(len(texts), encoder.config.d_model)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = tokenizer(
            [texts[i] for i in idx], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        hidden = encoder(
            enc["input_ids"], attention_mask=enc["attention_mask"], token_type_ids=enc.get("token_type_ids")
        )  # (B, T, C)
        out[idx] = F.normalize(mean_pool(hidden, enc["attention_mask"]), dim=-1)  # (B, C)
    encoder.train(was_training)
    return out
