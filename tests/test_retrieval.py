"""Retrieval (`companion.analysis.retrieval`, `companion.text.passages`) and the paired tests of `analysis.metrics`:
BM25 against a float64 hand computation, ranks and recall@k on hand-made cases, dense scores against cosine
similarity, the Python-docs benchmark's passages and questions, McNemar against scipy, the paired bootstrap."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import binomtest

from companion.analysis.metrics import binomial_se, mcnemar_exact, mcnemar_p, paired_bootstrap
from companion.analysis.retrieval import BM25, dense_scores, first_relevant_rank, mrr, recall_at_k, words
from companion.text.passages import (
    QUESTIONS_FILE,
    Passage,
    python_docs_passages,
    python_docs_questions,
    split_paragraphs,
)

TOY = ["the cat sat on the mat", "the dog sat", "cats and dogs and cats", "a bird"]


def bm25_by_hand(query: str, docs: list[str], k1: float = 1.2, b: float = 0.75) -> list[float]:
    """The BM25 formula written out term by term in float64 (Lucene's idf), with no shared code."""
    toks = [d.lower().split() for d in docs]
    avgdl = sum(len(t) for t in toks) / len(toks)
    out = []
    for t in toks:
        s = 0.0
        for w in query.lower().split():
            n = sum(w in u for u in toks)
            f = t.count(w)
            if n == 0 or f == 0:
                continue
            idf = math.log(1 + (len(toks) - n + 0.5) / (n + 0.5))
            s += idf * f * (k1 + 1) / (f + k1 * (1 - b + b * len(t) / avgdl))
        out.append(s)
    return out


@pytest.mark.parametrize("query", ["cat sat", "the", "cats cats", "dog bird", "zebra", "sat sat on"])
@pytest.mark.parametrize(("k1", "b"), [(1.2, 0.75), (2.0, 0.0), (0.5, 1.0)])
def test_bm25_matches_the_formula(query, k1, b):
    got = BM25(TOY, k1=k1, b=b).scores(query)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, bm25_by_hand(query, TOY, k1, b), rtol=1e-12, atol=1e-15)


def test_bm25_worked_example():
    # "cat sat" against "the cat sat on the mat": N = 4, avgdl = 16 / 4 = 4, |d| = 6, f = 1 for each word, each in one
    # or two documents: idf(cat) = ln(1 + 3.5/1.5), idf(sat) = ln(1 + 2.5/2.5) = ln 2.
    norm = 1 + 1.2 * (1 - 0.75 + 0.75 * 6 / 4)
    expected = (math.log(1 + 3.5 / 1.5) + math.log(2)) * 2.2 / norm
    assert BM25(TOY).scores("cat sat")[0] == pytest.approx(expected, rel=1e-12)


def test_bm25_properties():
    bm = BM25(TOY)
    assert bm.scores("zebra").tolist() == [0.0] * 4  # a word in no passage scores nothing
    assert bm.idf("a") > bm.idf("the") > 0  # rarer words weigh more; Lucene's idf is never negative
    short, long = BM25(["cat", "cat dog dog dog dog dog"]).scores("cat")
    assert short > long  # the same count in a longer passage scores less (b > 0)
    one, two = BM25(["cat x", "cat cat", "y z"], b=0.0).scores("cat")[:2]
    assert one < two < 2 * one  # a repeated word counts, with diminishing returns
    assert words("The __exit__() method, 3.14") == ["the", "exit", "method", "3", "14"]


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="at least one passage"):
        BM25([])
    with pytest.raises(ValueError, match="k1"):
        BM25(TOY, b=1.5)
    with pytest.raises(ValueError, match="relevant ids"):
        first_relevant_rank([0.1, 0.2], [5])
    with pytest.raises(ValueError, match="ranks"):
        mrr([])
    with pytest.raises(ValueError, match="share d"):
        dense_scores(torch.zeros(2, 3), torch.zeros(4, 5))
    with pytest.raises(ValueError, match="max_words"):
        split_paragraphs("a b", 0)


def test_ranks_recall_and_mrr():
    scores = [0.9, 0.5, 0.7, 0.5, 0.1]
    assert first_relevant_rank(scores, [0]) == 1
    assert first_relevant_rank(scores, [2]) == 2
    assert first_relevant_rank(scores, [1]) == 4  # ties go against the retriever: 0.9, 0.7 and the other 0.5
    assert first_relevant_rank(scores, [4, 2]) == 2  # the best relevant passage counts
    assert first_relevant_rank(torch.tensor(scores), [3]) == 4
    ranks = [1, 2, 5, 10]
    assert recall_at_k(ranks, 1) == 0.25 and recall_at_k(ranks, 5) == 0.75 and recall_at_k(ranks, 10) == 1.0
    assert mrr(ranks) == pytest.approx((1 + 1 / 2 + 1 / 5 + 1 / 10) / 4)


