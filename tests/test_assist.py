"""ASSISTments 2009 loader: AKT format, run merging, windows, folds, coin-flip leakage check."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_real import make_akt_students, write_akt, write_skill_builder
from helpers import one_line, run_script
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from dsrsd.data import assist
from dsrsd.data.assist import (
    kt_features_flat,
    load_assist2009,
    merge_runs,
    parse_akt,
    prepare_assist2009,
    skill_embeddings,
)
from dsrsd.errors import DsrsdError

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "data_scripts" / "get_assistments.py"
T = 50  # short windows so the small fixture has students spanning several


def quiet(msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, akt_dir) -> Path:
    root = tmp_path_factory.mktemp("data")
    prepare_assist2009(akt_dir, root, verify=False, log=quiet)
    return root


# ------------------------------------------------------------------------------- merging


def test_merge_rule():
    # P1 has skills a=1, b=2 and is tried twice; P2 (skill 3) twice; P3 once
    rows = {"user": np.array([7, 8]), "offsets": np.array([0, 7, 9]),
            "problem": np.array([1, 1, 1, 1, 2, 2, 3, 3, 3]),
            "skill": np.array([1, 2, 1, 2, 3, 3, 1, 1, 2]),
            "resp": np.array([1, 1, 0, 0, 1, 0, 1, 0, 0])}
    m = merge_runs(rows)
    # the second student starts with P3 too: a new student never continues the previous run
    assert m["skills"].tolist() == [[1, 2], [1, 2], [3, 0], [3, 0], [1, 0], [1, 2]]
    assert m["resp"].tolist() == [1, 0, 1, 0, 1, 0]
    assert m["student"].tolist() == [0, 0, 0, 0, 0, 1]
    assert m["offsets"].tolist() == [0, 5, 6]
    assert m["row_interaction"].tolist() == [0, 0, 1, 1, 2, 3, 4, 5, 5]
    assert merge_runs(rows, merge=False)["skills"].shape == (9, 1)


def test_interactions_match_the_generator_and_runs_never_see_each_other(prepared, students):
    s = load_assist2009(prepared, max_len=T)
    truth = {st["user"]: st for st in students}
    seen_users = set()
    for d in (s.train, s.val, s.test):
        hist, mask, pad = d.x["history"], d.y_mask, d.pad["history"]
        skills = d.extras["skills"]
        for w in range(len(d)):
            u = int(d.extras["user_id"][w])
            st = truth[u]
            bounds = [*st["starts"], len(st["problem"])]
            n_true = len(st["starts"])
            start = int(d.extras["window"][w]) * T
            steps = int(pad[w].sum())
            assert steps == min(T, n_true - start)
            for t in range(steps):
                i = start + t  # the true interaction at this step
                sk = sorted(st["skill"][bounds[i]:bounds[i + 1]])
                assert sorted(x for x in skills[w, t].tolist() if x) == sk
                assert bool(mask[w, t]) == (i > 0)
                assert d.y[w, t] == st["resp"][bounds[i]]
                # layout kt: step t holds interaction t itself (all its skills, its problem,
                # its response); a window's first step has no earlier step to read
                assert sorted(x for x in hist[w, t, :-2].tolist() if x) == sk
                assert int(hist[w, t, -2]) == st["problem"][bounds[i]] + 1
                assert int(hist[w, t, -1]) == st["resp"][bounds[i]]
            seen_users.add(u)
    assert seen_users == set(truth) - {st["user"] for st in students if len(st["starts"]) < 2}


def test_every_interaction_scored_once(prepared, students):
    s = load_assist2009(prepared, max_len=T)
    c = s.info["counts"]
    for part, d in (("train", s.train), ("val", s.val), ("test", s.test)):
        assert int(d.y_mask.sum()) == c[part]["scored"]
        users = set(d.extras["user_id"].tolist())
        n_inter = sum(len(st["starts"]) for st in students if st["user"] in users)
        assert c[part]["scored"] == n_inter - len(users)
        assert (~d.pad["history"] <= ~d.y_mask).all()  # no score on padding
        assert (d.x["history"][~d.pad["history"]] == 0).all()  # padding steps are empty
        assert (d.x["history"][..., -2][d.pad["history"]] > 0).all()  # real steps have a problem
    assert (s.train.extras["window"] > 0).any()  # some students span several windows


def test_shapes_and_specs(prepared):
    s = load_assist2009(prepared, max_len=T, text_dim=16)
    n_skills = s.info["n_skills"]
    spec = {sp.name: sp for sp in s.train.specs}
    assert spec["history"].kind == "sequence" and spec["history"].causal
    assert spec["history"].vocab == 2 * n_skills + 1 and spec["history"].layout == "kt"
    assert spec["history"].items == s.info["n_problems"] + 1
    assert s.info["history_layout"].startswith("kt: ")
    assert (spec["content"].kind, spec["content"].dim) == ("tabular", 16)
    assert (spec["item_stats"].kind, spec["item_stats"].dim) == ("tabular", 3)
    d = s.test
    n, k = len(d), s.info["max_skills_per_interaction"]
    assert d.x["history"].shape == (n, T, k + 2) and d.x["history"].dtype == torch.long
    assert d.x["content"].shape == (n, T, 16) and d.x["item_stats"].shape == (n, T, 3)
    assert d.y.shape == d.y_mask.shape == (n, T) and d.y.dtype == torch.float32
    assert d.task.kind == "per_step" and d.present.all()
    # multi-skill items have more than one skill and their content is the mean of the names
    assert (d.x["item_stats"][..., 2][d.pad["history"]] >= 1).all()
    assert k >= 2


def test_content_embeds_skill_names():
    names = ["Circle Graph", "Circle Graphs", "Pythagorean Theorem", "Mean", "Median", "Mode"]
    e = skill_embeddings(names, 4)
    assert e.shape == (6, 4)
    assert np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 2]  # near-identical names embed close together
    assert skill_embeddings(names[:2], 8).shape == (2, 8)  # fewer names than dims: zero-padded


def test_folds_student_disjoint(prepared):
    for fold in range(1, 6):
        s = load_assist2009(prepared, fold=fold, max_len=T)
        u = [set(getattr(s, p).extras["user_id"].tolist()) for p in ("train", "val", "test")]
        assert not (u[0] & u[1] or u[0] & u[2] or u[1] & u[2]), fold
        assert s.info["params"]["fold"] == fold


def test_item_stats_use_training_fold_only(tmp_path, akt_dir, prepared):
    """Changing every response in test_1 and valid_1 leaves all item statistics unchanged."""
    copy = tmp_path / "akt"
    copy.mkdir()
    for f in akt_dir.iterdir():
        text = f.read_text()
        if f.name in ("assist2009_pid_test1.csv", "assist2009_pid_valid1.csv"):
            lines = text.splitlines()
            lines[3::4] = [",".join(str(1 - int(v)) for v in ln.split(",")) for ln in lines[3::4]]
            text = "\n".join(lines) + "\n"
        (copy / f.name).write_text(text)
    a = load_assist2009(prepared, max_len=T)
    prepare_assist2009(copy, tmp_path / "d", verify=False, log=quiet)
    b = load_assist2009(tmp_path / "d", max_len=T)
    for p in ("train", "val", "test"):
        assert torch.equal(getattr(a, p).x["item_stats"], getattr(b, p).x["item_stats"])
    assert not torch.equal(a.test.y, b.test.y)


def test_skill_builder_csv_gives_the_same_sequences(tmp_path, students):
    csv = write_skill_builder(tmp_path / "skill_builder_data_corrected.csv", students)
    prepare_assist2009(csv, tmp_path / "d", log=quiet)
    parts, names = assist._load_parts(tmp_path / "d" / "assist2009", 1)
    got = {}
    for p in assist.PARTS:
        m = merge_runs(parts[p])
        for i, u in enumerate(parts[p]["user"]):
            sl = slice(m["offsets"][i], m["offsets"][i + 1])
            got[int(u)] = ([sorted(int(x) for x in r if x) for r in m["skills"][sl]],
                           m["resp"][sl].tolist())
    assert set(got) == {st["user"] for st in students}
    for st in students:
        b = [*st["starts"], len(st["skill"])]
        sk = [sorted(st["skill"][b[i]:b[i + 1]]) for i in range(len(st["starts"]))]
        assert got[st["user"]] == (sk, [st["resp"][j] for j in st["starts"]])
    assert names[0] == "Box and Whisker"
    s = load_assist2009(tmp_path / "d", max_len=T)
    assert len(s.train) and len(s.val) and len(s.test)


def test_skill_builder_latin1_names(tmp_path, students):
    csv = write_skill_builder(tmp_path / "sb.csv", students[:10])
    text = csv.read_text(encoding="latin-1").replace("Box and Whisker", "Boîte à moustaches")
    csv.write_text(text, encoding="latin-1")
    prepare_assist2009(csv, tmp_path / "d", log=quiet)
    names = json.loads((tmp_path / "d" / "assist2009" / "skills.json").read_text())
    assert "Boîte à moustaches" in names


def test_second_prepare_is_noop(prepared, akt_dir):
    msgs: list[str] = []
    prepare_assist2009(akt_dir, prepared, verify=False, log=msgs.append)
    assert "nothing to do" in msgs[0]


# --------------------------------------------------------------------- coin-flip detector


def auc_of(s) -> float:
    xtr, ytr = kt_features_flat(s.train)
    xte, yte = kt_features_flat(s.test)
    model = LogisticRegression(max_iter=300).fit(xtr, ytr)
    return roc_auc_score(yte, model.predict_proba(xte)[:, 1])


@pytest.fixture(scope="module")
def coin_flip(tmp_path_factory) -> Path:
    """~100k interactions in the real format; one coin flip per interaction (not per row)."""
    st = make_akt_students(n_students=1100, seed=5, n_skills=24, n_problems=600, mean_len=90,
                           multi_frac=0.3, coin_flip=True)
    d = tmp_path_factory.mktemp("flip")
    write_akt(d / "akt", st, seed=5)
    prepare_assist2009(d / "akt", d, verify=False, log=quiet)
    return d


def test_coin_flip_auc_is_chance(coin_flip):
    s = load_assist2009(coin_flip, fold=1)
    assert s.info["counts"]["test"]["scored"] > 15000
    a = auc_of(s)
    assert abs(a - 0.5) <= 0.02, a


def test_coin_flip_catches_unmerged_runs(coin_flip):
    """Without the merge, a run's rows are history for each other and the detector fires."""
    parts, names = assist._load_parts(coin_flip / "assist2009", 1)
    leaky = assist._to_splits(assist._build(parts, names, 1, 200, 32, merge=False), 32)
    assert auc_of(leaky) > 0.56


