"""The helpers the chapters call instead of defining them in cells: dsrsd.book (setup, budgets,
figure conventions, the architecture figure), the noise helpers in dsrsd.stats, the stress copy
in dsrsd.probes, and the curated, lazy top-level package."""

from __future__ import annotations

import subprocess
import sys

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

import dsrsd  # noqa: E402
from dsrsd import book, stats  # noqa: E402
from dsrsd.errors import DsrsdError  # noqa: E402
from dsrsd.probes import without_modality  # noqa: E402


# ------------------------------------------------------------------------------ budget
def test_budget_keeps_explicit_values_and_fills_none_from_the_mode(capsys):
    quick, full = {"epochs": 12, "n_seeds": 3}, {"epochs": 30, "n_seeds": 5}
    assert book.budget(True, quick, full, epochs=None, n_seeds=None) == (12, 3)
    assert book.budget(False, quick, full, epochs=None, n_seeds=None) == (30, 5)
    # The example: -p quick False -p epochs 50 must run 50 epochs, not the preset's 30.
    assert book.budget(False, quick, full, epochs=50, n_seeds=None) == (50, 5)
    assert book.budget(True, quick, full, n_seeds=2, epochs=None) == (2, 12)  # order as given
    out = capsys.readouterr().out
    assert "budget (full): epochs 50 (set explicitly), n_seeds 5" in out


def test_budget_without_a_preset_for_a_none_parameter_says_which():
    with pytest.raises(DsrsdError, match="n_draws"):
        book.budget(True, {"epochs": 1}, {"epochs": 2}, epochs=None, n_draws=None, echo=False)
    assert book.budget(True, {}, {}, n_draws=4, echo=False) == (4,)


# ------------------------------------------------------------------------------ setup
def test_setup_seeds_threads_and_paths():
    paths = book.setup(seed=3, threads=1)
    assert torch.get_num_threads() == 1
    a = torch.rand(3)
    book.setup(seed=3)
    assert torch.equal(a, torch.rand(3))  # the same seed gives the same draws
    assert (paths.repo / "dsrsd" / "book.py").is_file()
    assert paths.runs == paths.results / "runs" and paths.results.is_dir()
    assert plt.rcParams["xtick.labelsize"] >= 9 and plt.rcParams["ytick.labelsize"] >= 9


# ------------------------------------------------------------------------------ figures
def test_dsrsd_is_highlighted_and_the_rest_get_distinct_colours():
    labels = ["early", "DSRSD-Net", "dsrsd_pw", "late", "dsrsd-no_orth", "dsrsd (md 0.15)"]
    colors = book.method_colors(labels)
    assert colors["DSRSD-Net"] == colors["dsrsd (md 0.15)"] == book.HIGHLIGHT
    assert colors["dsrsd_pw"] == book.HIGHLIGHT_2
    rest = [colors[k] for k in ("early", "late", "dsrsd-no_orth")]
    assert len(set(rest)) == 3 and book.HIGHLIGHT not in rest
    assert [book.is_dsrsd(x) for x in ("dsrsd", "dsrsd_pw", "dsrsd-task_only", "early")] == \
        [True, False, False, False]


def test_legend_outside_does_not_overlap_the_axes():
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1], label="a")
    leg = book.legend_outside(ax)
    fig.canvas.draw()
    box, axes = leg.get_window_extent(), ax.get_window_extent()
    assert box.x0 >= axes.x1  # entirely to the right of the data area
    plt.close(fig)


def test_architecture_figure_names_every_part_and_loss():
    fig = book.architecture_figure()
    text = " ".join(t.get_text() for t in fig.axes[0].texts)
    for part in ("encoder", "shared", "private, from the residual", "alignment head",
                 "gated fusion", "head", "InfoNCE", "decorrelation", "orthogonality",
                 "reconstruction", "task"):
        assert part in text, part
    plt.close(fig)


