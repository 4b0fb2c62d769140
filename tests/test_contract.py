"""The method contract (dsrsd.base), the one train step (dsrsd.step) and the direct-fit
routines (dsrsd.fitting): the trainer calls only the declared interface, the step it trains
with is the step everyone else runs, and seeded CPU runs of every method are bit-identical."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from helpers import SMALL_CORAL, small_config
from torch import nn

from dsrsd.base import DirectFit, FusionModel, aux_row_sample, keep_first_valid, masked_mean
from dsrsd.data.synthetic import load_synthetic
from dsrsd.fitting import FITTERS
from dsrsd.registry import build_model
from dsrsd.step import make_optimizer, supervised_loss, train_epoch
from dsrsd.train import fit, set_seed

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def splits():
    return load_synthetic(n=240, missing_rate=0.2)


def _cfg(method, params=None, **kw):
    return small_config(method, params, **{"epochs": 2, "modality_dropout": 0.2, **kw})


def test_trainer_discovers_nothing_by_hasattr():
    for name in ("train.py", "step.py", "fitting.py"):
        tree = ast.parse((ROOT / "dsrsd" / name).read_text())
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
                 and getattr(n.func, "id", None) in ("hasattr", "getattr")]
        assert not calls, f"dsrsd/{name} probes the model with hasattr/getattr"


def test_direct_fit_methods_are_not_modules_and_have_a_fitter(splits):
    tr = splits.train
    for method, params in [("gbdt", {}), ("coral", {**SMALL_CORAL, "protocol": "probe"})]:
        model = build_model(_cfg(method, params), tr.specs, tr.task, tr)
        assert isinstance(model, DirectFit) and not isinstance(model, nn.Module)
        assert any(c in FITTERS for c in type(model).__mro__)
    assert all(issubclass(c, DirectFit) for c in FITTERS)


# Several methods, missing modalities and modality dropout on: every random draw of the step.
DETERMINISM = [("dsrsd", {}), ("early", {}), ("late", {}), ("unimodal", {}), ("misa", {}),
               ("coattention", {}), ("coral", SMALL_CORAL),
               ("clear", {"mode": "dynamic", "base": "early", "k": 2}),
               ("coral", {**SMALL_CORAL, "protocol": "probe", "probe_fine": 2}),
               ("gbdt", {"max_iter": 20})]


@pytest.mark.filterwarnings("ignore:lbfgs failed to converge")
@pytest.mark.parametrize("method,params", DETERMINISM,
                         ids=[f"{m}-{p.get('protocol', p.get('mode', ''))}" for m, p in DETERMINISM])
def test_seeded_cpu_runs_are_bit_identical_for_every_method(splits, method, params):
    a, b = (fit(_cfg(method, params, epochs=1), splits=splits, progress=False) for _ in range(2))
    for key in ("history", "val", "test", "robustness", "n_params", "best_epoch"):
        assert a[key] == b[key], key
    na, nb = (getattr(r["model"], "net", r["model"]) for r in (a, b))
    if isinstance(na, nn.Module):
        for (ka, ta), (kb, tb) in zip(na.state_dict().items(), nb.state_dict().items(),
                                      strict=True):
            assert ka == kb and torch.equal(ta, tb), ka


@pytest.mark.parametrize("method", ["dsrsd", "misa"])
def test_the_trainers_step_is_the_one_train_step(splits, method):
    """One epoch by hand with dsrsd.step (as the benchmark and COrAL's pre-training run it)
    ends with exactly the weights fit() trains."""
    cfg = _cfg(method, epochs=1, warmup_epochs=0)
    rec = fit(cfg, splits=splits, progress=False)
    set_seed(cfg.seed)
    tr = splits.train
    model = build_model(cfg, tr.specs, tr.task, tr)
    opt = make_optimizer(model, cfg)
    model.on_epoch_start(0, tr, torch.device("cpu"))
    loss_fn = supervised_loss(cfg.weights, 0, {})
    steps = list(train_epoch(model, tr, opt, loss_fn, cfg, 0, torch.device("cpu")))
    assert len(steps) == -(-len(tr) // cfg.batch_size)
    for pa, pb in zip(rec["model"].parameters(), model.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_shared_pieces():
    x = torch.arange(12.0).reshape(2, 3, 2)
    valid = torch.tensor([[True, True, False], [False, False, False]])
    torch.testing.assert_close(masked_mean(x, valid), torch.tensor([[1.0, 2.0], [0.0, 0.0]]))
    kv = keep_first_valid(valid)
    assert kv.tolist() == [[True, True, False], [True, False, False]]
    assert keep_first_valid(torch.tensor([[False, True]]), always=True).tolist() == [[True, True]]
    assert aux_row_sample(10, 10, torch.device("cpu")) is None
    rows = aux_row_sample(10, 4, torch.device("cpu"))
    assert rows.shape == (4,) and len(set(rows.tolist())) == 4


def test_fusion_models_declare_the_hooks(splits):
    tr = splits.train
    model = build_model(_cfg("early"), tr.specs, tr.task, tr)
    assert isinstance(model, FusionModel) and model.batch_gather is None
    t = torch.randn(3, 2)
    assert model.gather_batch(t) is t
    model.batch_gather = lambda u: torch.cat([u, u])
    assert model.gather_batch(t).shape == (6, 2)
    assert model.on_epoch_start(0, tr, torch.device("cpu")) is None


def test_cost_benchmark_times_the_one_step_interleaved(tmp_path):
    import csv
    import subprocess
    import sys
    out = tmp_path / "cost.csv"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "methods_cost.py"),
                        "--datasets", "synthetic", "--sizes", "32x8", "--methods", "early,dsrsd",
                        "--rounds", "2", "--number", "1", "--warmup", "1", "--no-memory",
                        "--threads", "1", "--out", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = list(csv.DictReader(out.open()))
    assert [x["method"] for x in rows] == ["early", "dsrsd"]
    assert all(x["timing"] == "interleaved" and float(x["step_ms_median"]) > 0 for x in rows)
    assert float(rows[0]["ratio_to_early"]) == 1.0
