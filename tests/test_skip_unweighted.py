"""DSRSD-Net's ``skip_unweighted`` (issue 13 item 3) and the exact input-key hash: speed
without a change to what is trained.

With ``skip_unweighted`` the auxiliary terms weighed 0 are not computed, but the auxiliary row
sample is still drawn, so seeded training (dropout and modality dropout on, so every later
random draw depends on the stream) ends with the same weights, bit for bit, and logs the same
task loss, total and weighted terms; only the unweighted terms are missing from the log.
"""

from __future__ import annotations

import pytest
import torch

from dsrsd import model as dsrsd_model
from dsrsd.config import DEFAULT_WEIGHTS
from dsrsd.data.synthetic import load_synthetic
from dsrsd.model import AUX_TERMS, DSRSDNet, input_keys
from dsrsd.step import supervised_loss, train_step
from tests.test_speed_options import GRID, _per_step

ZERO = {t: 0.0 for t in ("align_con", "align_reg", "decor", "orth", "recon")}
CONFIGS = {
    "book": {},
    "grid_batched": {**GRID, "batched_aux": True, "recon_rows": "aux"},
    "barlow_ref": {**GRID, "decorrelation": "barlow", "recon_rows": "aux"},
    "fast": {**GRID, "batched_aux": True, "batched_streams": True, "recon_rows": "aux"},
    "modality_task": {**GRID, "batched_aux": True, "modality_task_weight": 0.3},
}
WEIGHTS = {"all_zero": ZERO,  # assist_full's choice
           "recon_zero": {"align_con": 0.1, "align_reg": 0.1, "decor": 0.04, "orth": 0.1,
                          "recon": 0.0},  # oulad_full's choice
           "one_term": {**ZERO, "orth": 1.0}}


def _train(data, params: dict, weights: dict, skip: bool, steps: int = 3):
    torch.manual_seed(0)
    net = DSRSDNet(data.specs, data.task, d=16, k=8, dropout=0.1, modality_dropout=0.2,
                   max_aux_rows=12, skip_unweighted=skip, **params)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    loss_fn = supervised_loss({**DEFAULT_WEIGHTS, **weights}, epoch=1, warmup={"orth": 5})
    net.train()
    logs = []
    for i in range(steps):
        batch = data.batch(torch.arange(i * 16, (i + 1) * 16))
        logs.append(train_step(net, batch, opt, loss_fn, torch.device("cpu"), grad_clip=1.0))
    return net, logs, torch.get_rng_state()


@pytest.fixture(scope="module", params=["per_sample", "per_step"])
def data(request):
    return _per_step().train if request.param == "per_step" else load_synthetic(
        n=160, missing_rate=0.25).train


@pytest.mark.parametrize("params", list(CONFIGS.values()), ids=list(CONFIGS))
@pytest.mark.parametrize("weights", list(WEIGHTS.values()), ids=list(WEIGHTS))
def test_skipping_unweighted_terms_trains_the_same_weights(data, params, weights):
    ref, ref_logs, ref_rng = _train(data, params, weights, skip=False)
    fast, fast_logs, fast_rng = _train(data, params, weights, skip=True)
    assert torch.equal(ref_rng, fast_rng)
    for k, v in ref.state_dict().items():
        assert torch.equal(v, fast.state_dict()[k]), k
    weighed = {t for t, w in weights.items() if w}
    for a, b in zip(ref_logs, fast_logs, strict=True):
        assert set(b) == {t for t in a if t in weighed or t in ("task", "total", "modality_task")}
        for t in b:
            assert torch.equal(a[t], b[t]), t


def test_terms_are_all_computed_by_default_and_before_weights_are_told():
    data = load_synthetic(n=64).train
    net = DSRSDNet(data.specs, data.task, d=16, k=8, skip_unweighted=True)
    assert net.computed_terms() == AUX_TERMS
    net.set_term_weights({**DEFAULT_WEIGHTS, **ZERO})
    assert net.computed_terms() == frozenset({"modality_task"})  # pre-weighted in the model
    net.set_term_weights(ZERO)  # a missing weight is 0, as in the objective
    assert net.computed_terms() == frozenset()
    off = DSRSDNet(data.specs, data.task, d=16, k=8)
    off.set_term_weights(ZERO)
    assert off.computed_terms() == AUX_TERMS
    net.eval()
    with torch.no_grad():
        assert net(data.batch(torch.arange(8))).aux == {}


@pytest.mark.parametrize("x", [torch.randn(50, 7), torch.randn(20, 5, 3).double(),
                               torch.randint(0, 40, (30, 4, 2)), torch.randn(6, 0)])
def test_input_keys_are_the_wrapping_int64_hash(x):
    flat = x.reshape(x.shape[0], -1)
    if flat.is_floating_point():
        flat = flat.float().contiguous().view(torch.int32)
    g = torch.Generator().manual_seed(dsrsd_model._HASH_SEED)
    coef = torch.randint(1, 2**62, (flat.shape[1],), generator=g)
    assert torch.equal(input_keys(x), (flat.long() * coef).sum(1))
