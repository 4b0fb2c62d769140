"""Root conftest: nbval with numeric tolerances for chapter cells that print trained numbers
(see tests/nbval_tolerance.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "tests"))

pytest_plugins = ["nbval_tolerance"]
