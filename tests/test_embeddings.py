"""Tests of companion.text.word_vectors: skip-gram with negative sampling and nearest neighbours."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
import torch

from companion.text.tokenization import rank_words
from companion.text.word_vectors import (
    SkipGram,
    Word2VecConfig,
    WordVectors,
    skipgram_pairs,
    train_word2vec,
)

GROUPS = [
    ["apple", "banana", "cherry", "grape", "mango"],
    ["red", "green", "blue", "yellow", "purple"],
    ["dog", "cat", "horse", "sheep", "goat"],
    ["run", "jump", "swim", "walk", "climb"],
]


def planted_corpus(n_sentences: int = 400, length: int = 8, seed: int = 0) -> list[list[str]]:
    """Each sentence uses the words of one group only: co-occurrence is planted by group."""
    rng = random.Random(seed)
    sentences = []
    for _ in range(n_sentences):
        group = rng.choice(GROUPS)
        sentences.append([rng.choice(group) for _ in range(length)])
    return sentences


CONFIG = Word2VecConfig(
    d_embed=16, window=3, n_negatives=5, min_count=1, subsample_t=None, epochs=3, batch_size=512, lr=0.05, seed=0
)


@pytest.fixture(scope="module")
def planted_vectors() -> WordVectors:
    return train_word2vec(planted_corpus(), CONFIG)


def test_planted_neighbours_come_out_nearest(planted_vectors):
    wv = planted_vectors
    assert len(wv) == 20 and wv.vectors.shape == (20, 16)
    for group in GROUPS:
        for word in group:
            neighbours = [w for w, _ in wv.nearest_neighbours(word, k=4)]
            assert sorted(neighbours) == sorted(set(group) - {word}), (word, neighbours)
    assert wv.similarity("apple", "banana") > wv.similarity("apple", "dog") + 0.3


def test_loss_falls(planted_vectors):
    losses = planted_vectors.losses
    start, end = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert start == pytest.approx(6 * math.log(2), rel=0.05)  # all scores 0 at the start: (1+K) log 2
    assert end < 0.7 * start


def test_deterministic_for_a_seed():
    corpus = planted_corpus(200)
    a = train_word2vec(corpus, CONFIG)
    b = train_word2vec(corpus, CONFIG)
    c = train_word2vec(corpus, Word2VecConfig(**{**CONFIG.__dict__, "seed": 1}))
    assert torch.equal(a.vectors, b.vectors) and a.losses == b.losses
    assert not torch.equal(a.vectors, c.vectors)


def test_cosine_similarity_and_neighbour_order():
    vectors = torch.tensor([[1.0, 0.0], [2.0, 0.1], [0.0, 3.0], [-1.0, 0.0]])
    wv = WordVectors(["a", "b", "c", "d"], vectors)
    assert wv.similarity("a", "b") == pytest.approx(2 / math.hypot(2, 0.1))
    assert wv.similarity("a", "d") == pytest.approx(-1.0)
    assert [w for w, _ in wv.nearest_neighbours("a", k=3)] == ["b", "c", "d"]
    assert torch.equal(wv["c"], vectors[2]) and "c" in wv and "z" not in wv


def test_unknown_words_and_bad_arguments(planted_vectors):
    with pytest.raises(ValueError, match="word 'zebra' is not in the vocabulary of 20 words"):
        planted_vectors.nearest_neighbours("zebra")
    with pytest.raises(ValueError, match="not in the vocabulary"):
        planted_vectors.similarity("apple", "zebra")
    with pytest.raises(ValueError, match="not in the vocabulary"):
        planted_vectors["zebra"]
    with pytest.raises(ValueError, match="k must be >= 1"):
        planted_vectors.nearest_neighbours("apple", k=0)
    with pytest.raises(ValueError, match="optimizer must be"):
        train_word2vec(planted_corpus(10), Word2VecConfig(min_count=1, optimizer="lbfgs"))
    with pytest.raises(ValueError, match="only 1 words occur"):
        train_word2vec([["a", "a", "b"]], Word2VecConfig(min_count=2))


def test_rank_words_orders_by_count_then_alphabet():
    words, counts = rank_words([["b", "a", "c", "a"], ["c", "d", "a"]], min_count=1, max_size=3)
    assert words == ["a", "c", "b"] and counts == [3, 2, 1]
    assert rank_words([["x", "y", "y"]], min_count=2) == (["y"], [2])


def test_skipgram_pairs_match_a_brute_force_loop():
    ids = torch.tensor([5, 6, 7, 8, 9, 1, 2, 3])
    sentence = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1])
    window = 3
    got = skipgram_pairs(ids, sentence, window, torch.Generator().manual_seed(4))
    reach = torch.randint(1, window + 1, (8,), generator=torch.Generator().manual_seed(4))
    expected = Counter()
    for i in range(8):
        for j in range(8):
            if i != j and sentence[i] == sentence[j] and abs(i - j) <= reach[i]:
                expected[(int(ids[i]), int(ids[j]))] += 1
    assert Counter(zip(got[0].tolist(), got[1].tolist())) == expected
    assert (5, 1) not in expected and (9, 1) not in expected  # no pairs across sentences


def test_skipgram_loss_formula():
    torch.manual_seed(0)
    model = SkipGram(10, 4)
    torch.nn.init.normal_(model.out_embed.weight)
    c, o, neg = torch.tensor([1, 2]), torch.tensor([3, 4]), torch.tensor([[5, 6], [7, 8]])
    u, v = model.in_embed.weight.detach(), model.out_embed.weight.detach()

    def sig(x):
        return 1 / (1 + math.exp(-x))

    expected = 0.0
    for b in range(2):
        expected -= math.log(sig(float(u[c[b]] @ v[o[b]])))
        expected -= sum(math.log(sig(-float(u[c[b]] @ v[n]))) for n in neg[b])
    assert model(c, o, neg).item() == pytest.approx(expected / 2, rel=1e-5)


def test_training_restores_the_thread_count():
    before = torch.get_num_threads()
    train_word2vec(planted_corpus(50), Word2VecConfig(**{**CONFIG.__dict__, "epochs": 1, "num_threads": 1}))
    assert torch.get_num_threads() == before
