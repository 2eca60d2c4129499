"""Data-parallel training: sharding, and 2 gloo processes on one CPU equal one process."""

from __future__ import annotations

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

from companion.distributed import (
    ddp_train,
    flat_parameters,
    max_rank_difference,
    shard,
    zero_memory_per_device,
)
from companion.models import GPT, GPTConfig
from companion.objectives import MaskedLM
from companion.training import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
GPT_CFG = GPTConfig(vocab_size=64, block_size=16, n_layers=2, n_heads=2, d_model=32, bias=False)
TRAIN_CFG = TrainConfig(steps=4, batch_size=8, block_size=16, lr=1e-3, min_lr=1e-4, warmup_steps=1,
                        device="cpu", seed=0)
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


def test_ddp_train_without_group_equals_the_trainer():
    """One process, no process group: ddp_train is the trainer's step, bit for bit."""
    a, b = fresh_model(torch.float32), fresh_model(torch.float32)
    log = ddp_train(a, token_data(), TRAIN_CFG)
    history = train(b, token_data(), None, TRAIN_CFG, progress=False)
    assert log["loss"] == history.train_loss
    assert torch.equal(flat_parameters(a), flat_parameters(b))
    assert max_rank_difference(a) == 0.0


def test_ddp_train_rejects_masked_lm():
    with pytest.raises(ValueError, match="next-token objectives only"):
        ddp_train(fresh_model(torch.float32), token_data(), TRAIN_CFG,
                  objective=MaskedLM(mask_token_id=0, vocab_size=GPT_CFG.vocab_size))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    """One rank: train a float32 and a float64 copy data-parallel; rank 0 saves the results."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        report = {}
        for name, dtype in DTYPES.items():
            model = fresh_model(dtype)
            log = ddp_train(model, token_data(), TRAIN_CFG)
            report[name] = {"loss": log["loss"], "rank_difference": max_rank_difference(model)}
            if rank == 0:
                save_file({"flat": flat_parameters(model)}, f"{out_dir}/{name}.safetensors")
        if rank == 0:
            Path(out_dir, "report.json").write_text(json.dumps(report))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path):
    """2 gloo ranks with 4 rows each = 1 process with the global batch of 8 rows."""
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    report = json.loads((tmp_path / "report.json").read_text())
    for name, dtype in DTYPES.items():
        single = fresh_model(dtype)
        history = train(single, token_data(), None, TRAIN_CFG, progress=False)
        ddp = load_file(tmp_path / f"{name}.safetensors")["flat"]
        diff = (ddp - flat_parameters(single)).abs().max().item()
        assert report[name]["rank_difference"] == 0.0  # the ranks hold identical copies
        # float64: the same arithmetic up to rounding. float32: the all-reduce adds the two
        # shards' gradients in another order than one big matrix product does (differences
        # ~1e-8), and some true gradients are ~1e-9, below Adam's eps: Adam divides such a
        # gradient by its own size, so its rounding noise becomes an update of up to ~lr.
        # Measured: ~3e-5 after 4 steps at lr 1e-3; the bound below is lr / 10.
        tol = 1e-4 if dtype == torch.float32 else 1e-12
        assert diff < tol, f"{name}: DDP and one process differ by {diff:.3g}"
        assert report[name]["loss"] == pytest.approx(history.train_loss, rel=1e-5)
        assert history.train_loss[-1] < history.train_loss[0]  # it did train


@pytest.mark.slow
def test_torchrun_entry_point(tmp_path):
    """`torchrun --nproc_per_node=2 -m companion.distributed` runs and the ranks agree."""
    out = tmp_path / "ddp.json"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "companion.distributed",
           "--steps", "3", "--chars", "20000", "--dtype", "float64", "--compare", "--out", str(out)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["world_size"] == 2 and report["backend"] == "gloo"
    assert report["max_rank_difference"] == 0.0
    assert report["max_difference_vs_single_process"] < 1e-12
    assert "rank 1/2" in result.stdout and "rank 0/2" in result.stdout