# ------------------------------------------------------------------------------ bad input


def no_cache(root: Path) -> None:
    assert not (root / "assist2009").exists()
    assert not root.exists() or not [p for p in root.iterdir() if p.name.startswith(".")]


def copy_with(src: Path, dest: Path, name: str, fn) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name == name and fn is None:
            continue
        text = f.read_text()
        (dest / f.name).write_text(fn(text) if f.name == name else text)
    return dest


def edit_line(k: int, new: str):
    def fn(text: str) -> str:
        lines = text.splitlines()
        lines[k] = new(lines[k])
        return "\n".join(lines) + "\n"
    return fn


@pytest.mark.parametrize("name,fn,words", [
    ("assist2009_pid_test3.csv", None, ["assist2009_pid_test3.csv"]),
    ("skill.json", None, ["skill.json"]),
    ("skill.json", lambda t: "[1, 2]", ["skill.json"]),
    ("assist2009_pid_train2.csv", edit_line(1, lambda s: s.replace(",", ",x", 1)),
     ["assist2009_pid_train2.csv:2", "integers"]),
    ("assist2009_pid_train2.csv", edit_line(3, lambda s: "2" + s[1:]), ["train2.csv:4", "0 or 1"]),
    ("assist2009_pid_train2.csv", edit_line(2, lambda s: s + ",1"), ["train2.csv:2", "length"]),
    ("assist2009_pid_valid4.csv", edit_line(2, lambda s: "999" + s[s.index(","):]),
     ["valid4.csv", "skill.json"]),
    ("assist2009_pid_test5.csv", lambda t: t + "12,345\n", ["test5.csv", "multiple of 4"]),
    ("assist2009_pid_test5.csv", lambda t: "", ["test5.csv"]),
])
def test_bad_akt_files(tmp_path, akt_dir, name, fn, words):
    src = copy_with(akt_dir, tmp_path / "src", name, fn)
    with pytest.raises(DsrsdError) as e:
        prepare_assist2009(src, tmp_path / "d", verify=False, log=quiet)
    one_line(e, *words)
    no_cache(tmp_path / "d")


