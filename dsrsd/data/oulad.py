"""OULAD (Open University Learning Analytics Dataset): prepare the official zip, build protocol A.

Two stages:

* :func:`prepare_oulad` reads the official ``anonymisedData.zip`` (or a folder of its 7 CSVs),
  validates columns, types, references and row counts (never a byte checksum; ``""`` and ``"?"``
  are missing values) and writes a compact cache under ``<data_dir>/oulad/``: plain arrays only
  (``tables.npz`` for the small tables, ``student_vle.npz`` for the 10.6M click rows), read with
  ``allow_pickle=False``, so a planted cache file can never run code.
* :func:`load_oulad` turns the cache into :class:`~dsrsd.data.batch.Splits` for one cutoff.

Leakage rules (protocol A): the cutoff ``c = cutoff * module_presentation_length`` is applied to
every dated event **before** any join or aggregation; nothing dated ``>= c`` reaches a feature.
Registrations unregistered before ``c`` are removed, and so are registrations dated ``>= c`` (the
student is not registered yet at prediction time). ``date_unregistration`` is only used for that
filter. Exams without a date are placed at the module end, so they are absent for every cutoff
(at ``cutoff=1`` the end *is* ``c``, and an event at ``c`` is not before it).

``present``: attributes and behaviour are always present (zero clicks is an observation, not a
missing modality); assessments are marked missing for a registration whose presentation has no
assessment due before ``c`` (its tensor is then all zeros and its padding mask all False).
"""

from __future__ import annotations

import json
import zipfile
import zlib
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dsrsd.data.batch import ModalitySpec, MultimodalData, Splits, TaskSpec
from dsrsd.data.paths import atomic_dir, cached_torch, data_dir, download, read_json
from dsrsd.errors import DsrsdError

URL = "https://analyse.kmi.open.ac.uk/open_dataset/download"
FORMAT = 2  # bump when the prepared cache layout changes (2: npz tables, no pickle)
TENSOR_FORMAT = 1  # bump when the built features change

OULAD_ROWS = {
    "courses": 22, "assessments": 206, "vle": 6364, "studentInfo": 32593,
    "studentRegistration": 32593, "studentAssessment": 173912, "studentVle": 10655280,
}

# column -> kind: "key" (text, required), "cat" (text, may be missing), "int" (required integer),
# "num" (number, may be missing). Every official column is checked for presence.
SCHEMA: dict[str, dict[str, str]] = {
    "courses": {"code_module": "key", "code_presentation": "key",
                "module_presentation_length": "int"},
    "assessments": {"code_module": "key", "code_presentation": "key", "id_assessment": "int",
                    "assessment_type": "key", "date": "num", "weight": "num"},
    "vle": {"id_site": "int", "code_module": "key", "code_presentation": "key",
            "activity_type": "key", "week_from": "num", "week_to": "num"},
    "studentInfo": {"code_module": "key", "code_presentation": "key", "id_student": "int",
                    "gender": "cat", "region": "cat", "highest_education": "cat", "imd_band": "cat",
                    "age_band": "cat", "num_of_prev_attempts": "num", "studied_credits": "num",
                    "disability": "cat", "final_result": "key"},
    "studentRegistration": {"code_module": "key", "code_presentation": "key", "id_student": "int",
                            "date_registration": "num", "date_unregistration": "num"},
    "studentAssessment": {"id_assessment": "int", "id_student": "int", "date_submitted": "num",
                          "is_banked": "num", "score": "num"},
    "studentVle": {"code_module": "key", "code_presentation": "key", "id_student": "int",
                   "id_site": "int", "date": "int", "sum_click": "int"},
}
TABLES = list(SCHEMA)

ACTIVITY_TYPES = [
    "dataplus", "dualpane", "externalquiz", "folder", "forumng", "glossary", "homepage",
    "htmlactivity", "oucollaborate", "oucontent", "ouelluminate", "ouwiki", "page",
    "questionnaire", "quiz", "repeatactivity", "resource", "sharedsubpage", "subpage", "url",
]
ASSESSMENT_TYPES = ["TMA", "CMA", "Exam"]
RESULTS = ["Distinction", "Pass", "Fail", "Withdrawn"]  # 4-class ids; binary at-risk = ids 2, 3
CATEGORICAL = ["gender", "region", "highest_education", "imd_band", "age_band", "disability"]
NUMERIC = ["date_registration", "num_of_prev_attempts", "studied_credits"]
ASSESSMENT_FEATURES = ["is_TMA", "is_CMA", "is_Exam", "weight/100", "due/length", "submitted",
                       "score/100", "days_late/30", "banked"]
