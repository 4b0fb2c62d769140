"""Replay (dsrsd.replay): re-training a record's first epochs with today's code gives its numbers
back exactly when nothing changed, and finds a change in the record or in the code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO, prepare_real, small_config

from dsrsd import train as train_mod
from dsrsd.errors import DsrsdError
from dsrsd.replay import compare, flat_numbers, replay
from dsrsd.train import fit

SYNTH = {"n": 240}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    return subprocess.run([sys.executable, "-m", "dsrsd", *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=300)


def fit_one_thread(cfg, out: Path) -> None:
    """``fit`` on one thread, as the sweep runs and replay replays."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fit(cfg, out=out, progress=False)
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def dsrsd_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("replay") / "run"
    fit_one_thread(small_config("dsrsd", dataset="synthetic", data_params=SYNTH, epochs=2), out)
    return out


def tamper(run: Path, into: Path, edit) -> Path:
    """A copy of ``run``'s record with ``edit`` applied to it."""
    into.mkdir()
    rec = json.loads((run / "metrics.json").read_text())
    edit(rec)
    (into / "metrics.json").write_text(json.dumps(rec))
    return into


def test_flat_numbers_joins_nested_keys_and_skips_the_epoch():
    row = {"epoch": 3, "task": 0.5, "alpha": {"a": 0.25, "b": 0.75}, "flag": True, "name": "x"}
    assert flat_numbers(row) == {"task": 0.5, "alpha.a": 0.25, "alpha.b": 0.75}


def test_compare_reports_the_largest_difference_and_where():
    a = [{"task": 1.0, "val_auc": 0.5}, {"task": 0.9, "val_auc": 0.6, "gate": 1.0}]
    b = [{"task": 1.0, "val_auc": 0.5}, {"task": 0.9, "val_auc": 0.6 + 0.025, "gate": 1.0}]
    res = compare(a, b)
    assert res == {"numbers": 5, "max_abs_diff": (0.6 + 0.025) - 0.6, "worst": "epoch 1 val_auc",
                   "keys_differ": []}
    assert compare(a, a)["max_abs_diff"] == 0.0
    assert compare(a, [{"task": 1.0}])["keys_differ"] == ["val_auc"]
    assert compare([{"x": float("nan")}], [{"x": float("nan")}])["max_abs_diff"] == 0.0
    assert compare([{"x": float("nan")}], [{"x": 1.0}])["max_abs_diff"] == float("inf")


def test_an_unchanged_run_replays_identically(dsrsd_run):
    row = replay(dsrsd_run, epochs=2)
    assert row["identical"] and row["within_tol"], row
    assert row["epochs"] == 2 and row["numbers"] > 40  # loss terms, diagnostics, val AUC
    assert row["max_abs_diff"] == 0.0 and row["note"] == ""


def test_a_changed_record_is_found_to_the_number(dsrsd_run, tmp_path):
    def edit(rec):
        rec["history"][1]["val_auc"] += 1e-9
    row = replay(tamper(dsrsd_run, tmp_path / "t", edit), epochs=2, tol=1e-6)
    assert not row["identical"] and row["within_tol"]
    assert row["worst"] == "epoch 1 val_auc" and 0 < row["max_abs_diff"] < 1e-8


def test_a_changed_trainer_is_found(dsrsd_run, monkeypatch):
    real = train_mod.make_optimizer

    def slower(model, cfg):  # a one-percent change of the learning rate
        from dataclasses import replace
        return real(model, replace(cfg, lr=cfg.lr * 1.01))
    monkeypatch.setattr(train_mod, "make_optimizer", slower)
    row = replay(dsrsd_run, epochs=1)
    assert not row["identical"] and row["max_abs_diff"] > 0


def test_a_direct_fit_is_refitted_whole(tmp_path):
    out = tmp_path / "gbdt"
    fit_one_thread(small_config("gbdt", dataset="synthetic", data_params=SYNTH), out)
    row = replay(out)
    assert row["identical"] and row["epochs"] == 0 and row["note"].startswith("direct fit")


def test_bad_input_is_one_line(tmp_path):
    with pytest.raises(DsrsdError, match="no run record"):
        replay(tmp_path / "missing")
    (tmp_path / "metrics.json").write_text("{not json")
    with pytest.raises(DsrsdError, match="not valid JSON"):
        replay(tmp_path)
    r = run_cli("replay", str(tmp_path / "missing"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no run record" in r.stderr


def test_cli_writes_a_resumable_table_and_fails_on_a_difference(dsrsd_run, tmp_path):
    table = tmp_path / "replay.csv"
    r = run_cli("replay", str(dsrsd_run), "--out", str(table))
    assert r.returncode == 0, r.stderr
    assert "identical" in r.stdout and table.read_text().count("\n") == 2
    again = run_cli("replay", str(dsrsd_run), "--out", str(table))  # done: skipped
    assert again.returncode == 0 and again.stdout == "" and table.read_text().count("\n") == 2
    forced = run_cli("replay", str(dsrsd_run), "--out", str(table), "--again")  # replaces its row
    assert "identical" in forced.stdout and table.read_text().count("\n") == 2

    def edit(rec):
        rec["history"][0]["task"] *= 1.5
        rec["run_id"] = "changed"
    bad = run_cli("replay", str(tamper(dsrsd_run, tmp_path / "t", edit)), "--out", str(table))
    assert bad.returncode == 1 and "differs by" in bad.stdout and "epoch 0 task" in bad.stdout


@pytest.mark.realdata
def test_a_committed_oulad_record_replays_on_this_machine(tmp_path, monkeypatch):
    """A committed full-budget record replays within 1e-3 on any x86-64 CPU (identically on a
    CPU like the one that wrote it)."""
    runs = sorted((REPO / "results" / "runs").glob("oulad-full-dsrsd-s0-*/metrics.json"))
    if not runs:
        pytest.skip("no committed oulad-full DSRSD-Net record")
    prepare_real("oulad", tmp_path)
    monkeypatch.setenv("DSRSD_DATA", str(tmp_path))
    row = replay(runs[0].parent, epochs=1, tol=1e-3)
    print(row)
    assert row["numbers"] > 20 and row["within_tol"], row
