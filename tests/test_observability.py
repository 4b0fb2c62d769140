"""Issue 12: per-epoch diagnostics in every record (train AUC, alpha, gate, gradient norms per
weighted term), the warm-up of every auxiliary term, and model selection after the warm-up."""

import math
from dataclasses import replace

import pytest
import torch
from sklearn.metrics import roc_auc_score

from dsrsd.base import Output
from dsrsd.config import DEFAULT_WEIGHTS, TrainConfig
from dsrsd.data.batch import Batch, Splits, TaskSpec
from dsrsd.data.synthetic import load_synthetic
from dsrsd.errors import DsrsdError
from dsrsd.losses import task_loss, warmup_factor
from dsrsd.model import DSRSDNet
from dsrsd.observe import EpochObserver
from dsrsd.step import make_optimizer, supervised_loss, train_epoch
from dsrsd.train import fit

AUX = ("align_con", "align_reg", "decor", "orth", "recon")


@pytest.fixture(scope="module")
def synthetic():
    return load_synthetic(n=300)


# ------------------------------------------------------------------ the observer itself


def _batch(y: torch.Tensor, y_mask: torch.Tensor | None = None) -> Batch:
    n = y.shape[0]
    return Batch({}, {}, torch.ones(n, 1, dtype=torch.bool), y, y_mask)


def test_train_auc_is_the_auc_of_the_epochs_predictions():
    """Binary: scored steps only (y_mask); multiclass: one-vs-rest macro AUC, as validation."""
    g = torch.Generator().manual_seed(0)
    obs = EpochObserver(["a"], "per_step", {})
    ys, ps = [], []
    for _ in range(3):
        y = (torch.rand(8, 5, generator=g) > 0.5).float()
        mask = torch.rand(8, 5, generator=g) > 0.3
        logits = torch.randn(int(mask.sum()), generator=g)
        obs.forward(Output(logits), _batch(y, mask), {})
        ys.append(y[mask])
        ps.append(logits)
    want = roc_auc_score(torch.cat(ys).numpy(), torch.sigmoid(torch.cat(ps)).numpy())
    assert obs.summary()["train_auc"] == pytest.approx(want, abs=1e-12)

    obs = EpochObserver(["a"], "multiclass", {})
    y = torch.arange(30) % 3
    logits = torch.randn(30, 3, generator=g)
    obs.forward(Output(logits), _batch(y), {})
    want = roc_auc_score(y.numpy(), torch.softmax(logits, -1).numpy(), multi_class="ovr")
    assert obs.summary()["train_auc"] == pytest.approx(want, abs=1e-12)


def test_alpha_is_averaged_over_present_modalities_only():
    obs = EpochObserver(["a", "b"], "binary", {})
    alpha = torch.tensor([[0.2, 0.8], [1.0, 0.0], [0.6, 0.4]])
    present = torch.tensor([[True, True], [True, False], [True, True]])
    info = {"alpha": alpha, "present": present, "gate": torch.tensor([0.1, 0.2, 0.6])}
    obs.forward(Output(torch.zeros(3), info=info), _batch(torch.tensor([0.0, 1.0, 1.0])), {})
    s = obs.summary()
    assert s["alpha"] == pytest.approx({"a": 0.6, "b": 0.6})  # b: (0.8 + 0.4) / 2, not / 3
    assert s["gate"] == pytest.approx(0.3)


def _one_epoch(sp, observer, epoch: int = 0):
    torch.manual_seed(0)
    cfg = TrainConfig(d=16, batch_size=64, seed=0)
    model = DSRSDNet(sp.train.specs, sp.train.task, d=16, k=8)
    opt = make_optimizer(model, cfg)
    loss_fn = supervised_loss(cfg.weights, epoch, cfg.warmup(), observer=observer)
    steps = list(train_epoch(model, sp.train, opt, loss_fn, cfg, epoch, torch.device("cpu"),
                             observer=observer))
    return model, steps


