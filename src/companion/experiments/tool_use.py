"""Tool use, measured on arithmetic: a small model taught to call a calculator against one taught to answer.

Toolformer (Schick et al. 2023, arXiv:2302.04761) taught a language model to write API calls into its text and
to go on with the call's result; ReAct (Yao et al. 2022, arXiv:2210.03629) interleaves reasoning with such
actions. This experiment isolates the simplest case. Two models of the same shape (`companion.nn.Llama`, the same
initial weights), trained for the same steps on the same questions, differ only in the reply they are taught:

* **direct**: the answer itself, ``What is 23+58?`` -> ``81``;
* **tool**: a calculator call, ``What is 23+58?`` -> ``<calc>23+58</calc>``. The program, not the model,
  evaluates the call (`calculator`: integers joined by + and -, nothing else is run) and its result is the
  answer. A reply that is not a well-formed call is taken as a direct answer.

The questions are the add and sub families of `companion.posttraining.tasks`, in all their wordings (``Add 23
and 58.``, ``Subtract 5 from 17.``, ...), rendered with the chat template (`ChatTokenizer`) and trained with the
answer-only SFT loss. Every training answer lies between 0 and 99: sums of at most 99 and differences that are
not negative (operands 0..99). Two tests, drawn first, each of distinct prompts:

* **in_range**: the same kind of question, on operand pairs that occur in no training question, in any wording
  or order;
* **out_of_range**: sums of 100 to 198 and negative differences (operands still 0..99): results of a length or
  a sign no training answer had.

Training questions are redrawn while they contain a test prompt (``13 plus 4 =`` contains ``3 plus 4 =``), so
`tasks.contamination(train, tests)` is empty (asserted). Replies are greedy. Accuracy has its binomial standard
error; the two models are compared on the same test questions with McNemar's exact test, per seed and pooled
over the seeds (the seeds' tests are independent draws), and over seeds as mean +- standard error.

    python -m companion.experiments.tool_use --threads 1 --out src/companion/results/tool_use.json  # ~4.5 min
    python -m companion.experiments.tool_use --preset notebook       # one seed, ~30 s on one thread
    python -m companion.experiments.tool_use --preset tiny           # seconds; writes ./tool_use_tiny.json
"""

from __future__ import annotations

import copy
import random
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from companion.analysis.metrics import binomial_se, mcnemar_exact, mcnemar_p, mean_se
from companion.experiments import machine, read_result, run_command, utc_now
from companion.experiments.posttraining_eval import decode_replies
from companion.nn import Llama, LlamaConfig
from companion.posttraining.chat import ChatTokenizer, collate_sft, sft_example, sft_loss
from companion.posttraining.tasks import (
    ALPHABET,
    TEMPLATES,
    Task,
    check,
    contamination,
    documents_containing,
    normalize,
)
from companion.training.finetune import FinetuneConfig, fit
from companion.utils import cpu_info, set_seed

__all__ = [
    "MODES",
    "PRESETS",
    "TESTS",
    "calculator",
    "draw_problem",
    "evaluate",
    "load_result",
    "make_data",
    "run",
    "run_seed",
    "target",
    "tool_answer",
    "train_model",
]

NAME = "tool_use"
FORMAT = "companion-tool-use"
MODES = ("direct", "tool")
TESTS = ("in_range", "out_of_range")
ARITH_TEMPLATES = tuple(t for t in TEMPLATES if TEMPLATES[t].family in ("add", "sub"))
CALL = re.compile(r"<calc>(.*)</calc>")
_EXPRESSION = re.compile(r"-?[0-9]+(?:[+-][0-9]+)*")

FULL: dict[str, Any] = {
    "seeds": [0, 1, 2],
    "model": {"n_layers": 2, "d_model": 64, "n_heads": 4, "block_size": 64},
    "data": {"n_train": 20_000, "n_test": 400},
    "train": {"steps": 1000, "batch_size": 32, "lr": 3e-3, "warmup_steps": 100, "weight_decay": 0.01},
    "eval": {"max_new_tokens": 24, "examples": 4},
}