def test_checksums(tmp_path, akt_dir):
    with pytest.raises(DsrsdError) as e:  # fixture files are not AKT's bytes
        prepare_assist2009(akt_dir, tmp_path / "d", log=quiet)
    one_line(e, "SHA-256")
    no_cache(tmp_path / "d")


def csv_field(row: int, col: str, value: str):
    def fn(text: str) -> str:
        lines = text.split("\n")
        i = lines[0].split(",").index(col)
        fields = lines[row].split(",")
        fields[i] = value
        lines[row] = ",".join(fields)
        return "\n".join(lines)
    return fn


@pytest.mark.parametrize("edit,words", [
    (lambda t: t.replace("skill_name", "skill", 1), ["skill_name"]),
    (csv_field(2, "user_id", "abc"), ["user_id", "abc"]),
    (csv_field(3, "correct", "2"), ["correct"]),
    (csv_field(1, "order_id", ""), ["order_id", "missing"]),
    (lambda t: t.split("\n")[0] + "\n", ["no rows"]),
])
def test_bad_skill_builder_csv(tmp_path, students, edit, words):
    csv = write_skill_builder(tmp_path / "sb.csv", students[:5])
    csv.write_text(edit(csv.read_text(encoding="latin-1")), encoding="latin-1")
    with pytest.raises(DsrsdError) as e:
        prepare_assist2009(csv, tmp_path / "d", log=quiet)
    one_line(e, *words)
    no_cache(tmp_path / "d")


