r"""Count-based n-gram language models: add-k and interpolated Kneser-Ney smoothing.

An n-gram model predicts a token from the n-1 tokens before it,

$$P(x_t \mid x_{<t}) \approx P(x_t \mid x_{t-n+1}, \dots, x_{t-1}),$$

and estimates that probability from counts. The maximum-likelihood estimate
$c(h\,w) / \sum_{w'} c(h\,w')$ gives probability zero to every n-gram absent from the training
text, so held-out perplexity would be infinite; smoothing moves some probability mass to them.

Tokens are characters when the model is fit on a ``str`` and any hashable objects (words,
integer ids) when fit on a list. Counting is vectorised with NumPy: every k-gram is given an
integer id, one ``np.unique`` per order, so a 5-gram model of a million characters fits in about
a second.

Conventions (documented once, used everywhere):

* **Vocabulary.** The sorted distinct training tokens, plus an ``"<unk>"`` bucket when
  ``unk=True`` (the default). At evaluation an unseen token is scored as ``"<unk>"``; with
  ``unk=False`` it raises ``ValueError``. ``vocab_size`` counts ``"<unk>"``.
* **Start of a sequence.** The first n-1 tokens of a scored sequence have shorter histories; they
  are scored by the model's lower-order distributions (order t+1 for the token at index t). Every
  token of the sequence is scored, so ``perplexity`` averages over all of them.
* **Add-k** (Laplace for k = 1): $P(w \mid h) = (c(h w) + k) / (c(h) + k V)$, with $c(h) =
  \sum_{w'} c(h w')$; an unseen context gives the uniform distribution $1/V$.
* **Interpolated Kneser-Ney** (Chen & Goodman 1999, section 3.5, one discount per order):

  $$P_k(w \mid h) = \frac{\max(c_k(h w) - D_k, 0)}{\sum_{w'} c_k(h w')}
    + \frac{D_k \, N_{1+}(h\,\bullet)}{\sum_{w'} c_k(h w')} \, P_{k-1}(w \mid h'),$$

  where $h'$ is $h$ without its first token, $N_{1+}(h\,\bullet)$ the number of distinct tokens
  with $c_k(h w) > 0$, and $P_0(w) = 1/V$. The counts $c_k$ are raw counts at the highest order
  $k = n$ and *continuation counts* $N_{1+}(\bullet\, h w)$ (the number of distinct tokens seen
  before $h w$) at lower orders. A context with no counts falls back to $P_{k-1}$. The discount
  is $D_k = n_1 / (n_1 + 2 n_2)$ (Ney et al. 1994), with $n_r$ the number of k-grams whose count
  $c_k$ is exactly $r$, unless ``discount`` is given.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

UNK = "<unk>"
SMOOTHINGS = ("add-k", "kneser-ney")


class NGramModel:
    """A count-based n-gram language model over characters or any hashable tokens.

    After ``fit``: ``vocab`` (list of tokens, ``"<unk>"`` last when ``unk=True``), ``vocab_size``
    and ``discounts`` (``discounts[k]`` for order k, index 0 unused; used by Kneser-Ney only).
    """

    def __init__(
        self, n: int, smoothing: str = "kneser-ney", k: float = 1.0, discount: float | None = None, unk: bool = True
    ):
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        if smoothing not in SMOOTHINGS:
            raise ValueError(f"unknown smoothing {smoothing!r}; choose one of {', '.join(SMOOTHINGS)}")
        if smoothing == "add-k" and not k > 0:
            raise ValueError(f"add-k smoothing needs k > 0, got k={k!r}")
        if discount is not None and not 0 < discount <= 1:
            raise ValueError(f"discount must be in (0, 1], got {discount!r}")
        self.n, self.smoothing, self.k, self.unk = int(n), smoothing, float(k), unk
        self._discount_arg = discount
        self._fitted = False

    # ------------------------------------------------------------------ fitting

    def fit(self, tokens: str | Sequence[Hashable]) -> NGramModel:
        """Count all k-grams, k = 1..n, of ``tokens`` and prepare the smoothed estimates."""
        if len(tokens) == 0:
            raise ValueError("cannot fit an n-gram model on an empty sequence")
        self._is_text = isinstance(tokens, str)
        if self._is_text:
            codes = np.frombuffer(tokens.encode("utf-32-le"), dtype=np.uint32)
            self._codes, ids = np.unique(codes, return_inverse=True)
            self.vocab = [chr(c) for c in self._codes]
        else:
            distinct = list(dict.fromkeys(tokens))
            try:
                distinct = sorted(distinct)
            except TypeError:
                pass  # unorderable tokens keep their first-occurrence order
            index = {tok: i for i, tok in enumerate(distinct)}
            self.vocab = distinct
            ids = np.fromiter((index[t] for t in tokens), dtype=np.int64, count=len(tokens))
        if self.unk and UNK not in self.vocab:
            self.vocab = self.vocab + [UNK]
        self._index = {tok: i for i, tok in enumerate(self.vocab)}
        self.unk_id = self.vocab.index(UNK) if self.unk else -1
        self.vocab_size = V = len(self.vocab)
        ids = ids.astype(np.int64)  # (N,)

        # Order k: keys = prefix_id * V + last token, sorted and unique; grams[i] = id of the
        # k-gram starting at position i.
        self._keys, self._counts, self._suffix = [None], [None], [None]
        grams = np.zeros(len(ids), dtype=np.int64)  # the empty 0-gram everywhere
        n_prev = 1
        for order in range(1, self.n + 1):
            if len(ids) < order:  # text shorter than n: no k-grams of this order
                self._keys.append(np.zeros(0, np.int64))
                self._counts.append(np.zeros(0, np.int64))
                self._suffix.append(np.zeros(0, np.int64))
                continue
            if n_prev > np.iinfo(np.int64).max // V:
                raise ValueError(f"too many distinct {order - 1}-grams to index with int64 keys")
            keys = grams[: len(ids) - order + 1] * V + ids[order - 1 :]  # (N - order + 1,)
            uniq, first, inverse, counts = np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
            # suffix = id of the (order-1)-gram that drops this k-gram's first token
            suffix = grams[first + 1] if order > 1 else np.zeros(len(uniq), np.int64)
            self._keys.append(uniq)
            self._counts.append(counts.astype(np.int64))
            self._suffix.append(suffix)
            grams, n_prev = inverse.reshape(-1).astype(np.int64), len(uniq)
        self._prepare()
        self._fitted = True
        return self

    def submodel(
        self, n: int, smoothing: str = "kneser-ney", k: float = 1.0, discount: float | None = None
    ) -> NGramModel:
        """A model of order ``n <= self.n`` with its own smoothing, sharing this model's counts.

        Equal to ``NGramModel(n, smoothing, k, discount, unk=self.unk).fit(text)`` on the same
        text, without counting again: a sweep over n and smoothings needs only one ``fit``.
        """
        self._check_fitted()
        sub = NGramModel(n, smoothing=smoothing, k=k, discount=discount, unk=self.unk)
        if sub.n > self.n:
            raise ValueError(f"a submodel needs n <= {self.n}, got n={n}")
        for name in ("_is_text", "_codes", "_index", "vocab", "unk_id", "vocab_size"):
            if hasattr(self, name):
                setattr(sub, name, getattr(self, name))
        sub._keys, sub._counts, sub._suffix = self._keys[: n + 1], self._counts[: n + 1], self._suffix[: n + 1]
        sub._prepare()
        sub._fitted = True
        return sub

    def _prepare(self) -> None:
        """Per order: the counts the estimate uses, context totals, N1+ and the discount."""
        V = self.vocab_size
        self._used, self._ctx_total, self._ctx_types, self.discounts = [None], [None], [None], [None]
        for order in range(1, self.n + 1):
            n_ctx = 1 if order == 1 else len(self._keys[order - 1])
            if self.smoothing == "kneser-ney" and order < self.n:
                # continuation count of each k-gram: distinct tokens seen before it
                used = np.bincount(self._suffix[order + 1], minlength=len(self._keys[order])).astype(np.int64)
            else:
                used = self._counts[order]
            prefix = self._keys[order] // V
            self._used.append(used)
            self._ctx_total.append(np.bincount(prefix, weights=used, minlength=n_ctx))
            self._ctx_types.append(np.bincount(prefix, weights=used > 0, minlength=n_ctx))
            n1, n2 = np.sum(used == 1), np.sum(used == 2)
            d = self._discount_arg
            if d is None:
                d = n1 / (n1 + 2 * n2) if n1 > 0 else 0.5
            self.discounts.append(float(d))

    # ------------------------------------------------------------------ lookups

    def _check_fitted(self) -> None:
        if not self._fitted:
            raise ValueError("the model is not fitted yet: call fit(tokens) first")

    def encode(self, tokens: str | Sequence[Hashable]) -> np.ndarray:
        """Map tokens to vocabulary ids (unseen tokens to ``<unk>``, or ``ValueError`` if ``unk=False``)."""
        self._check_fitted()
        if isinstance(tokens, str) and self._is_text:
            codes = np.frombuffer(tokens.encode("utf-32-le"), dtype=np.uint32)
            pos = np.minimum(np.searchsorted(self._codes, codes), len(self._codes) - 1)
            known = self._codes[pos] == codes
            ids = pos.astype(np.int64)
            unknown = [chr(c) for c in codes[~known][:1]]
        else:
            ids = np.fromiter((self._index.get(t, -1) for t in tokens), dtype=np.int64, count=len(tokens))
            known = ids >= 0
            unknown = [tokens[i] for i in np.flatnonzero(~known)[:1]]
        if unknown:
            if not self.unk:
                raise ValueError(
                    f"token {unknown[0]!r} is not in the vocabulary (fit with unk=True to map it to {UNK!r})"
                )
            ids[~known] = self.unk_id
        return ids

    def _lookup(self, order: int, prev: np.ndarray, tok: np.ndarray) -> np.ndarray:
        """Ids of the k-grams (prev gram, tok) at ``order``; -1 where unseen (or prev is -1)."""
        keys = self._keys[order]
        query = np.where(prev >= 0, prev, 0) * self.vocab_size + tok
        pos = np.minimum(np.searchsorted(keys, query), max(len(keys) - 1, 0))
        found = (prev >= 0) & (len(keys) > 0)
        if len(keys):
            found &= keys[pos] == query
        return np.where(found, pos, -1)

    def count(self, ngram: Sequence[Hashable]) -> int:
        """Raw training count of one k-gram (1 <= k <= n), e.g. ``model.count("the")``."""
        self._check_fitted()
        if not 1 <= len(ngram) <= self.n:
            raise ValueError(f"n-gram length must be between 1 and n={self.n}, got {len(ngram)}")
        gid = np.zeros(1, np.int64)
        for order, tok in enumerate(self.encode(ngram), start=1):
            gid = self._lookup(order, gid, np.array([tok]))
        return int(self._counts[len(ngram)][gid[0]]) if gid[0] >= 0 else 0

    def distinct_ngrams(self, order: int | None = None) -> int:
        """Number of distinct ``order``-grams (default n) in the training text."""
        self._check_fitted()
        order = self.n if order is None else order
        if not 1 <= order <= self.n:
            raise ValueError(f"order must be between 1 and n={self.n}, got {order}")
        return len(self._keys[order])

    def singleton_share(self, order: int | None = None) -> float:
        """Share of the distinct ``order``-grams (default n) of the training text seen exactly once."""
        self._check_fitted()
        order = self.n if order is None else order
        if not 1 <= order <= self.n:
            raise ValueError(f"order must be between 1 and n={self.n}, got {order}")
        counts = self._counts[order]
        return float(np.mean(counts == 1)) if len(counts) else 0.0

    # ------------------------------------------------------------------ probabilities

    def _probs(self, ctx: list[np.ndarray], tok: np.ndarray, max_order: np.ndarray) -> np.ndarray:
        """P(tok | context) for M queries.

        ctx[k] (M,) is the id of the (k-1)-gram context used at order k (-1 if unseen),
        tok (M,) the token ids and max_order (M,) the highest order each query may use.
        """
        V = self.vocab_size
        p = np.full(len(tok), 1.0 / V)  # P_0 = uniform, (M,)
        for order in range(1, self.n + 1):
            h = ctx[order]
            active = (max_order >= order) & (h >= 0)
            hh = np.where(active, h, 0)
            total = self._ctx_total[order][hh] if len(self._ctx_total[order]) else np.zeros(len(tok))
            gid = self._lookup(order, np.where(active, h, -1), tok)
            c = np.where(gid >= 0, self._used[order][np.maximum(gid, 0)], 0).astype(np.float64)
            if self.smoothing == "add-k":
                q = (c + self.k) / (total + self.k * V)  # unseen context: total = 0 -> 1/V
                p = np.where(max_order >= order, np.where(active, q, 1.0 / V), p)
            else:
                seen = active & (total > 0)
                denom = np.where(seen, total, 1.0)
                d = self.discounts[order]
                q = np.maximum(c - d, 0.0) / denom + d * self._ctx_types[order][hh] / denom * p
                p = np.where(seen, q, p)
        return p

    def log_probs(self, tokens: str | Sequence[Hashable]) -> np.ndarray:
        """Natural-log probability of every token of ``tokens`` given the tokens before it, (T,)."""
        ids = self.encode(tokens)  # (T,)
        T = len(ids)
        if T == 0:
            raise ValueError("cannot score an empty sequence")
        # grams[k][i] = id of the k-gram starting at i (-1 if unseen), for k = 0..n-1
        grams = [np.zeros(T, np.int64)]
        for order in range(1, self.n):
            grams.append(self._lookup(order, grams[-1][: T - order + 1], ids[order - 1 :]))
        t = np.arange(T)
        ctx = [None]
        for order in range(1, self.n + 1):
            start = t - (order - 1)  # the context of order k for token t starts at t-k+1
            g = grams[order - 1]
            ctx.append(np.where(start >= 0, g[np.clip(start, 0, len(g) - 1)] if len(g) else -1, -1))
        p = self._probs(ctx, ids, np.minimum(t + 1, self.n))
        return np.log(p)

    def nll(self, tokens: str | Sequence[Hashable]) -> float:
        """Mean negative log-likelihood per token, in nats."""
        return float(-self.log_probs(tokens).mean())

    def perplexity(self, tokens: str | Sequence[Hashable]) -> float:
        """exp(mean negative log-likelihood): the model's effective branching factor on ``tokens``."""
        return float(np.exp(self.nll(tokens)))

    def next_token_distribution(self, context: str | Sequence[Hashable] = ()) -> np.ndarray:
        """P(w | context) for every w in ``vocab``, (V,); only the last n-1 context tokens matter."""
        self._check_fitted()
        tail = context[max(len(context) - (self.n - 1), 0) :]
        ctx_ids = self.encode(tail) if len(tail) else np.zeros(0, np.int64)
        L = len(ctx_ids)
        V = self.vocab_size
        ctx = [None]
        for order in range(1, self.n + 1):  # the context of order k is the last k-1 tokens
            gid = self._context_id(ctx_ids[L - (order - 1) :]) if order - 1 <= L else np.array([-1])
            ctx.append(np.full(V, gid[0]))  # (V,)
        return self._probs(ctx, np.arange(V), np.full(V, min(L + 1, self.n)))

    def _context_id(self, ctx_ids: np.ndarray) -> np.ndarray:
        """Id of the gram ``ctx_ids`` at order len(ctx_ids) (array of one id; -1 if unseen; 0 if empty)."""
        gid = np.zeros(1, np.int64)
        for order, tok in enumerate(ctx_ids, start=1):
            gid = self._lookup(order, gid, np.array([tok]))
        return gid

    def prob(self, context: str | Sequence[Hashable], token: Hashable) -> float:
        """P(token | context); only the last n-1 tokens of ``context`` are used."""
        return float(self.next_token_distribution(context)[self.encode([token])[0]])

    # ------------------------------------------------------------------ sampling and sparsity

    def sample(self, n_tokens: int, seed: int = 0, prompt: str | Sequence[Hashable] = ()) -> str | list:
        """Return ``prompt`` followed by ``n_tokens`` sampled tokens (a str if fit on a str).

        ``"<unk>"`` is never sampled: its probability is removed and the rest renormalised.
        """
        self._check_fitted()
        if not isinstance(n_tokens, (int, np.integer)) or n_tokens < 0:
            raise ValueError(f"n_tokens must be a non-negative int, got {n_tokens!r}")
        rng = np.random.default_rng(seed)
        out = list(prompt)
        for _ in range(n_tokens):
            dist = self.next_token_distribution(out)
            if self.unk:
                dist = dist.copy()
                dist[self.unk_id] = 0.0
            out.append(self.vocab[rng.choice(self.vocab_size, p=dist / dist.sum())])
        return "".join(out) if self._is_text else out

    def unseen_share(self, tokens: str | Sequence[Hashable], order: int | None = None) -> float:
        """Share of the ``order``-grams of ``tokens`` (default n) never seen in training."""
        self._check_fitted()
        order = self.n if order is None else order
        if not 1 <= order <= self.n:
            raise ValueError(f"order must be between 1 and n={self.n}, got {order}")
        ids = self.encode(tokens)
        if len(ids) < order:
            raise ValueError(f"sequence of length {len(ids)} has no {order}-grams")
        gid = np.zeros(len(ids) - order + 1, np.int64)
        for k in range(1, order + 1):
            gid = self._lookup(k, gid, ids[k - 1 : len(ids) - order + k])
        return float(np.mean(gid < 0))


def unseen_ngram_share(train: str | Sequence[Hashable], heldout: str | Sequence[Hashable], n: int) -> float:
    """Share of the n-grams of ``heldout`` that never occur in ``train``."""
    return NGramModel(n, smoothing="add-k").fit(train).unseen_share(heldout)
