"""Issue 12: a well-posed objective for DSRSD-Net, and a head without the fusion bottleneck.

Property tests of the new loss forms (each term ~0 where it should be, invariant to batch size
and to row grouping) next to the existing Frobenius orthogonality, which is shown *not* to be;
then the new DSRSD-Net options, trained end to end.
"""

import math
import statistics

import pytest
import torch

from dsrsd import losses
from dsrsd.config import TrainConfig
from dsrsd.data.batch import ModalitySpec, MultimodalData, Splits, TaskSpec
from dsrsd.data.synthetic import load_synthetic
from dsrsd.losses import task_loss, total_objective
from dsrsd.model import DSRSDNet, input_keys
from dsrsd.train import fit

K = 64


def _independent(n: int, seed: int, k: int = K) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g), torch.randn(n, k, generator=g)


def _grouped(groups: int, size: int, seed: int, noise: float = 0.3):
    """Independent streams whose rows come in correlated groups (as the steps of one window):
    each row is its group's vector plus a little row noise."""
    g = torch.Generator().manual_seed(seed)
    gid = torch.arange(groups).repeat_interleave(size)
    s = torch.randn(groups, K, generator=g)[gid] + noise * torch.randn(groups * size, K, generator=g)
    p = torch.randn(groups, K, generator=g)[gid] + noise * torch.randn(groups * size, K, generator=g)
    return s, p, gid


def _mean(fn, trials: int = 10) -> float:
    return statistics.mean(float(fn(t)) for t in range(trials))


# ------------------------------------------------------------------ orthogonality


def test_frobenius_orthogonality_depends_on_batch_geometry():
    """The defect (issue 12): MISA's Frobenius form on centred, row-normalised batches is about
    ``N / k^2`` for *independent* streams, so its floor is set by the batch, not by overlap.

    Measured here (k = 64, mean of 10 draws): N = 64: 0.016, N = 512: 0.124, N = 4096: 1.00;
    512 rows in 64 groups of 8 correlated rows (row noise 0.3): 0.87; the same 64 rows each
    repeated 8 times: 1.00 (64 times the 0.016 of the 64 unique rows).
    """
    for n in (64, 512, 4096):
        f = _mean(lambda t, n=n: losses.orthogonality(*_independent(n, t)))
        assert f == pytest.approx(n / K**2, rel=0.1), n
    grouped = _mean(lambda t: losses.orthogonality(*_grouped(64, 8, t)[:2]))
    assert grouped > 0.5  # 0.87: over 50x the 0.016 of 64 independent rows
    s, p = _independent(64, 0)
    base = float(losses.orthogonality(s, p))
    dup = float(losses.orthogonality(s.repeat_interleave(8, 0), p.repeat_interleave(8, 0)))
    assert dup == pytest.approx(64 * base, rel=1e-4)  # not invariant to duplicating rows


def test_xcorr_orthogonality_is_zero_for_independent_streams_at_any_batch_size():
    """Cross-fitted cross-correlation: mean over 10 draws (k = 64) -6e-6 .. 8e-5, spread
    (std) 5e-4 at N = 64, 8e-5 at N = 512, 8e-6 at N = 4096; against 0.016 / 0.124 / 1.0 for the
    Frobenius form above."""
    for n, tol in ((64, 1e-3), (512, 2e-4), (4096, 3e-5)):
        vals = [float(losses.orthogonality_xcorr(*_independent(n, t))) for t in range(10)]
        assert abs(statistics.mean(vals)) < tol, (n, vals)


def test_xcorr_orthogonality_is_invariant_to_row_grouping():
    """Correlated groups (64 windows x 8 rows): ~1e-4 with the window ids (Frobenius: 0.87);
    without them the halves share windows and the floor comes back (0.013). Rows repeated
    inside their groups give exactly the value of the unique rows."""
    with_groups = _mean(lambda t: losses.orthogonality_xcorr(*_grouped(64, 8, t)))
    assert abs(with_groups) < 1e-3
    without = _mean(lambda t: losses.orthogonality_xcorr(*_grouped(64, 8, t)[:2]))
    assert without > 5 * abs(with_groups)
    s, p = _independent(64, 1)
    gid = torch.arange(64).repeat_interleave(8)
    unique = losses.orthogonality_xcorr(s, p)
    dup = losses.orthogonality_xcorr(s[gid], p[gid], gid)
    assert float(dup) == pytest.approx(float(unique), abs=1e-7)
    # Unequal group sizes: still the unique rows' value.
    sizes = torch.randint(1, 12, (64,), generator=torch.Generator().manual_seed(0))
    gid = torch.arange(64).repeat_interleave(sizes)
    assert float(losses.orthogonality_xcorr(s[gid], p[gid], gid)) == pytest.approx(
        float(unique), abs=1e-6)


