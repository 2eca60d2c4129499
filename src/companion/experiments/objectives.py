"""Causal vs masked language modelling on the same characters, for longer than a notebook can.

Chapter 5 trains a small GPT (causal LM) and a BERT-style encoder of the same shape (masked LM,
15% of positions, 80/10/10) on Shakespeare's characters with the same budget. This script runs
the same two models for more steps and measures, every `eval_interval` steps, how well each one
fills in blanks: 15% of the characters of fixed held-out windows are hidden, the masked model sees
the corrupted window on both sides, the causal model predicts each hidden character from the true
text to its left. It writes one small JSON (curves of validation loss and blank-filling accuracy,
the fills of a few sentences at the end, and how and where it ran) that chapter 5 plots.

    python -m companion.experiments.objectives                        # ~12 min on 2 cores
    python -m companion.experiments.objectives --preset tiny --out /tmp/objectives.json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from companion.data import load_corpus
from companion.models import GPT, EncoderConfig, EncoderForMaskedLM, GPTConfig
from companion.objectives import MaskedLM
from companion.positional import sinusoidal_encoding
from companion.tokenization import CharTokenizer
from companion.training import TrainConfig, train

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "results" / "objectives.json"
FORMAT = "companion-objectives"
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


@dataclass(frozen=True)
class ObjectivesConfig:
    """The two runs: one model shape, one recipe, one budget, two objectives."""

    name: str
    n_layers: int = 2
    n_heads: int = 4
    d_model: int = 128
    block_size: int = 64
    batch_size: int = 32
    steps: int = 700
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 50
    eval_interval: int = 50
    eval_steps: int = 8
    fill_windows: int = 512  # held-out windows of the blank-filling test
    mask_prob: float = 0.15
    corpus_chars: int | None = None  # use only the first this many characters (None: all)
    seed: int = 0

    def shape(self) -> dict[str, Any]:
        """The model shape both objectives share (pre-LN, no dropout)."""
        return dict(
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            d_model=self.d_model,
            block_size=self.block_size,
            dropout=0.0,
            norm="pre",
        )

    def train_config(self) -> TrainConfig:
        """The trainer's configuration, the same for both runs."""
        return TrainConfig(
            steps=self.steps,
            batch_size=self.batch_size,
            block_size=self.block_size,
            lr=self.lr,
            min_lr=self.min_lr,
            warmup_steps=self.warmup_steps,
            eval_interval=self.eval_interval,
            eval_steps=self.eval_steps,
            seed=self.seed,
        )


PRESETS = {
    "notebook": ObjectivesConfig("notebook"),  # what chapter 5 trains live
    "full": ObjectivesConfig("full", steps=5000, eval_interval=250),
    "tiny": ObjectivesConfig(
        "tiny",
        n_layers=1,
        d_model=32,
        block_size=16,
        batch_size=8,
        steps=20,
        eval_interval=10,
        eval_steps=2,
        fill_windows=32,
        corpus_chars=60_000,
    ),
}


@dataclass
class CharData:
    """The corpus as character ids, split 90/10, with a [MASK] id after the characters."""

    tok: CharTokenizer
    train_ids: torch.Tensor  # (N_train,)
    val_ids: torch.Tensor  # (N_val,)

    @property
    def mask_id(self) -> int:
        """The id of [MASK]: one after the characters, never in the text."""
        return self.tok.vocab_size

    @property
    def vocab_size(self) -> int:
        """Characters plus [MASK]: both models get the same vocabulary."""
        return self.tok.vocab_size + 1


def load_chars(corpus_chars: int | None = None) -> CharData:
    """Shakespeare as character ids: the first 90% to train on, the last 10% held out."""
    text = load_corpus("shakespeare")
    text = text[:corpus_chars] if corpus_chars else text
    tok = CharTokenizer(text)
    ids = torch.tensor(tok.encode(text))
    n_train = int(0.9 * len(ids))
    return CharData(tok, ids[:n_train], ids[n_train:])


def sinusoidal_start(pos_emb: nn.Embedding, scale: float = 0.1) -> None:
    """Start a learned position embedding from the sinusoidal table (Chapter 2), scaled."""
    with torch.no_grad():
        pos_emb.weight.copy_(scale * sinusoidal_encoding(*pos_emb.weight.shape))