STEM = ["CCC", "DDD", "EEE", "FFF"]
SOCIAL = ["AAA", "BBB", "GGG"]
WEEK0 = -28  # day that starts week 0: VLE clicks begin at day -25, so week 4 starts on day 0
MISSING = "<missing>"


# ----------------------------------------------------------------------------------- reading


class _Source:
    """The 7 CSVs, from a zip or a folder, opened by table name."""

    def __init__(self, path: Path) -> None:
        if not path.exists():
            raise DsrsdError(f"OULAD source {path} does not exist")
        self.members: dict[str, str] = {}
        if path.is_dir() and not (path / f"{TABLES[0]}.csv").is_file():
            # A folder holding the official zip (as a download folder does): take the zip.
            zips = sorted(path.glob("*.zip"))
            if len(zips) == 1:
                path = zips[0]
        self.path = path
        if path.is_dir():
            for t in TABLES:
                f = path / f"{t}.csv"
                if not f.is_file():
                    raise DsrsdError(f"{path}: missing file {t}.csv")
            return
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise DsrsdError(f"{path}: not a readable zip ({e})") from None
        by_base = {Path(n).name.lower(): n for n in names if not n.endswith("/")}
        for t in TABLES:
            if f"{t.lower()}.csv" not in by_base:
                raise DsrsdError(f"{path}: missing file {t}.csv in the zip")
            self.members[t] = by_base[f"{t.lower()}.csv"]

    def read(self, table: str, **kw) -> pd.DataFrame:
        """``pd.read_csv`` on one table; corrupt zips and malformed CSVs become DsrsdError."""
        where = f"{self.path.name}:{table}.csv" if self.members else f"{table}.csv"
        try:
            if not self.members:
                return pd.read_csv(self.path / f"{table}.csv", encoding="utf-8-sig", **kw)
            with zipfile.ZipFile(self.path) as z, z.open(self.members[table]) as f:
                return pd.read_csv(f, encoding="utf-8-sig", **kw)
        except (zipfile.BadZipFile, zlib.error, EOFError) as e:
            raise DsrsdError(f"{where}: corrupt zip member ({e})") from None
        except pd.errors.EmptyDataError:
            raise DsrsdError(f"{where}: empty file") from None
        except pd.errors.ParserError as e:
            msg = str(e).strip().splitlines()[-1]
            raise DsrsdError(f"{where}: malformed CSV ({msg})") from None
        except UnicodeDecodeError as e:
            raise DsrsdError(f"{where}: not UTF-8 text ({e.reason})") from None


def _read_table(src: _Source, table: str) -> pd.DataFrame:
    """Read one table with schema, missing-value and type checks."""
    spec = SCHEMA[table]
    header = [str(c).strip() for c in src.read(table, nrows=0).columns]
    absent = [c for c in spec if c not in header]
    if absent:
        raise DsrsdError(f"{table}.csv: missing column(s) {', '.join(absent)}")
    text = {c: "category" for c, k in spec.items() if k in ("key", "cat")}
    dtype = {**text, **{c: "float64" for c, k in spec.items() if k in ("int", "num")}}
    kw = dict(usecols=lambda c: str(c).strip() in spec, na_values=["", "?"],
              keep_default_na=False, skipinitialspace=True)
    try:
        df = src.read(table, dtype=dtype, **kw)
    except (ValueError, TypeError) as e:
        _diagnose_numbers(src, table, kw)
        raise DsrsdError(f"{table}.csv: unreadable values ({str(e).splitlines()[0]})") from None
    df.columns = [str(c).strip() for c in df.columns]
    for col, kind in spec.items():
        n_na = int(df[col].isna().sum())
        if kind in ("key", "int") and n_na:
            raise DsrsdError(f"{table}.csv: column {col!r} has {n_na} missing value(s)")
        if kind == "int":
            v = df[col].to_numpy()
            if not np.all(v == np.floor(v)):
                raise DsrsdError(f"{table}.csv: column {col!r} has non-integer values")
        if kind in ("key", "cat"):  # trim stray spaces inside the category labels
            df[col] = df[col].cat.rename_categories(lambda s: str(s).strip())
    return df


def _diagnose_numbers(src: _Source, table: str, kw: dict) -> None:
    """Find the numeric column holding text and raise a DsrsdError naming it."""
    raw = src.read(table, dtype=str, **kw)
    raw.columns = [str(c).strip() for c in raw.columns]
    for col, kind in SCHEMA[table].items():
        if kind not in ("int", "num"):
            continue
        bad = pd.to_numeric(raw[col], errors="coerce").isna() & raw[col].notna()
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise DsrsdError(f"{table}.csv: column {col!r} has a non-numeric value "
                             f"{raw[col].iloc[i]!r} (data row {i + 1})")


