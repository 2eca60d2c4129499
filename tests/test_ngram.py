"""Tests for companion.text.ngram: count-based n-gram language models."""

import math
import random
from collections import Counter

import numpy as np
import pytest

from companion.text.ngram import UNK, NGramModel, unseen_ngram_share

# ---------------------------------------------------------------- a slow, obvious reference


class ReferenceNGram:
    """Dict-of-tuples n-gram model written straight from the formulas in the module docstring."""

    def __init__(self, train, n, smoothing, k=1.0, discount=None):
        self.n, self.smoothing, self.k = n, smoothing, k
        self.vocab = sorted(set(train)) + [UNK]
        self.V = len(self.vocab)
        train = list(train)
        self.raw = {o: Counter(tuple(train[i : i + o]) for i in range(len(train) - o + 1)) for o in range(1, n + 2)}
        self.used = {}
        for o in range(1, n + 1):
            if smoothing == "kneser-ney" and o < n:
                cont = Counter(g[1:] for g in self.raw[o + 1])  # distinct left neighbours
                self.used[o] = cont
            else:
                self.used[o] = self.raw[o]
        self.D = {}
        for o in range(1, n + 1):
            counts = Counter(self.used[o].values())
            self.D[o] = (
                discount if discount is not None else (counts[1] / (counts[1] + 2 * counts[2]) if counts[1] else 0.5)
            )

    def p(self, h, w, order):
        if order == 0:
            return 1.0 / self.V
        h = tuple(h[len(h) - (order - 1) :]) if order > 1 else ()
        used = self.used[order]
        total = sum(c for g, c in used.items() if g[:-1] == h)
        c = used.get(h + (w,), 0)
        if self.smoothing == "add-k":
            return (c + self.k) / (total + self.k * self.V)
        if total == 0:
            return self.p(h, w, order - 1)
        types = sum(1 for g, cc in used.items() if g[:-1] == h and cc > 0)
        D = self.D[order]
        return max(c - D, 0) / total + D * types / total * self.p(h, w, order - 1)

    def dist(self, context):
        order = min(len(context) + 1, self.n)
        ctx = [t if t in self.vocab else UNK for t in context]
        return np.array([self.p(ctx, w, order) for w in self.vocab])

    def log_probs(self, seq):
        seq = [t if t in self.vocab else UNK for t in seq]
        return np.array([math.log(self.p(seq[:t], seq[t], min(t + 1, self.n))) for t in range(len(seq))])


def random_text(rng, length, alphabet="abcde"):
    # a skewed distribution with some structure, so counts of 1 and 2 both occur
    weights = [2.0**-i for i in range(len(alphabet))]
    return "".join(rng.choices(alphabet, weights=weights, k=length))


# ---------------------------------------------------------------- distributions


@pytest.mark.parametrize("smoothing", ["add-k", "kneser-ney"])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_probabilities_sum_to_one_for_random_contexts(n, smoothing):
    rng = random.Random(n)
    model = NGramModel(n, smoothing=smoothing, k=0.3).fit(random_text(rng, 400))
    for _ in range(30):
        # contexts of every length, with unseen tokens ("z") and unseen n-grams
        context = random_text(rng, rng.randrange(0, 8), alphabet="abcdez")
        dist = model.next_token_distribution(context)
        assert dist.shape == (model.vocab_size,)
        assert np.all(dist > 0)
        assert abs(dist.sum() - 1.0) < 1e-12


@pytest.mark.parametrize("smoothing", ["add-k", "kneser-ney"])
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_matches_reference_implementation(n, smoothing):
    rng = random.Random(100 + n)
    train = random_text(rng, 300)
    model = NGramModel(n, smoothing=smoothing, k=0.5).fit(train)
    ref = ReferenceNGram(train, n, smoothing, k=0.5)
    assert model.vocab == ref.vocab
    if smoothing == "kneser-ney":
        assert model.discounts[1:] == pytest.approx([ref.D[o] for o in range(1, n + 1)], abs=0)
    for _ in range(10):
        context = random_text(rng, rng.randrange(0, 6), alphabet="abcdez")
        np.testing.assert_allclose(model.next_token_distribution(context), ref.dist(context), rtol=1e-12)
    heldout = random_text(rng, 60, alphabet="abcdefz")
    np.testing.assert_allclose(model.log_probs(heldout), ref.log_probs(heldout), rtol=1e-12)