@pytest.mark.parametrize("kw,word", [({"fold": 0}, "fold"), ({"fold": 6}, "fold"),
                                     ({"fold": "1"}, "fold"), ({"fold": True}, "fold"),
                                     ({"max_len": 1}, "max_len"), ({"text_dim": 0}, "text_dim")])
def test_bad_parameters(prepared, kw, word):
    with pytest.raises(DsrsdError) as e:
        load_assist2009(prepared, **kw)
    one_line(e, word)


def test_missing_sources(tmp_path):
    with pytest.raises(DsrsdError) as e:
        load_assist2009(tmp_path / "empty")
    one_line(e, "get_assistments.py")
    with pytest.raises(DsrsdError) as e:
        prepare_assist2009(tmp_path / "nothere", tmp_path / "d", log=quiet)
    one_line(e, "nothere")
    with pytest.raises(DsrsdError) as e:
        parse_akt(tmp_path / "nofile.csv")
    one_line(e, "nofile.csv")


# ------------------------------------------------------------------------------------ CLI


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return run_script(SCRIPT, *args)


def test_cli(tmp_path, akt_dir):
    d = str(tmp_path / "d")
    bad = run_cli("--source", str(akt_dir), "--data-dir", d)  # checksums fail on the fixture
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "SHA-256" in bad.stderr
    ok = run_cli("--source", str(akt_dir), "--data-dir", d, "--no-verify")
    assert ok.returncode == 0, ok.stderr
    assert json.loads((tmp_path / "d" / "assist2009" / "manifest.json").read_text())["kind"] == "akt"
    again = run_cli("--source", str(akt_dir), "--data-dir", d, "--no-verify")
    assert again.returncode == 0 and "nothing to do" in again.stdout


def test_download_path(tmp_path, akt_dir, monkeypatch):
    """source=None downloads every file, checks its sum, and reuses files already there."""
    sums = {f: assist._sha256(akt_dir / f) for f in assist.SHA256}
    monkeypatch.setattr(assist, "AKT_URL", akt_dir.as_uri() + "/{}")
    monkeypatch.setattr(assist, "SHA256", sums)
    msgs: list[str] = []
    prepare_assist2009(None, tmp_path, log=msgs.append)
    assert sum("downloading" in m for m in msgs) == len(sums)
    assert assist.assist_cache_ok(tmp_path)
    msgs.clear()
    prepare_assist2009(None, tmp_path, force=True, log=msgs.append)
    assert not any("downloading" in m for m in msgs)
    monkeypatch.setattr(assist, "SHA256", {**sums, "skill.json": "0" * 64})
    (tmp_path / "downloads" / "assist2009_pid" / "skill.json").unlink()
    with pytest.raises(DsrsdError) as e:
        prepare_assist2009(None, tmp_path / "other", log=quiet)
    one_line(e, "skill.json", "SHA-256")