def _pres_index(df: pd.DataFrame, courses: pd.DataFrame, table: str) -> np.ndarray:
    """Map (code_module, code_presentation) to the row of courses; unknown pairs are an error."""
    keys = pd.MultiIndex.from_arrays([courses["code_module"], courses["code_presentation"]])
    idx = keys.get_indexer(pd.MultiIndex.from_arrays(
        [df["code_module"].astype(str), df["code_presentation"].astype(str)]))
    if (idx < 0).any():
        i = int(np.flatnonzero(idx < 0)[0])
        raise DsrsdError(f"{table}.csv: {int((idx < 0).sum())} row(s) name a presentation not in "
                         f"courses.csv (e.g. {df['code_module'].iloc[i]} "
                         f"{df['code_presentation'].iloc[i]})")
    return idx.astype(np.int16)


def _check_values(df: pd.DataFrame, table: str, col: str, allowed: list[str]) -> None:
    bad = sorted(set(df[col].astype(str)) - set(allowed))
    if bad:
        raise DsrsdError(f"{table}.csv: column {col!r} has unknown value(s) {bad[:3]} "
                         f"(expected {allowed})")


def _unique(df: pd.DataFrame, cols: list[str], table: str) -> None:
    n = int(df.duplicated(cols).sum())
    if n:
        raise DsrsdError(f"{table}.csv: {n} duplicate row(s) for key ({', '.join(cols)})")


def _read_all(src: _Source, expected_rows: dict[str, int] | None) -> tuple[dict, dict]:
    """Read, validate and compact the 7 tables. Returns (small tables, studentVle arrays)."""
    raw = {t: _read_table(src, t) for t in TABLES}
    rows = {t: len(df) for t, df in raw.items()}
    for t, n in rows.items():
        if n == 0:
            raise DsrsdError(f"{t}.csv: no data rows")
        if expected_rows is not None and t in expected_rows and n != expected_rows[t]:
            raise DsrsdError(f"{t}.csv: {n} rows, expected {expected_rows[t]} "
                             "(incomplete or wrong file)")

    co = raw["courses"]
    courses = pd.DataFrame({"code_module": co["code_module"].astype(str),
                            "code_presentation": co["code_presentation"].astype(str),
                            "length": co["module_presentation_length"].astype(np.int32)})
    courses = courses.sort_values(["code_module", "code_presentation"], ignore_index=True)
    _unique(courses, ["code_module", "code_presentation"], "courses")
    if (courses["length"] <= 0).any():
        raise DsrsdError("courses.csv: column 'module_presentation_length' must be positive")

    a = raw["assessments"]
    _check_values(a, "assessments", "assessment_type", ASSESSMENT_TYPES)
    _unique(a, ["id_assessment"], "assessments")
    assessments = pd.DataFrame({
        "pres": _pres_index(a, courses, "assessments"),
        "id_assessment": a["id_assessment"].astype(np.int64),
        "type": a["assessment_type"].astype(str).map(ASSESSMENT_TYPES.index).astype(np.int8),
        "date": a["date"], "weight": a["weight"].fillna(0.0)})

    v = raw["vle"]
    _check_values(v, "vle", "activity_type", ACTIVITY_TYPES)
    _unique(v, ["id_site"], "vle")
    vle = pd.DataFrame({"pres": _pres_index(v, courses, "vle"),
                        "id_site": v["id_site"].astype(np.int64),
                        "type": v["activity_type"].astype(str).map(ACTIVITY_TYPES.index)
                        .astype(np.int8)})

    si = raw["studentInfo"]
    _check_values(si, "studentInfo", "final_result", RESULTS)
    info = pd.DataFrame({"pres": _pres_index(si, courses, "studentInfo"),
                         "id_student": si["id_student"].astype(np.int64)})
    for col in CATEGORICAL:
        info[col] = si[col].astype(object).where(si[col].notna(), MISSING).astype(str)
    for col in ["num_of_prev_attempts", "studied_credits"]:
        info[col] = si[col]
    info["result"] = si["final_result"].astype(str).map(RESULTS.index).astype(np.int8)
    _unique(info, ["pres", "id_student"], "studentInfo")

    r = raw["studentRegistration"]
    registration = pd.DataFrame({"pres": _pres_index(r, courses, "studentRegistration"),
                                 "id_student": r["id_student"].astype(np.int64),
                                 "date_registration": r["date_registration"],
                                 "date_unregistration": r["date_unregistration"]})
    _unique(registration, ["pres", "id_student"], "studentRegistration")

    s = raw["studentAssessment"]
    unknown = ~s["id_assessment"].isin(assessments["id_assessment"])
    if unknown.any():
        raise DsrsdError(f"studentAssessment.csv: {int(unknown.sum())} row(s) reference an "
                         "id_assessment not in assessments.csv")
    student_assessment = pd.DataFrame({
        "id_assessment": s["id_assessment"].astype(np.int64),
        "id_student": s["id_student"].astype(np.int64),
        "date_submitted": s["date_submitted"], "is_banked": s["is_banked"].fillna(0.0),
        "score": s["score"]})

    sv = raw.pop("studentVle")
    site_type = np.full(int(max(vle["id_site"].max(), sv["id_site"].max())) + 1, -1, np.int8)
    site_type[vle["id_site"].to_numpy()] = vle["type"].to_numpy()
    site = sv["id_site"].to_numpy(np.int64)
    if (site < 0).any() or (site_type[np.maximum(site, 0)] < 0).any():
        raise DsrsdError("studentVle.csv: some rows reference an id_site not in vle.csv")
    clicks = sv["sum_click"].to_numpy()
    if (clicks < 0).any():
        raise DsrsdError("studentVle.csv: column 'sum_click' has negative values")
    arrays = {"pres": _pres_index(sv, courses, "studentVle"),
              "id_student": sv["id_student"].to_numpy(np.int64).astype(np.int32),
              "type": site_type[site],
              "date": sv["date"].to_numpy().astype(np.int16),
              "sum_click": clicks.astype(np.int32)}
    tables = {"courses": courses, "assessments": assessments, "vle": vle, "info": info,
              "registration": registration, "student_assessment": student_assessment}
    return tables, {"rows": rows, "arrays": arrays}


