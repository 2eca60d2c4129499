"""The `companion` command: pre-train a small GPT (or a Llama-style decoder) on a corpus, then sample from it.

companion train shakespeare --tokenizer char --steps 2000 --out runs/shakespeare-char
companion sample --ckpt runs/shakespeare-char --prompt "ROMEO:" --max-new-tokens 300
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from companion.nn import GPTConfig, LlamaConfig

TOKENIZER_FILE = "tokenizer.json"
HISTORY_FILE = "history.json"
ARCHITECTURES = ("gpt", "llama")  # --arch: companion.nn.GPT or companion.nn.Llama

TRAIN_EXAMPLES = """\
examples:
  # the reference run: character-level Shakespeare, 0.8M parameters (about 2 min on 2 cores)
  companion train shakespeare --out runs/shakespeare-char
  # the fastest recipe found (benchmarks/time_to_quality.py): Muon, bf16, exact GELU, 400 steps
  companion train shakespeare --optimizer muon --activation gelu --dtype bf16 --batch-size 32 \\
      --lr 5e-3 --min-lr 5e-4 --warmup 50 --steps 400 --out runs/fast
  # the modern decoder: RMSNorm, SwiGLU, rotary positions, 2 key/value heads for 4 query heads
  companion train shakespeare --arch llama --n-kv-heads 2 --out runs/llama
  # ... with a mixture of 4 experts per block, each token routed to 2 of them
  companion train shakespeare --arch llama --n-experts 4 --experts-per-token 2 --out runs/moe
  # your own text file with a byte-level BPE of 512 tokens, bf16 on a CPU that has it
  companion train --text notes.txt --tokenizer bpe --vocab-size 512 --dtype bf16 --out runs/notes
  # continue a run up to 4000 steps (weights, optimizer, data position and RNG are restored)
  companion train shakespeare --steps 4000 --out runs/shakespeare-char --resume
  # data-parallel on 2 processes (DistributedDataParallel; gloo on CPUs, nccl on GPUs)
  torchrun --standalone --nproc_per_node=2 -m companion train shakespeare --out runs/ddp
