"""The sweep runner and the tables built from its records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import prepare_real

from dsrsd import sweep as sw
from dsrsd import tables

REPO = Path(__file__).resolve().parents[1]
REQUIRED = {"method", "dataset", "config", "config_hash", "seed", "test", "val", "epochs_run",
            "wall_time_s", "device", "torch", "git_commit", "date", "n_params", "history"}

# "broken" passes the edge checks (a string modality) and fails inside the run notebook
GRID = {"methods": ["dsrsd", "early", "broken"],
        "datasets": [{"name": "synthetic", "data_params": {"n": 240}, "seeds": [0]}],
        "config": {"epochs": 2, "d": 8, "batch_size": 64, "device": "cpu"},
        "variants": {"broken": {"method": "unimodal", "method_params": {"modality": "nope"}}}}
REQUIRED |= {"variant", "setting", "run_id", "robustness"}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    runs = sw.expand(GRID)
    first = sw.sweep(runs, out, jobs=1, progress=False)  # through papermill, the default
    return out, runs, first


def test_records_have_provenance(swept):
    out, runs, first = swept
    assert first["n_runs"] == 3 and first["ok"] == 2
    for r in runs[:2]:
        rec = json.loads((out / r["run_id"] / "metrics.json").read_text())
        assert REQUIRED <= set(rec), REQUIRED - set(rec)
        assert rec["config_hash"] == r["hash"] and r["run_id"].endswith(r["hash"])
        assert not list((out / r["run_id"]).glob("*.pt")), "checkpoints must be deleted"
        # the executed notebook is kept beside the record and shows this run's numbers
        nb = json.loads((out / r["run_id"] / "run.ipynb").read_text())
        text = json.dumps(nb["cells"])
        assert r["run_id"] in text and f"{rec['test']['auc']:.4f}" in text
        assert rec["variant"] == r["config"]["method"] and rec["setting"] == "synthetic"
        assert set(rec["robustness"]["drop_rate"]) == {"0.1", "0.2", "0.3", "0.4", "0.5"}


def test_failure_is_recorded_not_dropped(swept, tmp_path):
    out, runs, first = swept
    bad = [r for r in runs if r["variant"] == "broken"][0]
    err = json.loads((out / bad["run_id"] / "error.json").read_text())
    assert "nope" in err["error"] and "\n" not in err["error"]
    assert err["error"].startswith("DsrsdError: unknown modality"), err["error"]
    # the failed notebook is kept too: it shows the cell that raised
    assert "unknown modality" in (out / bad["run_id"] / "run.ipynb").read_text()
    assert [e["run_id"] for e in first["errors"]] == [bad["run_id"]]
    # a run the edge refuses (unknown method) is recorded too, without running anything
    grid = {**GRID, "methods": ["no_such_method"], "variants": {}}
    refused = sw.expand(grid)
    assert refused[0]["run_id"].endswith("-invalid") and "unknown method" in refused[0]["error"]
    status = sw.run_one(refused[0], str(tmp_path))
    assert status["status"] == "error"
    err = json.loads((tmp_path / refused[0]["run_id"] / "error.json").read_text())
    assert err["error"].startswith("DsrsdError: unknown method"), err["error"]


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
    assert sig["p_holm"].isna().all() and not sig["significant_holm"].any()
    # the sweep's explicit group reaches every table
    assert set(df["group"]) == {"main"} and set(s["group"]) == {"main"}
    assert set(sig["group"]) == {"main"} and set(frames["robustness"]["group"]) == {"main"}
    clean = frames["robustness"][frames["robustness"]["condition"] == "rate 0"]
    assert (clean["retained_mean"] == 1.0).all()
    assert len(frames["errors"]) == 1
    for name in ("records", "summary", "significance", "robustness", "errors", "cap_check"):
        assert (tmp_path / f"{name}.csv").exists()


def test_variants_settings_and_overrides():
    grid = {"methods": ["early", "dsrsd-no_orth", "heavy"],
            "variants": {"dsrsd-no_orth": {"method": "dsrsd", "weights": {"orth": 0.0}},
                         "heavy": {"method": "coattention", "config": {"epochs": 1}}},
            "datasets": [{"name": "synthetic", "setting": "syn-small", "seeds": [0, 1],
                          "data_params": {"n": 200}}],
            "config": {"epochs": 3}}
    runs = sw.expand(grid)
    assert len(runs) == 6
    by = {(r["variant"], r["config"]["seed"]): r for r in runs}
    assert by[("dsrsd-no_orth", 0)]["config"]["method"] == "dsrsd"
    assert by[("dsrsd-no_orth", 0)]["config"]["weights"]["orth"] == 0.0
    assert by[("early", 0)]["config"]["weights"]["orth"] > 0
    assert by[("heavy", 1)]["config"]["epochs"] == 1 and by[("early", 1)]["config"]["epochs"] == 3
    assert all(r["setting"] == "syn-small" and r["run_id"].startswith("syn-small-") for r in runs)
    assert len({r["run_id"] for r in runs}) == 6
    # --epochs / --quick on the command line win over a variant's own epochs
    assert {r["config"]["epochs"] for r in sw.expand(grid, quick=True)} == {1}


def test_presets_expand_to_valid_configs():
    sizes = {}
    for name in sw.PRESETS:
        runs = sw.expand(sw.load_grid(preset=name))
        assert runs and not [r for r in runs if r.get("error")], name
        sizes[name] = len(runs)
    assert sizes["oulad"] == 55 and sizes["assist"] == 55  # 11 methods x 5 seeds / folds
    ab = sw.expand(sw.load_grid(preset="oulad_ablation"))
    main = {r["run_id"] for r in sw.expand(sw.load_grid(preset="oulad"))}
    # the ablation's full model and paper-weights variant are the main grid's runs (same
    # config, same id): trained once
    assert {r["run_id"] for r in ab if r["variant"] in ("dsrsd", "dsrsd_pw")} <= main


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
def test_rerun_committed_record_quick(tmp_path, monkeypatch):
    """Re-run one committed OULAD record's grid entry for 1 epoch, through the sweep (papermill),
    and check the new record has the committed one's format and the same protocol."""
    recs = [json.loads(p.read_text()) for p in _committed_records()]
    oulad = [r for r in recs if r["dataset"] == "oulad" and r.get("epochs_run", 0) > 0]
    assert oulad, "the committed records hold no neural OULAD run"
    rec = min(oulad, key=lambda r: r["wall_time_s"])  # the cheapest keeps this test short
    prepare_real("oulad", tmp_path / "data")  # skips when the real files are absent
    monkeypatch.setenv("DSRSD_DATA", str(tmp_path / "data"))  # the kernel inherits it
    cfg = {**rec["config"], "epochs": 1, "device": "cpu",
           "data_params": {**rec["config"]["data_params"], "max_train": 300}}
    run = {"run_id": "quick", "config": cfg, "hash": None, "variant": rec["variant"],
           "setting": rec["setting"],
           **{k: rec[k] for k in ("group", "experiment", "chosen_by") if k in rec}}
    status = sw.run_one(run, str(tmp_path / "runs"))
    assert status["status"] == "ok", status
    new = json.loads((tmp_path / "runs" / "quick" / "metrics.json").read_text())
    assert set(rec) <= set(new), set(rec) - set(new)
    assert set(new["test"]) == set(rec["test"]) and set(new["val"]) == set(rec["val"])
    assert new["robustness"]["drop_rate"].keys() == rec["robustness"]["drop_rate"].keys()
    assert (new["variant"], new["setting"]) == (rec["variant"], rec["setting"])
    # same protocol: identical validation and test units, only the training part subsampled
    assert new["data_info"]["counts"]["test"] == rec["data_info"]["counts"]["test"]
    assert new["data_info"]["subsample_train"][0] == 300
    assert new["test"]["n"] == rec["test"]["n"]


