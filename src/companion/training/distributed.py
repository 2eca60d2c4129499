"""Data-parallel training with PyTorch's DistributedDataParallel (DDP), on CPUs or GPUs.

Every process (a *rank*) holds a full copy of the model. `companion.training.trainer.train` notices an
initialised process group: all ranks draw the same global batch of `cfg.batch_size` windows (the
same sampler seed), each keeps its own shard of `cfg.batch_size / world_size` rows, and DDP
all-reduces (averages) the gradients during `backward()`, so every rank applies the same update
and the copies never drift apart. With shards of equal size the averaged gradient is exactly the
gradient of the mean loss over the global batch, so W processes compute what one process computes
on the whole batch, and exactly what one process computes with `grad_accum_steps = W` (the same
micro-batches, the same additions).

    torchrun --standalone --nproc_per_node=2 -m companion.training.distributed --steps 5 --compare

This module holds the pieces `train` uses (the process group, the sharding, the DDP wrapper), a
check that the ranks agree, ZeRO's memory arithmetic, and the `torchrun` entry point.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from companion.utils import set_seed


def default_backend(device: torch.device) -> str:
    """ "nccl" for CUDA devices, "gloo" otherwise (gloo runs on any CPU)."""
    return "nccl" if device.type == "cuda" else "gloo"


def env_rank_world() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from the variables torchrun sets; (0, 0, 1) without them."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))


def process_group() -> tuple[int, int]:
    """(rank, world_size) of the initialised default process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(batch: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rows [rank * b, (rank + 1) * b) of a (B, ...) batch, b = B / world_size."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size), got rank {rank}, world_size {world_size}")
    if batch.size(0) % world_size:
        raise ValueError(
            f"global batch size {batch.size(0)} is not divisible by world_size "
            f"{world_size}: every rank needs a shard of the same size"
        )
    b = batch.size(0) // world_size
    return batch[rank * b : (rank + 1) * b]  # (B / world_size, ...)


def wrap_ddp(model: nn.Module, device: torch.device) -> DDP:
    """Wrap `model` (already on `device`) in DistributedDataParallel for the current group."""
    if device.type == "cuda" and device.index is None:  # DDP needs the device index
        device = torch.device("cuda", torch.cuda.current_device())
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def micro_batches(
    x: torch.Tensor, y: torch.Tensor, rank: int, world_size: int, n_micro: int, ddp: DDP | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor, Any]]:
    """This rank's rows of the global batch (x, y), as `n_micro` equal micro-batches.

    Yields (x_micro, y_micro, context): run the micro-batch's forward and backward inside
    `context`, which is DDP's `no_sync()` for all but the last micro-batch (its gradients only
    accumulate locally) and does nothing otherwise.
    """
    xs, ys = shard(x, rank, world_size), shard(y, rank, world_size)  # (B / W, T)
    if xs.size(0) % n_micro:
        raise ValueError(f"a shard of {xs.size(0)} rows does not split into {n_micro} equal micro-batches")
    for i, (xm, ym) in enumerate(zip(xs.chunk(n_micro), ys.chunk(n_micro))):  # (B / (W k), T)
        last = i == n_micro - 1
        yield xm, ym, (ddp.no_sync() if ddp is not None and not last else contextlib.nullcontext())


def flat_parameters(model: nn.Module) -> torch.Tensor:
    """All parameters of a model concatenated into one 1-D float64 CPU tensor."""
    return torch.cat([p.detach().double().reshape(-1).cpu() for p in model.parameters()])


def max_rank_difference(model: nn.Module) -> float:
    """Largest |difference| between any rank's parameters and rank 0's (0.0 without a group)."""
    flat = flat_parameters(model)
    if not (dist.is_available() and dist.is_initialized()):
        return 0.0
    backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    flat = flat.to(backend_device)
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    diff = (flat - reference).abs().max()
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return float(diff)


class MemoryPerDevice(NamedTuple):
    """Bytes of model state one device holds during mixed-precision Adam training."""

    weights: float  # 16-bit parameters
    gradients: float  # 16-bit gradients
    optimizer: float  # fp32 master weights + Adam's two moments
    total: float


def zero_memory_per_device(
    n_params: float,
    world_size: int = 1,
    stage: int = 0,
    *,
    weight_bytes: int = 2,
    grad_bytes: int = 2,
    optimizer_bytes: int = 12,
) -> MemoryPerDevice:
    r"""Model-state memory per device with ZeRO (Rajbhandari et al. 2020), activations excluded.

    Mixed-precision Adam keeps, per parameter, 2 bytes of fp16/bf16 weights, 2 of gradients
    and K = 12 of fp32 optimizer state (a master copy of the weights, the first and second
    moments): 16 bytes. Plain data parallelism replicates all of it on every device; ZeRO stage 1
    shards the optimizer state over the `world_size` devices, stage 2 also the gradients,
    stage 3 also the weights (which is what PyTorch's FSDP does): $16\Psi / N_d$ per device.
    """
    if n_params <= 0:
        raise ValueError(f"n_params must be positive, got {n_params}")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO stage must be 0, 1, 2 or 3, got {stage}")
    w, g, o = (n_params * b for b in (weight_bytes, grad_bytes, optimizer_bytes))
    o /= world_size if stage >= 1 else 1
    g /= world_size if stage >= 2 else 1
    w /= world_size if stage >= 3 else 1
    return MemoryPerDevice(weights=w, gradients=g, optimizer=o, total=w + g + o)


