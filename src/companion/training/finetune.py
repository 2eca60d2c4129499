r"""Fine-tuning a pre-trained language model for classification: vocabulary, head, freezing, training.

A classifier puts a *head* on a pre-trained *body*: the body maps a sentence to hidden states
$H \in \mathbb{R}^{T \times d}$, pooling turns them into one vector $h$, and a linear layer gives
logits $z = W h + b$ with $W \in \mathbb{R}^{K \times d}$. Training minimises the cross-entropy
$-\log \operatorname{softmax}(z)_y$. *Full fine-tuning* updates body and head (the body with a
small learning rate, so that it stays near what pre-training found); *freezing* the body sets
``requires_grad=False`` on its parameters, so their gradients are never computed and only the
head learns (a linear probe).

`WordVocab` is the word-level vocabulary shared by the pre-trained model and the bag-of-words
baseline; `fit` is a small supervised training loop used for classification and for the
sequence-to-sequence task.
"""

from __future__ import annotations

import copy
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from companion.analysis.metrics import check_labels
from companion.nn import GPT, ModelOutput, mean_pool
from companion.training.optim import param_groups
from companion.training.trainer import TrainConfig, lr_at

__all__ = [
    "FinetuneConfig",
    "SequenceClassifier",
    "WordVocab",
    "count_parameters",
    "encode_texts",
    "fit",
    "fit_classifier",
    "freeze",
    "pad_batch",
    "pooled_features",
    "predict_logits",
    "set_dropout",
    "simple_tokenize",
]

_TOKEN = re.compile(r"\w+(?:'\w+)*|[^\w\s]")


def simple_tokenize(text: str) -> list[str]:
    """Lower-case words (keeping inner apostrophes: "it's") and single punctuation marks."""
    return _TOKEN.findall(text.lower())


