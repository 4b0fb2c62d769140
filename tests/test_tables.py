"""dsrsd.tables and dsrsd.verdicts on synthetic record tables: groups, pairing, Holm families,
intervals, retained skill, and the sentences built on them."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from dsrsd import stats, tables
from dsrsd.errors import DsrsdError

OFFSETS = [0.0, 0.004, -0.003, 0.006, -0.002]  # a seed effect every method shares


def _frame(means: dict[str, float], group: dict[str, str] | None = None, seeds=5,
           setting="oulad") -> pd.DataFrame:
    """One row per variant x seed, as load_records makes them; AUC = mean + seed offset + a
    small per-run wobble, clean AUC with rob_rate_0.5 = halfway to chance."""
    rows = []
    for k, (v, m) in enumerate(means.items()):
        for s in range(seeds):
            auc = m + OFFSETS[s] + 0.001 * ((s * 7 + k * 3) % 5 - 2)
            rows.append({"run_id": f"{setting}-{v}-s{s}", "variant": v, "setting": setting,
                         "unit": f"s{s}", "seed": s, "test_auc": auc, "val_auc": auc,
                         "wall_time_s": 1.0, "rob_rate_0.5": 0.5 + (auc - 0.5) / 2})
    df = pd.DataFrame(rows)
    if group is not None:
        df["group"] = df["variant"].map(lambda v: group.get(v, "main"))
    return df


def test_group_of_prefers_the_record_and_falls_back_to_the_naming_rule():
    assert tables.group_of("dsrsd-no_orth") == "ablation"
    assert tables.group_of("dsrsd_pw") == "main"
    assert tables.group_of("dsrsd-no_orth", "selection") == "selection"
    df = _frame({"dsrsd": 0.8, "dsrsd-no_orth": 0.81, "early": 0.79})
    assert "group" not in df  # a table from older records
    assert tables.summary(df).set_index("variant")["group"].to_dict() == {
        "dsrsd": "main", "dsrsd-no_orth": "ablation", "early": "main"}


def test_headline_shows_the_main_group_only():
    df = _frame({"dsrsd": 0.80, "tuned": 0.83, "early": 0.79},
                group={"tuned": "selection"})  # no hyphen, and still not a headline method
    t = tables.headline(df)
    assert list(t.index) == ["dsrsd", "early"] and list(t.columns) == ["oulad"]
    assert t.loc["dsrsd", "oulad"].endswith("(n=5)")


def test_significance_pairs_units_and_adds_intervals_and_holm_per_group():
    df = _frame({"dsrsd": 0.80, "early": 0.83, "late": 0.80, "dsrsd-no_orth": 0.81,
                 "dsrsd-no_recon": 0.78})
    df = df[~((df["variant"] == "late") & (df["seed"] == 4))]  # late misses one seed
    sig = tables.significance(df).set_index("variant")
    assert list(sig.columns[:3]) == ["setting", "ref", "group"]
    assert set(sig.columns) >= {"diff_t_lo", "diff_t_hi", "diff_boot_runs_lo", "diff_boot_runs_hi",
                                "p_holm", "significant_holm"}
    assert sig.loc["late", "n_pairs"] == 4 and sig.loc["early", "n_pairs"] == 5
    # the numbers are dsrsd.stats' on the paired runs
    pair = stats.pair_units(df, "dsrsd", "early")
    t = stats.paired_t(pair["dsrsd"], pair["early"])
    assert sig.loc["early", "p_value"] == t.p_value
    assert (sig.loc["early", "diff_t_lo"], sig.loc["early", "diff_t_hi"]) == (t.lo, t.hi)
    assert sig.loc["early", "mean_diff"] == pytest.approx(-0.03)
    assert sig.loc["early", "diff_boot_runs_lo"] <= sig.loc["early", "mean_diff"] <= sig.loc[
        "early", "diff_boot_runs_hi"]
    # Holm within each group: two main comparisons, two ablation comparisons
    for group in ("main", "ablation"):
        fam = sig[sig["group"] == group]
        assert len(fam) == 2
        np.testing.assert_allclose(fam["p_holm"], stats.holm(fam["p_value"]))
    assert (sig["significant_holm"] == (sig["p_holm"] < 0.05)).all()
    assert (sig["significant"] == (sig["p_value"] < 0.05)).all()
    assert sig.loc["early", "significant_holm"] and not sig.loc["early", "ref_better"]


def test_significance_untested_pairs_stay_out_of_the_holm_family():
    df = _frame({"dsrsd": 0.80, "early": 0.83, "late": 0.75})
    lone = _frame({"gbdt": 0.9}, seeds=1).assign(unit="s9", seed=9)  # shares no seed
    same = df[df["variant"] == "dsrsd"].assign(variant="copy")  # identical scores
    sig = tables.significance(pd.concat([df, lone, same])).set_index("variant")
    assert sig.loc["gbdt", "n_pairs"] == 0 and sig.loc["gbdt", "test"] == "none"
    assert sig.loc["copy", "test"] == "none" and np.isnan(sig.loc["copy", "p_holm"])
    tested = sig[sig["test"] == "paired_t"]
    np.testing.assert_allclose(tested["p_holm"], stats.holm(tested["p_value"]))  # a family of 2
    assert not sig.loc["gbdt", "significant"] and not sig.loc["gbdt", "significant_holm"]


def test_significance_refuses_two_records_of_one_seed():
    df = _frame({"dsrsd": 0.80, "early": 0.83})
    twice = pd.concat([df, df[(df["variant"] == "early") & (df["seed"] == 0)]])
    with pytest.raises(DsrsdError, match="more than one"):
        tables.significance(twice)


def test_robustness_gains_retained_skill_per_run():
    df = _frame({"dsrsd": 0.80, "early": 0.70})
    rob = tables.robustness(df)
    assert list(rob.columns[:3]) == ["setting", "variant", "group"]
    clean = rob[rob["condition"] == "rate 0"]
    assert (clean["retained_mean"] == 1.0).all() and (clean["retained_std"] == 0.0).all()
    half = rob[rob["condition"] == "rate 0.5"].set_index("variant")
    # the synthetic stress halves every run's skill above chance
    np.testing.assert_allclose(half["retained_mean"], 0.5)
    np.testing.assert_allclose(half["retained_std"], 0.0, atol=1e-12)
    mine = df[df["variant"] == "early"]
    assert half.loc["early", "mean"] == pytest.approx(mine["rob_rate_0.5"].mean())


def test_robustness_reads_noise_conditions_where_records_have_them():
    df = _frame({"dsrsd": 0.80, "early": 0.70})
    # noise of 1 sd on item_stats (a name with an underscore) keeps a quarter of the skill;
    # only 3 of early's 5 runs measured it (records older than the measurement have none)
    df["rob_noise_1_item_stats"] = 0.5 + (df["test_auc"] - 0.5) / 4
    df.loc[(df["variant"] == "early") & (df["seed"] >= 3), "rob_noise_1_item_stats"] = np.nan
    rob = tables.robustness(df)
    noisy = rob[rob["kind"] == "noise"].set_index("variant")
    assert set(noisy["condition"]) == {"noise 1 on item_stats"} and (noisy["rate"] == 1.0).all()
    np.testing.assert_allclose(noisy["retained_mean"], 0.25)
    assert noisy.loc["dsrsd", "n"] == 5 and noisy.loc["early", "n"] == 3
    # the other conditions are unchanged by the new column
    assert set(rob.loc[rob["kind"] != "noise", "condition"]) == {"rate 0", "rate 0.5"}


def test_verdict_speaks_of_holm_and_the_interval():
    from dsrsd import verdicts
    df = _frame({"dsrsd": 0.80, "early": 0.83, "late": 0.801})
    text = tables.verdict(df, "oulad")
    assert text == verdicts.verdict(df, "oulad")
    assert "dsrsd is not the best: it ranks 3 of 3" in text and "early" in text
    assert "shown after Holm's correction" in text and "95% interval" in text
    best = tables.verdict(df, "oulad", ref="early")
    assert "early has the best mean AUC" in best and "shown better than 2 of 2" in best
    assert tables.verdict(df, "assist2009") == "assist2009: no dsrsd records."


@pytest.mark.parametrize("extra, words", [({"group": "headline"}, "group 'headline'"),
                                          ({"group": 3}, "'group' is not a string"),
                                          ({"experiment": ["x"]}, "'experiment'")])
def test_bad_group_or_experiment_is_one_line(tmp_path, extra, words):
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    rec = {"method": "dsrsd", "dataset": "synthetic", "config": {}, "test": {"auc": 0.8}, **extra}
    (run / "metrics.json").write_text(json.dumps(rec))
    with pytest.raises(DsrsdError, match=words):
        tables.load_records(run.parent)


def test_records_carry_group_and_experiment(tmp_path):
    for name, rec in {"a": {"variant": "dsrsd-no_orth"},
                      "b": {"variant": "dsrsd-no_orth", "group": "selection", "experiment": "e1"}
                      }.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(
            {"method": "dsrsd", "dataset": "synthetic", "config": {}, "test": {"auc": 0.8}, **rec}))
    df = tables.load_records(tmp_path).set_index("run_id")
    assert df.loc["a", "group"] == "ablation" and df.loc["b", "group"] == "selection"
    assert df.loc["b", "experiment"] == "e1" and pd.isna(df.loc["a", "experiment"])


def test_selection_ranks_trials_on_validation_only():
    import pandas as pd

    from dsrsd import tables
    df = pd.DataFrame({"experiment": ["sel"] * 4 + ["other"],
                       "method": ["dsrsd", "dsrsd", "early", "early", "dsrsd"],
                       "variant": ["a", "b", "c", "d", "z"],
                       "val_auc": [0.70, 0.72, 0.71, 0.69, 0.99],
                       "test_auc": [0.99, 0.50, 0.50, 0.99, 0.99]})
    s = tables.selection(df, "sel")
    chosen = dict(zip(s[s["chosen"]]["method"], s[s["chosen"]]["variant"], strict=True))
    assert chosen == {"dsrsd": "b", "early": "c"}  # test AUC would have picked a and d
    with pytest.raises(DsrsdError, match="no records of experiment 'none'"):
        tables.selection(df, "none")
    # a grown search pools its experiments; one of them missing, or a name in both, is an error
    pooled = tables.selection(df, ["sel", "other"])
    assert pooled.loc[pooled["chosen"], "variant"].tolist() == ["z", "c"]
    with pytest.raises(DsrsdError, match="no records of experiment 'none'"):
        tables.selection(df, ["sel", "none"])
    twice = pd.concat([df, df.iloc[[0]].assign(experiment="other")])
    with pytest.raises(DsrsdError, match="share the variant 'a'"):
        tables.selection(twice, ["sel", "other"])


def _run_with_predictions(root, run_id, variant, seed, y, prob, unit, write=True):
    """A record and (``write``) its predictions file, as fit leaves them."""
    from sklearn.metrics import roc_auc_score

    from dsrsd.predictions import PREDICTIONS_FILE, write_predictions
    d = root / run_id
    d.mkdir(parents=True)
    arrays = {"y": y.astype(np.int8), "prob": prob, "unit": unit.astype(np.int32)}
    rec = {"method": variant, "dataset": "oulad", "variant": variant, "seed": seed,
           "config": {"seed": seed}, "test": {"auc": float(roc_auc_score(y, prob))}}
    if write:
        rec["predictions"] = write_predictions(d / PREDICTIONS_FILE, arrays)
    (d / "metrics.json").write_text(json.dumps(rec))


def test_unit_bootstrap_pairs_runs_by_seed_and_says_why_a_row_is_nan(tmp_path):
    rng = np.random.default_rng(0)
    n = 600
    y, unit = rng.integers(0, 2, n), rng.integers(0, 150, n) * 7  # 4 predictions per student
    for s in range(3):
        noise = np.random.default_rng(10 + s)
        preds = {"dsrsd": y + noise.normal(0, 0.6, n), "early": y + noise.normal(0, 1.2, n),
                 "late": y + noise.normal(0, 1.0, n), "misa": y + noise.normal(0, 1.0, n)}
        for v, p in preds.items():
            u = np.roll(unit, 1) if v == "misa" else unit  # misa: another test set
            _run_with_predictions(tmp_path, f"oulad-{v}-s{s}", v, s, y, p.astype(np.float32), u,
                                  write=not (v == "late" and s == 2))
    _run_with_predictions(tmp_path, "oulad-clear-s7", "clear", 7, y, y + 0.0, unit)
    df = tables.load_records(tmp_path)
    ub = tables.unit_bootstrap(tmp_path, df, n_boot=300).set_index("variant")
    assert list(ub.columns[:3]) == ["setting", "ref", "group"]
    early = ub.loc["early"]
    assert (early["n_pairs"], early["n_runs"], early["predictions"]) == (3, 3, "ok")
    assert early["n_units"] == len(np.unique(unit)) and 0 < early["diff_units_lo"]
    assert early["diff_units_lo"] < early["mean_diff"] < early["diff_units_hi"]
    # the same pairs and mean difference as the seed test of the records
    sig = tables.significance(df).set_index("variant")
    assert early["mean_diff"] == pytest.approx(sig.loc["early", "mean_diff"], abs=1e-12)
    late = ub.loc["late"]
    assert late["n_pairs"] == 3 and late["n_runs"] == 0 and np.isnan(late["mean_diff"])
    assert late["predictions"] == "1 of 6 runs have no test_predictions.npz (e.g. oulad-late-s2)"
    assert np.isnan(ub.loc["misa", "diff_units_lo"]) and "test units differ" in ub.loc[
        "misa", "predictions"]
    assert ub.loc["clear", "n_pairs"] == 0 and np.isnan(ub.loc["clear", "mean_diff"])
    assert tables.unit_bootstrap(tmp_path, df.iloc[0:0]).empty


def test_unit_bootstrap_file_survives_a_machine_without_the_predictions_and_is_checked(tmp_path):
    from dsrsd.predictions import PREDICTIONS_FILE
    runs, out = tmp_path / "runs", tmp_path / "results"
    rng = np.random.default_rng(1)
    y, unit = rng.integers(0, 2, 400), np.arange(400) // 2
    for s in range(3):
        for v, sd in (("dsrsd", 0.6), ("early", 1.0)):
            p = (y + np.random.default_rng(s * 10 + len(v)).normal(0, sd, 400)).astype(np.float32)
            _run_with_predictions(runs, f"oulad-{v}-s{s}", v, s, y, p, unit)
    first = tables.write_unit_bootstrap(runs, out, n_boot=200).set_index("variant")
    assert first.loc["early", "predictions"] == "ok"
    assert first.loc["early", "runs"] == " ".join(f"oulad-dsrsd-s{s}:oulad-early-s{s}" for s in range(3))
    df = tables.load_records(runs)
    written = pd.read_csv(out / "unit_bootstrap.csv")
    assert tables.check_unit_bootstrap(written, df) == []
    # a fresh checkout: records without their predictions files keep the computed row
    for f in runs.glob(f"*/{PREDICTIONS_FILE}"):
        f.unlink()
    again = tables.write_unit_bootstrap(runs, out, n_boot=200).set_index("variant")
    assert again.loc["early", "predictions"] == "ok"
    assert again.loc["early", "mean_diff"] == pytest.approx(first.loc["early", "mean_diff"], rel=1e-5)
    # ... but not once one of its runs is no longer a record
    (runs / "oulad-early-s2" / "metrics.json").unlink()
    gone = tables.write_unit_bootstrap(runs, out, n_boot=200).set_index("variant")
    assert gone.loc["early", "predictions"].startswith("4 of 4 runs have no")
    # what the check finds: a number edited by hand, runs that are not records, no reason
    bad = written.copy()
    bad.loc[0, "mean_diff"] += 0.01
    assert "mean_diff" in tables.check_unit_bootstrap(bad, df)[0]
    bad = written.copy()
    bad.loc[0, "runs"] = "oulad-dsrsd-s0:nowhere"
    assert "not records" in tables.check_unit_bootstrap(bad, df)[0]
    bad = written.copy()
    bad.loc[0, "runs"] = "oulad-dsrsd-s0:oulad-early-s1"
    assert "one pair per seed" in tables.check_unit_bootstrap(bad, df)[0]
    bad = written.assign(predictions="")
    assert "without a reason" in tables.check_unit_bootstrap(bad, df)[0]


def test_transfer_pairs_each_method_with_its_in_domain_reference_by_seed():
    # in-domain: dsrsd 0.80, early 0.82; across domains dsrsd loses 0.02, early 0.05
    home = _frame({"dsrsd": 0.80, "early": 0.82, "gbdt": 0.78}, setting="home")
    cross = _frame({"early": 0.77, "dsrsd": 0.78, "late": 0.70}, setting="cross")  # other wobble
    df = pd.concat([home, cross], ignore_index=True)
    df = df[~((df["setting"] == "cross") & (df["variant"] == "early") & (df["seed"] == 0))]
    t = tables.transfer(df, "cross", "home").set_index("variant")
    assert list(t.index) == ["dsrsd", "early"]  # gbdt and late lack one of the two settings
    assert t.loc["early", "n_pairs"] == 4 and t.loc["dsrsd", "n_pairs"] == 5
    assert t.loc["dsrsd", "gap"] == pytest.approx(-0.02)  # the wobble averages out over 5 seeds
    assert t.loc["early", "gap"] == pytest.approx(-0.05, abs=0.002)
    pair = stats.pair_units(df[df["variant"] == "early"], "cross", "home", by="setting")
    ref = stats.paired_t(pair["cross"], pair["home"])
    assert (t.loc["early", "gap_lo"], t.loc["early", "gap_hi"], t.loc["early", "p_value"]) == (
        ref.lo, ref.hi, ref.p_value)
    np.testing.assert_allclose(t["p_holm"], stats.holm(t["p_value"]))
    vs = tables.transfer_vs(df, "cross", "home").set_index("variant")
    assert list(vs.index) == ["early"] and vs.loc["early", "n_pairs"] == 4
    assert vs.loc["early", "diff"] == pytest.approx(0.03, abs=0.002)  # dsrsd loses 0.03 less
    assert vs.loc["early", "diff_lo"] < 0.03 < vs.loc["early", "diff_hi"]
    assert tables.transfer(df, "cross", "nowhere").empty
    assert tables.transfer_vs(df[df["variant"] != "dsrsd"], "cross", "home").empty


def test_cap_check_pairs_each_longer_run_with_its_base_run_and_flags_what_changed():
    df = _frame({"misa": 0.80, "misa-cap100": 0.80, "early": 0.81}, seeds=3)
    df["epochs"] = np.where(df["variant"] == "misa-cap100", 100, 40)
    # seed 0 was stopped by patience (identical when retrained), seed 1 reached the cap and
    # went on to epoch 55, seed 2 reached the cap and the longer run ends where it started
    base_run = {0: (22, 16), 1: (40, 39), 2: (40, 38)}
    long_run = {0: (22, 16), 1: (55, 49), 2: (44, 38)}
    for v, runs in (("misa", base_run), ("misa-cap100", long_run)):
        for s, (n, best) in runs.items():
            i = df.index[(df["variant"] == v) & (df["seed"] == s)]
            df.loc[i, ["epochs_run", "best_epoch"]] = n, best
    df.loc[(df["variant"] == "misa-cap100") & (df["seed"] == 0), "test_auc"] = float(
        df.loc[(df["variant"] == "misa") & (df["seed"] == 0), "test_auc"].iloc[0])
    df.loc[(df["variant"] == "misa-cap100") & (df["seed"] == 2), "test_auc"] = float(
        df.loc[(df["variant"] == "misa") & (df["seed"] == 2), "test_auc"].iloc[0])
    c = tables.cap_check(df).set_index("unit")
    assert list(c.index) == ["s0", "s1", "s2"] and set(c["base"]) == {"misa"}
    assert list(c["reached_cap"]) == [False, True, True]
    assert list(c["identical"]) == [True, False, False]  # s2: same test AUC, later stop
    assert c.loc["s0", "diff"] == 0.0 and c.loc["s1", "long_epochs_run"] == 55
    base = df[(df["variant"] == "misa") & (df["seed"] == 1)]["test_auc"].iloc[0]
    long = df[(df["variant"] == "misa-cap100") & (df["seed"] == 1)]["test_auc"].iloc[0]
    assert c.loc["s1", "diff"] == long - base
    # a longer run without its base record is left out; no longer runs: an empty table
    assert len(tables.cap_check(df[~((df["variant"] == "misa") & (df["seed"] == 0))])) == 2
    assert tables.cap_check(df[df["variant"] != "misa-cap100"]).empty
