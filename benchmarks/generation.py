"""Generation speed: our KV cache vs no cache, and our `generate` vs `transformers`' `generate`.

    python benchmarks/generation.py                         # vocab 65 (characters), 3 repeats
    python benchmarks/generation.py --vocab-size 50257      # GPT-2's vocabulary
    python benchmarks/generation.py --repeats 5 --json /tmp/generation.json
    python benchmarks/generation.py --arch llama --batch-size 8   # the modern decoder, 8 sequences at once

The model is a GPT with n_layers=6, n_heads=6, d_model=384, block_size=512 (the size of
nanoGPT's Shakespeare model) and random GPT-2-style weights: speed does not depend on what the
weights are. With ``--arch llama`` it is the modern decoder of the same width and depth
(``companion.nn.llama.Llama``: RMSNorm, SwiGLU, rotary, 2 key/value heads for the 6 query heads),
compared with ``transformers``' ``LlamaForCausalLM`` on the same weights; ``--batch-size`` decodes
that many prompts at once (tokens/s counts the tokens of every sequence). It generates 448
tokens greedily after a 64-token prompt, so the last step sees all 512 positions. Three ways are timed:

* ``ours, KV cache``: ``companion.inference.generation.generate(..., use_cache=True)`` (the
  preallocated ``companion.nn.KVCache``, appended to in place) on the model as it is;
* ``ours, packed``: the same call on ``companion.inference.packing.packed_for_inference(model)``, an
  explicit inference copy whose Linear layers store W as (in, out), as GPT-2's Conv1D does
  (the copy is made once, before timing; its cost is printed separately);
* ``ours, no cache``: ``use_cache=False`` (the whole sequence is re-run at every step);
* ``transformers``: ``GPT2LMHeadModel.generate(do_sample=False)`` (or ``LlamaForCausalLM``'s) on the
  same weights, converted with ``companion.interop.hf.gpt_to_hf`` (or ``companion.interop.llama.llama_to_hf``;
  its own KV cache, PyTorch SDPA attention).

Each cached run is repeated and the median reported (the no-cache run once, it is slow);
every run is checked to produce exactly the same tokens, and the ratios to ``transformers``
are printed side by side. Whether the packed layout pays depends on the CPU's BLAS: the
benchmark measures it rather than the package assuming it.

Runs under ``torch.inference_mode`` in float32 on the CPU with the current
``torch.get_num_threads()`` (``--threads`` sets it; on a busy machine one thread is far
steadier: two OpenMP threads that cannot both get a core wait for each other at every matrix
product).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from companion.inference.generation import generate
from companion.inference.packing import packed_for_inference
from companion.interop.hf import gpt_to_hf
from companion.interop.llama import llama_to_hf
from companion.nn import GPT, GPTConfig
from companion.nn.llama import Llama, LlamaConfig
from companion.threads import policy as thread_policy
from companion.utils import cpu_info, describe_cpu

SHAPE = dict(block_size=512, n_layers=6, n_heads=6, d_model=384)
ARCHS = ("gpt", "llama")


def build_model(vocab_size: int, arch: str = "gpt", seed: int = 0) -> torch.nn.Module:
    """The benchmark's 6-layer, width-384, context-512 model with random weights: a GPT or a Llama."""
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    torch.manual_seed(seed)
    if arch == "gpt":
        return GPT(GPTConfig(vocab_size=vocab_size, **SHAPE)).eval()
    return Llama(LlamaConfig(vocab_size=vocab_size, n_kv_heads=2, d_ff=1024, **SHAPE)).eval()


def timed(fns: dict, repeats: int) -> tuple[dict, dict]:
    """Median wall time of `repeats` calls of each fn (interleaved, so that a busy machine
    slows them alike) and each fn's last result."""
    times = {name: [] for name in fns}
    outs = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            outs[name] = fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}, outs


