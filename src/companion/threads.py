r"""How many CPU threads PyTorch should use: the CPUs really ours, fewer while others keep them busy.

PyTorch starts one intra-op thread per core it sees, and its OpenMP threads spin while they wait
for each other. On a machine whose cores are busy with another process (a second notebook, a
class sharing one JupyterHub server), every parallel matrix product then waits for a thread that
the operating system has handed to someone else, and a run can become ten times slower. Two facts
fix most of it:

* the CPUs a process may use are fewer than `os.cpu_count()` when its affinity is restricted
  (`taskset`, `docker --cpuset-cpus`) or a cgroup CPU quota caps it (containers, JupyterHub's
  `cpu_limit`), and PyTorch sees neither the quota nor, in some builds, the affinity;
* while other tasks are runnable, using fewer threads than cores keeps each of ours on a core.

`ThreadPolicy` applies both: threads = the CPUs available, minus the runnable tasks that are not
ours (read from /proc/stat and /proc/self/task, smoothed over a few samples), at least one. The
package applies it when it is imported and re-checks it at most every `interval` seconds inside
its long loops (training, generation). Override it with the environment variable
``COMPANION_THREADS``: a number fixes the thread count, ``torch`` leaves PyTorch's own choice;
or set ``OMP_NUM_THREADS`` (which PyTorch reads itself, and which then wins), or call
`torch.set_num_threads` yourself, after which the policy leaves the count alone.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from pathlib import Path

import torch

__all__ = ["ThreadPolicy", "available_cpus", "cgroup_cpu_limit", "other_runnable_tasks", "policy"]

ENV = "COMPANION_THREADS"


def _cgroup_paths(root: Path, proc_cgroup: Path) -> tuple[list[Path], list[Path]]:
    """Candidate cgroup v2 (cpu.max) and v1 (cpu.cfs_quota_us) folders of this process."""
    v2, v1 = [], []
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        rel = rel.lstrip("/")
        if controllers == "":
            v2 += [root / rel, root / "unified" / rel, root]
        elif "cpu" in controllers.split(","):
            v1 += [root / controllers / rel, root / "cpu" / rel, root / "cpu,cpuacct" / rel, root / "cpu"]
    return v2, v1


def cgroup_cpu_limit(
    root: str | Path = "/sys/fs/cgroup", proc_cgroup: str | Path = "/proc/self/cgroup"
) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (quota / period), or None when there is none."""
    v2, v1 = _cgroup_paths(Path(root), Path(proc_cgroup))
    for folder in v2:
        f = folder / "cpu.max"
        if f.is_file():
            quota, _, period = f.read_text().strip().partition(" ")
            if quota != "max" and period:
                return int(quota) / int(period)
            return None
    for folder in v1:
        q, p = folder / "cpu.cfs_quota_us", folder / "cpu.cfs_period_us"
        if q.is_file() and p.is_file():
            quota, period = int(q.read_text()), int(p.read_text())
            return quota / period if quota > 0 and period > 0 else None
    return None


def available_cpus(root: str | Path = "/sys/fs/cgroup", proc_cgroup: str | Path = "/proc/self/cgroup") -> int:
    """CPUs this process may really use: its affinity, capped by the cgroup quota (rounded up), >= 1."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root, proc_cgroup)
    if limit is not None:
        n = min(n, max(1, math.ceil(limit - 1e-9)))
    return max(1, n)


def _runnable_in(task_stat_dir: Path) -> int:
    """Threads of one process in state R (running or waiting for a CPU)."""
    count = 0
    for task in task_stat_dir.iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        if stat[stat.rindex(")") + 2] == "R":  # the state follows the command name in parentheses
            count += 1
    return count


def other_runnable_tasks(proc: str | Path = "/proc") -> int | None:
    """Runnable tasks on the machine that are not threads of this process (None where unknown)."""
    proc = Path(proc)
    try:
        running = next(
            int(line.split()[1])
            for line in (proc / "stat").read_text().splitlines()
            if line.startswith("procs_running")
        )
        ours = _runnable_in(proc / "self" / "task")
    except (OSError, StopIteration, ValueError):
        return None
    return max(0, running - ours)


class ThreadPolicy:
    """Sets torch's intra-op threads to the CPUs available minus the others' runnable tasks (>= 1)."""

    def __init__(self, interval: float = 0.5, samples: int = 3):
        self.interval = interval
        self.recent: deque[int] = deque(maxlen=samples)
        self.cpus = available_cpus()
        self.fixed: int | None = None  # a thread count the user chose
        self.enabled = True
        self.last_set: int | None = None
        self._next_check = 0.0
        setting = os.environ.get(ENV, "").strip().lower()
        if setting and setting != "torch" and (not setting.isdigit() or int(setting) < 1):
            raise ValueError(f"{ENV} must be a positive integer or 'torch', got {setting!r}")
        if os.environ.get("OMP_NUM_THREADS") or setting == "torch":
            # OpenMP's own variable is what PyTorch itself reads: set for a process, it is the most
            # specific choice there is (a parent's COMPANION_THREADS must not override it)
            self.enabled = False
        elif setting:
            self.fixed = int(setting)

    def fix(self, n_threads: int | None) -> None:
        """Use exactly n_threads from now on (None: adapt again)."""
        if n_threads is not None and (isinstance(n_threads, bool) or not isinstance(n_threads, int) or n_threads < 1):
            raise ValueError(f"the thread count must be a positive integer, got {n_threads!r}")
        self.fixed, self.enabled = n_threads, True
        self.check(force=True)

    def busy(self) -> int:
        """The smoothed number of other runnable tasks: the lower median of the recent samples."""
        if not self.recent:
            return 0
        return sorted(self.recent)[(len(self.recent) - 1) // 2]

    def sample(self, n: int, spacing: float = 0.01) -> None:
        """Take n samples of the other runnable tasks, `spacing` seconds apart."""
        for i in range(n):
            others = other_runnable_tasks()
            if others is not None:
                self.recent.append(others)
            if i < n - 1:
                time.sleep(spacing)

    def choose(self) -> int:
        """The thread count the policy wants now."""
        if self.fixed is not None:
            return self.fixed
        return max(1, min(self.cpus, self.cpus - self.busy()))

    def check(self, force: bool = False) -> int:
        """Sample the machine (at most every `interval` s unless forced) and set torch's threads."""
        current = torch.get_num_threads()
        if not self.enabled:
            return current
        if self.fixed is not None:
            if current != self.fixed:
                torch.set_num_threads(self.fixed)
            self.last_set = self.fixed
            return self.fixed
        if self.last_set is not None and current != self.last_set:
            return current  # someone called torch.set_num_threads: leave their choice alone
        now = time.monotonic()
        if not force and now < self._next_check:
            return current
        self._next_check = now + self.interval
        self.sample(self.recent.maxlen if force else 1)  # a fresh start needs several samples
        want = self.choose()
        if want != current:
            torch.set_num_threads(want)
        self.last_set = want
        return want

    def describe(self) -> str | None:
        """One line for a progress bar when other tasks are using the CPUs, else None."""
        if not self.enabled or self.fixed is not None or self.busy() == 0:
            return None
        others, n = self.busy(), torch.get_num_threads()
        return (
            f"CPU busy: {others} other task{'s' * (others > 1)} running on {self.cpus} CPU{'s' * (self.cpus > 1)}, "
            f"so this run uses {n} thread{'s' * (n > 1)} and is slower than the book's timings; "
            "close other notebooks or programs to speed it up (FAQ: why is my notebook slower?)"
        )


policy = ThreadPolicy()
"""The package's policy, applied when `companion` is imported (see the module docstring to override it)."""
