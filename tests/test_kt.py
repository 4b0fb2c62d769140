"""Any KT data set (``--dataset kt``): AKT folders of any name, pyKT sequences, skill-builder CSV,
provenance in info, the inner validation split, file:line errors, coin-flip detector."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_real import make_akt_students, write_skill_builder
from helpers import one_line
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from dsrsd.data import load_dataset
from dsrsd.data.assist import load_assist2009, prepare_assist2009
from dsrsd.data.kt import load_kt
from dsrsd.data.kt_features import kt_features_flat, merge_runs
from dsrsd.data.kt_parse import PYKT_TEST, PYKT_TRAIN, read_pykt
from dsrsd.errors import DsrsdError
from dsrsd.validate import check_data_params

T = 50
PROVENANCE = ("dataset", "source", "validation")


@pytest.fixture(scope="module")
def preset(tmp_path_factory, akt_dir) -> Path:
    root = tmp_path_factory.mktemp("preset")
    prepare_assist2009(akt_dir, root, verify=False, log=lambda s: None)
    return root


def renamed(src: Path, dest: Path, prefix: str, skill_json: bool = True) -> Path:
    dest.mkdir(parents=True)
    for f in src.iterdir():
        if f.name.startswith("assist2009_pid_"):
            shutil.copy(f, dest / f.name.replace("assist2009_pid_", prefix))
        elif f.name == "skill.json" and skill_json:
            shutil.copy(f, dest / f.name)
    return dest


def same_tensors(a, b) -> None:
    for p in ("train", "val", "test"):
        da, db = getattr(a, p), getattr(b, p)
        for k in da.x:
            assert torch.equal(da.x[k], db.x[k]), (p, k)
        for k in da.extras:
            assert torch.equal(da.extras[k], db.extras[k]), (p, k)
        assert torch.equal(da.y, db.y) and torch.equal(da.y_mask, db.y_mask)
        assert torch.equal(da.pad["history"], db.pad["history"])
        assert da.specs == db.specs


def strip(info: dict) -> dict:
    return {k: v for k, v in info.items() if k not in PROVENANCE}


# ------------------------------------------------------------------------------ AKT folders


@pytest.mark.parametrize("prefix", ["algebra05_", ""])
def test_renamed_akt_folder_loads_identically(tmp_path, akt_dir, preset, prefix):
    d = renamed(akt_dir, tmp_path / "my data set", prefix)
    for fold in (1, 4):
        a = load_assist2009(preset, fold=fold, max_len=T)
        b = load_dataset("kt", path=str(d), data_dir=str(tmp_path / "cache"), fold=fold, max_len=T)
        same_tensors(a, b)
        assert strip(a.info) == strip(b.info)
        assert b.info["dataset"] == "my_data_set" and b.train.name == "my_data_set/train"
        src = b.info["source"]
        assert src["layout"] == "akt (given)" and src["path"] == str(d.resolve())
        assert set(src["files"]) == {f.name for f in d.iterdir()}  # 15 fold files + skill.json
        assert all(len(h) == 64 for h in src["files"].values())
        assert src["matches_preset"] is None  # fixture bytes are not AKT's
        assert b.info["validation"]["split"] == "given"
    named = load_kt(str(d), str(tmp_path / "cache"), max_len=T, name="algebra")
    assert named.info["dataset"] == "algebra"


def test_folds_built_from_test_files(tmp_path, akt_dir, preset):
    """AKT's valid_k is test_{k+1} and train_k the other three: five test files are enough."""
    d = tmp_path / "only_tests"
    d.mkdir()
    for k in range(1, 6):
        shutil.copy(akt_dir / f"assist2009_pid_test{k}.csv", d / f"x_test{k}.csv")
    shutil.copy(akt_dir / "skill.json", d)
    for fold in (2, 5):
        a = load_assist2009(preset, fold=fold, max_len=T)
        b = load_kt(str(d), str(tmp_path / "c"), fold=fold, max_len=T)
        for p in ("train", "val", "test"):  # same students; train in another student order
            assert (sorted(getattr(a, p).extras["user_id"].tolist())
                    == sorted(getattr(b, p).extras["user_id"].tolist()))
        same = {k: v for k, v in strip(a.info).items() if k not in ("train_base_rate",)}
        assert same["counts"] == strip(b.info)["counts"]
        assert b.info["source"]["layout"] == "akt (built from test files)"
        same_tensors_test = load_kt(str(d), str(tmp_path / "c"), fold=fold, max_len=T)
        assert torch.equal(same_tensors_test.test.y, b.test.y)


def test_akt_without_skill_json_names_skills(tmp_path, akt_dir):
    d = renamed(akt_dir, tmp_path / "noskills", "ds_", skill_json=False)
    s = load_kt(str(d), str(tmp_path / "c"), max_len=T)
    assert all(n.startswith("skill ") for n in s.info["skill_names"])
    assert s.info["n_skills"] >= int(s.train.extras["skills"].max())


