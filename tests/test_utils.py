"""Tests for companion.utils: seeding, device choice and the CPU description the benchmarks print."""

from __future__ import annotations

import pytest
import torch

from companion.utils import cpu_info, describe_cpu, get_device, set_seed


def test_set_seed_makes_draws_repeat_and_rejects_bad_seeds():
    set_seed(3)
    a = torch.rand(4)
    g = set_seed(3)
    assert torch.equal(torch.rand(4), a)
    assert torch.equal(torch.rand(4, generator=g), torch.rand(4, generator=torch.Generator().manual_seed(3)))
    with pytest.raises(ValueError, match="non-negative int"):
        set_seed(-1)


def test_get_device_honours_a_choice_and_refuses_a_missing_one():
    assert get_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda"):
            get_device("cuda")


def test_cpu_info_reads_model_and_bf16_flags(tmp_path):
    fake = tmp_path / "cpuinfo"
    fake.write_text(
        "processor\t: 0\nmodel name\t: Example CPU 9000\nflags\t\t: fpu avx2 avx512f amx_bf16\n\n"
        "processor\t: 1\nmodel name\t: Example CPU 9000\nflags\t\t: fpu avx2 avx512f amx_bf16\n"
    )
    info = cpu_info(fake)
    assert info["model"] == "Example CPU 9000" and info["bf16_flags"] == ["amx_bf16"]
    assert describe_cpu(info).endswith("bf16 instructions: amx_bf16")
    fake.write_text("model name\t: Old CPU\nflags\t\t: fpu avx2\n")
    assert describe_cpu(cpu_info(fake)).endswith("bf16 instructions: none")
    missing = cpu_info(tmp_path / "no-such-file")  # not Linux: flags unknown, not "none"
    assert missing["bf16_flags"] is None and describe_cpu(missing).endswith("unknown")