def _merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of `base` with the sections of `overrides` updated key by key."""
    out = copy.deepcopy(base)
    for section, values in overrides.items():
        out[section] = {**out[section], **values} if isinstance(values, dict) else copy.deepcopy(values)
    return out


PRESETS: dict[str, dict[str, Any]] = {
    "full": FULL,
    "notebook": _merged(FULL, {"seeds": [0], "data": {"n_train": 8000, "n_test": 200}, "train": {"steps": 300}}),
    "tiny": _merged(
        FULL,
        {
            "seeds": [0, 1],
            "model": {"n_layers": 1, "d_model": 32, "n_heads": 2},
            "data": {"n_train": 300, "n_test": 24},
            "train": {"steps": 12, "batch_size": 16, "warmup_steps": 2},
            "eval": {"max_new_tokens": 20, "examples": 2},
        },
    ),
}


# ----------------------------------------------------------------------------- the calculator


def calculator(expression: str) -> int:
    """Evaluate integers joined by + and - ("347+589", "-3-4+10"); anything else raises ValueError (no eval)."""
    if not isinstance(expression, str) or not _EXPRESSION.fullmatch(expression):
        raise ValueError(f"the calculator takes integers joined by + and -, got {expression!r}")
    terms = re.findall(r"[+-]?[0-9]+", expression)  # "-3-4+10" -> ["-3", "-4", "+10"]
    return sum(int(t) for t in terms)


def tool_answer(reply: str) -> str:
    """The answer a reply gives: the calculator's result if it is one call ``<calc>...</calc>``, else the reply."""
    m = CALL.fullmatch(reply.strip())
    if m is None:
        return reply
    try:
        return str(calculator(m.group(1)))
    except ValueError:
        return reply  # a malformed call answers nothing: it is scored as it stands (and is wrong)


# ----------------------------------------------------------------------------- the questions


def draw_problem(rng: random.Random, in_range: bool) -> tuple[Task, str]:
    """(a Task of the add or sub family in a random wording, its calculator expression), in or out of range."""
    template = TEMPLATES[rng.choice(ARITH_TEMPLATES)]
    while True:
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        inside = a + b <= 99 if template.family == "add" else b <= a
        if inside == in_range:
            break
    op, result = ("+", a + b) if template.family == "add" else ("-", a - b)
    return Task(template.family, template.id, template.text.format(a=a, b=b), str(result)), f"{a}{op}{b}"


def _distinct(n: int, rng: random.Random, in_range: bool) -> list[tuple[Task, str]]:
    """n problems with distinct expressions (so distinct prompts), in or out of range."""
    out, seen = [], set()
    while len(out) < n:
        task, expr = draw_problem(rng, in_range)
        if expr not in seen:
            seen.add(expr)
            out.append((task, expr))
    return out


def make_data(n_train: int, n_test: int, seed: int) -> dict[str, list[tuple[Task, str]]]:
    """The tests (drawn first) and a training set that shares no operand pair with them and contains no test prompt."""
    if n_train < 1 or not 1 <= n_test <= 2000:
        raise ValueError(f"need n_train >= 1 and 1 <= n_test <= 2000, got {n_train}, {n_test}")
    rng = random.Random(seed)
    tests = {"in_range": _distinct(n_test, rng, True), "out_of_range": _distinct(n_test, rng, False)}
    held = {expr for test in tests.values() for _, expr in test}
    held |= {"+".join(e.split("+")[::-1]) for e in held if "+" in e}  # nor 4+3 when 3+4 is tested
    needles = [normalize(t.prompt) for test in tests.values() for t, _ in test]
    train: list[tuple[Task, str]] = []
    while len(train) < n_train:
        batch = [draw_problem(rng, True) for _ in range(n_train - len(train))]
        batch = [p for p in batch if p[1] not in held]
        dirty = documents_containing([normalize(t.prompt) for t, _ in batch], needles)
        train += [p for i, p in enumerate(batch) if i not in dirty]
    leaked = contamination([t for t, _ in train], [t for test in tests.values() for t, _ in test])
    assert not leaked, f"test prompts inside training prompts: {leaked[:3]}"
    return {"train": train, **tests}


