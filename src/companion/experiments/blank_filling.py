"""The blank-filling test: hide characters of held-out text and let a causal or a masked model guess them.

The masked model sees the corrupted window on both sides of each blank; the causal model predicts
each hidden character from the true text to its left. `blank_test` fixes the windows and the
blanks, `fill_predictions` scores a model on them, and `fill_sentence` fills the `_` of the
sentences that chapter 6 prints.
"""

from __future__ import annotations

import torch
from torch import nn

from companion.text.tokenization import CharTokenizer

SENTENCES = (
    "The k_ng is dead; long live the k_ng!",
    "I pr_y you, good my l_rd, what n_ws from the c_urt?",
    "She loves me n_t, and I am f__l to love her.",
    "Come, sw__t night, and bring me to my br_de.",
)
ANSWERS = (
    "The king is dead; long live the king!",
    "I pray you, good my lord, what news from the court?",
    "She loves me not, and I am fool to love her.",
    "Come, sweet night, and bring me to my bride.",
)


def blanks_right(filled: str, sentence: str, answer: str) -> tuple[int, int]:
    """(blanks filled with the right character, blanks) of one sentence with `_` blanks."""
    if not len(filled) == len(sentence) == len(answer):
        raise ValueError(f"filled, sentence and answer differ in length: {filled!r}, {sentence!r}, {answer!r}")
    blanks = [i for i, c in enumerate(sentence) if c == "_"]
    return sum(filled[i] == answer[i] for i in blanks), len(blanks)


def blank_test(
    val_ids: torch.Tensor, block_size: int, n_windows: int, p: float = 0.15, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed held-out windows (n, block_size + 1) and which of their last block_size characters to hide."""
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(len(val_ids) - block_size - 1, (n_windows,), generator=g)
    windows = val_ids[starts[:, None] + torch.arange(block_size + 1)]  # (n, T + 1)
    hide = torch.rand(n_windows, block_size, generator=g) < p  # (n, T) over windows[:, 1:]
    return windows, hide


@torch.no_grad()
def fill_predictions(
    model: nn.Module, kind: str, windows: torch.Tensor, hide: torch.Tensor, mask_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per hidden character: (guessed right, bool (n_hidden,); its negative log-probability (n_hidden,)).

    kind "mlm": one pass over windows[:, 1:] with every hidden character replaced by [MASK];
    kind "clm": the causal model predicts windows[:, 1:] from the true text to the left.
    """
    x = windows[:, 1:]  # (n, T): the characters to recover
    was_training = model.training
    model.eval()
    if kind == "mlm":
        logits = model(x.masked_fill(hide, mask_id)).logits
    elif kind == "clm":
        logits = model(windows[:, :-1]).logits  # position t predicts x[:, t]
    else:
        raise ValueError(f"kind must be 'clm' or 'mlm', got {kind!r}")
    model.train(was_training)
    logits = logits[..., :mask_id]  # (n, T, characters): never guess [MASK] itself
    right = (logits.argmax(-1) == x)[hide]  # (n_hidden,)
    nll = torch.nn.functional.cross_entropy(logits[hide], x[hide], reduction="none")  # (n_hidden,)
    return right, nll


def fill_blanks(
    model: nn.Module, kind: str, windows: torch.Tensor, hide: torch.Tensor, mask_id: int
) -> tuple[float, float]:
    """(accuracy, cross-entropy in nats) of the model's guesses of the hidden characters."""
    right, nll = fill_predictions(model, kind, windows, hide, mask_id)
    return right.float().mean().item(), nll.mean().item()


@torch.no_grad()
def fill_sentence(model: nn.Module, kind: str, sentence: str, tok: CharTokenizer, mask_id: int) -> str:
    """Fill the `_` of a sentence: the encoder in one pass, the GPT left to right (greedy)."""
    was_training = model.training
    model.eval()
    if kind == "mlm":
        x = torch.tensor([mask_id if c == "_" else tok.stoi[c] for c in sentence])[None]  # (1, T)
        best = model(x).logits[0, :, :mask_id].argmax(-1)  # (T,)
        out = "".join(tok.chars[best[i]] if c == "_" else c for i, c in enumerate(sentence))
    else:
        chars: list[str] = []
        for c in sentence:
            if c == "_":
                context = tok.encode("".join(chars))[-model.config.block_size :]
                logits = model(torch.tensor([context])).logits[0, -1, :mask_id]
                c = tok.chars[logits.argmax().item()]
            chars.append(c)
        out = "".join(chars)
    model.train(was_training)
    return out
