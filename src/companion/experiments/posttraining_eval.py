"""Measuring chapter 10's models: decoding replies, accuracy with its sampling error, test-time compute, KL.

Replies are decoded from the chat prompt (``<|user|>prompt<|end|><|assistant|>``) until the model emits <|end|>
or `max_new_tokens` run out (`companion.inference.generation.generate` with the KV cache). `generate` takes
rows of equal length, so prompts are grouped by their token count and each group decoded as one batch: every
reply is exactly what the model would give the prompt alone.

Accuracy is the fraction of replies `tasks.check` accepts, p = c / n; its standard error as an estimate of the
accuracy on all tasks of that kind is the binomial one, sqrt(p (1 - p) / n): the test set's own sampling error.

Test-time compute: k replies sampled per prompt. *Majority voting* (self-consistency, Wang et al. 2022) answers
with the most frequent of the k (answers compared as `check` compares them: stripped, numbers as integers; a tie
goes to the answer sampled first), with no checker. *Best-of-k with the checker* succeeds when any of the k is
right, pass@k; from n >= k samples with c right its unbiased estimate is 1 - C(n - c, k) / C(n, k) (Chen et al.
2021, arXiv:2107.03374), averaged over the prompts.

KL(pi || pi_ref) of whole replies is estimated by sampling: y ~ pi(.|x), one reply per prompt, and the mean of
log pi(y|x) - log pi_ref(y|x) over the prompts (unbiased for E_x KL; a reply cut at max_new_tokens is scored
as far as it goes).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from companion.inference.generation import generate
from companion.posttraining.chat import ChatTokenizer
from companion.posttraining.grpo import completion_logprobs, sample_completions
from companion.posttraining.tasks import FAMILIES, Task, check

__all__ = [
    "accuracy_record",
    "binomial_se",
    "canonical",
    "decode_replies",
    "evaluate",
    "length_groups",
    "majority_vote",
    "pass_at_k",
    "sampled_kl",
    "accuracy_against_k",
]

_INTEGER = re.compile(r"-?[0-9]+")


def length_groups(sequences: Sequence[Sequence[int]]) -> dict[int, list[int]]:
    """Indices of `sequences` grouped by length, lengths in increasing order."""
    groups: dict[int, list[int]] = {}
    for i, s in enumerate(sequences):
        groups.setdefault(len(s), []).append(i)
    return dict(sorted(groups.items()))


def decode_replies(
    model: nn.Module,
    tokenizer: ChatTokenizer,
    prompts: Sequence[str],
    max_new_tokens: int,
    temperature: float = 0.0,
    samples: int = 1,
    seed: int = 0,
    max_rows: int = 1024,
) -> tuple[list[list[str]], list[list[bool]]]:
    """`samples` replies to each prompt (greedy when temperature is 0) and, for each, whether it ended with <|end|>.

    Returns (replies, stopped), each a list per prompt of `samples` entries. Sampling is seeded per batch from
    `seed`, so the replies are a deterministic function of the arguments.
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    ids = [tokenizer.encode_prompt(p) for p in prompts]
    replies: list[list[str]] = [[] for _ in prompts]
    stopped: list[list[bool]] = [[] for _ in prompts]
    per_batch = max(1, max_rows // samples)
    batch_no = 0
    for length, members in length_groups(ids).items():
        for start in range(0, len(members), per_batch):
            rows = members[start : start + per_batch]
            x = torch.tensor([ids[i] for i in rows]).repeat_interleave(samples, dim=0)  # (n * samples, P)
            out = generate(model, x, max_new_tokens, temperature, seed=seed + batch_no, eos_id=tokenizer.end_id)
            batch_no += 1
            new = out[:, length:].tolist()  # (n * samples, <= max_new_tokens)
            for j, row in enumerate(new):
                replies[rows[j // samples]].append(tokenizer.decode_reply(row))
                stopped[rows[j // samples]].append(tokenizer.end_id in row)
    return replies, stopped


def binomial_se(p: float, n: int) -> float:
    """The standard error sqrt(p (1 - p) / n) of an accuracy p measured on n independent items."""
    if n < 1 or not 0.0 <= p <= 1.0:
        raise ValueError(f"need n >= 1 and p in [0, 1], got p={p}, n={n}")
    return math.sqrt(p * (1.0 - p) / n)


def accuracy_record(tasks: Sequence[Task], replies: Sequence[str], stopped: Sequence[bool]) -> dict[str, Any]:
    """Accuracy, its binomial standard error, n, per-family accuracies, mean reply length and the share that ended."""
    if len(tasks) != len(replies) or len(tasks) != len(stopped) or not tasks:
        raise ValueError(f"need one reply per task, got {len(tasks)} tasks and {len(replies)} replies")
    correct = [check(t, r) for t, r in zip(tasks, replies)]
    n = len(tasks)
    p = sum(correct) / n
    per_family = {}
    for family in FAMILIES:
        mine = [c for t, c in zip(tasks, correct) if t.family == family]
        if mine:
            per_family[family] = {"accuracy": round(sum(mine) / len(mine), 4), "n": len(mine)}
    return {
        "accuracy": round(p, 4),
        "se": round(binomial_se(p, n), 4),
        "n": n,
        "correct": sum(correct),
        "per_family": per_family,
        "mean_reply_chars": round(sum(map(len, replies)) / n, 2),
        "ended": round(sum(stopped) / n, 4),
    }


def evaluate(
    model: nn.Module, tokenizer: ChatTokenizer, tests: dict[str, Sequence[Task]], max_new_tokens: int, examples: int = 3
) -> tuple[dict[str, Any], dict[str, list[bool]]]:
    """Greedy replies to every test -> ({test: accuracy_record + a few example replies}, {test: per-item correct})."""
    record, correct = {}, {}
    for name, tasks in tests.items():
        replies, stopped = decode_replies(model, tokenizer, [t.prompt for t in tasks], max_new_tokens)
        flat, ended = [r[0] for r in replies], [s[0] for s in stopped]
        record[name] = accuracy_record(tasks, flat, ended)
        record[name]["examples"] = [
            {"prompt": t.prompt, "answer": t.answer, "reply": r} for t, r in zip(tasks[:examples], flat[:examples])
        ]
        correct[name] = [check(t, r) for t, r in zip(tasks, flat)]
    return record, correct


def canonical(reply: str) -> str:
    """The answer as `check` compares it: stripped, and an integer written without leading zeros."""
    got = reply.strip()
    return str(int(got)) if _INTEGER.fullmatch(got) else got


def majority_vote(replies: Sequence[str]) -> str:
    """The most frequent canonical answer among `replies`; a tie goes to the one that occurs first."""
    if not replies:
        raise ValueError("majority_vote needs at least one reply")
    answers = [canonical(r) for r in replies]
    counts = Counter(answers)
    best = max(counts.values())
    return next(a for a in answers if counts[a] == best)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are right: 1 - C(n - c, k) / C(n, k) (Chen et al. 2021)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def accuracy_against_k(tasks: Sequence[Task], samples: Sequence[Sequence[str]], ks: Sequence[int]) -> dict[str, Any]:
    """Majority-vote accuracy (the first k samples of each prompt) and pass@k (unbiased, from all n) for each k."""
    n = min(len(s) for s in samples)
    if not ks or max(ks) > n or min(ks) < 1:
        raise ValueError(f"every k must be in [1, {n}] (the samples per prompt), got {list(ks)}")
    majority, best_of = [], []
    for k in ks:
        votes = [check(t, majority_vote(s[:k])) for t, s in zip(tasks, samples)]
        majority.append(sum(votes) / len(tasks))
        best_of.append(sum(pass_at_k(n, sum(check(t, r) for r in s[:n]), k) for t, s in zip(tasks, samples)))
    best_of = [b / len(tasks) for b in best_of]
    return {
        "k": list(ks),
        "samples_per_prompt": n,
        "majority": [round(a, 4) for a in majority],
        "majority_se": [round(binomial_se(a, len(tasks)), 4) for a in majority],
        "pass_at_k": [round(a, 4) for a in best_of],
        "n": len(tasks),
    }


@torch.no_grad()
def sampled_kl(
    policy: nn.Module,
    reference: nn.Module,
    tokenizer: ChatTokenizer,
    prompts: Sequence[str],
    max_new_tokens: int,
    seed: int = 0,
    temperature: float = 1.0,
) -> dict[str, Any]:
    """Monte-Carlo KL(policy || reference) per reply: mean over prompts of log pi(y|x) - log pi_ref(y|x), y ~ pi."""
    ids = [tokenizer.encode_prompt(p) for p in prompts]
    ratios: list[float] = []
    for b, members in enumerate(length_groups(ids).values()):
        x = torch.tensor([ids[i] for i in members])  # (n, P)
        completion, mask = sample_completions(policy, x, max_new_tokens, temperature, tokenizer.end_id, seed + b)
        lp = completion_logprobs(policy, x, completion, mask).sum(dim=1)  # (n,)
        lr = completion_logprobs(reference, x, completion, mask).sum(dim=1)  # (n,)
        ratios += (lp - lr).tolist()
    n = len(ratios)
    mean = sum(ratios) / n
    sd = math.sqrt(sum((r - mean) ** 2 for r in ratios) / (n - 1)) if n > 1 else 0.0
    return {
        "mean": round(mean, 5),
        "se": round(sd / math.sqrt(n), 5),
        "n": n,
        "estimator": "sampled: one reply y ~ pi per prompt, mean of log pi(y|x) - log pi_ref(y|x) (nats)",
    }
