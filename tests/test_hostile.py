"""Hostile inputs and faults, as a new user would try them (issue 15), at the command line.

The promise under test: a user error is one line ``error: ...`` with exit code 2 and no
traceback; nothing is half-written; nothing lands outside ``--out``; no data file runs code; a
resumed run equals an uninterrupted one; every sweep failure lands in ``error.json``.
"""

from __future__ import annotations

import json
import os
import pickle
import resource
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from fixtures_real import make_oulad_tables, write_oulad_tables

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
ENV = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
# the smallest real training run: synthetic data, 200 samples, d=8
TINY = ["--data", "n=200", "--hidden", "8", "--batch-size", "64", "--no-progress",
        "--device", "cpu"]


def cli(*args: str, module: str = "dsrsd", timeout: int = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", module, *args], capture_output=True, text=True, cwd=ROOT,
                          env=ENV, timeout=timeout, **kw)


def main_in_process(capsys, *args: str, module: str = "dsrsd") -> subprocess.CompletedProcess:
    """The same entry point as ``python -m MODULE`` (its ``main``), in this process: fast."""
    import importlib
    main = importlib.import_module("dsrsd.cli" if module == "dsrsd" else module).main
    capsys.readouterr()
    try:
        rc = main(list(args))
    except SystemExit as e:
        rc = e.code
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, rc, out.out, out.err)


