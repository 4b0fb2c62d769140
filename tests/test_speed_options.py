"""DSRSD-Net's fast paths (issue 13 item 4) compute what the paths they replace compute.

``batched_streams`` (stacked per-modality projections, the adapter composed into the shared
projector) and ``batched_aux`` (every modality pair in one call on masked rows, ``z`` only on
the sampled rows) are the same model with the same parameters: forward values and gradients
agree with the reference path to float rounding, on per-sample data with missing modalities
and on per-step data, for every loss form they support, with and without the row sample.
The batched loss functions equal the per-pair functions on the selected rows.
"""

from __future__ import annotations

import pytest
import torch

from dsrsd import losses
from dsrsd.data.batch import ModalitySpec, MultimodalData, Splits, TaskSpec
from dsrsd.data.synthetic import load_synthetic
from dsrsd.errors import DsrsdError
from dsrsd.model import DSRSDNet

GRID = {"fusion": "blocks", "orthogonality": "xcorr", "contrastive": "masked",
        "task_reads": "streams"}


def _per_step(n: int = 48, t: int = 6, seed: int = 0) -> Splits:
    """A tiny next-step task: a causal history, an item modality with 5 distinct items (repeated
    rows, so the masked InfoNCE has false negatives to drop) missing in every 5th window, and a
    second float modality."""
    g = torch.Generator().manual_seed(seed)
    specs = [ModalitySpec("hist", "sequence", 3, causal=True), ModalitySpec("item", "tabular", 4),
             ModalitySpec("stats", "tabular", 2)]
    hist = torch.randn(n, t, 3, generator=g)
    item = torch.randn(5, 4, generator=g)[torch.randint(0, 5, (n, t), generator=g)]
    stats = torch.randn(n, t, 2, generator=g)
    pad = torch.arange(t)[None] < torch.randint(2, t + 1, (n,), generator=g)[:, None]
    y = ((hist[..., 0] + item[..., 0] + 0.3 * torch.randn(n, t, generator=g)) > 0).float()
    present = torch.ones(n, 3, dtype=torch.bool)
    present[::5, 1] = False
    present[1::7, 2] = False
    data = MultimodalData(specs, TaskSpec("per_step"), {"hist": hist, "item": item, "stats": stats},
                          {"hist": pad}, present, y, pad.clone())
    return Splits(data, data, data)


@pytest.fixture(scope="module", params=["per_sample", "per_step"])
def data(request) -> MultimodalData:
    if request.param == "per_step":
        return _per_step().train
    return load_synthetic(n=160, missing_rate=0.25).train


def _pair(data: MultimodalData, **params) -> tuple[DSRSDNet, DSRSDNet]:
    """The reference model and the fast one, same weights (dropout off: same forward)."""
    torch.manual_seed(0)
    ref = DSRSDNet(data.specs, data.task, d=16, k=8, dropout=0.0, **params)
    fast = DSRSDNet(data.specs, data.task, d=16, k=8, dropout=0.0, batched_streams=True,
                    batched_aux=True, **params)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def _run(model: DSRSDNet, batch) -> tuple[dict, dict]:
    torch.manual_seed(1)  # the same aux row sample for both models
    o = model(batch)
    (o.logits.float().sum() + sum(o.aux.values())).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {"logits": o.logits.detach(), "alpha": o.info["alpha"], **{
        k: v.detach() for k, v in o.aux.items()}}, grads


FORMS = [GRID, {**GRID, "max_aux_rows": 40, "recon_rows": "aux"}, {},
         {"orthogonality": "cos2_window", "regression": "mse", "task_reads": "streams"},
         {"orthogonality": "cos2", "contrastive": "masked", "fusion": "mean"},
         {"orthogonality": "xcorr", "fusion": "concat", "max_aux_rows": 30},
         # The lean streams (one Linear per stream, a narrow fusion scorer), on both fusions
         # whose stacked path differs: blocks and gate (with missing modalities).
         {**GRID, "stream_layers": 1, "score_hidden": 5},
         {"stream_layers": 1, "score_hidden": 3, "fusion": "gate"}]


@pytest.mark.parametrize("params", FORMS, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items())
                         or "defaults")
def test_fast_paths_equal_the_reference(data, params):
    ref, fast = _pair(data, **params)
    batch = data.batch(torch.arange(len(data)))
    (out_r, grad_r), (out_f, grad_f) = _run(ref, batch), _run(fast, batch)
    assert out_r.keys() == out_f.keys()
    for k in out_r:
        assert torch.allclose(out_r[k], out_f[k], atol=1e-5, rtol=1e-4), k
    assert grad_r.keys() == grad_f.keys()
    for name in grad_r:
        assert torch.allclose(grad_r[name], grad_f[name], atol=1e-5, rtol=1e-3), name