def test_dense_scores_are_cosine_similarities():
    g = torch.Generator().manual_seed(0)
    q, p = torch.randn(3, 8, generator=g), 5 * torch.randn(6, 8, generator=g)
    expected = torch.nn.functional.cosine_similarity(q[:, None, :], p[None, :, :], dim=-1)  # (3, 6)
    torch.testing.assert_close(dense_scores(q, p), expected)


def test_split_paragraphs_packs_and_cuts():
    text = "one two three\n\nfour five\n   \nsix seven eight nine ten eleven\n*****\n\ntwelve"
    assert split_paragraphs(text, 5) == ["one two three four five", "six seven eight nine ten", "eleven twelve"]
    assert split_paragraphs(text, 100) == [" ".join(text.replace("*****", "").split())]


def test_python_docs_benchmark():
    passages = python_docs_passages()
    assert 200 <= len(passages) <= 320  # small enough to embed in seconds
    assert [p.id for p in passages] == list(range(len(passages)))
    assert all(len(p.text.split(":", 1)[1].split()) <= 60 for p in passages)
    assert len({p.text for p in passages}) == len(passages)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # on this Python every question's evidence is found
        questions = python_docs_questions(passages)
    raw = json.loads(QUESTIONS_FILE.read_text(encoding="utf-8"))["questions"]
    assert len(questions) == len(raw) >= 40
    assert len({q.question for q in questions}) == len(questions)
    for q in questions:
        assert q.relevant and all(
            " ".join(q.evidence.split()) in " ".join(passages[i].text.split()) for i in q.relevant
        )
        assert q.evidence.lower() not in q.question.lower()  # the question is not the evidence copied


def test_missing_evidence_is_left_out_with_a_warning(tmp_path):
    path = tmp_path / "q.json"
    items = [{"question": "q1?", "evidence": "the dog"}, {"question": "q2?", "evidence": "no such words"}]
    path.write_text(json.dumps({"questions": items}))
    passages = [Passage(0, "t", "Title: the dog sat"), Passage(1, "t", "Title: the   dog ran")]
    with pytest.warns(UserWarning, match="1 question"):
        qs = python_docs_questions(passages, path)
    assert [(q.question, q.relevant) for q in qs] == [("q1?", (0, 1))]


@pytest.mark.parametrize("b, c", [(0, 0), (3, 0), (5, 5), (15, 7), (31, 7), (1, 40)])
def test_mcnemar_matches_scipy(b, c):
    expected = 1.0 if b + c == 0 else binomtest(b, b + c, 0.5).pvalue
    assert mcnemar_p(b, c) == pytest.approx(expected, rel=1e-9)
    a_right = [1] * b + [0] * c + [1, 1, 0]  # the last three items agree and do not count
    b_right = [0] * b + [1] * c + [1, 1, 0]
    assert mcnemar_exact(a_right, b_right) == {"b": b, "c": c, "p": pytest.approx(expected, rel=1e-9)}


def test_paired_bootstrap():
    rng = np.random.default_rng(1)
    a = rng.normal(0.5, 0.2, 400)
    out = paired_bootstrap(a, a - 0.1, n_boot=2000)
    assert out["diff"] == pytest.approx(0.1) and out["lo"] == pytest.approx(0.1) and out["hi"] == pytest.approx(0.1)
    noisy = paired_bootstrap(a, rng.normal(0.5, 0.2, 400), n_boot=2000, seed=3)
    half_width = (noisy["hi"] - noisy["lo"]) / 2
    assert half_width == pytest.approx(1.96 * math.sqrt(2 * 0.04 / 400), rel=0.15)  # the normal approximation
    assert paired_bootstrap(a, a[::-1], seed=5) == paired_bootstrap(a, a[::-1], seed=5)
    with pytest.raises(ValueError, match="one length"):
        paired_bootstrap([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="right/wrong"):
        mcnemar_exact([0.5], [1])


def test_binomial_se():
    assert binomial_se(0.5, 100) == 0.05 and binomial_se(0.0, 10) == 0.0
    with pytest.raises(ValueError):
        binomial_se(1.5, 10)
