"""Tests for companion.training.finetune and companion.nn.classifier (classification head, freezing, training loop),
companion.analysis.metrics and companion.analysis.baselines (bag-of-words and linear-probe logistic regression,
checked against scipy's optimiser on the same objective)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize

from companion.analysis.baselines import BagOfWords, fit_bag_of_words, fit_linear_probe, lbfgs_fit
from companion.analysis.metrics import (
    accuracy,
    check_labels,
    classification_report,
    confusion_matrix,
    f1_scores,
    macro_f1,
    mean_std,
)
from companion.nn import GPT, GPTConfig
from companion.nn.classifier import SequenceClassifier
from companion.scaling.counting import count_parameters
from companion.text.tokenization import WordTokenizer, pad_batch
from companion.training.finetune import (
    FinetuneConfig,
    fit,
    fit_classifier,
    freeze,
    pooled_features,
    predict_logits,
    set_dropout,
)

# ----------------------------------------------------------------------------- metrics


def test_metrics_on_a_worked_example():
    y = [0, 0, 0, 1, 1, 1, 1, 1]
    p = [0, 1, 0, 1, 1, 0, 1, 1]
    assert accuracy(p, y) == pytest.approx(6 / 8)
    assert confusion_matrix(p, y).tolist() == [[2, 1], [1, 4]]  # row = true, column = predicted
    # class 0: P = 2/3, R = 2/3 -> F1 = 2/3; class 1: P = 4/5, R = 4/5 -> F1 = 4/5
    assert f1_scores(p, y).tolist() == pytest.approx([2 / 3, 4 / 5])
    assert macro_f1(p, y) == pytest.approx((2 / 3 + 4 / 5) / 2)
    rep = classification_report(p, y)
    assert rep["confusion_matrix"] == [[2, 1], [1, 4]] and rep["accuracy"] == pytest.approx(0.75)


def test_f1_of_three_classes_matches_the_definition():
    rng = np.random.default_rng(0)
    y, p = rng.integers(3, size=200), rng.integers(3, size=200)
    for c in range(3):
        tp = np.sum((p == c) & (y == c))
        prec, rec = tp / np.sum(p == c), tp / np.sum(y == c)
        assert float(f1_scores(p, y, 3)[c]) == pytest.approx(2 * prec * rec / (prec + rec))


def test_labels_outside_the_classes_and_empty_data_raise():
    with pytest.raises(ValueError, match=r"labels\[2\] = 2 is outside the classes 0..1"):
        check_labels([0, 1, 2], 2)
    with pytest.raises(ValueError, match="outside the classes"):
        accuracy([0, 1], [0, -1])
    with pytest.raises(ValueError, match=r"predictions\[0\] = 3"):
        accuracy([3, 1], [0, 1])
    with pytest.raises(ValueError, match="empty"):
        accuracy([], [])
    with pytest.raises(ValueError, match="integer"):
        check_labels([0.0, 1.0], 2)
    with pytest.raises(ValueError, match="2 predictions but 3 labels"):
        accuracy([0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="n_classes"):
        check_labels([0], 1)


def test_mean_std_is_the_sample_standard_deviation():
    v = [0.71, 0.74, 0.69, 0.73]
    m, s = mean_std(v)
    assert m == pytest.approx(np.mean(v)) and s == pytest.approx(np.std(v, ddof=1))
    assert mean_std([0.5]) == (0.5, 0.0)
    with pytest.raises(ValueError):
        mean_std([])


# ----------------------------------------------------------------------------- the classifier


def _gpt(seed: int = 0, vocab: int = 40) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab, block_size=16, n_layers=2, n_heads=2, d_model=16))


def _hidden_of(gpt: GPT, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The final hidden states of the GPT itself, read with a hook on its last LayerNorm."""
    seen = {}

    def record(module, args, output):
        seen["h"] = output

    h = gpt.ln_f.register_forward_hook(record)
    gpt(ids, attention_mask=mask)
    h.remove()
    return seen["h"]


