"""Remove machine paths and a library warning from executed run notebooks, in place.

Sweeps made before commit d6d2d86 kept notebooks that record the absolute folder they ran in
(papermill's input and output paths, and the ``out`` parameter it injected) and, in some kernels,
tqdm's "IProgress not found" warning with the path of a local virtual environment. Newer sweeps
write relative paths (``dsrsd.sweep.scrub_notebook_paths``); this brings older records in line
without re-running them: nothing that was computed changes.

    python data_scripts/scrub_run_notebooks.py                 # results/runs/*/run.ipynb
    python data_scripts/scrub_run_notebooks.py path/to/runs
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

OUT_PARAM = re.compile(r'^out = "(/[^"]*)"$', re.M)
TQDM_WARNING = re.compile(r"TqdmWarning: IProgress not found")


def scrub(path: Path) -> bool:
    """Scrub one run notebook; return True when it changed."""
    from dsrsd.sweep import scrub_notebook_paths

    before = path.read_bytes()
    runs_rel = os.path.relpath(path.parent.parent.resolve(), REPO / "notebooks")

    def edit(nb) -> None:
        params = nb.metadata.get("papermill", {}).get("parameters", {})
        if str(params.get("out", "")).startswith("/"):
            params["out"] = runs_rel
        for cell in nb.cells:
            if "injected-parameters" in cell.metadata.get("tags", []):
                cell.source = OUT_PARAM.sub(f'out = "{runs_rel}"', cell.source)
            if cell.cell_type == "code":
                cell.outputs = [o for o in cell.outputs
                                if not (o.output_type == "stream" and o.name == "stderr"
                                        and TQDM_WARNING.search(o.text))]

    scrub_notebook_paths(path, edit)
    return path.read_bytes() != before


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="?", default=str(REPO / "results" / "runs"),
                        help="folder of run folders (default: results/runs)")
    args = parser.parse_args(argv)
    runs = Path(args.runs)
    if not runs.is_dir():
        print(f"error: {runs} is not a folder of run folders", file=sys.stderr)
        return 2
    paths = sorted(runs.glob("*/run.ipynb"))
    changed = sum(scrub(p) for p in paths)
    print(f"{changed} of {len(paths)} run notebooks changed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