def test_word_tokens_match_reference():
    rng = random.Random(7)
    words = ["the", "cat", "sat", "on", "mat", "a", "dog"]
    train = rng.choices(words, weights=[6, 3, 2, 2, 1, 1, 1], k=200)
    model = NGramModel(3).fit(train)
    ref = ReferenceNGram(train, 3, "kneser-ney")
    heldout = ["the", "cat", "ate", "the", "mat"]
    np.testing.assert_allclose(model.log_probs(heldout), ref.log_probs(heldout), rtol=1e-12)
    assert model.prob(["the", "cat"], "sat") == pytest.approx(ref.p(["the", "cat"], "sat", 3), rel=1e-12)
    assert isinstance(model.sample(5, seed=0, prompt=["the"]), list)


def test_submodel_equals_a_fresh_fit():
    rng = random.Random(3)
    train, heldout = random_text(rng, 500), random_text(rng, 80, alphabet="abcdefz")
    big = NGramModel(5).fit(train)
    for n in (1, 2, 4, 5):
        for kwargs in (dict(smoothing="add-k", k=0.2), dict(smoothing="kneser-ney"), dict(discount=0.7)):
            fresh = NGramModel(n, **kwargs).fit(train)
            sub = big.submodel(n, **kwargs)
            assert sub.discounts == fresh.discounts
            np.testing.assert_array_equal(sub.log_probs(heldout), fresh.log_probs(heldout))
    with pytest.raises(ValueError, match="n <= 5"):
        big.submodel(6)


# ---------------------------------------------------------------- hand-checked values


def test_add_k_by_hand():
    model = NGramModel(2, smoothing="add-k", k=1.0).fit("abba")  # vocab a, b, <unk>: V = 3
    assert model.vocab == ["a", "b", UNK]
    assert model.prob("a", "b") == pytest.approx((1 + 1) / (1 + 3))  # c(ab) = 1, c(a.) = 1
    assert model.prob("a", "a") == pytest.approx(1 / 4)
    assert model.prob("b", "a") == pytest.approx((1 + 1) / (2 + 3))  # c(ba) = 1, c(b.) = 2
    assert model.prob("", "a") == pytest.approx((2 + 1) / (4 + 3))  # unigram
    assert model.prob("z", "a") == pytest.approx(1 / 3)  # unseen context: uniform


def test_kneser_ney_by_hand():
    # "abba", bigram, discount 0.5. Continuation counts: a <- {b} = 1, b <- {a, b} = 2.
    model = NGramModel(2, smoothing="kneser-ney", discount=0.5).fit("abba")
    p1 = {"a": 0.5 / 3 + 0.5 * 2 / 3 / 3, "b": 1.5 / 3 + 0.5 * 2 / 3 / 3, UNK: 0.5 * 2 / 3 / 3}
    assert p1 == pytest.approx({"a": 5 / 18, "b": 11 / 18, UNK: 2 / 18})
    np.testing.assert_allclose(model.next_token_distribution(""), [5 / 18, 11 / 18, 2 / 18])
    np.testing.assert_allclose(model.next_token_distribution("a"), [5 / 36, 29 / 36, 2 / 36])
    np.testing.assert_allclose(model.next_token_distribution("b"), [7 / 18, 5 / 9, 1 / 18])
    # "ab": the first token is scored by the unigram level, the second by the bigram level
    assert model.perplexity("ab") == pytest.approx(math.exp(-(math.log(5 / 18) + math.log(29 / 36)) / 2))
    # automatic discounts: order 2 raw counts ab, bb, ba all 1 -> D = 1; order 1: n1 = 1, n2 = 1 -> 1/3
    auto = NGramModel(2).fit("abba")
    assert auto.discounts[1:] == pytest.approx([1 / 3, 1.0])


def test_uniform_model_perplexity_equals_vocab_size():
    for smoothing in ["add-k", "kneser-ney"]:
        model = NGramModel(1, smoothing=smoothing, unk=False).fit("abcd" * 50)
        assert model.vocab_size == 4
        np.testing.assert_allclose(model.next_token_distribution(""), 0.25)
        assert model.perplexity("dcbaaabbd") == pytest.approx(4.0, rel=1e-12)


