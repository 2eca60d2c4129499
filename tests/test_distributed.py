"""Data-parallel training: sharding, gradient accumulation, and 2 gloo processes equal one process."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from companion.nn import GPT, GPTConfig
from companion.training.distributed import (
    flat_parameters,
    max_rank_difference,
    micro_batches,
    shard,
    zero_memory_per_device,
)
from companion.training.objectives import MaskedLM
from companion.training.trainer import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
GPT_CFG = GPTConfig(vocab_size=64, block_size=16, n_layers=2, n_heads=2, d_model=32, bias=False)
TRAIN_CFG = TrainConfig(
    steps=4, batch_size=8, block_size=16, lr=1e-3, min_lr=1e-4, warmup_steps=1, device="cpu", seed=0
)
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def token_data() -> torch.Tensor:
    """A fixed stream of 4,000 random token ids (the test needs identical data, not text)."""
    return torch.randint(0, GPT_CFG.vocab_size, (4000,), generator=torch.Generator().manual_seed(1))


def fresh_model(dtype: torch.dtype) -> GPT:
    torch.manual_seed(0)
    return GPT(GPT_CFG).to(dtype)


def test_shard_splits_rows_in_rank_order():
    batch = torch.arange(12).reshape(6, 2)
    parts = [shard(batch, r, 3) for r in range(3)]
    assert all(p.shape == (2, 2) for p in parts)
    assert torch.equal(torch.cat(parts), batch)


def test_shard_errors():
    with pytest.raises(ValueError, match="not divisible by world_size 4"):
        shard(torch.zeros(6, 2), 0, 4)
    with pytest.raises(ValueError, match="rank must be in"):
        shard(torch.zeros(6, 2), 3, 3)


def test_zero_memory_matches_the_paper():
    """Rajbhandari et al. (2020), Figure 1: 7.5B parameters on 64 devices."""
    gb = [zero_memory_per_device(7.5e9, 64, stage).total / 1e9 for stage in range(4)]
    assert gb == pytest.approx([120.0, 31.4, 16.6, 1.9], abs=0.06)
    # 175B parameters, no sharding: 16 bytes each = 2.8 TB
    assert zero_memory_per_device(175e9).total == pytest.approx(2.8e12)
    with pytest.raises(ValueError, match="ZeRO stage must be"):
        zero_memory_per_device(1e9, 8, stage=4)
    with pytest.raises(ValueError, match="n_params must be positive"):
        zero_memory_per_device(0)


@pytest.mark.parametrize("scale_sensitive", [False, True], ids=["default", "sgd-like"])
def test_grad_accumulation_equals_one_batch(scale_sensitive):
    """k micro-batches of loss / k add up to the gradient of the whole batch's mean loss.

    Adam with clipping hardly notices a gradient k times too large (both normalise it away), so
    the second case turns clipping off and makes eps large: the update is then about lr * g / eps,
    linear in the gradient, and a wrong scale shows in the parameters.
    """
    base = dataclasses.replace(TRAIN_CFG, grad_clip=0.0, eps=1.0) if scale_sensitive else TRAIN_CFG
    runs = {}
    for k in (1, 2, 4):
        model = fresh_model(torch.float64)
        history = train(model, token_data(), None, dataclasses.replace(base, grad_accum_steps=k), progress=False)
        runs[k] = (flat_parameters(model), history.train_loss)
    for k in (2, 4):
        assert (runs[k][0] - runs[1][0]).abs().max().item() < 1e-12
        assert runs[k][1] == pytest.approx(runs[1][1], rel=1e-12)
    assert (runs[1][0] - flat_parameters(fresh_model(torch.float64))).abs().max() > 1e-6  # it moved


def test_accumulation_errors():
    with pytest.raises(ValueError, match="batch_size 8 is not divisible by world_size 1 x grad_accum_steps 3"):
        train(
            fresh_model(torch.float32),
            token_data(),
            None,
            dataclasses.replace(TRAIN_CFG, grad_accum_steps=3),
            progress=False,
        )
    with pytest.raises(ValueError, match="need a next-token objective"):
        train(
            fresh_model(torch.float32),
            token_data(),
            None,
            dataclasses.replace(TRAIN_CFG, grad_accum_steps=2),
            objective=MaskedLM(mask_token_id=0, vocab_size=GPT_CFG.vocab_size),
            progress=False,
        )
    with pytest.raises(ValueError, match="grad_accum_steps must be >= 1"):
        TrainConfig(grad_accum_steps=0)


def test_micro_batches_cover_the_shard():
    x, y = torch.arange(16).reshape(8, 2), torch.arange(16).reshape(8, 2) + 100
    parts = list(micro_batches(x, y, rank=1, world_size=2, n_micro=2))
    assert [tuple(p[0].shape) for p in parts] == [(2, 2), (2, 2)]
    assert torch.equal(torch.cat([p[0] for p in parts]), x[4:])  # rank 1 holds rows 4..7
    assert torch.equal(torch.cat([p[1] for p in parts]), y[4:])
    with pytest.raises(ValueError, match="does not split into 3 equal micro-batches"):
        list(micro_batches(x, y, rank=0, world_size=2, n_micro=3))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    """One rank: the ordinary trainer under a process group (DDP); rank 0 saves the results."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        report = {}
        for name, dtype in DTYPES.items():
            model = fresh_model(dtype)
            cfg = dataclasses.replace(TRAIN_CFG, out_dir=f"{out_dir}/ckpt_{name}_rank{rank}")
            history = train(model, token_data(), token_data(), cfg, progress=False)
            report[name] = {
                "loss": history.train_loss,
                "val_loss": history.val_loss,
                "rank_difference": max_rank_difference(model),
            }
            if rank == 0:
                save_file({"flat": flat_parameters(model)}, f"{out_dir}/{name}.safetensors")
        if rank == 0:
            Path(out_dir, "report.json").write_text(json.dumps(report))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path):
    """train() on 2 gloo ranks with 4 rows each = train() in 1 process with the global batch of 8."""
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    report = json.loads((tmp_path / "report.json").read_text())
    torch.set_num_threads(1)  # as in the workers: the same matrix-product kernels
    for name, dtype in DTYPES.items():
        ddp = load_file(tmp_path / f"{name}.safetensors")["flat"]
        assert report[name]["rank_difference"] == 0.0  # the ranks hold identical copies
        assert (tmp_path / f"ckpt_{name}_rank0" / "model.safetensors").is_file()
        assert not (tmp_path / f"ckpt_{name}_rank1").exists()  # only rank 0 writes checkpoints
        diffs = {}
        for accum in (2, 1):
            # 2 micro-batches of 4 rows: the ranks' shards, added as DDP adds them;
            # 1: the whole batch in one pass, the same sum rounded in another order.
            single = fresh_model(dtype)
            history = train(
                single,
                token_data(),
                token_data(),
                dataclasses.replace(TRAIN_CFG, grad_accum_steps=accum),
                progress=False,
            )
            diffs[accum] = (ddp - flat_parameters(single)).abs().max().item()
            assert report[name]["loss"] == pytest.approx(history.train_loss, rel=1e-5)
            assert report[name]["val_loss"] == pytest.approx(history.val_loss, rel=1e-5)
            assert history.train_loss[-1] < history.train_loss[0]  # it did train
        assert diffs[2] < 1e-6, f"{name}: DDP and one process with the same micro-batches differ by {diffs[2]:.3g}"
        # Against the single pass: float64 agrees to rounding. In float32 the different summation
        # order changes gradients by ~1e-8, and some true gradients are ~1e-9, below Adam's eps:
        # Adam divides such a gradient by its own size, so its rounding noise becomes an update of
        # a sizeable fraction of lr (measured ~3e-5 after 4 steps at lr 1e-3); the bound is lr / 10.
        assert diffs[1] < (1e-12 if dtype == torch.float64 else 1e-4), f"{name}: {diffs[1]:.3g}"


@pytest.mark.slow
def test_torchrun_entry_point(tmp_path):
    """`torchrun --nproc_per_node=2 -m companion.training.distributed` runs and equals one process."""
    out = tmp_path / "ddp.json"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [
        str(torchrun),
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "companion.training.distributed",
        "--steps",
        "3",
        "--chars",
        "20000",
        "--compare",
        "--out",
        str(out),
    ]
    result = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["world_size"] == 2 and report["backend"] == "gloo" and report["dtype"] == "float32"
    assert report["max_rank_difference"] == 0.0
    assert report["max_difference_vs_single_process"] < 1e-6
    assert report["max_difference_vs_single_batch"] < 1e-4
    assert "rank 1/2" in result.stdout and "rank 0/2" in result.stdout
