"""The training stages of chapter 10's experiment: pre-training, SFT (full, unmasked, LoRA), DPO and GRPO.

Each stage is a short function over the package's pieces, its settings a plain dict (a preset's section):

* `pretrain`: next-token training on the corpus stream (`companion.training.trainer.train`);
* `supervised_finetune`: the chat-rendered training tasks, loss on the answer and its <|end|>
  (`chat.sft_example(mask_prompt=True)`) or on every token (the ablation), through `training.finetune.fit`;
* `preference_pairs` and `train_dpo`: chosen = the canonical answer, rejected = the SFT model's own wrong greedy
  answer when it has one, else a wrong sample, else a plausible perturbation (`perturb`); the DPO loss against a
  frozen reference, its log-probabilities computed once;
* `train_grpo`: GRPO (the pieces of `posttraining.grpo`) with a reward on the decoded reply. A step's prompts are
  drawn from a generator seeded by (seed, step), so two runs that differ only in their reward see the same
  prompts and, at their first step, the same samples. `generate` decodes rows of equal length, so each prompt
  length is sampled and scored as its own batch and the gradients are accumulated before one optimizer step
  (as `grpo_step` does for one batch; the global gradient norm is clipped to 1).
* `recall_reward`, the flawed reward of the reward-hacking demonstration.

Every curve is kept per step (GRPO) or as means over consecutive windows of steps (`window_means`).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from companion.experiments.posttraining_eval import decode_replies
from companion.posttraining.chat import ChatTokenizer, collate_sft, sft_example, sft_loss
from companion.posttraining.grpo import (
    check_rewards,
    completion_logprobs,
    group_advantages,
    grpo_loss,
    sample_completions,
)
from companion.posttraining.preference import PreferencePair, dpo_loss, sequence_logprobs
from companion.posttraining.tasks import Task, check, reward
from companion.training.finetune import FinetuneConfig, fit
from companion.training.trainer import TrainConfig, train

__all__ = [
    "recall_reward",
    "perturb",
    "preference_pairs",
    "pretrain",
    "supervised_finetune",
    "train_dpo",
    "train_grpo",
    "window_means",
]

Reward = Callable[[Task, str], float]


def window_means(values: Sequence[float], points: int = 50) -> list[float]:
    """`values` as the means of about `points` consecutive windows of equal length (all of them if fewer)."""
    if not values:
        return []
    width = max(1, -(-len(values) // points))  # ceil(len / points)
    return [round(sum(values[i : i + width]) / len(values[i : i + width]), 5) for i in range(0, len(values), width)]


def _finetune_config(cfg: dict[str, Any], seed: int) -> FinetuneConfig:
    """`fit`'s recipe from a stage's settings: steps, batch_size, lr, warmup_steps, weight_decay (AdamW, cosine)."""
    return FinetuneConfig(
        steps=cfg["steps"],
        batch_size=cfg["batch_size"],
        lr=cfg["lr"],
        weight_decay=cfg.get("weight_decay", 0.0),
        warmup_steps=cfg["warmup_steps"],
        grad_clip=1.0,
        seed=seed,
    )


# ----------------------------------------------------------------------------- pre-training and SFT


def pretrain(model: nn.Module, stream: torch.Tensor, cfg: dict[str, Any], seed: int) -> dict[str, Any]:
    """Next-token training on the token stream (the last 5% held out for a validation loss); its losses."""
    n_val = max(len(stream) // 20, cfg["block_size"] + 2)
    recipe = TrainConfig(
        steps=cfg["steps"],
        batch_size=cfg["batch_size"],
        block_size=cfg["block_size"],
        lr=cfg["lr"],
        min_lr=cfg["min_lr"],
        warmup_steps=cfg["warmup_steps"],
        eval_interval=0,
        eval_steps=cfg.get("eval_steps", 10),
        seed=seed,
        device="cpu",
    )
    history = train(model, stream[:-n_val], stream[-n_val:], recipe, progress=False)
    return {
        "tokens_seen": cfg["steps"] * cfg["batch_size"] * cfg["block_size"],
        "loss_curve": window_means(history.train_loss),
        "val_loss_start": round(history.val_loss[0], 4),
        "val_loss_end": round(history.val_loss[-1], 4),
    }


@torch.no_grad()
def _mean_sft_loss(model: nn.Module, examples: list[tuple[list[int], list[int]]], pad_id: int) -> float:
    """The token-mean SFT loss of `examples` (a validation loss), in batches of 256."""
    total, count = 0.0, 0
    for i in range(0, len(examples), 256):
        x, y = collate_sft(examples[i : i + 256], pad_id)
        n = int((y != -100).sum())
        total += sft_loss(model(x).logits, y).item() * n
        count += n
    return total / count


def supervised_finetune(
    model: nn.Module,
    tokenizer: ChatTokenizer,
    train_tasks: Sequence[Task],
    val_tasks: Sequence[Task],
    cfg: dict[str, Any],
    seed: int,
    mask_prompt: bool = True,
) -> dict[str, Any]:
    """SFT of `model` in place on the chat-rendered tasks (answer-only loss unless mask_prompt is False)."""
    pad = tokenizer.end_id  # padded positions carry no target, so the pad id never matters
    examples = [sft_example(tokenizer, t, mask_prompt=mask_prompt) for t in train_tasks]
    val = [sft_example(tokenizer, t, mask_prompt=True) for t in val_tasks]  # always scored on the answer

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        x, y = collate_sft([examples[i] for i in idx.tolist()], pad)  # (B, T) each
        return sft_loss(model(x).logits, y)

    losses = fit(model, batch_loss, len(examples), _finetune_config(cfg, seed))
    return {
        "mask_prompt": mask_prompt,
        "loss_curve": window_means(losses),
        "final_loss": round(sum(losses[-10:]) / len(losses[-10:]), 4),
        "val_answer_loss": round(_mean_sft_loss(model, val, pad), 4),
    }


# ----------------------------------------------------------------------------- DPO


def perturb(task: Task, rng: random.Random) -> str:
    """A plausible wrong answer to `task`: off by one for a number, the other name, the word unreversed, ..."""
    a = task.answer
    if a.lstrip("-").isdigit():
        wrong = str(int(a) + rng.choice((-1, 1)) if int(a) > 0 else int(a) + 1)
    elif task.family == "fact":
        names = [w.strip(".,?") for w in task.prompt.split() if w[:1].isupper() and w.strip(".,?") != a]
        wrong = next((n for n in names if n not in ("Who", "If")), a + "s")
    elif task.family == "sort":
        digits = a.split()  # in increasing order
        if digits != digits[::-1]:
            wrong = " ".join(reversed(digits))  # the order turned round
        else:  # all equal: change the first
            wrong = " ".join([str((int(digits[0]) + 1) % 10), *digits[1:]])
    elif task.family == "reverse":
        wrong = a[::-1]  # the word as given: the reversal forgotten
    elif task.family == "upper":
        wrong = a.lower() if rng.random() < 0.5 else a[:-1] + a[-1].lower()
    else:  # a letter: another letter of the alphabet
        wrong = chr((ord(a[-1]) - 97 + rng.randint(1, 25)) % 26 + 97) if a.islower() else a + a
    if check(task, wrong):
        raise RuntimeError(f"perturb produced a right answer {wrong!r} for {task}")
    return wrong


def preference_pairs(
    model: nn.Module, tokenizer: ChatTokenizer, tasks: Sequence[Task], max_new_tokens: int, seed: int
) -> tuple[list[PreferencePair], dict[str, int]]:
    """One pair per task: chosen = its answer; rejected = the model's wrong greedy reply, else a wrong sample
    (temperature 1), else `perturb`. Also how many rejected answers came from each source."""
    prompts = [t.prompt for t in tasks]
    greedy, _ = decode_replies(model, tokenizer, prompts, max_new_tokens)
    sampled, _ = decode_replies(model, tokenizer, prompts, max_new_tokens, temperature=1.0, samples=4, seed=seed)
    rng = random.Random(seed)
    pairs, sources = [], {"greedy": 0, "sampled": 0, "perturbed": 0}
    for task, g, s in zip(tasks, greedy, sampled):
        candidates = [("greedy", g[0])] + [("sampled", r) for r in s] + [("perturbed", perturb(task, rng))]
        source, rejected = next((src, r) for src, r in candidates if _usable(tokenizer, task, r))
        sources[source] += 1
        pairs.append(PreferencePair(task.prompt, task.answer, rejected))
    return pairs, sources


def _usable(tokenizer: ChatTokenizer, task: Task, reply: str) -> bool:
    """Can `reply` be the rejected answer: non-empty, wrong, and free of the template's markers?"""
    return bool(reply.strip()) and not check(task, reply) and not any(m in reply for m in tokenizer.template.markers)


