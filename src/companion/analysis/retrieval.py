r"""Retrieval: find the passages that answer a question, by words (BM25) or by meaning (dense embeddings).

**BM25** (Robertson and Zaragoza 2009) scores a passage $d$ for a query $q$ by the query's words it contains,

$$\text{BM25}(q, d) = \sum_{t \in q} \text{idf}(t)\,
\frac{f(t, d)\,(k_1 + 1)}{f(t, d) + k_1 \left(1 - b + b\,|d| / \overline{|d|}\right)},
\qquad \text{idf}(t) = \ln\left(1 + \frac{N - n_t + 0.5}{n_t + 0.5}\right),$$

with $f(t, d)$ the count of word $t$ in $d$, $|d|$ its length in words, $\overline{|d|}$ the mean length,
$N$ passages of which $n_t$ contain $t$; the sum runs over the query's words with repeats. A rare word
weighs more (idf), a repeated word counts less and less (the fraction saturates at $k_1 + 1$), and a long
passage is discounted ($b$). The defaults $k_1 = 1.2$, $b = 0.75$ are Lucene's; the idf is Lucene's too,
which is never negative. Words are runs of lower-case letters and digits (``__exit__`` is ``exit``).

**Dense retrieval** embeds the question and every passage with one encoder (here all-MiniLM-L6-v2,
`companion.analysis.baselines.sentence_embeddings`) and ranks passages by cosine similarity.

**Evaluation.** A question has one or more relevant passages; its *rank* is the position of the best-ranked
relevant passage, counting every irrelevant passage that scores at least as high (ties go against the
retriever). recall@k is the share of questions whose rank is at most k (with one answer per question this
is also called success@k or hit rate), MRR the mean of 1 / rank.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["BM25", "dense_scores", "first_relevant_rank", "mrr", "recall_at_k", "words"]

_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    """The words BM25 counts: runs of lower-case letters and digits of the lower-cased text."""
    return _WORD.findall(text.lower())


class BM25:
    """Okapi BM25 over a fixed list of passages; `scores(query)` -> one float64 score per passage."""

    def __init__(self, passages: Sequence[str], k1: float = 1.2, b: float = 0.75):
        if len(passages) == 0:
            raise ValueError("BM25 needs at least one passage")
        if k1 < 0 or not 0.0 <= b <= 1.0:
            raise ValueError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        self.k1, self.b = float(k1), float(b)
        counts = [Counter(words(p)) for p in passages]
        self.n_passages = len(passages)
        self.lengths = np.array([sum(c.values()) for c in counts], dtype=np.float64)  # (N,) words per passage
        self.mean_length = float(self.lengths.mean()) or 1.0
        self.postings: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # word -> (passage ids, counts)
        by_word: dict[str, list[tuple[int, int]]] = {}
        for i, c in enumerate(counts):
            for w, f in c.items():
                by_word.setdefault(w, []).append((i, f))
        for w, pairs in by_word.items():
            ids, freqs = zip(*pairs)
            self.postings[w] = (np.array(ids), np.array(freqs, dtype=np.float64))

    def idf(self, word: str) -> float:
        """ln(1 + (N - n + 0.5) / (n + 0.5)) for a word in n of the N passages (ln(1 + 2N + 1) if in none)."""
        n = len(self.postings[word][0]) if word in self.postings else 0
        return math.log(1.0 + (self.n_passages - n + 0.5) / (n + 0.5))

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every passage for `query`: (N,) float64."""
        out = np.zeros(self.n_passages, dtype=np.float64)
        norm = self.k1 * (1.0 - self.b + self.b * self.lengths / self.mean_length)  # (N,)
        for w in words(query):
            if w not in self.postings:
                continue  # a word in no passage adds nothing to any score
            ids, f = self.postings[w]
            out[ids] += self.idf(w) * f * (self.k1 + 1.0) / (f + norm[ids])
        return out


def dense_scores(queries: torch.Tensor, passages: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every query (Q, d) with every passage (N, d) -> (Q, N)."""
    if queries.dim() != 2 or passages.dim() != 2 or queries.shape[1] != passages.shape[1]:
        raise ValueError(
            f"queries (Q, d) and passages (N, d) must share d, got {tuple(queries.shape)} and {tuple(passages.shape)}"
        )
    return F.normalize(queries, dim=-1) @ F.normalize(passages, dim=-1).T  # (Q, N)


def first_relevant_rank(scores: Sequence[float] | np.ndarray | torch.Tensor, relevant: Iterable[int]) -> int:
    """1-based rank of the best relevant passage: 1 + the irrelevant passages scoring at least as high."""
    s = np.asarray(scores.detach().cpu() if isinstance(scores, torch.Tensor) else scores, dtype=np.float64)
    rel = sorted(set(relevant))
    if s.ndim != 1 or not rel or rel[0] < 0 or rel[-1] >= len(s):
        raise ValueError(f"need 1-D scores and relevant ids in [0, {len(s)}), got {rel}")
    best = s[rel].max()
    irrelevant = np.ones(len(s), dtype=bool)
    irrelevant[rel] = False
    return 1 + int((s[irrelevant] >= best).sum())


def _ranks(ranks: Sequence[int]) -> np.ndarray:
    """Ranks as an int array, checked to be non-empty and >= 1."""
    r = np.asarray(ranks)
    if r.ndim != 1 or len(r) == 0 or (r < 1).any():
        raise ValueError(f"ranks must be a non-empty list of integers >= 1, got {list(r)[:5]}")
    return r


def recall_at_k(ranks: Sequence[int], k: int) -> float:
    """Share of questions whose best relevant passage is in the top k."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return float((_ranks(ranks) <= k).mean())


def mrr(ranks: Sequence[int]) -> float:
    """Mean reciprocal rank: the mean of 1 / rank over the questions."""
    return float((1.0 / _ranks(ranks)).mean())
