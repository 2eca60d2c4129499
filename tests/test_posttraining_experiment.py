"""Chapter 10's experiment (`python -m companion.experiments.posttraining`): the tiny preset runs end to end through
the command line and writes a complete JSON whose invariants hold; its measuring pieces are checked on their own
(binomial standard errors against scipy, pass@k against counting subsets, the paired t-test against scipy)."""

from __future__ import annotations

import itertools
import json
import math
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from scipy.stats import binom, ttest_rel

from companion.experiments import posttraining as exp
from companion.experiments.posttraining_data import (
    WEB_WORDINGS,
    check_pretraining,
    experiment_split,
    to_alphabet,
    web_documents,
)
from companion.experiments.posttraining_eval import (
    accuracy_against_k,
    accuracy_record,
    binomial_se,
    canonical,
    majority_vote,
    pass_at_k,
)
from companion.experiments.posttraining_pipeline import item_paired_difference
from companion.experiments.posttraining_report import (
    holm,
    paired_difference,
    plot_hacking,
    plot_test_time,
    stage_table,
)
from companion.experiments.posttraining_stages import perturb, recall_reward, window_means
from companion.posttraining.chat import ChatTokenizer
from companion.posttraining.tasks import (
    ALPHABET,
    FAMILIES,
    HELD_OUT_TEMPLATES,
    TEMPLATES,
    Task,
    check,
    contamination,
    sample_tasks,
)
from companion.threads import policy as thread_policy