def script_in_process(capsys, name: str, *args: str) -> subprocess.CompletedProcess:
    """A data script's ``main`` in this process (the scripts are not a package)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(name[:-3], ROOT / "data_scripts" / name)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    capsys.readouterr()
    try:
        rc = mod.main(list(args))
    except SystemExit as e:
        rc = e.code
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, rc, out.out, out.err)


def script(name: str, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([PY, str(ROOT / "data_scripts" / name), *args], capture_output=True,
                          text=True, cwd="/", env=ENV, timeout=120, **kw)


def one_line_error(r: subprocess.CompletedProcess, *words: str) -> None:
    """Exit 2, stderr is exactly one ``error: ...`` line naming ``words``, no traceback."""
    err = r.stderr.strip()
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert err.startswith("error: ") and "\n" not in err, err[-2000:]
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in err, (w, err)


def grid_file(tmp_path: Path, grid: object, name: str = "grid.json") -> str:
    p = tmp_path / name
    p.write_text(json.dumps(grid) if not isinstance(grid, str) else grid)
    return str(p)


SMALL_GRID = {"methods": ["early"], "datasets": [{"name": "synthetic", "data_params": {"n": 200}}],
              "config": {"epochs": 1, "d": 8, "batch_size": 64}}


# ------------------------------------------------------------------ numbers, types, keys (train)


@pytest.mark.parametrize("args,words", [
    (["--lr", "inf"], ["lr", "finite"]),
    (["--lr", "nan"], ["lr", "finite"]),
    (["--lr", "-1e-3"], ["lr"]),
    (["--lr", "1e30"], ["lr"]),
    (["--weight", "orth=NaN"], ["orth"]),
    (["--weight", "orth=Infinity"], ["orth"]),
    (["--weight", "orth=-Infinity"], ["orth"]),
    (["--weight", "orth=true"], ["orth"]),
    (["--weight", "orth=abc"], ["orth"]),
    (["--weight", "ortho=5"], ["unknown loss term", "ortho"]),
    (["--seed", str(2**70)], ["seed"]),
    (["--seed", "-1"], ["seed"]),
    (["--seed", "1.5"], ["--seed"]),
    (["--epochs", "0"], ["epochs"]),
    (["--epochs", "x"], ["--epochs"]),
    (["--batch-size", "-4"], ["batch_size"]),
    (["--hidden", "10000000000"], ["d "]),
    (["--dropout", "1"], ["dropout"]),
    (["--modality-dropout", "nan"], ["modality_dropout"]),
    (["--patience", "0"], ["patience"]),
    (["--seq-encoder", "lstm"], ["seq_encoder"]),
    (["--device", "cuda:x"], ["device"]),
    (["--device", "tpu"], ["device"]),
    (["--data", "n=abc"], ["n", "integer"]),
    (["--data", "n=20.5"], ["n", "integer"]),
    (["--data", "n=true"], ["n", "integer"]),
    (["--data", "n=1e13"], ["n"]),
    (["--data", "n=10000000000000"], ["n"]),
    (["--data", "noise=-1"], ["noise"]),
    (["--data", "kinds=[\"tabular\",\"graph\",\"sequence\"]"], ["kinds"]),
    (["--data", "split=[0.9,0.2]"], ["split"]),
    (["--data", "colour=1"], ["unknown key", "colour"]),
    (["--data", "n"], ["KEY=VALUE"]),
    (["--data", "=3"], ["empty key"]),
    (["--data", "n=300", "--data", "n=400"], ["twice"]),
    (["--data", "max_train=0"], ["max_train"]),
    (["--param", "k=abc"], ["k", "integer"]),
    (["--param", "k=0"], ["k"]),
    (["--param", "temperature=NaN"], ["temperature"]),
    (["--param", "ortho=1"], ["does not take", "ortho"]),
    (["--dataset", "oulad", "--data", "seed=3"], ["seed", "--seed"]),
    (["--dataset", "oulad", "--data", "colour=1"], ["unknown key", "colour"]),
    (["--dataset", "oulad", "--data", "cutoff=\"half\""], ["cutoff"]),
    (["--dataset", "oulad", "--data", "cutoff=2"], ["cutoff"]),
    (["--dataset", "assist2009", "--data", "fold=1.0"], ["fold"]),
    (["--dataset", "assist2009", "--data", "fold=9"], ["fold"]),
    (["--dataset", "../../etc"], ["unknown dataset"]),
    (["--method", "../x"], ["unknown method"]),
    (["--out", ""], ["--out"]),
])
def test_train_rejects_bad_values_in_one_line(tmp_path, capsys, args, words):
    out = tmp_path / "o"
    argv = ["train", "--epochs", "1", "--out", str(out), *TINY, *args]
    if "--data" in args:  # the case's own --data replaces TINY's
        i = argv.index("--data")
        del argv[i:i + 2]
    r = main_in_process(capsys, *argv)
    one_line_error(r, *words)
    assert not (out / "metrics.json").exists()


def test_bad_values_fail_before_anything_is_written(tmp_path):
    """As a process: exit 2, one line, no traceback, and nothing created."""
    out = tmp_path / "never"
    one_line_error(cli("train", "--out", str(out), "--lr", "inf"), "lr")
    one_line_error(cli("train", "--out", str(out), "--data", "n=20.5"), "n", "integer")
    assert not out.exists(), "a refused run must not create its --out"


def test_the_same_check_guards_the_chapters_and_the_sweep():
    """TrainConfig (what chapters build) and load_dataset refuse what the CLI refuses."""
    from dsrsd.config import TrainConfig
    from dsrsd.data import load_dataset
    from dsrsd.errors import DsrsdError
    from dsrsd.sweep import expand

    for kw in [{"lr": float("inf")}, {"weights": {"ortho": 5.0}}, {"seed": 2**70},
               {"data_params": {"n": "abc"}}, {"method_params": {"k": "abc"}},
               {"epochs": True}, {"dataset": "oulad", "data_params": {"seed": 3}}]:
        with pytest.raises(DsrsdError):
            TrainConfig(**kw)
    with pytest.raises(DsrsdError, match="integer"):
        load_dataset("synthetic", n=20.5)
    runs = expand({"methods": ["early"], "datasets": ["synthetic"], "config": {"lr": 0.5},
                   "weights": {"orth": 1.0}})
    assert not runs[0].get("error")
    bad = expand({**SMALL_GRID, "variants": {"early": {"method": "early",
                                                       "method_params": {"k": 1}}}})
    assert "does not take" in bad[0]["error"] and bad[0]["run_id"].endswith("-invalid")


def test_valid_values_keep_their_hash():
    """Validation never converts: a config hashes as before (committed records stay valid)."""
    from dsrsd.config import TrainConfig
    assert TrainConfig().hash() == TrainConfig(lr=1e-3).hash()
    a = TrainConfig(lr=1, data_params={"n": 300})
    assert a.lr == 1 and isinstance(a.lr, int)


def test_divergence_is_a_one_line_error(tmp_path, capsys):
    # finite, so accepted; the contrastive term (about log B) times 1e38 overflows float32
    r = main_in_process(capsys, "train", "--epochs", "2", "--out", str(tmp_path / "o"), *TINY,
                        "--weight", "align_con=1e38")
    one_line_error(r, "diverged")
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_unknown_subcommand_and_missing_out_are_one_line(capsys):
    one_line_error(main_in_process(capsys, "fly"), "invalid choice")
    one_line_error(main_in_process(capsys, "train"), "--out")


# --------------------------------------------------------------------------- paths and files


def test_out_is_a_file_or_under_a_file(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    run = main_in_process
    one_line_error(run(capsys, "train", "--epochs", "1", "--out", str(f), *TINY), "--out")
    one_line_error(run(capsys, "train", "--epochs", "1", "--out", str(f / "sub"), *TINY), "--out")
    one_line_error(run(capsys, "sweep", "--grid", grid_file(tmp_path, SMALL_GRID), "--out",
                       str(f), "--executor", "direct"), "--out")
    assert f.read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_out(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        one_line_error(cli("train", "--epochs", "1", "--out", str(ro / "o"), *TINY), "--out")
        one_line_error(cli("sweep", "--grid", grid_file(tmp_path, SMALL_GRID), "--out",
                           str(ro), "--executor", "direct"), "--out")
    finally:
        ro.chmod(0o755)


def test_checkpoint_missing_keys_or_foreign(tmp_path, capsys):
    import torch
    out = tmp_path / "o"
    out.mkdir()
    argv = ["train", "--epochs", "1", "--out", str(out), "--resume", *TINY]
    torch.save({"format": 1, "config_hash": "x"}, out / "last.pt")
    one_line_error(main_in_process(capsys, *argv), "incomplete")
    torch.save([1, 2, 3], out / "last.pt")
    one_line_error(main_in_process(capsys, *argv), "not a dsrsd checkpoint")
    (out / "last.pt").write_bytes(b"")
    one_line_error(main_in_process(capsys, *argv), "corrupt")
    assert not (out / "metrics.json").exists()


def _limit_file_size(limit: int):
    def pre() -> None:  # a process whose files cannot grow past `limit` bytes: a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return pre


def test_full_disk_during_training(tmp_path):
    out = tmp_path / "o"
    r = cli("train", "--epochs", "2", "--out", str(out), *TINY,
            preexec_fn=_limit_file_size(4096))
    one_line_error(r, "too large")
    assert not (out / "metrics.json").exists()
    assert not list(out.glob(".*.tmp")), "no temporary file left behind"
    assert not list(out.glob("*.pt")), "no checkpoint half-written"


# ---------------------------------------------------------------------- resume after stopping


def test_resume_after_early_stop_does_not_train_on(tmp_path, capsys):
    """A kill after the checkpoint of the stopping epoch but before metrics.json: --resume
    must give the uninterrupted record, not train past the stop."""
    args = ["--epochs", "40", "--patience", "1", "--lr", "0.05", "--seed", "1", *TINY]
    out = tmp_path / "o"
    r = main_in_process(capsys, "train", "--out", str(out), *args)
    assert r.returncode == 0, r.stderr
    full = json.loads((out / "metrics.json").read_text())
    assert full["epochs_run"] < 40, "early stopping must fire for this test to mean anything"
    (out / "metrics.json").unlink()  # the state a kill in that window leaves
    r = main_in_process(capsys, "train", "--out", str(out), "--resume", *args)
    assert r.returncode == 0, r.stderr
    again = json.loads((out / "metrics.json").read_text())
    for key in ("test", "val", "history", "epochs_run", "best_epoch", "robustness"):
        assert again[key] == full[key], key


# ------------------------------------------------------------------------- the data cache


def _oulad_fixture(tmp_path: Path) -> tuple[Path, Path]:
    from dsrsd.data.oulad import prepare_oulad
    src = write_oulad_tables(make_oulad_tables(n_per_pres=12, seed=0), tmp_path / "oulad.zip")
    data = tmp_path / "data"
    prepare_oulad(src, data, expected_rows=None, log=lambda s: None)
    return src, data


class _Boom:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['DSRSD_PWNED']}",))


def test_no_code_runs_from_a_planted_cache(tmp_path, capsys):
    src, data = _oulad_fixture(tmp_path)
    root = data / "oulad"
    assert not list(root.glob("*.pkl")), "the cache holds no pickle"
    pwned = tmp_path / "pwned"
    os.environ["DSRSD_PWNED"] = str(pwned)
    try:
        payload = pickle.dumps(_Boom())
    finally:
        del os.environ["DSRSD_PWNED"]
    # plant the payload under every name the loader could read, and as an npz member
    (root / "tables.pkl").write_bytes(payload)
    with zipfile.ZipFile(root / "tables.npz", "w") as z:
        z.writestr("courses/code_module.npy", payload)
    env = {**ENV, "DSRSD_DATA": str(data)}
    r = subprocess.run([PY, "-m", "dsrsd", "train", "--dataset", "oulad", "--epochs", "1",
                        "--out", str(tmp_path / "o"), "--hidden", "8", "--no-progress",
                        "--device", "cpu"], capture_output=True, text=True, cwd=ROOT, env=env,
                       timeout=120)
    one_line_error(r, "unreadable", "--force")
    assert not pwned.exists(), "a data file ran code"
    # --force rebuilds a good cache from the source
    r = script_in_process(capsys, "get_oulad.py", "--source", str(src), "--data-dir", str(data),
                          "--no-count-check", "--force")
    assert r.returncode == 0, r.stderr
    assert not pwned.exists() and not (data / "oulad" / "tables.pkl").exists()


def test_corrupt_caches_are_one_line(tmp_path, capsys):
    _, data = _oulad_fixture(tmp_path)
    (data / "oulad" / "student_vle.npz").write_bytes(b"PK\x03\x04 truncated")
    r = main_in_process(capsys, "train", "--dataset", "oulad", "--epochs", "1", "--out", str(tmp_path / "o"),
            "--data", f"data_dir=\"{data}\"", "--no-progress", "--device", "cpu")
    one_line_error(r, "unreadable")
    assist = data / "assist2009"
    assist.mkdir()
    (assist / "manifest.json").write_text(json.dumps({"format": 1}))
    (assist / "parts.npz").write_bytes(b"garbage")
    (assist / "skills.json").write_text("[]")
    r = main_in_process(capsys, "train", "--dataset", "assist2009", "--epochs", "1", "--out", str(tmp_path / "o"),
            "--data", f"data_dir=\"{data}\"", "--no-progress", "--device", "cpu")
    one_line_error(r, "unreadable")


def test_data_scripts_data_dir_is_a_file_or_disk_full(tmp_path, capsys):
    src = write_oulad_tables(make_oulad_tables(n_per_pres=12, seed=0), tmp_path / "oulad.zip")
    f = tmp_path / "file"
    f.write_text("x")
    one_line_error(script_in_process(capsys, "get_oulad.py", "--source", str(src), "--data-dir",
                                     str(f), "--no-count-check"))
    one_line_error(script_in_process(capsys, "get_assistments.py", "--source",
                                     str(tmp_path / "nothing"), "--data-dir", str(f)))
    data = tmp_path / "data"
    r = script("get_oulad.py", "--source", str(src), "--data-dir", str(data), "--no-count-check",
               preexec_fn=_limit_file_size(2048))
    one_line_error(r, "too large")
    assert not (data / "oulad").exists(), "the cache is written whole or not at all"
    assert not [p for p in data.rglob("*") if p.is_file()], list(data.rglob("*"))
    one_line_error(script_in_process(capsys, "get_oulad.py", "--bogus"), "--bogus")


# ------------------------------------------------------------------------------ sweep grids


@pytest.mark.parametrize("grid,words", [
    ("{not json", ["not valid JSON"]),
    ("[1, 2]", ["object"]),
    ({"methods": "early", "datasets": ["synthetic"]}, ["methods", "list"]),
    ({"methods": ["early"], "datasets": [{"data_params": {}}]}, ["name"]),
    ({"methods": ["early"], "datasets": ["synthetic"], "config": "fast"}, ["config"]),
    ({"methods": ["early"], "datasets": [{"name": "synthetic", "max_train": "lots"}]},
     ["max_train", "integer"]),
    ({"methods": ["early"], "datasets": [{"name": "synthetic", "max_train": 2.5}]},
     ["max_train", "integer"]),
    ({"methods": ["x"], "datasets": ["synthetic"], "variants": {"x": "early"}}, ["variant"]),
    ({"methods": ["early"], "datasets": ["synthetic"], "colour": 1}, ["unknown key", "colour"]),
    ({"methods": ["early"], "datasets": ["synthetic"], "config": {"epoch": 1}},
     ["unknown key", "epoch"]),
    ({"methods": ["early"], "datasets": ["synthetic"], "config": {"seed": 1}}, ["seed"]),
    ({"methods": ["early"], "datasets": ["synthetic"], "config": {"lr": "fast"}}, ["lr"]),
    ({"methods": ["early"], "datasets": ["synthetic"], "weights": {"ortho": 1}}, ["ortho"]),
    ({"methods": ["early"], "datasets": ["synthetic"], "seeds": [0.5]}, ["seed"]),
    ({"methods": ["early"], "datasets": [{"name": "synthetic", "setting": "../../x"}]},
     ["setting", "safe name"]),
    ({"methods": ["early"], "datasets": [{"name": "synthetic", "setting": "/tmp/abs"}]},
     ["setting", "safe name"]),
    ({"methods": ["early"], "datasets": [{"name": "synthetic", "setting": "x" * 300}]},
     ["setting", "safe name"]),
    ({"methods": ["early"], "datasets": [{"name": "synthetic", "setting": "a\u0000b"}]},
     ["setting", "safe name"]),
    ({"methods": ["../up"], "datasets": ["synthetic"],
      "variants": {"../up": {"method": "early"}}}, ["method label", "safe name"]),
    ({"methods": ["early", "early"], "datasets": ["synthetic"]}, ["twice"]),
    ({"methods": ["early"], "datasets": ["synthetic", "synthetic"]}, ["setting"]),
    ({"methods": ["early"], "datasets": [{"name": "synthetic", "data_params": {"n": "x"}}]},
     ["n", "integer"]),
    ({"methods": ["early"], "datasets": [{"name": "mnist"}]}, ["unknown dataset"]),
])
def test_bad_grids_are_refused_before_any_run(tmp_path, capsys, grid, words):
    out = tmp_path / "runs"
    r = main_in_process(capsys, "sweep", "--grid", grid_file(tmp_path, grid), "--out", str(out), "--executor",
            "direct")
    one_line_error(r, *words)
    assert not out.exists() or not any(out.iterdir())
    assert [p.name for p in tmp_path.iterdir()] == ["grid.json"], "nothing written beside --out"


@pytest.mark.parametrize("args,words", [
    (["--jobs", "-3"], ["--jobs"]), (["--jobs", "0"], ["--jobs"]),
    (["--epochs", "0"], ["--epochs"]), (["--out", ""], ["--out"]),
    (["--only-method", "nope"], ["--only-method", "nope"]),
    (["--device", "gpu"], ["device"]), (["--grid", "/nonexistent.json"], ["cannot read"]),
])
def test_bad_sweep_options(tmp_path, capsys, args, words):
    grid = grid_file(tmp_path, SMALL_GRID)
    argv = ["sweep", "--grid", grid, "--out", str(tmp_path / "runs"), "--executor", "direct",
            *args]
    if args[0] == "--grid":
        argv[1:3] = []
    r = main_in_process(capsys, *argv)
    one_line_error(r, *words)
    assert not (tmp_path / "runs").exists()


def test_run_folder_stays_inside_out(tmp_path):
    from dsrsd import sweep as sw
    from dsrsd.errors import DsrsdError
    from dsrsd.validate import run_dir

    for rid in ("../x", "/abs", "..", ".", "a/b", "", "x" * 300, None, 5, ".hidden", "-x"):
        with pytest.raises(DsrsdError):
            run_dir(tmp_path, rid)
        status = sw.run_one({"run_id": rid, "config": {}, "hash": None}, str(tmp_path / "out"),
                            executor="direct")
        assert status["status"] == "error"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] or not list(tmp_path.iterdir())


def test_metrics_not_an_object_and_corrupt_log(tmp_path, capsys):
    from dsrsd import sweep as sw
    out = tmp_path / "runs"
    runs = sw.expand(SMALL_GRID)
    d = out / runs[0]["run_id"]
    d.mkdir(parents=True)
    (d / "metrics.json").write_text("[1, 2, 3]")  # not a record: the run is redone
    (out / "sweep_log.json").write_text("{half")
    r = main_in_process(capsys, "sweep", "--grid", grid_file(tmp_path, SMALL_GRID), "--out", str(out), "--executor",
            "direct")
    assert r.returncode == 0, r.stderr
    assert isinstance(json.loads((d / "metrics.json").read_text()), dict)
    log = json.loads((out / "sweep_log.json").read_text())
    assert len(log["sweeps"]) == 1
    assert list(out.glob("sweep_log.corrupt-*.json")), "the unreadable log is kept aside"


# --------------------------------------------------------------------- workers, concurrency


SLOW_GRID = {"methods": ["early", "late_logit", "dsrsd"],
             "datasets": [{"name": "synthetic", "data_params": {"n": 600}}],
             "config": {"epochs": 8, "d": 8, "batch_size": 32, "patience": 8}}


def _wait_for(pred, timeout: float = 90.0) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.02)
    return False


def test_killed_worker_becomes_error_json_and_sweep_goes_on(tmp_path, capsys):
    from dsrsd import sweep as sw
    out = tmp_path / "runs"
    runs = sw.expand(SLOW_GRID)
    victim = out / runs[0]["run_id"]
    proc = subprocess.Popen([PY, "-m", "dsrsd", "sweep", "--grid", grid_file(tmp_path, SLOW_GRID),
                             "--out", str(out), "--executor", "direct", "--jobs", "2"],
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)

    def victim_pid() -> int | None:
        try:
            return int((victim / sw.RUN_LOCK).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    assert _wait_for(lambda: victim_pid() is not None), "the run never started"
    os.kill(victim_pid(), signal.SIGKILL)  # as the OOM killer would
    stdout, stderr = proc.communicate(timeout=300)
    assert "Traceback" not in stderr and "BrokenProcessPool" not in stderr, stderr[-2000:]
    assert proc.returncode == 1, (stdout, stderr)
    err = json.loads((victim / "error.json").read_text())
    assert "SIGKILL" in err["error"] and "\n" not in err["error"]
    for r in runs[1:]:  # the others finished
        assert (out / r["run_id"] / "metrics.json").exists(), r["run_id"]
    # the next sweep redoes only the killed run, and it succeeds
    r = main_in_process(capsys, "sweep", "--grid", grid_file(tmp_path, SLOW_GRID), "--out", str(out), "--executor",
            "direct")
    assert r.returncode == 0, r.stderr
    assert "2 skipped" in r.stdout and "1 ok" in r.stdout, r.stdout
    assert not (victim / "error.json").exists() and (victim / "metrics.json").exists()
    assert not list(victim.glob("*.pt")) and not (victim / sw.IN_PROGRESS).exists()


def test_two_sweeps_on_one_out_train_each_run_once(tmp_path):
    from dsrsd import sweep as sw
    out = tmp_path / "runs"
    grid = grid_file(tmp_path, SLOW_GRID)
    cmd = [PY, "-m", "dsrsd", "sweep", "--grid", grid, "--out", str(out), "--executor", "direct"]
    a = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    b = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    (_, ea), (_, eb) = a.communicate(timeout=300), b.communicate(timeout=300)
    assert a.returncode == 0 and b.returncode == 0, (ea[-1500:], eb[-1500:])
    log = json.loads((out / "sweep_log.json").read_text())["sweeps"]
    assert len(log) == 2, "no lost log entry"
    assert sum(s["ok"] for s in log) == 3, log  # every run trained exactly once
    for r in sw.expand(SLOW_GRID):
        d = out / r["run_id"]
        assert (d / "metrics.json").exists() and not (d / "error.json").exists()
        assert not (d / sw.RUN_LOCK).exists() and not (d / sw.IN_PROGRESS).exists()


def test_half_finished_run_is_redone(tmp_path, capsys):
    """A kill after the record was written but before the run was wrapped up (papermill still
    finishing, checkpoints not yet deleted) leaves the in-progress marker: redone, cleaned."""
    from dsrsd import sweep as sw
    out = tmp_path / "runs"
    run = sw.expand(SMALL_GRID)[0]
    d = out / run["run_id"]
    d.mkdir(parents=True)
    # the state of a kill in that window: record and checkpoints written, the run not wrapped up
    first = sw.execute_run(run, str(out))
    for name in ("run.part.ipynb", sw.IN_PROGRESS):
        (d / name).write_text("")
    assert (d / "last.pt").exists() and not sw.is_done(d, run["hash"])
    r = main_in_process(capsys, "sweep", "--grid", grid_file(tmp_path, SMALL_GRID), "--out", str(out), "--executor",
            "direct")
    assert r.returncode == 0 and "1 ok" in r.stdout, (r.stdout, r.stderr)
    assert sorted(p.name for p in d.iterdir()) == ["metrics.json", "test_predictions.npz"]
    again = json.loads((d / "metrics.json").read_text())
    assert again["test"] == first["test"] and again["history"] == first["history"]


def test_papermill_kill_after_record_is_redone(tmp_path, capsys):
    """The real thing: SIGKILL the sweep while papermill is still finishing a run whose
    metrics.json is already written; the next sweep redoes it and cleans up."""
    from dsrsd import sweep as sw
    out = tmp_path / "runs"
    run = sw.expand(SMALL_GRID)[0]
    d = out / run["run_id"]
    proc = subprocess.Popen([PY, "-m", "dsrsd", "sweep", "--grid", grid_file(tmp_path, SMALL_GRID),
                             "--out", str(out)], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert _wait_for(lambda: (d / "metrics.json").exists(), 240), "the run never finished"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    if (d / "run.ipynb").exists() and not (d / sw.IN_PROGRESS).exists():
        pytest.skip("the run finished before the kill landed")
    assert not sw.is_done(d, run["hash"])
    r = main_in_process(capsys, "sweep", "--grid", grid_file(tmp_path, SMALL_GRID), "--out",
                        str(out))
    assert r.returncode == 0 and "1 ok" in r.stdout, (r.stdout, r.stderr[-2000:])
    left = sorted(p.name for p in d.iterdir())
    assert left == ["metrics.json", "run.ipynb", "test_predictions.npz"], left


def _ctrl_c_reaches_it() -> None:
    """Popen preexec: Ctrl-C as at a terminal. A command started in the background by a
    non-interactive shell (as CI may run pytest) inherits SIGINT ignored, and Python then keeps
    ignoring it: the child would never see the signal these tests send."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig,code,word", [(signal.SIGINT, 130, "interrupted"),
                                            (signal.SIGTERM, 143, "terminated")])