def test_classifier_body_is_a_copy_that_returns_hidden_states():
    gpt = _gpt().eval()
    clf = SequenceClassifier(gpt, 3, pooling="mean", dropout=0.0).eval()
    ids = torch.randint(3, 40, (2, 7))
    hidden = _hidden_of(gpt, ids)  # (B, T, d_model)
    assert torch.allclose(clf.features(ids), hidden.mean(1), atol=1e-6)
    assert isinstance(gpt.lm_head, torch.nn.Linear)  # the pre-trained model keeps its LM head
    assert clf.body.tok_emb.weight.data_ptr() != gpt.tok_emb.weight.data_ptr()
    out = clf(ids)
    assert out.logits.shape == (2, 3) and torch.allclose(out.hidden_states, hidden, atol=1e-6)
    assert torch.equal(gpt(ids).hidden_states, hidden)  # GPT's hidden_states: the output head's input


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_padding_does_not_change_a_sentence_vector(pooling):
    clf = SequenceClassifier(_gpt(), 2, pooling=pooling, dropout=0.0).eval()
    short, long = [2, 7, 9], [2, 5, 6, 7, 8, 11]
    ids, mask = pad_batch([short, long])
    both = clf.features(ids, mask)
    alone = clf.features(torch.tensor([short]))
    assert torch.allclose(both[0], alone[0], atol=1e-5)
    if pooling == "last":
        hidden = _hidden_of(clf.body, torch.tensor([short]))  # body's ln_f output
        assert torch.allclose(alone[0], hidden[0, -1], atol=1e-6)


def test_predict_and_features_keep_the_input_order():
    clf = SequenceClassifier(_gpt(), 2, dropout=0.0)
    seqs = [[2, 5], [2, 6, 7, 8, 9], [2], [2, 9, 9]]
    logits = predict_logits(clf, seqs, batch_size=2)
    for i, s in enumerate(seqs):
        assert torch.allclose(logits[i], clf(torch.tensor([s])).logits[0], atol=1e-5)
    assert pooled_features(clf, seqs).shape == (4, 16)


def test_classifier_arguments():
    with pytest.raises(ValueError, match="pooling"):
        SequenceClassifier(_gpt(), 2, pooling="max")
    with pytest.raises(ValueError, match="n_classes"):
        SequenceClassifier(_gpt(), 1)