@pytest.mark.parametrize("streams,aux", [(True, False), (False, True)])
def test_each_fast_path_alone_equals_the_reference(data, streams, aux):
    torch.manual_seed(0)
    ref = DSRSDNet(data.specs, data.task, d=16, k=8, dropout=0.0, **GRID)
    one = DSRSDNet(data.specs, data.task, d=16, k=8, dropout=0.0, batched_streams=streams,
                   batched_aux=aux, **GRID)
    one.load_state_dict(ref.state_dict())
    batch = data.batch(torch.arange(len(data)))
    (out_r, grad_r), (out_o, grad_o) = _run(ref, batch), _run(one, batch)
    for k in out_r:
        assert torch.allclose(out_r[k], out_o[k], atol=1e-5, rtol=1e-4), k
    for name in grad_r:
        assert torch.allclose(grad_r[name], grad_o[name], atol=1e-5, rtol=1e-3), name


def test_streams_still_return_z_on_every_row(data):
    """Probes read ``streams(batch)["z"]``: the batched path gives the reference's values."""
    ref, fast = _pair(data, **GRID)
    batch = data.batch(torch.arange(len(data)))
    with torch.no_grad():
        zr, zf = ref.streams(batch)["z"], fast.streams(batch)["z"]
    for a, b in zip(zr, zf, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


# ------------------------------------------------------------------ the batched loss functions


def _rows(seed: int, p: int = 3, n: int = 40, k: int = 6):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(p, n, k, generator=g), torch.randn(p, n, k, generator=g)
    valid = torch.rand(p, n, generator=g) > 0.3
    groups = torch.randint(0, 9, (n,), generator=g)
    return a, b, valid, groups


@pytest.mark.parametrize("seed,temperature", [(0, 0.2), (1, 0.07), (2, 0.02)])
def test_batched_losses_equal_the_per_pair_functions(seed, temperature):
    """(T = 0.02 takes InfoNCE's logsumexp branch, the others its shifted-exp branch.)"""
    a, b, valid, groups = _rows(seed)
    keys = torch.randint(0, 4, (a.shape[1],), generator=torch.Generator().manual_seed(seed))
    same = (keys[:, None] == keys[None, :]).expand(a.shape[0], -1, -1)
    batched = {
        "info_nce": losses.info_nce_pairs(a, b, valid, temperature),
        "info_nce_masked": losses.info_nce_pairs(a, b, valid, temperature, same),
        "decorrelation": losses.decorrelation_rows(a, valid),
        "xcorr": losses.orthogonality_xcorr_rows(a, b, valid, groups),
        "xcorr_rows": losses.orthogonality_xcorr_rows(a, b, valid),
        "cos2": losses.orthogonality_cos2_rows(a, b, valid),
        "cos2_window": losses.orthogonality_cos2_rows(a, b, valid, groups),
        "frobenius": losses.orthogonality_rows(a, b, valid)}
    for i in range(a.shape[0]):
        v = valid[i]
        x, y, g = a[i][v], b[i][v], groups[v]
        ref = {"info_nce": losses.info_nce(x, y, temperature),
               "info_nce_masked": losses.info_nce_masked(x, y, temperature, [keys[v]]),
               "decorrelation": losses.decorrelation(x),
               "xcorr": losses.orthogonality_xcorr(x, y, g),
               "xcorr_rows": losses.orthogonality_xcorr(x, y),
               "cos2": losses.orthogonality_cos2(x, y),
               "cos2_window": losses.orthogonality_cos2_grouped(x, y, g),
               "frobenius": losses.orthogonality(x, y)}
        for name, value in ref.items():
            assert float(batched[name][i]) == pytest.approx(float(value), rel=1e-4, abs=1e-6), name


def test_batched_xcorr_is_zero_when_a_half_has_under_two_rows():
    a, b, valid, _ = _rows(0)
    groups = torch.zeros(a.shape[1], dtype=torch.long)  # one group: the odd half is empty
    out = losses.orthogonality_xcorr_rows(a, b, valid, groups)
    assert torch.equal(out, torch.zeros(a.shape[0]))


def test_info_nce_pairs_ignores_rows_outside_valid():
    """Changing invalid rows changes nothing: they are neither anchors nor negatives."""
    a, b, valid, _ = _rows(2)
    a2, b2 = a.clone(), b.clone()
    a2[~valid], b2[~valid] = 100.0, -7.0
    assert torch.allclose(losses.info_nce_pairs(a, b, valid), losses.info_nce_pairs(a2, b2, valid))


def test_pairs_and_modalities_are_skipped_as_in_the_reference():
    """A pair (or modality) with under 2 present rows is left out of the means, as the loop
    skips it: here one modality is present in a single sample."""
    data = load_synthetic(n=80).train
    data.present = data.present.clone()
    data.present[:, 1] = False
    data.present[0, 1] = True
    batch = data.batch(torch.arange(len(data)))
    ref, fast = _pair(data, **GRID)
    (out_r, _), (out_f, _) = _run(ref, batch), _run(fast, batch)
    for k in out_r:
        assert torch.allclose(out_r[k], out_f[k], atol=1e-5, rtol=1e-4), k


# ------------------------------------------------------------------ options


@pytest.mark.parametrize("bad,match", [({"contrastive": "pooled"}, "batched_aux"),
                                       ({"decorrelation": "barlow"}, "batched_aux"),
                                       ({"max_aux_rows": 1}, "max_aux_rows"),
                                       ({"stream_layers": 3}, "stream_layers"),
                                       ({"score_hidden": 0}, "score_hidden")])
def test_fast_options_are_checked(bad, match):
    data = load_synthetic(n=60).train
    with pytest.raises(DsrsdError, match=match) as e:
        DSRSDNet(data.specs, data.task, batched_aux=True, **bad)
    assert "\n" not in str(e.value)


def test_fast_model_has_the_reference_parameters():
    """Same modules and shapes: checkpoints interchange between the paths."""
    data = load_synthetic(n=60).train
    ref = DSRSDNet(data.specs, data.task, **GRID)
    fast = DSRSDNet(data.specs, data.task, batched_streams=True, batched_aux=True, **GRID)
    assert [(n, p.shape) for n, p in ref.named_parameters()] == \
        [(n, p.shape) for n, p in fast.named_parameters()]


def test_lean_streams_are_smaller_and_default_unchanged():
    """``stream_layers=1`` makes every stream one ``d -> k`` Linear and ``score_hidden`` sets the
    scorer's width; the defaults build the book's network (the MLP streams, a scorer of width k)."""
    data = load_synthetic(n=60).train
    d, k = 32, 8
    default = DSRSDNet(data.specs, data.task, d=d, k=k)
    explicit = DSRSDNet(data.specs, data.task, d=d, k=k, stream_layers=2, score_hidden=k)
    lean = DSRSDNet(data.specs, data.task, d=d, k=k, stream_layers=1, score_hidden=4)
    assert [(n, p.shape) for n, p in default.named_parameters()] == \
        [(n, p.shape) for n, p in explicit.named_parameters()]
    assert isinstance(lean.shared, torch.nn.Linear) and lean.shared.weight.shape == (k, d)
    assert all(isinstance(f, torch.nn.Linear) for f in lean.private)
    assert lean.score[0][0].weight.shape == (4, 2 * k)
    # Saved: the MLP's first Linear and LayerNorm (d^2 + 3d) in the shared and each private
    # stream; per modality, the scorer's 2k^2 + 2k + 1 parameters become 2k*4 + 4 + 4 + 1.
    m = len(data.specs)
    saved = (m + 1) * (d * d + 3 * d) + m * ((2 * k * k + 2 * k + 1) - (8 * k + 9))
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    assert count(default) - count(lean) == saved


def test_fast_paths_train_as_the_reference():
    """Two seeded epochs through the trainer: the fast paths follow the reference's trajectory
    (float rounding apart: same row samples, same dropout draws)."""
    from dsrsd.config import TrainConfig
    from dsrsd.train import fit

    sp = load_synthetic(n=300, missing_rate=0.2)
    base = {"method": "dsrsd", "epochs": 2, "batch_size": 64, "d": 16, "device": "cpu",
            "modality_dropout": 0.15, "seed": 3}
    params = {**GRID, "max_aux_rows": 40, "recon_rows": "aux"}
    runs = [fit(TrainConfig(**base, method_params={**params, **fast}), splits=sp, progress=False)
            for fast in ({}, {"batched_streams": True, "batched_aux": True})]
    ref, fast = (r["history"][-1] for r in runs)
    assert fast["val_auc"] == pytest.approx(ref["val_auc"], abs=0.01)
    assert runs[1]["test"]["auc"] == pytest.approx(runs[0]["test"]["auc"], abs=0.01)