def test_committed_tables_are_generated_from_committed_records(tmp_path):
    """Every CSV under results/ that the book shows is exactly what dsrsd.tables makes from the
    committed records: no number in them was typed or edited by hand."""
    if not _committed_records():
        pytest.skip("no committed records")
    tables.write_tables(REPO / "results" / "runs", tmp_path)
    for name in ("records", "summary", "significance", "robustness", "errors", "cap_check"):
        fresh = (tmp_path / f"{name}.csv").read_text()
        committed = (REPO / "results" / f"{name}.csv").read_text()
        assert fresh == committed, f"results/{name}.csv differs from its records: regenerate it"


def test_committed_unit_bootstrap_agrees_with_the_committed_records():
    """results/unit_bootstrap.csv is made from predictions files that are never committed, so CI
    cannot regenerate it; it checks what the records can: each computed row's runs and mean
    difference (dsrsd.tables.check_unit_bootstrap)."""
    import pandas as pd
    path = REPO / "results" / "unit_bootstrap.csv"
    if not _committed_records() or not path.is_file():
        pytest.skip("no committed records or unit bootstrap table")
    ub = pd.read_csv(path)
    assert (ub["predictions"] == "ok").any()
    assert tables.check_unit_bootstrap(ub, tables.load_records(REPO / "results" / "runs")) == []

