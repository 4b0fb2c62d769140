"""Every method of the registry: trains, honours presence masks, registers and trains its tensors.

Small synthetic data (``load_synthetic(n=800)``), ``d = 32`` and a few epochs keep the whole file
well under 90 s on 2 CPU cores.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from dsrsd.base import DirectFit, FusionModel
from dsrsd.baselines import LateLogitFusion, Unimodal
from dsrsd.clear import cross_covariance
from dsrsd.config import TrainConfig
from dsrsd.coral import COrAL, COrALProbe, nt_xent
from dsrsd.data.batch import Batch, ModalitySpec, MultimodalData, Splits, TaskSpec
from dsrsd.data.synthetic import load_synthetic
from dsrsd.errors import DsrsdError
from dsrsd.registry import METHODS, build_model
from dsrsd.step import supervised_loss
from dsrsd.train import fit

D = 32
SMALL_CORAL = {"proj_hidden": 64, "proj_dim": 32, "tab_tokens": 4, "heads": 4}

# (method, method_params) of every neural variant checked for masks and gradients.
NEURAL = [
    ("early", {}),
    ("dsrsd", {}),
    ("unimodal", {}),
    ("late", {}),
    ("late_logit", {}),
    ("coattention", {}),
    ("coral", {**SMALL_CORAL, "ortho": "cos2"}),
    ("coral", {**SMALL_CORAL, "ortho": "relu_cos", "protocol": "probe"}),
    ("clear", {"mode": "static", "base": "early", "k": 2}),
    ("clear", {"mode": "dynamic", "base": "late", "k": 2}),
    ("clear", {"mode": "dynamic", "base": "dsrsd", "k": 2}),
    ("misa", {}),
]


def _id(p) -> str:
    m, mp = p
    extra = ",".join(f"{k}={v}" for k, v in mp.items() if k in ("ortho", "protocol", "mode", "base"))
    return f"{m}[{extra}]" if extra else m


@pytest.fixture(scope="module")
def splits() -> Splits:
    return load_synthetic(n=800)


def _cfg(method: str, params: dict, **kw) -> TrainConfig:
    base = dict(method=method, method_params=copy.deepcopy(params), d=D, epochs=4,
                batch_size=128, lr=3e-3, patience=3, device="cpu")
    return TrainConfig(**{**base, **kw})


def _batch_with_missing(data: MultimodalData, n: int = 64) -> Batch:
    """``n`` rows where every pattern of missingness occurs (each row keeps >= 1 modality)."""
    b = data.batch(torch.arange(n))
    present = torch.ones_like(b.present)
    m = present.shape[1]
    for r in range(n):
        if r % 4 < m and r % 4 != 3:
            present[r, r % 4] = False
        if r % 8 == 7:  # only the last modality
            present[r] = False
            present[r, m - 1] = True
    b.present = present
    return b


def _net(model) -> FusionModel:
    """The torch network behind a model (a direct-fit method holds one in ``net``)."""
    return model.net if isinstance(model, DirectFit) else model


def _logits(model, batch: Batch) -> torch.Tensor:
    net = _net(model)
    if isinstance(model, COrALProbe):
        return net.features(batch)
    return net(batch).logits


# --------------------------------------------------------------------------- training


FIT = [
    ("unimodal", {"modality": "m0"}),
    ("late", {}),
    ("late_logit", {}),
    ("coattention", {}),
    ("gbdt", {"max_iter": 100}),
    ("coral", {**SMALL_CORAL, "ortho": "cos2"}),
    ("coral", {**SMALL_CORAL, "ortho": "relu_cos", "protocol": "probe", "probe_fine": 5}),
    ("clear", {"mode": "static", "base": "early", "k": 2}),
    ("clear", {"mode": "dynamic", "base": "late", "k": 2}),
    ("misa", {}),
]


@pytest.mark.parametrize("method,params", FIT, ids=[_id(p) for p in FIT])
def test_method_trains_and_beats_chance(splits, method, params):
    rec = fit(_cfg(method, params), splits=splits, progress=False)
    assert rec["test"]["auc"] > 0.6, rec["test"]
    assert rec["n_params"] == 0 if method == "gbdt" else rec["n_params"] > 0
    if method == "coral" and params.get("protocol") != "probe":
        assert rec["config"]["weights"]["coral"] == 1.0  # default weight recorded
        assert {"coral", "coral_shared", "coral_unique", "coral_orth"} <= set(rec["history"][0])


def test_registry_has_every_method():
    assert {"unimodal", "late", "late_logit", "coattention", "gbdt", "coral", "clear",
            "misa", "dkt", "akt"} <= set(METHODS)


def test_unknown_method_params_are_clear_errors(splits):
    tr = splits.train
    with pytest.raises(DsrsdError, match="does not take"):
        build_model(_cfg("late_logit", {"bogus": 1}), tr.specs, tr.task, tr)
    with pytest.raises(DsrsdError, match="unknown modality"):
        build_model(_cfg("unimodal", {"modality": "nope"}), tr.specs, tr.task, tr)
    with pytest.raises(DsrsdError, match="protocol"):
        build_model(_cfg("coral", {"protocol": "both"}), tr.specs, tr.task, tr)
    with pytest.raises(DsrsdError, match="pair"):
        build_model(_cfg("clear", {"pair": ["m0", "m0"]}), tr.specs, tr.task, tr)
    both_k = build_model(_cfg("clear", {"base": "dsrsd", "k": 2, "base_params": {"k": 16}}),
                         tr.specs, tr.task, tr)
    assert (both_k.rank, both_k.k) == (2, 16)  # CLEAR's rank vs DSRSD-Net's stream size


# --------------------------------------------------------------------------- parameters


@pytest.mark.parametrize("method,params", NEURAL, ids=[_id(p) for p in NEURAL])
def test_learnable_tensors_registered_and_trained(splits, method, params):
    torch.manual_seed(0)
    cfg = _cfg(method, params)
    tr = splits.train
    model = _net(build_model(cfg, tr.specs, tr.task, tr))
    model.on_epoch_start(0, tr, torch.device("cpu"))
    # 1. every tensor that requires grad is a registered parameter; buffers never do.
    found, stray = set(), []
    for name, mod in model.named_modules():
        for attr, v in vars(mod).items():
            if attr == "_parameters":
                found |= {id(p) for p in v.values() if p is not None and p.requires_grad}
            elif attr == "_buffers":
                assert not any(b is not None and b.requires_grad for b in v.values()), name
            elif isinstance(v, torch.Tensor) and v.requires_grad:
                stray.append((f"{name}.{attr}", v))
            elif isinstance(v, (list, tuple, dict)):  # e.g. a GRU's _flat_weights (aliases)
                items = v.values() if isinstance(v, dict) else v
                stray += [(f"{name}.{attr}", t) for t in items
                          if isinstance(t, torch.Tensor) and t.requires_grad]
    stray = [n for n, t in stray if id(t) not in found]
    assert not stray, f"unregistered learnable tensors: {stray}"
    params_ = list(model.parameters())
    assert found == {id(p) for p in params_}
    # 2. one backward reaches every parameter with a non-zero gradient.
    model.train()
    batch = _batch_with_missing(tr, 96)
    # the loss function the one train step uses (the probe protocol pre-trains on its own)
    loss_fn = type(model).ssl_loss if params.get("protocol") == "probe" else \
        supervised_loss(cfg.weights)
    loss, _ = loss_fn(model, batch)
    loss.backward()
    dead = [n for n, p in model.named_parameters()
            if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not dead, f"parameters without gradient: {dead}"


# --------------------------------------------------------------------------- masks


@pytest.mark.parametrize("method,params", NEURAL, ids=[_id(p) for p in NEURAL])
def test_missing_modalities_are_ignored(splits, method, params):
    torch.manual_seed(0)
    tr = splits.train
    model = build_model(_cfg(method, params), tr.specs, tr.task, tr)
    _net(model).on_epoch_start(0, tr, torch.device("cpu"))
    _net(model).eval()
    batch = _batch_with_missing(splits.val, 96)
    with torch.no_grad():
        ref = _logits(model, batch)
        changed = copy.copy(batch)
        changed.x = dict(batch.x)
        for m, s in enumerate(tr.specs):
            miss = ~batch.present[:, m]
            x = batch.x[s.name].clone()
            x[miss] = 10 * torch.randn_like(x[miss])
            changed.x[s.name] = x
        torch.testing.assert_close(_logits(model, changed), ref)
        # ... and the test is sensitive: changing a present modality does change the output.
        changed.x = dict(batch.x)
        changed.x["m0"] = batch.x["m0"] + torch.randn_like(batch.x["m0"])
        assert not torch.allclose(_logits(model, changed), ref)


def test_gbdt_missing_modalities_are_nan(splits):
    from dsrsd.gbdt import flatten_features
    b = _batch_with_missing(splits.val, 32)
    data = MultimodalData(splits.val.specs, splits.val.task, b.x, b.pad, b.present, b.y)
    x, y, names = flatten_features(data)
    assert x.shape == (32, len(names)) and y.shape == (32,)
    for m, s in enumerate(data.specs):
        cols = [i for i, n in enumerate(names) if n.startswith(f"{s.name}:")]
        block = x[:, cols]
        assert np.isnan(block[~b.present[:, m].numpy()]).all()
        assert not np.isnan(block[b.present[:, m].numpy()]).any()


# --------------------------------------------------------------------------- late_logit


def test_late_logit_is_mean_of_unimodal_heads(splits):
    tr = splits.train
    torch.manual_seed(0)
    model = build_model(_cfg("late_logit", {}), tr.specs, tr.task, tr)
    assert isinstance(model, LateLogitFusion)
    model.eval()
    batch = _batch_with_missing(splits.val, 64)
    unis = []
    for s in tr.specs:
        uni = Unimodal(tr.specs, tr.task, d=D, modality=s.name)
        uni.encoders[s.name].load_state_dict(model.encoders[s.name].state_dict())
        uni.head.load_state_dict(model.heads[s.name].state_dict())
        unis.append(uni.eval())
    with torch.no_grad():
        got = model(batch).logits
        each = torch.stack([u(batch).logits for u in unis], 1)
        pres = batch.present.float()
        want = (each * pres).sum(1) / pres.sum(1)
    torch.testing.assert_close(got, want)


# --------------------------------------------------------------------------- CLEAR


def _svals(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(cross_covariance(a, b))


@pytest.mark.parametrize("mode", ["static", "dynamic"])
@pytest.mark.parametrize("lam", [1.0, 0.5])
def test_clear_projection_removes_top_k(splits, mode, lam):
    tr = splits.train
    k = 3
    model = build_model(_cfg("clear", {"mode": mode, "k": k, "lam": lam}), tr.specs, tr.task, tr)
    if mode == "dynamic":
        model.on_epoch_start(0, tr, torch.device("cpu"))
        raw = model.encoder_features(tr, project=False)
        proj = model.encoder_features(tr, project=True)
    else:
        raw = model.static_features(tr)
        proj = (model._project(raw[0], model.P_a, model.mu_a),
                model._project(raw[1], model.P_b, model.mu_b))
    for p in (model.P_a, model.P_b):
        assert not p.requires_grad
        torch.testing.assert_close(p, p.T)
        if lam == 1.0:  # an orthogonal projector: idempotent
            torch.testing.assert_close(p @ p, p, atol=1e-5, rtol=1e-5)
    assert "P_a" in dict(model.named_buffers()) and "P_a" not in dict(model.named_parameters())
    s = _svals(*raw)
    s_proj = _svals(*proj)
    want = torch.cat([s[:k] * (1 - lam) ** 2, s[k:]]).sort(descending=True).values
    torch.testing.assert_close(s_proj, want, atol=1e-4 * float(s[0]), rtol=1e-3)
    if lam == 1.0:
        assert float(s_proj[-k:].max()) < 1e-4 * float(s[0])  # top-k gone...
        torch.testing.assert_close(s_proj[:-k], s[k:], atol=1e-4 * float(s[0]), rtol=1e-3)


def test_clear_static_rejects_token_inputs():
    specs = [ModalitySpec("a", "tabular", 8, vocab=20), ModalitySpec("b", "tabular", 4)]
    n = 40
    data = MultimodalData(specs, TaskSpec("binary"),
                          {"a": torch.randint(0, 20, (n, 3)), "b": torch.randn(n, 4)}, {},
                          torch.ones(n, 2, dtype=torch.bool), torch.randint(0, 2, (n,)).float())
    with pytest.raises(DsrsdError, match="dynamic"):
        build_model(_cfg("clear", {"mode": "static"}), specs, data.task, data)


# --------------------------------------------------------------------------- COrAL


def test_coral_views_mask_complementary_groups(splits):
    tr = splits.train
    torch.manual_seed(0)
    model = COrAL(tr.specs, tr.task, d=D, **SMALL_CORAL)
    batch = tr.batch(torch.arange(256))
    _, sv, _, _ = model.path_tokens(batch)
    keep1, keep2, group = model.view_masks(sv)
    assert bool(group.any(1).all()) and bool((~group).any(1).all())  # both views mask something
    masked, total = 0, 0
    for i, (k1, k2) in enumerate(zip(keep1, keep2, strict=True)):
        g = group[:, i]
        assert bool(k2[g].all()) and bool(k1[~g].all())  # the other view leaves it intact
        assert not bool((~k1 & ~k2).any())  # never masked in both views
        masked += int((~k1[g]).sum())
        total += int(k1[g].numel())
    assert 0.7 < masked / total < 0.8  # ratio 0.75


def test_coral_two_modalities_is_the_papers_scheme():
    sp = load_synthetic(n=200, kinds=("tabular", "sequence"), dims=(8, 4), scales=(1.0, 1.0),
                        nuisance=(0, 0))
    tr = sp.train
    model = COrAL(tr.specs, tr.task, d=D, **SMALL_CORAL)
    _, sv, _, _ = model.path_tokens(tr.batch(torch.arange(100)))
    _, _, group = model.view_masks(sv)
    # Per sample, view 1 masks exactly one modality and view 2 the other.
    assert torch.equal(group[:, 0], ~group[:, 1])


def test_nt_xent_prefers_matching_views():
    torch.manual_seed(0)
    a = torch.randn(32, 16)
    assert float(nt_xent(a, a + 0.01 * torch.randn_like(a))) < float(nt_xent(a, torch.randn(32, 16)))


# --------------------------------------------------------------------------- per-step


def _per_step_splits(n: int = 96, t: int = 6, seed: int = 0) -> Splits:
    """A tiny next-step task: a causal history sequence and a per-step item vector."""
    g = torch.Generator().manual_seed(seed)
    specs = [ModalitySpec("hist", "sequence", 3, causal=True), ModalitySpec("item", "tabular", 4)]
    hist = torch.randn(n, t, 3, generator=g)
    item = torch.randn(n, t, 4, generator=g)
    lengths = torch.randint(2, t + 1, (n,), generator=g)
    pad = torch.arange(t)[None] < lengths[:, None]
    prev = torch.cat([torch.zeros(n, 1), hist[:, :-1, 0]], 1)  # the previous step's signal
    y = ((prev + item[..., 0] + 0.3 * torch.randn(n, t, generator=g)) > 0).float()
    y_mask = pad.clone()
    present = torch.ones(n, 2, dtype=torch.bool)
    present[::5, 1] = False
    data = MultimodalData(specs, TaskSpec("per_step"), {"hist": hist, "item": item},
                          {"hist": pad}, present, y, y_mask)
    idx = torch.randperm(n, generator=g)
    parts = idx[: n // 2], idx[n // 2: 3 * n // 4], idx[3 * n // 4:]
    return Splits(*(data.subset(p) for p in parts))


PER_STEP = [("coattention", {}), ("dsrsd", {}), ("late_logit", {}),
            ("coral", {**SMALL_CORAL}), ("misa", {}), ("clear", {"mode": "dynamic", "k": 2})]


@pytest.mark.parametrize("method,params", PER_STEP, ids=[_id(p) for p in PER_STEP])
def test_per_step_is_causal(method, params):
    sp = _per_step_splits()
    tr = sp.train
    torch.manual_seed(0)
    model = build_model(_cfg(method, params), tr.specs, tr.task, tr)
    model.on_epoch_start(0, tr, torch.device("cpu"))
    model.eval()
    batch = tr.batch(torch.arange(len(tr)))
    t0 = 3
    with torch.no_grad():
        ref = model(batch).logits
        assert ref.shape == (int(batch.y_mask.sum()),) and bool(torch.isfinite(ref).all())
        future = copy.copy(batch)
        future.x = {k: v.clone() for k, v in batch.x.items()}
        for v in future.x.values():
            v[:, t0:] += 5 * torch.randn_like(v[:, t0:])
        got = model(future).logits
    early = (torch.arange(batch.y_mask.shape[1])[None] < t0).expand_as(batch.y_mask)[batch.y_mask]
    torch.testing.assert_close(got[early], ref[early])  # steps < t0 never see steps >= t0
    assert not torch.allclose(got[~early], ref[~early])


@pytest.mark.parametrize("method", ["coattention", "gbdt"])
def test_per_step_fit(method):
    params = {"max_iter": 30, "min_samples_leaf": 5} if method == "gbdt" else {}
    rec = fit(_cfg(method, params, epochs=2), splits=_per_step_splits(), progress=False)
    assert np.isfinite(rec["test"]["brier"])
    assert rec["test"]["n"] == int(_per_step_splits().test.y_mask.sum())


def test_coral_probe_rejects_per_step():
    tr = _per_step_splits().train
    with pytest.raises(DsrsdError, match="per-step"):
        build_model(_cfg("coral", {"protocol": "probe"}), tr.specs, tr.task, tr)


def test_models_are_fusion_models(splits):
    tr = splits.train
    for method, params in NEURAL:
        model = build_model(_cfg(method, params), tr.specs, tr.task, tr)
        assert isinstance(_net(model), FusionModel)
