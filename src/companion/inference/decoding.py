r"""Decoding for sequence-to-sequence models: greedy (or sampled) decoding and beam search.

A decoder defines $p(y \mid x) = \prod_t p(y_t \mid y_{<t}, x)$. Greedy decoding picks
$\arg\max_{y_t}$ at each step; it can miss the most probable *sequence*, because a token that
looks best now may force worse tokens later. Beam search keeps the `num_beams` best partial
sequences (by summed log-probability) at every step, and among the finished ones returns the
best by the length-normalised score

$$\operatorname{score}(y) = \frac{\sum_{t=1}^{|y|} \log p(y_t \mid y_{<t}, x)}{|y|^{\alpha}},$$

$\alpha$ = `length_penalty` (Wu et al. 2016; `transformers` uses the same score).

`beam_search` works with any model through a function ``next_log_probs(tokens (N, t)) ->
(N, V)``; `seq2seq_beam_search` and `greedy_decode` wrap `companion.nn.EncoderDecoder`.
`cross_attention_weights` reads the decoder's cross-attention maps (the learned alignment).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from companion.inference.generation import sample_next_token

__all__ = [
    "BeamSearchOutput",
    "beam_search",
    "cross_attention_weights",
    "greedy_decode",
    "seq2seq_beam_search",
    "sequence_log_prob",
]


def _check_src(model: nn.Module, src_ids: Tensor, src_mask: Tensor | None) -> Tensor:
    if src_ids.dim() != 2 or src_ids.shape[0] == 0:
        raise ValueError(f"src_ids must be a non-empty (B, S) tensor, got shape {tuple(src_ids.shape)}")
    return model.encode(src_ids, attention_mask=src_mask)  # (B, S, d_model)


@torch.no_grad()
def greedy_decode(
    model: nn.Module,
    src_ids: Tensor,
    src_mask: Tensor | None = None,
    *,
    bos_id: int,
    eos_id: int,
    max_len: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Decode an EncoderDecoder token by token -> (B, <= max_len) new target ids (no <bos>).

    temperature 0 is greedy (arg-max); otherwise tokens are sampled with
    `companion.inference.generation.sample_next_token`. Rows that emitted `eos_id` are filled with it.
    """
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    was_training = model.training
    model.eval()
    try:
        memory = _check_src(model, src_ids, src_mask)  # (B, S, d_model)
        B = src_ids.shape[0]
        tokens = torch.full((B, 1), bos_id, dtype=torch.long, device=src_ids.device)  # (B, 1)
        done = torch.zeros(B, dtype=torch.bool, device=src_ids.device)
        for _ in range(max_len):
            logits = model.decode(tokens, memory, attention_mask=src_mask)[:, -1]  # (B, V)
            nxt = sample_next_token(logits, temperature, top_k, top_p, generator)  # (B, 1)
            nxt = nxt.masked_fill(done.unsqueeze(1), eos_id)
            tokens = torch.cat([tokens, nxt], dim=1)
            done |= nxt.squeeze(1) == eos_id
            if bool(done.all()):
                break
    finally:
        model.train(was_training)
    return tokens[:, 1:]


class BeamSearchOutput(NamedTuple):
    """Best hypothesis per input: new tokens (B, L), rows after their <eos> filled with it, and its score."""

    sequences: Tensor  # (B, L) new tokens only (the start tokens are not repeated)
    scores: Tensor  # (B,) sum of log-probabilities / length ** length_penalty