def test_observing_does_not_change_training(synthetic):
    """The extra backward passes of the gradient norms neither draw random numbers nor touch
    ``.grad``: the trained weights and every logged term are bit-identical."""
    plain, steps_a = _one_epoch(synthetic, None)
    eff = {t: DEFAULT_WEIGHTS[t] * warmup_factor(0, 5 if t in ("decor", "orth") else 0)
           for t in AUX}
    watched, steps_b = _one_epoch(synthetic, EpochObserver(["m0", "m1", "m2"], "binary", eff))
    for pa, pb in zip(plain.parameters(), watched.parameters(), strict=True):
        assert torch.equal(pa, pb)
    for a, b in zip(steps_a, steps_b, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_grad_norm_is_each_weighted_terms_gradient(synthetic):
    """On the first batch: the norm of the gradient of (weight x term), computed here by its
    own backward on the same model and batch, and the total norm that clipping returns."""
    eff = {"align_con": 1.0, "align_reg": 0.0, "decor": 0.5, "orth": 2.0, "recon": 1.0}
    obs = EpochObserver(["m0", "m1", "m2"], "binary", eff)
    torch.manual_seed(0)
    model = DSRSDNet(synthetic.train.specs, synthetic.train.task, d=16, k=8, dropout=0.0)
    batch = next(synthetic.train.batches(64))
    o = model(batch)
    terms = {"task": task_loss(o.logits, batch.y), **o.aux}
    obs.forward(o, batch, terms)
    obs.before_backward(model)
    params = list(model.parameters())
    for name, value in terms.items():
        w = 1.0 if name == "task" else eff[name]
        if w == 0:
            assert obs.grad_norm[name] == 0.0
            continue
        grads = torch.autograd.grad(w * value, params, retain_graph=True, allow_unused=True)
        want = torch.sqrt(sum(g.pow(2).sum() for g in grads if g is not None))
        assert obs.grad_norm[name] == pytest.approx(float(want), rel=1e-5)
    loss = terms["task"] + sum(eff[t] * terms[t] for t in eff)
    loss.backward()
    obs.after_backward(model)
    clipped = torch.nn.utils.clip_grad_norm_(params, 1.0)
    assert obs.grad_norm["total"] == pytest.approx(float(clipped), rel=1e-6)


# ------------------------------------------------------------------ in the record


def _multiclass(sp: Splits) -> Splits:
    """The synthetic data with 3 classes (from the binary target and a feature's sign)."""
    def relabel(d):
        y = d.y.long() + (d.x["m0"][:, 0] > 0).long()
        return replace(d, task=TaskSpec("multiclass", 3), y=y)
    return Splits(relabel(sp.train), relabel(sp.val), relabel(sp.test), sp.info)


@pytest.mark.parametrize("method,task", [("dsrsd", "binary"), ("early", "binary"),
                                         ("dsrsd", "multiclass")])
def test_every_history_row_carries_the_diagnostics(synthetic, method, task):
    sp = synthetic if task == "binary" else _multiclass(synthetic)
    rec = fit(TrainConfig(method=method, epochs=2, d=16, seed=0), splits=sp, progress=False)
    for row in rec["history"]:
        assert 0.0 <= row["train_auc"] <= 1.0
        norms = row["grad_norm"]
        assert {"task", "total"} <= set(norms) and all(math.isfinite(v) and v >= 0
                                                       for v in norms.values())
        assert set(row["weighted"]) == {"task", *row["weights"]}
        # The weighted terms add up to the logged objective (epoch means of the same steps).
        assert sum(row["weighted"].values()) == pytest.approx(row["total"], rel=1e-5)
        if method == "early":
            assert "alpha" not in row and "gate" not in row and set(norms) == {"task", "total"}
            continue
        assert set(AUX) <= set(norms) and norms["total"] > 0
        assert list(row["alpha"]) == sp.train.names
        # No modality is missing here, so the mean weights form a distribution.
        assert sum(row["alpha"].values()) == pytest.approx(1.0, abs=1e-5)
        assert 0.0 < row["gate"] < 1.0
    assert rec["selection"] == {"warmup_terms": ["decor", "orth"], "warmup_epochs": 5,
                                "after_warmup": False, "first_eligible_epoch": 0}


# ------------------------------------------------------------------ warm-up and selection


def test_defaults_keep_the_hash_and_the_numbers(synthetic):
    """Hash and numbers of the default policy, recorded before the new options existed."""
    assert TrainConfig().hash() == "a3be559ea526"
    assert TrainConfig(warmup_terms="reg", select_after_warmup=False).hash() == "a3be559ea526"
    assert TrainConfig(warmup_terms="all").hash() != "a3be559ea526"
    assert TrainConfig(select_after_warmup=True).hash() != "a3be559ea526"
    rec = fit(TrainConfig(epochs=2, d=16, seed=3), splits=synthetic, progress=False)
    before = [(0.7737429141998291, 14.382378578186035, 0.5020576131687242),
              (0.7144049406051636, 16.466041564941406, 0.5781893004115226)]
    for row, (task, total, val) in zip(rec["history"], before, strict=True):
        assert (row["task"], row["total"]) == pytest.approx((task, total), rel=1e-4)
        assert row["val_auc"] == pytest.approx(val, abs=1e-6)
    assert rec["best_epoch"] == 1 and rec["test"]["auc"] == pytest.approx(0.7695473251028806,
                                                                          abs=1e-6)


@pytest.mark.parametrize("terms", ["reg", "all"])
def test_warmup_ramps_the_chosen_terms(synthetic, terms):
    cfg = TrainConfig(epochs=3, d=16, seed=0, warmup_epochs=3, warmup_terms=terms)
    rec = fit(cfg, splits=synthetic, progress=False)
    ramped = ("decor", "orth") if terms == "reg" else AUX
    for e, row in enumerate(rec["history"]):
        for t in AUX:
            factor = (e + 1) / 3 if t in ramped else 1.0
            assert row["weights"][t] == pytest.approx(DEFAULT_WEIGHTS[t] * factor, abs=1e-12)
    assert rec["selection"]["warmup_terms"] == sorted(DEFAULT_WEIGHTS if terms == "all"
                                                      else ("decor", "orth"))


@pytest.fixture(scope="module")
def early_peak(synthetic) -> Splits:
    """Validation labels flipped: the better the model learns, the lower its validation AUC, so
    validation peaks at epoch 0 (measured: 0.45, 0.35, 0.31, 0.28, 0.25, 0.24)."""
    sp = synthetic
    return Splits(sp.train, replace(sp.val, y=1 - sp.val.y), sp.test, sp.info)


def _peak_cfg(after: bool) -> TrainConfig:
    return TrainConfig(epochs=7, d=16, warmup_epochs=3, patience=2, seed=0,
                       select_after_warmup=after)


def test_selection_waits_for_the_end_of_the_warmup(early_peak):
    old = fit(_peak_cfg(False), splits=early_peak, progress=False)
    new = fit(_peak_cfg(True), splits=early_peak, progress=False)
    assert old["best_epoch"] < 3  # the premise: the default policy keeps a warm-up epoch
    assert new["best_epoch"] >= 3 and new["selection"]["first_eligible_epoch"] == 3
    # Patience counts only after the warm-up, so the restricted run trains longer.
    assert new["epochs_run"] >= 3 + 2 > old["epochs_run"]
    val = [r["val_auc"] for r in new["history"]]
    assert new["best_epoch"] == max(range(3, len(val)), key=lambda e: (val[e], -e))
    # The policy changes the choice, never the training: the shared epochs are identical.
    assert new["history"][:old["epochs_run"]] == old["history"]


def test_a_run_inside_the_warmup_keeps_its_last_epoch(synthetic, tmp_path):
    cfg = TrainConfig(epochs=2, d=16, seed=0, warmup_epochs=5, select_after_warmup=True)
    rec = fit(cfg, splits=synthetic, out=tmp_path, progress=False)
    assert rec["best_epoch"] == 1 and rec["epochs_run"] == 2
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == 1


def test_resume_with_the_new_options(synthetic, tmp_path, monkeypatch):
    """Interrupted inside the warm-up (no checkpoint chosen yet), resumed: the same record."""
    import dsrsd.train as train_mod

    cfg = TrainConfig(epochs=4, d=16, seed=0, warmup_epochs=2, warmup_terms="all",
                      select_after_warmup=True)
    whole = fit(cfg, splits=synthetic, progress=False)
    calls, evaluate = [0], train_mod.evaluate

    def interrupted(*a, **kw):
        calls[0] += 1
        if calls[0] == 2:  # validation of epoch 1: epoch 0's last.pt is on disk
            raise KeyboardInterrupt
        return evaluate(*a, **kw)

    monkeypatch.setattr(train_mod, "evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, splits=synthetic, out=tmp_path, progress=False)
    monkeypatch.setattr(train_mod, "evaluate", evaluate)
    earlier_s = torch.load(tmp_path / "last.pt", weights_only=False)["wall_s"]
    resumed = fit(cfg, splits=synthetic, out=tmp_path, resume=True, progress=False)
    assert resumed["history"] == whole["history"]
    assert resumed["best_epoch"] == whole["best_epoch"] >= 2
    assert resumed["test"] == whole["test"]
    # the record says it was resumed, and its wall time counts the killed process's epoch too
    assert "resumed" not in whole
    assert resumed["resumed"] == {"from_epoch": 1, "earlier_wall_s": earlier_s}
    assert earlier_s > 0 and resumed["wall_time_s"] > earlier_s


@pytest.mark.parametrize("key,value,message", [
    ("warmup_terms", "some", "warmup_terms must be one of reg, all, got 'some'"),
    ("warmup_terms", 1, "warmup_terms must be a string, got 1"),
    ("select_after_warmup", "yes", "select_after_warmup must be true or false, got 'yes'"),
    ("select_after_warmup", 1, "select_after_warmup must be true or false, got 1")])
def test_bad_policy_values_are_one_line_errors(key, value, message):
    with pytest.raises(DsrsdError) as e:
        TrainConfig.from_dict({key: value})
    assert str(e.value) == message
