"""Interop with Hugging Face `transformers` for the modern decoder: Llama and Mixtral weights to and from `Llama`.

Both sides use ``nn.Linear``, so nothing is transposed: every matrix keeps its name's meaning
(``o_proj`` is our ``out_proj``; the MLP's ``gate_proj``, ``up_proj`` and ``down_proj`` are
SwiGLU's ``fc_gate``, ``fc_in`` and ``fc_out``). Mixtral (`MixtralForCausalLM`) is a Llama whose
feed-forward is a mixture of experts; `transformers` stores the experts of a layer fused, as
``gate_up_proj`` (n_experts, 2 d_ff, d_model), the gate matrix above the up matrix, and
``down_proj`` (n_experts, d_model, d_ff). So `llama_from_hf` reads either model, and
`llama_to_hf` writes a Mixtral when the config has experts, a Llama otherwise.

Two conventions of theirs that our `Llama` follows, so that the numbers agree: RMSNorm's
statistics, the rotary angles and the router's softmax are computed in float32 whatever the
model's dtype. Nothing here downloads anything.
"""

from __future__ import annotations

import torch

from companion.interop.hf import _check_special_id, _quiet_transformers
from companion.nn.llama import Llama, LlamaConfig

__all__ = ["llama_config_from_hf", "llama_config_to_hf", "llama_from_hf", "llama_to_hf"]

HF_MODEL_TYPES = ("llama", "mixtral")