def test_preset_files_are_recognised(tmp_path, akt_dir, monkeypatch):
    from dsrsd.data import assist, kt_parse
    sums = {f.name: kt_parse.sha256(f) for f in akt_dir.iterdir()}
    monkeypatch.setattr(assist, "SHA256", sums)
    s = load_kt(str(akt_dir), str(tmp_path / "c"), max_len=T)
    assert s.info["source"]["matches_preset"] == "assist2009"


# ---------------------------------------------------------------------------------- pyKT


def write_pykt(dest: Path, students: list[dict], maxlen: int = 200, seed: int = 0) -> Path:
    """pyKT's sequence files: ids 0-based, -1 pads, chunks of ``maxlen`` per uid, one row per
    (question, concept) with ``is_repeat`` on the extra concepts; 20 % of students in the test file."""
    dest.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    group = rng.permutation(len(students)) % 5  # 0: test, 1..4: pyKT folds 0..3 -> shift below
    cols = "fold,uid,questions,concepts,responses,timestamps,usetimes,selectmasks,is_repeat"
    rows = {PYKT_TRAIN: [cols], PYKT_TEST: [cols]}
    for s, g in zip(students, group, strict=True):
        q = [p - 1 for p in s["problem"]]
        c = [k - 1 for k in s["skill"]]
        starts = set(s["starts"])
        rep = [0 if i in starts else 1 for i in range(len(q))]
        fname, fold = (PYKT_TEST, -1) if g == 0 else (PYKT_TRAIN, int(g) - 1)
        for a in range(0, len(q), maxlen):
            n = min(maxlen, len(q) - a)
            pad = [-1] * (maxlen - n)

            def cell(v, a=a, n=n, pad=pad):
                return '"' + ",".join(map(str, list(v[a:a + n]) + pad)) + '"'
            rows[fname].append(",".join([str(fold), str(s["user"]), cell(q), cell(c),
                                         cell(s["resp"]), cell([0] * len(q)), cell([0] * len(q)),
                                         cell([1] * len(q)), cell(rep)]))
    for f, lines in rows.items():
        (dest / f).write_text("\n".join(lines) + "\n")
    return dest


def test_pykt_sequences_match_the_generator(tmp_path, students):
    d = write_pykt(tmp_path / "pykt_as09", students, maxlen=60)
    parts, names, how = read_pykt(d)
    assert how["layout"] == "pykt" and len(parts) == 12  # 4 pyKT folds
    truth = {st["user"]: st for st in students}
    seen = set()
    for p in ("train1", "valid1", "test1"):
        m = merge_runs(parts[p])
        for i, u in enumerate(parts[p]["user"]):
            st = truth[int(u)]
            sl = slice(m["offsets"][i], m["offsets"][i + 1])
            b = [*st["starts"], len(st["skill"])]
            want = [sorted(st["skill"][b[j]:b[j + 1]]) for j in range(len(st["starts"]))]
            assert [sorted(int(x) for x in r if x) for r in m["skills"][sl]] == want
            assert m["resp"][sl].tolist() == [st["resp"][j] for j in st["starts"]]
            seen.add(int(u))
    assert seen == set(truth)
    s = load_dataset("kt", path=str(d), data_dir=str(tmp_path / "c"), fold=2, max_len=T)
    assert s.info["source"]["layout"] == "pykt" and set(s.info["source"]["files"]) == {
        PYKT_TRAIN, PYKT_TEST}
    u = [set(getattr(s, p).extras["user_id"].tolist()) for p in ("train", "val", "test")]
    assert not (u[0] & u[1] or u[0] & u[2] or u[1] & u[2])
    with pytest.raises(DsrsdError) as e:
        load_kt(str(d), str(tmp_path / "c"), fold=5)
    one_line(e, "fold", "1..4")


def set_cell(line: str, col: int, fn) -> str:
    import csv
    import io
    row = next(csv.reader([line]))
    row[col] = fn(row[col])
    out = io.StringIO()
    csv.writer(out, quoting=csv.QUOTE_NONNUMERIC).writerow(row)
    return out.getvalue().strip()


@pytest.mark.parametrize("edit,words", [
    (lambda ln: ln.replace('"', '"7,', 1), ["train_valid_sequences.csv:3", "differ in length"]),
    (lambda ln: "x" + ln, ["train_valid_sequences.csv:3", "integers"]),
    (lambda ln: set_cell(ln, 4, lambda v: "2" + v[1:]), ["train_valid_sequences.csv:3", "0 or 1"]),
    (lambda ln: set_cell(ln, 1, lambda v: "u7"), ["train_valid_sequences.csv:3", "uid"]),
])
def test_bad_pykt_rows(tmp_path, students, edit, words):
    d = write_pykt(tmp_path / "p", students[:20], maxlen=60)
    lines = (d / PYKT_TRAIN).read_text().splitlines()
    lines[2] = edit(lines[2])
    (d / PYKT_TRAIN).write_text("\n".join(lines) + "\n")
    with pytest.raises(DsrsdError) as e:
        read_pykt(d)
    one_line(e, *words)


# --------------------------------------------------------------------------- skill builder


