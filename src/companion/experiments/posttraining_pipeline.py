"""Chapter 10's pipeline for one seed (``companion.experiments.posttraining``): one method per stage.

`SeedRun(preset, seed).run()` draws the data, pre-trains the base model, fine-tunes it (SFT, the unmasked and the
LoRA ablations), runs DPO for every beta, GRPO with the exact checker, the reward-hacking pair (a flawed reward and
its fix) and test-time compute, evaluating after every stage; it returns the seed's JSON record. Each stage starts
from a deep copy of the model it builds on, so no stage changes another's starting point.

Besides the accuracies, the record keeps for every compared pair of stages the *paired* difference on this
seed's test items and its standard error over the items, sd(c_b - c_a) / sqrt(n) with c the per-item 0/1
correctness: how much of a difference the test set's own sampling error could produce.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from companion.experiments.posttraining_data import (
    check_pretraining,
    experiment_split,
    pretraining_documents,
    split_counts,
)
from companion.experiments.posttraining_eval import accuracy_against_k, decode_replies, evaluate, sampled_kl
from companion.experiments.posttraining_stages import (
    preference_pairs,
    pretrain,
    recall_reward,
    supervised_finetune,
    train_dpo,
    train_grpo,
)
from companion.inference.generation import generate
from companion.nn import Llama, LlamaConfig
from companion.posttraining.chat import ChatTokenizer
from companion.posttraining.lora import adam_state_bytes, apply_lora, count_trainable, merge_lora
from companion.posttraining.tasks import ALPHABET, contamination, reward

__all__ = ["CHUNK_CHARS", "SeedRun", "Stopwatch", "item_paired_difference", "raw_continuations"]

CHUNK_CHARS = 2000  # Shakespeare is cut into pre-training documents of this many characters


class Stopwatch:
    """Wall-clock and CPU seconds of named parts of a run."""

    def __init__(self) -> None:
        self.seconds: dict[str, dict[str, float]] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        """Time the `with` block under `name`."""
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        self.seconds[name] = {"wall": round(time.perf_counter() - wall, 2), "cpu": round(time.process_time() - cpu, 2)}


def raw_continuations(model: Llama, tokenizer: ChatTokenizer, prompts: list[str], tokens: int) -> list[dict]:
    """Greedy continuations of prompts given as plain text (no chat template): what a base model does with them."""
    out = []
    for prompt in prompts:
        ids = generate(model, tokenizer.encode(prompt), tokens, temperature=0)  # (len(prompt) + tokens,)
        out.append({"prompt": prompt, "continuation": tokenizer.decode(ids[len(prompt) :].tolist())})
    return out


def item_paired_difference(before: list[bool], after: list[bool]) -> dict[str, float]:
    """Accuracy difference after - before on the same items, and its standard error over the items."""
    if len(before) != len(after) or len(before) < 2:
        raise ValueError(f"need the same >= 2 items on both sides, got {len(before)} and {len(after)}")
    d = [float(b) - float(a) for a, b in zip(before, after)]
    mean = sum(d) / len(d)
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1))
    return {"difference": round(mean, 4), "se_items": round(sd / math.sqrt(len(d)), 4)}


class SeedRun:
    """The pipeline for one seed; `run()` returns its record."""

    def __init__(self, preset: dict[str, Any], seed: int, log: Callable[[str], None] = lambda s: None) -> None:
        self.p, self.seed, self.log = preset, seed, log
        self.tok = ChatTokenizer.from_alphabet(ALPHABET)
        self.clock = Stopwatch()
        self.record: dict[str, Any] = {"seed": seed}
        self.stages: dict[str, Any] = {}
        self.correct: dict[str, dict[str, list[bool]]] = {}

    def run(self, comparisons: tuple[tuple[str, str], ...] = ()) -> dict[str, Any]:
        """Every stage in order; the record, with the item-level paired differences of `comparisons`."""
        base = self.pretrain(self.data())
        sft = self.supervised(base)
        del base
        sft.requires_grad_(False)  # from here on the frozen reference of DPO and GRPO
        self.dpo(sft)
        rl = self.reinforce(sft)
        self.test_time(rl)
        self.record["stages"] = self.stages
        self.record["paired"] = {
            f"{a}->{b}": {t: item_paired_difference(self.correct[a][t], self.correct[b][t]) for t in self.tests}
            for a, b in comparisons
        }
        self.record["timings"] = self.clock.seconds
        return self.record

    def measure(self, name: str, model: Llama) -> None:
        """Greedy evaluation of `model` on both tests, stored as stage `name`."""
        ev = self.p["eval"]
        with self.clock(f"{name}_eval"):
            self.stages[name], self.correct[name] = evaluate(
                model, self.tok, self.tests, ev["max_new_tokens"], ev["examples"]
            )
        s = self.stages[name]
        self.log(
            f"seed {self.seed} {name:>10}: seen {s['seen']['accuracy']:.3f}, held-out {s['held_out']['accuracy']:.3f}"
        )

    def data(self) -> list[int]:
        """The split, the pre-training corpus and its checks; returns the pre-training token stream."""
        d = self.p["data"]
        with self.clock("data"):
            self.split = experiment_split(d["n_train"], d["n_val"], d["n_test"], self.seed)
            self.tests = {"seen": self.split.test_seen, "held_out": self.split.test_held_out}
            docs, corpus = pretraining_documents(d["shakespeare_chars"], d["web_chars"], CHUNK_CHARS, self.seed)
            stream = self.tok.encode(" ".join(docs))
            every_test = self.split.test_seen + self.split.test_held_out
            self.record["contamination"] = {
                "pretraining_vs_tests": check_pretraining(docs, stream, self.tok, every_test),
                "sft_train_vs_tests": len(contamination(self.split.train, every_test)),
            }
        self.record["data"] = split_counts(self.split) | corpus
        return stream

    def pretrain(self, stream: list[int]) -> Llama:
        """Stage 1: the base model, its accuracy (chat prompts) and its continuations of plain-text prompts."""
        torch.manual_seed(self.seed)
        base = Llama(LlamaConfig(vocab_size=self.tok.vocab_size, **self.p["model"]))
        cfg = self.p["pretrain"] | {"block_size": self.p["model"]["block_size"]}
        with self.clock("pretrain"):
            self.record["pretrain"] = pretrain(base, torch.tensor(stream), cfg, self.seed)
        self.measure("base", base)
        ev = self.p["eval"]
        shown = ["What is 3+4?"] + [t.prompt for t in self.split.test_held_out[: ev["examples"]]]
        self.record["base_continuations"] = raw_continuations(base, self.tok, shown, ev["continuation_tokens"])
        return base

    def _sft(self, name: str, model: Llama, cfg: dict[str, Any], mask_prompt: bool) -> Llama:
        """One SFT run of `model` in place, recorded and timed as `name`."""
        with self.clock(name):
            self.record[name] = supervised_finetune(
                model, self.tok, self.split.train, self.split.val, cfg, self.seed, mask_prompt
            )
        return model

    def supervised(self, base: Llama) -> Llama:
        """Stage 2: SFT (answer-only loss), its unmasked and LoRA ablations; returns the SFT model."""
        sft = self._sft("sft", copy.deepcopy(base), self.p["sft"], True)
        self.measure("sft", sft)
        self.measure("sft_nomask", self._sft("sft_nomask", copy.deepcopy(base), self.p["sft"], False))
        lo = self.p["lora"]
        lora = apply_lora(copy.deepcopy(base), lo["targets"], r=lo["r"], alpha=lo["alpha"])
        counts = {"full": count_trainable(base) + (adam_state_bytes(base),)}
        counts["lora"] = count_trainable(lora) + (adam_state_bytes(lora),)
        self._sft("sft_lora", lora, self.p["sft"] | {"lr": lo["lr"]}, True)
        self.measure("sft_lora", merge_lora(lora))
        self.record["lora"] = {k: dict(zip(("trainable", "total", "adam_state_bytes"), c)) for k, c in counts.items()}
        self.record["lora"] |= {"r": lo["r"], "alpha": lo["alpha"], "targets": list(lo["targets"])}
        return sft

    def _kl(self, policy: Llama, reference: Llama) -> dict[str, Any]:
        """Sampled KL(policy || reference) of whole replies on the held-out prompts."""
        prompts = [t.prompt for t in self.split.test_held_out]
        return sampled_kl(policy, reference, self.tok, prompts, self.p["eval"]["max_new_tokens"], self.seed)

    def _sweep(
        self, sft: Llama, method: str, key: str, values: list[float], train_one: Callable[[Llama, float], dict]
    ) -> tuple[list[dict[str, Any]], dict[float, Llama]]:
        """One run of `method` from a copy of `sft` per value of the setting `key`, each scored (greedy) on both
        tests and on the validation tasks, with its sampled KL to `sft`; the runs' records and their models."""
        max_new = self.p["eval"]["max_new_tokens"]
        runs, models = [], {}
        for value in values:
            policy = copy.deepcopy(sft).requires_grad_(True)
            with self.clock(f"{method}_{key}_{value:g}"):
                entry = {key: value} | train_one(policy, value)
                scores, _ = evaluate(policy, self.tok, self.tests | {"val": self.split.val}, max_new, 0)
                entry |= {k: {"accuracy": v["accuracy"], "se": v["se"], "n": v["n"]} for k, v in scores.items()}
                entry["kl"] = self._kl(policy, sft)
            runs.append(entry)
            models[value] = policy
            held, val = entry["held_out"]["accuracy"], entry["val"]["accuracy"]
            self.log(f"seed {self.seed} {method} {key} {value:g}: held-out {held:.3f}, validation {val:.3f}")
        return runs, models

    def dpo(self, sft: Llama) -> None:
        """Stage 3: DPO from `sft` for every beta; the summary's beta is the best on the validation tasks."""
        cfg, max_new = self.p["dpo"], self.p["eval"]["max_new_tokens"]
        with self.clock("dpo_pairs"):
            distinct = list({t.prompt: t for t in self.split.train}.values())[: cfg["n_pairs"]]
            pairs, sources = preference_pairs(sft, self.tok, distinct, max_new, self.seed)
        runs, models = self._sweep(
            sft,
            "dpo",
            "beta",
            cfg["betas"],
            lambda policy, beta: train_dpo(policy, sft, self.tok, pairs, beta, cfg, self.seed),
        )
        # the best validation accuracy; a tie goes to the larger beta, the policy held closer to the reference
        chosen = max(runs, key=lambda e: (e["val"]["accuracy"], e["beta"]))["beta"]
        self.record["dpo"] = {"pairs": {"n": len(pairs), "rejected_from": sources}, "betas": runs}
        self.record["dpo"]["selected_beta"] = chosen
        self.measure("dpo", models[chosen])

    def reinforce(self, sft: Llama) -> Llama:
        """Stage 4: GRPO from `sft` with the exact checker, one run per learning rate, the one kept the best on the
        validation tasks; then the flawed reward and its fix. Returns the rl model."""
        cfg = self.p["grpo"]
        runs, models = self._sweep(
            sft,
            "grpo",
            "lr",
            cfg["lrs"],
            lambda policy, lr: train_grpo(policy, sft, self.tok, self.split.train, reward, cfg | {"lr": lr}, self.seed),
        )
        # the best validation accuracy; a tie goes to the smaller learning rate, the policy moved least
        chosen = max(runs, key=lambda e: (e["val"]["accuracy"], -e["lr"]))
        self.record["grpo"] = {"lrs": runs, "selected_lr": chosen["lr"], "steps": chosen["steps"]}
        self.record["grpo"] |= {"curves": chosen["curves"], "kl": chosen["kl"]}
        rl = models[chosen["lr"]]
        self.measure("rl", rl)
        cfg, curves = self.p["grpo"] | self.p["hack"], {}  # the hack section sets its own lr
        for name, reward_fn in (("rl_hack", recall_reward), ("rl_fix", reward)):
            policy = copy.deepcopy(sft).requires_grad_(True)
            with self.clock(name):
                curves[name] = train_grpo(policy, sft, self.tok, self.split.train, reward_fn, cfg, self.seed)["curves"]
            self.measure(name, policy)
        self.record["reward_hacking"] = {
            "flawed_reward": "character recall: the share of the answer's characters found in the reply",
            "fix": "the exact checker (tasks.reward), the same settings, prompts and sampling seeds",
            "settings": cfg,
            "curves": curves["rl_hack"],
            "fix_curves": curves["rl_fix"],
        }
        return rl

    def test_time(self, model: Llama) -> None:
        """Stage 5: majority voting and pass@k over k sampled replies of `model` on the held-out test."""
        cfg, held = self.p["test_time"], self.split.test_held_out
        with self.clock("test_time"):
            samples, _ = decode_replies(
                model,
                self.tok,
                [t.prompt for t in held],
                self.p["eval"]["max_new_tokens"],
                cfg["temperature"],
                max(cfg["ks"]),
                self.seed,
            )
            self.record["test_time"] = accuracy_against_k(held, samples, cfg["ks"]) | {
                "temperature": cfg["temperature"]
            }
        self.record["test_time"]["greedy"] = self.stages["rl"]["held_out"]["accuracy"]
