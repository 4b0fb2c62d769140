"""The command line matches the config, and experiments are data files with explicit groups."""

from __future__ import annotations

import json
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from dsrsd import sweep as sw
from dsrsd.cli import build_parser, config_flags, main, train_config
from dsrsd.config import DEFAULT_WEIGHTS, TrainConfig
from dsrsd.errors import DsrsdError

# A valid non-default value for string fields without a list of choices
_STR_VALUES = {"method": "early", "dataset": "oulad", "device": "cpu"}


def _other_value(f) -> object:
    default = f.default if f.default is not MISSING else f.default_factory()
    meta = dict(f.metadata)
    if "choices" in meta:
        return next(c for c in meta["choices"] if c != default)
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 1
    if isinstance(default, float):
        return default * 0.5 + 0.01
    return _STR_VALUES[f.name]


def _flag_args(name: str, value: object) -> list[str]:
    flag = config_flags()[name][0]
    if isinstance(value, bool):
        return [flag if value else "--no-" + flag[2:]]
    return [flag, str(value)]


def test_every_config_field_has_a_train_option_that_reaches_the_config():
    parser, _ = build_parser()
    dict_fields = {"data_params", "method_params", "weights"}
    for f in fields(TrainConfig):
        if f.name in dict_fields:
            continue
        value = _other_value(f)
        # --like none: a real dataset would otherwise start from its searched configuration
        a = parser.parse_args(["train", "--out", "o", "--like", "none", *_flag_args(f.name, value)])
        cfg = train_config(a)
        assert getattr(cfg, f.name) == value, f.name
        # every other field keeps the dataclass default
        plain = TrainConfig()
        for g in fields(TrainConfig):
            if g.name not in (f.name, "weights"):
                assert getattr(cfg, g.name) == getattr(plain, g.name), (f.name, g.name)


def test_unset_options_give_the_default_config_and_its_hash():
    parser, _ = build_parser()
    cfg = train_config(parser.parse_args(["train", "--out", "o"]))
    assert cfg.hash() == TrainConfig().hash()


def test_options_the_old_cli_lacked_reach_the_record(tmp_path):
    out = tmp_path / "r"
    rc = main(["train", "--epochs", "2", "--hidden", "8", "--data", "n=200", "--batch-size", "64",
               "--weight-decay", "0.5", "--warmup-epochs", "1", "--grad-clip", "0", "--no-amp",
               "--device", "cpu", "--no-progress", "--out", str(out)])
    assert rc == 0
    c = json.loads((out / "metrics.json").read_text())["config"]
    assert (c["weight_decay"], c["warmup_epochs"], c["grad_clip"], c["amp"]) == (0.5, 1, 0.0, False)


