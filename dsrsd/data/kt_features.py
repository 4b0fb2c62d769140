"""Knowledge tracing, stage 2: row arrays -> interactions -> per-step tensors (:class:`Splits`).

Leakage rules: a multi-skill problem is stored as consecutive rows (same problem, different
skills, same response). Such a run is **merged** into one interaction with a skill set, so no row
of a run is ever history for another; consecutive rows with the same problem and the same skill
are separate attempts and stay separate. Sequences longer than ``max_len`` interactions are cut
into consecutive windows; each interaction is scored once, except a student's very first. The
first step of a later window is scored with an empty history (the history modality only holds
in-window interactions), as in the usual windowed KT protocol. The same rules hold for every
source format (:mod:`dsrsd.data.kt_parse`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from dsrsd.data.batch import ModalitySpec, MultimodalData, Splits, TaskSpec, kt_columns
from dsrsd.data.kt_parse import PARTS, select_students
from dsrsd.errors import DsrsdError

ITEM_STATS = ["smoothed_correct_rate", "log1p_attempts", "n_skills"]
PRIOR_WEIGHT = 5.0  # pseudo-attempts at the training base rate behind every problem's rate
HISTORY_DIM = 64  # the history spec's dim (the KT encoders embed ids at the model's own size)
HISTORY_LAYOUT = ("kt: per step t, the skills of interaction t (1-based, 0 pad), its problem id "
                  "+ 1 (0 pad) and its response r_t (the target at t: read only for later steps)")


def merge_runs(a: dict[str, np.ndarray], merge: bool = True) -> dict[str, np.ndarray]:
    """Rows -> interactions. A run of consecutive rows of one student with the same problem and
    pairwise different skills becomes one interaction with a skill set; a repeated skill starts a
    new interaction (a second attempt). ``merge=False`` keeps every row (the leaky variant, only
    for showing that the leakage detector catches it).

    Returns ``student`` (index into ``a["user"]``), ``problem``, ``resp``, ``skills`` [I, K]
    (1-based, 0 pad), ``n_skills``, ``offsets`` (interactions per student), ``row_interaction``
    (the interaction of every row) and ``mismatch`` (rows disagreeing with their run's first
    row on the response; the first row's response is kept).
    """
    n = len(a["resp"])
    stud = np.repeat(np.arange(len(a["user"])), np.diff(a["offsets"]))
    prob, skill = a["problem"], a["skill"]
    new = np.ones(n, bool)
    if merge and n > 1:
        cont = (prob[1:] == prob[:-1]) & (stud[1:] == stud[:-1])
        new[1:] = ~cont
        # only rows continuing a same-problem block need the "skill already in this run" check
        seen: set[int] = set()
        for i in np.flatnonzero(new[1:] == 0) + 1:
            if new[i - 1]:
                seen = {int(skill[i - 1])}
            s = int(skill[i])
            if s in seen:
                new[i] = True
                seen = {s}
            else:
                seen.add(s)
    iid = np.cumsum(new) - 1
    first = np.flatnonzero(new)
    pos = np.arange(n) - first[iid]
    k = int(pos.max()) + 1 if n else 1
    skills = np.zeros((len(first), k), np.int64)
    skills[iid, pos] = skill
    mismatch = int((a["resp"] != a["resp"][first][iid]).sum())
    per_student = np.bincount(stud[first], minlength=len(a["user"]))
    return {"student": stud[first], "problem": prob[first].astype(np.int64),
            "resp": a["resp"][first].astype(np.int64), "skills": skills,
            "n_skills": (skills > 0).sum(1), "mismatch": mismatch, "row_interaction": iid,
            "offsets": np.concatenate([[0], np.cumsum(per_student)])}


def skill_embeddings(names: list[str], dim: int, seed: int = 0) -> np.ndarray:
    """Offline text embedding of skill names: TF-IDF over character 2-4-grams, then truncated
    SVD to ``dim`` (zero-padded when there are fewer names than ``dim``), rows L2-normalised."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    tf = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), lowercase=True, sublinear_tf=True)
    m = tf.fit_transform([n if n.strip() else "unnamed" for n in names])
    k = min(dim, m.shape[0] - 1, m.shape[1] - 1)
    out = np.zeros((len(names), dim), np.float32)
    if k >= 1:
        out[:, :k] = TruncatedSVD(k, random_state=seed).fit_transform(m)
    else:
        out[:, : min(dim, m.shape[1])] = m.toarray()[:, :dim]
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norm > 0, norm, 1.0)