# ------------------------------------------------------------------------------ stats helpers
def test_noise_band_combines_bootstrap_and_seed_spread():
    d_boot = np.array([0.01, 0.03, 0.02, 0.00])
    d_seeds = [0.01, 0.05, 0.03]
    expected = 1.96 * np.sqrt(d_boot.var() + np.var(d_seeds, ddof=1) / 3)
    assert stats.noise_band(d_boot, d_seeds) == pytest.approx(expected)
    assert stats.noise_band(d_boot, d_seeds, z=2) == pytest.approx(expected / 1.96 * 2)
    with pytest.raises(ValueError, match="2 seeds"):
        stats.noise_band(d_boot, [0.1])


def test_bootstrap_effective_rank_is_paired_and_centred_on_the_plain_rank():
    rng = np.random.default_rng(0)
    iso = [rng.normal(size=(400, 6)) for _ in range(2)]
    line = [np.outer(rng.normal(size=400), np.ones(6)) + 1e-3 * rng.normal(size=(400, 6))]
    draws = stats.bootstrap_effective_rank(iso, n_boot=50, seed=1)
    assert draws.shape == (50,)
    plain = np.mean([stats.effective_rank(z) for z in iso])
    assert abs(draws.mean() - plain) < 0.2 and 5.0 < plain <= 6.0
    assert np.array_equal(draws, stats.bootstrap_effective_rank(iso, n_boot=50, seed=1))
    assert stats.bootstrap_effective_rank(line, n_boot=20).max() < 1.1


# ------------------------------------------------------------------------------ probes helper
def test_without_modality_hides_one_modality_only():
    splits = dsrsd.load_synthetic("default", n=120, seed=0)
    test = splits.test
    d = without_modality(test, 1)
    assert not d.present[:, 1].any()
    assert torch.equal(d.present[:, [0, 2]], test.present[:, [0, 2]])
    assert test.present[:, 1].all()  # the original is untouched
    assert "without m1" in d.name
    with pytest.raises(ValueError, match="modality index 3"):
        without_modality(test, 3)


