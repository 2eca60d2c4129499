"""Data-parallel training with PyTorch's DistributedDataParallel (DDP), on CPUs or GPUs.

Every process (a *rank*) holds a full copy of the model. All ranks draw the same global batch
of `cfg.batch_size` windows (the same sampler seed) and each keeps its own shard of
`cfg.batch_size / world_size` rows; DDP all-reduces (averages) the gradients during
`backward()`, so every rank applies the same update and the copies never drift apart. With
shards of equal size the averaged gradient is exactly the gradient of the mean loss over the
global batch, so N processes compute what one process computes on the whole batch.

    torchrun --standalone --nproc_per_node=2 -m companion.distributed --steps 5

The optimizer, learning-rate schedule, batching and loss are the trainer's own pieces
(`companion.training`); this module only adds the process group, the sharding and DDP.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from companion.batching import BlockSampler, as_token_tensor
from companion.objectives import resolve_objective
from companion.training import TrainConfig, lr_at, make_optimizer, model_loss
from companion.utils import set_seed


def default_backend(device: torch.device) -> str:
    """"nccl" for CUDA devices, "gloo" otherwise (gloo runs on any CPU)."""
    return "nccl" if device.type == "cuda" else "gloo"


def env_rank_world() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from the variables torchrun sets; (0, 0, 1) without them."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
            int(os.environ.get("WORLD_SIZE", 1)))


def shard(batch: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rows [rank * b, (rank + 1) * b) of a (B, ...) batch, b = B / world_size."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size), got rank {rank}, world_size {world_size}")
    if batch.size(0) % world_size:
        raise ValueError(f"global batch size {batch.size(0)} is not divisible by world_size "
                         f"{world_size}: every rank needs a shard of the same size")
    b = batch.size(0) // world_size
    return batch[rank * b:(rank + 1) * b]  # (B / world_size, ...)


def ddp_train(model: nn.Module, train_data: Any, cfg: TrainConfig, *, objective: Any = "clm",
              device: torch.device | str | None = None) -> dict[str, list[float]]:
    """Train `model` for `cfg.steps` steps, data-parallel over the initialised process group.

    Without an initialised process group it runs as one process (world_size 1). The schedule
    (`lr_at`), optimizer (`make_optimizer`), batches (`BlockSampler` with seed `cfg.seed`) and loss
    (`model_loss`) are those of `companion.training.train`, so with the same config the result
    equals a single-process `train(...)` run on the global batch (up to float rounding).
    Returns {"step", "loss" (mean over the global batch), "lr", "grad_norm"}.
    """
    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    world_size = dist.get_world_size() if distributed else 1
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if device.type == "cuda" and device.index is None:  # DDP needs the device index
        device = torch.device("cuda", torch.cuda.current_device())
    obj = resolve_objective(objective, model)
    if obj.extra_tokens != 1:
        raise ValueError(f"ddp_train supports next-token objectives only, got {obj.name!r}: with "
                         "masked LM the shards hold different numbers of targets")
    train_data = as_token_tensor(train_data, "train data")
    shard(torch.empty(cfg.batch_size), rank, world_size)  # checks divisibility up front

    set_seed(cfg.seed)  # as train() does: same global RNG state on every rank
    model.to(device).train()
    optimizer = make_optimizer(model, cfg, device)  # on the plain module: DDP wraps the same tensors
    ddp_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None) if distributed else model
    sampler = BlockSampler(train_data, cfg.batch_size, obj.window_length(cfg.block_size), seed=cfg.seed)
    log: dict[str, list[float]] = {"step": [], "loss": [], "lr": [], "grad_norm": []}
    for step in range(cfg.steps):
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = obj(sampler.next(), sampler.generator)  # (B, T) each: the global batch, on every rank
        x, y = shard(x, rank, world_size).to(device), shard(y, rank, world_size).to(device)  # (B/W, T)
        loss = model_loss(ddp_model, x, y)  # mean over this rank's shard
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # DDP averages the gradients over the ranks here
        norm = (torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                if cfg.grad_clip > 0 else torch.tensor(float("nan")))
        optimizer.step()
        mean_loss = loss.detach().clone()
        if distributed:
            dist.all_reduce(mean_loss, op=dist.ReduceOp.SUM)
            mean_loss /= world_size
        value = mean_loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"loss is {value} at step {step + 1}")
        log["step"].append(step + 1)
        log["loss"].append(value)
        log["lr"].append(lr)
        log["grad_norm"].append(float(norm))
    model.eval()
    return log


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


def zero_memory_per_device(n_params: float, world_size: int = 1, stage: int = 0, *,
                           weight_bytes: int = 2, grad_bytes: int = 2,
                           optimizer_bytes: int = 12) -> MemoryPerDevice:
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
    from companion.data import load_corpus
    from companion.tokenization import CharTokenizer

    text = load_corpus("shakespeare")[:n_chars]
    tok = CharTokenizer(text)
    return torch.tensor(tok.encode(text), dtype=torch.long), tok.vocab_size


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Entry point for torchrun: train a small GPT data-parallel and check the ranks agree."""
    from companion.models import GPT, GPTConfig

    p = argparse.ArgumentParser(prog="python -m companion.distributed",
                                description="Data-parallel GPT training (run it under torchrun).")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=8, help="global batch (all ranks together)")
    p.add_argument("--block-size", type=int, default=32)
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--chars", type=int, default=100_000, help="characters of Shakespeare to use")
    p.add_argument("--device", default="cpu", help="cpu, or cuda (one GPU per rank)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="parameter dtype (float64 makes the comparison with one process exact "
                   "to ~1e-15; in float32 Adam magnifies rounding noise in near-zero gradients)")
    p.add_argument("--compare", action="store_true",
                   help="rank 0 also trains one process on the global batch and reports the difference")
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
    gcfg = GPTConfig(vocab_size=vocab, block_size=args.block_size, n_layers=args.n_layers,
                     n_heads=args.n_heads, d_model=args.d_model)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, block_size=args.block_size,
                      lr=args.lr, min_lr=args.lr / 10, warmup_steps=max(1, args.steps // 5), seed=0,
                      device=str(device))
    dtype = getattr(torch, args.dtype)
    set_seed(0)
    model = GPT(gcfg).to(dtype)
    t0 = time.perf_counter()
    log = ddp_train(model, data, cfg, device=device)
    seconds = time.perf_counter() - t0
    rank_diff = max_rank_difference(model)
    line = (f"rank {rank}/{world_size} ({backend}, {device}): losses "
            + " ".join(f"{v:.4f}" for v in log["loss"])
            + f" | parameter checksum {flat_parameters(model).sum().item():.10f}")
    lines = [line]
    if dist.is_initialized():  # rank 0 prints every rank's line, in rank order
        lines = [None] * world_size
        dist.all_gather_object(lines, line)
    if rank == 0:
        print("\n".join(lines), flush=True)
    report = {"world_size": world_size, "backend": backend, "device": str(device), "dtype": args.dtype,
              "loss": log["loss"], "seconds": round(seconds, 3), "max_rank_difference": rank_diff,
              "torch_version": torch.__version__}
    if args.compare and rank == 0:  # the same run on one process with the whole global batch
        set_seed(0)
        single = GPT(gcfg).to(dtype)
        from companion.training import train
        history = train(single, data, None, cfg, progress=False)
        report["single_process_loss"] = history.train_loss
        report["max_difference_vs_single_process"] = float(
            (flat_parameters(single) - flat_parameters(model)).abs().max())
    if rank == 0:
        print(f"max parameter difference between ranks: {rank_diff:.3g}", flush=True)
        if "max_difference_vs_single_process" in report:
            print(f"max parameter difference vs one process: "
                  f"{report['max_difference_vs_single_process']:.3g}", flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=1))
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return report


if __name__ == "__main__":
    main()
