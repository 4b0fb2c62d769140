"""Small helpers shared by the test modules (imported as ``helpers``; pytest puts tests/ on the path)."""

from __future__ import annotations

import subprocess
import sys
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
