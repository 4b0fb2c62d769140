"""Per-run test predictions (dsrsd.predictions): written by fit beside the record, they give the
record's test metrics back exactly, every method included, name each prediction's test unit
(student) per dataset, touch no random state, and survive the sweep's clean-up."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fixtures_real import make_oulad_tables, write_oulad_tables
from helpers import SMALL_CORAL, one_line, small_config

from dsrsd.data.synthetic import load_synthetic
from dsrsd.errors import DsrsdError
from dsrsd.metrics import binary_metrics, multiclass_metrics
from dsrsd.predictions import (
    PREDICTIONS_FILE,
    prediction_arrays,
    prediction_units,
    read_predictions,
    write_predictions,
)
from dsrsd.train import fit


@pytest.fixture(scope="module")
def splits():
    return load_synthetic(n=240, missing_rate=0.2)


_cfg = small_config


def _fit_and_read(cfg, splits, out):
    rec = fit(cfg, splits=splits, out=out, progress=False)
    disk = json.loads((out / "metrics.json").read_text())
    assert disk["predictions"] == {"file": PREDICTIONS_FILE, "rows": disk["test"]["n"]}
    assert not list(out.glob(".*.tmp")), "no temporary file left behind"
    return rec, disk, read_predictions(out / PREDICTIONS_FILE)


# A network (float32 probabilities) and both direct-fit methods (their own predict_proba).
METHODS = [("dsrsd", {}), ("gbdt", {"max_iter": 20}),
           ("coral", {**SMALL_CORAL, "protocol": "probe", "probe_fine": 2})]


@pytest.mark.filterwarnings("ignore:lbfgs failed to converge")
@pytest.mark.parametrize("method,params", METHODS, ids=[m for m, _ in METHODS])
def test_predictions_give_back_the_records_test_metrics_exactly(tmp_path, splits, method, params):
    _, disk, z = _fit_and_read(_cfg(method, params), splits, tmp_path)
    assert z["y"].dtype == np.int8 and z["unit"].dtype == np.int32
    assert binary_metrics(z["y"], z["prob"]) == disk["test"]  # every metric, bit for bit
    assert disk["test"]["auc"] == binary_metrics(z["y"], z["prob"])["auc"]
    np.testing.assert_array_equal(z["unit"], np.arange(len(splits.test)))  # synthetic: the row


def test_writing_predictions_touches_no_random_state(tmp_path, splits):
    """The same seeded run with and without ``out``: same record, same RNG states after."""
    cfg = _cfg("dsrsd", epochs=2)
    runs = []
    for out in (None, tmp_path):
        rec = fit(cfg, splits=splits, out=out, progress=False)
        runs.append((rec, torch.get_rng_state(), np.random.get_state()[1].copy()))
    (a, ta, na), (b, tb, nb) = runs
    for key in ("history", "val", "test", "robustness", "best_epoch"):
        assert a[key] == b[key], key
    assert torch.equal(ta, tb) and np.array_equal(na, nb)
    assert "predictions" not in a and b["predictions"]["rows"] == len(splits.test)


def test_oulad_four_classes_store_class_indices_probabilities_and_student_ids(tmp_path_factory):
    from dsrsd.data.oulad import load_oulad, prepare_oulad
    zipped = write_oulad_tables(make_oulad_tables(n_per_pres=30, seed=0),
                                tmp_path_factory.mktemp("oulad") / "anonymisedData.zip")
    root = tmp_path_factory.mktemp("data")
    prepare_oulad(zipped, root, expected_rows=None, log=lambda s: None)
    s = load_oulad(root, label="4class")
    out = tmp_path_factory.mktemp("run")
    _, disk, z = _fit_and_read(_cfg("early", dataset="oulad"), s, out)
    assert z["prob"].shape == (len(s.test), 4) and set(np.unique(z["y"])) <= {0, 1, 2, 3}
    assert multiclass_metrics(z["y"], z["prob"]) == disk["test"]
    np.testing.assert_array_equal(z["unit"], s.test.extras["id_student"].numpy())


@pytest.mark.parametrize("buckets", [0, 2])
def test_knowledge_tracing_steps_belong_to_the_student_of_their_window(tmp_path_factory, akt_dir,
                                                                       buckets):
    from dsrsd.data.assist import load_assist2009, prepare_assist2009
    root = tmp_path_factory.mktemp("assist")
    prepare_assist2009(akt_dir, root, verify=False, log=lambda s: None)
    s = load_assist2009(root, fold=1, max_len=20)
    test = s.test
    expected = np.concatenate([np.full(int(test.y_mask[w].sum()), int(test.extras["user_id"][w]))
                               for w in range(len(test))])
    np.testing.assert_array_equal(prediction_units(test), expected)
    out = tmp_path_factory.mktemp("run")
    # length-bucketed training evaluates trimmed batches: same steps, same order
    _, disk, z = _fit_and_read(_cfg("dkt", dataset="assist2009", length_buckets=buckets), s, out)
    assert binary_metrics(z["y"], z["prob"]) == disk["test"]
    np.testing.assert_array_equal(z["unit"], expected)
    assert len(np.unique(z["unit"])) < len(z["unit"])  # several steps per student


def test_predictions_out_of_the_datas_order_are_refused(splits):
    test = splits.test
    y = test.y.numpy()
    prediction_arrays(test, y, np.full(len(y), 0.5))
    assert not np.array_equal(y[::-1], y)
    for bad_y, bad_p in ((y[::-1].copy(), np.full(len(y), 0.5)), (y, np.full(len(y) - 1, 0.5))):
        with pytest.raises(DsrsdError) as e:
            prediction_arrays(test, bad_y, bad_p)
        one_line(e, "synthetic", "order")


def test_bad_predictions_files_are_one_line_errors(tmp_path):
    with pytest.raises(DsrsdError) as e:
        read_predictions(tmp_path / "none.npz")
    one_line(e, "no predictions file", "none.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DsrsdError) as e:
        read_predictions(tmp_path / "bad.npz")
    one_line(e, "bad.npz", "corrupt")
    np.savez(tmp_path / "part.npz", y=np.zeros(3, np.int8), prob=np.zeros(3))
    with pytest.raises(DsrsdError) as e:
        read_predictions(tmp_path / "part.npz")
    one_line(e, "part.npz", "unit")
    np.savez(tmp_path / "short.npz", y=np.zeros(3, np.int8), prob=np.zeros(3),
             unit=np.zeros(2, np.int32))
    with pytest.raises(DsrsdError) as e:
        read_predictions(tmp_path / "short.npz")
    one_line(e, "short.npz", "length")
    arrays = {"y": np.array([0, 1], np.int8), "prob": np.array([0.2, 0.7], np.float32),
              "unit": np.array([5, 5], np.int32)}
    assert write_predictions(tmp_path / "ok.npz", arrays) == {"file": "ok.npz", "rows": 2}
    back = read_predictions(tmp_path / "ok.npz")
    assert all(np.array_equal(back[k], arrays[k]) and back[k].dtype == arrays[k].dtype
               for k in arrays)


def test_the_sweep_keeps_the_predictions_file_and_deletes_checkpoints(tmp_path):
    from dsrsd import sweep as sw
    grid = {"methods": ["early"], "datasets": [{"name": "synthetic", "data_params": {"n": 200}}],
            "config": {"epochs": 1, "d": 8, "batch_size": 64}}
    run = sw.expand(grid)[0]
    status = sw.run_one(run, str(tmp_path), executor="direct")
    assert status["status"] == "ok", status
    d = tmp_path / run["run_id"]
    assert sorted(p.name for p in d.iterdir()) == ["metrics.json", PREDICTIONS_FILE]
    rec = json.loads((d / "metrics.json").read_text())
    z = read_predictions(d / PREDICTIONS_FILE)
    assert len(z["y"]) == rec["predictions"]["rows"]
    assert binary_metrics(z["y"], z["prob"])["auc"] == rec["test"]["auc"]