TINY = exp.PRESETS["tiny"]
HELD_OUT_VOCABULARY = {  # a phrase of each held-out wording that the web pages use declaratively
    "add/sum": "the sum of {a} and {b}",
    "sub/eq": "{a} minus {b}",
    "compare/bigger": "bigger",
    "reverse/colon": "reverse",
    "upper/caps": "in capitals",
    "unit/eq": "{n} {big} in {small}",
    "fact/if": "if {a} is {r} than {b}",
}
PROG = "python -m companion.experiments.posttraining"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny preset run once through the command line, over a placeholder file (so --force is exercised)."""
    out = tmp_path_factory.mktemp("posttraining") / "tiny.json"
    out.write_text("placeholder")
    threads, fixed = torch.get_num_threads(), thread_policy.fixed
    try:
        assert exp.main(["--preset", "tiny", "--threads", "1", "--out", str(out), "--force", "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)
        thread_policy.fixed = fixed
    return exp.load_result(out)


# ----------------------------------------------------------------------------- the committed full run


def test_the_committed_run_is_the_full_preset_within_its_budget():
    full = exp.load_result()  # what Chapter 10 reads
    assert full["preset"] == json.loads(json.dumps(exp.PRESETS["full"])), "rerun the full preset: it has changed"
    assert full["command"].startswith(f"{PROG} --preset full ")
    assert [r["seed"] for r in full["runs"]] == full["seeds"] == exp.PRESETS["full"]["seeds"]
    meta = full["metadata"]
    assert meta["cpu_count"] == 2 and meta["threads"] * meta["processes"] >= 2  # made on two cores, both used
    assert meta["wall_seconds"] < 40 * 60, "the issue's budget: the full experiment in under 40 minutes"


# ----------------------------------------------------------------------------- the tiny run's JSON


@pytest.mark.slow
def test_the_json_has_every_field(tiny):
    assert tiny["format"] == exp.FORMAT and tiny["version"] == 1
    assert tiny["command"].startswith(f"{PROG} --preset tiny --threads 1 --out ")
    assert tiny["command"].endswith("tiny.json --force --quiet")
    assert tiny["seeds"] == TINY["seeds"] and tiny["preset"] == json.loads(json.dumps(TINY))
    meta = tiny["metadata"]
    assert meta["threads"] == 1 and meta["torch_threads"] == 1 and meta["cpu"]["cpus"] >= 1
    assert 0 < meta["wall_seconds"] < 60 and meta["cpu_seconds"] > 0 and meta["date_utc"]
    assert [r["seed"] for r in tiny["runs"]] == TINY["seeds"]
    timed = {"data", "pretrain", "sft", "sft_nomask", "sft_lora", "dpo_pairs", "rl_hack", "rl_fix", "test_time"}
    timed |= {f"{s}_eval" for s in exp.STAGES} | {f"dpo_beta_{b:g}" for b in TINY["dpo"]["betas"]}
    timed |= {f"grpo_lr_{lr:g}" for lr in TINY["grpo"]["lrs"]}
    for run in tiny["runs"]:
        assert set(run["stages"]) == set(exp.STAGES)
        assert set(run["timings"]) == timed
        assert all(t["wall"] >= 0 and t["cpu"] >= 0 for t in run["timings"].values())
        assert set(run["paired"]) == {f"{a}->{b}" for a, b in exp.COMPARISONS}
        data = run["data"]
        assert (data["test_seen"], data["test_held_out"], data["train"]) == (40, 40, 200)
        assert 0 < data["val"] <= 30 and data["shakespeare_chars"] == 20_000
        assert data["web_chars"] + data["web_documents"] >= 20_000  # pages and their separators
        assert run["pretrain"]["val_loss_end"] < run["pretrain"]["val_loss_start"]
        assert len(run["base_continuations"]) == 1 + TINY["eval"]["examples"]
        assert all(c["continuation"] for c in run["base_continuations"])  # it continues the text


@pytest.mark.slow
def test_accuracies_and_their_standard_errors(tiny):
    for run in tiny["runs"]:
        for stage in run["stages"].values():
            for test in ("seen", "held_out"):
                r = stage[test]
                assert r["n"] == TINY["data"]["n_test"] and 0 <= r["accuracy"] <= 1
                assert r["accuracy"] == round(r["correct"] / r["n"], 4)
                assert r["se"] == pytest.approx(math.sqrt(r["accuracy"] * (1 - r["accuracy"]) / r["n"]), abs=1e-4)
                assert sum(f["n"] for f in r["per_family"].values()) == r["n"] and 0 <= r["ended"] <= 1
                assert all(0 <= f["accuracy"] <= 1 for f in r["per_family"].values())
        for beta in run["dpo"]["betas"]:
            for test in ("seen", "held_out", "val"):
                p, n = beta[test]["accuracy"], beta[test]["n"]
                assert 0 <= p <= 1 and beta[test]["se"] == pytest.approx(math.sqrt(p * (1 - p) / n), abs=1e-4)


@pytest.mark.slow
def test_no_contamination_and_the_sft_ablations_ran(tiny):
    for run in tiny["runs"]:
        assert run["contamination"] == {"pretraining_vs_tests": 0, "sft_train_vs_tests": 0}
        assert run["sft"]["mask_prompt"] is True and run["sft_nomask"]["mask_prompt"] is False
        assert run["sft_lora"]["mask_prompt"] is True
        assert all(len(run[s]["loss_curve"]) == TINY["sft"]["steps"] for s in ("sft", "sft_nomask", "sft_lora"))
        full, lora = run["lora"]["full"], run["lora"]["lora"]
        assert 0 < lora["trainable"] < full["trainable"] == full["total"]
        assert lora["total"] == full["total"] + lora["trainable"]  # the adapters are new parameters
        assert (full["adam_state_bytes"], lora["adam_state_bytes"]) == (8 * full["trainable"], 8 * lora["trainable"])


@pytest.mark.slow
def test_dpo_beta_sweep_is_recorded_and_chosen_on_validation(tiny):
    for run in tiny["runs"]:
        dpo = run["dpo"]
        assert [b["beta"] for b in dpo["betas"]] == TINY["dpo"]["betas"]
        assert sum(dpo["pairs"]["rejected_from"].values()) == dpo["pairs"]["n"] == TINY["dpo"]["n_pairs"]
        best = max(b["val"]["accuracy"] for b in dpo["betas"])
        assert dpo["selected_beta"] == max(b["beta"] for b in dpo["betas"] if b["val"]["accuracy"] == best)
        for b in dpo["betas"]:
            assert b["kl"]["n"] == TINY["data"]["n_test"] and "sampled" in b["kl"]["estimator"]
            assert 0 <= b["preference_accuracy"] <= 1 and math.isfinite(b["final_loss"])
    swept = tiny["summary"]["dpo_betas"]
    assert [row["beta"] for row in swept] == TINY["dpo"]["betas"]


@pytest.mark.slow
def test_reward_curves_have_one_entry_per_grpo_step(tiny):
    steps, hack_steps = TINY["grpo"]["steps"], TINY["hack"]["steps"]
    for run in tiny["runs"]:
        curves = run["grpo"]["curves"]
        assert run["grpo"]["steps"] == steps and set(curves) == {"reward", "accuracy", "reply_chars", "ended", "loss"}
        assert all(len(v) == steps for v in curves.values()) and curves["reward"] == curves["accuracy"]
        hack = run["reward_hacking"]
        assert hack["settings"]["steps"] == hack_steps and hack["settings"]["lr"] == TINY["hack"]["lr"]
        for key in ("curves", "fix_curves"):
            assert all(len(v) == hack_steps for v in hack[key].values())
            assert all(0 <= x <= 1 for x in hack[key]["reward"] + hack[key]["accuracy"])
        # the first step samples from the same model with the same seeds: the same replies, two rewards
        assert hack["curves"]["reply_chars"][0] == hack["fix_curves"]["reply_chars"][0]
        assert hack["curves"]["accuracy"][0] == hack["fix_curves"]["accuracy"][0] == hack["fix_curves"]["reward"][0]
        assert hack["curves"]["reward"][0] >= hack["curves"]["accuracy"][0]  # recall never below the exact check
    assert len(tiny["summary"]["grpo_reward_curve"]) == steps


def test_a_last_partial_round_of_seeds_gets_the_idle_cores():
    assert exp.seed_threads(3, 2, 1) == [1, 1, 2]
    assert exp.seed_threads(4, 2, 1) == [1, 1, 1, 1] and exp.seed_threads(5, 4, 2) == [2, 2, 2, 2, 8]
    assert exp.seed_threads(1, 1, 2) == [2] and exp.seed_threads(2, 3, 1) == [1, 1]
    with pytest.raises(ValueError, match="processes"):
        exp.seed_threads(3, 0, 1)


@pytest.mark.slow
def test_seeds_in_separate_processes_give_the_same_records(tiny):
    threads, fixed = torch.get_num_threads(), thread_policy.fixed
    try:
        thread_policy.fix(1)  # as the fixture's command line (--threads 1)
        side_by_side = exp.run(TINY, processes=2)
    finally:
        torch.set_num_threads(threads)
        thread_policy.fixed = fixed
    assert side_by_side["metadata"]["processes"] == 2 and tiny["metadata"]["processes"] == 1

    def without_timings(run: dict) -> str:
        return json.dumps({k: v for k, v in run.items() if k != "timings"}, sort_keys=True)

    assert [without_timings(r) for r in side_by_side["runs"]] == [without_timings(r) for r in tiny["runs"]]
    with pytest.raises(ValueError, match="processes must be >= 1"):
        exp.run(TINY, processes=0)


PARENT = """
import os, subprocess, sys
watched = (
    "import sys, time; from companion.experiments.posttraining import exit_with_parent; "
    "exit_with_parent(int(sys.argv[1]), poll_seconds=0.1); print('watching', flush=True); time.sleep(120)"
)
child = subprocess.Popen(
    [sys.executable, "-c", watched, str(os.getpid())], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
)
assert child.stdout.readline().strip() == "watching"
print(child.pid, flush=True)
os._exit(0)  # the parent dies without a word to its child, as a killed run does
"""


def _running(pid: int) -> bool:
    """True while process `pid` exists and is not a zombie (an orphan's exit is reaped by whoever adopted it)."""
    try:
        return " Z " not in Path(f"/proc/{pid}/stat").read_text().split(")")[-1][:4]
    except FileNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_a_worker_ends_when_its_parent_dies():
    parent = subprocess.run([sys.executable, "-c", PARENT], capture_output=True, text=True, timeout=60)
    assert parent.returncode == 0, parent.stderr
    child = int(parent.stdout.strip())
    deadline = time.monotonic() + 20
    while _running(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _running(child), f"worker {child} outlived its parent"


@pytest.mark.slow
def test_grpo_learning_rate_is_chosen_on_validation(tiny):
    for run in tiny["runs"]:
        grpo = run["grpo"]
        assert [e["lr"] for e in grpo["lrs"]] == TINY["grpo"]["lrs"]
        best = max(e["val"]["accuracy"] for e in grpo["lrs"])
        assert grpo["selected_lr"] == min(e["lr"] for e in grpo["lrs"] if e["val"]["accuracy"] == best)
        chosen = next(e for e in grpo["lrs"] if e["lr"] == grpo["selected_lr"])
        assert grpo["curves"] == chosen["curves"] and grpo["kl"] == chosen["kl"]
        assert run["stages"]["rl"]["held_out"]["accuracy"] == chosen["held_out"]["accuracy"]
    assert [row["lr"] for row in tiny["summary"]["grpo_lrs"]] == TINY["grpo"]["lrs"]
    assert tiny["summary"]["grpo_selected_lrs"] == [r["grpo"]["selected_lr"] for r in tiny["runs"]]


@pytest.mark.slow
def test_test_time_compute_and_summary(tiny):
    ks = TINY["test_time"]["ks"]
    for run in tiny["runs"]:
        ttc = run["test_time"]
        assert ttc["k"] == ks and ttc["samples_per_prompt"] == max(ks)
        assert all(0 <= a <= 1 for a in ttc["majority"] + ttc["pass_at_k"])
        assert ttc["pass_at_k"] == sorted(ttc["pass_at_k"])  # more tries never lower pass@k
    summary = tiny["summary"]
    for stage, s in summary["stages"].items():
        accs = [r["stages"][stage]["held_out"]["accuracy"] for r in tiny["runs"]]
        assert s["held_out"]["per_seed"] == accs and s["held_out"]["mean"] == pytest.approx(sum(accs) / len(accs))
    assert len(summary["differences"]) == 2 * len(exp.COMPARISONS)
    assert all(d["p_value"] is None and d["verdict"].startswith("not tested") for d in summary["differences"])
    table = stage_table(tiny)
    assert table.count("\n") == len(exp.STAGES) + 3 and "over 2 seeds" in table
    import matplotlib

    matplotlib.use("Agg")
    assert len(plot_hacking(tiny)[0].lines) == 4 and len(plot_test_time(tiny).containers) == 2


# ----------------------------------------------------------------------------- the command line


def _fails(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        exp.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{PROG}: error: "), err
    return err


def test_refuses_to_overwrite_without_force(tmp_path, capsys):
    out = tmp_path / "result.json"
    out.write_text("keep me")
    assert "--force" in _fails(["--preset", "tiny", "--out", str(out)], capsys)
    assert out.read_text() == "keep me"
    assert "folder" in _fails(["--preset", "tiny", "--out", str(tmp_path)], capsys)


@pytest.mark.parametrize(
    "argv",
    [
        ["--preset", "huge"],
        ["--seeds", "1", "1"],
        ["--seeds", "-1"],
        ["--seeds", "x"],
        ["--threads", "0"],
        ["--bad"],
        ["--processes", "0"],
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv, capsys):
    _fails(argv, capsys)


def test_presets_are_checked():
    for name, preset in exp.PRESETS.items():
        exp.check_preset(preset)
        assert preset["lora"]["r"] <= preset["model"]["d_model"], name
    assert exp.PRESETS["notebook"]["model"]["n_layers"] < exp.PRESETS["full"]["model"]["n_layers"]
    assert exp.PRESETS["notebook"]["seeds"] == [0] and len(exp.PRESETS["full"]["seeds"]) >= 3
    with pytest.raises(ValueError, match="unknown setting"):
        exp.merged(exp.FULL, {"sft": {"stpes": 3}})
    with pytest.raises(ValueError, match="block_size"):
        exp.check_preset(exp.merged(exp.FULL, {"model": {"block_size": 48}}))
    with pytest.raises(ValueError, match="distinct"):
        exp.check_preset(exp.merged(exp.FULL, {"seeds": [1, 1]}))
    with pytest.raises(ValueError, match="lacks settings"):
        exp.check_preset({k: v for k, v in exp.FULL.items() if k != "dpo"})
    with pytest.raises(ValueError, match="grpo lrs"):
        exp.check_preset(exp.merged(exp.FULL, {"grpo": {"lrs": []}}))
    with pytest.raises(ValueError, match="hack settings"):
        exp.check_preset(exp.FULL | {"hack": {"steps": 2, "lr": 3e-4, "temperture": 1.0}})


# ----------------------------------------------------------------------------- the pieces


def test_binomial_standard_error_matches_scipy():
    for p, n in [(0.0, 10), (0.3, 400), (0.5, 7), (1.0, 3)]:
        assert binomial_se(p, n) == pytest.approx(binom.std(n, p) / n, abs=1e-15)
    tasks = [Task("add", "add/plain", f"What is {i}+1?", str(i + 1)) for i in range(10)]
    rec = accuracy_record(tasks, [str(i + 1) if i < 3 else "0" for i in range(10)], [True] * 9 + [False])
    assert (rec["accuracy"], rec["correct"], rec["n"], rec["ended"]) == (0.3, 3, 10, 0.9)
    assert rec["se"] == round(math.sqrt(0.3 * 0.7 / 10), 4) and rec["per_family"] == {"add": {"accuracy": 0.3, "n": 10}}
    with pytest.raises(ValueError, match="one reply per task"):
        accuracy_record(tasks, ["1"], [True])


def test_pass_at_k_is_the_chance_that_a_random_k_subset_holds_a_right_answer():
    for n, c in [(8, 0), (8, 1), (8, 3), (5, 5), (16, 2)]:
        right = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(right, k))
            assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets), abs=1e-12)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


def test_majority_vote_counts_answers_as_the_checker_compares_them():
    assert canonical(" 007 ") == "7" and canonical(" Bob ") == "Bob" and canonical("-0") == "0"
    assert majority_vote(["7", "07 ", "8", "8"]) == "7"  # a tie goes to the answer sampled first
    assert majority_vote(["9", "8", "8"]) == "8"
    task = Task("add", "add/plain", "What is 3+4?", "7")
    scaling = accuracy_against_k([task, task], [["1", "7", "7", "2"], ["1", "2", "3", "4"]], [1, 2, 4])
    assert scaling["majority"] == [0.0, 0.0, 0.5] and scaling["pass_at_k"][0] == pytest.approx((0.5 + 0) / 2)
    with pytest.raises(ValueError, match="every k"):
        accuracy_against_k([task], [["7"]], [2])


def test_paired_differences_match_scipy_and_say_when_nothing_is_detected():
    before, after = [0.30, 0.35, 0.28, 0.40], [0.36, 0.38, 0.35, 0.41]
    d = paired_difference(before, after)
    t, p = ttest_rel(after, before)
    assert d["p_value"] == pytest.approx(p, abs=1e-5) and d["t"] == pytest.approx(t, abs=1e-3)
    assert d["mean"] == pytest.approx(0.0425) and d["verdict"] == ("better" if p < 0.05 else "no detectable difference")
    assert paired_difference(after, before)["mean"] == pytest.approx(-0.0425)
    noisy = paired_difference([0.3, 0.4, 0.5], [0.35, 0.3, 0.52])
    assert noisy["verdict"] == "no detectable difference" and noisy["p_value"] > 0.05
    assert paired_difference([0.1, 0.2, 0.3], [0.1, 0.2, 0.3])["verdict"] == "no detectable difference"
    assert paired_difference([0.1, 0.2, 0.3], [0.0, 0.1, 0.2])["verdict"] == "worse"  # the same drop every seed
    assert paired_difference([0.1, 0.2], [0.3, 0.4])["p_value"] is None


def test_holm_adjustment_by_hand():
    # m = 4 tested: sorted 0.01, 0.02, 0.03, 0.5 -> 0.04, 0.06, 0.06 (kept non-decreasing), 0.5; None stays None
    assert holm([0.03, None, 0.01, 0.5, 0.02]) == pytest.approx([0.06, None, 0.04, 0.5, 0.06])
    assert holm([0.4, 0.6]) == [0.8, 0.8] and holm([0.6, 0.7]) == [1.0, 1.0]  # kept monotone; capped at 1
    assert holm([None, None]) == [None, None] and holm([]) == []
    with pytest.raises(ValueError, match="p-values must lie in"):
        holm([0.1, 1.5])
    items = item_paired_difference([True, False, False, True], [True, True, False, False])
    assert items == {"difference": 0.0, "se_items": round(math.sqrt(2 / 3) / 2, 4)}


def test_web_documents_state_facts_in_other_words_than_every_template():
    rng = random.Random(0)
    docs = web_documents(30_000, rng)
    every_template = sample_tasks(3000, tuple(TEMPLATES), rng=1)
    assert contamination(docs, every_template) == []  # no task prompt, of any wording, inside a web page
    assert set(WEB_WORDINGS) == set(FAMILIES) and set("".join(docs)) <= set(ALPHABET)
    for template in HELD_OUT_TEMPLATES:  # the held-out wordings' words are known from pre-training, in statements
        family, words = TEMPLATES[template].family, HELD_OUT_VOCABULARY[template]
        assert any(words in w.lower() for w in WEB_WORDINGS[family]), template
        assert words in TEMPLATES[template].text.lower(), template
    assert to_alphabet("ROMEO:\n\nBut soft!\tWhat\n") == "ROMEO: But soft!What"
    tok = ChatTokenizer.from_alphabet(ALPHABET)
    task = sample_tasks(1, rng=2)[0]
    with pytest.raises(RuntimeError, match="occur in the pre-training text"):
        check_pretraining(docs + [f"x {task.prompt} y"], tok.encode("x"), tok, [task])
    with pytest.raises(RuntimeError, match="marker"):
        check_pretraining(docs, [tok.end_id], tok, [task])


def test_the_split_sets_validation_tasks_apart():
    split = experiment_split(300, 40, 50, seed=3)
    assert len(split.train) == 300 and 0 < len(split.val) <= 40
    assert not {t.prompt for t in split.val} & {t.prompt for t in split.train}
    assert contamination(split.train + split.val, split.test_seen + split.test_held_out) == []


def test_perturbations_are_wrong_and_recall_is_gamed_by_long_replies():
    rng = random.Random(0)
    for task in sample_tasks(2000, tuple(TEMPLATES), rng=5):
        wrong = perturb(task, rng)
        assert wrong.strip() and not check(task, wrong), task
    task = Task("add", "add/plain", "What is 40+7?", "47")
    assert recall_reward(task, "47") == 1.0 == recall_reward(task, "0123456789")  # the hack: list every digit
    assert recall_reward(task, "4") == 0.5 and recall_reward(task, "") == 0.0
    assert recall_reward(Task("count", "count/plain", "x", "11"), "1") == 0.5  # counted with multiplicity
    assert window_means([1.0, 2.0, 3.0, 4.0], points=2) == [1.5, 3.5] and window_means([]) == []
    assert all(len(window_means([0.0] * n, 50)) <= 50 for n in (1, 49, 50, 51, 1000))
