"""The rungs of the ablation ladder: from a bigram table to the GPT-2 block, then the modern block.

Each rung is the one below it with ONE thing changed (Karpathy's "Let's build GPT" order):

=============  ==========================================================================================
rung           what it adds to the rung below
=============  ==========================================================================================
``bigram``     a (vocab_size, vocab_size) table: the current character's row is the next character's logits
``embed``      the same prediction factored through width d_model: a token embedding plus a learned
               position embedding, read by a linear head (still sees only the current character: this
               rung changes the parametrisation, so that the next one adds attention and nothing else)
``attention``  causal self-attention, ONE head of width d_model, in each of n_layers layers
               (``x = Attn(x)``): each position now reads the characters before it
``heads``      n_heads heads of width d_model / n_heads instead of one (same parameters)
``ffn``        a position-wise GELU MLP (4 d_model wide) after the attention of every layer
``residual``   residual connections: ``x = x + Attn(x)``, ``x = x + FFN(x)`` instead of ``x = Attn(x)``, ...
``gpt2``       LayerNorm before each sub-layer and after the stack (pre-LN): the GPT-2 block, the package's
               `GPT` itself
``modern``     the modern (Llama) block, the package's `Llama`: RMSNorm for LayerNorm, SwiGLU for the GELU
               MLP, rotary positions inside attention for the learned position table, no biases; its
               SwiGLU width makes its parameter count match the GPT-2 rung's (`matched_swiglu_width`)
=============  ==========================================================================================

The rungs ``embed`` .. ``residual`` are `LadderModel`, a GPT with parts switched off by flags; it
registers its layers in GPT's order, so at one seed it draws exactly GPT's weights for the parts
it has. Every rung has an untied output head (Llama's default, and what keeps the ``embed`` rung
a full bigram: a tied head could only score symmetric pairs).

Two initialisations (`INITS`), one for all the rungs of a ladder:

* ``"gpt2"``: what the package's models do, GPT-2's N(0, 0.02) (`init_gpt_weights`; a rung
  without residual connections has no residual branches to down-scale). It is made for a
  normalised residual stream: without LayerNorm the stream stays about 0.02 in size, queries and
  keys start near zero, attention stays uniform for a long time (the one-head and many-head rungs
  train to the same numbers for the first hundred steps) and the rungs below ``gpt2`` are starved;
* ``"pytorch"``: every layer's own PyTorch default (`pytorch_init`: Linear uniform in
  +-1/sqrt(fan_in), Embedding N(0, 1), norms 1 and 0), which gives every rung a stream of unit
  size to start from, with or without LayerNorm.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn

from companion.nn.attention import MultiHeadAttention
from companion.nn.blocks import FeedForward, check_decoder_inputs
from companion.nn.gpt import GPT, GPTConfig, init_gpt_weights
from companion.nn.llama import Llama, LlamaConfig
from companion.nn.output import ModelOutput
from companion.scaling.counting import gpt_parameters, llama_parameters
from companion.training.objectives import lm_loss

INITS = ("pytorch", "gpt2")
INIT_NAMES = {"pytorch": "PyTorch's default init", "gpt2": "GPT-2's N(0, 0.02) init"}
RUNGS = ("bigram", "embed", "attention", "heads", "ffn", "residual", "gpt2", "modern")
LABELS = {
    "bigram": "bigram table",
    "embed": "+ embeddings, positions",
    "attention": "+ self-attention (1 head)",
    "heads": "+ multiple heads",
    "ffn": "+ feed-forward",
    "residual": "+ residual connections",
    "gpt2": "+ LayerNorm (GPT-2 block)",
    "modern": "modern block (Llama)",
}
LADDER_FLAGS = {  # rung -> (attention heads: 0 none, 1 one, None the config's n_heads; ffn; residual)
    "embed": (0, False, False),
    "attention": (1, False, False),
    "heads": (None, False, False),
    "ffn": (None, True, False),
    "residual": (None, True, True),
}


def _loss(logits: torch.Tensor, targets: torch.Tensor | None, idx: torch.Tensor) -> torch.Tensor | None:
    """Mean next-token cross-entropy of logits (B, T, V) against targets (B, T), or None without targets."""
    if targets is None:
        return None
    if targets.shape != idx.shape:
        raise ValueError(f"targets shape {tuple(targets.shape)} != idx shape {tuple(idx.shape)}")
    return lm_loss(logits, targets)


class BigramLM(nn.Module):
    """The bottom rung: next-character logits read from a (vocab_size, vocab_size) table."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config  # only vocab_size and block_size are used
        self.table = nn.Embedding(config.vocab_size, config.vocab_size)
        init_gpt_weights(self, n_residual_branches=1)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> ModelOutput:
        """idx (B, T) -> ModelOutput(logits (B, T, vocab_size), loss or None, hidden_states = the logits)."""
        check_decoder_inputs(idx, self.config, None, None)
        logits = self.table(idx)  # (B, T, vocab_size): row idx[b, t] of the table
        return ModelOutput(logits, _loss(logits, targets, idx), logits)


