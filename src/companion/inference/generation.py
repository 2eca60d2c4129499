"""Text generation: greedy and sampled decoding with temperature, top-k, top-p and a KV cache.

A language model gives, for every position, logits $z \\in \\mathbb{R}^V$ over the vocabulary.
Decoding turns them into one next token, appends it, and repeats. This module holds

* the *filters* that reshape the next-token distribution (`top_k_filter`, `top_p_filter`),
* `sample_next_token`, one decoding step (temperature, then top-k, then top-p, then a draw),
* `generate`, the autoregressive loop, which by default keeps a **KV cache**
  (`companion.nn.kv_cache.KVCache`, preallocated and appended to in place): the prompt is run
  through the model once ("prefill"), and each later step feeds only the newest token, reusing
  the keys and values of all earlier positions,
* `kv_cache_bytes`, the memory the cache needs: $2 \\cdot n_\\text{layers} \\cdot T \\cdot d_\\text{model}$
  numbers per sequence, or $n_\\text{kv\\_heads} / n_\\text{heads}$ of that with grouped-query attention.

The model only has to follow the book's decoder interface (`companion.nn.GPT`, `companion.nn.Llama`):
``model(idx, kv_cache=cache)`` returns an object with ``.logits`` (B, T, vocab_size) and appends
to `cache` in place, ``model.config.block_size`` is its context length, and its config's
n_layers, n_kv_heads and d_head shape the cache (`KVCache.for_model`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from companion.nn.kv_cache import KVCache
from companion.threads import policy as thread_policy

__all__ = [
    "generate",
    "kv_cache_bytes",
    "sample_next_token",
    "top_k_filter",
    "top_p_filter",
]


# ----------------------------------------------------------------------------- filters


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    r"""Keep the `k` largest logits of the last dimension and set the others to $-\infty$.

    With $z_{(k)}$ the $k$-th largest logit, the filtered logits are

    $$\tilde z_i = \begin{cases} z_i & z_i \ge z_{(k)} \\ -\infty & \text{otherwise,} \end{cases}$$

    so ``softmax`` of the result is the model's distribution restricted to the top-k set
    $V_k$ and renormalised: $q_i = p_i / \sum_{j \in V_k} p_j$ for $i \in V_k$, else 0
    (Fan et al., 2018). Logits tied with $z_{(k)}$ are all kept (as in `transformers`'
    ``TopKLogitsWarper``), so the set can exceed `k` only on exact ties. ``k >= V`` keeps all.
    Works on any leading shape, e.g. (B, V); returns a new tensor.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"top_k must be an int >= 1, got {k!r}")
    if k >= logits.size(-1):
        return logits.clone()
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (..., 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    r"""Nucleus filter: keep the smallest set of tokens whose probability reaches `p`.

    Sort the probabilities $p = \operatorname{softmax}(z)$ in decreasing order,
    $p_{(1)} \ge p_{(2)} \ge \dots$, and let

    $$k^* = \min\Big\{k : \sum_{i=1}^{k} p_{(i)} \ge p\Big\}.$$

    The nucleus $V_p$ is the $k^*$ most probable tokens; the others get logit $-\infty$, so
    ``softmax`` of the result is $q_i = p_i / \sum_{j \in V_p} p_j$ on $V_p$ (Holtzman et al.,
    2020). Equivalently a token is kept when the probability mass of the tokens ranked *above*
    it is still below `p`, which always keeps the top token. ``p = 1`` keeps every token.
    Tokens tied at the boundary are ranked by ``torch.sort``. `p` must lie in (0, 1].
    Works on any leading shape, e.g. (B, V); returns a new tensor.
    """
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {p!r}")
    if p == 1.0:  # keep everything (a float cumsum can reach 1.0 early and drop tail tokens)
        return logits.clone()
    sorted_logits, sorted_idx = torch.sort(logits, dim=-1, descending=True)  # (..., V)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # mass of the tokens ranked above each one
    remove_sorted = mass_before >= p
    remove_sorted[..., 0] = False  # the most probable token is always kept
    remove = remove_sorted.scatter(-1, sorted_idx, remove_sorted)  # back to vocabulary order
    return logits.masked_fill(remove, float("-inf"))


def _check_sampling_args(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Raise ValueError for a negative temperature, top_k < 1 or top_p outside (0, 1]."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ValueError(f"temperature must be a number >= 0, got {temperature!r}")
    if not temperature >= 0.0 or temperature == float("inf"):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be None or in (0, 1], got {top_p!r}")


def sample_next_token(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Pick one token per row from logits (B, V) -> (B, 1).

    ``temperature == 0`` is greedy decoding ($\arg\max_i z_i$; top-k and top-p cannot change the
    arg-max, so they are ignored). Otherwise the logits are divided by the temperature $\tau$
    ($p_i \propto e^{z_i/\tau}$: $\tau<1$ sharpens, $\tau>1$ flattens), filtered by top-k and
    then top-p (the order `transformers` uses), and one token is drawn from the softmax.
    """
    _check_sampling_args(temperature, top_k, top_p)
    _check_finite(logits)
    return _sample(logits, temperature, top_k, top_p, generator)


def _check_finite(logits: Tensor, step: int | None = None) -> None:
    """Raise a ValueError on NaN or +inf logits, or on a row with no finite logit.

    A logit of -inf is allowed: it bans a token (probability 0), as top-k, top-p and a caller's own
    mask of unwanted tokens do; but a row must keep at least one finite logit to choose from.
    """
    bad = torch.isnan(logits) | (logits == float("inf"))
    if bool(bad.any()) or not bool(torch.isfinite(logits).any(dim=-1).all()):
        where = "" if step is None else f" at generation step {step}"
        raise ValueError(
            f"the model produced NaN or +inf logits, or a row with no finite logit{where}: its weights or "
            "inputs have diverged (or every token was masked); decoding them would emit arbitrary tokens"
        )


def _sample(
    logits: Tensor, temperature: float, top_k: int | None, top_p: float | None, generator: torch.Generator | None
) -> Tensor:
    """`sample_next_token` without the argument checks (generate checks them once)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)  # (B, 1)
    logits = logits.float()
    # softmax(z / tau) = softmax((z - max z) / tau): subtracting the maximum first keeps a tiny
    # tau finite (the arg-max gets 0, the rest -> -inf), where z / tau alone would overflow to NaN
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    return torch.multinomial(probs, num_samples=1, generator=generator)  # (B, 1)


# ----------------------------------------------------------------------------- generation


def _as_batch(prompt_ids: Sequence[int] | Tensor, device: torch.device) -> tuple[Tensor, bool]:
    """Turn a list / 1-D / 2-D prompt into a LongTensor (B, T); also say whether it was 1-D."""
    if isinstance(prompt_ids, Tensor):
        idx = prompt_ids
    else:
        try:
            idx = torch.as_tensor(list(prompt_ids))
        except (TypeError, ValueError) as err:
            raise ValueError(f"prompt_ids must be a list of ints or a tensor: {err}") from None
    if idx.numel() == 0:
        raise ValueError(f"prompt_ids is empty (shape {tuple(idx.shape)}): give at least one token")
    if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
        raise ValueError(f"prompt_ids must hold integer token ids, got dtype {idx.dtype}")
    if idx.dim() not in (1, 2):
        raise ValueError(f"prompt_ids must be 1-D (T,) or 2-D (B, T), got shape {tuple(idx.shape)}")
    was_1d = idx.dim() == 1
    idx = idx.reshape(1, -1) if was_1d else idx
    return idx.to(device=device, dtype=torch.long), was_1d


def generate(
    model: nn.Module,
    prompt_ids: Sequence[int] | Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    use_cache: bool = True,
    eos_id: int | None = None,
) -> Tensor:
    r"""Continue `prompt_ids` by up to `max_new_tokens` tokens; return prompt + new tokens.

    `prompt_ids` is a list of ints, a 1-D tensor (T,) or a 2-D tensor (B, T) of equal-length
    rows; the result has the same number of dimensions, (T + n,) or (B, T + n).
    ``temperature == 0`` is greedy; otherwise tokens are sampled as in `sample_next_token`,
    with a private ``torch.Generator`` seeded by `seed` (``None``: PyTorch's global RNG). A very
    small temperature behaves as greedy decoding (ties shared); NaN or +inf logits from the model,
    or a row whose logits are all -inf, raise ``ValueError`` rather than decoding to arbitrary
    tokens (a -inf logit on its own just bans that token).

    With ``use_cache=True`` the prompt is run through the model once and each new token costs
    one forward pass over a single position, reusing the cached keys and values (a preallocated
    `KVCache` that every step appends one position to in place); with ``use_cache=False``
    every step re-runs the whole sequence (the same tokens, much slower).

    Context length. A prompt longer than ``model.config.block_size`` raises ``ValueError``
    (it is never silently cropped). Generation may run past ``block_size``: the model then
    sees only the last ``block_size`` tokens (a sliding window, as in nanoGPT). Because the
    positions of a window shift by one every step, cached keys no longer fit, so from that
    step on each token costs a full forward pass over the window ("crop and re-prefill"); the
    tokens are identical with and without the cache.

    If `eos_id` is given, a row stops when it emits it (later positions of that row are filled
    with `eos_id`) and generation ends when every row has stopped, so the result can be
    shorter than ``T + max_new_tokens``. The model is put in ``eval()`` mode for the call and
    its previous mode restored; gradients are never recorded. (For a CPU fast path, pass
    ``companion.inference.packing.packed_for_inference(model)`` instead of the model: the same numbers up
    to rounding; the generation benchmark measures whether it is faster on your CPU.)
    """
    _check_sampling_args(temperature, top_k, top_p)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"seed must be None or an int >= 0, got {seed!r}")
    config = model.config
    block_size, vocab_size = config.block_size, config.vocab_size
    if eos_id is not None and (isinstance(eos_id, bool) or not isinstance(eos_id, int) or not 0 <= eos_id < vocab_size):
        raise ValueError(f"eos_id must be None or an int in [0, {vocab_size}), got {eos_id!r}")
    device = next(model.parameters()).device
    idx, was_1d = _as_batch(prompt_ids, device)  # (B, T0)
    B, T0 = idx.shape
    if T0 > block_size:
        raise ValueError(
            f"prompt length {T0} exceeds block_size {block_size}; "
            f"crop it yourself (e.g. prompt[-{block_size}:]) or use a model with a longer context"
        )
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise ValueError(f"token id {bad} in prompt_ids is out of range for vocab_size {vocab_size}")

    generator = None
    if seed is not None and temperature > 0:
        generator = torch.Generator(device=device).manual_seed(seed)

    out = torch.empty(B, T0 + max_new_tokens, dtype=torch.long, device=device)  # (B, T0 + N)
    out[:, :T0] = idx
    length = T0  # tokens written so far
    finished = torch.zeros(B, dtype=torch.bool, device=device) if eos_id is not None else None

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            if max_new_tokens == 0:
                return out[0] if was_1d else out
            cache = None
            if use_cache:  # prefill: one pass over the whole prompt, its keys and values cached
                cache = KVCache.for_model(model, B, min(block_size, T0 + max_new_tokens - 1))
            logits = model(idx, kv_cache=cache).logits[:, -1, :]  # (B, V)
            for step in range(max_new_tokens):
                thread_policy.check()  # fewer threads while other processes keep the CPUs busy
                _check_finite(logits, step)
                nxt = _sample(logits, temperature, top_k, top_p, generator)  # (B, 1)
                if finished is not None:
                    nxt = nxt.masked_fill(finished.unsqueeze(1), eos_id)
                    finished = finished | (nxt.squeeze(1) == eos_id)
                out[:, length : length + 1] = nxt
                length += 1
                if step == max_new_tokens - 1 or (finished is not None and bool(finished.all())):
                    break
                if cache is not None and length <= block_size:
                    res = model(nxt, kv_cache=cache)  # one new position, appended to the cache
                else:  # no cache, or past block_size: run the (cropped) window from scratch
                    cache = None
                    window = out[:, max(0, length - block_size) : length]  # (B, <= block_size)
                    res = model(window)
                logits = res.logits[:, -1, :]  # (B, V)
    finally:
        model.train(was_training)
    out = out[:, :length]
    return out[0] if was_1d else out


def kv_cache_bytes(
    n_layers: int,
    seq_len: int,
    d_model: int,
    batch_size: int = 1,
    bytes_per_value: int = 4,
    *,
    n_heads: int | None = None,
    n_kv_heads: int | None = None,
) -> int:
    r"""Memory of a full KV cache: $2 \cdot n_\text{layers} \cdot T \cdot d_{kv}$ values per sequence.

    Each layer stores one key and one value vector of width $d_{kv}$ for each of the $T$
    positions; times `batch_size` sequences and `bytes_per_value` (4 for float32, 2 for
    bfloat16). With as many K/V heads as query heads (the default) $d_{kv} = n_\text{heads}
    d_\text{head} = d_\text{model}$; with grouped-query attention, give `n_heads` and
    `n_kv_heads`: $d_{kv} = n_\text{kv\_heads} \cdot d_\text{model} / n_\text{heads}$.
    """
    for name, v in [
        ("n_layers", n_layers),
        ("seq_len", seq_len),
        ("d_model", d_model),
        ("batch_size", batch_size),
        ("bytes_per_value", bytes_per_value),
    ]:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be an int >= 0, got {v!r}")
    d_kv = d_model
    if (n_heads is None) != (n_kv_heads is None):
        raise ValueError("give both n_heads and n_kv_heads (grouped-query attention) or neither")
    if n_heads is not None:
        for name, v in (("n_heads", n_heads), ("n_kv_heads", n_kv_heads)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if d_model % n_heads or n_heads % n_kv_heads:
            raise ValueError(
                f"need n_kv_heads {n_kv_heads} | n_heads {n_heads} | d_model {d_model} (each divides the next)"
            )
        d_kv = n_kv_heads * (d_model // n_heads)
    return 2 * n_layers * seq_len * d_kv * batch_size * bytes_per_value
