"""The benchmark scripts run end to end in tiny configurations (their figures are not tested here:
performance targets are met in the benchmarks themselves, on a quiet machine)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEXT = (
    "ROMEO:\nBut, soft! what light through yonder window breaks?\nIt is the east, and Juliet is "
    "the sun.\n\nJULIET:\nO Romeo, Romeo! wherefore art thou Romeo?\n"
) * 40


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pytestmark = pytest.mark.usefixtures("restore_threads")  # the scripts call torch.set_num_threads


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "plays.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def test_time_to_quality_on_any_text_file(text_file, tmp_path, capsys):
    out = tmp_path / "ttq.json"
    result = load_benchmark("time_to_quality").main(
        [
            "--text",
            str(text_file),
            "--target",
            "3.5",
            "--n-layers",
            "1",
            "--d-model",
            "32",
            "--n-heads",
            "2",
            "--block-size",
            "16",
            "--batch-size",
            "8",
            "--steps",
            "60",
            "--eval-interval",
            "10",
            "--eval-steps",
            "2",
            "--dtype",
            "fp32",
            "--threads",
            "1",
            "--json",
            str(out),
        ]
    )
    assert result["reached"] and result["full_val_loss"] <= 3.5
    assert result["corpus"] == str(text_file)
    assert json.loads(out.read_text())["step"] == result["step"]
    assert "<= 3.5 after" in capsys.readouterr().out


def test_train_throughput_prints_every_mode(text_file, capsys):
    result = load_benchmark("train_throughput").main(
        ["--text", str(text_file), "--modes", "fp32,fp32+fused", "--steps", "3", "--warmup", "1", "--threads", "1"]
    )
    assert [r["mode"] for r in result["results"]] == ["fp32", "fp32+fused"]
    assert all(r["tokens_per_s"] > 0 and r["compile_s"] is None for r in result["results"])  # eager modes
    assert result["reference"]["tokens_per_s"] > 0  # the reference recipe, timed in the same run
    assert all(r["vs_reference"] == r["tokens_per_s"] / result["reference"]["tokens_per_s"] for r in result["results"])
    assert "fastest:" in capsys.readouterr().out


def test_reference_recipe_is_the_same_model_shape_as_ours():
    bench = load_benchmark("train_throughput")
    from companion.nn import GPT, GPTConfig
    from companion.scaling.counting import count_parameters

    ours = GPT(GPTConfig(vocab_size=65, **bench.REFERENCE_MODEL))
    reference = bench.ReferenceGPT(65)
    assert count_parameters(reference) == count_parameters(ours)
    assert round((count_parameters(ours) - 64 * 128) / 1e6, 2) == 0.80  # nanoGPT's "0.80M" leaves out positions


def test_train_throughput_compares_eager_and_compiled_by_default():
    default_modes = load_benchmark("train_throughput").default_modes
    assert default_modes({"bf16_flags": []}) == "fp32,fp32+compile"
    assert default_modes({"bf16_flags": None}) == "fp32,fp32+compile"  # unknown CPU: no bf16
    assert default_modes({"bf16_flags": ["amx_bf16"]}) == "fp32,fp32+compile,bf16+fused,bf16+fused+compile"


def test_compilation_break_even_against_the_reference():
    break_even_s = load_benchmark("train_throughput").break_even_s
    reference = {"tokens_per_s": 1000.0}
    # 2000 tokens/s saves 0.5 ms per token: 10 s of compilation are repaid after 20,000 tokens = 10 s of training
    assert break_even_s({"tokens_per_s": 2000.0, "compile_s": 10.0}, reference) == pytest.approx(10.0)
    assert break_even_s({"tokens_per_s": 2000.0, "compile_s": None}, reference) is None  # eager
    assert break_even_s({"tokens_per_s": 900.0, "compile_s": 10.0}, reference) is None  # slower: never repaid


def test_bpe_encode_checks_identical_ids(capsys):
    result = load_benchmark("bpe_encode").main(["--bytes", "20000", "--repeats", "1"])
    assert result["same_ids"] and result["bytes"] == 20_000 and result["vocab_size"] == 100_277
    assert set(result["speed_vs_ours"]) == {"ours", "ours_warm", "tiktoken", "tokenizers"}
    assert sum(result["ours_first_call_share"].values()) == pytest.approx(1.0)
    assert "same ids from all three: True" in capsys.readouterr().out


def test_bpe_train_compares_merges_with_the_libraries(tmp_path, capsys):
    out = tmp_path / "bpe.json"
    result = load_benchmark("bpe_train").main(["--vocab-sizes", "300", "--bytes", "50000", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    (run,) = result["runs"]
    assert run["bytes"] == 50_000 and run["vocab_size"] == 300 and "hf" in run["merges"]
    for lib, merges in run["merges"].items():
        assert merges["merges"] == 300 - 257  # 256 bytes and one special token
        if merges["first_difference"] is not None:  # the trainers differ only in how they break ties
            assert merges["ours_count"] == merges["their_count"] > 0, lib
    assert "same place" in capsys.readouterr().out


@pytest.mark.slow
def test_generation_benchmark_checks_identical_tokens(capsys):
    result = load_benchmark("generation").main(
        ["--prompt-len", "8", "--new-tokens", "8", "--repeats", "1", "--threads", "1"]
    )
    text = capsys.readouterr().out
    assert "same tokens: True" in text and "same tokens: False" not in text
    assert result is not None


def test_generation_benchmark_runs_the_modern_decoder_in_batches(capsys):
    result = load_benchmark("generation").main(
        ["--arch", "llama", "--batch-size", "3", "--prompt-len", "8", "--new-tokens", "8", "--repeats", "1"]
        + ["--skip-no-cache", "--threads", "1"]
    )
    assert result["model"]["arch"] == "llama" and result["batch_size"] == 3
    assert result["same_tokens_as_transformers"] and result["same_tokens_packed"]
    assert result["tokens_per_s"]["ours_cache"] == 3 * 8 / result["seconds"]["ours_cache"]
    assert "same tokens: False" not in capsys.readouterr().out


@pytest.mark.slow
def test_muon_vs_adamw_writes_every_seed_and_the_step_costs(text_file, tmp_path, capsys):
    out = tmp_path / "muon.json"
    result = load_benchmark("muon_vs_adamw").main(
        [
            "--text",
            str(text_file),
            "--target",
            "3.5",
            "--seeds",
            "0",
            "1",
            "--threads",
            "1",
            "--repeats",
            "2",
            "--out",
            str(out),
            "--extra",
            "--n-layers",
            "1",
            "--d-model",
            "32",
            "--n-heads",
            "2",
            "--block-size",
            "16",
            "--batch-size",
            "8",
            "--steps",
            "60",
            "--eval-interval",
            "10",
            "--eval-steps",
            "2",
        ]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["command"].startswith("python benchmarks/muon_vs_adamw.py --text")
    for name in ("muon", "adamw"):
        assert [r["seed"] for r in result["runs"][name]] == [0, 1]
        assert all(r["reached"] and r["full_val_loss"] <= 3.5 for r in result["runs"][name])
    assert all(result["step_cost"][k] > 0 for k in ("forward_backward_ms", "adamw_step_ms", "muon_step_ms"))
    assert "wrote" in capsys.readouterr().out


def test_committed_muon_result_has_what_chapter_7_reads():
    from companion.experiments import committed

    result = json.loads(committed("muon").read_text(encoding="utf-8"))
    assert result["format"] == "companion-muon-benchmark" and result["version"] == 1
    assert result["command"].startswith("python benchmarks/muon_vs_adamw.py")
    assert result["target"] == 1.89 and len(result["seeds"]) >= 3
    for name in ("muon", "adamw"):
        runs = result["runs"][name]
        assert [r["seed"] for r in runs] == result["seeds"]
        for r in runs:
            assert {"reached", "step", "full_val_loss", "seconds_to_target", "cpu_seconds_to_target"} <= set(r)
            assert not r["reached"] or r["full_val_loss"] <= result["target"]
    assert {
        "forward_backward_ms",
        "adamw_step_ms",
        "muon_step_ms",
        "newton_schulz_ms",
        "tokens_per_batch",
        "hidden_matrices",
    } <= set(result["step_cost"])
    assert {"cpu", "threads", "load_average_before", "load_average_after", "torch"} <= set(result["machine"])


def test_shared_cpu_runs_copies_together(text_file, tmp_path, capsys):
    out = tmp_path / "shared.json"
    result = load_benchmark("shared_cpu").main(
        [
            "--copies",
            "2",
            "--modes",
            "policy",
            "--steps",
            "2",
            "--text",
            str(text_file),
            "--json",
            str(out),
            "--markdown",
            str(tmp_path / "t.md"),
        ]
    )
    assert "slowest / lone" in capsys.readouterr().out
    rows = {(r["mode"], r["copies"]): r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {("policy", 1), ("policy", 2)}  # the lone run is always measured
    assert all(len(r["runs"]) == r["copies"] and r["slowdown"] > 0 for r in rows.values())
    assert result["lone_s"]["policy"] > 0
    assert "| the package's policy | 2 |" in (tmp_path / "t.md").read_text()


def test_speedrun_test_is_scipys_one_sided_t_test():
    one_sided_p = load_benchmark("speedrun").one_sided_p
    from scipy import stats

    losses = [1.84, 1.86, 1.85]
    assert one_sided_p(losses, 1.89) == pytest.approx(stats.ttest_1samp(losses, 1.89, alternative="less").pvalue)
    # three seeds must sit about four of their standard deviations (here 0.01) below the target
    assert one_sided_p(losses, 1.90) < 0.01 < one_sided_p(losses, 1.89)
    assert one_sided_p([1.8, 1.8, 1.8], 1.89) == 0.0 and one_sided_p([1.9, 1.9, 1.9], 1.89) == 1.0
    with pytest.raises(ValueError, match="at least 2 seeds"):
        one_sided_p([1.8], 1.89)


def test_speedrun_tiny_writes_a_record_and_keeps_an_accepted_one(text_file, tmp_path, capsys):
    bench = load_benchmark("speedrun")
    argv = ["run", "1.89", "--preset", "tiny", "--text", str(text_file), "--threads", "1", "--out", str(tmp_path)]
    record = bench.main(argv)
    path = tmp_path / f"{text_file.stem}-1.89.json"
    saved = json.loads(path.read_text())
    assert saved["runs"] == record["runs"] and len(saved["runs"]) == 3
    assert saved["accepted"] is False  # four steps of a tiny model are nowhere near 1.89
    assert saved["recipe"]["steps"] == 4 and saved["command"].startswith("python benchmarks/speedrun.py run 1.89")
    assert all(r["train_wall_s"] > 0 and r["val_loss"] > 1.89 for r in saved["runs"])
    # an accepted record is never replaced by one that is not accepted
    path.write_text(json.dumps({**saved, "accepted": True}))
    bench.main(argv)
    assert json.loads(path.read_text())["accepted"] is True
    assert "not replaced" in capsys.readouterr().out
    assert "| 1.89 |" in bench.main(["table", "--records", str(tmp_path)])
    fast = {"target": 1.89, "accepted": True, "median_train_wall_s": 14.0}
    assert bench.goal_verdict(fast) == "15 s: met"
    assert bench.goal_verdict({**fast, "median_train_wall_s": 16.0}) == "15 s: **not met**"
    assert bench.goal_verdict({**fast, "accepted": False}) == "no record"


def test_speedrun_bad_input_is_one_line_and_status_2(tmp_path, capsys):
    bench = load_benchmark("speedrun")
    for argv, message in [
        (["run", "1.23", "--out", str(tmp_path)], "no recipe for target 1.23"),
        (["run", "1.89", "--set", "colour=red", "--out", str(tmp_path)], "no recipe setting 'colour'"),
        (["run", "1.89", "--text", str(tmp_path / "missing.txt"), "--out", str(tmp_path)], "no such file"),
        (["run", "1.89", "--seeds", "0", "--out", str(tmp_path)], "at least 2 distinct seeds"),
        (["run", "1.89", "--seeds", "1", "1", "1", "--out", str(tmp_path)], "at least 2 distinct seeds"),
        (["run", "1.89", "--set", "steps=many", "--out", str(tmp_path)], "steps must be of type int"),
        (["run", "1.89", "--set", "compile=yes", "--out", str(tmp_path)], "compile is True or False"),
    ]:
        with pytest.raises(SystemExit) as e:
            bench.main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


def test_committed_speedrun_records_follow_the_rules_and_are_the_books_table():
    bench = load_benchmark("speedrun")
    records = bench.load_records(bench.RECORDS)
    assert {r["target"] for r in records} >= {1.89, 1.70}
    for r in records:
        losses = [run["val_loss"] for run in r["runs"]]
        assert r["p_value"] == pytest.approx(bench.one_sided_p(losses, r["target"]))
        assert r["accepted"] == (len(losses) >= 3 and r["p_value"] < 0.01)
        assert r["preset"] == "full" and r["recipe"]["steps"] >= 100
    generated = Path(__file__).parents[1] / "book" / "_generated" / "speedrun.md"
    assert generated.read_text(encoding="utf-8") == bench.table(records)  # `speedrun.py table --markdown` writes it


def test_committed_speedrun_records_were_made_by_the_published_recipes():
    """Each record's recipe is its target's recipe in RECIPES, changed only by the --set items of its command."""
    bench = load_benchmark("speedrun")
    for r in bench.load_records(bench.RECORDS):
        words = r["command"].split()
        sets = [words[i + 1] for i, w in enumerate(words) if w == "--set"]
        recipe = bench.apply_settings(bench.RECIPES[f"{r['target']:.2f}"], sets)
        changed = {k for k in recipe if recipe[k] != r["recipe"][k]}
        assert r["recipe"].keys() == recipe.keys() and not changed, (r["text"], r["target"], changed)
