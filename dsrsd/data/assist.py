"""ASSISTments 2009-2010 skill builder (knowledge tracing), protocol B.

* :func:`prepare_assist2009` takes AKT's preprocessed ``assist2009_pid`` folder (downloaded, or
  a local copy; SHA-256 checked) or the original ``skill_builder_data_corrected.csv`` and writes a
  parsed cache under ``<data_dir>/assist2009/``.
* :func:`load_assist2009` builds the per-step :class:`~dsrsd.data.batch.Splits` of one fold.

Leakage rules: a multi-skill problem is stored as consecutive rows (same problem, different
skills, same response). Such a run is **merged** into one interaction with a skill set, so no row
of a run is ever history for another; consecutive rows with the same problem and the same skill
are separate attempts and stay separate. Sequences longer than ``max_len`` interactions are cut
into consecutive windows; each interaction is scored once, except a student's very first. The
first step of a later window is scored with an empty history (the history modality only holds
in-window interactions), as in the usual windowed KT protocol.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dsrsd.data.batch import ModalitySpec, MultimodalData, Splits, TaskSpec
from dsrsd.data.paths import atomic_dir, cached_torch, data_dir, download, read_json
from dsrsd.errors import DsrsdError

AKT_URL = "https://raw.githubusercontent.com/arghosh/AKT/master/data/assist2009_pid/{}"
FORMAT = 1
TENSOR_FORMAT = 1
PARTS = ("train", "valid", "test")
FOLD_FILES = [f"assist2009_pid_{p}{k}.csv" for k in range(1, 6) for p in PARTS]
# SHA-256 of AKT commit 01b7e8d7 (data/assist2009_pid); valid_k is identical to test_{k+1}
SHA256 = {
    "assist2009_pid_test1.csv": "7a1cb2bc8045dbe1016253fdd1dc831b26580638e15a7b7b99c5d7c73d3c3915",
    "assist2009_pid_test2.csv": "547c17ad179e850edc7a8a8a1e74a2e371e5eaeafcb2c375b7ae53248e733db0",
    "assist2009_pid_test3.csv": "deb07f638f84e391c170ca3bdc87eb07001c8034e6f5b87817876378b20ff3ee",
    "assist2009_pid_test4.csv": "b6a8edbe565cfae154ccae93584d69d7bd99a8341ac3e481ea1c569b9239ecc3",
    "assist2009_pid_test5.csv": "be0b93bd7f94c4d489f2950eb818d2a6d96ebd5ddb2342ee152695d504c40fa5",
    "assist2009_pid_train1.csv": "2b373459f4a55e305b7cc5aea3106398a1383c3356de5eaf8b249cd010ae01b7",
    "assist2009_pid_train2.csv": "b007e4046a823ce0e885e23b2b4c9d9755829c9982805ce22fcfe18d9d6820eb",
    "assist2009_pid_train3.csv": "57b66247d1bd8cec7577c100e484dde1c01739a1804b9d31eb0f9af7d213f643",
    "assist2009_pid_train4.csv": "249f8a087b9cba051ad477be1b935960b463476db192e5fcb6642169f78d2336",
    "assist2009_pid_train5.csv": "7220348e97eaf2efcd122cc53efbc55cf5676ca6144652135ee3c501aa86ae88",
    "assist2009_pid_valid1.csv": "547c17ad179e850edc7a8a8a1e74a2e371e5eaeafcb2c375b7ae53248e733db0",
    "assist2009_pid_valid2.csv": "deb07f638f84e391c170ca3bdc87eb07001c8034e6f5b87817876378b20ff3ee",
    "assist2009_pid_valid3.csv": "b6a8edbe565cfae154ccae93584d69d7bd99a8341ac3e481ea1c569b9239ecc3",
    "assist2009_pid_valid4.csv": "be0b93bd7f94c4d489f2950eb818d2a6d96ebd5ddb2342ee152695d504c40fa5",
    "assist2009_pid_valid5.csv": "7a1cb2bc8045dbe1016253fdd1dc831b26580638e15a7b7b99c5d7c73d3c3915",
    "problems.json": "e79a0a91549238058f2e6f3ddf393dd08476285275f26f35291d15f5aa3563e2",
    "skill.json": "f3a3e5e9d719c264b28a8bcedf5a7debfbf51f3c6c78db206175f0c443de6ccd",
    "user.json": "fbe90e77b63882f125f6ce442e600e111dfbaa7e49b8d6213c96c52d2169f168",
}
REQUIRED = [*FOLD_FILES, "skill.json"]  # problems.json and user.json are not used
CSV_COLUMNS = ["user_id", "problem_id", "skill_id", "skill_name", "correct", "order_id"]
ITEM_STATS = ["smoothed_correct_rate", "log1p_attempts", "n_skills"]
PRIOR_WEIGHT = 5.0  # pseudo-attempts at the training base rate behind every problem's rate
HISTORY_DIM = 64  # embedding size suggested for the history tokens


# ----------------------------------------------------------------------------------- parsing


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _ints(text: str, where: str) -> np.ndarray:
    try:
        return np.array([int(v) for v in text.strip().rstrip(",").split(",")], dtype=np.int64)
    except ValueError:
        raise DsrsdError(f"{where}: expected comma-separated integers") from None


def parse_akt(path: str | Path, n_skills: int | None = None) -> dict[str, np.ndarray]:
    """Parse one AKT 4-line file into ``user``, ``offsets``, ``problem``, ``skill``, ``resp``."""
    path = Path(path)
    if not path.is_file():
        raise DsrsdError(f"{path}: file not found")
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    except UnicodeDecodeError:
        raise DsrsdError(f"{path}: not a text file") from None
    if not lines or len(lines) % 4:
        raise DsrsdError(f"{path}: {len(lines)} non-empty lines, expected a positive multiple of 4 "
                         "(index,user / problems / skills / responses)")
    users, probs, skills, resps = [], [], [], []
    for i in range(0, len(lines), 4):
        head = _ints(lines[i], f"{path.name}:{i + 1}")
        if len(head) != 2:
            raise DsrsdError(f"{path.name}:{i + 1}: expected 'index,user_id'")
        p, s, r = (_ints(lines[i + j], f"{path.name}:{i + j + 1}") for j in (1, 2, 3))
        if not len(p) == len(s) == len(r):
            raise DsrsdError(f"{path.name}:{i + 2}: problem, skill and response lines differ in "
                             f"length ({len(p)}, {len(s)}, {len(r)})")
        if ((r != 0) & (r != 1)).any():
            raise DsrsdError(f"{path.name}:{i + 4}: responses must be 0 or 1")
        if (p < 1).any() or (s < 1).any() or (n_skills is not None and (s > n_skills).any()):
            raise DsrsdError(f"{path.name}:{i + 2}: problem/skill ids must be >= 1"
                             + (f" and skills <= {n_skills} (skill.json)" if n_skills else ""))
        users.append(head[1])
        probs.append(p)
        skills.append(s)
        resps.append(r)
    lengths = np.array([len(p) for p in probs])
    return {"user": np.array(users, np.int64),
            "offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            "problem": np.concatenate(probs).astype(np.int32),
            "skill": np.concatenate(skills).astype(np.int32),
            "resp": np.concatenate(resps).astype(np.int8)}


def _read_skill_json(path: Path) -> list[str]:
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DsrsdError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(m, dict) or not m or sorted(m.values()) != list(range(1, len(m) + 1)):
        raise DsrsdError(f"{path}: expected {{skill name: index 1..n}}")
    names = [""] * len(m)
    for name, i in m.items():
        names[i - 1] = str(name)
    return names


def _from_akt(folder: Path, verify: bool) -> tuple[dict, list[str]]:
    for f in REQUIRED:
        if not (folder / f).is_file():
            raise DsrsdError(f"{folder}: missing file {f}")
    if verify:
        for f, want in SHA256.items():
            if (folder / f).is_file() and _sha256(folder / f) != want:
                raise DsrsdError(f"{folder / f}: SHA-256 mismatch (not AKT's file; "
                                 "use --no-verify only for test fixtures)")
    names = _read_skill_json(folder / "skill.json")
    parts = {f.removeprefix("assist2009_pid_").removesuffix(".csv"): parse_akt(folder / f, len(names))
             for f in FOLD_FILES}
    return parts, names


def _read_skill_builder(path: Path) -> pd.DataFrame:
    """The original CSV (UTF-8 or latin-1), required columns checked and typed."""
    last: Exception | None = None
    for enc in ("utf-8", "latin-1"):
        try:
            head = pd.read_csv(path, nrows=0, encoding=enc)
            absent = [c for c in CSV_COLUMNS if c not in head.columns]
            if absent:
                raise DsrsdError(f"{path.name}: missing column(s) {', '.join(absent)}")
            df = pd.read_csv(path, usecols=CSV_COLUMNS, encoding=enc, dtype={"skill_name": str},
                             low_memory=False)
            break
        except UnicodeDecodeError as e:
            last = e
        except pd.errors.EmptyDataError:
            raise DsrsdError(f"{path.name}: empty file") from None
        except pd.errors.ParserError as e:
            raise DsrsdError(f"{path.name}: malformed CSV ({str(e).strip()})") from None
    else:
        raise DsrsdError(f"{path.name}: unreadable text ({last})")
    for col in ("user_id", "problem_id", "skill_id", "correct", "order_id"):
        num = pd.to_numeric(df[col], errors="coerce")
        bad = num.isna() & df[col].notna()
        if bad.any():
            raise DsrsdError(f"{path.name}: column {col!r} has a non-numeric value "
                             f"{df[col][bad].iloc[0]!r}")
        df[col] = num
    for col in ("user_id", "problem_id", "correct", "order_id"):
        if df[col].isna().any():
            raise DsrsdError(f"{path.name}: column {col!r} has missing values")
    if not df["correct"].isin([0, 1]).all():
        raise DsrsdError(f"{path.name}: column 'correct' must be 0 or 1")
    return df


def _from_skill_builder(path: Path, seed: int = 0) -> tuple[dict, list[str]]:
    """Sequences from the raw CSV, in AKT's layout, with 5 seeded student-level folds.

    Rows without a skill are dropped (as in AKT's preprocessing); each student's rows are sorted
    by order_id (stable, so a multi-skill problem's rows, sharing an order_id, stay adjacent).
    """
    df = _read_skill_builder(path)
    df = df[df["skill_id"].notna()]
    if df.empty:
        raise DsrsdError(f"{path.name}: no rows with a skill_id")
    df = df.sort_values(["user_id", "order_id"], kind="stable", ignore_index=True)
    skill_ids = np.sort(df["skill_id"].unique())
    name = (df.assign(skill_name=df["skill_name"].fillna(""))
            .groupby("skill_id")["skill_name"].agg(lambda s: s.value_counts().index[0]))
    names = [name[s] or f"skill {s:g}" for s in skill_ids]
    skill = np.searchsorted(skill_ids, df["skill_id"].to_numpy()) + 1
    problem = np.searchsorted(np.sort(df["problem_id"].unique()), df["problem_id"].to_numpy()) + 1
    users, starts = np.unique(df["user_id"].to_numpy(), return_index=True)
    offsets = np.append(starts, len(df)).astype(np.int64)
    group = np.random.default_rng(seed).permutation(len(users)) % 5
    parts = {}
    for k in range(5):
        sel = {"test": group == k, "valid": group == (k + 1) % 5}
        sel["train"] = ~sel["test"] & ~sel["valid"]
        for p in PARTS:
            idx = np.flatnonzero(sel[p])
            rows = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in idx])
            lens = offsets[idx + 1] - offsets[idx]
            parts[f"{p}{k + 1}"] = {
                "user": users[idx].astype(np.int64),
                "offsets": np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
                "problem": problem[rows].astype(np.int32), "skill": skill[rows].astype(np.int32),
                "resp": df["correct"].to_numpy()[rows].astype(np.int8)}
    return parts, names


# ------------------------------------------------------------------------------------- cache


def _root(data_dir_arg: str | Path | None) -> Path:
    return data_dir(data_dir_arg) / "assist2009"


def assist_cache_ok(data_dir_arg: str | Path | None = None) -> bool:
    """True if a complete prepared ASSISTments cache exists."""
    root = _root(data_dir_arg)
    m = read_json(root / "manifest.json")
    return bool(m) and m.get("format") == FORMAT and all(
        (root / f).is_file() for f in ("parts.npz", "skills.json"))


def prepare_assist2009(source: str | Path | None = None, data_dir: str | Path | None = None,
                       verify: bool = True, force: bool = False,
                       log: Callable[[str], None] = print) -> Path:
    """Parse ASSISTments 2009 and write the cache ``<data_dir>/assist2009/``; return that folder.

    ``source``: AKT's ``assist2009_pid`` folder (SHA-256 checked unless ``verify=False``, for test
    fixtures), the original skill-builder CSV (5 seeded student-level folds are made), or None to
    download AKT's files. A valid cache is left as is unless ``force``.
    """
    root = _root(data_dir)
    if not force and assist_cache_ok(data_dir):
        log(f"ASSISTments: prepared cache at {root} is valid, nothing to do (use --force to redo)")
        return root
    if source is None:
        source = root.parent / "downloads" / "assist2009_pid"
        for f, want in SHA256.items():
            dest = source / f
            if not dest.is_file() or _sha256(dest) != want:
                log(f"ASSISTments: downloading {f}")
                download(AKT_URL.format(f), dest, f)
                if _sha256(dest) != want:
                    dest.unlink()
                    raise DsrsdError(f"{AKT_URL.format(f)}: SHA-256 mismatch after download")
        verify = True
    source = Path(source).expanduser()
    if not source.exists():
        raise DsrsdError(f"ASSISTments source {source} does not exist")
    log(f"ASSISTments: reading {source}")
    if source.is_dir():
        parts, names = _from_akt(source, verify)
        kind = "akt"
    else:
        parts, names = _from_skill_builder(source)
        kind = "skill_builder"
    for p, a in parts.items():
        if len(a["user"]) == 0:
            raise DsrsdError(f"ASSISTments: part {p!r} has no students")
    with atomic_dir(root) as tmp:
        np.savez(tmp / "parts.npz", **{f"{p}/{k}": v for p, a in parts.items() for k, v in a.items()})
        (tmp / "skills.json").write_text(json.dumps(names))
        manifest = {"format": FORMAT, "kind": kind, "source": str(source), "verified": verify,
                    "rows": {p: int(len(a["resp"])) for p, a in parts.items()},
                    "students": {p: int(len(a["user"])) for p, a in parts.items()},
                    "prepared": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    log(f"ASSISTments: prepared {root} ({kind}, {len(names)} skills)")
    return root


def _load_parts(root: Path, fold: int) -> tuple[dict, list[str]]:
    """One fold's parts from the cache; never unpickles (``allow_pickle=False``)."""
    import zipfile
    try:
        with np.load(root / "parts.npz", allow_pickle=False) as z:
            parts = {p: {k: z[f"{p}{fold}/{k}"]
                         for k in ("user", "offsets", "problem", "skill", "resp")}
                     for p in PARTS}
        if not all(isinstance(a, np.ndarray) and a.dtype.kind in "biu"
                   for part in parts.values() for a in part.values()):
            raise ValueError("parts.npz holds something other than integer arrays")
        names = json.loads((root / "skills.json").read_text())
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError("skills.json")
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
        raise DsrsdError(f"the prepared ASSISTments cache under {root} is unreadable "
                         f"({type(e).__name__}): rebuild it with python "
                         "data_scripts/get_assistments.py --force") from None
    return parts, names


# -------------------------------------------------------------------------------- features


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
    tok = np.where(skills > 0, (skills - 1) * 2 + resp[:, None] + 1, 0)
    hist = np.zeros((n, max_len, k), np.int64)
    has_prev = t > 0  # history at step t = the interaction at step t-1 of the same window
    hist[w[has_prev], t[has_prev], :tok.shape[1]] = tok[idx[has_prev] - 1]
    content = np.zeros((n, max_len, emb.shape[1]), np.float32)
    sk = skills[idx]
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


def _build(parts: dict, names: list[str], fold: int, max_len: int, text_dim: int,
           merge: bool = True) -> dict:
    inter = {p: merge_runs(a, merge) for p, a in parts.items()}
    k = max(v["skills"].shape[1] for v in inter.values())
    stats, prior = _item_stats(inter, fold)
    emb = np.concatenate([np.zeros((1, text_dim), np.float32), skill_embeddings(names, text_dim)])
    out: dict = {"splits": {}, "counts": {}}
    for p, name in zip(PARTS, ("train", "val", "test"), strict=True):
        tensors, counts = _windows(inter[p], parts[p]["user"], stats[p], emb, k, max_len)
        if counts["windows"] == 0 or counts["scored"] == 0:
            raise DsrsdError(f"ASSISTments fold {fold}: split {name!r} has no scored interaction")
        counts["rows"] = int(len(parts[p]["resp"]))
        counts["run_response_mismatch"] = inter[p]["mismatch"]
        out["splits"][name], out["counts"][name] = tensors, counts
    out["info"] = {
        "dataset": "assist2009", "protocol": "B",
        "params": {"fold": fold, "max_len": max_len, "text_dim": text_dim, "merge_runs": merge},
        "counts": out.pop("counts"), "n_skills": len(names), "skill_names": names,
        "max_skills_per_interaction": k, "item_stats_features": ITEM_STATS,
        "train_base_rate": prior, "prior_weight": PRIOR_WEIGHT,
        "history_token": "(skill-1)*2 + response + 1 for each skill of the previous interaction",
        "window_first_step": "scored with an empty history (in-window history only)",
    }
    out["n_skills"] = len(names)
    return out


def _to_splits(built: dict, text_dim: int) -> Splits:
    n_skills = built["n_skills"]
    specs = [ModalitySpec("history", "sequence", HISTORY_DIM, vocab=2 * n_skills + 1, causal=True),
             ModalitySpec("content", "tabular", text_dim),
             ModalitySpec("item_stats", "tabular", len(ITEM_STATS))]
    task = TaskSpec("per_step")
    parts = {name: MultimodalData(specs, task, s["x"], s["pad"], s["present"], s["y"],
                                  s["y_mask"], s["extras"], f"assist2009/{name}")
             for name, s in built["splits"].items()}
    return Splits(parts["train"], parts["val"], parts["test"], built["info"])


def check_params(fold: int, max_len: int, text_dim: int) -> None:
    """Range checks of :func:`load_assist2009`'s parameters."""
    if isinstance(fold, bool) or not isinstance(fold, (int, np.integer)) or not 1 <= fold <= 5:
        raise DsrsdError(f"fold must be an integer in 1..5, got {fold!r}")
    if (isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer))
            or not 2 <= max_len <= 100_000):
        raise DsrsdError(f"max_len must be an integer in 2..100000, got {max_len!r}")
    if (isinstance(text_dim, bool) or not isinstance(text_dim, (int, np.integer))
            or not 1 <= text_dim <= 4096):
        raise DsrsdError(f"text_dim must be an integer in 1..4096, got {text_dim!r}")