def target(problem: tuple[Task, str], mode: str) -> str:
    """The reply a model is taught: the answer (direct) or the calculator call (tool)."""
    task, expr = problem
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; modes: {', '.join(MODES)}")
    return task.answer if mode == "direct" else f"<calc>{expr}</calc>"


# ----------------------------------------------------------------------------- training and evaluation


def _curve(values: Sequence[float], points: int = 40) -> list[float]:
    """`values` as the means of about `points` consecutive windows."""
    width = max(1, -(-len(values) // points))
    return [round(sum(values[i : i + width]) / len(values[i : i + width]), 4) for i in range(0, len(values), width)]


def train_model(
    problems: Sequence[tuple[Task, str]], mode: str, preset: dict[str, Any], seed: int, tokenizer: ChatTokenizer
) -> tuple[Llama, list[float]]:
    """A fresh Llama (initial weights set by `seed`) trained with the answer-only SFT loss on `mode`'s replies."""
    set_seed(seed)
    m = preset["model"]
    model = Llama(
        LlamaConfig(
            vocab_size=tokenizer.vocab_size,
            block_size=m["block_size"],
            n_layers=m["n_layers"],
            n_heads=m["n_heads"],
            d_model=m["d_model"],
        )
    )
    examples = [
        sft_example(
            tokenizer, [{"role": "user", "content": p[0].prompt}, {"role": "assistant", "content": target(p, mode)}]
        )
        for p in problems
    ]

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        x, y = collate_sft([examples[i] for i in idx.tolist()], tokenizer.end_id, m["block_size"])  # (B, T) each
        return sft_loss(model(x).logits, y)

    tr = preset["train"]
    recipe = FinetuneConfig(
        steps=tr["steps"],
        batch_size=tr["batch_size"],
        lr=tr["lr"],
        weight_decay=tr["weight_decay"],
        warmup_steps=tr["warmup_steps"],
        grad_clip=1.0,
        seed=seed,
    )
    return model, fit(model, batch_loss, len(examples), recipe)


def evaluate(
    model: Llama, tokenizer: ChatTokenizer, problems: Sequence[tuple[Task, str]], preset: dict[str, Any]
) -> tuple[dict[str, Any], list[bool], list[str]]:
    """Greedy replies to `problems`: (accuracy record with examples, per-question correct, the replies)."""
    tasks = [t for t, _ in problems]
    replies, _ = decode_replies(model, tokenizer, [t.prompt for t in tasks], preset["eval"]["max_new_tokens"])
    flat = [r[0] for r in replies]
    answers = [tool_answer(r) for r in flat]
    correct = [check(t, a) for t, a in zip(tasks, answers)]
    n, c = len(tasks), sum(correct)
    by_family = {fam: [k for t, k in zip(tasks, correct) if t.family == fam] for fam in ("add", "sub")}
    record = {
        "accuracy": round(c / n, 4),
        "se": round(binomial_se(c / n, n), 4),
        "n": n,
        "correct": c,
        "per_family": {fam: round(sum(ks) / len(ks), 4) for fam, ks in by_family.items() if ks},
        "calls": round(sum(CALL.fullmatch(r.strip()) is not None for r in flat) / n, 4),
        "examples": [
            {"prompt": t.prompt, "answer": t.answer, "reply": r}
            for t, r in zip(tasks[: preset["eval"]["examples"]], flat)
        ],
    }
    return record, correct, flat


def run_seed(preset: dict[str, Any], seed: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    """One seed: the data, both models trained and tested, and their paired comparison on each test."""
    data = make_data(preset["data"]["n_train"], preset["data"]["n_test"], seed)
    tokenizer = ChatTokenizer.from_alphabet(ALPHABET)
    record: dict[str, Any] = {"seed": seed, "models": {}, "paired": {}}
    correct: dict[str, dict[str, list[bool]]] = {}
    for mode in MODES:
        t0 = time.perf_counter()
        model, losses = train_model(data["train"], mode, preset, seed, tokenizer)
        train_s = time.perf_counter() - t0
        tests, correct[mode] = {}, {}
        for name in TESTS:
            tests[name], correct[mode][name], _ = evaluate(model, tokenizer, data[name], preset)
        record["models"][mode] = {
            "loss_curve": _curve(losses),
            "final_loss": round(sum(losses[-20:]) / len(losses[-20:]), 4),
            "train_seconds": round(train_s, 1),
            "tests": tests,
        }
        log(
            f"seed {seed} {mode:6s}: "
            + ", ".join(f"{name} {tests[name]['accuracy']:.3f}" for name in TESTS)
            + f" ({train_s:.0f} s training)"
        )
    for name in TESTS:
        test = mcnemar_exact(correct["tool"][name], correct["direct"][name])  # b: tool right only, c: direct only
        acc = {mode: record["models"][mode]["tests"][name]["accuracy"] for mode in MODES}
        record["paired"][name] = {"diff": round(acc["tool"] - acc["direct"], 4), **test}
    return record


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per mode and test: mean +- SE over seeds and the pooled accuracy; per test: the pooled McNemar test."""
    summary: dict[str, Any] = {"models": {}, "paired": {}}
    for mode in MODES:
        summary["models"][mode] = {}
        for name in TESTS:
            recs = [r["models"][mode]["tests"][name] for r in runs]
            mean, se = mean_se([x["accuracy"] for x in recs])
            n, c = sum(x["n"] for x in recs), sum(x["correct"] for x in recs)
            summary["models"][mode][name] = {
                "mean": round(mean, 4),
                "se_seeds": round(se, 4),
                "pooled": round(c / n, 4),
                "pooled_se": round(binomial_se(c / n, n), 4),
                "n": n,
            }
    for name in TESTS:
        b, c = sum(r["paired"][name]["b"] for r in runs), sum(r["paired"][name]["c"] for r in runs)
        diffs = [r["paired"][name]["diff"] for r in runs]
        summary["paired"][name] = {
            "mean_diff": round(sum(diffs) / len(diffs), 4),
            "min_diff": min(diffs),
            "b": b,
            "c": c,
            "p": mcnemar_p(b, c),
        }
    return summary


def check_preset(preset: dict[str, Any]) -> None:
    """Raise ValueError unless the preset has FULL's sections and settings and distinct seeds >= 0."""
    for section, values in FULL.items():
        if isinstance(values, dict) and set(preset.get(section, {})) != set(values):
            raise ValueError(f"preset section {section!r} must have exactly the settings {sorted(values)}")
    seeds = preset.get("seeds")
    if not seeds or len(set(seeds)) != len(seeds) or any(not isinstance(s, int) or s < 0 for s in seeds):
        raise ValueError(f"seeds must be distinct integers >= 0, at least one, got {seeds}")


def run(preset: dict[str, Any], verbose: bool = False) -> dict[str, Any]:
    """Every seed of `preset`; the JSON-ready result with its summary and the record of the machine."""
    check_preset(preset)
    log = (lambda s: print(s, flush=True)) if verbose else (lambda s: None)
    wall, cpu = time.perf_counter(), time.process_time()
    runs = [run_seed(preset, seed, log) for seed in preset["seeds"]]
    return {
        "format": FORMAT,
        "version": 1,
        "preset": copy.deepcopy(preset),
        "seeds": list(preset["seeds"]),
        "command": None,  # the command line, when run from it
        "modes": list(MODES),
        "tests": list(TESTS),
        "runs": runs,
        "summary": summarize(runs),
        "metadata": {
            "date_utc": utc_now(),
            **machine(),
            "cpu": cpu_info(),
            "threads": torch.get_num_threads(),
            "wall_seconds": round(time.perf_counter() - wall, 1),
            "cpu_seconds": round(time.process_time() - cpu, 1),
        },
    }


def load_result(path: str | None = None) -> dict[str, Any]:
    """Read a JSON written by this script (default: the committed full run)."""
    return read_result(path, NAME, FORMAT)


def main(argv: list[str] | None = None) -> int:
    """Command line: --preset (full, notebook, tiny), --out, --threads, --quiet."""
    return run_command("tool_use", NAME, __doc__.split("\n")[0], PRESETS, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