class LadderBlock(nn.Module):
    """Attention, then optionally a feed-forward layer, each optionally around a residual connection.

    With ``ffn`` and ``residual`` this is GPT's pre-LN `TransformerBlock` without its two LayerNorms.
    """

    def __init__(self, config: GPTConfig, *, ffn: bool, residual: bool):
        super().__init__()
        c = config
        self.residual = residual
        self.attn = MultiHeadAttention(c.d_model, c.n_heads, bias=c.bias)
        self.ffn = FeedForward(c.d_model, c.d_ff, activation=c.activation, bias=c.bias) if ffn else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, d_model) -> (B, T, d_model): x = [x +] Attn(x), then x = [x +] FFN(x)."""
        h = self.attn(x, is_causal=True).out  # (B, T, d_model)
        x = x + h if self.residual else h
        if self.ffn is not None:
            h = self.ffn(x)  # (B, T, d_model)
            x = x + h if self.residual else h
        return x


class LadderModel(nn.Module):
    """A GPT with parts switched off: token + learned position embeddings -> n_layers LadderBlocks -> head.

    ``attention=False`` leaves no blocks at all (the ``embed`` rung); no LayerNorm anywhere. The
    heads come from ``config.n_heads`` (the one-head rung passes a config with n_heads = 1).
    """

    def __init__(self, config: GPTConfig, *, attention: bool = True, ffn: bool = False, residual: bool = False):
        super().__init__()
        if not attention and (ffn or residual):
            raise ValueError("a LadderModel without attention has no blocks: ffn and residual need attention=True")
        self.config = c = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)
        self.pos_emb = nn.Embedding(c.block_size, c.d_model)
        n_blocks = c.n_layers if attention else 0
        self.blocks = nn.ModuleList(LadderBlock(c, ffn=ffn, residual=residual) for _ in range(n_blocks))
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        branches = (1 + int(ffn)) * n_blocks if residual else 1  # residual branches, scaled down as in GPT-2
        init_gpt_weights(self, n_residual_branches=branches)
        if c.tie_weights:
            self.lm_head.weight = self.tok_emb.weight

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> ModelOutput:
        """idx (B, T) -> ModelOutput(logits (B, T, vocab_size), mean cross-entropy or None, hidden_states)."""
        check_decoder_inputs(idx, self.config, None, None)
        T = idx.shape[1]
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(T, device=idx.device))  # (B, T, d_model)
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(x)  # (B, T, vocab_size)
        return ModelOutput(logits, _loss(logits, targets, idx), x)


def matched_swiglu_width(gpt: GPTConfig, llama: LlamaConfig) -> int:
    """The SwiGLU width d_ff that brings Llama(`llama`)'s parameter count closest to GPT(`gpt`)'s.

    A Llama's count grows by 3 d_model n_layers per unit of d_ff (three matrices per layer).
    """
    target = gpt_parameters(gpt).total
    per_unit = 3 * llama.d_model * llama.n_layers
    base = llama_parameters(dataclasses.replace(llama, d_ff=1)).total - per_unit
    d_ff = round((target - base) / per_unit)
    if d_ff < 1:
        raise ValueError(f"no SwiGLU width matches GPT's {target} parameters: the rest of the Llama has {base}")
    return d_ff


def gpt_config(vocab_size: int, block_size: int, n_layers: int, n_heads: int, d_model: int) -> GPTConfig:
    """The ladder's GPT shape: GPT-2's block (biases, GELU, 4 d_model MLP), no dropout, an untied head."""
    return GPTConfig(
        vocab_size=vocab_size,
        block_size=block_size,
        n_layers=n_layers,
        n_heads=n_heads,
        d_model=d_model,
        dropout=0.0,
        norm="pre",
        tie_weights=False,
    )


def llama_config(gpt: GPTConfig) -> LlamaConfig:
    """The modern rung's shape: GPT's vocabulary, context, depth, width and heads, untied, SwiGLU width matched."""
    llama = LlamaConfig(
        vocab_size=gpt.vocab_size,
        block_size=gpt.block_size,
        n_layers=gpt.n_layers,
        n_heads=gpt.n_heads,
        d_model=gpt.d_model,
        d_ff=1,
        tie_embeddings=gpt.tie_weights,
    )
    return dataclasses.replace(llama, d_ff=matched_swiglu_width(gpt, llama))


def pytorch_init(model: nn.Module) -> nn.Module:
    """Re-draw every layer of `model` with PyTorch's own default initialisation (``reset_parameters``);
    a layer without one (RMSNorm, gain 1) keeps its values. Returns the model."""
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return model


def build_rung(rung: str, config: GPTConfig, init: str = "gpt2") -> nn.Module:
    """A fresh model for `rung` (one of RUNGS) of the shape `config`, initialised by `init` (one of INITS);
    seed torch before calling."""
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
    if rung == "bigram":
        model = BigramLM(config)
    elif rung == "gpt2":
        model = GPT(config)
    elif rung == "modern":
        model = Llama(llama_config(config))
    elif rung in LADDER_FLAGS:
        heads, ffn, residual = LADDER_FLAGS[rung]
        shape = config if heads is None else dataclasses.replace(config, n_heads=max(heads, 1))
        model = LadderModel(shape, attention=heads != 0, ffn=ffn, residual=residual)
    else:
        raise ValueError(f"unknown rung {rung!r}; choose one of {', '.join(RUNGS)}")
    return pytorch_init(model) if init == "pytorch" else model