def test_bad_option_value_is_one_line(capsys):
    assert main(["train", "--out", "o", "--weight-decay", "-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "weight_decay" in err


def test_experiment_files_are_named_described_and_grouped():
    files = sorted(sw.EXPERIMENTS_DIR.glob("*.json"))
    assert files and set(sw.PRESETS) == {p.stem for p in files}
    for p in files:
        g = json.loads(p.read_text())
        assert g["name"] == p.stem, p
        assert len(g["description"]) > 40, p
        runs = sw.expand(sw.load_grid(preset=p.stem))
        assert {r["group"] for r in runs} <= set(sw.GROUPS)
        assert {r["experiment"] for r in runs} == {p.stem}
    abl = sw.expand(sw.load_grid(preset="oulad_ablation"))
    # the grid says which runs are ablations: no naming rule needed
    assert {r["variant"] for r in abl if r["group"] == "ablation"} == {
        r["variant"] for r in abl if r["variant"].startswith("dsrsd-")}


def test_bad_group_is_a_one_line_error(tmp_path):
    g = json.loads((sw.EXPERIMENTS_DIR / "smoke.json").read_text())
    g["variants"] = {"early": {"method": "early", "group": "headline"}}
    p = tmp_path / "g.json"
    p.write_text(json.dumps(g))
    with pytest.raises(DsrsdError, match="group must be one of main, ablation"):
        sw.load_grid(str(p))


def test_records_carry_group_and_experiment(tmp_path):
    runs = sw.expand(sw.load_grid(preset="smoke"), device="cpu")[:1]
    s = sw.sweep(runs, tmp_path, progress=False, executor="direct")
    assert s["ok"] == 1
    rec = json.loads(next(Path(tmp_path).glob("*/metrics.json")).read_text())
    assert (rec["group"], rec["experiment"]) == ("main", "smoke")


def test_records_say_which_search_chose_them(tmp_path):
    from dsrsd import tables
    g = json.loads((sw.EXPERIMENTS_DIR / "smoke.json").read_text())
    g["methods"] = ["early"]
    g["variants"] = {"early": {"method": "early",
                               "chosen_by": {"experiment": "oulad_select", "split": "val"}}}
    p = tmp_path / "g.json"
    p.write_text(json.dumps(g))
    runs = sw.expand(sw.load_grid(str(p)), device="cpu")[:1]
    assert sw.sweep(runs, tmp_path / "runs", progress=False, executor="direct")["ok"] == 1
    rec = json.loads(next((tmp_path / "runs").glob("*/metrics.json")).read_text())
    assert rec["chosen_by"] == {"experiment": "oulad_select", "split": "val"}
    row = tables.load_records(tmp_path / "runs").iloc[0]
    assert (row["chosen_by"], row["chosen_on"]) == ("oulad_select", "val")
    # a record written before the field existed reads it from its experiment's file
    old = {"experiment": "assist_full", "variant": "dkt_tuned"}
    assert tables.chosen_by(old) == {"experiment": "assist_kt_select", "split": "inner"}
    assert tables.chosen_by({"experiment": "assist_full", "variant": "late"}) is None


@pytest.mark.parametrize("chosen, match", [
    ({"experiment": "oulad_select", "split": "test"}, "chosen_by split must be one of val"),
    ({"experiment": "oulad_select"}, "needs a non-empty 'split'"),
    ("oulad_select", "chosen_by"),
])
def test_bad_chosen_by_is_a_one_line_error(tmp_path, chosen, match):
    g = json.loads((sw.EXPERIMENTS_DIR / "smoke.json").read_text())
    g["variants"] = {"early": {"method": "early", "chosen_by": chosen}}
    p = tmp_path / "g.json"
    p.write_text(json.dumps(g))
    with pytest.raises(DsrsdError, match=match) as e:
        sw.load_grid(str(p))
    assert len(str(e.value).splitlines()) == 1


def test_every_chosen_configuration_names_a_selection_experiment():
    """Each ``chosen_by`` names an experiment file whose records are a search (group
    selection) or, for the earlier weights, the ablation that chose them on validation."""
    for p in sorted(sw.EXPERIMENTS_DIR.glob("*.json")):
        for label, var in json.loads(p.read_text()).get("variants", {}).items():
            if "chosen_by" in var:
                src = var["chosen_by"]["experiment"]
                assert src in sw.PRESETS, (p.stem, label)
                assert src != p.stem, (p.stem, label)


def _config(*argv: str) -> TrainConfig:
    parser, _ = build_parser()
    return train_config(parser.parse_args(["train", *argv, "--out", "x"]))


@pytest.mark.parametrize("spec", ["oulad_full:dsrsd", "assist_full:dsrsd", "oulad_full:misa"])
def test_like_gives_the_configuration_of_the_experiments_first_run(spec):
    """Training with --like repeats the record's configuration: the same hash."""
    exp, variant = spec.split(":")
    first = next(r for r in sw.expand(sw.load_grid(preset=exp)) if r["variant"] == variant)
    assert _config("--like", spec).hash() == first["hash"]


def test_options_change_a_like_configuration_key_by_key():
    base = _config("--like", "oulad_full:dsrsd")
    c = _config("--like", "oulad_full:dsrsd", "--weight", "orth=0.5", "--seed", "3",
                "--param", "fusion=gate", "--data", "cutoff=0.25")
    assert c.weights == {**base.weights, "orth": 0.5} and c.seed == 3
    assert c.method_params == {**base.method_params, "fusion": "gate"}
    assert c.data_params == {**base.data_params, "cutoff": 0.25}
    assert (c.epochs, c.batch_size, c.select_after_warmup) == (
        base.epochs, base.batch_size, base.select_after_warmup)
    # another dataset does not inherit the experiment's dataset parameters
    other = _config("--like", "oulad_full:dsrsd", "--dataset", "synthetic")
    assert other.dataset == "synthetic" and other.data_params == {}
    assert other.method_params == base.method_params


@pytest.mark.parametrize("spec, words", [("oulad_full", "EXPERIMENT:VARIANT"),
                                         ("nowhere:dsrsd", "unknown preset 'nowhere'"),
                                         ("oulad_full:nothing", "has no variant 'nothing'")])
def test_bad_like_is_one_line(capsys, spec, words):
    assert main(["train", "--like", spec, "--out", "x"]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("dataset, method, spec", [
    ("oulad", None, "oulad_full:dsrsd"), ("oulad", "early", "oulad_full:early"),
    ("assist2009", "dsrsd", "assist_full:dsrsd"), ("assist2009", "akt", "assist_full:akt")])
def test_real_datasets_default_to_the_searched_configuration(dataset, method, spec):
    """Issue 12: on real data the defaults are what the validation search chose (the same hash
    as the experiment's record), not the synthetic-data weights."""
    argv = ["--dataset", dataset, *(["--method", method] if method else [])]
    assert _config(*argv).hash() == _config("--like", spec).hash()
    searched = _config("--dataset", dataset, "--method", "dsrsd").weights
    assert searched != DEFAULT_WEIGHTS
    # --like none keeps the package defaults; other data and unsearched methods keep them too
    plain = _config(*argv, "--like", "none")
    assert plain.weights == DEFAULT_WEIGHTS and plain.epochs == TrainConfig().epochs
    assert _config("--dataset", "synthetic").hash() == TrainConfig().hash()
    assert _config("--dataset", dataset, "--method", "coral").weights == DEFAULT_WEIGHTS