@torch.no_grad()
def beam_search(
    next_log_probs: Callable[[Tensor], Tensor],
    start: Tensor,
    *,
    num_beams: int,
    max_new_tokens: int,
    eos_id: int | None = None,
    length_penalty: float = 1.0,
) -> BeamSearchOutput:
    """Beam search over `max_new_tokens` steps from start tokens (B, T0).

    `next_log_probs(tokens)` takes (B * num_beams, t) token ids (row b * num_beams + k is beam
    k of input b) and returns (B * num_beams, V) log-probabilities of the next token.

    Each step scores all num_beams * V one-token extensions and keeps the best 2 * num_beams;
    an extension ending in `eos_id` among the first num_beams becomes a finished hypothesis
    (score = summed log-probability / length ** length_penalty, length counting the <eos>),
    the others refill the num_beams live beams. An input is done when it has num_beams
    finished hypotheses and its best live beam, scored at its current length, cannot beat the
    worst of them (exact when length_penalty = 0, the rule `transformers` uses otherwise).
    Live beams left at `max_new_tokens` count as finished. Without `eos_id` this is plain
    top-num_beams beam search of fixed length.
    """
    if num_beams < 1 or max_new_tokens < 1:
        raise ValueError(f"num_beams and max_new_tokens must be >= 1, got {num_beams}, {max_new_tokens}")
    if start.dim() != 2 or start.shape[0] == 0:
        raise ValueError(f"start must be a non-empty (B, T0) tensor, got shape {tuple(start.shape)}")
    B, K = start.shape[0], num_beams
    tokens = start.repeat_interleave(K, dim=0)  # (B*K, T0)
    T0 = start.shape[1]
    live = torch.full((B, K), float("-inf"), device=start.device)
    live[:, 0] = 0.0  # all beams start identical: keep one so no hypothesis is counted twice
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
    done = [False] * B
    n_keep = 2 * K if eos_id is not None else K

    for step in range(max_new_tokens):
        logp = next_log_probs(tokens).float()  # (B*K, V)
        V = logp.shape[-1]
        cand = (live.unsqueeze(-1) + logp.view(B, K, V)).view(B, K * V)  # (B, K*V)
        top_scores, top_idx = cand.topk(min(n_keep, K * V), dim=1)  # (B, n_keep)
        new_rows, new_tok, new_live = [], [], torch.full((B, K), float("-inf"), device=start.device)
        length = step + 1  # new tokens in a candidate, counting the one just chosen
        for b in range(B):
            kept = 0
            rows_b, tok_b = [], []
            for rank in range(top_idx.shape[1]):
                score, flat = float(top_scores[b, rank]), int(top_idx[b, rank])
                beam, tok = divmod(flat, V)
                if score == float("-inf"):
                    break
                if eos_id is not None and tok == eos_id:
                    if rank < K and not done[b]:
                        seq = tokens[b * K + beam, T0:].tolist() + [tok]
                        _add(finished[b], (score / length**length_penalty, seq), K)
                    continue
                rows_b.append(b * K + beam)
                tok_b.append(tok)
                new_live[b, kept] = score
                kept += 1
                if kept == K:
                    break
            while len(rows_b) < K:  # pad with a dead beam (score -inf)
                rows_b.append(b * K)
                tok_b.append(eos_id if eos_id is not None else 0)
            new_rows += rows_b
            new_tok += tok_b
            if not done[b] and len(finished[b]) == K:
                best_live = float(new_live[b].max())
                done[b] = finished[b][-1][0] >= best_live / length**length_penalty
        tokens = torch.cat([tokens[new_rows], torch.tensor(new_tok, device=start.device).unsqueeze(1)], dim=1)
        live = new_live
        if all(done):
            break

    L = tokens.shape[1] - T0
    for b in range(B):  # beams still alive at the end compete as they are
        if done[b]:
            continue
        for k in range(K):
            if live[b, k] > float("-inf"):
                _add(finished[b], (float(live[b, k]) / L**length_penalty, tokens[b * K + k, T0:].tolist()), K)
    fill = eos_id if eos_id is not None else 0
    best = [max(f, key=lambda h: h[0]) for f in finished]
    width = max(len(seq) for _, seq in best)
    seqs = torch.tensor([seq + [fill] * (width - len(seq)) for _, seq in best], dtype=torch.long, device=start.device)
    return BeamSearchOutput(seqs, torch.tensor([s for s, _ in best]))


def _add(hyps: list[tuple[float, list[int]]], hyp: tuple[float, list[int]], k: int) -> None:
    """Insert a finished hypothesis, keep the k best sorted from best to worst."""
    hyps.append(hyp)
    hyps.sort(key=lambda h: -h[0])
    del hyps[k:]


@torch.no_grad()
def seq2seq_beam_search(
    model: nn.Module,
    src_ids: Tensor,
    src_mask: Tensor | None = None,
    *,
    bos_id: int,
    eos_id: int,
    max_len: int,
    num_beams: int = 4,
    length_penalty: float = 1.0,
) -> BeamSearchOutput:
    """Beam search for an EncoderDecoder: encode once, decode num_beams hypotheses per source."""
    was_training = model.training
    model.eval()
    try:
        memory = _check_src(model, src_ids, src_mask).repeat_interleave(num_beams, dim=0)  # (B*K, S, C)
        mask = None if src_mask is None else src_mask.repeat_interleave(num_beams, dim=0)  # (B*K, S)

        def next_log_probs(tokens: Tensor) -> Tensor:
            return model.decode(tokens, memory, attention_mask=mask)[:, -1].log_softmax(-1)  # (B*K, V)

        start = torch.full((src_ids.shape[0], 1), bos_id, dtype=torch.long, device=src_ids.device)
        return beam_search(
            next_log_probs,
            start,
            num_beams=num_beams,
            max_new_tokens=max_len,
            eos_id=eos_id,
            length_penalty=length_penalty,
        )
    finally:
        model.train(was_training)


@torch.no_grad()
def sequence_log_prob(
    model: nn.Module, src_ids: Tensor, tgt_in: Tensor, tgt_out: Tensor, src_mask: Tensor | None = None
) -> Tensor:
    """Summed log p(y | x) of each target (B,), over positions whose tgt_out is not -100."""
    was_training = model.training
    model.eval()
    try:
        logits = model(src_ids, decoder_idx=tgt_in, attention_mask=src_mask).logits  # (B, T, V)
    finally:
        model.train(was_training)
    keep = tgt_out != -100
    picked = logits.log_softmax(-1).gather(-1, tgt_out.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T)
    return (picked * keep).sum(dim=1)


@torch.no_grad()
def cross_attention_weights(
    model: nn.Module, src_ids: Tensor, tgt_in: Tensor, src_mask: Tensor | None = None
) -> Tensor:
    """Cross-attention weights of every decoder block -> (n_decoder_layers, B, n_heads, T, S).

    Row t of a map is how target position t distributes its attention over the source
    characters. The EncoderDecoder does not return them, so forward hooks switch on
    ``need_weights`` in each block's `cross_attn` and record the weights.
    """
    maps: list[Tensor] = []

    def ask_for_weights(module, args, kwargs):
        return args, {**kwargs, "need_weights": True}

    def record(module, args, kwargs, output):
        maps.append(output.weights.detach())

    handles = []
    for block in model.decoder_blocks:
        handles.append(block.cross_attn.register_forward_pre_hook(ask_for_weights, with_kwargs=True))
        handles.append(block.cross_attn.register_forward_hook(record, with_kwargs=True))
    was_training = model.training
    model.eval()
    try:
        model(src_ids, decoder_idx=tgt_in, attention_mask=src_mask)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return torch.stack(maps)  # (n_layers, B, n_heads, T, S)
