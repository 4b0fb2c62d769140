"""Checks on the real OULAD and ASSISTments 2009 files (skipped when they are not on this machine).

The data folder is ``$DSRSD_SHARED_DATA`` or ``../shared/data`` beside the checkout (``oulad_csv/anonymisedData.zip``
and ``assist2009_akt/``). Both are prepared through the command-line scripts into a temporary
data dir; nothing is written next to the data or into the repository.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import prepare_real
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from dsrsd.data import assist
from dsrsd.data.assist import kt_features_flat, load_assist2009, merge_runs
from dsrsd.data.oulad import OULAD_ROWS, load_oulad, oulad_features_flat
from dsrsd.data.paths import read_json

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def oulad_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("real")
    print(f"OULAD prepared in {prepare_real('oulad', d):.1f} s")
    return d


@pytest.fixture(scope="module")
def assist_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("real")
    print(f"ASSISTments prepared in {prepare_real('assist2009', d):.1f} s")
    return d


def lr_auc(xtr, ytr, xte, yte) -> float:
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=500))
    return roc_auc_score(yte, model.fit(xtr, ytr).predict_proba(xte)[:, 1])


# ------------------------------------------------------------------------------------ OULAD


def test_oulad_counts(oulad_dir):
    assert read_json(oulad_dir / "oulad" / "manifest.json")["rows"] == OULAD_ROWS
    s = load_oulad(oulad_dir, cutoff=0.5)
    c = s.info["counts"]
    assert c["train"]["registrations"] + c["val"]["registrations"] == 10642
    assert c["test"]["registrations"] == 13963
    assert s.info["removed"]["unregistered_before_cutoff"] == 7986
    assert abs(c["val"]["registrations"] / 10642 - 0.15) < 0.01
    assert abs(c["train"]["positive_rate"] - 0.382) < 0.01
    assert abs(c["test"]["positive_rate"] - 0.369) < 0.005
    assert sum(c["test"]["class_counts"]) == 13963
    assert not set(s.train.extras["id_student"].tolist()) & set(s.val.extras["id_student"].tolist())
    assert not set(c["train"]["presentations"]) & set(c["test"]["presentations"])
    assert s.train.x["behaviour"].shape[1:] == (24, 20)
    assert s.train.x["assessments"].shape[1:] == (8, 9)


def test_oulad_cross_domain_counts(oulad_dir):
    a = load_oulad(oulad_dir, split="cross_domain", direction="stem2soc")
    b = load_oulad(oulad_dir, split="cross_domain", direction="soc2stem")
    assert len(a.train) + len(a.val) == len(b.test) == 15678
    assert len(b.train) + len(b.val) == len(a.test) == 8927


def test_oulad_target_half_counts(oulad_dir):
    """The cross-domain runs at full budget and their in-domain references share a test half."""
    want = {"stem2soc": (4467, 4394, 13327 + 2351, 3791 + 669),
            "soc2stem": (7825, 6969, 7588 + 1339, 6676 + 1177)}
    for direction, (n_test, n_students, n_cross, n_ref) in want.items():
        cross = load_oulad(oulad_dir, split="cross_domain_half", direction=direction)
        ref = load_oulad(oulad_dir, split="in_domain_half", direction=direction)
        for s in (cross, ref):
            assert s.info["counts"]["test"]["registrations"] == n_test
            assert s.info["counts"]["test"]["students"] == n_students
        assert torch.equal(cross.test.extras["id_student"], ref.test.extras["id_student"])
        assert len(cross.train) + len(cross.val) == n_cross
        assert len(ref.train) + len(ref.val) == n_ref
        assert ref.info["students_in_train_and_test"] == 0


def test_oulad_baseline_auc(oulad_dir):
    s = load_oulad(oulad_dir, cutoff=0.5)
    auc = lr_auc(*oulad_features_flat(s.train), *oulad_features_flat(s.test))
    print(f"OULAD temporal c=0.5 logistic regression test AUC {auc:.4f}")
    assert 0.80 < auc < 0.95


# ------------------------------------------------------------------------------ ASSISTments


def test_assist_counts(assist_dir):
    m = read_json(assist_dir / "assist2009" / "manifest.json")
    assert m["verified"] and m["kind"] == "akt"
    assert sum(m["rows"][f"test{k}"] for k in range(1, 6)) == 325589
    assert all(m["rows"][f"valid{k}"] == m["rows"][f"test{k % 5 + 1}"] for k in range(1, 6))
    s = load_assist2009(assist_dir, fold=1)
    c = s.info["counts"]
    assert sum(v["students"] for v in c.values()) == 4151
    assert sum(v["rows"] for v in c.values()) == 325637
    assert s.info["n_skills"] == 110 and s.train.specs[0].vocab == 221
    for part, d in (("train", s.train), ("val", s.val), ("test", s.test)):
        v = c[part]
        assert v["scored"] == int(d.y_mask.sum()) == v["interactions"] - v["students"]
        assert v["interactions"] < v["rows"]  # multi-skill runs were merged
        assert 0.62 < v["positive_rate"] < 0.70
    assert abs(s.info["train_base_rate"] - 0.665) < 0.01
    for fold in range(1, 6):
        f = load_assist2009(assist_dir, fold=fold)
        users = [set(getattr(f, p).extras["user_id"].tolist()) for p in ("train", "val", "test")]
        assert not (users[0] & users[1] or users[0] & users[2] or users[1] & users[2])


def test_assist_baseline_auc(assist_dir):
    s = load_assist2009(assist_dir, fold=1)
    auc = lr_auc(*kt_features_flat(s.train), *kt_features_flat(s.test))
    print(f"ASSISTments fold 1 logistic regression test AUC {auc:.4f}")
    assert 0.74 < auc < 0.80


def test_assist_coin_flip_fold1(assist_dir):
    """Protocol B's leakage detector on the real fold 1: one flip per interaction."""
    parts, names = assist._load_parts(assist_dir / "assist2009", 1)
    rng = np.random.default_rng(0)
    base = float(np.concatenate([p["resp"] for p in parts.values()]).mean())
    for p in parts.values():
        flips = rng.random(int(merge_runs(p)["row_interaction"].max()) + 1) < base
        p["resp"] = flips[merge_runs(p)["row_interaction"]].astype(np.int8)
    clean = assist._to_splits(assist._build(parts, names, 1, 200, 32), 32)
    auc = lr_auc(*kt_features_flat(clean.train), *kt_features_flat(clean.test))
    leaky = assist._to_splits(assist._build(parts, names, 1, 200, 32, merge=False), 32)
    auc_leaky = lr_auc(*kt_features_flat(leaky.train), *kt_features_flat(leaky.test))
    print(f"coin flip fold 1: merged AUC {auc:.4f}, without merging {auc_leaky:.4f}")
    assert abs(auc - 0.5) <= 0.02
    assert auc_leaky > 0.55