def test_signal_during_train_is_one_line_and_resumable(tmp_path, capsys, sig, code, word):
    out = tmp_path / "o"
    args = ["train", "--epochs", "20", "--patience", "20", "--out", str(out), *TINY[2:],
            "--data", "n=1500"]
    proc = subprocess.Popen([PY, "-m", "dsrsd", *args], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_ctrl_c_reaches_it)
    assert _wait_for(lambda: (out / "last.pt").exists()), "no checkpoint"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal landed")
    assert proc.returncode == code and err.strip() == f"error: {word}", err[-2000:]
    assert not (out / "metrics.json").exists() and not list(out.glob(".*.tmp"))
    r = main_in_process(capsys, *args, "--resume")
    assert r.returncode == 0, r.stderr


def test_sweep_started_with_ctrl_c_ignored_keeps_its_workers(tmp_path):
    """A sweep started with SIGINT ignored (nohup-style, a background job) is not stopped by a
    Ctrl-C to its group, and neither are its workers: no run becomes a false error."""
    out = tmp_path / "runs"
    grid = {**SLOW_GRID, "methods": ["early", "late_logit"],
            "config": {**SLOW_GRID["config"], "epochs": 3, "patience": 3}}
    from dsrsd import sweep as sw
    proc = subprocess.Popen([PY, "-m", "dsrsd", "sweep", "--grid", grid_file(tmp_path, grid),
                             "--out", str(out), "--executor", "direct", "--jobs", "2"],
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert _wait_for(lambda: len(list(out.glob(f"*/{sw.RUN_LOCK}"))) == 2), "runs never started"
    os.killpg(proc.pid, signal.SIGINT)
    outp, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "2 ok" in outp, (outp, err[-2000:])


def test_ctrl_c_on_a_parallel_sweep_is_one_line(tmp_path):
    from dsrsd import sweep as sw
    out = tmp_path / "runs"
    proc = subprocess.Popen([PY, "-m", "dsrsd", "sweep", "--grid", grid_file(tmp_path, SLOW_GRID),
                             "--out", str(out), "--executor", "direct", "--jobs", "2"],
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, preexec_fn=_ctrl_c_reaches_it)
    assert _wait_for(lambda: len(list(out.glob(f"*/{sw.RUN_LOCK}"))) == 2), "runs never started"
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and err.strip() == "error: interrupted", err[-2000:]


    def all_free() -> bool:  # no worker still holds a run (a lock file may stay, unlocked)
        for f in out.glob(f"*/{sw.RUN_LOCK}"):
            lock = sw.FileLock(f)
            if not lock.acquire():
                return False
            lock.release()
        return True

    assert _wait_for(all_free, 30), "a worker outlived the interrupted sweep"


# ------------------------------------------------------------------------------ dsrsd.tables


@pytest.fixture(scope="module")
def one_record(tmp_path_factory) -> Path:
    from dsrsd import sweep as sw
    out = tmp_path_factory.mktemp("records")
    run = sw.expand(SMALL_GRID)[0]
    assert sw.run_one(run, str(out), executor="direct")["status"] == "ok"
    return out / run["run_id"]


def _record(tmp_path: Path, one_record: Path) -> Path:
    """A folder of runs holding a copy of one good record."""
    import shutil
    dest = tmp_path / "runs" / one_record.name
    shutil.copytree(one_record, dest)
    return dest


def test_tables_never_overwrite_with_nothing(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    (res / "summary.csv").write_text("committed\n")
    for runs in (tmp_path / "missing", tmp_path):  # as a process: exit 2, one line
        r = cli("--runs", str(runs), "--out", str(res), module="dsrsd.tables")
        one_line_error(r, "run records")
    assert (res / "summary.csv").read_text() == "committed\n"


@pytest.mark.parametrize("content,words", [
    ("{half", ["not valid JSON"]), ("[1, 2]", ["not a JSON object"]), ("\"x\"", ["object"]),
    (json.dumps({"method": 1, "dataset": "d", "config": {}}), ["method"]),
    (json.dumps({"method": "m", "dataset": "d"}), ["config"]),
    (json.dumps({"method": "m", "dataset": "d", "config": {"data_params": []}}), ["data_params"]),
    (json.dumps({"method": "m", "dataset": "d", "config": {}, "test": [1]}), ["test"]),
    (json.dumps({"method": "m", "dataset": "d", "config": {},
                 "robustness": {"drop_modality": {"a": 1}}}), ["robustness"]),
    ("\xff\xfe", ["bad record"]),
])
def test_tables_malformed_records(tmp_path, capsys, one_record, content, words):
    good = _record(tmp_path, one_record)
    bad = good.parent / "bad-run"
    bad.mkdir()
    (bad / "metrics.json").write_bytes(content.encode("latin-1") if "\xff" in content
                                       else content.encode())
    res = tmp_path / "results"
    r = main_in_process(capsys, "--runs", str(good.parent), "--out", str(res),
                        module="dsrsd.tables")
    one_line_error(r, *words)
    assert not res.exists()


def test_tables_bad_error_json_and_out_file(tmp_path, capsys, one_record):
    good = _record(tmp_path, one_record)
    f = tmp_path / "file"
    f.write_text("x")
    tables = "dsrsd.tables"
    one_line_error(main_in_process(capsys, "--runs", str(good.parent), "--out", str(f),
                                   module=tables), "cannot write")
    bad = good.parent / "failed-run"
    bad.mkdir()
    (bad / "error.json").write_text("[]")
    one_line_error(main_in_process(capsys, "--runs", str(good.parent), "--out",
                                   str(tmp_path / "r"), module=tables), "error record")
    one_line_error(main_in_process(capsys, "--bogus", module=tables), "--bogus")
