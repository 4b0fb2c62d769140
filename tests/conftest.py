"""Fixtures shared by the knowledge-tracing tests (test_assist, test_kt): a small AKT folder
written in the real schema from generated students."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures_real import make_akt_students, write_akt


@pytest.fixture(scope="module")
def students() -> list[dict]:
    return make_akt_students(n_students=60, seed=0, mean_len=40, long_frac=0.15)


@pytest.fixture(scope="module")
def akt_dir(tmp_path_factory, students) -> Path:
    d = tmp_path_factory.mktemp("akt") / "assist2009_pid"
    write_akt(d, students)
    return d
