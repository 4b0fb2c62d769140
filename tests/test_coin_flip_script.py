"""data_scripts/coin_flip.py end to end on a small generated AKT folder whose responses are
already coin flips: the record's keys, chance AUCs when runs are merged, the unmerged control
firing, and one-line errors for bad paths."""

from __future__ import annotations

import importlib.util
import json

import pytest
from fixtures_real import make_akt_students, write_akt
from helpers import REPO

TOL = 0.04  # ~6k scored test steps: the AUC's standard error under the null is about 0.009


def load_script():
    spec = importlib.util.spec_from_file_location("coin_flip", REPO / "data_scripts" / "coin_flip.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return load_script()


@pytest.fixture(scope="module")
def record(tmp_path_factory, script) -> dict:
    d = tmp_path_factory.mktemp("coin")
    students = make_akt_students(n_students=400, seed=5, n_skills=24, n_problems=300, mean_len=60,
                                 multi_frac=0.3, coin_flip=True)
    write_akt(d / "akt", students, seed=5)
    out = d / "res" / "coin_flip.json"
    rc = script.main(["--source", str(d / "akt"), "--no-verify", "--data-dir", str(d / "data"),
                      "--out", str(out), "--folds", "2", "--methods", "dkt,akt", "--epochs", "1",
                      "--n-boot", "100", "--quiet"])
    assert rc == 0
    return json.loads(out.read_text())


def test_record_keys(record):
    assert {"verdict", "flip", "logistic_regression", "neural", "interval", "tolerance",
            "git_commit", "torch", "device", "date", "source"} <= set(record)
    assert record["flip"]["seed"] == 0 and set(record["flip"]["base_rate"]) == {"2"}
    assert abs(record["flip"]["base_rate"]["2"] - 0.66) < 0.02
    assert set(record["logistic_regression"]["folds"]) == {"2"}
    assert set(record["neural"]["methods"]) == {"dkt", "akt"}
    assert record["neural"]["fold"] == 2  # the neural methods run on the first fold given
    for m in record["neural"]["methods"].values():
        assert m["lo"] <= m["auc"] <= m["hi"] and m["n"] > 5000 and m["epochs_run"] == 1
    assert "\n" not in record["verdict"]


def test_merged_at_chance_unmerged_leaks(record):
    folds = record["logistic_regression"]["folds"]
    for f in folds.values():
        assert abs(f["merged"]["auc"] - 0.5) <= TOL, f["merged"]
        assert f["unmerged"]["auc"] > 0.6, f["unmerged"]  # a run's rows see each other's flips
        assert f["merged"]["n"] == f["merged"]["counts"]["scored"] > 5000
    for m in record["neural"]["methods"].values():
        assert abs(m["auc"] - 0.5) <= TOL, m
    assert record["verdict"].startswith("no leak") and "control leaks" in record["verdict"]


def test_verdict_names_the_offender(script):
    folds = {"1": {"merged": {"auc": 0.501, "lo": 0.49, "hi": 0.51}, "unmerged": {"auc": 0.62}}}
    v = script.verdict(folds, {"fold": 1, "methods": {"akt": {"auc": 0.71, "lo": 0.7, "hi": 0.72}}})
    assert v.startswith("LEAK") and "akt fold 1 0.7100" in v
    assert "1 of 2 95% intervals exclude 0.5" in v and "akt fold 1 [0.7000, 0.7200]" in v
    v = script.verdict({"1": {"merged": {"auc": 0.5}, "unmerged": {"auc": 0.51}}},
                       {"fold": 1, "methods": {}})
    assert v.startswith("no leak") and "WARNING" in v


@pytest.mark.parametrize("args,words", [
    (["--data-dir", "{tmp}/nothing"], ["no prepared ASSISTments", "nothing"]),
    (["--source", "{tmp}/missing_akt", "--data-dir", "{tmp}/d"], ["missing_akt", "does not exist"]),
    (["--data-dir", "{tmp}/d", "--folds", "1,7"], ["--folds"]),
    (["--data-dir", "{tmp}/d", "--methods", "dkt,nope"], ["nope"]),
    (["--epochs", "0"], ["--epochs"]),
])
def test_bad_input_one_line(script, tmp_path, capsys, args, words):
    args = [a.format(tmp=tmp_path) for a in args]
    try:
        rc = script.main(args)
    except SystemExit as e:  # argparse-level errors exit from the parser
        rc = e.code
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error:") and "\n" not in err, err
    for w in words:
        assert w in err, err
    assert not (tmp_path / "d" / "assist2009").exists()