def build_models(cfg: ObjectivesConfig, vocab_size: int) -> dict[str, nn.Module]:
    """A GPT and an encoder of the same shape, same seed, both with the sinusoidal start."""
    torch.manual_seed(cfg.seed)
    gpt = GPT(GPTConfig(vocab_size=vocab_size, **cfg.shape()))
    torch.manual_seed(cfg.seed)
    bert = EncoderForMaskedLM(EncoderConfig(vocab_size=vocab_size, **cfg.shape()))
    sinusoidal_start(gpt.pos_emb)
    sinusoidal_start(bert.encoder.pos_emb)
    return {"clm": gpt, "mlm": bert}


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
def fill_blanks(
    model: nn.Module, kind: str, windows: torch.Tensor, hide: torch.Tensor, mask_id: int
) -> tuple[float, float]:
    """(accuracy, cross-entropy in nats) of the model's guesses of the hidden characters.

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
    accuracy = (logits.argmax(-1) == x)[hide].float().mean().item()
    ce = torch.nn.functional.cross_entropy(logits[hide], x[hide]).item()
    return accuracy, ce


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


def run(cfg: ObjectivesConfig, progress: bool = False) -> dict[str, Any]:
    """Train both models with `cfg`; return the JSON-ready result."""
    data = load_chars(cfg.corpus_chars)
    models = build_models(cfg, data.vocab_size)
    windows, hide = blank_test(data.val_ids, cfg.block_size, cfg.fill_windows, cfg.mask_prob, cfg.seed)
    tcfg = cfg.train_config()
    runs: dict[str, Any] = {}
    for kind, model in models.items():
        curve: dict[str, list[float]] = {"step": [], "fill_accuracy": [], "fill_cross_entropy": []}

        def measure(step: int, _history: Any = None, model=model, kind=kind, curve=curve) -> None:  # callback
            if step % cfg.eval_interval == 0 or step == cfg.steps:
                acc, ce = fill_blanks(model, kind, windows, hide, data.mask_id)
                curve["step"].append(step)
                curve["fill_accuracy"].append(round(acc, 5))
                curve["fill_cross_entropy"].append(round(ce, 5))

        measure(0)
        objective = "clm" if kind == "clm" else MaskedLM(data.mask_id, data.vocab_size, cfg.mask_prob)
        t0, c0 = time.perf_counter(), time.process_time()
        history = train(
            model, data.train_ids, data.val_ids, tcfg, objective=objective, progress=progress, callback=measure
        )
        runs[kind] = {
            "parameters": sum(p.numel() for p in model.parameters()),
            "wall_seconds": round(time.perf_counter() - t0, 1),
            "cpu_seconds": round(time.process_time() - c0, 1),
            "eval_step": history.eval_step,
            "val_loss": [round(v, 5) for v in history.val_loss],
            **curve,
            "sentences": {
                s: fill_sentence(model, kind, s, data.tok, data.mask_id) for s in SENTENCES if len(s) <= cfg.block_size
            },
        }
    return {
        "format": FORMAT,
        "version": 1,
        "config": dataclasses.asdict(cfg),
        "characters": {"train": len(data.train_ids), "val": len(data.val_ids), "vocab_size": data.vocab_size},
        "hidden_characters": int(hide.sum()),
        "runs": runs,
        "metadata": {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "torch_version": torch.__version__,
            "python_version": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": str(next(models["clm"].parameters()).device),
        },
    }


def load_result(path: str | Path = DEFAULT_OUT) -> dict[str, Any]:
    """Read a JSON written by this script (by default the committed full run)."""
    result = json.loads(Path(path).read_text(encoding="utf-8"))
    if result.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} file (format {result.get('format')!r})")
    return result


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(
        prog="python -m companion.experiments.objectives",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="full")
    p.add_argument("--steps", type=int, default=None, help="override the preset's number of steps")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default: {DEFAULT_OUT})")
    p.add_argument("--progress", action="store_true", help="show the trainer's progress bars")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = PRESETS[args.preset]
    if args.steps is not None:
        cfg = dataclasses.replace(cfg, steps=args.steps)
    t0 = time.perf_counter()
    result = run(cfg, progress=args.progress)
    result["command"] = " ".join(
        ["python -m companion.experiments.objectives", *(sys.argv[1:] if argv is None else argv)]
    )
    result["metadata"]["wall_seconds"] = round(time.perf_counter() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    for kind, r in result["runs"].items():
        print(
            f"{kind}: validation loss {r['val_loss'][-1]:.3f}, blank-filling accuracy "
            f"{r['fill_accuracy'][-1]:.3f} after {cfg.steps} steps ({r['wall_seconds']:.0f} s)"
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