def test_bigram_model_learns_deterministic_text():
    model = NGramModel(2, smoothing="kneser-ney").fit("abc" * 200)
    assert model.prob("a", "b") > 0.95
    assert model.perplexity("abcabcabc") < model.perplexity("acbacbacb")
    assert NGramModel(2).fit("abc" * 200).perplexity("abcabc") < 1.5


def test_unk_handling():
    model = NGramModel(2).fit("abab")
    assert np.isfinite(model.nll("abz"))  # unseen 'z' is scored as <unk>
    assert model.log_probs("abz")[2] == pytest.approx(np.log(model.prob("b", UNK)))
    strict = NGramModel(2, unk=False).fit("abab")
    with pytest.raises(ValueError, match="'z' is not in the vocabulary"):
        strict.perplexity("abz")


# ---------------------------------------------------------------- counts, sparsity, sampling


def test_counts_and_unseen_share():
    train, heldout = "the cat sat on the mat", "the cat ate"
    model = NGramModel(3).fit(train)
    assert model.count("the") == 2 and model.count("t") == 5 and model.count("xyz") == 0
    assert model.count("at ") == 2
    for order in (1, 2, 3):
        seen = {train[i : i + order] for i in range(len(train) - order + 1)}
        grams = [heldout[i : i + order] for i in range(len(heldout) - order + 1)]
        expected = sum(g not in seen for g in grams) / len(grams)
        assert model.unseen_share(heldout, order) == pytest.approx(expected)
        assert unseen_ngram_share(train, heldout, order) == pytest.approx(expected)
        assert model.distinct_ngrams(order) == len(seen)
    assert model.unseen_share(heldout, 3) > model.unseen_share(heldout, 1)


def test_singleton_share_counts_ngrams_seen_once():
    from collections import Counter

    train = "the cat sat on the mat"
    model = NGramModel(4).fit(train)
    for order in (1, 2, 3, 4):
        counts = Counter(train[i : i + order] for i in range(len(train) - order + 1))
        expected = sum(c == 1 for c in counts.values()) / len(counts)
        assert model.singleton_share(order) == pytest.approx(expected)
    assert model.singleton_share() == model.singleton_share(4)
    assert model.submodel(2).singleton_share() == model.singleton_share(2)
    with pytest.raises(ValueError, match="order must be between 1 and n=4"):
        model.singleton_share(5)
    with pytest.raises(ValueError, match="not fitted"):
        NGramModel(2).singleton_share()


def test_sampling_is_seeded_and_respects_prompt():
    model = NGramModel(3).fit(random_text(random.Random(0), 500))
    a = model.sample(40, seed=1, prompt="ab")
    assert a == model.sample(40, seed=1, prompt="ab")
    assert a != model.sample(40, seed=2, prompt="ab")
    assert a.startswith("ab") and len(a) == 42 and UNK not in a and set(a) <= set("abcde")
    assert model.sample(0, seed=0, prompt="ab") == "ab"


# ---------------------------------------------------------------- errors


def test_bad_input_errors():
    for n in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="n must be an int"):
            NGramModel(n)
    with pytest.raises(ValueError, match="unknown smoothing"):
        NGramModel(2, smoothing="stupid-backoff")
    with pytest.raises(ValueError, match="k > 0"):
        NGramModel(2, smoothing="add-k", k=0)
    with pytest.raises(ValueError, match="discount"):
        NGramModel(2, discount=1.5)
    with pytest.raises(ValueError, match="empty"):
        NGramModel(2).fit("")
    unfitted = NGramModel(2)
    for call in (lambda: unfitted.sample(5), lambda: unfitted.perplexity("ab"), lambda: unfitted.prob("a", "b")):
        with pytest.raises(ValueError, match="not fitted"):
            call()
    model = NGramModel(2).fit("abab")
    with pytest.raises(ValueError, match="empty sequence"):
        model.perplexity("")
    with pytest.raises(ValueError, match="n_tokens"):
        model.sample(-1)
    with pytest.raises(ValueError, match="between 1 and n=2"):
        model.count("abc")
    with pytest.raises(ValueError, match="between 1 and n=2"):
        model.unseen_share("abab", order=3)
    with pytest.raises(ValueError, match="between 1 and n=2"):
        model.distinct_ngrams(0)