def run(
    vocab_size: int = 65,
    prompt_len: int = 64,
    new_tokens: int = 448,
    repeats: int = 3,
    skip_no_cache: bool = False,
    arch: str = "gpt",
    batch_size: int = 1,
) -> dict:
    """Time the decoders and return a dict of results (seconds, tokens/s, speed-ups)."""
    model = build_model(vocab_size, arch)
    hf = (gpt_to_hf if arch == "gpt" else llama_to_hf)(model).eval()
    gc = hf.generation_config
    gc.eos_token_id = gc.bos_token_id = gc.pad_token_id = None  # never stop early
    prompt_shape = (batch_size, prompt_len)
    prompt = torch.randint(0, vocab_size, prompt_shape, generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(prompt)

    t0 = time.perf_counter()
    fast = packed_for_inference(model)
    pack_s = time.perf_counter() - t0

    def ours_cache():
        return generate(model, prompt, new_tokens, temperature=0, use_cache=True)

    def ours_packed():
        return generate(fast, prompt, new_tokens, temperature=0, use_cache=True)

    def ours_no_cache():
        return generate(model, prompt, new_tokens, temperature=0, use_cache=False)

    def theirs():
        with torch.inference_mode():
            return hf.generate(prompt, attention_mask=mask, do_sample=False, max_new_tokens=new_tokens)

    # warm up both cached paths (first calls allocate and pick kernels)
    generate(model, prompt, 16, temperature=0)
    generate(fast, prompt, 16, temperature=0)
    with torch.inference_mode():
        hf.generate(prompt, attention_mask=mask, do_sample=False, max_new_tokens=16)

    t, toks = timed({"ours_cache": ours_cache, "ours_packed": ours_packed, "transformers": theirs}, repeats)
    t_cache, tok_cache = t["ours_cache"], toks["ours_cache"]
    t_hf, tok_hf = t["transformers"], toks["transformers"]
    result = {
        "model": dict(
            arch=arch,
            **SHAPE,
            vocab_size=vocab_size,
            n_params=sum(p.numel() for p in model.parameters()),
        ),
        "batch_size": batch_size,
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "repeats": repeats,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "cpu": cpu_info(),
        "seconds": {"ours_cache": t_cache, "ours_packed": t["ours_packed"], "transformers": t_hf},
        "packing_seconds": pack_s,
        "same_tokens_as_transformers": bool(torch.equal(tok_cache, tok_hf)),
        "same_tokens_packed": bool(torch.equal(toks["ours_packed"], tok_hf)),
    }
    import transformers

    result["transformers"] = transformers.__version__
    if not skip_no_cache:
        t, toks = timed({"ours_no_cache": ours_no_cache}, 1)
        t_nocache, tok_nocache = t["ours_no_cache"], toks["ours_no_cache"]
        result["seconds"]["ours_no_cache"] = t_nocache
        result["same_tokens_cache_vs_no_cache"] = bool(torch.equal(tok_cache, tok_nocache))
        result["cache_speedup"] = t_nocache / t_cache
    result["tokens_per_s"] = {k: batch_size * new_tokens / v for k, v in result["seconds"].items()}
    result["ours_vs_transformers"] = t_hf / t_cache
    result["packed_vs_transformers"] = t_hf / result["seconds"]["ours_packed"]
    return result


def print_table(r: dict) -> None:
    """Print the results as a small table."""
    m = r["model"]
    print(
        f"{m['arch']} n_layers={m['n_layers']} d_model={m['d_model']} block_size={m['block_size']} "
        f"vocab_size={m['vocab_size']} ({m['n_params'] / 1e6:.2f}M parameters); batch {r['batch_size']}, "
        f"{r['new_tokens']} new tokens after a {r['prompt_len']}-token prompt, greedy, "
        f"torch {r['torch']}, transformers {r['transformers']}, {r['threads']} threads; "
        f"{describe_cpu(r['cpu'])}"
    )
    print(f"{'decoder':<22}{'seconds':>10}{'tokens/s':>12}")
    names = {
        "ours_cache": "ours, KV cache",
        "ours_packed": "ours, packed",
        "ours_no_cache": "ours, no cache",
        "transformers": "transformers generate",
    }
    for key, name in names.items():
        if key in r["seconds"]:
            print(f"{name:<22}{r['seconds'][key]:>10.3f}{r['tokens_per_s'][key]:>12.1f}")
    if "cache_speedup" in r:
        print(f"KV cache speed-up: {r['cache_speedup']:.1f}x (same tokens: {r['same_tokens_cache_vs_no_cache']})")
    print(
        f"ours / transformers tokens/s: {r['ours_vs_transformers']:.2f}x "
        f"(same tokens: {r['same_tokens_as_transformers']}); packed copy / transformers: "
        f"{r['packed_vs_transformers']:.2f}x (same tokens: {r['same_tokens_packed']}; the copy took "
        f"{r['packing_seconds'] * 1e3:.0f} ms to make)"
    )


def main(argv: list[str] | None = None) -> dict:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", choices=ARCHS, default="gpt", help="GPT-2-style or the modern decoder (Llama)")
    ap.add_argument("--batch-size", type=int, default=1, help="prompts decoded at once")
    ap.add_argument("--vocab-size", type=int, default=65)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=448)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-no-cache", action="store_true", help="skip the slow no-cache run")
    ap.add_argument("--threads", type=int, help="fixed CPU threads (default: companion.threads)")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    if args.threads:
        thread_policy.fix(args.threads)
    if args.batch_size < 1:
        ap.error("--batch-size must be >= 1")
    r = run(
        args.vocab_size, args.prompt_len, args.new_tokens, args.repeats, args.skip_no_cache, args.arch, args.batch_size
    )
    print_table(r)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    return r


if __name__ == "__main__":
    main()