def test_xcorr_orthogonality_sees_shared_directions():
    """Positive where the streams overlap: ~1 when every private direction follows one shared
    factor, ~1/k when p = s (only the k matching pairs correlate)."""
    g = torch.Generator().manual_seed(0)
    u = torch.randn(512, 1, generator=g)
    s = u + 0.1 * torch.randn(512, K, generator=g)
    p = u + 0.1 * torch.randn(512, K, generator=g)
    assert float(losses.orthogonality_xcorr(s, p)) > 0.9
    s, _ = _independent(512, 2)
    assert float(losses.orthogonality_xcorr(s, s)) == pytest.approx(1 / K, rel=0.05)
    s.requires_grad_(True)
    losses.orthogonality_xcorr(s, 2 * s + 1).backward()
    assert torch.isfinite(s.grad).all()
    # Too few rows for two halves: 0, with a graph.
    one = losses.orthogonality_xcorr(s[:2], s[:2], torch.zeros(2, dtype=torch.long))
    assert float(one.detach()) == 0.0 and one.requires_grad


def test_cos2_orthogonality_is_batch_invariant_but_measures_perpendicularity():
    """Per-sample cos^2 has no batch-size floor (mean over rows) and, pooled per window, no
    grouping effect; but for independent isotropic streams it is 1/k (0.0156 at k = 64), not 0:
    it asks each sample's vectors to be perpendicular, which is stronger than independence.
    Streams in disjoint directions give 0."""
    for n in (64, 512, 4096):
        c = _mean(lambda t, n=n: losses.orthogonality_cos2(*_independent(n, t)))
        assert c == pytest.approx(1 / K, rel=0.1)
    s, p = _independent(64, 3)
    s[:, K // 2:] = 0
    p[:, : K // 2] = 0
    assert float(losses.orthogonality_cos2(s, p)) < 1e-10
    s, p = _independent(64, 4)
    sizes = torch.randint(1, 12, (64,), generator=torch.Generator().manual_seed(1))
    gid = torch.arange(64).repeat_interleave(sizes)
    base = losses.orthogonality_cos2(s, p)
    assert float(losses.orthogonality_cos2_grouped(s, p)) == float(base)
    pooled = losses.orthogonality_cos2_grouped(s[gid], p[gid], gid)
    assert float(pooled) == pytest.approx(float(base), rel=1e-5)
    # Without pooling, unequal windows weigh by their length.
    assert float(losses.orthogonality_cos2(s[gid], p[gid])) != pytest.approx(float(base), rel=1e-3)


# ------------------------------------------------------------------ contrastive


def test_masked_info_nce_removes_the_duplicate_floor():
    """Identical views of 64 items, each row repeated 8 times (tau = 0.1, k = 64): plain InfoNCE
    is stuck near ln 8 = 2.08 (each row must beat its own 7 copies); with the item key masked it
    equals the loss of the 64 unique rows (~0.01), and pooled per group it is the same."""
    z, _ = _independent(64, 5)
    gid = torch.arange(64).repeat_interleave(8)
    unique = float(losses.info_nce(z, z, 0.1))
    plain = float(losses.info_nce(z[gid], z[gid], 0.1))
    masked = float(losses.info_nce_masked(z[gid], z[gid], 0.1, [gid]))
    pooled = float(losses.info_nce_pooled(z[gid], z[gid], 0.1, gid))
    assert unique < 0.05
    assert plain == pytest.approx(math.log(8), abs=0.05)
    # Each row still sees every other item 8 times in its softmax: ln(1 + 8 x rest) vs ln(1 + rest).
    assert masked < 0.1
    assert pooled == pytest.approx(unique, abs=1e-5)


def test_contrastive_variants_reduce_to_info_nce_without_groups():
    a, b = _independent(32, 6, 8)
    base = float(losses.info_nce(a, b, 0.1))
    assert float(losses.info_nce_masked(a, b, 0.1, [])) == pytest.approx(base, abs=1e-6)
    assert float(losses.info_nce_masked(a, b, 0.1, [torch.arange(32)])) == pytest.approx(base, abs=1e-6)
    assert float(losses.info_nce_pooled(a, b, 0.1)) == pytest.approx(base, abs=1e-6)
    # One group only: nothing to contrast.
    assert float(losses.info_nce_pooled(a, b, 0.1, torch.zeros(32, dtype=torch.long))) == 0.0
    a.requires_grad_(True)
    losses.info_nce_masked(a, b, 0.1, [torch.arange(32) // 4]).backward()
    assert torch.isfinite(a.grad).all()


def test_input_keys_identify_equal_rows():
    x = torch.randn(10, 5)
    x[7] = x[2]
    k = input_keys(x)
    assert k[7] == k[2] and len(set(k.tolist())) == 9
    assert torch.equal(input_keys(x[[2, 7]]), k[[2, 7]])  # a row's key ignores the other rows
    ids = torch.tensor([[1, 2, 0], [1, 2, 0], [2, 1, 0]])
    assert input_keys(ids)[0] == input_keys(ids)[1] != input_keys(ids)[2]


# ------------------------------------------------------------------ the model options


def _per_step(n: int = 64, t: int = 6, seed: int = 0) -> Splits:
    """A tiny next-step task whose item modality has only 5 distinct items (repeated rows)."""
    g = torch.Generator().manual_seed(seed)
    specs = [ModalitySpec("hist", "sequence", 3, causal=True), ModalitySpec("item", "tabular", 4)]
    hist = torch.randn(n, t, 3, generator=g)
    items = torch.randn(5, 4, generator=g)
    item = items[torch.randint(0, 5, (n, t), generator=g)]
    lengths = torch.randint(2, t + 1, (n,), generator=g)
    pad = torch.arange(t)[None] < lengths[:, None]
    y = ((hist[..., 0] + item[..., 0] + 0.3 * torch.randn(n, t, generator=g)) > 0).float()
    present = torch.ones(n, 2, dtype=torch.bool)
    present[::5, 1] = False
    data = MultimodalData(specs, TaskSpec("per_step"), {"hist": hist, "item": item}, {"hist": pad},
                          present, y, pad.clone())
    idx = torch.randperm(n, generator=g)
    return Splits(*(data.subset(p) for p in (idx[: n // 2], idx[n // 2: 3 * n // 4], idx[3 * n // 4:])))


NEW_OPTIONS = [{"orthogonality": "xcorr"}, {"orthogonality": "cos2_window"},
               {"contrastive": "masked"}, {"contrastive": "pooled"}, {"task_reads": "streams"},
               {"fusion": "blocks"}, {"recon_rows": "aux", "max_aux_rows": 50},
               {"fusion": "blocks", "orthogonality": "xcorr", "contrastive": "masked",
                "task_reads": "streams", "modality_task_weight": 0.5}]


CASES = [(p, "per_step") for p in NEW_OPTIONS] + [(NEW_OPTIONS[-1], "synthetic")]


@pytest.mark.parametrize("params,data", CASES,
                         ids=[",".join(f"{k}={v}" for k, v in p.items()) + f"-{d}" for p, d in CASES])
def test_new_options_train(params, data):
    sp = load_synthetic(n=300, missing_rate=0.2) if data == "synthetic" else _per_step()
    cfg = TrainConfig(method="dsrsd", method_params=params, epochs=2, batch_size=32, device="cpu")
    rec = fit(cfg, splits=sp, progress=False)
    assert 0.0 <= rec["test"]["auc"] <= 1.0
    for row in rec["history"]:
        assert all(math.isfinite(v) for v in row.values() if isinstance(v, float))
        assert {"align_con", "align_reg", "decor", "orth"} <= set(row)


def test_blocks_fusion_alpha_is_a_distribution_over_present_modalities():
    sp = load_synthetic(n=300, missing_rate=0.3)
    model = DSRSDNet(sp.train.specs, sp.train.task, d=32, k=16, fusion="blocks",
                     modality_task_weight=1.0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    weights = {"task": 1.0, "align_con": 0.1, "align_reg": 0.1, "decor": 0.04, "orth": 0.1,
               "modality_task": 1.0}
    first = last = None
    g = torch.Generator().manual_seed(0)
    for _epoch in range(4):
        for batch in sp.train.batches(64, shuffle=True, generator=g):
            o = model(batch)
            assert "modality_task" in o.aux and torch.isfinite(o.aux["modality_task"])
            loss, _ = total_objective({"task": task_loss(o.logits, batch.y), **o.aux}, weights)
            opt.zero_grad()
            loss.backward()
            opt.step()
            first = float(loss.detach()) if first is None else first
            last = float(loss.detach())
    assert last < first
    model.eval()
    batch = sp.test.batch(torch.arange(len(sp.test)))
    with torch.no_grad():
        o = model(batch)
    alpha = o.info["alpha"]
    assert torch.allclose(alpha.sum(1), torch.ones(len(batch)), atol=1e-6)
    assert (alpha[~batch.present] == 0).all() and (alpha >= 0).all()
    assert o.logits.shape == (len(batch),)
    # The head reads [s_bar; M alpha_1 p_1; ...]: (M + 1) k features.
    assert model.head[0].in_features == (len(sp.train.specs) + 1) * 16


def test_blocks_fusion_contains_early_fusion_on_private_streams():
    """With uniform weights (fusion on equal scores), the private blocks enter the head with
    weight 1 each when all modalities are present: [s_bar; p_1; ...; p_M]."""
    sp = load_synthetic(n=60)
    model = DSRSDNet(sp.train.specs, sp.train.task, d=16, k=8, fusion="blocks").eval()
    for sc in model.score:  # every score the same: alpha uniform
        torch.nn.init.zeros_(sc[-1].weight)
        torch.nn.init.zeros_(sc[-1].bias)
    batch = sp.test.batch(torch.arange(len(sp.test)))
    st = model.streams(batch)
    f, alpha, _ = model.fuse(st["s"], st["p"], st["z"], st["present"])
    m = len(st["p"])
    assert torch.allclose(alpha, torch.full_like(alpha, 1 / m))
    assert torch.allclose(f[:, 8:], torch.cat(st["p"], 1), atol=1e-6)


def test_masked_contrastive_ignores_same_item_rows():
    """On per-step rows with 5 distinct items, the masked InfoNCE is below the plain one for the
    same weights (false negatives removed)."""
    sp = _per_step()
    torch.manual_seed(0)
    plain = DSRSDNet(sp.train.specs, sp.train.task, d=16, k=8)
    torch.manual_seed(0)
    masked = DSRSDNet(sp.train.specs, sp.train.task, d=16, k=8, contrastive="masked")
    masked.load_state_dict(plain.state_dict())
    batch = sp.train.batch(torch.arange(len(sp.train)))
    plain.eval()
    masked.eval()
    with torch.enable_grad():
        a = plain(batch).aux["align_con"]
        b = masked(batch).aux["align_con"]
    assert float(b.detach()) < float(a.detach())
    # Same weights, same forward: the task logits do not depend on the loss form.
    with torch.no_grad():
        assert torch.equal(plain(batch).logits, masked(batch).logits)


def test_new_option_values_are_checked():
    sp = load_synthetic(n=60)
    for bad in ({"orthogonality": "frob"}, {"contrastive": "infonce"}, {"task_reads": "z"},
                {"recon_rows": "some"}, {"modality_task_weight": -1.0}):
        with pytest.raises(Exception, match="|".join(bad)):
            DSRSDNet(sp.train.specs, sp.train.task, **bad)


def test_default_model_builds_no_new_modules():
    """Defaults unchanged: the default model's parameters are exactly the book's."""
    sp = load_synthetic(n=60)
    names = {n.split(".")[0] for n, _ in DSRSDNet(sp.train.specs, sp.train.task).named_parameters()}
    assert names == {"encoders", "adapters", "shared", "back", "private", "align", "score",
                     "private_mix", "gate", "head", "decoders"}


@pytest.mark.parametrize("data", ["synthetic", "per_step"])
def test_batched_streams_match_the_default_path(data):
    """``batched_streams=True`` is the same model (same parameters, checkpoints interchange):
    forward values and gradients agree to float rounding (not bit for bit)."""
    sp = load_synthetic(n=200, missing_rate=0.2) if data == "synthetic" else _per_step()
    torch.manual_seed(0)
    a = DSRSDNet(sp.train.specs, sp.train.task, d=32, k=16, dropout=0.0)
    b = DSRSDNet(sp.train.specs, sp.train.task, d=32, k=16, dropout=0.0, batched_streams=True)
    b.load_state_dict(a.state_dict())
    batch = sp.train.batch(torch.arange(len(sp.train)))
    oa, ob = a(batch), b(batch)
    assert torch.allclose(oa.logits, ob.logits, atol=1e-5)
    assert torch.allclose(oa.info["alpha"], ob.info["alpha"], atol=1e-5)
    for k in oa.aux:
        assert torch.allclose(oa.aux[k], ob.aux[k], atol=1e-5), k
    (oa.logits.sum() + sum(oa.aux.values())).backward()
    (ob.logits.sum() + sum(ob.aux.values())).backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        if pa.grad is not None:
            assert torch.allclose(pa.grad, pb.grad, atol=1e-4, rtol=1e-4), name


def test_modality_task_heads_enter_the_objective_through_fit():
    """The pre-weighted ``modality_task`` term is added with outer weight 1 (its default), so
    ``modality_task_weight`` changes training; weight 0 in ``cfg.weights`` switches it off."""
    sp = load_synthetic(n=300)
    base = {"method": "dsrsd", "epochs": 2, "batch_size": 64, "device": "cpu", "d": 16}
    on = fit(TrainConfig(**base, method_params={"modality_task_weight": 0.5}), splits=sp,
             progress=False)
    row = on["history"][0]
    assert row["weights"]["modality_task"] == 1.0 and row["weighted"]["modality_task"] > 0
    assert row["grad_norm"]["modality_task"] > 0
    from dsrsd.config import DEFAULT_WEIGHTS
    off = fit(TrainConfig(**base, method_params={"modality_task_weight": 0.5},
                          weights={**DEFAULT_WEIGHTS, "modality_task": 0.0}), splits=sp,
              progress=False)
    assert off["history"][0]["grad_norm"]["modality_task"] == 0.0
    assert off["test"] != on["test"]


# ------------------------------------------------------------------ ablation switches


@pytest.mark.parametrize("batched", [False, True])
def test_no_residual_private_stream_reads_the_encoding(batched):
    """``residual=False``: p_m = P_p(h_m), with no back-projection built; with the
    back-projection zeroed, the default model computes the same streams."""
    sp = load_synthetic(n=80)
    torch.manual_seed(0)
    ref = DSRSDNet(sp.train.specs, sp.train.task, d=16, k=8, dropout=0.0, batched_streams=batched)
    abl = DSRSDNet(sp.train.specs, sp.train.task, d=16, k=8, dropout=0.0, batched_streams=batched,
                   residual=False)
    assert not hasattr(abl, "back")
    for lin in ref.back:
        torch.nn.init.zeros_(lin.weight)  # h - 0 * s = h
    abl.load_state_dict({k: v for k, v in ref.state_dict().items() if not k.startswith("back.")})
    batch = sp.test.batch(torch.arange(len(sp.test)))
    with torch.no_grad():
        a, b = ref.eval().streams(batch), abl.eval().streams(batch)
    for key in ("s", "p", "z"):
        for x, y in zip(a[key], b[key], strict=True):
            assert torch.allclose(x, y, atol=1e-6), key
    # ... and the back-projection matters in the default model: nonzero W changes p, not s.
    torch.manual_seed(1)
    for lin in ref.back:
        torch.nn.init.normal_(lin.weight)
    with torch.no_grad():
        c = ref.streams(batch)
    assert all(torch.equal(x, y) for x, y in zip(a["s"], c["s"], strict=True))
    assert not any(torch.allclose(x, y, atol=1e-3) for x, y in zip(a["p"], c["p"], strict=True))


@pytest.mark.parametrize("batched", [False, True])
def test_no_alignment_head_aligns_the_shared_stream_itself(batched):
    sp = load_synthetic(n=80)
    abl = DSRSDNet(sp.train.specs, sp.train.task, d=16, k=8, align_head=False,
                   batched_streams=batched, batched_aux=batched).eval()
    assert not hasattr(abl, "align")
    batch = sp.test.batch(torch.arange(len(sp.test)))
    with torch.no_grad():
        st = abl.streams(batch)
    assert all(torch.equal(z, s) for z, s in zip(st["z"], st["s"], strict=True))
    with torch.enable_grad():
        aux = abl(batch).aux
    assert {"align_con", "align_reg", "decor", "orth"} <= set(aux)
    assert all(torch.isfinite(v) for v in aux.values())


@pytest.mark.parametrize("params", [{"residual": False}, {"align_head": False}])
def test_ablation_switches_train(params):
    """Every parameter the ablations build gets a gradient (DDP needs that) and fit runs."""
    sp = load_synthetic(n=200, missing_rate=0.2)
    model = DSRSDNet(sp.train.specs, sp.train.task, d=16, k=8, **params)
    batch = sp.train.batch(torch.arange(len(sp.train)))
    o = model(batch)
    (task_loss(o.logits, batch.y) + sum(o.aux.values())).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []
    cfg = TrainConfig(method="dsrsd", method_params=params, epochs=1, batch_size=64, device="cpu")
    assert 0.0 <= fit(cfg, splits=sp, progress=False)["test"]["auc"] <= 1.0
