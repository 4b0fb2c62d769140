"""What the book's chapters share: one setup call, honest budget parameters, figure conventions
and the architecture figure.

Every chapter starts with ``paths = book.setup(seed)`` (seeds, threads, display options) and
resolves its budget with :func:`budget`, so an explicit papermill parameter is never
overwritten. Importing this module is cheap: torch, pandas and matplotlib are imported inside
the functions that need them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

from dsrsd.errors import DsrsdError

REPO = Path(__file__).resolve().parents[1]

# DSRSD-Net is drawn in one strong colour wherever methods are compared; its draft-weights
# variant in a second, lighter one; every other method in a muted hue.
HIGHLIGHT = "#c0392b"
HIGHLIGHT_2 = "#e67e22"
OTHERS = ("#4c72b0", "#55a868", "#8172b2", "#937860", "#64b5cd", "#8c8c8c", "#da8bc3",
          "#ccb974", "#1f3b5c", "#2f6f4f")


@dataclass(frozen=True)
class Paths:
    """Folders a chapter reads: the repository, ``results/`` and its run records."""

    repo: Path
    results: Path
    runs: Path


def setup(seed: int | None = 0, threads: int = 1, precision: int | None = 3,
          width: int | None = None) -> Paths:
    """Prepare a chapter's kernel and return the paths it reads.

    Progress bars off, ``threads`` torch threads (one keeps seeded CPU numbers identical from run
    to run), every RNG seeded with ``seed`` (``None``: left alone, for chapters that only read
    records), pandas ``precision``/``width`` when given, and figure defaults whose tick labels
    stay at 9 pt or more.
    """
    os.environ["TQDM_DISABLE"] = "1"
    import matplotlib.pyplot as plt
    import pandas as pd
    import torch

    torch.set_num_threads(threads)
    if seed is not None:
        from dsrsd.train import set_seed

        set_seed(seed)
    if precision is not None:
        pd.set_option("display.precision", precision)
    if width is not None:
        pd.set_option("display.width", width)
    plt.rcParams.update({"xtick.labelsize": 9, "ytick.labelsize": 9, "legend.fontsize": 9,
                         "axes.labelsize": 10, "axes.titlesize": 10, "figure.dpi": 100})
    results = REPO / "results"
    return Paths(repo=REPO, results=results, runs=results / "runs")


def budget(quick: bool, quick_preset: dict, full_preset: dict, echo: bool = True,
           **given) -> tuple:
    """Each budget parameter's value, in the order given: an explicit value (not ``None``) is
    used as it is; ``None`` takes the preset of the mode (``quick_preset`` when ``quick``, else
    ``full_preset``). Prints the resolved budget when ``echo``.

    ``quick`` has one meaning in every chapter: True is the small CPU budget the book is built
    with, False the larger budget of ``full_preset``.
    """
    preset = quick_preset if quick else full_preset
    missing = [k for k in given if given[k] is None and k not in preset]
    if missing:
        raise DsrsdError(f"budget: no preset for parameter(s) {', '.join(missing)}")
    values = {k: preset[k] if v is None else v for k, v in given.items()}
    if echo:
        mode = "quick" if quick else "full"
        print(f"budget ({mode}): " + ", ".join(
            f"{k} {v}" + ("" if given[k] is None else " (set explicitly)") for k, v in values.items()))
    return tuple(values.values())


# ----------------------------------------------------------------------------- data
def synthetic_splits(scenario: str = "default", seed: int = 0, n: int | None = None,
                     n_test: int = 2000, **overrides):
    """The synthetic benchmark with the training and validation sizes that
    ``load_synthetic(scenario, n=n)`` gives, and a test split of ``n_test`` samples.

    Training costs what it did, while the test AUC's standard error falls to about 0.01 at
    2,000 samples (0.02 at a few hundred). All splits come from one generated instance, drawn
    as ``n_train + n_val + n_test`` samples, so the instance is not the one ``load_synthetic``
    draws with ``n`` alone. A bad size is a one-line :class:`DsrsdError`."""
    from dsrsd.data.synthetic import load_synthetic, make_config

    if {"n", "split"} & set(overrides):
        raise DsrsdError("synthetic_splits: pass n and n_test, not n or split as overrides")
    cfg = make_config(scenario, **({} if n is None else {"n": n}))
    if isinstance(n_test, bool) or not isinstance(n_test, int) or n_test < 20:
        raise DsrsdError(f"synthetic_splits: n_test must be an integer >= 20, got {n_test!r}")
    n_tr, n_va = int(cfg.split[0] * cfg.n), int(cfg.split[1] * cfg.n)
    total = n_tr + n_va + n_test
    # Half a sample above each size: load_synthetic truncates fraction x total.
    split = ((n_tr + 0.5) / total, (n_va + 0.5) / total)
    splits = load_synthetic(scenario, seed=seed, **{"n": total, "split": split, **overrides})
    if splits.info["sizes"] != [n_tr, n_va, n_test]:
        raise DsrsdError(f"synthetic_splits: sizes {splits.info['sizes']}, expected "
                         f"{[n_tr, n_va, n_test]}")
    return splits


# ----------------------------------------------------------------------------- training
def fit_changed(cfg, splits, change) -> dict:
    """Train ``cfg.method`` on ``splits`` as :func:`dsrsd.train.fit` does (seed, model from the
    registry, the trainer's own epoch loop, early stopping, evaluation), with ``change``
    applied to the built model before training: how a chapter studies a variant that is no
    method of its own (e.g. :func:`dsrsd.dominance.without_modality_norm`). Returns ``val``,
    ``test``, ``history``, ``best_epoch`` and ``model``; writes nothing."""
    from dsrsd.registry import build_model
    from dsrsd.train import _train_loop, evaluate, resolve_device, set_seed

    device = resolve_device(cfg.device)
    set_seed(cfg.seed)
    model = change(build_model(cfg, splits.train.specs, splits.train.task, splits.train)).to(device)
    history, _, best_epoch = _train_loop(model, cfg, splits.train, splits.val, device, None,
                                         False, False, 0, 1)
    return {"val": evaluate(model, splits.val, device=device, amp=cfg.amp),
            "test": evaluate(model, splits.test, device=device, amp=cfg.amp),
            "history": history, "best_epoch": best_epoch, "model": model}


# ----------------------------------------------------------------------------- findings
def glued(notebook: str | Path) -> dict[str, object]:
    """The values a committed notebook glued (``myst_nb.glue``), by name: numbers as numbers,
    the rest as text. Glue works within one page only; this is how another page quotes them."""
    import ast
    import json

    values = {}
    for cell in json.loads(Path(notebook).read_text(encoding="utf-8"))["cells"]:
        for out in cell.get("outputs", []):
            name = out.get("metadata", {}).get("scrapbook", {}).get("name")
            text = out.get("data", {}).get("application/papermill.record/text/plain")
            if name and text is not None:
                try:
                    values[name] = ast.literal_eval(text)
                except (ValueError, SyntaxError):
                    values[name] = text
    return values


def headline(results: str | Path, ref: str = "dsrsd", group: str = "main") -> pd.DataFrame:
    """One row per setting of ``results/summary.csv``: ``ref``'s mean and standard deviation
    over runs, its rank among the methods of ``group`` (the records' own ``group`` column, so
    ablations and selection variants are left out by what the grid says, not by their names),
    the best method and its mean, and how many methods are above and below ``ref`` after Holm's
    correction, read from ``results/significance.csv`` (``significant_holm``; its family is one
    setting x one reference x one group, which is this table's)."""
    import pandas as pd

    results = Path(results)
    summ = _read_csv(results / "summary.csv", ("setting", "variant", "group", "n", "mean", "std"))
    sig = _read_csv(results / "significance.csv",
                    ("setting", "ref", "variant", "group", "significant_holm", "ref_better"))
    rows = []
    for setting, s in summ[summ["group"] == group].groupby("setting", sort=False):
        s = s.sort_values("mean", ascending=False)
        if ref not in set(s["variant"]):
            continue
        mine, best = s.set_index("variant").loc[ref], s.iloc[0]
        t = sig[(sig["setting"] == setting) & (sig["ref"] == ref) & (sig["group"] == group)]
        shown = t["significant_holm"].astype(bool)
        better = t["ref_better"].astype(bool)
        rows.append({"setting": setting, "methods": len(s), "runs": int(mine["n"]),
                     "mean": float(mine["mean"]), "std": float(mine["std"]),
                     "rank": int(list(s["variant"]).index(ref)) + 1,
                     "best": best["variant"], "best mean": float(best["mean"]),
                     "gap to best": float(best["mean"] - mine["mean"]),
                     "above after Holm": int((shown & ~better).sum()),
                     "below after Holm": int((shown & better).sum())})
    return pd.DataFrame(rows).set_index("setting")


def _read_csv(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    """A result table with the columns a helper reads; a missing file or column is one line."""
    import pandas as pd

    if not path.is_file():
        raise DsrsdError(f"{path}: not found (write it with python -m dsrsd.tables)")
    df = pd.read_csv(path)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DsrsdError(f"{path}: missing column(s) {', '.join(missing)} "
                         "(regenerate it with python -m dsrsd.tables)")
    return df


# ----------------------------------------------------------------------------- figures
def is_dsrsd(label: str) -> bool:
    """Whether a method label names DSRSD-Net with its default weights (``dsrsd``,
    ``DSRSD-Net``, ``dsrsd (md 0.15)``); not ``dsrsd_pw`` nor an ablation ``dsrsd-no_orth``."""
    low = str(label).lower()
    return low == "dsrsd" or low.startswith(("dsrsd-net", "dsrsd "))


def method_colors(labels) -> dict[str, str]:
    """A colour per method label: DSRSD-Net in :data:`HIGHLIGHT`, ``dsrsd_pw`` in
    :data:`HIGHLIGHT_2`, the rest in distinct muted hues, in the order given."""
    out, i = {}, 0
    for label in labels:
        if is_dsrsd(label):
            out[label] = HIGHLIGHT
        elif str(label).lower().startswith("dsrsd_pw"):
            out[label] = HIGHLIGHT_2
        else:
            out[label] = OTHERS[i % len(OTHERS)]
            i += 1
    return out


def legend_outside(ax, title: str | None = None, **kw):
    """A legend to the right of ``ax``, never over the data."""
    return ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
                     frameon=False, title=title, **kw)


def bold_dsrsd_ticks(ax, axis: str = "y") -> None:
    """Bold, highlighted tick labels for DSRSD-Net on ``axis`` of ``ax``."""
    ticks = ax.get_yticklabels() if axis == "y" else ax.get_xticklabels()
    for t in ticks:
        if is_dsrsd(t.get_text()):
            t.set_fontweight("bold")
            t.set_color(HIGHLIGHT)


def method_strip(df, order: list[str], unit: str, seed: int = 0, metric: str = "test_auc"):
    """Test AUC per method from run records ``df``: one point per ``unit`` (``"seed"`` or
    ``"fold"``, jitter seeded with ``seed``), mean and standard deviation as a diamond and bar,
    DSRSD-Net's row shaded, the legend outside the data. Returns the figure."""
    import matplotlib.pyplot as plt
    import numpy as np
    import seaborn as sns

    if df[unit].notna().all() and (df[unit] % 1 == 0).all():
        df = df.assign(**{unit: df[unit].astype(int)})  # folds and seeds read 1, not 1.0
    fig, ax = plt.subplots(figsize=(8.5, 0.33 * len(order) + 1.3))
    for i, label in enumerate(order):
        if is_dsrsd(label):
            ax.axhspan(i - 0.5, i + 0.5, color=HIGHLIGHT, alpha=0.12, lw=0)
    sns.pointplot(data=df, y="variant", x=metric, order=order, errorbar="sd", linestyle="none",
                  color="0.2", markers="D", ax=ax)
    np.random.seed(seed)  # seaborn draws the strip jitter from numpy's global generator
    sns.stripplot(data=df, y="variant", x=metric, order=order, hue=unit, palette="deep", size=6,
                  alpha=0.8, ax=ax)
    ax.set(xlabel=f"test AUC (points: {unit}s; diamond and bar: mean ± sd)", ylabel="")
    ax.grid(axis="x", color="0.9")
    legend_outside(ax, title=unit)
    bold_dsrsd_ticks(ax)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------- architecture
def architecture_figure():
    """DSRSD-Net as the code computes it (``DSRSDNet.streams``, ``fuse`` and ``aux_losses``):
    encoders, the residual split into shared ``s_m`` and private ``p_m``, the alignment head
    ``z_m``, the gated fusion and the predictor, with each auxiliary loss where it acts.
    Returns the matplotlib figure."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    fig, ax = plt.subplots(figsize=(13, 5.6))
    ax.set(xlim=(0, 13.0), ylim=(0, 5.6))
    ax.axis("off")

    def box(x, y, w, h, text, face, stack=False, edge="0.25"):
        for k in (2, 1) if stack else ():  # shadows: one box per modality m = 1..M
            ax.add_patch(FancyBboxPatch((x + 0.08 * k, y - 0.08 * k), w, h, fc="white", ec="0.6",
                                        boxstyle="round,pad=0.04,rounding_size=0.08", lw=0.8))
        ax.add_patch(FancyBboxPatch((x, y), w, h, fc=face, ec=edge, lw=1.2,
                                    boxstyle="round,pad=0.04,rounding_size=0.08"))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=10)
        return (x, y, w, h)

    def arrow(a, b, color="0.2", style="-|>", ls="-", rad=0.0):
        ax.add_patch(FancyArrowPatch(a, b, arrowstyle=style, mutation_scale=14, color=color,
                                     lw=1.4, ls=ls, connectionstyle=f"arc3,rad={rad}"))

    def loss(x, y, text):
        ax.text(x, y, text, ha="center", va="center", fontsize=9.5, color=HIGHLIGHT,
                bbox={"boxstyle": "round,pad=0.3", "fc": "#fdecea", "ec": HIGHLIGHT, "lw": 0.9})

    blue, grey, green, gold = "#dbe8f6", "#eeeeee", "#dff0e0", "#fbefd5"
    box(0.15, 2.2, 1.35, 1.0, "input $x_m$\n(table or\nsequence)", grey, stack=True)
    box(2.0, 2.2, 1.5, 1.0, "encoder\n$h_m = E_m(x_m)$\n(ends in LayerNorm)", grey, stack=True)
    box(4.2, 3.55, 2.0, 1.0, "shared\n$s_m = P_s(A_m h_m)$\n($P_s$ one for all $m$)", blue,
        stack=True)
    box(4.2, 0.85, 2.0, 1.0, "private, from the residual\n$p_m = P^{(m)}_p(h_m - W_m s_m)$",
        gold, stack=True)
    box(7.0, 3.55, 1.9, 1.0, "alignment head\n$z_m = s_m + \\mathcal{A}(s_m)$", blue, stack=True)
    box(9.4, 1.95, 2.35, 1.5, "gated fusion\n$\\alpha = $ softmax$_m$ score$(s_m, p_m)$\n"
        "$\\bar z = \\Sigma_m \\alpha_m z_m$, $\\bar p = $ mix$(p)$\n"
        "$f = g\\,\\bar z + (1-g)\\,\\bar p$", green)
    box(12.1, 2.3, 0.75, 0.8, "head\n$\\hat y$", grey)

    arrow((1.55, 2.7), (1.95, 2.7))
    arrow((3.55, 2.95), (4.15, 3.85))
    arrow((3.55, 2.45), (4.15, 1.4))
    arrow((5.2, 3.5), (5.2, 1.92), ls="--")  # W_m s_m is subtracted from h_m
    ax.text(5.3, 2.7, "$- W_m s_m$", fontsize=9.5, va="center")
    arrow((6.25, 4.05), (6.95, 4.05))
    arrow((8.95, 4.0), (9.45, 3.3))
    arrow((6.25, 1.35), (9.35, 2.2))
    arrow((11.8, 2.7), (12.05, 2.7))

    loss(7.95, 5.15, "alignment: InfoNCE $\\mathcal{L}_{con}$ + cosine $\\mathcal{L}_{reg}$"
                     " over pairs $(z_a, z_b)$")
    loss(7.95, 3.05, "decorrelation $\\mathcal{L}_{dec}$ of each $z_m$")
    loss(7.4, 0.45, "orthogonality $\\mathcal{L}_{orth}$: $p_m \\perp z_m$ and $p_m \\perp s_m$")
    loss(2.9, 0.45, "reconstruction $\\mathcal{L}_{rec}$: decode $s_m + p_m$")
    loss(12.3, 1.6, "task $\\mathcal{L}_{task}$")
    arrow((6.4, 0.55), (5.9, 0.8), color=HIGHLIGHT, style="-")
    arrow((7.95, 4.95), (7.95, 4.62), color=HIGHLIGHT, style="-")
    arrow((7.95, 3.25), (7.95, 3.48), color=HIGHLIGHT, style="-")
    arrow((12.4, 1.8), (12.45, 2.25), color=HIGHLIGHT, style="-")
    arrow((4.3, 0.55), (4.6, 0.8), color=HIGHLIGHT, style="-")
    ax.text(0.15, 5.3, "one stack per modality $m = 1..M$", fontsize=9.5, color="0.35")
    fig.tight_layout()
    return fig
