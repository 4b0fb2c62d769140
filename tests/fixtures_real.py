"""Small generated datasets in the *real* file schemas (OULAD zip, AKT 4-line files, skill-builder CSV).

They exercise the same loading paths as the real downloads. Sizes are parameters: tiny for schema
and invariance tests, larger for the coin-flip leakage detectors.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from dsrsd.data.oulad import ACTIVITY_TYPES

# (module, presentation, length): 2013 and 2014, STEM and social, so every split is non-empty
OULAD_PRESENTATIONS = [("AAA", "2013J", 268), ("AAA", "2014J", 269), ("CCC", "2014B", 241),
                       ("DDD", "2013B", 240), ("DDD", "2014J", 262), ("GGG", "2013J", 261),
                       ("GGG", "2014B", 241)]
REGIONS = ["East Anglian Region", "Scotland", "North Western Region", "London Region", "Wales"]
EDUCATION = ["HE Qualification", "A Level or Equivalent", "Lower Than A Level"]
IMD = ["0-10%", "10-20", "20-30%", "90-100%"]
AGES = ["0-35", "35-55", "55<="]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def make_oulad_tables(n_per_pres: int = 30, seed: int = 0, signal_before: float = 1.0,
                      label_after: float = 0.5, clicks_per_reg: int = 30) -> dict[str, pd.DataFrame]:
    """The 7 OULAD tables (official column names), as DataFrames with NaN for missing.

    Each registration has a latent at-risk flag ``z`` (base rate 0.4) that sets final_result.
    Events dated before ``label_after * length`` depend on ``z`` with strength ``signal_before``
    (0: independent, the coin-flip setting); later events always depend strongly on ``z``, so a
    pipeline that lets them reach a feature is caught.
    """
    rng = np.random.default_rng(seed)
    courses = pd.DataFrame(OULAD_PRESENTATIONS,
                           columns=["code_module", "code_presentation", "module_presentation_length"])
    assessments, vle, info, regs, subs, clicks = [], [], [], [], [], []
    id_a, id_site = 1000, 500000
    pool = rng.choice(np.arange(10000, 10000 + 4 * n_per_pres * len(courses)),
                      3 * n_per_pres, replace=False)  # students shared across presentations
    for p, (mod, pres, length) in enumerate(OULAD_PRESENTATIONS):
        b = label_after * length
        # schedule: TMAs and CMAs spread over the module, one exam (undated in some presentations)
        days = np.round(np.array([0.12, 0.3, 0.45, 0.6, 0.8]) * length).astype(int)
        types = ["TMA", "CMA", "TMA", "CMA", "TMA"]
        a = pd.DataFrame({"code_module": mod, "code_presentation": pres,
                          "id_assessment": np.arange(id_a, id_a + 6),
                          "assessment_type": types + ["Exam"],
                          "date": list(days) + [np.nan if p % 2 else length - 3],
                          "weight": [20.0, 0.0, 25.0, 0.0, 55.0, 100.0]})
        id_a += 6
        assessments.append(a)
        sites = np.arange(id_site, id_site + 2 * len(ACTIVITY_TYPES))
        id_site += len(sites)
        vle.append(pd.DataFrame({"id_site": sites, "code_module": mod, "code_presentation": pres,
                                 "activity_type": np.resize(ACTIVITY_TYPES, len(sites)),
                                 "week_from": np.nan, "week_to": np.nan}))
        n = n_per_pres
        students = rng.choice(pool, n, replace=False)
        z = rng.random(n) < 0.4
        withdrawn = z & (rng.random(n) < 0.5)
        result = np.where(z, np.where(withdrawn, "Withdrawn", "Fail"),
                          np.where(rng.random(n) < 0.2, "Distinction", "Pass"))
        info.append(pd.DataFrame({
            "code_module": mod, "code_presentation": pres, "id_student": students,
            "gender": rng.choice(["M", "F"], n), "region": rng.choice(REGIONS, n),
            "highest_education": rng.choice(EDUCATION, n),
            "imd_band": np.where(rng.random(n) < 0.1, None, rng.choice(IMD, n)),
            "age_band": rng.choice(AGES, n), "num_of_prev_attempts": rng.poisson(0.2, n),
            "studied_credits": rng.choice([30, 60, 120], n),
            "disability": rng.choice(["N", "Y"], n, p=[0.9, 0.1]), "final_result": result}))
        reg_date = rng.integers(-120, -1, n).astype(float)
        reg_date[rng.random(n) < 0.05] = np.nan
        reg_date[rng.random(n) < 0.03] = np.ceil(b) + 5  # registers after the cutoff: removed
        # withdrawals: only after the label boundary when the early part must be label-free
        lo = -10 if signal_before > 0 else int(np.ceil(b))
        unreg = np.where(withdrawn, rng.integers(lo, length, n), np.nan)
        regs.append(pd.DataFrame({"code_module": mod, "code_presentation": pres,
                                  "id_student": students, "date_registration": reg_date,
                                  "date_unregistration": unreg}))
        # submissions: early ones depend on z by signal_before, late ones strongly
        due = np.where(np.isnan(a["date"].to_numpy()), length, a["date"].to_numpy())
        late = due >= b
        eff = np.where(late[None, :], 2.0, signal_before) * np.where(z, -1.0, 1.0)[:, None]
        submit = rng.random((n, 6)) < _sigmoid(1.0 + eff)
        si, ai = np.nonzero(submit)
        score = np.clip(60 + 15 * eff[si, ai] + rng.normal(0, 12, len(si)), 0, 100).round()
        score[rng.random(len(si)) < 0.03] = np.nan
        subs.append(pd.DataFrame({"id_assessment": a["id_assessment"].to_numpy()[ai],
                                  "id_student": students[si],
                                  "date_submitted": due[ai] + rng.integers(-6, 8, len(si)),
                                  "is_banked": (rng.random(len(si)) < 0.02).astype(int),
                                  "score": score}))
        # clicks: dates from day -25 on; rates depend on z as above
        k = rng.poisson(clicks_per_reg, n)
        r = np.repeat(np.arange(n), k)
        date = rng.integers(-25, length, len(r))
        post = date >= b
        s = np.where(post, 2.0, signal_before) * np.where(z[r], -1.0, 1.0)
        keep = rng.random(len(r)) < _sigmoid(0.5 + s)
        r, date, s = r[keep], date[keep], s[keep]
        clicks.append(pd.DataFrame({"code_module": mod, "code_presentation": pres,
                                    "id_student": students[r],
                                    "id_site": rng.choice(sites, len(r)), "date": date,
                                    "sum_click": 1 + rng.poisson(np.exp(1 + 0.5 * s))}))
    return {"courses": courses, "assessments": pd.concat(assessments, ignore_index=True),
            "vle": pd.concat(vle, ignore_index=True), "studentInfo": pd.concat(info, ignore_index=True),
            "studentRegistration": pd.concat(regs, ignore_index=True),
            "studentAssessment": pd.concat(subs, ignore_index=True),
            "studentVle": pd.concat(clicks, ignore_index=True)}


def write_oulad_tables(tables: dict[str, pd.DataFrame], dest: Path, as_zip: bool = True,
                       question_marks: bool = True) -> Path:
    """Write the tables as the official CSVs (in a zip ``dest`` or a folder ``dest``).

    With ``question_marks`` every other missing value is written as ``?`` (the official files use
    both ``?`` and empty fields).
    """
    dest = Path(dest)
    texts = {}
    for name, df in tables.items():
        out = df.copy()
        for col in out.columns:
            na = out[col].isna().to_numpy()
            if na.any():
                v = out[col].astype(object)
                if pd.api.types.is_float_dtype(df[col]) and not na.all():
                    fmt = "{:.0f}" if np.all(np.nan_to_num(df[col].to_numpy()) % 1 == 0) else "{:.1f}"
                    v = v.where(na, df[col].map(fmt.format))
                fill = np.where(question_marks & (np.cumsum(na) % 2 == 1), "?", "")
                out[col] = v.where(~na, pd.Series(fill, index=out.index))
        texts[name] = out.to_csv(index=False)
    if as_zip:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as z:
            for name, text in texts.items():
                z.writestr(f"{name}.csv", text)
    else:
        dest.mkdir(parents=True, exist_ok=True)
        for name, text in texts.items():
            (dest / f"{name}.csv").write_text(text)
    return dest


def write_oulad(dest: Path, as_zip: bool = True, **kw) -> Path:
    """Generate (``make_oulad_tables(**kw)``) and write an OULAD source in the official layout."""
    return write_oulad_tables(make_oulad_tables(**kw), dest, as_zip=as_zip)


# ------------------------------------------------------------------------------ ASSISTments

SKILL_NAMES = [
    "Box and Whisker", "Circle Graph", "Histogram as Table or Graph", "Number Line",
    "Scatter Plot", "Stem and Leaf Plot", "Table", "Venn Diagram", "Mean", "Median", "Mode",
    "Range", "Counting Methods", "Probability of a Single Event", "Pythagorean Theorem",
    "Area Rectangle", "Perimeter of a Polygon", "Equation Solving Two or Fewer Steps",
    "Order of Operations All", "Percent Of", "Addition Whole Numbers", "Division Fractions",
    "Ordering Fractions", "Conversion of Fraction Decimals Percents",
]


def make_akt_students(n_students: int = 60, seed: int = 0, n_skills: int = 12,
                      n_problems: int = 150, multi_frac: float = 0.25, mean_len: int = 60,
                      long_frac: float = 0.1, coin_flip: bool = False,
                      base_rate: float = 0.66) -> list[dict]:
    """Students as dicts of row lists ``problem``, ``skill``, ``resp`` in AKT's repeat format.

    Problems have 1 skill, or 2-3 with probability ``multi_frac`` (written as consecutive rows with
    the same response). Students work in skill-builder blocks and sometimes retry the same problem
    (same problem, same skill: separate attempts). ``coin_flip``: every *interaction* (not row)
    gets an independent flip with ``base_rate``. ``interactions`` holds the true row groups.
    """
    rng = np.random.default_rng(seed)
    n_skills = min(n_skills, len(SKILL_NAMES))
    k = np.where(rng.random(n_problems) < multi_frac, rng.integers(2, 4, n_problems), 1)
    prob_skills = [rng.choice(np.arange(1, n_skills + 1), kk, replace=False) for kk in k]
    by_skill = {s: [p for p in range(n_problems) if s in prob_skills[p]]
                for s in range(1, n_skills + 1)}
    difficulty = rng.normal(0, 1, n_problems)
    out = []
    for u in range(n_students):
        theta = rng.normal(0.7, 1.0)
        length = (rng.integers(210, 450) if rng.random() < long_frac
                  else max(2, int(rng.exponential(mean_len))))
        problem, skill, resp, groups = [], [], [], []
        while len(groups) < length:
            s = int(rng.integers(1, n_skills + 1))
            if not by_skill[s]:
                continue
            for j in range(int(rng.integers(3, 12))):
                p = int(rng.choice(by_skill[s]))
                for _ in range(1 + (rng.random() < 0.05)):  # occasional retry of the same problem
                    r = (rng.random() < base_rate if coin_flip
                         else rng.random() < _sigmoid(theta - difficulty[p] + 0.1 * j))
                    groups.append(len(problem))
                    for sk in prob_skills[p]:
                        problem.append(p + 1)
                        skill.append(int(sk))
                        resp.append(int(r))
        out.append({"user": 70000 + 7 * u, "problem": problem, "skill": skill, "resp": resp,
                    "starts": groups})
    return out


def _akt_lines(students: list[dict], index: dict[int, int]) -> str:
    lines = []
    for s in students:
        lines += [f"{index[s['user']]},{s['user']}", ",".join(map(str, s["problem"])),
                  ",".join(map(str, s["skill"])), ",".join(map(str, s["resp"]))]
    return "\n".join(lines) + "\n"


def write_akt(dest: Path, students: list[dict] | None = None, n_skills: int = 12,
              seed: int = 0, **kw) -> list[dict]:
    """Write AKT's 18 files (5 folds + skill/problem/user json) for ``students`` into ``dest``.

    Folds are student-level like AKT's: test_k is group k, valid_k is group k+1 (mod 5) and
    train_k the other three. Returns the students (generated with ``make_akt_students`` if None).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if students is None:
        students = make_akt_students(seed=seed, n_skills=n_skills, **kw)
    n_skills = max(max(s["skill"]) for s in students)
    index = {s["user"]: i + 1 for i, s in enumerate(students)}
    group = np.random.default_rng(seed + 1).permutation(len(students)) % 5
    for k in range(5):
        test = [s for s, g in zip(students, group, strict=True) if g == k]
        valid = [s for s, g in zip(students, group, strict=True) if g == (k + 1) % 5]
        train = [s for s, g in zip(students, group, strict=True) if g not in (k, (k + 1) % 5)]
        for name, part in (("train", train), ("valid", valid), ("test", test)):
            (dest / f"assist2009_pid_{name}{k + 1}.csv").write_text(_akt_lines(part, index))
    (dest / "skill.json").write_text(json.dumps({n: i + 1 for i, n in
                                                 enumerate(SKILL_NAMES[:n_skills])}))
    n_problems = max(max(s["problem"]) for s in students)
    (dest / "problems.json").write_text(json.dumps({str(50000 + p): p for p in
                                                    range(1, n_problems + 1)}))
    (dest / "user.json").write_text(json.dumps({str(u): i for u, i in index.items()}))
    return students


def write_skill_builder(dest: Path, students: list[dict]) -> Path:
    """The same students as the original skill-builder CSV (latin-1, one row per skill)."""
    rows = []
    order = 1
    for s in students:
        starts = set(s["starts"])
        for i, (p, sk, r) in enumerate(zip(s["problem"], s["skill"], s["resp"], strict=True)):
            if i in starts:  # one order_id per interaction, shared by its skill rows
                order += 1 + (order % 3)
            rows.append((order, s["user"], 50000 + p, sk, SKILL_NAMES[sk - 1], r, 1))
    df = pd.DataFrame(rows, columns=["order_id", "user_id", "problem_id", "skill_id",
                                     "skill_name", "correct", "attempt_count"])
    df = df.sample(frac=1.0, random_state=0)  # the raw file is not in student order
    dest.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(dest, index=False, encoding="latin-1")
    return dest