"""

SAMPLE_EXAMPLES = """\
examples:
  companion sample --ckpt runs/shakespeare-char --prompt "ROMEO:" --max-new-tokens 300
  companion sample --ckpt runs/shakespeare-char --temperature 0 --prompt "To be"   # greedy
  companion sample --ckpt runs/notes --top-p 0.9 --temperature 0.8 --seed 1
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keep the epilog's line breaks and show each option's default when it has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        hidden = default is None or default is False or default == argparse.SUPPRESS
        if not hidden and "default" not in text and action.option_strings:
            shown = repr(default) if isinstance(default, str) else default
            text += f" (default: {shown})" if text else f"default: {shown}"
        return text


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (and exit status 2), like every other error."""

    def error(self, message: str) -> NoReturn:
        """Print ``<prog>: error: <message> (see --help)`` and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `companion` and its sub-commands."""
    parser = _Parser(
        prog="companion",
        description="Pre-train small language models and sample from them (the book "
        "'LLM Principles', chapters 5 to 7). Runs offline on a laptop CPU.",
        epilog="examples:\n"
        "  companion train shakespeare --steps 2000 --out runs/shakespeare-char\n"
        '  companion sample --ckpt runs/shakespeare-char --prompt "ROMEO:"\n\n'
        "Run 'companion train --help' or 'companion sample --help' for all options.",
        formatter_class=_Formatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="{train,sample}")
    sub.required = True

    t = sub.add_parser(
        "train",
        formatter_class=_Formatter,
        epilog=TRAIN_EXAMPLES,
        help="pre-train a GPT or a Llama (next-token prediction) on a corpus or a text file",
        description="Pre-train a GPT or a Llama with next-token prediction. The text is tokenized, split "
        "90/10 into training and validation ids, and the tokenizer, the checkpoint "
        "(safetensors + JSON) and the loss history are written to --out.",
    )
    data = t.add_argument_group("data")
    data.add_argument(
        "corpus",
        nargs="?",
        default=None,
        help="a corpus of companion.text.corpora: shakespeare, reviews or python-docs",
    )
    data.add_argument("--text", metavar="FILE", help="train on this UTF-8 text file instead")
    data.add_argument(
        "--tokenizer",
        choices=("char", "bpe"),
        default="char",
        help="characters, or a byte-level BPE trained on the text",
    )
    data.add_argument("--vocab-size", type=int, default=512, help="BPE vocabulary size")
    data.add_argument(
        "--val-fraction", type=float, default=0.1, help="last fraction of the text held out for validation"
    )
    model = t.add_argument_group("model")
    model.add_argument(
        "--arch",
        choices=ARCHITECTURES,
        default="gpt",
        help="gpt: GPT-2's block; llama: RMSNorm, SwiGLU, rotary positions, grouped-query attention, no biases",
    )
    model.add_argument("--n-layers", type=int, default=4, help="Transformer blocks")
    model.add_argument("--n-heads", type=int, default=4, help="attention heads per block")
    model.add_argument("--d-model", type=int, default=128, help="width of the residual stream")
    model.add_argument(
        "--d-ff", type=int, default=None, help="feed-forward width (default: gpt 4 d_model, llama 8/3 d_model rounded)"
    )
    model.add_argument("--block-size", type=int, default=64, help="context length in tokens")
    model.add_argument("--dropout", type=float, default=0.0, help="dropout probability")
    model.add_argument(
        "--activation",
        choices=("gelu_tanh", "gelu", "relu"),
        default="gelu_tanh",
        help="gpt's feed-forward activation: GPT-2's tanh GELU, the exact (erf) GELU, or ReLU",
    )
    model.add_argument(
        "--n-kv-heads", type=int, default=None, help="llama: key/value heads, dividing --n-heads (default: --n-heads)"
    )
    model.add_argument(
        "--n-experts", type=int, default=0, help="llama: a mixture of this many SwiGLU experts per block (0: dense)"
    )
    model.add_argument("--experts-per-token", type=int, default=2, help="llama: experts each token is routed to")
    opt = t.add_argument_group("training")
    opt.add_argument("--steps", type=int, default=2000, help="optimizer steps in all")
    opt.add_argument(
        "--batch-size", type=int, default=12, help="sequences per step (under torchrun: all ranks together)"
    )
    opt.add_argument(
        "--grad-accum-steps",
        type=int,
        default=1,
        help="split each batch into this many micro-batches (same result, less memory)",
    )
    opt.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    opt.add_argument("--min-lr", type=float, default=1e-4, help="learning rate after the cosine decay")
    opt.add_argument("--warmup", type=int, default=100, help="linear warm-up steps")
    opt.add_argument("--weight-decay", type=float, default=0.1, help="decoupled weight decay of the matrices")
    opt.add_argument(
        "--optimizer",
        choices=("adamw", "muon"),
        default="adamw",
        help="muon: Muon for the blocks' matrices, AdamW for embeddings, biases, norms",
    )
    opt.add_argument(
        "--muon-lr", type=float, default=0.02, help="Muon's peak learning rate (on the same schedule as --lr)"
    )
    opt.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm (0: off)")
    opt.add_argument("--eval-interval", type=int, default=250, help="steps between evaluations")
    opt.add_argument("--eval-steps", type=int, default=20, help="batches per evaluation")
    opt.add_argument("--ckpt-interval", type=int, default=500, help="steps between checkpoints")
    run = t.add_argument_group("run")
    run.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best available)")
    run.add_argument(
        "--dtype",
        choices=("fp32", "bf16"),
        default="fp32",
        help="bf16 autocast is faster on CPUs and GPUs with bf16 units",
    )
    run.add_argument("--compile", action="store_true", help="torch.compile the model")
    run.add_argument(
        "--threads",
        type=int,
        default=None,
        help="fixed CPU threads (default: companion.threads)",
    )
    run.add_argument("--seed", type=int, default=0, help="seed of initialisation, batches, dropout")
    run.add_argument("--out", metavar="DIR", default="runs/gpt", help="output folder")
    run.add_argument(
        "--resume", action="store_true", help="continue the run saved in --out (model shape from its checkpoint)"
    )
    run.add_argument("--quiet", action="store_true", help="no progress bar")

    s = sub.add_parser(
        "sample",
        formatter_class=_Formatter,
        epilog=SAMPLE_EXAMPLES,
        help="generate text from a trained checkpoint",
        description="Continue a prompt with a model trained by 'companion train'.",
    )
    s.add_argument("--ckpt", metavar="DIR", required=True, help="folder written by companion train")
    s.add_argument("--prompt", default="\n", help="text to continue")
    s.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate")
    s.add_argument("--temperature", type=float, default=0.8, help="0 means greedy")
    s.add_argument("--top-k", type=int, default=None, help="keep only the k most likely tokens")
    s.add_argument("--top-p", type=float, default=None, help="nucleus sampling threshold")
    s.add_argument("--num-samples", type=int, default=1, help="how many continuations")
    s.add_argument("--seed", type=int, default=0, help="seed of the sampler")
    s.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best available)")
    return parser


def _read_text(args: argparse.Namespace) -> str:
    from companion.text.corpora import load_corpus

    if (args.corpus is None) == (args.text is None):
        raise ValueError("give either a corpus name (e.g. shakespeare) or --text FILE, not both")
    if args.text is not None:
        path = Path(args.text)
        if not path.is_file():
            raise ValueError(f"--text {path}: no such file")
        return path.read_text(encoding="utf-8")
    return load_corpus(args.corpus)


def _model_config(args: argparse.Namespace, vocab_size: int) -> GPTConfig | LlamaConfig:
    """The GPTConfig or LlamaConfig that the model options describe (--arch)."""
    from companion.nn import GPTConfig, LlamaConfig

    shape = dict(
        vocab_size=vocab_size,
        block_size=args.block_size,
        n_layers=args.n_layers,
        n_heads=args.n_heads,
        d_model=args.d_model,
        d_ff=args.d_ff,
        dropout=args.dropout,
    )
    if args.arch == "gpt":
        given = {"--n-kv-heads": args.n_kv_heads is not None, "--n-experts": args.n_experts != 0}
        given["--experts-per-token"] = args.experts_per_token != 2
        if any(given.values()):
            raise ValueError(f"{', '.join(k for k, v in given.items() if v)}: only for --arch llama")
        return GPTConfig(**shape, activation=args.activation)
    if args.activation != "gelu_tanh":
        raise ValueError("--activation is for --arch gpt: the llama feed-forward is SwiGLU")
    return LlamaConfig(
        **shape, n_kv_heads=args.n_kv_heads, n_experts=args.n_experts, n_experts_per_token=args.experts_per_token
    )


def _init_distributed(device: str | None) -> tuple[str | None, int]:
    """Under torchrun (WORLD_SIZE > 1) join the process group; return (device, rank)."""
    import torch
    import torch.distributed as dist

    from companion.training.distributed import default_backend, env_rank_world
    from companion.utils import get_device

    rank, local_rank, world_size = env_rank_world()
    if world_size == 1:
        return device, 0
    chosen = get_device(device)
    if chosen.type == "cuda":  # one GPU per rank
        chosen = torch.device("cuda", local_rank)
        torch.cuda.set_device(chosen)
    dist.init_process_group(default_backend(chosen))
    return str(chosen), rank


def cmd_train(args: argparse.Namespace) -> int:
    """`companion train`: tokenize, build (or restore) the GPT or Llama, train, save."""
    import torch

    from companion.nn import GPT, Llama
    from companion.text.tokenization import BPETokenizer, CharTokenizer, load_tokenizer
    from companion.training.checkpoint import model_from_checkpoint
    from companion.training.trainer import TrainConfig, train

    if args.threads:
        from companion.threads import policy as thread_policy

        thread_policy.fix(args.threads)
    device, rank = _init_distributed(args.device)
    if not 0.0 < args.val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    out = Path(args.out)
    text = _read_text(args)
    if args.resume:
        if not (out / TOKENIZER_FILE).is_file():
            raise ValueError(f"--resume: {out} holds no {TOKENIZER_FILE}; train without --resume first")
        tokenizer = load_tokenizer(out / TOKENIZER_FILE)
        model = model_from_checkpoint(out)  # its class and shape from the checkpoint, its weights from train()
    else:
        if args.tokenizer == "char":
            tokenizer = CharTokenizer(text)
        else:
            print(f"training a byte-level BPE of {args.vocab_size} tokens ...", file=sys.stderr)
            tokenizer = BPETokenizer.train(text, args.vocab_size)
        model_cfg = _model_config(args, tokenizer.vocab_size)
        torch.manual_seed(args.seed)
        model = {"gpt": GPT, "llama": Llama}[args.arch](model_cfg)
    model_cfg = model.config
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    n_val = max(int(len(ids) * args.val_fraction), model_cfg.block_size + 1)
    train_ids, val_ids = ids[:-n_val], ids[-n_val:]
    cfg = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        block_size=model_cfg.block_size,
        lr=args.lr,
        min_lr=min(args.min_lr, args.lr),
        warmup_steps=args.warmup,
        weight_decay=args.weight_decay,
        grad_clip=args.grad_clip,
        optimizer=args.optimizer,
        muon_lr=args.muon_lr,
        eval_interval=args.eval_interval,
        eval_steps=args.eval_steps,
        grad_accum_steps=args.grad_accum_steps,
        device=device,
        dtype=args.dtype,
        compile=args.compile,
        seed=args.seed,
        out_dir=str(out),
        ckpt_interval=args.ckpt_interval,
    )
    n_params = sum(p.numel() for p in model.parameters())
    say = (lambda *a, **k: print(*a, **k, file=sys.stderr)) if rank == 0 else (lambda *a, **k: None)
    say(
        f"{len(train_ids):,} training and {len(val_ids):,} validation tokens, vocabulary "
        f"{tokenizer.vocab_size}; {type(model).__name__} with {n_params / 1e6:.2f}M parameters"
    )
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        tokenizer.save(out / TOKENIZER_FILE)
    try:
        history = train(
            model,
            train_ids,
            val_ids,
            cfg,
            resume_from=out if args.resume else None,
            progress=not args.quiet,
            tokenizer=tokenizer,
        )
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if rank == 0:
        history.save_json(out / HISTORY_FILE)
    val = f", validation loss {history.val_loss[-1]:.4f}" if history.val_loss else ""
    state = "interrupted at" if history.interrupted else "finished"
    say(
        f"{state} step {history.step[-1] if history.step else 0}: training loss "
        f"{history.train_loss[-1] if history.train_loss else float('nan'):.4f}{val}; saved to {out}"
    )
    return 130 if history.interrupted else 0


def cmd_sample(args: argparse.Namespace) -> int:
    """`companion sample`: load tokenizer + checkpoint and print continuations of the prompt."""
    from companion.inference.generation import generate
    from companion.text.tokenization import load_tokenizer
    from companion.training.checkpoint import load_pretrained
    from companion.utils import get_device

    ckpt = Path(args.ckpt)
    if not (ckpt / TOKENIZER_FILE).is_file():
        raise ValueError(f"{ckpt} holds no {TOKENIZER_FILE}: is it a folder written by companion train?")
    tokenizer = load_tokenizer(ckpt / TOKENIZER_FILE)
    model = load_pretrained(ckpt, device=get_device(args.device))
    ids = tokenizer.encode(args.prompt)
    if not ids:
        raise ValueError("the prompt is empty after tokenization; give at least one character")
    block = model.config.block_size
    if len(ids) > block:
        print(f"note: the prompt has {len(ids)} tokens; keeping the last {block} (block_size)", file=sys.stderr)
        ids = ids[-block:]
    for i in range(args.num_samples):
        out = generate(
            model,
            ids,
            args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=args.seed + i,
        )
        if i:
            print("-" * 40)
        print(tokenizer.decode(out.tolist()))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `companion` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return cmd_train(args) if args.command == "train" else cmd_sample(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"companion {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