def _pair_examples(tokenizer: ChatTokenizer, pair: PreferencePair) -> list[tuple[list[int], list[int]]]:
    """The chosen and the rejected conversation as SFT examples (targets on the answer and <|end|> only)."""
    user = {"role": "user", "content": pair.prompt}
    return [
        sft_example(tokenizer, [user, {"role": "assistant", "content": answer}])
        for answer in (pair.chosen, pair.rejected)
    ]


def _pair_logps(model: nn.Module, examples: list[tuple[list[int], list[int]]], pad: int) -> torch.Tensor:
    """Summed answer log-probabilities of a list of [chosen, rejected, chosen, rejected, ...] examples -> (2B,)."""
    x, y = collate_sft(examples, pad)  # (2B, T)
    return sequence_logprobs(model(x).logits, y)


def train_dpo(
    policy: nn.Module,
    reference: nn.Module,
    tokenizer: ChatTokenizer,
    pairs: Sequence[PreferencePair],
    beta: float,
    cfg: dict[str, Any],
    seed: int,
) -> dict[str, Any]:
    """DPO of `policy` in place against the frozen `reference`; the loss curve and the final preference accuracy."""
    pad = tokenizer.end_id
    examples = [_pair_examples(tokenizer, p) for p in pairs]
    with torch.no_grad():
        ref = torch.cat(
            [_pair_logps(reference, sum(examples[i : i + 128], []), pad) for i in range(0, len(pairs), 128)]
        )
    ref = ref.view(-1, 2)  # (n_pairs, 2): chosen, rejected

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        logps = _pair_logps(policy, [e for i in idx.tolist() for e in examples[i]], pad).view(-1, 2)  # (B, 2)
        loss, _, _ = dpo_loss(logps[:, 0], logps[:, 1], ref[idx, 0], ref[idx, 1], beta)
        return loss

    losses = fit(policy, batch_loss, len(pairs), _finetune_config(cfg, seed))
    with torch.no_grad():
        pol = torch.cat([_pair_logps(policy, sum(examples[i : i + 128], []), pad) for i in range(0, len(pairs), 128)])
    margins = beta * ((pol.view(-1, 2) - ref) @ torch.tensor([1.0, -1.0]))  # (n_pairs,) implicit reward margins
    return {
        "beta": beta,
        "loss_curve": window_means(losses),
        "final_loss": round(sum(losses[-10:]) / len(losses[-10:]), 4),
        "preference_accuracy": round(float((margins > 0).float().mean()), 4),
        "mean_margin": round(float(margins.mean()), 4),
        "chosen_logp_change": round(float((pol.view(-1, 2) - ref)[:, 0].mean()), 4),
    }


