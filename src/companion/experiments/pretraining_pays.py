"""Does pre-training help? Pre-train a small GPT on IMDB reviews, fine-tune it on Rotten Tomatoes.

One run pre-trains a word-level GPT once, with the causal-LM objective, on the unlabelled IMDB
review text (`load_corpus("reviews")`), then, for every number of labelled examples n and every
seed, trains and tests on the fixed Rotten Tomatoes splits (`load_sentiment("rotten_tomatoes")`):

* ``bow``: bag-of-words logistic regression (vocabulary of the n labelled sentences);
* ``scratch``: the same GPT architecture with random weights, trained on the n labels only;
* ``minilm_probe``: logistic regression on the real all-MiniLM-L6-v2 sentence embeddings;
* ``finetune_full``: our pre-trained GPT with a classification head, every weight trained;
* ``finetune_head``: our pre-trained GPT frozen, only the head trained (logistic regression on
  its pooled features, which is the same thing computed once).

The n labelled sentences are a class-balanced draw from the training split, different for each
seed (which also sets the initialisation). The small JSON result (accuracy per seed, mean ± sample
std, timings) is what chapter 9 reads, through ``companion.experiments.pretraining_report``.

    python -m companion.experiments.pretraining_pays                              # full (~25 min, 2 cores)
    python -m companion.experiments.pretraining_pays --preset tiny --out /tmp/tiny.json   # < 40 s
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from companion.analysis.baselines import fit_bag_of_words, fit_linear_probe, sentence_embeddings
from companion.analysis.metrics import accuracy, macro_f1, mean_std
from companion.experiments import default_out, experiment_parser, machine, parse_args, utc_now, write_json
from companion.experiments.pretraining_report import results_table
from companion.nn import GPT, GPTConfig
from companion.nn.classifier import SequenceClassifier
from companion.text.corpora import load_corpus, load_sentiment
from companion.text.tokenization import WordTokenizer, encode_texts, word_tokenize
from companion.training.finetune import FinetuneConfig, fit_classifier, pooled_features, predict_logits, set_dropout
from companion.training.trainer import TrainConfig, train
from companion.utils import set_seed

METHODS: dict[str, str] = {
    "bow": "bag-of-words logistic regression",
    "scratch": "our GPT, from scratch",
    "minilm_probe": "MiniLM embeddings + logistic regression",
    "finetune_head": "our pre-trained GPT, head only",
    "finetune_full": "our pre-trained GPT, fully fine-tuned",
}


@dataclass
class ExperimentConfig:
    """Everything one run of the experiment depends on."""

    name: str = "full"
    # data and vocabulary
    corpus_chars: int | None = None  # pre-train on the first this many characters (None: all)
    vocab_size: int = 8192  # words, including [PAD], [UNK], [SEP]
    max_len: int = 64  # ids per sentence (a leading [SEP] + words), also the model's block_size
    test_limit: int | None = None  # evaluate on the first this many test sentences (None: all 852)
    # the GPT
    n_layers: int = 4
    n_heads: int = 4
    d_model: int = 128
    # pre-training (causal LM)
    pretrain_steps: int = 2000
    pretrain_batch_size: int = 32
    pretrain_lr: float = 2e-3
    pretrain_warmup: int = 100
    # fine-tuning
    label_counts: tuple[int, ...] = (100, 300, 1000, 0)  # 0 = every training sentence
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: float = 2.0
    min_steps: int = 150
    batch_size: int = 32
    lr_full: float = 5e-4  # peak learning rate of the pre-trained body
    lr_scratch: float = 1e-3  # every weight of the model trained from scratch
    head_lr: float = 1e-3
    dropout: float = 0.1
    pooling: str = "mean"
    probe_l2: float = 0.1  # L2 strength of the logistic regressions on (standardised) sentence vectors
    bow_l2: float = 1e-3
    methods: tuple[str, ...] = tuple(METHODS)

    def __post_init__(self) -> None:
        self.label_counts = tuple(self.label_counts)
        self.seeds = tuple(self.seeds)
        self.methods = tuple(self.methods)
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise ValueError(f"unknown methods {sorted(unknown)}; choose from {list(METHODS)}")
        if not self.seeds or not self.label_counts:
            raise ValueError("need at least one seed and one label count")

    def model_config(self, vocab_size: int) -> GPTConfig:
        """The GPT used for pre-training, fine-tuning and training from scratch."""
        return GPTConfig(
            vocab_size=vocab_size,
            block_size=self.max_len,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            d_model=self.d_model,
            dropout=0.0,
        )

    def finetune_steps(self, n: int) -> int:
        """Optimizer steps for n labelled examples: `epochs` passes, at least `min_steps`."""
        return max(self.min_steps, math.ceil(self.epochs * n / self.batch_size))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict."""
        return dataclasses.asdict(self)