# ------------------------------------------------------------------------------------- cache


def _root(data_dir_arg: str | Path | None) -> Path:
    return data_dir(data_dir_arg) / "oulad"


def oulad_cache_ok(data_dir_arg: str | Path | None = None,
                   expected_rows: dict[str, int] | None = None) -> bool:
    """True if a complete prepared cache exists (with ``expected_rows`` counts, when given)."""
    root = _root(data_dir_arg)
    m = read_json(root / "manifest.json")
    if not m or m.get("format") != FORMAT:
        return False
    if not all((root / f).is_file() for f in ("tables.npz", "student_vle.npz")):
        return False
    if not isinstance(m.get("rows"), dict) or not isinstance(m.get("tables"), dict):
        return False
    return expected_rows is None or all(m["rows"].get(t) == n for t, n in expected_rows.items())


def prepare_oulad(source: str | Path | None = None, data_dir: str | Path | None = None,
                  expected_rows: dict[str, int] | None = OULAD_ROWS, force: bool = False,
                  log: Callable[[str], None] = print) -> Path:
    """Validate OULAD and write the prepared cache ``<data_dir>/oulad/``; return that folder.

    ``source``: the official zip or a folder of the 7 CSVs; None downloads the official zip
    (into ``<data_dir>/downloads/``). ``expected_rows``: the row count each table must have
    (None skips the count check, for small test fixtures). A valid cache is left as is unless
    ``force``. The cache folder is written whole or not at all.
    """
    root = _root(data_dir)
    if not force and oulad_cache_ok(data_dir, expected_rows):
        log(f"OULAD: prepared cache at {root} is valid, nothing to do (use --force to redo)")
        return root
    if source is None:
        zpath = root.parent / "downloads" / "oulad_anonymisedData.zip"
        if not zpath.exists():
            log(f"OULAD: downloading {URL}")
            download(URL, zpath, "OULAD")
        source = zpath
    source = Path(source).expanduser()
    log(f"OULAD: reading {source}")
    tables, vle = _read_all(_Source(source), expected_rows)
    with atomic_dir(root) as tmp:
        np.savez(tmp / "tables.npz", **_tables_to_arrays(tables))
        np.savez(tmp / "student_vle.npz", **vle["arrays"])
        manifest = {"format": FORMAT, "rows": vle["rows"], "source": str(source),
                    "tables": {t: list(df.columns) for t, df in tables.items()},
                    "prepared": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    log(f"OULAD: prepared {root} ({vle['rows']['studentVle']:,} click rows)")
    return root


def _tables_to_arrays(tables: dict[str, pd.DataFrame]) -> dict[str, np.ndarray]:
    """``{"table/column": array}``; text columns become fixed-width unicode (no objects)."""
    out = {}
    for t, df in tables.items():
        for c in df.columns:
            v = df[c].to_numpy()
            out[f"{t}/{c}"] = v.astype(str) if v.dtype == object else v
    return out


def _load_cache(root: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """The prepared tables and click arrays; never unpickles (``allow_pickle=False``)."""
    try:
        columns = read_json(root / "manifest.json")["tables"]
        tables = {}
        with np.load(root / "tables.npz", allow_pickle=False) as z:
            for t, cols in columns.items():
                tables[t] = pd.DataFrame({c: _column(z[f"{t}/{c}"]) for c in cols})
        with np.load(root / "student_vle.npz", allow_pickle=False) as z:
            arrays = {k: _column(z[k]) for k in z.files}
        missing = {"pres", "id_student", "type", "date", "sum_click"} - set(arrays)
        if missing or set(tables) != {"courses", "assessments", "vle", "info", "registration",
                                      "student_assessment"}:
            raise KeyError(", ".join(sorted(missing)) or "tables")
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
        raise DsrsdError(f"the prepared OULAD cache under {root} is unreadable "
                         f"({type(e).__name__}): rebuild it with python data_scripts/get_oulad.py "
                         "--force") from None
    return tables, arrays


def _column(a: object) -> np.ndarray:
    if not isinstance(a, np.ndarray) or a.ndim != 1 or a.dtype.kind not in "biufU":
        raise ValueError("not a plain 1-d array")  # e.g. a non-.npy member comes back as bytes
    return a.astype(object) if a.dtype.kind == "U" else a


# -------------------------------------------------------------------------------- features


def _reg_lookup(reg_keys: np.ndarray, pres: np.ndarray, student: np.ndarray) -> np.ndarray:
    """Row of each (pres, student) in the sorted registration keys, -1 where absent."""
    q = pres.astype(np.int64) << 32 | student.astype(np.int64)
    pos = np.searchsorted(reg_keys, q)
    pos = np.minimum(pos, len(reg_keys) - 1)
    return np.where(reg_keys[pos] == q, pos, -1)


def _registrations(t: dict, c: np.ndarray) -> tuple[pd.DataFrame, dict]:
    """Registrations alive at their cutoff, joined to studentInfo, sorted by (pres, student)."""
    reg = t["registration"]
    cr = c[reg["pres"].to_numpy()]
    unreg = (reg["date_unregistration"] < cr).to_numpy()  # NaN compares False: still registered
    late = (reg["date_registration"] >= cr).to_numpy()
    # date_unregistration is dropped right here: it must never reach a feature
    kept = reg.loc[~unreg & ~late, ["pres", "id_student", "date_registration"]]
    df = kept.merge(t["info"], on=["pres", "id_student"], how="inner", validate="one_to_one")
    df = df.sort_values(["pres", "id_student"], ignore_index=True)
    counts = {"unregistered_before_cutoff": int(unreg.sum()),
              "registered_at_or_after_cutoff": int((late & ~unreg).sum()),
              "without_studentInfo": int(len(kept) - len(df))}
    return df, counts


# The fixed seed of the target half (the ``*_half`` splits): one test set for every run seed and
# for both the cross-domain run and its in-domain reference, so the two pair registration by
# registration.
TARGET_HALF_SEED = 0
SPLITS = ("temporal", "cross_domain", "cross_domain_half", "in_domain_half")


def target_half(students: np.ndarray) -> np.ndarray:
    """The test half of the target faculty's students (ids): a seeded permutation of the sorted
    unique ids, its first half, independent of the run seed."""
    ids = np.unique(students)
    order = np.random.default_rng(TARGET_HALF_SEED).permutation(len(ids))
    return ids[order[: len(ids) // 2]]


def _assign(df: pd.DataFrame, courses: pd.DataFrame, split: str, direction: str,
            val_frac: float, seed: int) -> np.ndarray:
    """0 = train, 1 = val, 2 = test, -1 = unused, per registration."""
    mod = courses["code_module"].to_numpy()[df["pres"].to_numpy()]
    sid = df["id_student"].to_numpy()
    if split == "temporal":
        year = courses["code_presentation"].str[:4].to_numpy()[df["pres"].to_numpy()]
        part = np.select([year == "2013", year == "2014"], [0, 2], -1)
    else:
        src, dst = (STEM, SOCIAL) if direction == "stem2soc" else (SOCIAL, STEM)
        in_src, in_dst = np.isin(mod, src), np.isin(mod, dst)
        if split == "cross_domain":
            part = np.select([in_src, in_dst], [0, 2], -1)
        else:  # test: half of the target's students; train: the source, or the target's rest
            test = in_dst & np.isin(sid, target_half(sid[in_dst]))
            pool = in_src if split == "cross_domain_half" else in_dst & ~test
            part = np.select([pool, test], [0, 2], -1)
    # validation: whole students, in a seeded order, until val_frac of training registrations
    train = part == 0
    students, per = np.unique(sid[train], return_counts=True)
    if len(students) > 1:
        order = np.random.default_rng(seed).permutation(len(students))
        take = np.cumsum(per[order]) <= val_frac * train.sum()
        take[0] = True  # at least one student in validation ...
        if take.all():
            take[-1] = False  # ... and at least one left for training
        val_students = students[order[take]]
        part[train & np.isin(sid, val_students)] = 1
    return part


def _attributes(df: pd.DataFrame, fit: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """One-hot demographics (vocabulary from ``fit`` rows) + standardised numbers + NaN flags."""
    cols, names = [], []
    for col in CATEGORICAL:
        vocab = sorted(set(df[col].to_numpy()[fit]))
        codes = pd.Categorical(df[col], categories=vocab).codes  # unseen -> -1 -> all zero
        cols.append(np.eye(len(vocab) + 1, dtype=np.float32)[codes][:, :len(vocab)]
                    if len(vocab) else np.zeros((len(df), 0), np.float32))
        names += [f"{col}={v}" for v in vocab]
    for col in NUMERIC:
        x = df[col].to_numpy(np.float64)
        ref = x[fit][~np.isnan(x[fit])]
        mu, sd = (ref.mean(), ref.std()) if len(ref) else (0.0, 1.0)
        z = (x - mu) / (sd if sd > 0 else 1.0)
        cols.append(np.stack([np.nan_to_num(z), np.isnan(x)], 1).astype(np.float32))
        names += [col, f"{col}_missing"]
    return np.concatenate(cols, 1), names


def _behaviour(sv: dict, reg_keys: np.ndarray, c: np.ndarray, n: int
               ) -> tuple[np.ndarray, int]:
    """log1p clicks per week x activity type, [N, W, 20], and the week mask [N, W]."""
    pres = sv["pres"]
    date = sv["date"]
    keep = date < c[pres]  # cutoff first: later clicks never enter the aggregation
    pres, date = pres[keep], date[keep]
    row = _reg_lookup(reg_keys, pres, sv["id_student"][keep])
    ok = row >= 0
    week = (np.maximum(date[ok].astype(np.int64), WEEK0) - WEEK0) // 7
    n_weeks = int(np.ceil((c.max() - WEEK0) / 7))
    nt = len(ACTIVITY_TYPES)
    flat = (row[ok] * n_weeks + week) * nt + sv["type"][keep][ok]
    clicks = np.bincount(flat, weights=sv["sum_click"][keep][ok], minlength=n * n_weeks * nt)
    x = np.log1p(clicks.reshape(n, n_weeks, nt)).astype(np.float32)
    return x, n_weeks


def _assessments(t: dict, df: pd.DataFrame, reg_keys: np.ndarray, c: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Assessments due before c in date order: [N, A, 9] features, [N, A] mask, [P] counts."""
    length = t["courses"]["length"].to_numpy()
    a = t["assessments"].copy()
    # an exam without a date is taken to be at the module end
    a["due"] = a["date"].fillna(pd.Series(length[a["pres"].to_numpy()], index=a.index))
    a = a[a["due"].to_numpy() < c[a["pres"].to_numpy()]]
    a = a.sort_values(["pres", "due", "id_assessment"], ignore_index=True)
    a["pos"] = a.groupby("pres").cumcount()
    n_due = np.bincount(a["pres"], minlength=len(length))
    n_pos = max(int(n_due.max()), 1)

    sa = t["student_assessment"]
    pres_of = pd.Series(t["assessments"]["pres"].to_numpy(), index=t["assessments"]["id_assessment"])
    sa_pres = pres_of.reindex(sa["id_assessment"]).to_numpy()
    # cutoff first: a submission made at or after c is unknown at prediction time
    sa = sa[(sa["date_submitted"] < c[sa_pres]).to_numpy()]
    sa = sa.drop_duplicates(["id_assessment", "id_student"], keep="last")

    pres = df["pres"].to_numpy()
    n = len(df)
    x = np.zeros((n, n_pos, len(ASSESSMENT_FEATURES)), np.float32)
    # the schedule part: every registration sees its presentation's due assessments
    rows_a = np.repeat(np.arange(n), n_due[pres])
    first = np.concatenate([[0], np.cumsum(n_due)[:-1]])
    within = np.arange(len(rows_a)) - np.repeat(np.cumsum(n_due[pres]) - n_due[pres], n_due[pres])
    ai = first[pres[rows_a]] + within
    pos = a["pos"].to_numpy()[ai]
    x[rows_a, pos, a["type"].to_numpy()[ai]] = 1.0
    x[rows_a, pos, 3] = a["weight"].to_numpy()[ai] / 100.0
    x[rows_a, pos, 4] = a["due"].to_numpy()[ai] / length[pres[rows_a]]
    mask = np.arange(n_pos)[None, :] < n_due[pres][:, None]

    # the submission part, joined only to assessments already due
    s = sa.merge(a[["id_assessment", "pres", "pos", "due"]], on="id_assessment", how="inner")
    row = _reg_lookup(reg_keys, s["pres"].to_numpy(), s["id_student"].to_numpy())
    s, row = s[row >= 0], row[row >= 0]
    p = s["pos"].to_numpy()
    x[row, p, 5] = 1.0
    x[row, p, 6] = np.nan_to_num(s["score"].to_numpy() / 100.0)
    x[row, p, 7] = (s["date_submitted"].to_numpy() - s["due"].to_numpy()) / 30.0
    x[row, p, 8] = (s["is_banked"].to_numpy() > 0).astype(np.float32)
    return x, mask, n_due


def _build(t: dict, sv: dict, cutoff: float, label: str, split: str, direction: str,
           val_frac: float, seed: int) -> dict:
    """All features for one protocol setting, as plain tensors (cacheable with torch.save)."""
    courses = t["courses"]
    c = cutoff * courses["length"].to_numpy().astype(np.float64)
    df, removed = _registrations(t, c)
    part = _assign(df, courses, split, direction, val_frac, seed)
    reg_keys = df["pres"].to_numpy().astype(np.int64) << 32 | df["id_student"].to_numpy()
    n = len(df)

    attrs, attr_names = _attributes(df, part == 0)
    beh, n_weeks = _behaviour(sv, reg_keys, c, n)
    week_start = WEEK0 + 7 * np.arange(n_weeks)
    beh_mask = week_start[None, :] < c[df["pres"].to_numpy()][:, None]
    asx, as_mask, n_due = _assessments(t, df, reg_keys, c)
    present = np.ones((n, 3), bool)
    present[:, 2] = n_due[df["pres"].to_numpy()] > 0

    result = df["result"].to_numpy(np.int64, copy=True)
    y = (torch.from_numpy(result >= 2).float() if label == "binary"
         else torch.from_numpy(result))
    full = {
        "x": {"attributes": torch.from_numpy(attrs), "behaviour": torch.from_numpy(beh),
              "assessments": torch.from_numpy(asx)},
        "pad": {"behaviour": torch.from_numpy(beh_mask), "assessments": torch.from_numpy(as_mask)},
        "present": torch.from_numpy(present), "y": y,
        "extras": {"id_student": torch.from_numpy(df["id_student"].to_numpy(np.int64, copy=True)),
                   "presentation": torch.from_numpy(df["pres"].to_numpy(np.int64, copy=True)),
                   "module": torch.from_numpy(pd.Categorical(
                       courses["code_module"].to_numpy()[df["pres"].to_numpy()],
                       categories=sorted(courses["code_module"].unique())).codes.astype(np.int64)),
                   "result4": torch.from_numpy(result)},
    }
    out: dict = {"splits": {}}
    names = ["train", "val", "test"]
    for k, name in enumerate(names):
        idx = torch.from_numpy(np.flatnonzero(part == k))
        if len(idx) == 0:
            raise DsrsdError(f"OULAD: split {name!r} is empty (split={split!r}, "
                             f"direction={direction!r}, cutoff={cutoff}, val_frac={val_frac})")
        out["splits"][name] = {
            "x": {m: v[idx] for m, v in full["x"].items()},
            "pad": {m: v[idx] for m, v in full["pad"].items()},
            "present": full["present"][idx], "y": full["y"][idx],
            "extras": {m: v[idx] for m, v in full["extras"].items()}}

    pres_names = (courses["code_module"] + "-" + courses["code_presentation"]).tolist()
    counts = {}
    for k, name in enumerate(names):
        sel = part == k
        counts[name] = {"registrations": int(sel.sum()),
                        "students": int(len(np.unique(df["id_student"].to_numpy()[sel]))),
                        "positive_rate": float((result[sel] >= 2).mean()),
                        "class_counts": np.bincount(result[sel], minlength=4).tolist(),
                        "presentations": sorted({pres_names[p] for p in df["pres"][sel]})}
    tr_students = set(df["id_student"].to_numpy()[(part == 0) | (part == 1)])  # -1: unused
    out["info"] = {
        "dataset": "oulad", "protocol": "A",
        "params": {"cutoff": cutoff, "label": label, "split": split,
                   "direction": direction if split != "temporal" else None,
                   "val_frac": val_frac, "seed": seed},
        "counts": counts, "removed": removed,
        "students_in_train_and_test": len(tr_students & set(df["id_student"][part == 2])),
        "attributes_features": attr_names, "activity_types": ACTIVITY_TYPES,
        "assessment_features": ASSESSMENT_FEATURES, "weeks": n_weeks, "week0_day": WEEK0,
        "max_assessments": int(asx.shape[1]), "presentations": pres_names,
        "modules": sorted(courses["code_module"].unique()), "results": RESULTS,
        "present_policy": "assessments missing when none is due before the cutoff; "
                          "attributes and behaviour always present",
    }
    out["dims"] = {"attributes": int(attrs.shape[1]), "behaviour": len(ACTIVITY_TYPES),
                   "assessments": len(ASSESSMENT_FEATURES)}
    return out


def _to_splits(built: dict, label: str) -> Splits:
    dims = built["dims"]
    specs = [ModalitySpec("attributes", "tabular", dims["attributes"]),
             ModalitySpec("behaviour", "sequence", dims["behaviour"]),
             ModalitySpec("assessments", "sequence", dims["assessments"])]
    task = TaskSpec("binary") if label == "binary" else TaskSpec("multiclass", 4)
    parts = {}
    for name, s in built["splits"].items():
        parts[name] = MultimodalData(specs, task, s["x"], s["pad"], s["present"], s["y"],
                                     None, s["extras"], f"oulad/{name}")
    return Splits(parts["train"], parts["val"], parts["test"], built["info"])


def _check_params(cutoff: float, label: str, split: str, direction: str, val_frac: float) -> None:
    if not isinstance(cutoff, (int, float)) or not 0 < cutoff <= 1:
        raise DsrsdError(f"cutoff must be in (0, 1] (a fraction of the module length), got {cutoff!r}")
    if label not in ("binary", "4class"):
        raise DsrsdError(f"label must be 'binary' or '4class', got {label!r}")
    if split not in SPLITS:
        raise DsrsdError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if direction not in ("stem2soc", "soc2stem"):
        raise DsrsdError(f"direction must be 'stem2soc' or 'soc2stem', got {direction!r}")
    if not isinstance(val_frac, (int, float)) or not 0 < val_frac < 1:
        raise DsrsdError(f"val_frac must be in (0, 1), got {val_frac!r}")


def load_oulad(data_dir: str | Path | None = None, cutoff: float = 0.5,
               label: str = "binary", split: str = "temporal", direction: str = "stem2soc",
               val_frac: float = 0.15, seed: int = 0,
               source: str | Path | None = None) -> Splits:
    """OULAD under protocol A as train/val/test :class:`Splits`.

    Modalities: ``attributes`` (tabular ``[N, F]``), ``behaviour`` (sequence ``[N, W, 20]`` of
    log1p weekly clicks per activity type; ``pad`` True for weeks starting before the cutoff),
    ``assessments`` (sequence ``[N, A, 9]``, the assessments due before the cutoff in date order;
    ``pad`` True for those). ``label``: ``"binary"`` (Fail/Withdrawn = 1, float) or ``"4class"``
    (Distinction, Pass, Fail, Withdrawn = 0..3, long). ``split``: ``"temporal"`` (2013 -> 2014) or
    ``"cross_domain"`` (``direction`` ``"stem2soc"`` or ``"soc2stem"``: train on the first
    faculty's modules, test on the second's). With a fixed half of the target faculty's students
    as the test set (:func:`target_half`): ``"cross_domain_half"`` trains on the source faculty,
    ``"in_domain_half"`` (the in-domain reference) on the target faculty's other students; both
    have the same test registrations, so they pair. Validation holds
    ``val_frac`` of the training registrations, whole students, drawn with ``seed``.

    Reads the cache made by :func:`prepare_oulad` (``source`` given: prepares it first, with the
    official row counts); the built tensors are cached per setting under ``<data_dir>/oulad/``.
    """
    _check_params(cutoff, label, split, direction, val_frac)
    root = _root(data_dir)
    if source is not None:
        prepare_oulad(source, data_dir, log=lambda s: None)
    elif not oulad_cache_ok(data_dir):
        raise DsrsdError(f"no prepared OULAD under {root}: run "
                         "python data_scripts/get_oulad.py [--source ZIP] [--data-dir DIR]")
    tag = direction if split != "temporal" else "all"
    key = f"v{TENSOR_FORMAT}_c{cutoff:g}_{label}_{split}_{tag}_val{val_frac:g}_s{seed}"

    def build() -> dict:
        t, sv = _load_cache(root)
        return _build(t, sv, float(cutoff), label, split, direction, float(val_frac), int(seed))

    return _to_splits(cached_torch(root / "tensors" / f"{key}.pt", build), label)


def oulad_features_flat(data: MultimodalData) -> tuple[np.ndarray, np.ndarray]:
    """Flat features for quick baselines: attributes, behaviour and assessments flattened
    (padding steps are zeros, so the columns line up across samples), plus total log-clicks per
    activity type. Returns ``(X [N, F], y [N])``."""
    beh = data.x["behaviour"].numpy()
    cols = [data.x["attributes"].numpy(), beh.reshape(len(beh), -1),
            np.log1p(np.expm1(beh).sum(1)), data.x["assessments"].numpy().reshape(len(beh), -1)]
    return np.concatenate(cols, 1).astype(np.float32), data.y.numpy()
