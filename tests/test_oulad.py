"""OULAD loader: schema handling, protocol A splits, cutoff invariance, coin-flip leakage check."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from fixtures_real import make_oulad_tables, write_oulad, write_oulad_tables
from helpers import one_line, run_script
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from dsrsd.data.oulad import (
    ACTIVITY_TYPES,
    ASSESSMENT_FEATURES,
    load_oulad,
    oulad_cache_ok,
    oulad_features_flat,
    prepare_oulad,
)
from dsrsd.errors import DsrsdError

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "data_scripts" / "get_oulad.py"


def quiet(msg: str) -> None:
    pass


def build(source: Path, root: Path, **kw):
    prepare_oulad(source, root, expected_rows=None, log=quiet)
    return load_oulad(root, **kw)


@pytest.fixture(scope="module")
def tables() -> dict[str, pd.DataFrame]:
    return make_oulad_tables(n_per_pres=30, seed=0)


@pytest.fixture(scope="module")
def fixture_zip(tmp_path_factory, tables) -> Path:
    return write_oulad_tables(tables, tmp_path_factory.mktemp("oulad") / "anonymisedData.zip")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, fixture_zip) -> Path:
    root = tmp_path_factory.mktemp("data")
    prepare_oulad(fixture_zip, root, expected_rows=None, log=quiet)
    return root


def all_tensors(s) -> dict[str, torch.Tensor]:
    out = {}
    for part in ("train", "val", "test"):
        d = getattr(s, part)
        for group in ("x", "pad", "extras"):
            for k, v in getattr(d, group).items():
                out[f"{part}/{group}/{k}"] = v
        out[f"{part}/present"], out[f"{part}/y"] = d.present, d.y
    return out


def assert_same(a, b) -> None:
    ta, tb = all_tensors(a), all_tensors(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert ta[k].shape == tb[k].shape, k
        assert torch.equal(ta[k], tb[k]), k


# ------------------------------------------------------------------------------- format


def test_fixture_uses_question_marks_and_empty_fields(fixture_zip):
    with zipfile.ZipFile(fixture_zip) as z:
        text = z.read("studentRegistration.csv").decode()
    assert ",?" in text and ",\n" in text


def test_shapes_specs_and_masks(prepared):
    s = load_oulad(prepared)
    assert s.train.names == ["attributes", "behaviour", "assessments"]
    kinds = {sp.name: (sp.kind, sp.dim) for sp in s.train.specs}
    assert kinds["behaviour"] == ("sequence", len(ACTIVITY_TYPES))
    assert kinds["assessments"] == ("sequence", len(ASSESSMENT_FEATURES))
    for d in (s.train, s.val, s.test):
        n = len(d)
        assert d.x["attributes"].shape == (n, kinds["attributes"][1])
        assert d.x["behaviour"].shape[0::2] == (n, 20)
        assert d.y.dtype == torch.float32 and set(d.y.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(d.y, (d.extras["result4"] >= 2).float())
        # padding steps hold zeros; assessments present iff some assessment is due
        beh, pad = d.x["behaviour"], d.pad["behaviour"]
        assert (beh[~pad] == 0).all() and pad[:, 0].all()
        assert (d.x["assessments"][~d.pad["assessments"]] == 0).all()
        assert torch.equal(d.present[:, 2], d.pad["assessments"].any(1))
        assert d.present[:, :2].all()
    # scores are fractions, due dates before the cutoff
    a = s.train.x["assessments"][s.train.pad["assessments"]]
    assert (a[:, 6] >= 0).all() and (a[:, 6] <= 1).all() and (a[:, 4] < 0.5).all()
    assert s.info["params"]["cutoff"] == 0.5 and s.info["counts"]["test"]["registrations"] == len(s.test)


def test_four_class_labels(prepared):
    s = load_oulad(prepared, label="4class")
    assert s.train.task.kind == "multiclass" and s.train.task.n_classes == 4
    assert s.train.y.dtype == torch.long and torch.equal(s.train.y, s.train.extras["result4"])


def test_temporal_split_disjoint_and_val_grouped(prepared):
    s = load_oulad(prepared, val_frac=0.2, seed=3)
    c = s.info["counts"]
    assert all(p.endswith(("2013B", "2013J")) for p in c["train"]["presentations"] + c["val"]["presentations"])
    assert all(p.endswith(("2014B", "2014J")) for p in c["test"]["presentations"])
    pres = {k: set(getattr(s, k).extras["presentation"].tolist()) for k in ("train", "val", "test")}
    assert not (pres["train"] | pres["val"]) & pres["test"]
    tr, va = (set(getattr(s, k).extras["id_student"].tolist()) for k in ("train", "val"))
    assert not tr & va
    frac = len(s.val) / (len(s.train) + len(s.val))
    assert 0.1 < frac <= 0.2
    other = load_oulad(prepared, val_frac=0.2, seed=4)
    assert set(other.val.extras["id_student"].tolist()) != va


@pytest.mark.parametrize("direction,src,dst", [("stem2soc", {"CCC", "DDD"}, {"AAA", "GGG"}),
                                               ("soc2stem", {"AAA", "GGG"}, {"CCC", "DDD"})])
def test_cross_domain_split(prepared, direction, src, dst):
    s = load_oulad(prepared, split="cross_domain", direction=direction)
    mods = s.info["modules"]
    for part, want in (("train", src), ("val", src), ("test", dst)):
        got = {mods[i] for i in getattr(s, part).extras["module"].tolist()}
        assert got == want


@pytest.mark.parametrize("direction,src,dst", [("stem2soc", {"CCC", "DDD"}, {"AAA", "GGG"}),
                                               ("soc2stem", {"AAA", "GGG"}, {"CCC", "DDD"})])
def test_target_half_splits_pair_a_cross_domain_run_with_its_in_domain_reference(
        prepared, direction, src, dst):
    def regs(d):
        return set(zip(d.extras["id_student"].tolist(), d.extras["presentation"].tolist(), strict=True))

    cross = load_oulad(prepared, split="cross_domain_half", direction=direction)
    ref = load_oulad(prepared, split="in_domain_half", direction=direction, seed=3)
    whole = load_oulad(prepared, split="cross_domain", direction=direction)
    mods = cross.info["modules"]

    def modules(d):
        return {mods[i] for i in d.extras["module"].tolist()}
    # one test set: the same registrations for both, whatever the run seed
    assert regs(cross.test) == regs(ref.test) == regs(
        load_oulad(prepared, split="cross_domain_half", direction=direction, seed=5).test)
    assert modules(cross.test) == dst and modules(cross.train) == src == modules(cross.val)
    assert modules(ref.train) == dst == modules(ref.val)
    # the test half: whole students, about half of the target's, none trained on in-domain
    test_students = set(cross.test.extras["id_student"].tolist())
    target_students = set(whole.test.extras["id_student"].tolist())
    assert test_students < target_students
    assert abs(len(test_students) - len(target_students) / 2) <= 1
    held = {r for r in regs(whole.test) if r[0] in test_students}
    assert regs(cross.test) == held  # every registration of a test student is in test
    trained = set(ref.train.extras["id_student"].tolist()) | set(ref.val.extras["id_student"].tolist())
    assert not trained & test_students and trained | test_students == target_students
    assert ref.info["params"]["split"] == "in_domain_half"
    assert ref.info["params"]["direction"] == direction
    with pytest.raises(DsrsdError, match="split must be one of"):
        load_oulad(prepared, split="in_domain")


def test_removed_registrations(prepared, tables):
    s = load_oulad(prepared, cutoff=0.5)
    reg = tables["studentRegistration"].merge(tables["courses"])
    c = 0.5 * reg["module_presentation_length"]
    gone = (reg["date_unregistration"] < c) | (reg["date_registration"] >= c)
    assert s.info["removed"]["unregistered_before_cutoff"] == int((reg["date_unregistration"] < c).sum())
    assert sum(v["registrations"] for v in s.info["counts"].values()) == int((~gone).sum())


def test_second_prepare_is_noop_and_tensor_cache(prepared, fixture_zip):
    msgs: list[str] = []
    manifest = prepared / "oulad" / "manifest.json"
    before = manifest.stat().st_mtime_ns
    prepare_oulad(fixture_zip, prepared, expected_rows=None, log=msgs.append)
    assert "nothing to do" in msgs[0] and manifest.stat().st_mtime_ns == before
    load_oulad(prepared, cutoff=0.75)
    assert list((prepared / "oulad" / "tensors").glob("*c0.75_*.pt"))
    assert_same(load_oulad(prepared, cutoff=0.75), load_oulad(prepared, cutoff=0.75))


# ---------------------------------------------------------------------- cutoff invariance


def perturb_after_cutoff(t: dict[str, pd.DataFrame], cutoff: float, seed: int = 1) -> dict:
    """Change, delete and add events dated at or after the cutoff; nothing before it."""
    rng = np.random.default_rng(seed)
    t = {k: v.copy() for k, v in t.items()}
    length = t["courses"].set_index(["code_module", "code_presentation"])["module_presentation_length"]

    def cut(df):
        key = pd.MultiIndex.from_frame(df[["code_module", "code_presentation"]])
        return cutoff * length.reindex(key).to_numpy()

    sv = t["studentVle"]
    late = sv["date"].to_numpy() >= cut(sv)
    sv.loc[late, "sum_click"] = rng.integers(1, 500, late.sum())
    sv.loc[late, "date"] = (np.ceil(cut(sv)[late]) + rng.integers(0, 20, late.sum())).astype(int)
    extra = sv[late].head(50).assign(id_student=sv["id_student"].iloc[0])
    t["studentVle"] = pd.concat([sv[~late | (rng.random(len(sv)) < 0.5)], extra], ignore_index=True)

    a = t["assessments"]
    ca = cut(a)
    due = a["date"].fillna(pd.Series(ca / cutoff, index=a.index))
    late_a = (due >= ca).to_numpy()
    a.loc[late_a, "weight"] = 99.0
    sa = t["studentAssessment"].merge(a[["id_assessment", "code_module", "code_presentation"]])
    late_s = sa["date_submitted"].to_numpy() >= cut(sa)
    sa.loc[late_s, "score"] = rng.integers(0, 101, late_s.sum())
    sa.loc[late_s, "is_banked"] = 1
    keep = ~late_s | (rng.random(len(sa)) < 0.5)
    t["studentAssessment"] = sa.loc[keep, t["studentAssessment"].columns]

    r = t["studentRegistration"]
    cr = cut(r)
    late_r = (r["date_registration"] >= cr).to_numpy()
    r.loc[late_r, "date_registration"] = np.ceil(cr[late_r]) + 30
    return t


def perturb_unregistration(t: dict[str, pd.DataFrame], cutoff: float, seed: int = 2) -> dict:
    """New date_unregistration values that keep every registration on its side of the cutoff."""
    rng = np.random.default_rng(seed)
    t = {k: v.copy() for k, v in t.items()}
    r = t["studentRegistration"].merge(t["courses"], how="left")
    c = cutoff * r["module_presentation_length"].to_numpy()
    u = r["date_unregistration"].to_numpy()
    before = u < c
    new = np.where(rng.random(len(r)) < 0.5, np.nan, np.ceil(c) + rng.integers(0, 80, len(r)))
    new = np.where(before, np.floor(c) - 1 - rng.integers(0, 20, len(r)), new)
    t["studentRegistration"] = t["studentRegistration"].assign(date_unregistration=new)
    return t


@pytest.mark.parametrize("cutoff", [0.25, 0.5, 0.75])
def test_cutoff_invariance(tmp_path, tables, cutoff):
    base = build(write_oulad_tables(tables, tmp_path / "a.zip"), tmp_path / "da", cutoff=cutoff)
    after = perturb_after_cutoff(tables, cutoff)
    assert len(after["studentVle"]) != len(tables["studentVle"])
    moved = build(write_oulad_tables(after, tmp_path / "b.zip"), tmp_path / "db", cutoff=cutoff)
    assert_same(base, moved)
    unreg = perturb_unregistration(tables, cutoff)
    assert not unreg["studentRegistration"]["date_unregistration"].equals(
        tables["studentRegistration"]["date_unregistration"])
    assert_same(base, build(write_oulad_tables(unreg, tmp_path / "c.zip"), tmp_path / "dc",
                            cutoff=cutoff))


def test_invariance_check_has_power(tmp_path, tables):
    """The comparison above would notice a change to an event before the cutoff."""
    base = build(write_oulad_tables(tables, tmp_path / "a.zip"), tmp_path / "da")
    t = {k: v.copy() for k, v in tables.items()}
    early = t["studentVle"]["date"] < 20
    t["studentVle"].loc[early, "sum_click"] += 1
    other = build(write_oulad_tables(t, tmp_path / "b.zip"), tmp_path / "db")
    with pytest.raises(AssertionError):
        assert_same(base, other)


# --------------------------------------------------------------------- coin-flip detector


def test_coin_flip_label_auc_is_chance(tmp_path):
    """final_result is a coin flip that only events after the cutoff depend on (strongly)."""
    t = make_oulad_tables(n_per_pres=3000, seed=7, signal_before=0.0, clicks_per_reg=12)
    src = write_oulad_tables(t, tmp_path / "flip", as_zip=False, question_marks=False)
    prepare_oulad(src, tmp_path / "d", expected_rows=None, log=quiet)

    def auc(cutoff: float) -> float:
        s = load_oulad(tmp_path / "d", cutoff=cutoff)
        xtr, ytr = oulad_features_flat(s.train)
        xte, yte = oulad_features_flat(s.test)
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=300))
        return roc_auc_score(yte, model.fit(xtr, ytr).predict_proba(xte)[:, 1])

    a = auc(0.5)
    assert len(load_oulad(tmp_path / "d").test) > 10000
    assert abs(a - 0.5) <= 0.02, a
    assert auc(1.0) > 0.7  # the same data with the late events in reach: the detector has power


# ------------------------------------------------------------------------------ bad input


def no_cache(root: Path) -> None:
    """Nothing half-written: no cache folder and no temporary leftovers."""
    assert not (root / "oulad").exists()
    assert not root.exists() or not [p for p in root.iterdir() if p.name.startswith(".")]


def set_field(text: str, row: int, col: str, value: str) -> str:
    lines = text.split("\n")
    i = lines[0].split(",").index(col)
    fields = lines[row].split(",")
    fields[i] = value
    lines[row] = ",".join(fields)
    return "\n".join(lines)


def edit_zip(src: Path, dest: Path, table: str, fn) -> Path:
    with zipfile.ZipFile(src) as z:
        files = {n: z.read(n) for n in z.namelist()}
    name = f"{table}.csv"
    if fn is None:
        del files[name]
    else:
        files[name] = fn(files[name].decode()).encode()
    with zipfile.ZipFile(dest, "w") as z:
        for n, b in files.items():
            z.writestr(n, b)
    return dest


@pytest.mark.parametrize("table,fn,words", [
    ("vle", None, ["vle.csv"]),
    ("studentInfo", lambda s: s.replace("final_result", "outcome", 1), ["studentInfo.csv", "final_result"]),
    ("studentVle", lambda s: set_field(s, 5, "date", "four"), ["studentVle.csv", "date", "four"]),
    ("studentVle", lambda s: set_field(s, 3, "id_student", "?"), ["studentVle.csv", "id_student"]),
    ("studentInfo", lambda s: set_field(s, 2, "num_of_prev_attempts", "x1"),
     ["studentInfo.csv", "num_of_prev_attempts"]),
    ("studentVle", lambda s: set_field(s, 2, "id_site", "7"), ["studentVle.csv", "id_site"]),
    ("courses", lambda s: s.replace("268", "", 1), ["courses.csv", "module_presentation_length", "missing"]),
    ("assessments", lambda s: s.replace("TMA", "Quiz", 1), ["assessments.csv", "assessment_type"]),
    ("studentAssessment", lambda s: s + "99999,1,1,0,50\n", ["studentAssessment.csv", "id_assessment"]),
    ("studentRegistration", lambda s: s.split("\n")[0] + "\n", ["studentRegistration.csv", "no data"]),
])
def test_bad_tables(tmp_path, fixture_zip, table, fn, words):
    bad = edit_zip(fixture_zip, tmp_path / "bad.zip", table, fn)
    with pytest.raises(DsrsdError) as e:
        prepare_oulad(bad, tmp_path / "d", expected_rows=None, log=quiet)
    one_line(e, *words)
    no_cache(tmp_path / "d")


def test_corrupt_and_missing_sources(tmp_path, fixture_zip):
    raw = bytearray(fixture_zip.read_bytes())
    mid = len(raw) // 2
    raw[mid:mid + 200] = bytes(200)  # damage the compressed studentVle data
    (tmp_path / "corrupt.zip").write_bytes(bytes(raw))
    with pytest.raises(DsrsdError) as e:
        prepare_oulad(tmp_path / "corrupt.zip", tmp_path / "d", expected_rows=None, log=quiet)
    one_line(e, "corrupt.zip")
    (tmp_path / "notzip.zip").write_text("hello")
    with pytest.raises(DsrsdError) as e:
        prepare_oulad(tmp_path / "notzip.zip", tmp_path / "d", expected_rows=None, log=quiet)
    one_line(e, "notzip.zip", "zip")
    with pytest.raises(DsrsdError) as e:
        prepare_oulad(tmp_path / "nothere.zip", tmp_path / "d", log=quiet)
    one_line(e, "nothere.zip")
    (tmp_path / "folder").mkdir()
    with pytest.raises(DsrsdError) as e:
        prepare_oulad(tmp_path / "folder", tmp_path / "d", log=quiet)
    one_line(e, "courses.csv")
    no_cache(tmp_path / "d")


def test_folder_holding_the_zip_is_read_as_the_zip(tmp_path, fixture_zip):
    """A download folder with the official zip in it (as the shared copy is laid out) works."""
    folder = tmp_path / "download"
    folder.mkdir()
    (folder / "anonymisedData.zip").write_bytes(fixture_zip.read_bytes())
    (folder / "README.md").write_text("the official zip")
    prepare_oulad(folder, tmp_path / "d", expected_rows=None, log=quiet)
    assert oulad_cache_ok(tmp_path / "d")
    (folder / "second.zip").write_bytes(fixture_zip.read_bytes())  # ambiguous: a clear error
    with pytest.raises(DsrsdError) as e:
        prepare_oulad(folder, tmp_path / "d2", expected_rows=None, log=quiet)
    one_line(e, "courses.csv")


def test_row_count_check(tmp_path, fixture_zip, tables):
    rows = {k: len(v) for k, v in tables.items()}
    prepare_oulad(fixture_zip, tmp_path / "ok", expected_rows=rows, log=quiet)
    assert oulad_cache_ok(tmp_path / "ok", rows)
    with pytest.raises(DsrsdError) as e:
        prepare_oulad(fixture_zip, tmp_path / "d", expected_rows={**rows, "vle": rows["vle"] + 1})
    one_line(e, "vle.csv", str(rows["vle"] + 1))
    with pytest.raises(DsrsdError) as e:  # the default: the official counts
        prepare_oulad(fixture_zip, tmp_path / "d")
    one_line(e, "courses.csv", "22")
    no_cache(tmp_path / "d")


def test_failed_rebuild_keeps_old_cache(tmp_path, prepared, fixture_zip):
    bad = edit_zip(fixture_zip, tmp_path / "bad.zip", "vle", None)
    with pytest.raises(DsrsdError):
        prepare_oulad(bad, prepared, expected_rows=None, force=True, log=quiet)
    assert oulad_cache_ok(prepared)
    assert not [p for p in prepared.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("kw,word", [({"cutoff": 0}, "cutoff"), ({"cutoff": 1.5}, "cutoff"),
                                     ({"cutoff": -0.2}, "cutoff"), ({"label": "3class"}, "label"),
                                     ({"split": "random"}, "split"),
                                     ({"direction": "up"}, "direction"),
                                     ({"val_frac": 1.0}, "val_frac")])
def test_bad_parameters(prepared, kw, word):
    with pytest.raises(DsrsdError) as e:
        load_oulad(prepared, **kw)
    one_line(e, word)


def test_empty_split_and_no_cache(tmp_path):
    t = make_oulad_tables(n_per_pres=20)
    keep = {("AAA", "2013J"), ("DDD", "2013B")}  # no 2014 presentation: empty temporal test set

    def only(df):
        return df[[k in keep for k in zip(df["code_module"], df["code_presentation"], strict=True)]]

    t2 = {k: (only(v) if "code_module" in v else v) for k, v in t.items()}
    ids = set(t2["assessments"]["id_assessment"])
    t2["studentAssessment"] = t["studentAssessment"][t["studentAssessment"]["id_assessment"].isin(ids)]
    src = write_oulad_tables(t2, tmp_path / "only2013.zip")
    with pytest.raises(DsrsdError) as e:
        build(src, tmp_path / "d")
    one_line(e, "test", "empty")
    assert not list((tmp_path / "d" / "oulad" / "tensors").glob("*.pt"))
    with pytest.raises(DsrsdError) as e:
        load_oulad(tmp_path / "nothing")
    one_line(e, "get_oulad.py")


# ------------------------------------------------------------------------------------ CLI


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return run_script(SCRIPT, *args)


def test_cli(tmp_path, fixture_zip):
    d = str(tmp_path / "d")
    bad = run_cli("--source", str(fixture_zip), "--data-dir", d)  # real counts: fixture fails
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "rows" in bad.stderr
    assert bad.stderr.count("\n") == 1
    ok = run_cli("--source", str(fixture_zip), "--data-dir", d, "--no-count-check")
    assert ok.returncode == 0, ok.stderr
    again = run_cli("--source", str(fixture_zip), "--data-dir", d, "--no-count-check")
    assert again.returncode == 0 and "nothing to do" in again.stdout
    missing = run_cli("--source", str(tmp_path / "nope.zip"), "--data-dir", d)
    assert missing.returncode == 2 and "nope.zip" in missing.stderr


def test_data_dir_resolution(tmp_path, monkeypatch):
    from dsrsd.data.paths import data_dir

    assert data_dir(tmp_path) == tmp_path
    monkeypatch.setenv("DSRSD_DATA", str(tmp_path / "env"))
    assert data_dir(None) == tmp_path / "env"
    monkeypatch.delenv("DSRSD_DATA")
    assert data_dir(None) == Path.home() / ".cache" / "dsrsd"


def test_write_oulad_folder_source(tmp_path):
    src = write_oulad(tmp_path / "csvs", as_zip=False, n_per_pres=15, seed=3)
    s = build(src, tmp_path / "d")
    assert len(s.train) > 0 and len(s.test) > 0


def test_atomic_writes_and_download(tmp_path):
    from dsrsd.data.paths import atomic_dir, atomic_file, download

    with pytest.raises(RuntimeError), atomic_file(tmp_path / "f.bin") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash")
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "cache") as tmp:
        (tmp / "part").write_text("half")
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 5000)
    got = download(src.as_uri(), tmp_path / "dl" / "copy.bin")
    assert got.read_bytes() == src.read_bytes()
    with pytest.raises(DsrsdError) as e:
        download((tmp_path / "absent.bin").as_uri(), tmp_path / "dl" / "none.bin")
    one_line(e, "absent.bin")
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == ["copy.bin"]


def test_load_with_source_checks_official_counts(tmp_path, fixture_zip):
    with pytest.raises(DsrsdError) as e:
        load_oulad(tmp_path / "d", source=fixture_zip)
    one_line(e, "rows, expected")
    no_cache(tmp_path / "d")


def test_download_path(tmp_path, fixture_zip, monkeypatch):
    from dsrsd.data import oulad

    monkeypatch.setattr(oulad, "URL", fixture_zip.as_uri())
    prepare_oulad(None, tmp_path, expected_rows=None, log=quiet)
    assert (tmp_path / "downloads" / "oulad_anonymisedData.zip").is_file()
    assert oulad_cache_ok(tmp_path)