class WordVocab:
    """Word-level vocabulary: [PAD] = 0, [UNK] = 1, [SEP] = 2 (document boundary), then words."""

    specials = ("[PAD]", "[UNK]", "[SEP]")
    pad_id, unk_id, sep_id = 0, 1, 2

    def __init__(self, words: Iterable[str]):
        self.itos: list[str] = list(self.specials)
        for w in words:
            if w not in self.specials:
                self.itos.append(w)
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("WordVocab got a repeated word")

    @classmethod
    def build(cls, texts: Iterable[str], max_size: int | None = None, min_count: int = 1) -> WordVocab:
        """The most frequent words of `texts` (ties broken alphabetically), at most max_size ids in all.

        `texts` is an iterable of strings; a single string counts as one text.
        """
        if isinstance(texts, str):
            texts = [texts]
        counts = Counter(w for t in texts for w in simple_tokenize(t))
        ranked = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        if max_size is not None:
            ranked = ranked[: max(0, max_size - len(cls.specials))]
        return cls(ranked)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str, max_len: int | None = None, sep: bool = True) -> list[int]:
        """Text -> ids, unknown words -> [UNK]; with `sep` a leading [SEP] marks the start of a document."""
        ids = [self.sep_id] * sep + [self.stoi.get(w, self.unk_id) for w in simple_tokenize(text)]
        return ids if max_len is None else ids[:max_len]

    def encode_corpus(self, text: str) -> list[int]:
        """A corpus of documents separated by blank lines -> one id stream, [SEP] before each document."""
        ids: list[int] = []
        for doc in text.split("\n\n"):
            if doc.strip():
                ids += self.encode(doc)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> words joined by spaces (specials shown as written)."""
        return " ".join(self.itos[int(i)] for i in ids)

    def to_hf(self):
        """The same tokenizer as a `transformers.PreTrainedTokenizerFast` (word-level model, same ids).

        Lower-casing, a split on whitespace, then the `simple_tokenize` pattern; a leading [SEP] is
        added as a special token, so ``tok(text)["input_ids"] == vocab.encode(text)``.
        """
        from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
        from transformers import PreTrainedTokenizerFast

        tok = Tokenizer(models.WordLevel(vocab=dict(self.stoi), unk_token="[UNK]"))
        tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(_TOKEN.pattern), behavior="isolated")]
        )
        tok.post_processor = processors.TemplateProcessing(single="[SEP] $A", special_tokens=[("[SEP]", self.sep_id)])
        tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces, tidies punctuation
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", bos_token="[SEP]", eos_token="[SEP]"
        )

    def __repr__(self) -> str:
        return f"WordVocab({len(self)} ids)"


def encode_texts(vocab: WordVocab, texts: Sequence[str], max_len: int) -> list[list[int]]:
    """Encode each text with a leading [SEP], cut to max_len ids; an empty list raises."""
    if len(texts) == 0:
        raise ValueError("encode_texts got no texts: the dataset is empty")
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    return [vocab.encode(t, max_len) for t in texts]


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[Tensor, Tensor]:
    """Right-pad id lists -> (ids (B, T), attention_mask (B, T) with 1 = real token)."""
    if len(seqs) == 0 or any(len(s) == 0 for s in seqs):
        raise ValueError("pad_batch needs at least one sequence and no empty sequence")
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


# ----------------------------------------------------------------------------- the classifier


class SequenceClassifier(nn.Module):
    """A pre-trained GPT body (its LM head removed) + pooling + dropout + Linear(d_model -> n_classes).

    pooling="mean": average of the hidden states of the real tokens; "last": the hidden state of
    the last real token (GPT-1's choice: in a causal model only it has seen the whole sentence).
    The GPT passed in is copied, so the pre-trained model itself is never changed.
    """

    def __init__(self, gpt: GPT, n_classes: int, *, pooling: str = "mean", dropout: float = 0.1):
        super().__init__()
        if pooling not in ("mean", "last"):
            raise ValueError(f"pooling must be 'mean' or 'last', got {pooling!r}")
        if n_classes < 2:
            raise ValueError(f"n_classes must be at least 2, got {n_classes}")
        self.body = copy.deepcopy(gpt)
        # the classifier reads the body's hidden_states and needs no vocabulary logits, so the LM
        # head is dropped (the tied token embedding stays in the body)
        self.body.lm_head = nn.Identity()
        self.pooling, self.n_classes = pooling, n_classes
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(gpt.config.d_model, n_classes)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def features(self, idx: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """idx (B, T) token ids, attention_mask (B, T) 1 = real token -> (B, d_model) sentence vectors."""
        hidden = self.body(idx, attention_mask=attention_mask).hidden_states  # (B, T, d_model)
        return self._pool(hidden, attention_mask)

    def _pool(self, hidden: Tensor, attention_mask: Tensor | None) -> Tensor:
        """Hidden states (B, T, d_model) -> one vector per sentence (B, d_model)."""
        if self.pooling == "mean":
            return mean_pool(hidden, attention_mask)  # (B, d_model)
        if attention_mask is None:
            return hidden[:, -1]
        last = attention_mask.long().sum(1) - 1  # (B,) index of the last real token (right padding)
        return hidden[torch.arange(len(last)), last]  # (B, d_model)

    def forward(
        self, idx: Tensor, targets: Tensor | None = None, *, attention_mask: Tensor | None = None
    ) -> ModelOutput:
        """idx (B, T) token ids -> ModelOutput(logits (B, n_classes), loss, hidden_states (B, T, d_model)).

        targets: (B,) class indices; the loss is their mean cross-entropy.
        attention_mask: (B, T) with 1 = real token, 0 = padding.
        """
        hidden = self.body(idx, attention_mask=attention_mask).hidden_states  # (B, T, d_model)
        logits = self.head(self.drop(self._pool(hidden, attention_mask)))  # (B, n_classes)
        loss = None
        if targets is not None:
            if targets.shape != idx.shape[:1]:
                raise ValueError(f"targets must be (B,) = ({idx.shape[0]},) class indices, got {tuple(targets.shape)}")
            loss = F.cross_entropy(logits, targets)
        return ModelOutput(logits, loss, hidden)


def freeze(module: nn.Module, frozen: bool = True) -> nn.Module:
    """Set requires_grad = not frozen on every parameter of `module` (returns it)."""
    for p in module.parameters():
        p.requires_grad_(not frozen)
    return module


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared ones once), optionally only those with requires_grad."""
    seen = {id(p): p for p in module.parameters() if p.requires_grad or not trainable_only}
    return sum(p.numel() for p in seen.values())


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
    `cfg.batch_size` indices (fewer at the end of an epoch). Returns the training loss per step.
    """
    if n_examples < 1:
        raise ValueError("the training set is empty: nothing to fine-tune on")
    schedule = TrainConfig(steps=cfg.steps, lr=1.0, min_lr=0.0, warmup_steps=cfg.warmup_steps)
    optimizer = _optimizer(model, head, cfg)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    gen = torch.Generator().manual_seed(cfg.seed)
    order, pos, losses = torch.randperm(n_examples, generator=gen), 0, []
    model.train()
    for step in range(cfg.steps):
        if pos >= n_examples:
            order, pos = torch.randperm(n_examples, generator=gen), 0
        idx = order[pos : pos + cfg.batch_size]
        pos += cfg.batch_size
        factor = lr_at(step, schedule)
        for g in optimizer.param_groups:
            g["lr"] = cfg.lr * g["lr_scale"] * factor
        loss = batch_loss(idx)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        losses.append(loss.item())
        if callback is not None:
            callback(step + 1, losses[-1])
    model.eval()
    return losses


def fit_classifier(
    model: SequenceClassifier, seqs: Sequence[Sequence[int]], labels: Sequence[int], cfg: FinetuneConfig
) -> list[float]:
    """Fine-tune a SequenceClassifier on id lists and labels; only parameters with requires_grad move."""
    y = check_labels(labels, model.n_classes)
    if len(seqs) != len(y):
        raise ValueError(f"{len(seqs)} sequences but {len(y)} labels")
    pad_id = WordVocab.pad_id

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
        ids, mask = pad_batch([seqs[i] for i in order[start : start + batch_size]], WordVocab.pad_id)
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