def test_skill_builder_csv_through_kt(tmp_path, students):
    csv = write_skill_builder(tmp_path / "sb.csv", students)
    prepare_assist2009(csv, tmp_path / "preset", log=lambda s: None)
    a = load_assist2009(tmp_path / "preset", max_len=T)
    b = load_dataset("kt", path=str(csv), data_dir=str(tmp_path / "c"), max_len=T)
    same_tensors(a, b)
    assert strip(a.info) == strip(b.info) and b.info["source"]["layout"] == "skill_builder"


# ---------------------------------------------------------------------------- bad folders


def test_bad_folders_and_params(tmp_path, akt_dir):
    two = renamed(akt_dir, tmp_path / "two", "a_")
    shutil.copy(akt_dir / "assist2009_pid_test1.csv", two / "b_test1.csv")
    cases = [({"path": str(two)}, ["several prefixes"]),
             ({"path": str(tmp_path / "nothere")}, ["nothere"]),
             ({}, ["path="])]
    gap = renamed(akt_dir, tmp_path / "gap", "g_")
    (gap / "g_valid3.csv").unlink()
    cases.append(({"path": str(gap)}, ["g_valid3.csv"]))
    bad = renamed(akt_dir, tmp_path / "bad", "z_")
    text = (bad / "z_train2.csv").read_text().splitlines()
    text[3] = "2" + text[3][1:]
    (bad / "z_train2.csv").write_text("\n".join(text) + "\n")
    cases.append(({"path": str(bad)}, ["z_train2.csv:4", "0 or 1"]))
    cases += [({"path": str(two), "valid": "akt"}, ["valid"]),
              ({"path": str(two), "inner_frac": 1.0}, ["inner_frac"]),
              ({"path": str(two), "fold": 0}, ["fold"]), ({"path": 3}, ["path"])]
    for params, words in cases:
        with pytest.raises(DsrsdError) as e:
            load_dataset("kt", data_dir=str(tmp_path / "c"), **params)
        one_line(e, *words)
    check_data_params("kt", {"path": "x", "valid": "inner", "fold": 2})  # no load


# --------------------------------------------------------------------------- inner split


@pytest.mark.parametrize("loader", ["assist2009", "kt"])
def test_inner_validation_split(tmp_path, akt_dir, preset, loader):
    kw = ({"data_dir": str(preset)} if loader == "assist2009"
          else {"path": str(akt_dir), "data_dir": str(tmp_path / "c")})
    given = load_dataset(loader, fold=2, max_len=T, **kw)
    inner = load_dataset(loader, fold=2, max_len=T, valid="inner", inner_frac=0.25, **kw)
    users = {p: set(getattr(inner, p).extras["user_id"].tolist()) for p in ("train", "val", "test")}
    train_k = set(given.train.extras["user_id"].tolist())
    assert users["val"] and users["val"] <= train_k and not users["val"] & users["train"]
    assert users["train"] | users["val"] == train_k  # (students with >= 2 interactions)
    assert not users["val"] & set(given.val.extras["user_id"].tolist())  # valid_k unused
    assert torch.equal(inner.test.y, given.test.y)
    v = inner.info["validation"]
    assert v["split"] == "inner" and v["seed"] == 0 and v["frac"] == 0.25
    again = load_dataset(loader, fold=2, max_len=T, valid="inner", inner_frac=0.25, **kw)
    assert users["val"] == set(again.val.extras["user_id"].tolist())
    other = load_dataset(loader, fold=2, max_len=T, valid="inner", inner_frac=0.25, inner_seed=1,
                         **kw)
    assert users["val"] != set(other.val.extras["user_id"].tolist())
    if loader == "assist2009":
        assert "validation" not in given.info  # the preset's default info is as before


# ------------------------------------------------------------------------- coin-flip detector


def test_coin_flip_through_pykt(tmp_path):
    """The detector on the pyKT layout: one flip per interaction, merged runs, chance AUC;
    without the merge the rows of a run leak each other's flips."""
    from dsrsd.data.kt import load_parts, prepare_kt
    from dsrsd.data.kt_features import build, to_splits
    st = make_akt_students(n_students=1100, seed=5, n_skills=24, n_problems=600, mean_len=90,
                           multi_frac=0.3, coin_flip=True)
    d = write_pykt(tmp_path / "flip", st, seed=5)
    s = load_kt(str(d), str(tmp_path / "c"), fold=1)

    def auc(sp) -> float:
        xtr, ytr = kt_features_flat(sp.train)
        xte, yte = kt_features_flat(sp.test)
        m = LogisticRegression(max_iter=300).fit(xtr, ytr)
        return roc_auc_score(yte, m.predict_proba(xte)[:, 1])
    assert s.info["counts"]["test"]["scored"] > 15000
    assert abs(auc(s) - 0.5) <= 0.02
    root, _ = prepare_kt(d, tmp_path / "c")
    parts, names = load_parts(root, 1, "kt", "")
    leaky = to_splits(build(parts, names, 1, 200, 32, merge=False, dataset="flip"), 32, "flip")
    assert auc(leaky) > 0.56
