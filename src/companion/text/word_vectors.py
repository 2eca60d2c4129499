"""Word vectors: skip-gram with negative sampling (Mikolov et al., 2013) in PyTorch.

A word is a row of an embedding matrix. Skip-gram trains two matrices, `in_embed` (the word as a
centre) and `out_embed` (the word as a context), so that sigma(u_c . v_o) is high for pairs seen
within a window and low for k random "negative" words drawn from the unigram distribution to the
power 3/4. Frequent words are subsampled: an occurrence of w is kept with probability
min(1, sqrt(t / f(w))), f(w) its relative frequency. The word vectors are the rows of `in_embed`,
plus by default those of `out_embed` (as suggested by Levy, Goldberg & Dagan, 2015; the sum gives
clearly better neighbours on our review corpus). Training uses SparseAdam on sparse embedding
gradients: plain SGD on mini-batches of thousands of pairs lets frequent rows take huge summed
steps, and the frequent words collapse onto a shared direction (cosine similarities near 1).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from companion.text.tokenization import rank_words
from companion.training.loop import run_steps


@dataclass
class Word2VecConfig:
    """Hyper-parameters of skip-gram with negative sampling."""

    d_embed: int = 32  # size of a word vector
    window: int = 5  # maximum distance between centre and context (sampled per centre, 1..window)
    n_negatives: int = 5  # negative words per positive pair
    min_count: int = 5  # words seen fewer times are dropped
    max_vocab: int = 5_000  # keep at most this many most frequent words
    subsample_t: float | None = 1e-3  # subsampling threshold t; None keeps every occurrence
    epochs: int = 1
    batch_size: int = 4096  # positive pairs per step
    lr: float = 0.05  # learning rate, decayed linearly to 0
    optimizer: str = "adam"  # "adam" (SparseAdam on the mean loss) or "sgd" (SGD on the summed loss)
    add_context_vectors: bool = True  # word vector = in_embed + out_embed (Levy et al., 2015)
    num_threads: int | None = 1  # intra-op threads while training; None keeps PyTorch's setting
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("d_embed", "window", "n_negatives", "min_count", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"Word2VecConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_vocab is not None and self.max_vocab < 1:
            raise ValueError(f"Word2VecConfig.max_vocab must be None or >= 1, got {self.max_vocab}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if not self.lr > 0:
            raise ValueError(f"Word2VecConfig.lr must be > 0, got {self.lr}")
        if self.subsample_t is not None and not self.subsample_t > 0:
            raise ValueError(f"Word2VecConfig.subsample_t must be None or > 0, got {self.subsample_t}")


def skipgram_pairs(
    ids: Tensor, sentence_ids: Tensor, window: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """All (centre, context) pairs within a random window 1..window of each centre, per sentence.

    ids, sentence_ids: (N,) -> centres (P,), contexts (P,). As in word2vec, each centre draws its
    own window size, so near neighbours are used more often than far ones.
    """
    n = ids.numel()
    reach = torch.randint(1, window + 1, (n,), generator=generator)  # (N,)
    centres, contexts = [], []
    for off in range(1, min(window, n - 1) + 1):
        same = sentence_ids[:-off] == sentence_ids[off:]  # (N - off,)
        right = same & (reach[:-off] >= off)  # centre i, context i + off
        left = same & (reach[off:] >= off)  # centre i + off, context i
        centres += [ids[:-off][right], ids[off:][left]]
        contexts += [ids[off:][right], ids[:-off][left]]
    if not centres:
        return ids[:0], ids[:0]
    return torch.cat(centres), torch.cat(contexts)


class SkipGram(nn.Module):
    """The two embedding tables of skip-gram and its negative-sampling loss."""

    def __init__(self, vocab_size: int, d_embed: int):
        super().__init__()
        # sparse=True: each step's gradient touches only the rows of the words in the batch
        self.in_embed = nn.Embedding(vocab_size, d_embed, sparse=True)
        self.out_embed = nn.Embedding(vocab_size, d_embed, sparse=True)
        nn.init.uniform_(self.in_embed.weight, -0.5 / d_embed, 0.5 / d_embed)  # word2vec's init
        nn.init.zeros_(self.out_embed.weight)

    def forward(self, centres: Tensor, contexts: Tensor, negatives: Tensor) -> Tensor:
        """Mean over the batch of -log sigma(u.v_pos) - sum_k log sigma(-u.v_neg_k).

        centres, contexts: (B,) word ids; negatives: (B, K) word ids.
        """
        u = self.in_embed(centres)  # (B, d)
        pos = (u * self.out_embed(contexts)).sum(-1)  # (B,)
        neg = torch.bmm(self.out_embed(negatives), u[:, :, None]).squeeze(-1)  # (B, K)
        return -(F.logsigmoid(pos) + F.logsigmoid(-neg).sum(-1)).mean()


class WordVectors:
    """A vocabulary with one vector per word, and cosine-similarity look-ups."""

    def __init__(self, words: Sequence[str], vectors: Tensor):
        if len(words) != vectors.shape[0]:
            raise ValueError(f"{len(words)} words but {vectors.shape[0]} vectors")
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}
        self.vectors = vectors.detach()  # (V, d)
        self._unit = F.normalize(self.vectors, dim=-1)  # (V, d), rows of norm 1
        self.losses: list[float] = []  # filled by train_word2vec

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self.index

    def _id(self, word: str) -> int:
        if word not in self.index:
            raise ValueError(f"word {word!r} is not in the vocabulary of {len(self.words):,} words")
        return self.index[word]

    def __getitem__(self, word: str) -> Tensor:
        """The vector of a word (d,)."""
        return self.vectors[self._id(word)]

    def similarity(self, a: str, b: str) -> float:
        """Cosine similarity of two words."""
        return float(self._unit[self._id(a)] @ self._unit[self._id(b)])

    def nearest_neighbours(self, word: str, k: int = 10) -> list[tuple[str, float]]:
        """The k words of highest cosine similarity to `word` (itself excluded), most similar first."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        i = self._id(word)
        sims = self._unit @ self._unit[i]  # (V,)
        sims[i] = -float("inf")
        top = torch.topk(sims, min(k, len(self.words) - 1))
        return [(self.words[j], float(s)) for s, j in zip(top.values.tolist(), top.indices.tolist())]