def _demo_data(n_chars: int) -> tuple[torch.Tensor, int]:
    """Character ids of the first n_chars of the Shakespeare corpus, and the vocabulary size."""
    from companion.text.corpora import load_corpus
    from companion.text.tokenization import CharTokenizer

    text = load_corpus("shakespeare")[:n_chars]
    tok = CharTokenizer(text)
    return torch.tensor(tok.encode(text), dtype=torch.long), tok.vocab_size


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Entry point for torchrun: train a small GPT data-parallel and check the ranks agree."""
    from companion.nn import GPT, GPTConfig
    from companion.training.trainer import TrainConfig, train

    p = argparse.ArgumentParser(
        prog="python -m companion.training.distributed",
        description="Data-parallel GPT training (run it under torchrun).",
    )
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=8, help="global batch (all ranks together)")
    p.add_argument("--block-size", type=int, default=32)
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--chars", type=int, default=100_000, help="characters of Shakespeare to use")
    p.add_argument("--device", default="cpu", help="cpu, or cuda (one GPU per rank)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="parameter dtype")
    p.add_argument(
        "--compare",
        action="store_true",
        help="rank 0 then trains the same model in one process, with the ranks' shards as "
        "micro-batches and with the whole batch at once, and reports the differences",
    )
    p.add_argument("--out", default=None, help="rank 0 writes its JSON report here")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)

    rank, local_rank, world_size = env_rank_world()
    device = torch.device(f"cuda:{local_rank}" if args.device == "cuda" else args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = default_backend(device)
    if world_size > 1:
        dist.init_process_group(backend, timeout=dt.timedelta(minutes=5))
    data, vocab = _demo_data(args.chars)
    gcfg = GPTConfig(
        vocab_size=vocab, block_size=args.block_size, n_layers=args.n_layers, n_heads=args.n_heads, d_model=args.d_model
    )
    cfg = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        block_size=args.block_size,
        lr=args.lr,
        min_lr=args.lr / 10,
        warmup_steps=max(1, args.steps // 5),
        seed=0,
        device=str(device),
    )
    dtype = getattr(torch, args.dtype)
    set_seed(0)
    model = GPT(gcfg).to(dtype)
    t0 = time.perf_counter()
    history = train(model, data, None, cfg, progress=False)  # DDP: the process group is initialised
    seconds = time.perf_counter() - t0
    rank_diff = max_rank_difference(model)
    line = (
        f"rank {rank}/{world_size} ({backend}, {device}): losses "
        + " ".join(f"{v:.4f}" for v in history.train_loss)
        + f" | parameter checksum {flat_parameters(model).sum().item():.10f}"
    )
    lines = [line]
    if dist.is_initialized():  # rank 0 prints every rank's line, in rank order
        lines = [None] * world_size
        dist.all_gather_object(lines, line)
    if rank == 0:
        print("\n".join(lines), flush=True)
    report = {
        "world_size": world_size,
        "backend": backend,
        "device": str(device),
        "dtype": args.dtype,
        "loss": history.train_loss,
        "seconds": round(seconds, 3),
        "max_rank_difference": rank_diff,
        "torch_version": torch.__version__,
    }
    if dist.is_initialized():  # the data-parallel part is over
        dist.barrier()
        dist.destroy_process_group()
    if args.compare and rank == 0:  # the same run in one process, on the same global batches
        for key, accum in (("single_process", world_size), ("single_batch", 1)):
            # grad_accum_steps = W: the ranks' shards as micro-batches, the same arithmetic as DDP;
            # 1: the whole global batch in one pass (the same sum, in another rounding order)
            set_seed(0)
            single = GPT(gcfg).to(dtype)
            h = train(single, data, None, dataclasses.replace(cfg, grad_accum_steps=accum), progress=False)
            report[f"{key}_loss"] = h.train_loss
            report[f"max_difference_vs_{key}"] = float((flat_parameters(single) - flat_parameters(model)).abs().max())
    if rank == 0:
        print(f"max parameter difference between ranks: {rank_diff:.3g}", flush=True)
        if args.compare:
            print(
                "max parameter difference vs one process with the ranks' shards as micro-batches: "
                f"{report['max_difference_vs_single_process']:.3g}",
                flush=True,
            )
            print(
                "max parameter difference vs one process with the whole batch in one pass: "
                f"{report['max_difference_vs_single_batch']:.3g}",
                flush=True,
            )
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