# ------------------------------------------------------------------------------ the package
def test_import_dsrsd_is_light_and_every_public_name_resolves():
    code = ("import sys, dsrsd; heavy = [m for m in ('torch', 'pandas', 'sklearn', 'matplotlib') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
    for name in dsrsd.__all__:
        assert getattr(dsrsd, name) is not None, name
    assert dsrsd.DSRSDNet.__name__ == "DSRSDNet" and "dsrsd" in dsrsd.METHODS
    with pytest.raises(AttributeError, match="no_such_name"):
        dsrsd.no_such_name  # noqa: B018


def test_method_strip_is_seeded_highlights_dsrsd_and_keeps_the_legend_off_the_data():
    import pandas as pd

    rng = np.random.default_rng(0)
    df = pd.DataFrame([{"variant": v, "seed": s, "test_auc": 0.8 + 0.01 * i + 0.002 * rng.normal()}
                       for i, v in enumerate(["early", "dsrsd", "late"]) for s in range(5)])
    offsets = []
    for _ in range(2):
        fig = book.method_strip(df, ["late", "dsrsd", "early"], "seed", seed=1)
        ax = fig.axes[0]
        offsets.append(np.concatenate([c.get_offsets() for c in ax.collections]))
        fig.canvas.draw()
        assert ax.get_legend().get_window_extent().x0 >= ax.get_window_extent().x1
        dsrsd_tick = [t for t in ax.get_yticklabels() if t.get_text() == "dsrsd"][0]
        assert dsrsd_tick.get_fontweight() == "bold"
        plt.close(fig)
    assert np.array_equal(offsets[0], offsets[1])  # the jitter is the same on every run


# ------------------------------------------------------------------------------ findings
def test_headline_matches_the_summary_table_and_glued_reads_a_notebook(tmp_path):
    import json

    import pandas as pd

    results = book.REPO / "results"
    h = book.headline(results)
    summ = pd.read_csv(results / "summary.csv")
    sig = pd.read_csv(results / "significance.csv")
    for setting, row in h.iterrows():
        s = summ[(summ["setting"] == setting) & (summ["group"] == "main")]
        s = s.sort_values("mean", ascending=False).reset_index(drop=True)
        assert row["methods"] == len(s) and row["best"] == s.loc[0, "variant"]
        assert s.loc[row["rank"] - 1, "variant"] == "dsrsd"
        assert row["mean"] == pytest.approx(s.loc[row["rank"] - 1, "mean"])
        assert 0 <= row["above after Holm"] <= row["rank"] - 1
        # the counts are the CSV's own Holm verdicts (one family: setting x ref x group)
        fam = sig[(sig["setting"] == setting) & (sig["ref"] == "dsrsd") & (sig["group"] == "main")]
        assert row["above after Holm"] == (fam["significant_holm"] & ~fam["ref_better"]).sum()
        assert row["below after Holm"] == (fam["significant_holm"] & fam["ref_better"]).sum()
    nb = {"cells": [{"cell_type": "code", "outputs": [
        {"output_type": "display_data", "metadata": {"scrapbook": {"name": "x"}},
         "data": {"application/papermill.record/text/plain": "0.25"}},
        {"output_type": "display_data", "metadata": {"scrapbook": {"name": "w"}},
         "data": {"application/papermill.record/text/plain": "'late_logit'"}}]}]}
    (tmp_path / "n.ipynb").write_text(json.dumps(nb))
    assert book.glued(tmp_path / "n.ipynb") == {"x": 0.25, "w": "late_logit"}


def test_headline_reads_the_group_and_holm_columns_and_names_a_missing_one(tmp_path):
    import pandas as pd

    summ = pd.DataFrame({"setting": "s", "variant": ["early", "dsrsd", "dsrsd-no_x", "tuned"],
                         "group": ["main", "main", "ablation", "selection"], "n": 5,
                         "mean": [0.80, 0.70, 0.90, 0.95], "std": 0.01})
    sig = pd.DataFrame({"setting": "s", "ref": "dsrsd", "variant": ["early", "dsrsd-no_x"],
                        "group": ["main", "ablation"], "significant_holm": [True, True],
                        "ref_better": [False, False]})
    summ.to_csv(tmp_path / "summary.csv", index=False)
    sig.to_csv(tmp_path / "significance.csv", index=False)
    row = book.headline(tmp_path).loc["s"]
    # "tuned" has no hyphen and is still not a method of the headline: the group decides
    assert (row["methods"], row["rank"], row["best"]) == (2, 2, "early")
    assert (row["above after Holm"], row["below after Holm"]) == (1, 0)
    sig.drop(columns="significant_holm").to_csv(tmp_path / "significance.csv", index=False)
    with pytest.raises(DsrsdError, match=r"significance.csv: missing column\(s\) significant_holm"):
        book.headline(tmp_path)


# ------------------------------------------------------------------------------ sized splits
def test_synthetic_splits_keep_train_and_val_sizes_and_grow_the_test_split():
    from dsrsd.data.synthetic import load_synthetic

    for scenario, n in (("dominance", None), ("default", 1500), ("default", 1000)):
        plain = load_synthetic(scenario, n=n) if n else load_synthetic(scenario)
        sized = book.synthetic_splits(scenario, seed=0, n=n, n_test=2000)
        assert sized.info["sizes"] == [*plain.info["sizes"][:2], 2000]
        assert sized.info["scenario"] == scenario
    again = book.synthetic_splits("dominance", seed=0)
    assert torch.equal(again.test.x["m0"], book.synthetic_splits("dominance", seed=0).test.x["m0"])
    assert book.synthetic_splits("default", seed=0, n=200, n_test=20).info["sizes"] == [140, 30, 20]


@pytest.mark.parametrize("kw, words", [({"n_test": 5}, "n_test"), ({"n_test": 2.5}, "n_test"),
                                       ({"split": (0.5, 0.2)}, "not n or split")])
def test_synthetic_splits_bad_sizes_are_one_line(kw, words):
    with pytest.raises(DsrsdError, match=words) as err:
        book.synthetic_splits("default", seed=0, n=200, **kw)
    assert "\n" not in str(err.value)
