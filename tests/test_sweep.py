"""The sweep runner and the tables built from its records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dsrsd import sweep as sw
from dsrsd import tables

REPO = Path(__file__).resolve().parents[1]
REQUIRED = {"method", "dataset", "config", "config_hash", "seed", "test", "val", "epochs_run",
            "wall_time_s", "device", "torch", "git_commit", "date", "n_params", "history"}

GRID = {"methods": ["dsrsd", "early", "no_such_method"],
        "datasets": [{"name": "synthetic", "data_params": {"n": 240}, "seeds": [0]}],
        "config": {"epochs": 2, "d": 8, "batch_size": 64, "device": "cpu"}}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    runs = sw.expand(GRID)
    first = sw.sweep(runs, out, jobs=1, progress=False)
    return out, runs, first


def test_records_have_provenance(swept):
    out, runs, first = swept
    assert first["n_runs"] == 3 and first["ok"] == 2
    for r in runs[:2]:
        rec = json.loads((out / r["run_id"] / "metrics.json").read_text())
        assert REQUIRED <= set(rec), REQUIRED - set(rec)
        assert rec["config_hash"] == r["hash"] and r["run_id"].endswith(r["hash"])
        assert not list((out / r["run_id"]).glob("*.pt")), "checkpoints must be deleted"


def test_failure_is_recorded_not_dropped(swept):
    out, runs, first = swept
    bad = [r for r in runs if r["config"]["method"] == "no_such_method"][0]
    err = json.loads((out / bad["run_id"] / "error.json").read_text())
    assert "no_such_method" in err["error"] and "\n" not in err["error"]
    assert [e["run_id"] for e in first["errors"]] == [bad["run_id"]]


def test_second_invocation_skips(swept):
    out, runs, _ = swept
    again = sw.sweep(runs, out, jobs=1, progress=False)
    assert again["skipped"] == 2 and again["ok"] == 0  # only the failed run is retried
    assert len(again["errors"]) == 1


def test_tables_from_records(swept, tmp_path):
    out, _, _ = swept
    frames = tables.write_tables(out, tmp_path)
    df = frames["records"]
    assert set(df["method"]) == {"dsrsd", "early"}
    assert {"test_auc", "wall_time_s", "n_params", "epochs_run", "seed"} <= set(df.columns)
    s = frames["summary"]
    assert set(s["variant"]) == {"dsrsd", "early"} and (s["n"] == 1).all()
    sig = frames["significance"]
    assert list(sig["variant"]) == ["early"] and sig["test"].iloc[0] == "none"  # one seed
    assert len(frames["errors"]) == 1
    for name in ("records", "summary", "significance", "errors"):
        assert (tmp_path / f"{name}.csv").exists()


def test_paired_test_choice():
    import numpy as np
    a, b = np.array([0.8, 0.82, 0.81]), np.array([0.78, 0.8, 0.8])
    assert tables.paired_test(a, b)[0] == "paired_t"
    a6, b6 = np.linspace(0.7, 0.8, 6), np.linspace(0.69, 0.78, 6)
    assert tables.paired_test(a6, b6)[0] == "wilcoxon"


def test_cli_smoke_preset_dry_run(capsys):
    from dsrsd.cli import main
    assert main(["sweep", "--preset", "smoke", "--out", "unused", "--dry-run"]) == 0
    ids = capsys.readouterr().out.split()
    assert len(ids) == 2 and all(i.startswith("synthetic-") for i in ids)


def _committed_records() -> list[Path]:
    return sorted((REPO / "results" / "runs").glob("*/metrics.json"))


@pytest.mark.skipif(not _committed_records(), reason="no committed records in results/runs")
def test_rerun_committed_record_quick(tmp_path):
    """Re-run one committed record's config for 1 epoch and check the new record's format."""
    from dsrsd.config import TrainConfig

    recs = [json.loads(p.read_text()) for p in _committed_records()]
    # the cheapest neural run keeps this test short
    neural = [r for r in recs if r.get("epochs_run", 0) > 0] or recs
    rec = min(neural, key=lambda r: r.get("wall_time_s", 0))
    cfg = dict(rec["config"])
    if cfg["dataset"] == "oulad":
        from dsrsd.data.oulad import oulad_cache_ok
        if not oulad_cache_ok():
            pytest.skip("OULAD cache not prepared")
    elif cfg["dataset"] == "assist2009":
        from dsrsd.data.assist import assist_cache_ok
        if not assist_cache_ok():
            pytest.skip("ASSISTments cache not prepared")
    cfg.update(epochs=1, device="cpu")
    if cfg["dataset"] in ("oulad", "assist2009"):
        cfg["data_params"] = {**cfg["data_params"], "max_train": 300}
    h = TrainConfig.from_dict(cfg).hash()
    run = {"run_id": f"quick-{h}", "config": cfg, "hash": h}
    status = sw.run_one(run, str(tmp_path))
    assert status["status"] == "ok", status
    new = json.loads((tmp_path / run["run_id"] / "metrics.json").read_text())
    assert REQUIRED <= set(new)
    assert set(new["test"]) == set(rec["test"])
    assert new["method"] == rec["method"] and new["dataset"] == rec["dataset"]