def train_word2vec(
    sentences: Sequence[Sequence[str]], config: Word2VecConfig | None = None, verbose: bool = False
) -> WordVectors:
    """Train skip-gram with negative sampling on tokenised sentences; deterministic for a seed.

    Each step works on small tensors (a few thousand rows), for which synchronising several
    intra-op threads costs more than it saves, and far more when other processes compete for the
    cores; so training runs on `config.num_threads` threads (default 1), restored afterwards.
    """
    cfg = config or Word2VecConfig()
    previous = torch.get_num_threads()
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    try:
        return _train(sentences, cfg, verbose)
    finally:
        torch.set_num_threads(previous)


def _train(sentences: Sequence[Sequence[str]], cfg: Word2VecConfig, verbose: bool) -> WordVectors:
    """The training loop of `train_word2vec`."""
    g = torch.Generator().manual_seed(cfg.seed)
    words, counts = rank_words(sentences, cfg.min_count, cfg.max_vocab)
    if len(words) < 2:
        raise ValueError(f"only {len(words)} words occur at least min_count={cfg.min_count} times")
    index = {w: i for i, w in enumerate(words)}
    ids, sent = [], []
    for s_id, s in enumerate(sentences):
        kept = [index[w] for w in s if w in index]
        ids += kept
        sent += [s_id] * len(kept)
    ids_t, sent_t = torch.tensor(ids), torch.tensor(sent)  # (N,), (N,)

    freq = torch.tensor(counts, dtype=torch.float64)
    keep_prob = torch.ones_like(freq)
    if cfg.subsample_t is not None:
        keep_prob = torch.clamp(torch.sqrt(cfg.subsample_t / (freq / freq.sum())), max=1.0)
    noise = (freq**0.75) / (freq**0.75).sum()  # negative-sampling distribution

    with torch.random.fork_rng():  # parameter init from the config's seed, not the global RNG
        torch.manual_seed(cfg.seed)
        model = SkipGram(len(words), cfg.d_embed)
    if cfg.optimizer == "adam":
        opt = torch.optim.SparseAdam(list(model.parameters()), lr=cfg.lr)
    elif cfg.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    else:
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {cfg.optimizer!r}")
    batches = []  # (centres, contexts), each (B,): every epoch's pairs, shuffled, cut into batches
    for _ in range(cfg.epochs):
        keep = torch.rand(ids_t.numel(), generator=g, dtype=torch.float64) < keep_prob[ids_t]
        centres, contexts = skipgram_pairs(ids_t[keep], sent_t[keep], cfg.window, g)
        perm = torch.randperm(centres.numel(), generator=g)
        batches += zip(centres[perm].split(cfg.batch_size), contexts[perm].split(cfg.batch_size), strict=True)
    if not batches:
        raise ValueError("no training pairs: the sentences are too short for the window")
    summed = cfg.optimizer == "sgd"  # word2vec's SGD rate is per pair: differentiate the batch's summed loss

    def batch_loss(step: int) -> Tensor:
        c, o = batches[step]  # (B,), (B,)
        neg = torch.multinomial(noise, c.numel() * cfg.n_negatives, replacement=True, generator=g)
        loss = model(c, o, neg.view(-1, cfg.n_negatives))  # the mean over the batch's pairs; neg (B, K)
        return loss * c.numel() if summed else loss

    start = time.perf_counter()

    def report(step: int, loss: float) -> None:
        if verbose and step % 200 == 0:
            print(f"step {step}/{len(batches)} loss {loss:.3f} ({time.perf_counter() - start:.1f} s)")

    losses = run_steps(opt, batch_loss, len(batches), lambda step: cfg.lr * (1 - step / len(batches)), callback=report)
    if summed:
        losses = [loss / c.numel() for loss, (c, _) in zip(losses, batches, strict=True)]
    weight = model.in_embed.weight
    if cfg.add_context_vectors:
        weight = weight + model.out_embed.weight
    vectors = WordVectors(words, weight)
    vectors.losses = losses
    return vectors
