"""Small helpers shared by the test modules (imported as ``helpers``; pytest puts tests/ on the path)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest


def one_line(e: pytest.ExceptionInfo, *words: str) -> None:
    """The raised error is one line and names every one of ``words``."""
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg


def run_script(script: Path, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """Run a data script as a user would, from an unrelated folder."""
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                          cwd="/", timeout=timeout)


REPO = Path(__file__).resolve().parents[1]
# The real data: $DSRSD_SHARED_DATA (set by .ci/run), else ../shared/data beside the checkout.
SHARED = Path(os.environ.get("DSRSD_SHARED_DATA", str(REPO.parent / "shared" / "data")))
# dataset -> (data script, its --source, a file that must exist there)
REAL = {"oulad": ("get_oulad.py", SHARED / "oulad_csv" / "anonymisedData.zip",
                  SHARED / "oulad_csv" / "anonymisedData.zip"),
        "assist2009": ("get_assistments.py", SHARED / "assist2009_akt",
                       SHARED / "assist2009_akt" / "assist2009_pid_train1.csv")}


def prepare_real(dataset: str, into: Path) -> float:
    """Prepare a real dataset into ``into`` through its data script; return the seconds taken.

    Skips the calling test when the real files are not on this machine.
    """
    script, source, marker = REAL[dataset]
    if not marker.is_file():
        pytest.skip(f"real {dataset} not found at {source} (set DSRSD_SHARED_DATA)")
    t = time.perf_counter()
    r = run_script(REPO / "data_scripts" / script, "--source", str(source), "--data-dir",
                   str(into), timeout=600)
    assert r.returncode == 0, r.stderr
    return time.perf_counter() - t


# A COrAL small enough for unit tests on 240 synthetic samples.
SMALL_CORAL = {"proj_hidden": 32, "proj_dim": 16, "tab_tokens": 2, "heads": 4}


def small_config(method: str, params: dict | None = None, **kw):
    """A one-epoch CPU ``TrainConfig`` for ``method`` at width 16, batch 64, seed 2; ``kw``
    overrides any field."""
    import copy

    from dsrsd.config import TrainConfig

    base = dict(method=method, method_params=copy.deepcopy(params or {}), d=16, epochs=1,
                batch_size=64, seed=2, device="cpu")
    return TrainConfig(**{**base, **kw})
