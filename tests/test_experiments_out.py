"""Experiment scripts write into the current folder unless --out names a file: a quick preset never
replaces a committed full-run result, and nothing writes into an installed package."""

from __future__ import annotations

import hashlib

import pytest

from companion.experiments import RESULTS, committed, default_out, scaling_sweep


def test_default_out_is_in_the_current_folder():
    assert str(default_out("scaling", "tiny")) == "scaling_tiny.json"
    assert not default_out("finetune", "full").is_absolute()
    assert committed("finetune") == RESULTS / "finetune.json"


@pytest.mark.slow
def test_a_tiny_run_without_out_leaves_the_committed_json_alone(tmp_path, monkeypatch, restore_threads):
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in RESULTS.glob("*.json")}
    monkeypatch.chdir(tmp_path)
    scaling_sweep.main(["--preset", "tiny", "--quiet"])
    assert (tmp_path / "scaling_tiny.json").is_file()
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in RESULTS.glob("*.json")}
    assert after == before