def load_assist2009(data_dir: str | Path | None = None, fold: int = 1, max_len: int = 200,
                    source: str | Path | None = None, text_dim: int = 32) -> Splits:
    """ASSISTments 2009 fold ``fold`` (1..5: train_k / valid_k / test_k) as per-step Splits.

    Each sample is a window of ``max_len`` steps of one student (``T = max_len``):

    * ``history`` (sequence, causal, long ``[N, T, K]``, vocab ``2 * n_skills + 1``): at step t
      the tokens ``(skill-1)*2 + response + 1`` of the interaction at step t-1 (0 = pad; step 0
      empty); ``pad["history"]`` is True on real steps;
    * ``content`` (tabular, float ``[N, T, text_dim]``): the target item's skill names embedded
      offline (TF-IDF char n-grams + SVD), averaged over its skills;
    * ``item_stats`` (tabular, float ``[N, T, 3]``): the target problem's smoothed correct rate,
      log1p attempt count and skill count, from the training fold only.

    ``y`` float ``[N, T]``; ``y_mask`` marks scored steps. ``extras``: user_id, window, target
    problem ``[N, T]`` and target skills ``[N, T, K]``.
    """
    check_params(fold, max_len, text_dim)
    root = _root(data_dir)
    if source is not None:
        prepare_assist2009(source, data_dir, log=lambda s: None)
    elif not assist_cache_ok(data_dir):
        raise DsrsdError(f"no prepared ASSISTments 2009 under {root}: run "
                         "python data_scripts/get_assistments.py [--source DIR] [--data-dir DIR]")
    key = f"v{TENSOR_FORMAT}_fold{fold}_T{max_len}_d{text_dim}"

    def build() -> dict:
        parts, names = _load_parts(root, int(fold))
        return _build(parts, names, int(fold), int(max_len), int(text_dim))

    return _to_splits(cached_torch(root / "tensors" / f"{key}.pt", build), int(text_dim))


