"""The cost benchmark's experiment variants measure the configurations the results used."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("methods_cost", ROOT / "benchmarks" / "methods_cost.py")
methods_cost = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(methods_cost)


@pytest.mark.parametrize("name", list(methods_cost.EXPERIMENT_VARIANTS))
def test_experiment_variants_are_read_from_the_grid_files(name):
    grid, label, extra = methods_cost.EXPERIMENT_VARIANTS[name]
    var = json.loads((ROOT / "experiments" / f"{grid}.json").read_text())["variants"][label]
    method, params, weights = methods_cost.variant_config(name)
    assert method == var["method"] == "dsrsd"
    assert params == {**var["method_params"], **extra}
    assert weights == var["weights"]


def test_default_variants_keep_the_default_weights():
    assert methods_cost.variant_config("dsrsd_fast")[2] is None


def test_cost_benchmark_records_the_experiment_weights(tmp_path):
    out = tmp_path / "cost.csv"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "methods_cost.py"),
                        "--datasets", "synthetic", "--sizes", "32x8", "--methods",
                        "early,dsrsd_fast,dsrsd_oulad,dsrsd_assist_mlp", "--rounds", "2",
                        "--number", "1", "--warmup", "1", "--no-memory", "--threads", "1",
                        "--clock", "cpu", "--out", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {x["method"]: x for x in csv.DictReader(out.open())}
    assert list(rows) == ["early", "dsrsd_fast", "dsrsd_oulad", "dsrsd_assist_mlp"]
    from dsrsd.config import DEFAULT_WEIGHTS
    assert json.loads(rows["dsrsd_fast"]["weights"]) == DEFAULT_WEIGHTS
    for name in ("dsrsd_oulad", "dsrsd_assist_mlp"):
        _, params, weights = methods_cost.variant_config(name)
        assert json.loads(rows[name]["weights"]) == {**DEFAULT_WEIGHTS, **weights}
        assert json.loads(rows[name]["method_params"]) == params
        assert float(rows[name]["step_ms_median"]) > 0
    assert rows["early"]["timing"] == "interleaved-cpu-time"
