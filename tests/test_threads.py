"""companion.threads: the CPUs really available (affinity, cgroup quota) and the shared-machine policy."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from companion import threads
from companion.threads import ThreadPolicy, available_cpus, cgroup_cpu_limit, other_runnable_tasks


def _cgroup_v2(tmp_path, cpu_max: str):
    (tmp_path / "proc_cgroup").write_text("0::/user/jupyter-ana\n")
    folder = tmp_path / "fs" / "user" / "jupyter-ana"
    folder.mkdir(parents=True)
    (folder / "cpu.max").write_text(cpu_max + "\n")
    return tmp_path / "fs", tmp_path / "proc_cgroup"


def _cgroup_v1(tmp_path, quota: int, period: int):
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "proc_cgroup").write_text("4:memory:/x\n3:cpu,cpuacct:/docker/abc\n")
    folder = tmp_path / "fs" / "cpu,cpuacct" / "docker" / "abc"
    folder.mkdir(parents=True)
    (folder / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (folder / "cpu.cfs_period_us").write_text(f"{period}\n")
    return tmp_path / "fs", tmp_path / "proc_cgroup"


def test_a_cgroup_v2_quota_caps_the_cpus(tmp_path):
    root, proc = _cgroup_v2(tmp_path, "150000 100000")  # JupyterHub cpu_limit = 1.5
    assert cgroup_cpu_limit(root, proc) == pytest.approx(1.5)
    assert available_cpus(root, proc) == min(2, len(os.sched_getaffinity(0)))  # 1.5 rounds up to 2
    (root / "user" / "jupyter-ana" / "cpu.max").write_text("50000 100000\n")
    assert available_cpus(root, proc) == 1
    (root / "user" / "jupyter-ana" / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(root, proc) is None
    assert available_cpus(root, proc) == len(os.sched_getaffinity(0))


def test_a_cgroup_v1_quota_caps_the_cpus(tmp_path):
    root, proc = _cgroup_v1(tmp_path, 100000, 100000)
    assert cgroup_cpu_limit(root, proc) == pytest.approx(1.0) and available_cpus(root, proc) == 1
    root, proc = _cgroup_v1(tmp_path / "b", -1, 100000)  # -1: no quota
    assert cgroup_cpu_limit(root, proc) is None


def test_no_cgroup_files_means_no_quota(tmp_path):
    (tmp_path / "proc_cgroup").write_text("0::/\n")
    assert cgroup_cpu_limit(tmp_path, tmp_path / "proc_cgroup") is None
    assert cgroup_cpu_limit(tmp_path, tmp_path / "missing") is None


def test_a_restricted_affinity_gives_one_thread_in_a_fresh_process():
    code = textwrap.dedent(
        """
        import os
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        import torch, companion
        from companion.threads import available_cpus, policy
        print(available_cpus(), torch.get_num_threads(), policy.cpus)
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", threads.ENV)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["1", "1", "1"]


def test_other_runnable_tasks_reads_proc(tmp_path):
    (tmp_path / "stat").write_text("cpu  1 2 3\nprocs_running 5\nprocs_blocked 0\n")
    tasks = tmp_path / "self" / "task"
    for tid, state in [("10", "R"), ("11", "S"), ("12", "R")]:
        (tasks / tid).mkdir(parents=True)
        (tasks / tid / "stat").write_text(f"{tid} (python (x)) {state} 1 2 3\n")  # a name with parentheses
    assert other_runnable_tasks(tmp_path) == 3  # 5 runnable, 2 of them ours
    assert other_runnable_tasks(tmp_path / "missing") is None
    assert other_runnable_tasks() >= 0  # the real /proc


def test_the_policy_leaves_cores_to_busy_others(monkeypatch, restore_threads):
    monkeypatch.delenv(threads.ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    p = ThreadPolicy()
    p.cpus = 4
    p.recent.extend([0, 3, 3])  # the lower median, 3, ignores a single quiet sample
    assert p.busy() == 3 and p.choose() == 1
    p.recent.clear()
    p.recent.extend([1, 0, 0])
    assert p.busy() == 0 and p.choose() == 4
    p.recent.extend([2, 2, 2])
    assert p.choose() == 2 and "2 other tasks running on 4 CPUs" in p.describe()


def test_the_policy_can_be_overridden(monkeypatch, restore_threads):
    monkeypatch.setenv(threads.ENV, "1")
    p = ThreadPolicy()
    assert p.check(force=True) == 1 and torch.get_num_threads() == 1 and p.describe() is None
    monkeypatch.setenv(threads.ENV, "torch")
    assert not ThreadPolicy().enabled
    monkeypatch.setenv(threads.ENV, "two")
    with pytest.raises(ValueError, match="COMPANION_THREADS must be a positive integer or 'torch'"):
        ThreadPolicy()
    monkeypatch.delenv(threads.ENV)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert not ThreadPolicy().enabled  # OpenMP's own variable is a choice too
    monkeypatch.setenv(threads.ENV, "2")
    assert not ThreadPolicy().enabled  # ... and it wins over an inherited COMPANION_THREADS
    with pytest.raises(ValueError, match="positive integer"):
        p.fix(0)


def test_the_policy_respects_torch_set_num_threads(monkeypatch, restore_threads):
    monkeypatch.delenv(threads.ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    p = ThreadPolicy(interval=0.0)
    p.cpus = 2
    monkeypatch.setattr(threads, "other_runnable_tasks", lambda: 5)
    assert p.check(force=True) == 1  # busy: one thread
    torch.set_num_threads(2)  # the reader's own choice
    assert p.check(force=True) == 2 and torch.get_num_threads() == 2  # left alone
