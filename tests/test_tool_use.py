"""The tool-use experiment (`python -m companion.experiments.tool_use`): the calculator, the data split, the tiny
preset end to end through the command line, and the committed full result's shape and invariants."""

from __future__ import annotations

import json
import random

import pytest

from companion.experiments import RESULTS
from companion.experiments import tool_use as exp
from companion.posttraining.tasks import check, contamination

COMMITTED = RESULTS / "tool_use.json"


@pytest.mark.parametrize(
    ("expression", "value"), [("347+589", 936), ("25-76", -51), ("-3-4+10", 3), ("0+0", 0), ("007+1", 8)]
)
def test_calculator(expression, value):
    assert exp.calculator(expression) == value


@pytest.mark.parametrize("expression", ["", "3*4", "1+", "+1", "2**10", "__import__('os')", "1 + 2", "3+-4"])
def test_calculator_refuses_anything_else(expression):
    with pytest.raises(ValueError, match="integers joined by"):
        exp.calculator(expression)


def test_tool_answer():
    assert exp.tool_answer("<calc>23+58</calc>") == "81"
    assert exp.tool_answer(" <calc>3-7</calc> ") == "-4"
    assert exp.tool_answer("81") == "81"  # a direct answer stands as it is
    assert exp.tool_answer("<calc>2*3</calc>") == "<calc>2*3</calc>"  # a malformed call answers nothing


def test_problems_and_targets():
    rng = random.Random(0)
    for in_range in (True, False):
        for _ in range(300):
            task, expr = exp.draw_problem(rng, in_range)
            assert str(exp.calculator(expr)) == task.answer and check(task, task.answer)
            a, b = (int(x) for x in expr.replace("-", "+").split("+"))
            assert 0 <= a <= 99 and 0 <= b <= 99
            value = int(task.answer)
            assert (0 <= value <= 99) == in_range  # in range: sums <= 99, differences >= 0
            assert exp.target((task, expr), "direct") == task.answer
            assert exp.target((task, expr), "tool") == f"<calc>{expr}</calc>"
    with pytest.raises(ValueError, match="unknown mode"):
        exp.target((task, expr), "oracle")


def test_data_split_is_clean():
    data = exp.make_data(3000, 100, seed=1)
    assert [len(data[k]) for k in ("train", "in_range", "out_of_range")] == [3000, 100, 100]
    tests = data["in_range"] + data["out_of_range"]
    assert len({t.prompt for t, _ in tests}) == 200
    train_pairs = {e for _, e in data["train"]}
    for _, e in data["in_range"]:
        assert e not in train_pairs and "+".join(e.split("+")[::-1]) not in train_pairs
    assert not contamination([t for t, _ in data["train"]], [t for t, _ in tests])
    assert {t.family for t, _ in data["train"]} == {"add", "sub"}
    assert len({t.template for t, _ in data["train"]}) == len(exp.ARITH_TEMPLATES) == 7
    again = exp.make_data(3000, 100, seed=1)
    assert [t.prompt for t, _ in again["train"]] == [t.prompt for t, _ in data["train"]]  # deterministic


def check_result(result: dict, preset: dict) -> None:
    """The invariants of a written result: shape, counts, and summary and paired numbers that agree with the runs."""
    assert result["format"] == exp.FORMAT and result["seeds"] == preset["seeds"]
    assert result["modes"] == list(exp.MODES) and result["tests"] == list(exp.TESTS)
    assert result["metadata"]["threads"] >= 1 and result["metadata"]["wall_seconds"] > 0
    n = preset["data"]["n_test"]
    for run in result["runs"]:
        for mode in exp.MODES:
            rec = run["models"][mode]
            assert len(rec["loss_curve"]) >= 1 and rec["final_loss"] >= 0
            for name in exp.TESTS:
                t = rec["tests"][name]
                assert t["n"] == n and t["accuracy"] == pytest.approx(t["correct"] / n, abs=1e-4)
                assert 0 <= t["calls"] <= 1
        for name in exp.TESTS:
            p = run["paired"][name]
            acc = {m: run["models"][m]["tests"][name]["correct"] for m in exp.MODES}
            assert acc["tool"] - acc["direct"] == p["b"] - p["c"]  # the discordant items make the difference
            assert 0 <= p["p"] <= 1
    for name in exp.TESTS:
        s = result["summary"]["paired"][name]
        assert s["b"] == sum(r["paired"][name]["b"] for r in result["runs"])
        for mode in exp.MODES:
            m = result["summary"]["models"][mode][name]
            assert m["n"] == n * len(preset["seeds"])


@pytest.mark.slow
def test_tiny_preset_through_the_command_line(tmp_path, monkeypatch, restore_threads):
    monkeypatch.chdir(tmp_path)
    assert exp.main(["--preset", "tiny", "--threads", "1", "--quiet"]) == 0
    result = json.loads((tmp_path / "tool_use_tiny.json").read_text())
    assert result["command"] == "python -m companion.experiments.tool_use --preset tiny --threads 1 --quiet"
    check_result(result, exp.PRESETS["tiny"])


def test_bad_command_line_exits_with_status_2(capsys):
    with pytest.raises(SystemExit) as err:
        exp.main(["--preset", "huge"])
    assert err.value.code == 2
    with pytest.raises(ValueError, match="seeds"):
        exp.run(exp._merged(exp.PRESETS["tiny"], {"seeds": [0, 0]}))


@pytest.mark.skipif(not COMMITTED.exists(), reason="the full run's JSON is not committed yet")
def test_committed_full_result():
    result = exp.load_result()
    assert result["preset"] == exp.PRESETS["full"] and len(result["seeds"]) >= 3
    check_result(result, exp.PRESETS["full"])
    assert "--threads 1" in result["command"] and result["metadata"]["threads"] == 1