def _problem_stats(problem: np.ndarray, resp: np.ndarray, n_problems: int, prior: float,
                   scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    n = np.bincount(problem, minlength=n_problems).astype(np.float64) * scale
    c = np.bincount(problem, weights=resp, minlength=n_problems) * scale
    return (c + PRIOR_WEIGHT * prior) / (n + PRIOR_WEIGHT), np.log1p(n)


def _item_stats(inter: dict[str, dict], fold: int) -> tuple[dict[str, np.ndarray], float]:
    """Per interaction [rate, log1p(count), n_skills] of its problem, from training data only.

    Validation/test use statistics of the whole training fold. Training interactions use
    out-of-fold statistics (5 student groups; counts rescaled by 5/4) so that an interaction's
    own response never enters its own features.
    """
    tr = inter["train"]
    n_problems = max(int(v["problem"].max()) for v in inter.values()) + 1
    prior = float(tr["resp"].mean())
    rate, logn = _problem_stats(tr["problem"], tr["resp"], n_problems, prior)
    out = {p: np.stack([rate[v["problem"]], logn[v["problem"]], v["n_skills"]], 1)
           for p, v in inter.items() if p != "train"}
    group = np.random.default_rng(fold).permutation(int(tr["student"].max()) + 1) % 5
    g = group[tr["student"]]
    x = np.zeros((len(g), 3))
    for k in range(5):
        r, ln = _problem_stats(tr["problem"][g != k], tr["resp"][g != k], n_problems, prior, 5 / 4)
        x[g == k, 0] = r[tr["problem"][g == k]]
        x[g == k, 1] = ln[tr["problem"][g == k]]
    x[:, 2] = tr["n_skills"]
    out["train"] = x
    return {p: v.astype(np.float32) for p, v in out.items()}, prior


def _windows(v: dict, users: np.ndarray, stats: np.ndarray, emb: np.ndarray, k: int,
             max_len: int) -> tuple[dict, dict]:
    # ``history`` holds interaction t itself at step t (layout kt, :data:`HISTORY_LAYOUT`)
    """Cut one part's interactions into windows of ``max_len`` steps and fill all tensors."""
    per = np.diff(v["offsets"])
    j = np.arange(len(v["resp"])) - np.repeat(v["offsets"][:-1], per)  # index within student
    n_win = -(-per // max_len)
    win_off = np.concatenate([[0], np.cumsum(n_win)])
    w = win_off[v["student"]] + j // max_len
    t = j % max_len
    # drop windows with no scored step (students with a single interaction)
    scored_win = np.bincount(w, weights=(j > 0), minlength=int(win_off[-1])) > 0
    keep_win = np.flatnonzero(scored_win)
    new_id = np.full(int(win_off[-1]), -1)
    new_id[keep_win] = np.arange(len(keep_win))
    ok = new_id[w] >= 0
    w, t, jj = new_id[w[ok]], t[ok], j[ok]
    idx = np.flatnonzero(ok)
    n, skills, resp = len(keep_win), v["skills"], v["resp"]
    sk = skills[idx]
    hist = np.zeros((n, max_len, k + 2), np.int64)
    hist[w, t, :sk.shape[1]] = sk
    hist[w, t, k] = v["problem"][idx] + 1
    hist[w, t, k + 1] = resp[idx]
    content = np.zeros((n, max_len, emb.shape[1]), np.float32)
    content[w, t] = (emb[sk] * (sk > 0)[..., None]).sum(1) / np.maximum((sk > 0).sum(1), 1)[:, None]
    item = np.zeros((n, max_len, stats.shape[1]), np.float32)
    item[w, t] = stats[idx]
    y = np.zeros((n, max_len), np.float32)
    y[w, t] = resp[idx]
    y_mask = np.zeros((n, max_len), bool)
    y_mask[w, t] = jj > 0  # a student's first interaction has no history at all: not scored
    pad = np.zeros((n, max_len), bool)
    pad[w, t] = True
    target_skills = np.zeros((n, max_len, k), np.int64)
    target_skills[w, t, :sk.shape[1]] = sk
    problem = np.zeros((n, max_len), np.int64)
    problem[w, t] = v["problem"][idx]
    win_student = np.zeros(n, np.int64)
    win_student[w] = v["student"][idx]
    win_number = np.zeros(n, np.int64)
    win_number[w] = jj // max_len
    tensors = {"x": {"history": torch.from_numpy(hist), "content": torch.from_numpy(content),
                     "item_stats": torch.from_numpy(item)},
               "pad": {"history": torch.from_numpy(pad)},
               "present": torch.ones(n, 3, dtype=torch.bool), "y": torch.from_numpy(y),
               "y_mask": torch.from_numpy(y_mask),
               "extras": {"user_id": torch.from_numpy(users[win_student]),
                          "window": torch.from_numpy(win_number),
                          "problem": torch.from_numpy(problem),
                          "skills": torch.from_numpy(target_skills)}}
    counts = {"students": int(len(users)), "windows": n, "interactions": int(len(resp)),
              "scored": int(y_mask.sum()), "positive_rate": float(y[y_mask].mean()) if n else 0.0,
              "dropped_single_interaction_students": int(len(scored_win) - len(keep_win))}
    return tensors, counts


def build(parts: dict, names: list[str], fold: int, max_len: int, text_dim: int,
          merge: bool = True, dataset: str = "assist2009", extra_info: dict | None = None) -> dict:
    """Tensors and ``info`` of one fold from its ``parts`` (``train``/``valid``/``test`` rows).

    ``extra_info`` is appended to ``info`` (provenance, validation split); with the defaults
    (``assist2009``, no extra) the result is exactly the ASSISTments 2009 preset's.
    """
    inter = {p: merge_runs(a, merge) for p, a in parts.items()}
    k = max(v["skills"].shape[1] for v in inter.values())
    n_problems = max(int(v["problem"].max()) for v in inter.values()) + 1
    stats, prior = _item_stats(inter, fold)
    emb = np.concatenate([np.zeros((1, text_dim), np.float32), skill_embeddings(names, text_dim)])
    out: dict = {"splits": {}, "counts": {}}
    for p, name in zip(PARTS, ("train", "val", "test"), strict=True):
        tensors, counts = _windows(inter[p], parts[p]["user"], stats[p], emb, k, max_len)
        if counts["windows"] == 0 or counts["scored"] == 0:
            label = "ASSISTments" if dataset == "assist2009" else dataset
            raise DsrsdError(f"{label} fold {fold}: split {name!r} has no scored interaction")
        counts["rows"] = int(len(parts[p]["resp"]))
        counts["run_response_mismatch"] = inter[p]["mismatch"]
        out["splits"][name], out["counts"][name] = tensors, counts
    out["info"] = {
        "dataset": dataset, "protocol": "B",
        "params": {"fold": fold, "max_len": max_len, "text_dim": text_dim, "merge_runs": merge},
        "counts": out.pop("counts"), "n_skills": len(names), "skill_names": names,
        "max_skills_per_interaction": k, "item_stats_features": ITEM_STATS,
        "train_base_rate": prior, "prior_weight": PRIOR_WEIGHT,
        "n_problems": n_problems, "history_layout": HISTORY_LAYOUT,
        "window_first_step": "scored with an empty history (in-window history only)",
        **(extra_info or {}),
    }
    out["n_skills"] = len(names)
    out["n_items"] = n_problems + 1
    return out


def to_splits(built: dict, text_dim: int, dataset: str = "assist2009") -> Splits:
    n_skills = built["n_skills"]
    specs = [ModalitySpec("history", "sequence", HISTORY_DIM, vocab=2 * n_skills + 1, causal=True,
                          layout="kt", items=built["n_items"]),
             ModalitySpec("content", "tabular", text_dim),
             ModalitySpec("item_stats", "tabular", len(ITEM_STATS))]
    task = TaskSpec("per_step")
    parts = {name: MultimodalData(specs, task, s["x"], s["pad"], s["present"], s["y"],
                                  s["y_mask"], s["extras"], f"{dataset}/{name}")
             for name, s in built["splits"].items()}
    return Splits(parts["train"], parts["val"], parts["test"], built["info"])


def inner_split(train: dict, frac: float, seed: int) -> tuple[dict, dict]:
    """Seeded student-level split of a training part into (inner train, inner validation).

    ``round(frac * students)`` students (at least 1, at most all but 1) go to the inner
    validation part; both keep the file order of their students. The split depends on the data
    and ``seed`` only, never on the run's seed, so every method sees the same inner split.
    """
    n = len(train["user"])
    if n < 2:
        raise DsrsdError(f"inner validation split needs at least 2 training students, got {n}")
    n_val = min(max(1, round(frac * n)), n - 1)
    val = np.zeros(n, bool)
    val[np.random.default_rng(seed).permutation(n)[:n_val]] = True
    return select_students(train, ~val), select_students(train, val)


HISTORY_FEATURES = ["prev_response", "log1p_prior", "prior_rate", "skill_prior_rate",
                    "skill_log1p_prior"]


def history_features(x: Tensor, n_skills: int, chunk: int = 64) -> Tensor:
    """Target-skill history features ``[B, T, 5]`` (:data:`HISTORY_FEATURES`) of a ``kt`` layout
    tensor ``x`` ``[B, T, K + 2]``; step t reads the interactions before t of its window and
    the skills of item t, never a response at or after t.

    Columns: previous response (0.5 at a window's first step), log1p of the number of prior
    interactions, their smoothed correct rate ``(c + 1) / (n + 2)``, and over the target's
    skills the mean smoothed correct rate and mean log1p count of prior interactions with that
    skill.
    """
    skills, problem, resp = kt_columns(x)
    valid = (problem > 0).float()
    r = resp.float() * valid
    n_prior = valid.cumsum(1) - valid  # exclusive prefix sums: steps < t only
    c_prior = r.cumsum(1) - r
    has_prev = torch.cat([torch.zeros_like(valid[:, :1]), valid[:, :-1]], 1) > 0
    r_prev = torch.cat([torch.zeros_like(r[:, :1]), r[:, :-1]], 1)
    cols = [torch.where(has_prev, r_prev, torch.full_like(r_prev, 0.5)), torch.log1p(n_prior),
            (c_prior + 1) / (n_prior + 2)]
    rates, counts = [], []
    for s in range(0, len(x), chunk):  # [b, T, skills + 1] one-hot counts, in row chunks
        sk, rr = skills[s:s + chunk], r[s:s + chunk]
        b, t, _ = sk.shape
        cnt = torch.zeros(b, t, n_skills + 1).scatter_add_(-1, sk, (sk > 0).float())
        cor = torch.zeros(b, t, n_skills + 1).scatter_add_(
            -1, sk, (sk > 0).float() * rr.unsqueeze(-1))
        cnt, cor = cnt.cumsum(1) - cnt, cor.cumsum(1) - cor
        n_s, c_s = cnt.gather(-1, sk), cor.gather(-1, sk)  # at the target's skills
        on = (sk > 0).float()
        k = on.sum(-1).clamp_min(1)
        rates.append((((c_s + 1) / (n_s + 2)) * on).sum(-1) / k)
        counts.append((torch.log1p(n_s) * on).sum(-1) / k)
    cols += [torch.cat(rates), torch.cat(counts)]
    return torch.stack(cols, -1)


def kt_features_flat(data: MultimodalData) -> tuple[np.ndarray, np.ndarray]:
    """Flat per-step features for quick baselines (the coin-flip leakage detector): one row per
    scored step, columns item_stats, content and :func:`history_features`."""
    spec = next(s for s in data.specs if s.layout == "kt")
    mask = data.y_mask
    hist = history_features(data.x[spec.name], spec.n_skills)
    cols = [data.x["item_stats"][mask], data.x["content"][mask], hist[mask]]
    return torch.cat(cols, 1).numpy().astype(np.float32), data.y[mask].numpy()
