"""Length-bucketed, trimmed batches for per-step (knowledge-tracing) training.

Trimming cuts a per-step batch after its longest valid window; bucketing sorts windows by length
within chunks of ``B`` batches and shuffles the batches. Off by default (``length_buckets = 0``):
then the batches are exactly the plain seeded permutation, so earlier runs are unchanged.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from test_kt_models import FUSION, T, cfg, kt_splits

from dsrsd.config import TrainConfig
from dsrsd.data.batch import MultimodalData, Splits
from dsrsd.data.synthetic import load_synthetic
from dsrsd.errors import DsrsdError
from dsrsd.registry import build_model
from dsrsd.step import supervised_loss, train_step
from dsrsd.train import fit, predict

BS = 8


@pytest.fixture(scope="module")
def splits() -> Splits:
    return kt_splits()


def tagged(data: MultimodalData) -> MultimodalData:
    """``data`` with each row's index in ``content[..., 0]`` (a per-step feature; step 0 is
    never trimmed away), so a batch tells which windows it holds."""
    x = dict(data.x)
    x["content"] = data.x["content"].clone()
    x["content"][..., 0] = torch.arange(len(data), dtype=torch.float32)[:, None]
    return MultimodalData(data.specs, data.task, x, data.pad, data.present, data.y, data.y_mask,
                          data.extras, data.name)


def ids(batch) -> list[int]:
    return batch.x["content"][:, 0, 0].long().tolist()


def epoch_ids(data: MultimodalData, seed: int, **kw) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [ids(b) for b in data.batches(BS, shuffle=True, generator=g, **kw)]


def epoch_weights(data: MultimodalData, seed: int, **kw) -> list[float]:
    g = torch.Generator().manual_seed(seed)
    return [b.weight for b in data.batches(BS, shuffle=True, generator=g, **kw)]


# ------------------------------------------------------------------------------ batches


def test_lengths_are_one_past_the_last_valid_step(splits):
    d = splits.train
    lengths = d.step_lengths()
    pad = d.pad["history"]
    assert torch.equal(lengths, pad.sum(1))  # the generator's windows: a valid prefix
    assert d.timed() == ["history", "content", "item_stats"]
    assert int(lengths.min()) < T  # so trimming has something to cut


def test_off_by_default_gives_the_plain_seeded_order(splits):
    d = tagged(splits.train)
    g = torch.Generator().manual_seed(7)
    plain = [b.tolist() for b in torch.randperm(len(d), generator=g).split(BS)]
    assert epoch_ids(d, 7) == plain
    assert epoch_ids(d, 7, buckets=0, trim=True) == plain
    assert all(b.y.shape[1] == T for b in d.batches(BS, shuffle=True, generator=g))
    assert set(epoch_weights(d, 7)) == {1.0}


@pytest.mark.parametrize("buckets", [1, 3, 100])
def test_bucketed_epoch_has_every_window_once_in_full_batches(splits, buckets):
    d = tagged(splits.train)
    got = epoch_ids(d, 3, buckets=buckets, trim=True)
    assert sorted(i for b in got for i in b) == list(range(len(d)))
    sizes = sorted(len(b) for b in got)
    assert len(got) == math.ceil(len(d) / BS) and sizes[1:] == [BS] * (len(got) - 1)
    assert got != epoch_ids(d, 4, buckets=buckets, trim=True)  # reshuffled each seed
    lengths = d.step_lengths()
    if buckets == 1:  # chunks of one batch: the plain batches, each sorted by length
        g = torch.Generator().manual_seed(3)
        plain = {tuple(sorted(b.tolist())) for b in torch.randperm(len(d), generator=g).split(BS)}
        assert {tuple(sorted(b)) for b in got} == plain
    for b in got:  # a chunk is sorted, so within a batch lengths never decrease
        assert all(lengths[i] <= lengths[j] for i, j in zip(b, b[1:], strict=False))
    # weights: each batch's scored steps over the mean per batch (so they average to 1)
    scored = torch.tensor([float(d.y_mask[b].sum()) for b in got])
    expected = scored / scored.mean()
    torch.testing.assert_close(torch.tensor(epoch_weights(d, 3, buckets=buckets)), expected,
                               rtol=1e-6, atol=0, check_dtype=False)


def test_drop_last_drops_the_one_short_batch(splits):
    d = tagged(splits.train)
    got = epoch_ids(d, 0, buckets=2, drop_last=True)
    assert len(got) == len(d) // BS and all(len(b) == BS for b in got)


def test_bucketing_cuts_padding(splits):
    d = splits.train
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    plain = sum(b.y.numel() for b in d.batches(BS, shuffle=True, generator=g1, trim=True))
    bucketed = sum(b.y.numel() for b in d.batches(BS, shuffle=True, generator=g2, buckets=4,
                                                  trim=True))
    assert bucketed < plain <= len(d) * T


@pytest.mark.parametrize("buckets", [0, 2])
def test_ranks_split_every_global_batch(splits, buckets):
    d = tagged(splits.train)
    full = epoch_ids(d, 5, buckets=buckets, trim=True)
    parts = [epoch_ids(d, 5, buckets=buckets, trim=True, rank=r, world=3) for r in range(3)]
    for k, b in enumerate(full):
        assert [p[k] for p in parts] == [b[r::3] for r in range(3)]
    weights = [epoch_weights(d, 5, buckets=buckets, rank=r, world=3) for r in range(3)]
    assert weights[0] == weights[1] == weights[2] == epoch_weights(d, 5, buckets=buckets)


def test_trimmed_batch_is_the_full_batch_cut_after_its_longest_window(splits):
    d = splits.test
    idx = torch.argsort(d.step_lengths())[:5]  # the shortest windows
    full, cut = d.batch(idx), d.batch(idx, trim=True)
    steps = int(d.step_lengths(idx).max())
    assert steps < T and cut.y.shape == (5, steps)
    for name in ("history", "content", "item_stats"):
        assert torch.equal(cut.x[name], full.x[name][:, :steps])
    assert torch.equal(cut.pad["history"], full.pad["history"][:, :steps])
    assert torch.equal(cut.y_mask, full.y_mask[:, :steps]) and torch.equal(cut.y, full.y[:, :steps])
    assert not full.y_mask[:, steps:].any() and not full.pad["history"][:, steps:].any()
    assert torch.equal(cut.present, full.present)


def test_not_per_step_trim_is_a_no_op_and_buckets_an_error():
    d = load_synthetic(n=200).train
    full, cut = d.batch(torch.arange(10)), d.batch(torch.arange(10), trim=True)
    assert all(torch.equal(full.x[k], cut.x[k]) for k in full.x)
    with pytest.raises(DsrsdError, match="length_buckets=2.*per_step") as e:
        next(d.batches(16, shuffle=True, buckets=2))
    assert "\n" not in str(e.value)
    with pytest.raises(DsrsdError, match="step lengths need a per_step task"):
        d.step_lengths()


# ------------------------------------------------------------------------------ models


MODELS = [("dkt", {}, "gru"), ("akt", {}, "gru")] + [
    (m, p, enc) for m, p in FUSION for enc in ("gru", "transformer")]


@pytest.mark.parametrize("case", MODELS, ids=[f"{m}-{e}" for m, _, e in MODELS])
def test_trimming_keeps_predictions_and_loss_at_valid_steps(splits, case):
    method, params, enc = case
    config = cfg(method, params, seq_encoder=enc)
    torch.manual_seed(0)
    model = build_model(config, splits.train.specs, splits.train.task, splits.train)
    model.on_epoch_start(0, splits.train, torch.device("cpu"))
    data = splits.test
    y, p = predict(model, data, batch_size=4, amp=False)
    y_cut, p_cut = predict(model, data, batch_size=4, amp=False, trim=True)
    assert y.shape == (int(data.y_mask.sum()),)
    assert (y_cut == y).all()  # same scored steps, same order
    torch.testing.assert_close(torch.from_numpy(p_cut), torch.from_numpy(p), atol=1e-5, rtol=0)
    # the objective (task + auxiliary terms) of one short-window batch, in eval mode
    idx = torch.argsort(data.step_lengths())[:12]
    loss_fn = supervised_loss(config.weights)
    model.eval()  # dropout would draw different masks for the shorter tensors
    with torch.no_grad():
        _, full = loss_fn(model, data.batch(idx))
        _, cut = loss_fn(model, data.batch(idx, trim=True))
    assert data.batch(idx, trim=True).y.shape[1] < T
    assert full.keys() == cut.keys()
    for k in full:
        torch.testing.assert_close(cut[k], full[k], atol=1e-5, rtol=1e-5)


def test_train_step_scales_loss_and_logged_terms_by_the_batch_weight(splits):
    config = cfg("dkt")
    torch.manual_seed(0)
    model = build_model(config, splits.train.specs, splits.train.task, splits.train).eval()
    batch = splits.train.batch(torch.arange(BS), trim=True)
    deltas, logs = [], []
    for w in (1.0, 2.5):
        net = copy.deepcopy(model)
        before = [p.detach().clone() for p in net.parameters()]
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        logs.append(train_step(net, dataclasses.replace(batch, weight=w), opt,
                               supervised_loss(config.weights), torch.device("cpu"), amp=False))
        deltas.append(torch.cat([(p - q).flatten() for p, q in zip(net.parameters(), before,
                                                                    strict=True)]))
    torch.testing.assert_close(logs[1]["task"], 2.5 * logs[0]["task"])
    torch.testing.assert_close(deltas[1], 2.5 * deltas[0], atol=1e-6, rtol=1e-4)


def test_fit_with_length_buckets_trains_and_evaluates_trimmed(splits):
    rec = fit(cfg("early", epochs=4, length_buckets=4), splits=splits, progress=False)
    assert rec["config"]["length_buckets"] == 4
    assert rec["test"]["auc"] > 0.75, rec["test"]  # the planted signal, as unbucketed
    y, p = predict(rec["model"], splits.test, amp=False)
    y_cut, p_cut = predict(rec["model"], splits.test, batch_size=4, amp=False, trim=True)
    assert (y == y_cut).all() and abs(p - p_cut).max() < 1e-5


# ------------------------------------------------------------------------------ config


def test_config_field_is_validated_and_off_keeps_the_hash():
    assert TrainConfig(length_buckets=0).hash() == TrainConfig().hash() == "a3be559ea526"
    assert TrainConfig(length_buckets=8).hash() != "a3be559ea526"
    for bad in (-1, True, 2.5):
        with pytest.raises(DsrsdError, match="length_buckets") as e:
            TrainConfig(length_buckets=bad)
        assert "\n" not in str(e.value)
