"""dsrsd.diagnosis: weighted loss curves, the chosen epoch against the warm-up, gradient shares."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import one_line

from dsrsd import diagnosis
from dsrsd.config import TrainConfig
from dsrsd.data.synthetic import load_synthetic
from dsrsd.errors import DsrsdError
from dsrsd.train import fit

RUNS = Path(__file__).resolve().parents[1] / "results" / "runs"


def _dsrsd_records() -> list[dict]:
    recs = [json.loads(f.read_text()) for f in sorted(RUNS.glob("*dsrsd*/metrics.json"))]
    assert recs, "no committed DSRSD-Net records"
    return recs


def test_weighted_terms_add_up_to_the_logged_objective_of_every_committed_record():
    """The weights put back from each record's config (warm-up included) give the objective the
    trainer logged: per epoch, task + sum of weighted terms = total, to float precision."""
    for rec in _dsrsd_records():
        c = diagnosis.term_curves(rec)
        total = c.groupby("epoch")["weighted"].sum()
        logged = {h["epoch"]: h["total"] for h in rec["history"]}
        for epoch, value in total.items():
            assert value == pytest.approx(logged[epoch], rel=1e-5, abs=1e-5), rec["run_id"]


def test_warmup_weights_and_the_chosen_epoch():
    rec = {"run_id": "r", "best_epoch": 1, "epochs_run": 6,
           "config": TrainConfig(method="dsrsd", warmup_epochs=4,
                                 weights={"orth": 2.0, "recon": 1.0}).to_dict(),
           "history": [{"epoch": e, "task": 1.0, "orth": 1.0, "recon": 0.5, "total": 0.0}
                       for e in range(6)]}
    w = diagnosis.term_curves(rec).pivot(index="epoch", columns="term", values="weight")
    assert list(w["orth"]) == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]  # linear over 4 epochs, then full
    assert list(w["recon"]) == [1.0] * 6 and list(w["task"]) == [1.0] * 6  # not warmed up
    got = diagnosis.chosen_epoch(rec)
    assert got["full_weight_epoch"] == 3 and got["inside_warmup"]
    rec["best_epoch"] = 3
    assert not diagnosis.chosen_epoch(rec)["inside_warmup"]


def test_old_records_have_no_gradient_shares_and_say_so():
    rec = _dsrsd_records()[0]
    if diagnosis.observed(rec):
        pytest.skip("the committed records were remade with gradient norms")
    with pytest.raises(DsrsdError) as e:
        diagnosis.grad_shares(rec)
    one_line(e, rec["run_id"], "grad_norm")
    with pytest.raises(DsrsdError) as e:
        diagnosis.term_curves({"run_id": "x"})
    one_line(e, "record x", "config")


def test_a_fresh_record_uses_its_own_weights_and_has_gradient_shares():
    splits = load_synthetic("default", seed=0, n=300)
    cfg = TrainConfig(method="dsrsd", d=16, epochs=2, seed=0, device="cpu", warmup_epochs=2)
    rec = fit(cfg, splits=splits, progress=False)
    rec = json.loads(json.dumps({k: v for k, v in rec.items() if k != "model"}))  # as on disk
    assert diagnosis.observed(rec)
    c = diagnosis.term_curves(rec)
    old = diagnosis.term_curves({**rec, "history": [  # the same rows, weights recomputed
        {k: v for k, v in h.items() if k != "weights"} for h in rec["history"]]})
    assert c["weight"].tolist() == pytest.approx(old["weight"].tolist())
    shares = diagnosis.grad_shares(rec)
    assert shares.sum(axis=1).tolist() == pytest.approx([1.0, 1.0])
    assert (shares.fillna(0) >= 0).all().all() and "task" in shares.columns
