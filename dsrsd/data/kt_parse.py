"""Knowledge tracing, stage 1: read sequence files into row arrays (no features, no cache).

Three layouts, all returned as ``parts``: ``{"train1": rows, "valid1": rows, "test1": rows, ...}``
with ``rows`` = ``user`` [S], ``offsets`` [S+1], ``problem``, ``skill``, ``resp`` [R] (ids 1-based,
one row per (interaction, skill), a multi-skill problem as consecutive rows):

* an AKT folder of 4-line files (``index,user`` / problems / skills / responses), folds as given
  (``<prefix>train<k>.csv``, ``<prefix>valid<k>.csv``, ``<prefix>test<k>.csv``, any prefix) or built
  from test files alone (test_k, valid_k = test_{k+1}, train_k = the others, as AKT did);
* pyKT's ``train_valid_sequences.csv`` (+ ``test_sequences.csv``): fold k validates on pyKT fold
  k-1, trains on the other folds, and is scored on the common test file;
* the ASSISTments skill-builder CSV (5 seeded student-level folds, AKT's construction).

Every problem with a file raises a one-line :class:`~dsrsd.errors.DsrsdError` naming the file and,
where there is one, the line.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from dsrsd.errors import DsrsdError

PARTS = ("train", "valid", "test")
ROW_KEYS = ("user", "offsets", "problem", "skill", "resp")
CSV_COLUMNS = ["user_id", "problem_id", "skill_id", "skill_name", "correct", "order_id"]
PYKT_TRAIN, PYKT_TEST = "train_valid_sequences.csv", "test_sequences.csv"
PYKT_COLUMNS = ["fold", "uid", "concepts", "responses"]  # questions optional (then = concepts)
AKT_FILE = re.compile(r"^(?P<prefix>.*?)(?P<part>train|valid|test)(?P<k>[0-9]+)\.csv$")


def sha256(path: Path) -> str:
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


def rows_from_lists(users: list, probs: list, skills: list, resps: list) -> dict[str, np.ndarray]:
    lengths = np.array([len(p) for p in probs], np.int64)
    cat = (lambda xs: np.concatenate(xs)) if probs else (lambda xs: np.zeros(0, np.int64))
    return {"user": np.array(users, np.int64),
            "offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            "problem": cat(probs).astype(np.int32), "skill": cat(skills).astype(np.int32),
            "resp": cat(resps).astype(np.int8)}


def parse_akt(path: str | Path, n_skills: int | None = None, strict_head: bool = True
              ) -> dict[str, np.ndarray]:
    """Parse one AKT 4-line file into ``user``, ``offsets``, ``problem``, ``skill``, ``resp``.

    ``strict_head``: the first line of a student must be ``index,user_id`` (ASSISTments 2009);
    otherwise one integer is accepted too (a length or an id) and the student's position in the
    file is its user id.
    """
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
        if len(head) != 2 and (strict_head or len(head) != 1):
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
        users.append(head[1] if len(head) == 2 else i // 4)
        probs.append(p)
        skills.append(s)
        resps.append(r)
    return rows_from_lists(users, probs, skills, resps)


def read_skill_json(path: Path) -> list[str]:
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


def unnamed_skills(parts: dict, names: list[str] | None = None) -> list[str]:
    """``names`` extended with ``"skill <id>"`` up to the largest skill id in ``parts``."""
    top = max((int(a["skill"].max()) for a in parts.values() if len(a["skill"])), default=0)
    names = list(names or [])
    return names + [f"skill {i}" for i in range(len(names) + 1, top + 1)]


# ------------------------------------------------------------------------------ AKT folders


def akt_fold_files(folder: Path) -> tuple[dict[str, Path], str]:
    """``{"train1": path, ...}`` of an AKT folder and how the folds were found.

    Folds as given (train/valid/test per k, any one prefix), or test files alone (>= 3), from which
    folds are built as AKT did. Folds are numbered 1..n; all of 1..n must be there.
    """
    if not folder.is_dir():
        raise DsrsdError(f"{folder}: not a folder")
    found: dict[str, dict[str, Path]] = {}
    for f in sorted(folder.iterdir()):
        m = AKT_FILE.match(f.name)
        if m and f.is_file():
            found.setdefault(m["prefix"], {})[f"{m['part']}{int(m['k'])}"] = f
    if not found:
        raise DsrsdError(f"{folder}: no AKT fold files (<prefix>train<k>.csv, <prefix>valid<k>.csv, "
                         "<prefix>test<k>.csv)")
    if len(found) > 1:
        raise DsrsdError(f"{folder}: fold files with several prefixes "
                         f"({', '.join(repr(p) for p in sorted(found))}); keep one data set per folder")
    (prefix, files), = found.items()
    tests = sorted(int(k[4:]) for k in files if k.startswith("test"))
    n = len(tests)
    if tests != list(range(1, n + 1)):
        raise DsrsdError(f"{folder}: test files must be numbered 1..n, found {tests}")
    if any(k.startswith("train") for k in files):
        for k in range(1, n + 1):
            for p in ("train", "valid"):
                if f"{p}{k}" not in files:
                    raise DsrsdError(f"{folder}: missing file {prefix}{p}{k}.csv")
        return files, "given"
    if n < 3:
        raise DsrsdError(f"{folder}: {n} test file(s) and no train files; building folds needs "
                         "at least 3 test files")
    return files, "built from test files"


def read_akt_folder(folder: Path, strict_head: bool = False) -> tuple[dict, list[str], dict]:
    """Parts, skill names (``skill.json`` if present) and ``{"layout", "files"}`` of a folder."""
    files, how = akt_fold_files(folder)
    names = read_skill_json(folder / "skill.json") if (folder / "skill.json").is_file() else None
    parsed = {k: parse_akt(f, len(names) if names else None, strict_head) for k, f in files.items()}
    if how == "given":
        parts = parsed
    else:
        n = len(parsed)
        parts = {}
        for k in range(1, n + 1):
            v = k % n + 1
            others = [parsed[f"test{j}"] for j in range(1, n + 1) if j not in (k, v)]
            parts.update({f"train{k}": concat_rows(others), f"valid{k}": parsed[f"test{v}"],
                          f"test{k}": parsed[f"test{k}"]})
    used = sorted({f for f in files.values()} | ({folder / "skill.json"} if names else set()))
    return parts, unnamed_skills(parts, names), {"layout": f"akt ({how})",
                                                 "files": [f.name for f in used]}


def concat_rows(parts: list[dict]) -> dict[str, np.ndarray]:
    lens = np.concatenate([np.diff(a["offsets"]) for a in parts])
    return {"user": np.concatenate([a["user"] for a in parts]),
            "offsets": np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
            **{k: np.concatenate([a[k] for a in parts]) for k in ("problem", "skill", "resp")}}


def select_students(a: dict, keep: np.ndarray) -> dict[str, np.ndarray]:
    """The rows of the students ``keep`` (indices or a boolean mask), in their order."""
    idx = np.flatnonzero(keep) if keep.dtype == bool else np.asarray(keep)
    lens = a["offsets"][idx + 1] - a["offsets"][idx]
    rows = (np.concatenate([np.arange(a["offsets"][i], a["offsets"][i + 1]) for i in idx])
            if len(idx) else np.zeros(0, np.int64))
    return {"user": a["user"][idx], "offsets": np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
            **{k: a[k][rows] for k in ("problem", "skill", "resp")}}


# ---------------------------------------------------------------------------- skill builder


def read_skill_builder(path: Path) -> pd.DataFrame:
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
            raise DsrsdError(f"{path.name}:{int(np.flatnonzero(bad)[0]) + 2}: column {col!r} has a "
                             f"non-numeric value {df[col][bad].iloc[0]!r}")
        df[col] = num
    for col in ("user_id", "problem_id", "correct", "order_id"):
        if df[col].isna().any():
            raise DsrsdError(f"{path.name}:{int(np.flatnonzero(df[col].isna())[0]) + 2}: column "
                             f"{col!r} has missing values")
    if not df["correct"].isin([0, 1]).all():
        raise DsrsdError(f"{path.name}:{int(np.flatnonzero(~df['correct'].isin([0, 1]))[0]) + 2}: "
                         "column 'correct' must be 0 or 1")
    return df


def skill_builder_parts(path: Path, seed: int = 0) -> tuple[dict, list[str]]:
    """Sequences from the raw CSV, in AKT's layout, with 5 seeded student-level folds.

    Rows without a skill are dropped (as in AKT's preprocessing); each student's rows are sorted
    by order_id (stable, so a multi-skill problem's rows, sharing an order_id, stay adjacent).
    """
    df = read_skill_builder(path)
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


# -------------------------------------------------------------------------------------- pyKT


def _pykt_rows(path: Path) -> tuple[dict[int, list], list[int]]:
    """``{uid: [(fold, problems, skills, resps), ...]}`` (chunks in file order) of one pyKT file."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DsrsdError(f"{path.name}: empty file") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DsrsdError(f"{path.name}: malformed CSV ({str(e).strip()})") from None
    absent = [c for c in PYKT_COLUMNS if c not in df.columns]
    if absent:
        raise DsrsdError(f"{path.name}: missing column(s) {', '.join(absent)} (pyKT sequences)")
    if df.empty:
        raise DsrsdError(f"{path.name}: no rows")
    qcol = "questions" if "questions" in df.columns else "concepts"
    out: dict[int, list] = {}
    for i, row in enumerate(df.itertuples(index=False)):
        where = f"{path.name}:{i + 2}"
        r = row._asdict()
        try:
            fold, uid = int(r["fold"]), int(r["uid"])
        except ValueError:
            raise DsrsdError(f"{where}: fold and uid must be integers") from None
        q, c, y = (_ints(r[col], f"{where} ({col})") for col in (qcol, "concepts", "responses"))
        if not len(q) == len(c) == len(y):
            raise DsrsdError(f"{where}: {qcol}, concepts and responses differ in length "
                             f"({len(q)}, {len(c)}, {len(y)})")
        real = y != -1
        if "selectmasks" in r and r["selectmasks"].strip():
            sm = _ints(r["selectmasks"], f"{where} (selectmasks)")
            if len(sm) != len(y):
                raise DsrsdError(f"{where}: selectmasks has {len(sm)} values, responses {len(y)}")
            real &= sm != -1
        q, c, y = q[real], c[real], y[real]
        if ((y != 0) & (y != 1)).any():
            raise DsrsdError(f"{where}: responses must be 0 or 1 (-1 for padding)")
        if (q < 0).any() or (c < 0).any():
            raise DsrsdError(f"{where}: {qcol}/concepts ids must be >= 0 on real steps")
        out.setdefault(uid, []).append((fold, q + 1, c + 1, y))
    return out, sorted({ch[0] for chunks in out.values() for ch in chunks})


def _pykt_concat(seqs: dict[int, list], uids: list[int]) -> dict[str, np.ndarray]:
    return rows_from_lists(uids, *([np.concatenate([ch[j] for ch in seqs[u]]) for u in uids]
                                   for j in (1, 2, 3)))


def read_pykt(folder: Path) -> tuple[dict, list[str], dict]:
    """pyKT's ``train_valid_sequences.csv`` and ``test_sequences.csv`` (ids 0-based, -1 pads;
    a multi-concept question as repeated rows). Fold k: valid = pyKT fold k-1, train = the rest,
    test = the test file. Skill names from ``keyid2idx.json`` (original concept ids) if present."""
    tv, te = folder / PYKT_TRAIN, folder / PYKT_TEST
    for f in (tv, te):
        if not f.is_file():
            raise DsrsdError(f"{folder}: missing file {f.name} (pyKT layout)")
    train, folds = _pykt_rows(tv)
    test, _ = _pykt_rows(te)
    if folds != list(range(len(folds))) or len(folds) < 2:
        raise DsrsdError(f"{tv.name}: folds must be 0..n-1 with n >= 2, found {folds}")
    for u, chunks in train.items():
        if len({ch[0] for ch in chunks}) > 1:
            raise DsrsdError(f"{tv.name}: uid {u} appears in several folds")
    shared = sorted(set(train) & set(test))
    if shared:
        raise DsrsdError(f"{te.name}: uid {shared[0]} is also in {tv.name}")
    test_rows = _pykt_concat(test, list(test))
    parts = {}
    for k, f in enumerate(folds, start=1):
        parts[f"train{k}"] = _pykt_concat(train, [u for u, ch in train.items() if ch[0][0] != f])
        parts[f"valid{k}"] = _pykt_concat(train, [u for u, ch in train.items() if ch[0][0] == f])
        parts[f"test{k}"] = test_rows
    names = None
    used = [tv.name, te.name]
    key = folder / "keyid2idx.json"
    if key.is_file():
        try:
            m = json.loads(key.read_text()).get("concepts", {})
            names = [""] * len(m)
            for orig, i in m.items():
                names[int(i)] = f"concept {orig}"
        except (ValueError, AttributeError, IndexError, TypeError) as e:
            raise DsrsdError(f"{key}: expected {{'concepts': {{id: index 0..n-1}}}} ({e})") from None
        used.append(key.name)
    return parts, unnamed_skills(parts, names), {"layout": "pykt", "files": used}


def read_any(path: Path) -> tuple[dict, list[str], dict]:
    """Parts, skill names and ``{"layout", "files"}`` of any supported source (detected)."""
    if not path.exists():
        raise DsrsdError(f"KT source {path} does not exist")
    if path.is_dir():
        if (path / PYKT_TRAIN).is_file():
            return read_pykt(path)
        return read_akt_folder(path)
    if path.name == PYKT_TRAIN:
        return read_pykt(path.parent)
    parts, names = skill_builder_parts(path)
    return parts, names, {"layout": "skill_builder", "files": [path.name]}


def source_files(path: Path) -> tuple[str, list[Path]]:
    """The detected layout of ``path`` and the files it will be read from (for hashing)."""
    if not path.exists():
        raise DsrsdError(f"KT source {path} does not exist")
    if path.is_file() and path.name == PYKT_TRAIN:
        path = path.parent
    if path.is_dir():
        if (path / PYKT_TRAIN).is_file():
            extra = [path / "keyid2idx.json"] if (path / "keyid2idx.json").is_file() else []
            return "pykt", [path / PYKT_TRAIN, path / PYKT_TEST, *extra]
        files, _ = akt_fold_files(path)
        extra = [path / "skill.json"] if (path / "skill.json").is_file() else []
        return "akt", sorted([*files.values(), *extra])
    return "skill_builder", [path]