PRESETS: dict[str, ExperimentConfig] = {
    "full": ExperimentConfig(),
    # what the chapter's notebook runs live: one seed, two label counts, a short pre-training
    "notebook": ExperimentConfig(
        name="notebook",
        corpus_chars=4_000_000,
        vocab_size=4096,
        n_layers=2,
        n_heads=4,
        d_model=64,
        pretrain_steps=300,
        label_counts=(100, 1000),
        seeds=(0,),
        min_steps=100,
        test_limit=400,
    ),
    # a smoke test: every code path in seconds, numbers meaningless
    "tiny": ExperimentConfig(
        name="tiny",
        corpus_chars=300_000,
        vocab_size=2000,
        max_len=32,
        test_limit=100,
        n_layers=1,
        n_heads=2,
        d_model=32,
        pretrain_steps=30,
        pretrain_batch_size=16,
        pretrain_warmup=5,
        label_counts=(40, 80),
        seeds=(0, 1),
        min_steps=10,
        epochs=1.0,
        batch_size=16,
    ),
}


# ----------------------------------------------------------------------------- pieces


def labelled_subset(n_train: int, labels: list[int], n: int, seed: int) -> list[int]:
    """Indices of a class-balanced random draw of n training examples (all of them if n = 0 or n >= N)."""
    if n <= 0 or n >= n_train:
        return list(range(n_train))
    rng = np.random.default_rng(seed)
    y = np.asarray(labels)
    classes = np.unique(y)
    per_class = [n // len(classes) + (i < n % len(classes)) for i in range(len(classes))]
    picked = [rng.choice(np.flatnonzero(y == c), size=k, replace=False) for c, k in zip(classes, per_class)]
    return sorted(int(i) for i in np.concatenate(picked))


def pretrain(cfg: ExperimentConfig, log: Callable[[str], None] = print) -> tuple[GPT, WordTokenizer, dict[str, Any]]:
    """Build the word vocabulary on the review corpus and pre-train the GPT with the causal-LM objective."""
    text = load_corpus("reviews")
    if cfg.corpus_chars is not None:
        text = text[: cfg.corpus_chars]
    t0 = time.perf_counter()
    vocab = WordTokenizer.build(text.split("\n\n"), max_size=cfg.vocab_size)
    ids = torch.tensor(vocab.encode_corpus(text), dtype=torch.long)
    n_val = max(len(ids) // 50, cfg.max_len * 4)  # 2% of the stream, for the validation loss
    train_ids, val_ids = ids[n_val:], ids[:n_val]
    log(f"vocabulary {vocab.vocab_size} words; corpus {len(ids):,} tokens ({time.perf_counter() - t0:.1f} s)")
    set_seed(0)
    model = GPT(cfg.model_config(vocab.vocab_size))
    tcfg = TrainConfig(
        steps=cfg.pretrain_steps,
        batch_size=cfg.pretrain_batch_size,
        block_size=cfg.max_len,
        lr=cfg.pretrain_lr,
        min_lr=cfg.pretrain_lr / 10,
        warmup_steps=cfg.pretrain_warmup,
        eval_interval=max(1, cfg.pretrain_steps // 10),
        eval_steps=10,
        seed=0,
        device="cpu",
    )
    every = max(1, cfg.pretrain_steps // 5)

    def report(step: int, h) -> None:  # returns None: never stops training
        if step % every == 0:
            log(f"  pre-training step {step}/{cfg.pretrain_steps}: validation loss {h.val_loss[-1]:.3f}")

    history = train(model, train_ids, val_ids, tcfg, objective="clm", progress=False, callback=report)
    unk = float((train_ids == vocab.unk_id).float().mean())
    info = {
        "corpus_tokens": len(ids),
        "train_tokens": len(train_ids),
        "unk_rate": round(unk, 4),
        "tokens_seen": cfg.pretrain_steps * cfg.pretrain_batch_size * cfg.max_len,
        "parameters": sum(p.numel() for p in model.parameters()),
        "eval_step": history.eval_step,
        "val_loss": [round(v, 4) for v in history.val_loss],
        "seconds": round(history.wall_time[-1], 1) if history.wall_time else 0.0,
    }
    log(
        f"pre-trained {info['parameters']:,} parameters on {info['tokens_seen']:,} tokens: "
        f"val loss {history.val_loss[0]:.2f} -> {history.val_loss[-1]:.2f} in {info['seconds']:.0f} s"
    )
    return model, vocab, info


def _run_seed(cfg: ExperimentConfig, method: str, n_idx: list[int], seed: int, ctx: dict[str, Any]) -> list[int]:
    """Train one method on the labelled indices n_idx; return its test predictions."""
    tr_texts, y = ctx["train_texts"], [ctx["train_labels"][i] for i in n_idx]
    if method == "bow":
        vocab = WordTokenizer.build([tr_texts[i] for i in n_idx])
        model = fit_bag_of_words(
            encode_texts(vocab, [tr_texts[i] for i in n_idx], cfg.max_len), y, vocab.vocab_size, l2=cfg.bow_l2
        )
        with torch.no_grad():
            return model(encode_texts(vocab, ctx["test_texts"], cfg.max_len)).argmax(1).tolist()
    if method in ("minilm_probe", "finetune_head"):
        feats = ctx["minilm"] if method == "minilm_probe" else ctx["gpt_features"]
        probe = fit_linear_probe(feats["train"][n_idx], y, l2=cfg.probe_l2)
        with torch.no_grad():
            return probe(feats["test"]).argmax(1).tolist()
    # gradient fine-tuning: from scratch or from the pre-trained weights
    set_seed(seed)
    if method == "scratch":
        base, lr = GPT(cfg.model_config(ctx["vocab"].vocab_size)), cfg.lr_scratch
    else:
        base, lr = ctx["gpt"], cfg.lr_full
    clf = set_dropout(SequenceClassifier(base, 2, pooling=cfg.pooling), cfg.dropout)  # body too
    steps = cfg.finetune_steps(len(n_idx))
    fcfg = FinetuneConfig(
        steps=steps, batch_size=cfg.batch_size, lr=lr, head_lr=cfg.head_lr, warmup_steps=max(1, steps // 10), seed=seed
    )
    fit_classifier(clf, [ctx["train_seqs"][i] for i in n_idx], y, fcfg)
    return predict_logits(clf, ctx["test_seqs"]).argmax(1).tolist()


def _oov_rates(
    train_texts: list[str], subsets: dict[int, list[int]], test_texts: list[str], vocab: WordTokenizer
) -> dict[str, float]:
    """Fraction of test word tokens never seen in the labelled sentences, and outside the LM vocabulary."""
    test_words = [w for t in test_texts for w in word_tokenize(t)]
    out = {}
    for n, idx in subsets.items():
        seen = {w for i in idx for w in word_tokenize(train_texts[i])}
        out[str(n)] = round(sum(w not in seen for w in test_words) / len(test_words), 4)
    out["pretraining_vocabulary"] = round(sum(w not in vocab.stoi for w in test_words) / len(test_words), 4)
    return out


def run_experiment(
    cfg: ExperimentConfig,
    log: Callable[[str], None] = print,
    command: str = "",
    pretrained: tuple[GPT, WordTokenizer, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run every method, label count and seed; return the JSON-friendly result.

    `pretrained`: the (model, vocabulary, info) that `pretrain(cfg)` returned, to reuse it
    instead of pre-training again.
    """
    t_start, cpu_start = time.perf_counter(), time.process_time()
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    phases: dict[str, float] = {}
    splits = load_sentiment("rotten_tomatoes")
    train_texts = [t for t, _ in splits.train]
    train_labels = [y for _, y in splits.train]
    test = splits.test[: cfg.test_limit] if cfg.test_limit else splits.test
    test_texts, test_labels = [t for t, _ in test], [y for _, y in test]
    counts = [n if 0 < n < len(train_texts) else len(train_texts) for n in cfg.label_counts]
    subsets = {(n, s): labelled_subset(len(train_texts), train_labels, n, s) for n in counts for s in cfg.seeds}
    ctx: dict[str, Any] = {"train_texts": train_texts, "train_labels": train_labels, "test_texts": test_texts}

    needs_gpt = {"scratch", "finetune_full", "finetune_head"} & set(cfg.methods)
    pre_info = None
    if needs_gpt:
        t = time.perf_counter()
        ctx["gpt"], ctx["vocab"], pre_info = pretrained or pretrain(cfg, log)
        phases["pretrain"] = time.perf_counter() - t
        ctx["train_seqs"] = encode_texts(ctx["vocab"], train_texts, cfg.max_len)
        ctx["test_seqs"] = encode_texts(ctx["vocab"], test_texts, cfg.max_len)
    used = sorted({i for idx in subsets.values() for i in idx})  # embed only what some run uses
    if "finetune_head" in cfg.methods:
        t = time.perf_counter()
        body = SequenceClassifier(ctx["gpt"], 2, pooling=cfg.pooling, dropout=0.0)
        feats = torch.zeros(len(train_texts), cfg.d_model)
        feats[used] = pooled_features(body, [ctx["train_seqs"][i] for i in used])
        ctx["gpt_features"] = {"train": feats, "test": pooled_features(body, ctx["test_seqs"])}
        phases["gpt_features"] = time.perf_counter() - t
    if "minilm_probe" in cfg.methods:
        from companion.interop.hf import load_minilm

        t = time.perf_counter()
        encoder, tokenizer = load_minilm()
        emb = sentence_embeddings(encoder, tokenizer, [train_texts[i] for i in used] + test_texts)
        feats = torch.zeros(len(train_texts), emb.shape[1])
        feats[used] = emb[: len(used)]
        ctx["minilm"] = {"train": feats, "test": emb[len(used) :]}
        phases["minilm_embeddings"] = time.perf_counter() - t
        log(f"MiniLM embedded {emb.shape[0]:,} sentences in {phases['minilm_embeddings']:.0f} s")

    results: dict[str, dict[str, Any]] = {m: {} for m in cfg.methods}
    for method in cfg.methods:
        t = time.perf_counter()
        for n in counts:
            accs, f1s = [], []
            for seed in cfg.seeds:
                pred = _run_seed(cfg, method, subsets[(n, seed)], seed, ctx)
                accs.append(accuracy(pred, test_labels))
                f1s.append(macro_f1(pred, test_labels))
            mean, std = mean_std(accs)
            results[method][str(n)] = {
                "accuracy": [round(a, 4) for a in accs],
                "macro_f1": [round(f, 4) for f in f1s],
                "mean": round(mean, 4),
                "std": round(std, 4),
            }
            log(f"{method:>14} n={n:>5}: {100 * mean:5.1f} ± {100 * std:4.1f} %")
        phases[method] = time.perf_counter() - t

    return {
        "experiment": "does pre-training help? (chapter 9)",
        "command": command,
        "preset": cfg.name,
        "config": cfg.to_dict(),
        "methods": {m: METHODS[m] for m in cfg.methods},
        "label_counts": counts,
        "train_size": len(train_texts),
        "test_size": len(test_texts),
        "pretraining": pre_info,
        "oov": _oov_rates(train_texts, {n: subsets[(n, cfg.seeds[0])] for n in counts}, test_texts, ctx["vocab"])
        if "vocab" in ctx
        else None,
        "results": results,
        "metadata": {
            "wall_seconds": round(time.perf_counter() - t_start, 1),
            "cpu_seconds": round(time.process_time() - cpu_start, 1),
            "phase_seconds": {k: round(v, 1) for k, v in phases.items()},
            "date": utc_now(),
            **machine(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        },
    }


# ----------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command-line entry point: run a preset and write its JSON."""
    parser = experiment_parser("pretraining_pays", "finetune", __doc__.split("\n")[0], PRESETS)
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="override the preset's seeds")
    args, command = parse_args(parser, argv)
    cfg = dataclasses.replace(PRESETS[args.preset])
    if args.seeds:
        cfg.seeds = tuple(args.seeds)
    out = args.out or default_out("finetune", args.preset)
    result = run_experiment(cfg, log=lambda s: print(s, flush=True), command=command)
    write_json(out, result)
    print(results_table(result))
    print(f"wrote {out} ({result['metadata']['wall_seconds']:.0f} s wall)")
    return result


if __name__ == "__main__":
    main()
