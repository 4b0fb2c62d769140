"""Item-aware knowledge-tracing encoders, the ``dkt``/``akt`` methods and GBDT's KT features.

Causality: for every method that trains on KT data, the prediction at step t ignores every
response at or after t and every item after t, and does react to an earlier response (so the
test can fail) and to the item at t.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from helpers import SMALL_CORAL

from dsrsd.base import DirectFit
from dsrsd.config import TrainConfig
from dsrsd.data.batch import Batch, ModalitySpec, MultimodalData, Splits, TaskSpec
from dsrsd.data.kt_features import history_features
from dsrsd.data.synthetic import load_synthetic
from dsrsd.errors import DsrsdError
from dsrsd.fitting import fit_direct
from dsrsd.kt_encoders import KTAttentionEncoder, KTEmbedding, KTRecurrentEncoder
from dsrsd.registry import build_model
from dsrsd.train import fit

D = 16
N_SKILLS, N_PROBLEMS, T = 6, 30, 10


def kt_splits(n: int = 240, seed: int = 0) -> Splits:
    """Generated students: each response repeats the previous one with probability 0.8, shifted
    by a per-skill bias; ``history`` in the kt layout, plus content and item statistics."""
    g = torch.Generator().manual_seed(seed)
    skills = torch.randint(1, N_SKILLS + 1, (n, T, 2), generator=g)
    skills[..., 1] *= torch.rand(n, T, generator=g) < 0.3  # some items have two skills
    problem = torch.randint(1, N_PROBLEMS + 1, (n, T), generator=g)
    bias = torch.linspace(-1.5, 1.5, N_SKILLS + 1)
    resp = torch.zeros(n, T, dtype=torch.long)
    prev = (torch.rand(n, generator=g) < 0.6).float()
    for t in range(T):
        logit = 2.5 * (2 * prev - 1) + bias[skills[:, t, 0]]
        prev = (torch.rand(n, generator=g) < torch.sigmoid(logit)).float()
        resp[:, t] = prev.long()
    lengths = torch.randint(3, T + 1, (n,), generator=g)
    pad = torch.arange(T)[None] < lengths[:, None]
    hist = torch.cat([skills, problem.unsqueeze(-1), resp.unsqueeze(-1)], -1) * pad.unsqueeze(-1)
    x = {"history": hist, "content": torch.randn(n, T, 4, generator=g) * pad.unsqueeze(-1),
         "item_stats": torch.randn(n, T, 3, generator=g) * pad.unsqueeze(-1)}
    specs = [ModalitySpec("history", "sequence", 8, vocab=2 * N_SKILLS + 1, causal=True,
                          layout="kt", items=N_PROBLEMS + 1),
             ModalitySpec("content", "tabular", 4), ModalitySpec("item_stats", "tabular", 3)]
    y_mask = pad & (torch.arange(T)[None] > 0)
    data = MultimodalData(specs, TaskSpec("per_step"), x, {"history": pad},
                          torch.ones(n, 3, dtype=torch.bool), resp.float() * pad, y_mask)
    a, b = n // 2, 3 * n // 4
    return Splits(data.subset(torch.arange(a)), data.subset(torch.arange(a, b)),
                  data.subset(torch.arange(b, n)))


@pytest.fixture(scope="module")
def splits() -> Splits:
    return kt_splits()


def cfg(method: str, params: dict | None = None, **kw) -> TrainConfig:
    base = dict(method=method, method_params=copy.deepcopy(params or {}), d=D, epochs=3,
                batch_size=32, lr=3e-3, patience=3, device="cpu")
    return TrainConfig(**{**base, **kw})


# (method, params, seq_encoder): every method that trains on KT data
FUSION = [("early", {}), ("late", {}), ("late_logit", {}), ("coattention", {"heads": 4}),
          ("dsrsd", {}), ("coral", SMALL_CORAL), ("misa", {}),
          ("clear", {"mode": "dynamic", "base": "early", "k": 2}),
          ("unimodal", {"modality": "history"})]
CASES = [(m, p, enc) for m, p in FUSION for enc in ("gru", "transformer")] + [
    ("dkt", {}, "gru"), ("dkt", {"cell": "gru", "rasch": True}, "gru"), ("akt", {}, "gru"),
    ("akt", {"layers": 2, "rasch": False}, "gru"),
    ("akt", {"distance": "context", "attn_dropout": 0.1}, "gru"),
    ("akt", {"ff_mult": 4, "retriever_ff_mult": 3, "predictor_width": 48}, "gru"),
    ("gbdt", {"max_iter": 40, "min_samples_leaf": 5}, "gru")]


def case_id(c) -> str:
    m, p, enc = c
    extra = ",".join(f"{k}={v}" for k, v in p.items() if k in ("cell", "rasch", "layers", "distance",
                                                                   "ff_mult"))
    return f"{m}-{enc}" + (f"[{extra}]" if extra else "")


def built(c, sp: Splits):
    method, params, enc = c
    config = cfg(method, params, seq_encoder=enc)
    torch.manual_seed(0)
    model = build_model(config, sp.train.specs, sp.train.task, sp.train)
    if isinstance(model, DirectFit):
        fit_direct(model, sp, config, torch.device("cpu"))
    else:
        model.on_epoch_start(0, sp.train, torch.device("cpu"))
        model.eval()
    return model


def predict(model, data: MultimodalData) -> torch.Tensor:
    """Scored-step predictions in ``y_mask`` order (logits, or GBDT's probabilities)."""
    if isinstance(model, DirectFit):
        return torch.from_numpy(model.predict_proba(data)[1]).double()
    with torch.no_grad():
        b = data.batch(torch.arange(len(data)))
        return model(Batch(b.x, b.pad, b.present, b.y, b.y_mask)).logits.double()


def edited(data: MultimodalData, fn) -> MultimodalData:
    x = {k: v.clone() for k, v in data.x.items()}
    fn(x, data.pad["history"])
    return MultimodalData(data.specs, data.task, x, data.pad, data.present, data.y, data.y_mask,
                          data.extras, data.name)


def rows_at(data: MultimodalData, t0: int, before: bool = False) -> torch.Tensor:
    """Which scored rows are at step ``t0`` (or at steps <= ``t0`` when ``before``)."""
    step = torch.arange(T)[None].expand_as(data.y_mask)[data.y_mask]
    return step <= t0 if before else step == t0


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_prediction_at_t_ignores_responses_from_t_and_items_after_t(splits, case):
    model = built(case, splits)
    data = splits.test
    ref = predict(model, data)
    assert ref.shape == (int(data.y_mask.sum()),) and bool(torch.isfinite(ref).all())
    g = torch.Generator().manual_seed(1)
    for t0 in (1, 4):
        def future(x, pad, t0=t0):
            h = x["history"]
            h[:, t0:, -1] = (1 - h[:, t0:, -1]) * pad[:, t0:]  # every response from t0 on
            later = pad[:, t0 + 1:]
            h[:, t0 + 1:, 0] = torch.randint(1, N_SKILLS + 1, later.shape, generator=g) * later
            h[:, t0 + 1:, -2] = torch.randint(1, N_PROBLEMS + 1, later.shape, generator=g) * later
            for name in ("content", "item_stats"):
                x[name][:, t0 + 1:] += later.unsqueeze(-1) * torch.randn(
                    x[name][:, t0 + 1:].shape, generator=g)
        got = predict(model, edited(data, future))
        keep = rows_at(data, t0, before=True)
        torch.testing.assert_close(got[keep], ref[keep])
        assert not torch.allclose(got[~keep], ref[~keep])  # the edit did reach later steps

    def earlier(x, pad):
        x["history"][:, 3, -1] = (1 - x["history"][:, 3, -1]) * pad[:, 3]

    got = predict(model, edited(data, earlier))
    at = rows_at(data, 4)
    assert (got[at] - ref[at]).abs().max() > 1e-6  # the response at t-1 does matter


@pytest.mark.parametrize("case", [c for c in CASES if c[0] != "gbdt"],
                         ids=[case_id(c) for c in CASES if c[0] != "gbdt"])
def test_prediction_at_t_reads_the_item_at_t(splits, case):
    model = built(case, splits)
    data = splits.test
    ref = predict(model, data)

    def item(x, pad):  # another problem and skill at step 4; content and stats unchanged
        h = x["history"]
        h[:, 4, 0] = h[:, 4, 0] % N_SKILLS + 1
        h[:, 4, -2] = h[:, 4, -2] % N_PROBLEMS + 1
        h[:, 4] *= pad[:, 4:5]

    got = predict(model, edited(data, item))
    at = rows_at(data, 4)
    assert (got[at] - ref[at]).abs().min() > 0  # every row at t reacts to its item
    torch.testing.assert_close(got[rows_at(data, 3, before=True)], ref[rows_at(data, 3, True)])


@pytest.mark.parametrize("method", ["dkt", "akt", "early", "gbdt"])
def test_kt_methods_learn_the_planted_signal(splits, method):
    params = {"max_iter": 60, "min_samples_leaf": 5} if method == "gbdt" else {}
    rec = fit(cfg(method, params, epochs=6), splits=splits, progress=False)
    assert rec["test"]["auc"] > 0.75, rec["test"]  # about 0.87 with the previous response alone


def test_kt_methods_need_a_kt_history():
    sp = load_synthetic(n=200)
    for method in ("dkt", "akt"):
        with pytest.raises(DsrsdError, match="layout 'kt'"):
            build_model(cfg(method), sp.train.specs, sp.train.task, sp.train)


def test_history_features_by_hand():
    # one student: skills 1, 2, {1,2}, 1; responses 1, 0, 1, 0; problem ids 5, 6, 7, 5
    x = torch.tensor([[[1, 0, 6, 1], [2, 0, 7, 0], [1, 2, 8, 1], [1, 0, 6, 0], [0, 0, 0, 0]]])
    f = history_features(x, n_skills=2)
    assert f.shape == (1, 5, 5)
    torch.testing.assert_close(f[0, :4, 0], torch.tensor([0.5, 1.0, 0.0, 1.0]))  # prev resp
    torch.testing.assert_close(f[0, :4, 1], torch.log1p(torch.tensor([0.0, 1, 2, 3])))
    torch.testing.assert_close(f[0, :4, 2], torch.tensor([1 / 2, 2 / 3, 2 / 4, 3 / 5]))
    # step 2 (skills 1, 2): skill 1 seen once correct (2/3), skill 2 once wrong (1/3) -> 1/2;
    # step 3 (skill 1): seen twice, both correct -> 3/4
    torch.testing.assert_close(f[0, :4, 3], torch.tensor([1 / 2, 1 / 2, 1 / 2, 3 / 4]))
    l1, l2 = float(np.log1p(1)), float(np.log1p(2))
    torch.testing.assert_close(f[0, :4, 4], torch.tensor([0.0, 0.0, l1, l2]))


def test_embeddings_average_skills_and_add_the_rasch_term():
    spec = ModalitySpec("h", "sequence", 8, vocab=2 * N_SKILLS + 1, layout="kt", items=9)
    emb = KTEmbedding(spec, 4)
    with torch.no_grad():
        emb.mu.weight[3] = 0.5
    x = torch.tensor([[[2, 0, 3, 1], [2, 5, 3, 0], [2, 0, 0, 0]]])
    item, inter = emb(x)
    c, dv, e, fv = (m.weight.detach() for m in (emb.c, emb.d_var, emb.e, emb.f_var))
    torch.testing.assert_close(item[0, 0], c[2] + 0.5 * dv[2])
    torch.testing.assert_close(item[0, 1], (c[2] + c[5]) / 2 + 0.5 * (dv[2] + dv[5]) / 2)
    torch.testing.assert_close(inter[0, 0], e[4] + 0.5 * fv[4])  # token (2-1)*2 + 1 + 1
    torch.testing.assert_close(item[0, 2], c[2])  # padding problem: mu = 0


def test_encoders_give_one_vector_per_step_and_reject_per_sample_use():
    spec = ModalitySpec("h", "sequence", 8, vocab=2 * N_SKILLS + 1, layout="kt", items=9)
    x = torch.tensor([[[2, 0, 3, 1], [2, 5, 3, 0], [0, 0, 0, 0]]])
    for enc in (KTRecurrentEncoder(spec, 8), KTAttentionEncoder(spec, 8)):
        assert enc.eval()(x).shape == (1, 3, 8)
    from dsrsd.encoders import build_encoder
    with pytest.raises(DsrsdError, match="per-step"):
        build_encoder(spec, 8, "gru", per_step=False)


@pytest.mark.parametrize("edit,words", [
    (lambda h: h[0, 0].__setitem__(-2, N_PROBLEMS + 1), "problem ids outside"),
    (lambda h: h[0, 0].__setitem__(-1, 2), "responses outside"),
    (lambda h: h[0, 0].__setitem__(0, N_SKILLS + 1), "skill ids outside")])
def test_bad_kt_tensors_are_one_line_errors(splits, edit, words):
    d = splits.test
    h = d.x["history"].clone()
    edit(h)
    with pytest.raises(DsrsdError, match=words) as e:
        MultimodalData(d.specs, d.task, {**d.x, "history": h}, d.pad, d.present, d.y, d.y_mask)
    assert "\n" not in str(e.value) and "'history'" in str(e.value)
    with pytest.raises(DsrsdError, match="layout 'kt' needs"):
        ModalitySpec("h", "tabular", 8, vocab=5, layout="kt", items=3)


def test_speed_benchmark_runs_on_an_akt_folder(tmp_path, akt_dir):
    import csv
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "speed.csv"
    r = subprocess.run([sys.executable, str(root / "benchmarks" / "kt_speed.py"), "--path",
                        str(akt_dir), "--data-dir", str(tmp_path / "c"), "--methods", "dkt,akt",
                        "--threads", "1", "--steps", "1", "--d", "16", "--out", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=root)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = list(csv.DictReader(out.open()))
    assert [x["method"] for x in rows] == ["dkt", "akt"]
    assert all(float(x["ms_step"]) > 0 and int(x["steps_epoch"]) > 0 for x in rows)


def _attention_by_hand(strict: bool, distance: str):
    """A seeded DecayAttention (3 sequences of 5 steps, d 8, 2 heads), its output, and its
    projected heads, with the null key (at tau = -1) prepended when ``strict``."""
    from dsrsd.kt_encoders import DecayAttention
    torch.manual_seed(0)
    att = DecayAttention(8, 2, null=strict, distance=distance).eval()
    with torch.no_grad():
        att.gamma.copy_(torch.tensor([0.3, -1.0]))
    q, kv = torch.randn(3, 5, 8), torch.randn(3, 5, 8)
    got = att(q, kv, kv, strict)

    def heads(h):
        return h.view(3, -1, 2, 4).transpose(1, 2)
    qh, kh, vh = heads(att.qk(q)), heads(att.qk(kv)), heads(att.v(kv))
    tau = torch.arange(5.0)
    if strict:
        kh = torch.cat([att.null_k.expand(3, -1, -1, -1), kh], 2)
        vh = torch.cat([att.null_v.expand(3, -1, -1, -1), vh], 2)
        tau = torch.cat([torch.tensor([-1.0]), tau])
    return att, got, qh, kh, vh, tau


@pytest.mark.parametrize("strict", [False, True])
def test_decay_attention_is_softmax_with_a_distance_bias(strict):
    """The folded decay feature gives softmax(q k / sqrt(d_h) - theta_h (t - tau)) exactly, the
    null key sitting at tau = -1."""
    att, got, qh, kh, vh, tau = _attention_by_hand(strict, "step")
    dist = torch.arange(5.0)[:, None] - tau[None]
    theta = torch.nn.functional.softplus(att.gamma)[:, None, None]
    logits = qh @ kh.transpose(-1, -2) / 2 - theta * dist
    logits = logits.masked_fill(dist <= 0 if strict else dist < 0, float("-inf"))
    want = att.out((logits.softmax(-1) @ vh).transpose(1, 2).reshape(3, 5, 8))
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("strict", [False, True])
def test_context_distance_is_akts_monotonic_attention(strict):
    """distance="context": scores times exp(-theta_h sqrt(|t - tau| * attention of t on the keys
    after tau)), by hand with loops; the null key sits at tau = -1."""
    att, got, qh, kh, vh, tau = _attention_by_hand(strict, "context")
    tau = tau.tolist()
    theta = torch.nn.functional.softplus(att.gamma)
    out = torch.zeros(3, 2, 5, 4)
    for b in range(3):
        for h in range(2):
            for t in range(5):
                keys = [j for j, p in enumerate(tau) if (p < t if strict else p <= t)]
                s = torch.stack([qh[b, h, t] @ kh[b, h, j] / 2 for j in keys])
                w = s.softmax(0).detach()
                dist = torch.stack([(abs(t - tau[j]) * w[i + 1:].sum()).sqrt()
                                    for i, j in enumerate(keys)])
                a = (s * torch.exp(-theta[h] * dist)).softmax(0)
                out[b, h, t] = a @ vh[b, h, keys]
    want = att.out(out.transpose(1, 2).reshape(3, 5, 8))
    # sums in another order, and sqrt magnifies rounding near a distance of 0: a tolerance
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_attention_dropout_acts_only_in_training():
    from dsrsd.kt_encoders import DecayAttention
    for distance in ("step", "context"):
        torch.manual_seed(0)
        plain = DecayAttention(8, 2, null=True, distance=distance)
        drop = DecayAttention(8, 2, null=True, distance=distance, attn_dropout=0.5)
        drop.load_state_dict(plain.state_dict())
        q = torch.randn(3, 6, 8)
        torch.testing.assert_close(drop.eval()(q, q, q, True), plain.eval()(q, q, q, True))
        assert not torch.allclose(drop.train()(q, q, q, True), plain.train()(q, q, q, True))
    with pytest.raises(DsrsdError, match="distance must be one of"):
        DecayAttention(8, 2, distance="wall")
    with pytest.raises(DsrsdError, match="attn_dropout"):
        DecayAttention(8, 2, attn_dropout=1.0)


def test_akt_mu_l2_is_akts_penalty_on_the_problem_difficulties(splits):
    """``mu_l2`` adds ``mu_l2 * sum(mu_q^2)`` to the loss (term rasch_l2); off by default; the
    term's gradient on a problem absent from the batch is ``2 * mu_l2 * mu_q``."""
    off = built(("akt", {}, "gru"), splits)
    batch = splits.train.batch(torch.arange(8))
    with torch.enable_grad():
        assert "rasch_l2" not in off.train()(batch).aux
    config = cfg("akt", {"mu_l2": 1e-3})
    torch.manual_seed(0)
    model = build_model(config, splits.train.specs, splits.train.task, splits.train)
    mu = model.encoders[model.modality].emb.mu.weight
    with torch.no_grad():
        mu.normal_()
    term = model.train()(batch).aux["rasch_l2"]
    torch.testing.assert_close(term, 1e-3 * mu.detach().pow(2).sum())
    term.backward()
    torch.testing.assert_close(mu.grad, 2e-3 * mu.detach())
    rec = fit(config, splits=splits, progress=False)
    assert rec["history"][-1]["weighted"]["rasch_l2"] > 0
    with pytest.raises(DsrsdError, match="mu_l2"):
        build_model(cfg("akt", {"mu_l2": -1.0}), splits.train.specs, splits.train.task,
                    splits.train)


def test_akt_layer_widths(splits):
    """``ff_mult`` sets the knowledge encoder's feed-forward width (in units of d; the question
    encoder has none), ``retriever_ff_mult`` the retriever's, each alone, and ``predictor_width``
    the predictor's (then half of it); the defaults are 2d, 2d and d; a width that cannot build a
    layer is a one-line error naming the parameter."""
    def widths(params):
        m = build_model(cfg("akt", params), splits.train.specs, splits.train.task, splits.train)
        enc = m.encoders[m.modality]
        return ([layer.ff[0].out_features for layer in enc.knowledge],
                [layer.ff for layer in enc.question],
                [layer.ff[0].out_features for layer in enc.retriever],
                [lin.out_features for lin in m.predictor if isinstance(lin, torch.nn.Linear)])

    assert widths({}) == ([2 * D], [None], [2 * D], [D, D // 2, 1])
    assert widths({"ff_mult": 4, "predictor_width": 40, "layers": 2}) == (
        [4 * D, 4 * D], [None, None], [2 * D, 2 * D], [40, 20, 1])
    assert widths({"retriever_ff_mult": 3}) == ([2 * D], [None], [3 * D], [D, D // 2, 1])
    for bad, name in (({"ff_mult": 0}, "ff_mult"), ({"ff_mult": 1.5}, "ff_mult"),
                      ({"retriever_ff_mult": 0}, "retriever_ff_mult"),
                      ({"predictor_width": 1}, "predictor_width")):
        with pytest.raises(DsrsdError, match=name):
            widths(bad)