# ----------------------------------------------------------------------------- GRPO


def recall_reward(task: Task, reply: str) -> float:
    """A flawed reward: the share of the answer's characters that the reply contains (counted with multiplicity),
    character-level recall, as ROUGE-1 recall is for words. Extra characters never cost, so a long reply that lists
    many digits or letters collects credit without answering."""
    need, have = Counter(task.answer), Counter(reply)
    return sum(min(n, have[ch]) for ch, n in need.items()) / len(task.answer)


def _step_prompts(tasks: Sequence[Task], n_prompts: int, seed: int, step: int) -> list[Task]:
    """The step's prompts: n_prompts distinct tasks drawn uniformly, from a generator seeded by (seed, step)."""
    rng = random.Random(seed * 1_000_003 + step)
    return rng.sample(list(tasks), min(n_prompts, len(tasks)))


def _sample_and_score(
    policy: nn.Module,
    reference: nn.Module,
    tokenizer: ChatTokenizer,
    batch: list[Task],
    reward_fn: Reward,
    cfg: dict[str, Any],
    seed: int,
    seen: dict[str, list[float]],
) -> tuple[torch.Tensor, ...]:
    """G replies to each of `batch`'s prompts (all of one token length), their rewards and advantages, and the
    sampling policy's and the reference's log-probabilities; the checker's verdicts, lengths and ends go to `seen`."""
    G = cfg["group_size"]
    prompts = torch.tensor([tokenizer.encode_prompt(t.prompt) for t in batch]).repeat_interleave(G, dim=0)  # (n G, P)
    completions, mask = sample_completions(
        policy, prompts, cfg["max_new_tokens"], cfg["temperature"], tokenizer.end_id, seed
    )  # (n G, L) each
    rewards = []
    for i, row in enumerate(completions.tolist()):
        task, reply = batch[i // G], tokenizer.decode_reply(row)
        rewards.append(reward_fn(task, reply))
        seen["accuracy"].append(reward(task, reply))
        seen["reply_chars"].append(len(reply))
        seen["ended"].append(float(tokenizer.end_id in row))
    rewards = check_rewards(torch.tensor(rewards))
    advantages = group_advantages(rewards.view(len(batch), G)).view(-1)  # (n G,)
    old = completion_logprobs(policy, prompts, completions, mask)  # (n G, L): the sampling policy's
    ref = completion_logprobs(reference, prompts, completions, mask)
    return prompts, completions, mask, rewards, advantages, old, ref


def grpo_update(
    policy: nn.Module,
    reference: nn.Module,
    optimizer: torch.optim.Optimizer,
    tokenizer: ChatTokenizer,
    batch: list[Task],
    reward_fn: Reward,
    cfg: dict[str, Any],
    seed: int,
) -> dict[str, float]:
    """One GRPO step on `batch`: each prompt length sampled and scored as its own batch (`generate` decodes
    equal-length rows), the gradients of GRPO's loss accumulated over them, each weighted by its share of the
    prompts, the global norm clipped to 1, one optimizer step. Returns the step's mean reward, checker accuracy,
    reply length, share ended, and loss."""
    by_length: dict[int, list[Task]] = {}
    for t in batch:
        by_length.setdefault(len(tokenizer.encode_prompt(t.prompt)), []).append(t)
    seen: dict[str, list[float]] = {"accuracy": [], "reply_chars": [], "ended": []}
    with torch.no_grad():
        parts = [
            _sample_and_score(policy, reference, tokenizer, group, reward_fn, cfg, seed + i, seen)
            for i, group in enumerate(by_length.values())
        ]
    optimizer.zero_grad(set_to_none=True)
    total, rewards = 0.0, []
    for prompts, completions, mask, r, advantages, old, ref in parts:
        logps = completion_logprobs(policy, prompts, completions, mask)  # (n G, L), with gradient
        share = len(r) / (len(batch) * cfg["group_size"])
        loss = grpo_loss(logps, old, ref, advantages, mask, cfg["clip_eps"], cfg["beta"]) * share
        loss.backward()
        total += loss.item()
        rewards += r.tolist()
    nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
    optimizer.step()
    means = {key: sum(v) / len(v) for key, v in seen.items()}
    return {"reward": sum(rewards) / len(rewards), **means, "loss": total}


def train_grpo(
    policy: nn.Module,
    reference: nn.Module,
    tokenizer: ChatTokenizer,
    tasks: Sequence[Task],
    reward_fn: Reward,
    cfg: dict[str, Any],
    seed: int,
    steps: int | None = None,
) -> dict[str, Any]:
    """GRPO of `policy` in place (reference frozen, KL weight cfg["beta"]); per-step curves of the reward, the
    exact checker's accuracy on the same samples, the reply length (characters), the share that ended, the loss."""
    steps = cfg["steps"] if steps is None else steps
    distinct = list({t.prompt: t for t in tasks}.values())
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=cfg["lr"], weight_decay=0.0)
    curves: dict[str, list[float]] = {"reward": [], "accuracy": [], "reply_chars": [], "ended": [], "loss": []}
    policy.train()
    for step in range(steps):
        batch = _step_prompts(distinct, cfg["prompts_per_step"], seed, step)
        out = grpo_update(
            policy, reference, optimizer, tokenizer, batch, reward_fn, cfg, seed * 1_000_003 + step * 1000
        )
        for key, value in out.items():
            curves[key].append(round(value, 5 if key == "loss" else 4))
    policy.eval()
    return {"steps": steps, "curves": curves}