def _toy_task(n: int = 64, seed: int = 0) -> tuple[list[list[int]], list[int]]:
    """Label 1 iff token 5 occurs; other tokens random."""
    g = torch.Generator().manual_seed(seed)
    seqs, labels = [], []
    for i in range(n):
        s = [2] + torch.randint(6, 40, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist()
        if i % 2:
            s[int(torch.randint(1, len(s), (1,), generator=g))] = 5
        seqs.append(s)
        labels.append(i % 2)
    return seqs, labels


def test_fine_tuning_learns_a_toy_task():
    seqs, labels = _toy_task()
    clf = SequenceClassifier(_gpt(), 2, dropout=0.0)
    losses = fit_classifier(clf, seqs, labels, FinetuneConfig(steps=80, batch_size=16, lr=3e-3, warmup_steps=5))
    assert sum(losses[-10:]) / 10 < 0.3
    assert accuracy(predict_logits(clf, seqs).argmax(1), labels) > 0.9


def test_freezing_the_body_trains_only_the_head():
    seqs, labels = _toy_task()
    clf = SequenceClassifier(_gpt(), 2, dropout=0.0)
    freeze(clf.body)
    assert count_parameters(clf, trainable_only=True) == 16 * 2 + 2
    before = {k: v.clone() for k, v in clf.state_dict().items()}
    fit_classifier(clf, seqs, labels, FinetuneConfig(steps=5, batch_size=8, lr=1e-2, warmup_steps=1))
    after = clf.state_dict()
    for k in before:
        changed = not torch.equal(before[k], after[k])
        assert changed == k.startswith("head."), k
    assert all(p.grad is None for p in clf.body.parameters())
    freeze(clf.body, False)
    assert count_parameters(clf, trainable_only=True) == count_parameters(clf)
    with pytest.raises(ValueError, match="no trainable parameter"):
        fit_classifier(freeze(clf), seqs, labels, FinetuneConfig(steps=1))


def test_freezing_does_not_change_the_heads_gradient():
    seqs, labels = _toy_task(16)
    ids, mask = pad_batch(seqs)
    y = torch.tensor(labels)
    grads = []
    for frozen in (False, True):
        clf = SequenceClassifier(_gpt(), 2, dropout=0.0)
        freeze(clf.body, frozen)
        clf(ids, y, attention_mask=mask).loss.backward()
        grads.append(clf.head.weight.grad.clone())
        body_grads = [p.grad for p in clf.body.parameters()]
        assert all(g is None for g in body_grads) == frozen
    assert torch.allclose(grads[0], grads[1], atol=1e-7)


def test_training_the_head_on_cached_features_equals_training_it_on_a_frozen_body():
    seqs, labels = _toy_task(40)
    cfg = FinetuneConfig(steps=12, batch_size=8, lr=1e-2, warmup_steps=2)
    clf = SequenceClassifier(_gpt(), 2, dropout=0.0)
    head0 = {k: v.clone() for k, v in clf.head.state_dict().items()}
    feats = pooled_features(clf, seqs)  # computed once, as the experiment does
    freeze(clf.body)
    fit_classifier(clf, seqs, labels, cfg)

    head = torch.nn.Linear(16, 2)
    head.load_state_dict(head0)
    y = torch.tensor(labels)
    fit(head, lambda idx: F.cross_entropy(head(feats[idx]), y[idx]), len(seqs), cfg, head=head)
    assert torch.allclose(head.weight, clf.head.weight, atol=1e-5)


def test_fit_classifier_rejects_bad_labels_and_empty_data():
    clf = SequenceClassifier(_gpt(), 2)
    with pytest.raises(ValueError, match="outside the classes 0..1"):
        fit_classifier(clf, [[2, 5], [2, 6]], [0, 2], FinetuneConfig(steps=1))
    with pytest.raises(ValueError, match="empty"):
        fit_classifier(clf, [], [], FinetuneConfig(steps=1))
    with pytest.raises(ValueError, match="2 sequences but 3 labels"):
        fit_classifier(clf, [[2, 5], [2, 6]], [0, 1, 1], FinetuneConfig(steps=1))
    with pytest.raises(ValueError, match="empty"):
        fit(clf, lambda idx: None, 0, FinetuneConfig(steps=1))


def test_head_learning_rate_and_schedule():
    clf = SequenceClassifier(_gpt(), 2, dropout=0.0)
    seqs, labels = _toy_task(16)
    seen = []
    cfg = FinetuneConfig(steps=10, batch_size=4, lr=1e-4, head_lr=1e-3, warmup_steps=2, weight_decay=0.0)
    orig = torch.optim.AdamW.step

    def spy(self, *a, **k):
        seen.append(sorted({(g["lr_scale"], round(g["lr"], 12)) for g in self.param_groups}))
        return orig(self, *a, **k)

    torch.optim.AdamW.step = spy
    try:
        fit_classifier(clf, seqs, labels, cfg)
    finally:
        torch.optim.AdamW.step = orig
    assert seen[1] == [(1.0, 1e-4), (10.0, 1e-3)]  # end of warm-up: the peak rates
    assert seen[0] == [(1.0, 0.5e-4), (10.0, 0.5e-3)]


def test_set_dropout():
    clf = set_dropout(SequenceClassifier(_gpt(), 2), 0.3)
    rates = {m.p for m in clf.modules() if isinstance(m, torch.nn.Dropout)}
    assert rates == {0.3}
    assert {m.dropout for m in clf.modules() if type(m).__name__ == "MultiHeadAttention"} == {0.3}
    with pytest.raises(ValueError):
        set_dropout(clf, 1.0)


# ----------------------------------------------------------------------------- linear baselines


def _scipy_logreg(x: np.ndarray, y: np.ndarray, k: int, l2: float) -> tuple[np.ndarray, np.ndarray]:
    """The same objective written in numpy and minimised by scipy's L-BFGS-B."""
    n, d = x.shape
    onehot = np.eye(k)[y]

    def objective(theta):
        w, b = theta[: d * k].reshape(k, d), theta[d * k :]
        z = x @ w.T + b
        z = z - z.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        g = (np.exp(logp) - onehot) / n
        loss = -(onehot * logp).sum() / n + 0.5 * l2 * (w * w).sum()
        return loss, np.concatenate([(g.T @ x + l2 * w).ravel(), g.sum(0)])

    res = minimize(
        objective,
        np.zeros(d * k + k),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 2000, "gtol": 1e-10, "ftol": 1e-14},
    )
    return res.x[: d * k].reshape(k, d), res.x[d * k :]