def kt_features_flat(data: MultimodalData) -> tuple[np.ndarray, np.ndarray]:
    """Flat per-step features for quick baselines: one row per scored step.

    Columns: item_stats, content, then from the in-window history only: previous response,
    log1p(#prior interactions), smoothed prior correct rate, and for the target's skills
    (``extras["skills"]``) the mean smoothed prior rate and mean log1p prior count on them.
    """
    tok = data.x["history"].numpy()
    mask = data.y_mask.numpy()
    first = tok[:, :, 0]
    has = first > 0
    r_prev = np.where(has, (first - 1) % 2, 0).astype(np.float32)
    n_prior = np.cumsum(has, 1).astype(np.float32)
    c_prior = np.cumsum(r_prev, 1)
    cols = [data.x["item_stats"].numpy()[mask], data.x["content"].numpy()[mask],
            np.where(has, r_prev, 0.5)[mask][:, None], np.log1p(n_prior)[mask][:, None],
            ((c_prior + 1) / (n_prior + 2))[mask][:, None]]
    if "skills" in data.extras:
        cols += list(_skill_history(tok, data.extras["skills"].numpy(), mask))
    return np.concatenate(cols, 1).astype(np.float32), data.y.numpy()[mask]


def _skill_history(tok: np.ndarray, target: np.ndarray, mask: np.ndarray, chunk: int = 256
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Prior in-window attempts and correct rate on the target's skills, per scored step."""
    n_skill = int(max(tok.max(), 1) + 1) // 2 + 1
    n_skill = max(n_skill, int(target.max()) + 1)
    rates, counts = [], []
    for s in range(0, len(tok), chunk):
        t, g, m = tok[s:s + chunk], target[s:s + chunk], mask[s:s + chunk]
        b, steps, _ = t.shape
        skill = np.where(t > 0, (t - 1) // 2 + 1, 0)
        corr = np.where(t > 0, (t - 1) % 2, 0)
        cnt = np.zeros((b, steps, n_skill), np.float32)
        cor = np.zeros((b, steps, n_skill), np.float32)
        bi, ti, _ = np.nonzero(skill > 0)
        np.add.at(cnt, (bi, ti, skill[skill > 0]), 1.0)
        np.add.at(cor, (bi, ti, skill[skill > 0]), corr[skill > 0])
        cnt, cor = np.cumsum(cnt, 1), np.cumsum(cor, 1)
        bb, tt = np.nonzero(m)
        gs = g[bb, tt]  # [M, K] target skills, 0 pad
        valid = gs > 0
        n_s = cnt[bb[:, None], tt[:, None], gs]
        c_s = cor[bb[:, None], tt[:, None], gs]
        k = np.maximum(valid.sum(1), 1)
        rates.append((((c_s + 1) / (n_s + 2)) * valid).sum(1) / k)
        counts.append((np.log1p(n_s) * valid).sum(1) / k)
    return np.concatenate(rates)[:, None], np.concatenate(counts)[:, None]