def llama_config_from_hf(hf_config) -> LlamaConfig:
    """Translate a transformers LlamaConfig or MixtralConfig into our LlamaConfig (raises on what we lack)."""
    c = hf_config
    kind = getattr(c, "model_type", None)
    if kind not in HF_MODEL_TYPES:
        raise ValueError(f"expected a Llama or Mixtral config, got model_type {kind!r}")
    rope = dict(getattr(c, "rope_parameters", None) or {})
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"only plain rotary positions are supported, got rope_type {rope['rope_type']!r}")
    if c.hidden_act != "silu":
        raise ValueError(f"the SwiGLU feed-forward needs hidden_act 'silu', got {c.hidden_act!r}")
    if getattr(c, "attention_bias", False) or getattr(c, "mlp_bias", False):
        raise ValueError("biases in attention or the MLP are not supported: the Llama family has none")
    if getattr(c, "head_dim", None) not in (None, c.hidden_size // c.num_attention_heads):
        raise ValueError(f"head_dim must be hidden_size / num_attention_heads, got {c.head_dim}")
    if getattr(c, "pretraining_tp", 1) != 1:
        raise ValueError("pretraining_tp > 1 (split matrix products) is not supported")
    if getattr(c, "sliding_window", None) is not None and c.sliding_window < c.max_position_embeddings:
        raise ValueError(f"sliding-window attention ({c.sliding_window} positions) is not supported")
    if getattr(c, "router_jitter_noise", 0.0):
        raise ValueError("router jitter noise is not supported")
    experts = {}
    if kind == "mixtral":  # transformers adds the load-balancing loss only when it outputs the router logits
        experts = dict(
            n_experts=c.num_local_experts,
            n_experts_per_token=c.num_experts_per_tok,
            aux_loss_coef=c.router_aux_loss_coef if c.output_router_logits else 0.0,
        )
    return LlamaConfig(
        vocab_size=c.vocab_size,
        block_size=c.max_position_embeddings,
        n_layers=c.num_hidden_layers,
        n_heads=c.num_attention_heads,
        n_kv_heads=c.num_key_value_heads,
        d_model=c.hidden_size,
        d_ff=c.intermediate_size,
        rope_theta=float(rope.get("rope_theta", 10000.0)),
        norm_eps=c.rms_norm_eps,
        tie_embeddings=bool(c.tie_word_embeddings),
        dropout=float(c.attention_dropout),
        **experts,
    )


def llama_config_to_hf(config: LlamaConfig, bos_token_id: int | None = None, eos_token_id: int | None = None):
    """Translate our LlamaConfig into a transformers MixtralConfig (with experts) or LlamaConfig (without).

    BOS and EOS are declared only when given (see `companion.interop.hf.gpt_config_to_hf`). Our
    dropout becomes `attention_dropout`: transformers drops attention weights only, we also drop
    the residual branches, the same function in eval mode. The load-balancing loss is exported as
    ``output_router_logits`` and ``router_aux_loss_coef`` (transformers then pools f and P over
    the layers before taking their product; we average the layers' losses: equal for one layer).
    """
    from transformers import LlamaConfig as HFLlamaConfig
    from transformers import MixtralConfig

    _check_special_id("bos_token_id", bos_token_id, config.vocab_size)
    _check_special_id("eos_token_id", eos_token_id, config.vocab_size)
    c = config
    shared = dict(
        vocab_size=c.vocab_size,
        hidden_size=c.d_model,
        intermediate_size=c.d_ff,
        num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads,
        num_key_value_heads=c.n_kv_heads,
        hidden_act="silu",
        max_position_embeddings=c.block_size,
        rms_norm_eps=c.norm_eps,
        tie_word_embeddings=c.tie_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
        attention_dropout=c.dropout,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=None,
    )
    if not c.n_experts:
        return HFLlamaConfig(**shared)
    return MixtralConfig(
        **shared,
        num_local_experts=c.n_experts,
        num_experts_per_tok=c.n_experts_per_token,
        router_aux_loss_coef=c.aux_loss_coef,
        output_router_logits=c.aux_loss_coef > 0,
        sliding_window=None,
    )


def _key_map(config: LlamaConfig) -> list[tuple[str, str, tuple]]:
    """(our name, HF name, index into the HF tensor) for every tensor; the index picks one expert's slice."""
    rows = [("tok_emb.weight", "model.embed_tokens.weight", ()), ("norm_f.weight", "model.norm.weight", ())]
    if not config.tie_embeddings:
        rows.append(("lm_head.weight", "lm_head.weight", ()))
    f = config.d_ff
    for i in range(config.n_layers):
        o, h = f"blocks.{i}.", f"model.layers.{i}."
        rows += [
            (o + "norm_attn.weight", h + "input_layernorm.weight", ()),
            (o + "norm_ffn.weight", h + "post_attention_layernorm.weight", ()),
            (o + "attn.q_proj.weight", h + "self_attn.q_proj.weight", ()),
            (o + "attn.k_proj.weight", h + "self_attn.k_proj.weight", ()),
            (o + "attn.v_proj.weight", h + "self_attn.v_proj.weight", ()),
            (o + "attn.out_proj.weight", h + "self_attn.o_proj.weight", ()),
        ]
        if not config.n_experts:
            rows += [
                (o + "ffn.fc_gate.weight", h + "mlp.gate_proj.weight", ()),
                (o + "ffn.fc_in.weight", h + "mlp.up_proj.weight", ()),
                (o + "ffn.fc_out.weight", h + "mlp.down_proj.weight", ()),
            ]
            continue
        rows.append((o + "ffn.router.weight", h + "mlp.gate.weight", ()))
        for e in range(config.n_experts):
            x = f"{o}ffn.experts.{e}."
            rows += [
                (x + "fc_gate.weight", h + "mlp.experts.gate_up_proj", (e, slice(0, f))),
                (x + "fc_in.weight", h + "mlp.experts.gate_up_proj", (e, slice(f, 2 * f))),
                (x + "fc_out.weight", h + "mlp.experts.down_proj", (e,)),
            ]
    return rows


@torch.no_grad()
def llama_from_hf(hf_model) -> Llama:
    """Build our Llama with the weights of a transformers LlamaForCausalLM or MixtralForCausalLM (same logits)."""
    config = llama_config_from_hf(hf_model.config)
    model = Llama(config).to(hf_model.dtype)  # their dtype first, so that no weight is rounded on the way
    theirs, ours = hf_model.state_dict(), model.state_dict()
    for our_key, hf_key, index in _key_map(config):
        ours[our_key].copy_(theirs[hf_key][index])
    return model.train(hf_model.training)


@torch.no_grad()
def llama_to_hf(model: Llama, bos_token_id: int | None = None, eos_token_id: int | None = None):
    """Build a transformers LlamaForCausalLM (or MixtralForCausalLM, with experts) with our weights (same logits).

    `bos_token_id` / `eos_token_id`: the tokenizer's special tokens, if it has them (default: none).
    """
    from transformers import LlamaForCausalLM, MixtralForCausalLM

    config = model.config
    hf_class = MixtralForCausalLM if config.n_experts else LlamaForCausalLM
    with _quiet_transformers():
        hf_model = hf_class(llama_config_to_hf(config, bos_token_id, eos_token_id))
    hf_model.to(next(model.parameters()).dtype)  # our dtype first, so that no weight is rounded on the way
    hf_model.generation_config.bos_token_id = bos_token_id
    hf_model.generation_config.eos_token_id = eos_token_id
    hf_model.generation_config.pad_token_id = None
    theirs, ours = hf_model.state_dict(), model.state_dict()
    for our_key, hf_key, index in _key_map(config):
        theirs[hf_key][index].copy_(ours[our_key])
    return hf_model.train(model.training)