def test_bag_of_words_equals_scipy_logistic_regression_on_binary_features():
    texts = [
        "a great fun film",
        "great great acting",
        "a dull boring film",
        "boring plot , dull acting",
        "fun and moving",
        "dull",
        "a moving film",
        "not fun",
    ]
    labels = [1, 1, 0, 0, 1, 0, 1, 0]
    vocab = WordTokenizer.build(texts)
    seqs = [vocab.encode(t, sep=False) for t in texts]
    bow = fit_bag_of_words(seqs, labels, vocab.vocab_size + 3, l2=0.1)  # 3 extra ids never seen
    x = np.zeros((len(texts), vocab.vocab_size + 3))
    for i, s in enumerate(seqs):
        x[i, sorted(set(s))] = 1.0  # presence, not counts ("great great" counts once)
    w, b = _scipy_logreg(x, np.array(labels), 2, 0.1)
    assert np.allclose(bow.weight.weight.detach().numpy().T, w, atol=1e-4)
    assert np.allclose(bow.bias.detach().numpy(), b, atol=1e-4)
    assert bow.weight.weight[vocab.vocab_size :].abs().max() == 0  # unseen words keep weight 0
    assert bow([vocab.encode("great fun", sep=False)]).argmax(1).item() == 1


def test_linear_probe_equals_scipy_on_standardised_features():
    rng = np.random.default_rng(1)
    x = rng.normal(2.0, 3.0, size=(60, 5))
    y = rng.integers(3, size=60)
    probe = fit_linear_probe(torch.tensor(x, dtype=torch.float32), y.tolist(), n_classes=3, l2=0.05)
    xs = (x - x.mean(0)) / x.std(0, ddof=1)
    w, b = _scipy_logreg(xs, y, 3, 0.05)
    assert np.allclose(probe.linear.weight.detach().numpy(), w, atol=1e-3)
    logits = probe(torch.tensor(x, dtype=torch.float32)).detach().numpy()
    assert np.allclose(logits, xs @ w.T + b, atol=1e-3)


def test_lbfgs_reaches_a_stationary_point():
    rng = np.random.default_rng(2)
    x = torch.tensor(rng.normal(size=(50, 4)), dtype=torch.float32)
    y = torch.tensor(rng.integers(2, size=50))
    probe = fit_linear_probe(x, y.tolist(), l2=0.1)
    probe.zero_grad()
    (F.cross_entropy(probe(x), y) + 0.05 * probe.l2()).backward()
    assert probe.linear.weight.grad.abs().max() < 1e-4
    with pytest.raises(ValueError, match="l2"):
        lbfgs_fit(probe, x, y, l2=-1.0)


def test_baselines_reject_bad_labels_and_empty_data():
    with pytest.raises(ValueError, match="outside the classes"):
        fit_bag_of_words([[3, 4]], [2], 10)
    with pytest.raises(ValueError, match="empty"):
        fit_bag_of_words([], [], 10)
    with pytest.raises(ValueError, match="empty"):
        BagOfWords(10, 2)([])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        BagOfWords(10, 2)([[3, 12]])
    with pytest.raises(ValueError, match="features must be"):
        fit_linear_probe(torch.zeros(3, 2), [0, 1])
    with pytest.raises(ValueError, match="outside the classes"):
        fit_linear_probe(torch.zeros(2, 2), [0, 5])


def test_labels_that_are_not_numbers_raise_a_clear_error():
    with pytest.raises(ValueError, match="integer class indices"):
        check_labels(["positive", "negative"], 2)
